"""Installing the committed Amphora CRD (and the finalizer admission policy that goes with
it, as ``kubectl apply -k deploy/base`` does) into a cluster and waiting until it is served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from amphora_operator.model import API_VERSION, FINALIZER, GROUP, KIND, PLURAL, VERSION
from kubernetes import client as k8s
from kubernetes import dynamic as k8s_dynamic

from amphora_devtools.wait import wait_until

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "amphorae.amphora-operator.dev.yaml"


def install_crd(
    api: k8s.ApiClient, crd_file: Path = CRD_FILE, timeout: float = 60.0
) -> dict[str, Any]:
    """Create (or replace) the CRD of ``crd_file``; return its manifest once Established."""
    manifest: dict[str, Any] = yaml.safe_load(crd_file.read_text())
    name = manifest["metadata"]["name"]
    # Typed as Any: the client takes plain dicts as bodies, its annotations say model objects.
    ext: Any = k8s.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(manifest)
    except k8s.ApiException as error:
        if error.status != 409:
            raise
        current = ext.read_custom_resource_definition(name)
        replacement = {
            **manifest,
            "metadata": {
                **manifest["metadata"],
                "resourceVersion": current.metadata.resource_version,
            },
        }
        ext.replace_custom_resource_definition(name, replacement)

    def established() -> bool:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_until(established, timeout=timeout, what=f"CRD {name} Established")
    return manifest


#: Namespaces without an operator (the benchmark's baseline and floor) carry this label, and
#: admission adds no finalizer there: nothing would ever remove it.
NO_OPERATOR_LABEL = "bench.amphora-operator.dev/no-operator"
#: The MutatingAdmissionPolicy that puts the operator's finalizer on every Amphora at admission.
FINALIZER_POLICY_FILE = REPO / "deploy" / "base" / "finalizer-policy.yaml"


def install_finalizer_policy(
    api: k8s.ApiClient, timeout: float = 30.0, *, skip_label: str | None = NO_OPERATOR_LABEL
) -> None:
    """Apply deploy/base/finalizer-policy.yaml and wait until admission adds the finalizer.

    Policies take effect asynchronously; a server-side dry-run create shows when they do.
    Raises if the apiserver does not serve MutatingAdmissionPolicy (admissionregistration/v1).
    ``skip_label``: namespaces carrying this label are left out.
    """
    dynamic: Any = k8s_dynamic.DynamicClient(api)  # type: ignore[no-untyped-call]
    for manifest in yaml.safe_load_all(FINALIZER_POLICY_FILE.read_text()):
        if skip_label and manifest["kind"] == "MutatingAdmissionPolicyBinding":
            manifest["spec"]["matchResources"] = {
                "namespaceSelector": {
                    "matchExpressions": [{"key": skip_label, "operator": "DoesNotExist"}]
                }
            }
        resource = dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
        name = manifest["metadata"]["name"]
        try:
            resource.create(body=manifest)
        except k8s_dynamic.exceptions.ConflictError:
            current = resource.get(name=name)
            manifest["metadata"]["resourceVersion"] = current.metadata.resourceVersion
            resource.replace(body=manifest)
    objects: Any = k8s.CustomObjectsApi(api)
    probe = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "policy-probe"},
        "spec": {"type": "VM", "flavor": "probe.small", "image": "amphora-x64-haproxy"},
    }

    def in_effect() -> bool:
        try:
            created = objects.create_namespaced_custom_object(
                GROUP, VERSION, "default", PLURAL, probe, dry_run="All"
            )
        except k8s.ApiException as error:
            if error.status not in (404, 503):  # a CRD just Established may not be served yet
                raise
            return False
        return FINALIZER in (created["metadata"].get("finalizers") or [])

    wait_until(in_effect, timeout=timeout, what="the finalizer admission policy in effect")
