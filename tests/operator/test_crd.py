"""The CRD and the pydantic model are one source: the committed YAML is generated from the
model, every field is described, and the apiserver and pydantic accept and refuse the same
specs (each refusal naming the field)."""

from __future__ import annotations

import base64
import os
import struct
import uuid
from typing import Any

import pytest
import yaml
from amphora_operator.crd import crd_manifest, crd_yaml
from amphora_operator.model import AmphoraSpec
from kubernetes import client as k8s
from kubernetes.client import ApiClient
from pydantic import ValidationError

from tests.fixtures.operator import CRD_FILE, GROUP, PLURAL, VERSION


def ssh_key() -> str:
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + os.urandom(32)
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} ops@example"


def test_committed_crd_is_generated_from_the_model() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), (
        "crds/ drifted from amphora_operator/model.py: run `make crd` and commit the result"
    )


def _undescribed(schema: dict[str, Any], path: str) -> list[str]:
    missing = []
    for name, prop in schema.get("properties", {}).items():
        where = f"{path}.{name}"
        if not prop.get("description"):
            missing.append(where)
        missing += _undescribed(prop, where)
        if "items" in prop:
            missing += _undescribed(prop["items"], f"{where}[]")
    return missing


def test_every_spec_and_status_field_is_described() -> None:
    schema = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _undescribed(schema["properties"]["spec"], "spec") == []
    assert _undescribed(schema["properties"]["status"], "status") == []


def test_kubectl_explain_describes_the_spec(amphora_crd: dict[str, Any], kubectl: Any) -> None:
    out = kubectl("explain", "amphora.spec.configDriveFiles").stdout
    assert "at most 5" in out and "path" in out and "secretRef" in out


BASE: dict[str, Any] = {"flavor": "m1.amphora", "image": "amphora-image"}
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("minimal", {}, None),
    (
        "everything",
        {
            "type": "VM", "networks": ["n1", "n2"], "securityGroups": ["lb"],
            "keys": [ssh_key()], "availabilityZone": "az1",
            "configDriveFiles": [{"path": "/etc/a.conf", "content": "x" * 10240},
                                 {"path": "/etc/b", "secretRef": {"name": "s", "key": "k"}}],
            "userData": {"secretRef": {"name": "ud", "key": "cloud-init"}},
            "serverGroup": {"name": "lb-1", "policy": "anti-affinity"},
            "tags": ["team=lb"], "suspended": False, "deletionPolicy": "Orphan",
        },
        None,
    ),
    ("container-without-flavor", {"type": "Container", "flavor": None}, None),
    ("unknown-type", {"type": "Mainframe"}, "spec.type"),
    ("vm-without-flavor", {"flavor": None}, "spec.flavor"),
    ("missing-image", {"image": None}, "spec.image"),
    ("six-files", {"configDriveFiles": [{"path": f"/f{i}", "content": "x"} for i in range(6)]},
     "spec.configDriveFiles"),
    ("relative-path", {"configDriveFiles": [{"path": "etc/x", "content": "x"}]},
     "spec.configDriveFiles[0].path"),
    ("dotdot-path", {"configDriveFiles": [{"path": "/etc/../x", "content": "x"}]},
     "spec.configDriveFiles[0].path"),
    ("file-too-big", {"configDriveFiles": [{"path": "/x", "content": "x" * 10241}]},
     "spec.configDriveFiles[0].content"),
    ("content-and-secret", {"configDriveFiles": [
        {"path": "/x", "content": "x", "secretRef": {"name": "s", "key": "k"}}]},
     "spec.configDriveFiles[0]"),
    ("neither-content-nor-secret", {"configDriveFiles": [{"path": "/x"}]},
     "spec.configDriveFiles[0]"),
    ("bad-key", {"keys": ["not a key"]}, "spec.keys[0]"),
    ("tag-with-slash", {"tags": ["a/b"]}, "spec.tags[0]"),
    ("tag-with-newline", {"tags": ["a\nb"]}, "spec.tags[0]"),
    ("too-many-tags", {"tags": [f"t{i}" for i in range(48)]}, "spec.tags"),
    ("image-too-long", {"image": "i" * 256}, "spec.image"),
    ("user-data-too-big", {"userData": {"content": "x" * 65537}}, "spec.userData.content"),
    ("observe-only-without-import", {"managementPolicy": "ObserveOnly"}, "spec.importId"),
    ("bad-deletion-policy", {"deletionPolicy": "Keep"}, "spec.deletionPolicy"),
    ("unknown-field", {"colour": "blue"}, "colour"),
    ("bad-driver-name", {"driver": "Nova_Cloud"}, "spec.driver"),
]  # fmt: skip


