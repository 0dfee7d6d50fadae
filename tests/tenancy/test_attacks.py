"""Tenant A attacks tenant B on the real control plane (noop compute) and on the real Nova
API of the box (networks, server groups). Each attempt ends in a refusal whose condition names
the rule, and B's Amphora stays Ready throughout."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from amphora_drivers.nova import NovaDriver
from amphora_operator.tenancy import USABLE_LABEL, namespace_tag
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.fixtures.nova_box import NovaBoxInfo
from tests.fixtures.operator import noop_config
from tests.operator.scenario import IMAGE
from tests.reliability.test_crash_safety import nova_config
from tests.tenancy.conftest import Launch, Tenant

TIMEOUT = 60.0
NOVA_TIMEOUT = 180.0
VM = {"type": "VM", "flavor": "m1.amphora", "image": IMAGE}


def wait_status(
    tenant: Tenant, name: str, until: Callable[[dict[str, Any]], bool], what: str,
    timeout: float = TIMEOUT,
) -> dict[str, Any]:  # fmt: skip
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = tenant.get(name).get("status") or {}
        if until(status):
            return status
        time.sleep(0.2)
    pytest.fail(f"{tenant.namespace}/{name}: {what} not reached in {timeout} s; {status}")


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def ready(tenant: Tenant, name: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    return wait_status(tenant, name, lambda s: condition(s, "Ready").get("status") == "True",
                       "Ready", timeout)  # fmt: skip


def refused(
    tenant: Tenant, name: str, reason: str, rule: str, timeout: float = TIMEOUT
) -> dict[str, Any]:
    """Stalled for ``reason`` with a message naming ``rule``; not retried."""
    status = wait_status(
        tenant, name, lambda s: condition(s, "Stalled").get("status") == "True"
        and condition(s, "Stalled").get("reason") == reason, f"Stalled ({reason})", timeout,
    )  # fmt: skip
    assert rule in condition(status, "Ready")["message"], status
    return status


def still_ready(tenant: Tenant, name: str, compute_id: str) -> None:
    status = tenant.get(name)["status"]
    assert condition(status, "Ready")["status"] == "True", status
    assert status["computeId"] == compute_id and status["phase"] == "Ready", status


def forbidden(call: Callable[[], Any]) -> None:
    with pytest.raises(k8s.ApiException) as err:
        call()
    assert err.value.status == 403


def test_a_cannot_import_suspend_delete_or_read_through_b(
    serve: Launch, tenants: tuple[Tenant, Tenant], kube_api: ApiClient, tmp_path: Path
) -> None:
    a, b = tenants
    operator = serve(noop_config(tmp_path / "operator" / "noop.json"))
    b.create("web", **VM)
    victim = ready(b, "web")["computeId"]
    assert namespace_tag(b.namespace) in operator.compute().find(amphora_id=victim)[0].tags

    # RBAC: A's user cannot touch B's Amphora or any Secret.
    forbidden(lambda: k8s.CustomObjectsApi(a.api).patch_namespaced_custom_object(
        "amphora-operator.dev", "v1alpha1", b.namespace, "amphorae", "web",
        {"spec": {"suspended": True}}))  # fmt: skip
    forbidden(lambda: k8s.CoreV1Api(a.api).read_namespaced_secret("anything", a.namespace))

    # Import B's instance, then ask for it suspended, then delete the Amphora.
    a.create("grab", importId=victim, **VM)
    status = refused(a, "grab", "ImportRefused", "same namespace")
    assert b.namespace not in str(status), "the refusal must not reveal B's namespace"
    a.patch("grab", suspended=True)
    time.sleep(2)
    a.create("grab-orphan", importId=victim, deletionPolicy="Orphan", **VM)
    refused(a, "grab-orphan", "ImportRefused", "imports.allowedNamespaces")
    a.delete("grab")
    a.delete("grab-orphan")
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and operator_names(a):
        time.sleep(0.2)
    assert operator_names(a) == []
    [instance] = operator.compute().find(amphora_id=victim)
    assert instance.state.value == "ACTIVE", "B's instance was suspended or deleted"
    still_ready(b, "web", victim)

    # Forge B's namespace tag to make an instance B would import.
    a.create("forger", tags=[namespace_tag(b.namespace)], **VM)
    refused(a, "forger", "ReservedTag", "is reserved")

    # Read a Secret of A's namespace that does not consent, through each Amphora field.
    value = f"DB-PASSWORD-{uuid.uuid4().hex}"
    k8s.CoreV1Api(kube_api).create_namespaced_secret(a.namespace, k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name="db"), string_data={"password": value}))  # fmt: skip
    ref = {"secretRef": {"name": "db", "key": "password"}}
    a.create("exfil-user-data", userData=ref, **VM)
    a.create("exfil-file", configDriveFiles=[{"path": "/etc/db", **ref}], **VM)
    for name, field in (("exfil-user-data", "spec.userData.secretRef"),
                        ("exfil-file", "spec.configDriveFiles[/etc/db].secretRef")):  # fmt: skip
        status = refused(a, name, "SecretNotConsented", USABLE_LABEL)
        assert condition(status, "Ready")["message"].startswith(field)
    built = [i for i in operator.compute().find() if namespace_tag(a.namespace) in i.tags]
    assert built == [], "nothing was built from the refused Secret"
    # A Secret of B (consenting) is out of reach: references never leave A's namespace.
    k8s.CoreV1Api(kube_api).create_namespaced_secret(b.namespace, k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name="db", labels={USABLE_LABEL: "true"}),
        string_data={"password": value}))  # fmt: skip
    time.sleep(1)
    assert condition(a.get("exfil-file")["status"], "Stalled")["reason"] == "SecretNotConsented"
    texts = [str(a.get(n)) for n in ("exfil-user-data", "exfil-file")]
    encoded = base64.b64encode(value.encode()).decode()
    assert not [t for t in texts if value in t or encoded in t]
    still_ready(b, "web", victim)


def operator_names(tenant: Tenant) -> list[str]:
    items = tenant.custom.list_namespaced_custom_object(
        "amphora-operator.dev", "v1alpha1", tenant.namespace, "amphorae"
    )["items"]
    return [i["metadata"]["name"] for i in items]


@pytest.mark.nova
def test_a_cannot_use_the_reserved_network_or_break_bs_server_group(
    serve: Launch, tenants: tuple[Tenant, Tenant], tmp_path: Path, nova_box: NovaBoxInfo
) -> None:
    a, b = tenants
    tag = f"tenancy-{uuid.uuid4().hex[:8]}"
    # Generous timeouts: the box shares two cores with everything else.
    config = nova_config(
        tmp_path / "operator" / "noop.json", nova_box, tag,
        management_networks=[nova_box.network_name], api_timeout=30,
    )  # fmt: skip
    config["reconcile"]["driverCallTimeout"] = 60
    serve(config)
    vm = {"type": "VM", "flavor": nova_box.flavor_id, "image": nova_box.image_id}
    b.create("web-1", serverGroup={"name": "web", "policy": "anti-affinity"}, **vm)
    victim = ready(b, "web-1", NOVA_TIMEOUT)["computeId"]

    # The management network, by id and by name.
    for index, ref in enumerate((nova_box.network_id, nova_box.network_name)):
        a.create(f"sneak-{index}", networks=[ref], **vm)
        status = refused(
            a, f"sneak-{index}", "NotAllowed", "reserved for the operator", NOVA_TIMEOUT
        )
        assert condition(status, "Ready")["message"].startswith("spec.networks:")
    still_ready(b, "web-1", victim)

    # A takes the group name "web" with another policy: before scoping, B's next build into
    # its "web" group was refused ("a group named 'web' exists with policy 'affinity'").
    a.create("web-a", serverGroup={"name": "web", "policy": "affinity"}, **vm)
    ready(a, "web-a", NOVA_TIMEOUT)
    b.create("web-2", serverGroup={"name": "web", "policy": "anti-affinity"}, **vm)
    ready(b, "web-2", NOVA_TIMEOUT)
    still_ready(b, "web-1", victim)
    with nova_box.connection(nova_box.project_id) as admin:
        names = {g.name for g in admin.compute.server_groups() if g.name.startswith(f"{tag}:")}
    assert names == {f"{tag}:{a.namespace}:web", f"{tag}:{b.namespace}:web"}

    # A's group goes with its last member; B's stays.
    a.delete("web-a")
    driver = NovaDriver(
        clouds_yaml_content=nova_box.clouds_yaml_content(), managed_tag=tag, api_timeout=30
    )
    try:
        deadline = time.monotonic() + NOVA_TIMEOUT
        while time.monotonic() < deadline:
            groups = {g.name for g in driver.connection.compute.server_groups()}
            if f"{tag}:{a.namespace}:web" not in groups:
                break
            time.sleep(0.5)
        assert f"{tag}:{a.namespace}:web" not in groups
        assert f"{tag}:{b.namespace}:web" in groups
    finally:
        driver.close()
    still_ready(b, "web-1", victim)
