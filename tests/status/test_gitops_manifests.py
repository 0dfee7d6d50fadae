"""The shipped GitOps manifests: the Argo CD argocd-cm patch carries exactly the tested Lua script
and applies as documented; the Flux example gates on Amphorae the way Flux reads it."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from amphora_devtools.crd import CRD_FILE, REPO
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.fixtures.control_plane import Kubectl
from tests.status.health import ARGO_KEY, ARGO_PATCH, ARGO_SCRIPT

FLUX_EXAMPLE = REPO / "deploy" / "flux" / "amphorae.yaml"


def test_the_argocd_cm_patch_carries_exactly_the_tested_script() -> None:
    patch = yaml.safe_load(ARGO_PATCH.read_text())
    assert (patch["kind"], patch["metadata"]["name"]) == ("ConfigMap", "argocd-cm")
    assert patch["data"][ARGO_KEY] == ARGO_SCRIPT.read_text(), (
        f"{ARGO_PATCH.name} and {ARGO_SCRIPT.name} differ: copy the script into the patch"
    )


def test_the_key_names_the_crds_group_and_kind() -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    assert f"resource.customizations.health.{group}_{kind}" == ARGO_KEY


@pytest.mark.cluster
def test_the_documented_kubectl_patch_adds_the_script_and_keeps_other_settings(
    kube_api: ApiClient, kubectl: Kubectl, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api)
    core.create_namespaced_config_map(
        namespace,
        k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(name="argocd-cm"),
            data={"url": "https://argocd.example.com"},
        ),
    )
    kubectl("patch", "configmap", "argocd-cm", "-n", namespace, "--patch-file", str(ARGO_PATCH))
    data = core.read_namespaced_config_map("argocd-cm", namespace).data
    assert data["url"] == "https://argocd.example.com"
    assert data[ARGO_KEY] == ARGO_SCRIPT.read_text()


def _flux_kustomizations() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(FLUX_EXAMPLE.read_text()) if d]
    return {
        d["metadata"]["name"]: d
        for d in docs
        if d["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1" and d["kind"] == "Kustomization"
    }


def test_the_flux_example_waits_and_health_checks_name_amphorae() -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    served = {f"{crd['spec']['group']}/{v['name']}" for v in crd["spec"]["versions"] if v["served"]}
    kinds = _flux_kustomizations()
    waiting = [k for k in kinds.values() if k["spec"].get("wait") is True]
    assert waiting, "no Kustomization with wait: true"
    checked = [k for k in kinds.values() if k["spec"].get("healthChecks")]
    assert checked, "no Kustomization with healthChecks"
    for kustomization in checked:
        # Flux ignores healthChecks when wait is true; an example with both would mislead.
        assert not kustomization["spec"].get("wait"), kustomization["metadata"]["name"]
        for check in kustomization["spec"]["healthChecks"]:
            assert check["kind"] == crd["spec"]["names"]["kind"]
            assert check["apiVersion"] in served, check
    for kustomization in kinds.values():
        for dependency in kustomization["spec"].get("dependsOn", []):
            assert dependency["name"] in kinds, dependency
