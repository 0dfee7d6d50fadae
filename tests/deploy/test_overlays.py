"""The overlays installed one after the other, as an admin switching between them would.

Each overlay is server dry-run then applied; objects the previous one created and this one does
not contain are deleted first (what ``kubectl apply --prune`` would do), so RBAC checks see
exactly this overlay's grants. The single-namespace overlay also runs the operator as its
ServiceAccount with the Deployment's own arguments.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import yaml
from amphora_operator.config import OperatorConfig
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.deploy.support import (
    DEPLOY,
    GROUP,
    OPERATOR_NAMESPACE,
    PLURAL,
    TIMEOUT,
    VERSION,
    Doc,
    Installer,
    OperatorRun,
    amphora,
    assert_access,
    delete_amphorae,
    find,
    force_release,
    install,
    kustomize,
    phase,
    service_account_kubeconfig,
    wait_until,
)
from tests.fixtures.control_plane import Cluster, Kubectl

pytestmark = pytest.mark.cluster

SELECTOR = "app.kubernetes.io/name=amphora-operator,app.kubernetes.io/component=operator"
WATCHED = "amphorae"  # the single-namespace overlay's namespace


def _overlay(installer: Installer, kubectl: Kubectl, name: str) -> list[Doc]:
    docs = kustomize(kubectl, DEPLOY / "overlays" / name)
    installer.prune_to(docs)
    install(installer, docs)
    return docs


def _container(docs: list[Doc]) -> Doc:
    container: Doc = find(docs, "Deployment", "amphora-operator")["spec"]["template"]["spec"][
        "containers"
    ][0]
    return container


def _scheduled_pods(kube_api: ApiClient, count: int) -> list[str]:
    """Wait until ``count`` Pods of the *current* ReplicaSet are bound to Nodes."""
    core = k8s.CoreV1Api(kube_api)

    def nodes() -> list[str]:
        pods = core.list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=SELECTOR).items
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        return [p.spec.node_name for p in live if p.spec.node_name]

    return wait_until(nodes, lambda n: len(n) == count, timeout=TIMEOUT, what=f"{count} Pods")


def test_ha_overlay_runs_two_replicas_with_a_disruption_budget(
    installer: Installer, kubectl: Kubectl, kube_api: ApiClient
) -> None:
    docs = _overlay(installer, kubectl, "ha")
    deployment = k8s.AppsV1Api(kube_api).read_namespaced_deployment(
        "amphora-operator", OPERATOR_NAMESPACE
    )
    assert deployment.spec.replicas == 2
    assert "--leader-election" in _container(docs)["args"]
    budget = k8s.PolicyV1Api(kube_api).read_namespaced_pod_disruption_budget(
        "amphora-operator", OPERATOR_NAMESPACE
    )
    assert budget.spec.max_unavailable == 1
    assert budget.spec.selector.match_labels == deployment.spec.selector.match_labels
    _scheduled_pods(kube_api, 2)
    affinity = deployment.spec.template.spec.affinity.pod_anti_affinity
    term = affinity.preferred_during_scheduling_ignored_during_execution[0].pod_affinity_term
    assert term.topology_key == "kubernetes.io/hostname"


def test_dev_noop_overlay_needs_no_cloud(
    installer: Installer, kubectl: Kubectl, kube_api: ApiClient
) -> None:
    docs = _overlay(installer, kubectl, "dev-noop")
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    config = OperatorConfig.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert {config.profiles[p].driver for p in config.defaults.values()} == {"noop"}
    assert len(config.defaults) == 3
    mounts = [m["mountPath"] for m in _container(docs)["volumeMounts"]]
    assert "/etc/openstack" not in mounts
    _scheduled_pods(kube_api, 1)


@pytest.fixture
def watched_operator(
    control_plane: Cluster,
    installer: Installer,
    kubectl: Kubectl,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[tuple[OperatorRun, list[Doc]]]:
    """The single-namespace overlay installed; the operator run with the Deployment's scope."""
    docs = _overlay(installer, kubectl, "single-namespace")
    args = _container(docs)["args"]
    scope = [a for a in args if a.startswith("--namespace")]
    assert scope == [f"--namespace={WATCHED}"]
    dev = kustomize(kubectl, DEPLOY / "overlays" / "dev-noop")
    config = yaml.safe_load(next(d for d in dev if d["kind"] == "ConfigMap")["data"]["config.yaml"])
    workdir = tmp_path_factory.mktemp("operator-single-namespace")
    run = OperatorRun(
        workdir=workdir,
        kubeconfig=service_account_kubeconfig(control_plane, workdir / "kubeconfig"),
        config=config,
        args=[*scope, "--leader-election", "--lease-namespace", OPERATOR_NAMESPACE],
    )
    run.start()
    yield run, docs
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        print(f"--- operator log ({run.log_path})\n{run.logs()}")
    run.stop()


def test_single_namespace_overlay_grants_and_serves_one_namespace(
    watched_operator: tuple[OperatorRun, list[Doc]],
    installer: Installer,
    kube_api: ApiClient,
) -> None:
    operator, docs = watched_operator
    cluster_bindings = {d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRoleBinding"}
    assert cluster_bindings == {"amphora-operator-crd-watch", "amphora-operator-namespace-watch"}
    other = f"deploy-other-{uuid.uuid4().hex[:6]}"
    installer.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}}])
    amphorae = {"group": GROUP, "resource": PLURAL}
    expected = [
        (True, {"verb": "list", "namespace": WATCHED, **amphorae}),
        (True, {"verb": "patch", "namespace": WATCHED, "subresource": "status", **amphorae}),
        (True, {"verb": "get", "resource": "secrets", "namespace": WATCHED, "name": "x"}),
        (True, {"verb": "create", "resource": "events", "namespace": WATCHED}),
        (False, {"verb": "list", **amphorae}),  # cluster-wide
        (False, {"verb": "patch", "namespace": other, **amphorae}),
        (False, {"verb": "create", "resource": "events", "namespace": other}),
        (False, {"verb": "get", "resource": "secrets", "namespace": other, "name": "x"}),
    ]
    assert_access(kube_api, expected)
    api = k8s.CustomObjectsApi(kube_api)
    try:
        api.create_namespaced_custom_object(
            GROUP, VERSION, WATCHED, PLURAL,
            amphora("watched", userData={"secretRef": {"name": "boot", "key": "u"}}),
        )  # fmt: skip
        api.create_namespaced_custom_object(GROUP, VERSION, other, PLURAL, amphora("ignored"))
        k8s.CoreV1Api(kube_api).create_namespaced_secret(
            WATCHED,
            k8s.V1Secret(
                metadata=k8s.V1ObjectMeta(
                    name="boot", labels={"amphora-operator.dev/usable": "true"}
                ),
                string_data={"u": "#!/bin/sh"},
            ),
        )
        wait_until(
            lambda: phase(kube_api, WATCHED, "watched"),
            lambda p: p == "Ready",
            timeout=TIMEOUT,
            what="Amphora in the watched namespace Ready",
        )
        assert phase(kube_api, other, "ignored") is None
        assert operator.process is not None and operator.process.poll() is None
        log = operator.logs(tail=10**7)
        for refusal in ("Forbidden", "forbidden", "Not enough permissions"):
            assert refusal not in log, f"the operator met a refusal: {refusal!r}"
    finally:
        try:
            delete_amphorae(kube_api, WATCHED)
        finally:
            force_release(kube_api, WATCHED)
            force_release(kube_api, other)
