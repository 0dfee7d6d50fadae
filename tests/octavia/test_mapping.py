"""The plugin's pure mapping, checked against the Amphora model it must satisfy.

``amphora_octavia.mapping`` imports nothing outside the standard library, so it is loaded here
from its file (the plugin is installed into Octavia's venv, not into the project's). Every plan
it makes must be a spec the operator's own pydantic model accepts.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from amphora_operator.model import AmphoraSpec

MAPPING_FILE = (
    Path(__file__).resolve().parents[2]
    / "integrations"
    / "octavia"
    / "amphora_octavia"
    / "mapping.py"
)


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("amphora_octavia_mapping", MAPPING_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


m = _load()
SETTINGS = m.Settings(
    namespace="octavia",
    flavor_map={"c-small": "Container/small", "vm-big": "VM/m1.large@nova", "bare": "Container/"},
    image_map={"container": "registry.example/amphora:1"},
    network_map={"mgmt": "pod", "vip": "vip-nad", "nova-net": "nova-net"},
)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINivA37oPmgNbaGSCv5kWMQKrXe3G//lfqngHWlQrggu o@x"


def _plan(**overrides: Any) -> Any:
    args: dict[str, Any] = {
        "compute_id": "0b6e3c9e-5b0e-4d7c-9a59-2f43c0f0a001",
        "name": "amphora-7d1c5c3e-4b2a-4f43-9a7e-1b7c9a0c1d2e",
        "amphora_flavor": "m1.amphora",
        "image_tag": "amphora",
        "image_owner": None,
        "keys": [KEY],
        "key_name": "octavia-key",
        "sec_groups": ["sg-1", "sg-1"],
        "network_ids": ["nova-net"],
        "port_ids": [],
        "config_drive_files": {"/etc/b": "B", "/etc/a": io.StringIO("A")},
        "user_data": b"#cloud-config\n",
        "server_group_id": None,
        "availability_zone": None,
        "default_zone": None,
        **overrides,
    }
    return m.plan_build(SETTINGS, **args)


def test_a_vm_plan_is_a_valid_amphora_with_files_and_user_data_in_one_secret() -> None:
    plan = _plan(availability_zone={"compute_zone": "az1", "management_network": "x"})
    spec = AmphoraSpec.model_validate(plan.amphora["spec"])
    assert (spec.type.value, spec.flavor, spec.image) == ("VM", "m1.amphora", "tag:amphora")
    assert spec.networks == ["nova-net"] and spec.security_groups == ["sg-1"]
    assert spec.keys == [KEY] and spec.availability_zone == "az1"
    ref = "0b6e3c9e-5b0e-4d7c-9a59-2f43c0f0a001-boot"
    assert [(f.path, f.secret_ref.name, f.secret_ref.key) for f in spec.config_drive_files] == [
        ("/etc/a", ref, "file-0"),
        ("/etc/b", ref, "file-1"),
    ]
    assert plan.secret["stringData"] == {
        "user-data": "#cloud-config\n",
        "file-0": "A",
        "file-1": "B",
    }
    # The Amphora's labels, plus the consent the operator requires to read it.
    assert plan.secret["metadata"]["labels"] == {
        **plan.amphora["metadata"]["labels"],
        "amphora-operator.dev/usable": "true",
    }


def test_flavor_map_chooses_type_flavor_and_profile() -> None:
    container = _plan(amphora_flavor="c-small", image_tag="container", network_ids=["mgmt", "vip"])
    spec = AmphoraSpec.model_validate(container.amphora["spec"])
    assert (spec.type.value, spec.flavor, spec.driver) == ("Container", "small", None)
    assert spec.image == "registry.example/amphora:1" and spec.networks == ["vip-nad"]
    big = AmphoraSpec.model_validate(_plan(amphora_flavor="vm-big").amphora["spec"])
    assert (big.type.value, big.flavor, big.driver) == ("VM", "m1.large", "nova")
    bare = _plan(amphora_flavor="bare", image_tag="container", network_ids=["mgmt"])
    assert "flavor" not in bare.amphora["spec"]
    AmphoraSpec.model_validate(bare.amphora["spec"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"port_ids": ["p1"]}, "port_ids: booting with existing Neutron ports is not supported"),
        ({"amphora_flavor": "c-small"}, "image_tag 'amphora': a Container amphora needs its image"),
        ({"amphora_flavor": "c-small", "image_tag": "container", "network_ids": ["other"]},
         "network_ids: network other is not in [amphora_k8s] network_map"),
        ({"network_ids": ["mgmt"]}, "network_ids: mgmt maps to 'pod', which only Containers have"),
        ({"config_drive_files": {f"/f{i}": "x" for i in range(6)}}, "at most 5 files"),
        ({"config_drive_files": {"/etc/../x": "x"}}, "is not an absolute path without '..'"),
        ({"config_drive_files": {"/big": "x" * 10241}}, "larger than 10240 bytes"),
        ({"user_data": "x" * (64 * 1024 + 1)}, "user_data: larger than 65536 bytes"),
        ({"user_data": b"\xff"}, "user_data: must be UTF-8 text"),
        ({"keys": ["not a key"]}, "key_name octavia-key: 'not a key'... is not an OpenSSH"),
        ({"server_group_id": "0b6e3c9e-5b0e-4d7c-9a59-2f43c0f0a001"}, "not a server group"),
        ({"amphora_flavor": None}, "amphora_flavor: required for VM amphorae"),
        ({"image_tag": None}, "image_tag: required"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_naming_the_argument(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(m.PlanError) as caught:
        _plan(**overrides)
    assert message in str(caught.value)


def test_server_group_ids_fit_octavia_and_carry_their_policy() -> None:
    for policy in ("anti-affinity", "soft-anti-affinity", "affinity"):
        group = m.server_group_id(policy)
        assert len(group) <= 36  # Octavia's load_balancer.server_group_id column
        assert m.server_group_policy(group) == policy
        spec = AmphoraSpec.model_validate(_plan(server_group_id=group).amphora["spec"])
        assert spec.server_group is not None
        assert (spec.server_group.name, spec.server_group.policy.value) == (group, policy)
    with pytest.raises(m.PlanError, match="Amphorae support anti-affinity"):
        m.server_group_id("best-effort")


@pytest.mark.parametrize(
    ("phase", "word"),
    [(None, "BUILD"), ("Pending", "BUILD"), ("Building", "BUILD"), ("Ready", "ACTIVE"),
     ("Updating", "ACTIVE"), ("Suspended", "SHUTOFF"), ("Failed", "ERROR"),
     ("Deleting", "DELETED")],
)  # fmt: skip
def test_phases_map_to_octavia_status_words(phase: str | None, word: str) -> None:
    status = {"phase": phase, "addresses": ["10.0.0.5", "192.0.2.9"]} if phase else {}
    seen = m.observe({"metadata": {}, "spec": {"image": "i"}, "status": status})
    assert seen.status == word
    assert seen.lb_network_ip == ("10.0.0.5" if phase else None)


def test_a_failure_still_retried_is_building_to_octavia_and_error_once_stalled() -> None:
    def failed(stalled: str) -> dict[str, Any]:
        conditions = [
            {"type": "Ready", "status": "False", "reason": "Timeout", "message": "no answer"},
            {"type": "Stalled", "status": stalled, "reason": "Retrying", "message": "no answer"},
        ]
        return {"metadata": {}, "status": {"phase": "Failed", "conditions": conditions}}

    assert m.observe(failed("False")).status == "BUILD"
    given_up = m.observe(failed("True"))
    assert (given_up.status, given_up.fault) == ("ERROR", "no answer")


def test_a_failure_brings_its_fault_and_deletion_wins() -> None:
    failed = {"phase": "Failed", "conditions": [{"type": "Ready", "message": "No valid host"}]}
    assert m.observe({"metadata": {}, "status": failed}).fault == "No valid host"
    faulted = {"phase": "Failed", "fault": "quota exceeded"}
    assert m.observe({"metadata": {}, "status": faulted}).fault == "quota exceeded"
    deleting = {
        "metadata": {"deletionTimestamp": "2026-12-01T00:00:00Z"},
        "status": {"phase": "Ready"},
    }
    assert m.observe(deleting).status == "DELETED"