def _spec(overrides: dict[str, Any]) -> dict[str, Any]:
    merged = {**BASE, **overrides}
    return {k: v for k, v in merged.items() if v is not None}


@pytest.mark.parametrize(("case", "overrides", "field"), CASES, ids=[c[0] for c in CASES])
def test_apiserver_and_pydantic_agree(
    amphora_crd: dict[str, Any],
    kube_api: ApiClient,
    case: str,
    overrides: dict[str, Any],
    field: str | None,
) -> None:
    spec = _spec(overrides)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Amphora",
        "metadata": {"name": f"crd-{uuid.uuid4().hex[:8]}"},
        "spec": spec,
    }
    try:
        AmphoraSpec.model_validate(spec)
        pydantic_error = None
    except ValidationError as e:
        pydantic_error = str(e)
    api = k8s.CustomObjectsApi(kube_api)
    try:
        api.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, body, dry_run="All", field_validation="Strict"
        )
        server_error = None
    except k8s.ApiException as e:
        assert e.status in (400, 422), e.body
        server_error = e.body
    if field is None:
        assert server_error is None, server_error
        assert pydantic_error is None, pydantic_error
    else:
        assert server_error is not None, f"{case}: the apiserver accepted it"
        assert pydantic_error is not None, f"{case}: pydantic accepted it"
        assert field in server_error, f"{case}: {field} not named in {server_error}"


def test_immutable_fields_are_refused_on_update(
    amphora_crd: dict[str, Any], kube_api: ApiClient
) -> None:
    api = k8s.CustomObjectsApi(kube_api)
    name = f"immutable-{uuid.uuid4().hex[:8]}"
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Amphora",
            "metadata": {"name": name}, "spec": {**BASE, "driver": "noop"}}  # fmt: skip
    api.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
    try:
        for patch, field in [
            ({"type": "BareMetal"}, "spec.type"),
            ({"driver": "nova"}, "spec.driver"),
            ({"importId": "abc"}, "spec.importId"),
        ]:
            with pytest.raises(k8s.ApiException) as err:
                api.patch_namespaced_custom_object(
                    GROUP, VERSION, "default", PLURAL, name, {"spec": patch}
                )
            assert err.value.status == 422
            assert field in err.value.body, err.value.body
            assert "immutable" in err.value.body or "may not be added" in err.value.body
        # Mutable fields still change.
        api.patch_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, name, {"spec": {"image": "new", "suspended": True}}
        )
    finally:
        api.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, name)


def test_defaults_are_applied_by_the_apiserver(
    amphora_crd: dict[str, Any], kube_api: ApiClient
) -> None:
    api = k8s.CustomObjectsApi(kube_api)
    name = f"defaults-{uuid.uuid4().hex[:8]}"
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Amphora",
            "metadata": {"name": name}, "spec": dict(BASE)}  # fmt: skip
    created = api.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, body, dry_run="All"
    )
    spec = created["spec"]
    assert spec["type"] == "VM"
    assert spec["deletionPolicy"] == "Delete"
    assert spec["managementPolicy"] == "Managed"
    assert spec["suspended"] is False
    assert AmphoraSpec.model_validate(spec) == AmphoraSpec.model_validate(BASE)


def test_crd_yaml_round_trips() -> None:
    assert yaml.safe_load(crd_yaml()) == crd_manifest()
