"""Octavia 19's own tasks build, wait for and delete amphorae through the plugin, end to end.

Octavia's code (``compute_tasks``: NovaServerGroupCreate, CertComputeCreate, the ComputeWait
subflow under ComputeRetry, ComputeDelete, NovaServerGroupDelete; the amphora provider driver's
flavor and availability-zone validation) runs in its own venv as a subprocess and loads
``compute_amphora_k8s_driver`` through stevedore. The plugin authenticates as the
ServiceAccount of ``integrations/octavia/rbac.yaml``; a real operator builds the amphorae:
Containers as StatefulSets on kwok Nodes, VMs through the real Nova API of the Nova box.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

import openstack.exceptions
import pytest
import yaml
from amphora_drivers.nova.connect import connect
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.fixtures.nova_box import NovaBoxInfo
from tests.fixtures.operator import GROUP, PLURAL, VERSION, OperatorProcess, noop_config
from tests.octavia.conftest import (
    CLIENT_CA,
    KEY_NAME,
    PUBLIC_KEY,
    SERVER_PEM,
    Octavia,
    OctaviaVenv,
)

MANAGED_BY = {"app.kubernetes.io/managed-by": "amphora-octavia"}
CONTAINER_IMAGE = "registry.example/octavia/amphora-haproxy:2.8"
MGMT_NET = "3b1e7f4a-0c2d-4e5f-8a9b-1c2d3e4f5a6b"  # Octavia's lb-mgmt-net id (Neutron)
SECGROUP = "lb-mgmt-sec-grp"
#: The files Octavia's CertComputeCreate and ComputeCreate put on every amphora.
OCTAVIA_FILES = {
    "/etc/octavia/amphora-agent.conf",
    "/etc/rsyslog.d/10-rsyslog.conf",
    "/etc/octavia/certs/server.pem",
    "/etc/octavia/certs/client_ca.pem",
}


def _amphora(kube_api: ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return dict(
        k8s.CustomObjectsApi(kube_api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
    )


def _leftovers(kube_api: ApiClient, namespace: str) -> dict[str, list[str]]:
    """What is still in the namespace of ours, the operator's or the container driver's."""
    core, apps = k8s.CoreV1Api(kube_api), k8s.AppsV1Api(kube_api)
    amphorae = k8s.CustomObjectsApi(kube_api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL
    )["items"]
    found = {
        "amphorae": [a["metadata"]["name"] for a in amphorae],
        "secrets": [s.metadata.name for s in core.list_namespaced_secret(namespace).items
                    if s.type != "kubernetes.io/service-account-token"],
        "statefulsets": [
            s.metadata.name for s in apps.list_namespaced_stateful_set(namespace).items
        ],
        "pods": [p.metadata.name for p in core.list_namespaced_pod(namespace).items],
    }  # fmt: skip
    return {kind: names for kind, names in found.items() if names}


def _wait_empty(kube_api: ApiClient, namespace: str, timeout: float = 60) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    left = _leftovers(kube_api, namespace)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _leftovers(kube_api, namespace)
    return left


def _secret_data(kube_api: ApiClient, namespace: str, name: str) -> tuple[Any, dict[str, str]]:
    secret = k8s.CoreV1Api(kube_api).read_namespaced_secret(name, namespace)
    data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
    return secret, data


def _assert_octavia_amphora(build: dict[str, Any], amphora: dict[str, Any]) -> None:
    """What Octavia got back matches the Amphora, in Octavia's words."""
    obj = build["compute_obj"]
    assert obj["status"] == "ACTIVE"
    assert obj["compute_id"] == build["compute_id"] == amphora["metadata"]["name"]
    assert amphora["status"]["phase"] == "Ready"
    assert obj["lb_network_ip"], obj
    assert obj["lb_network_ip"] == amphora["status"]["addresses"][0]
    assert build["status"] == "UP"
    assert build["attach"].startswith("NotImplementedError: ")
    assert "no in-place network attachment" in build["attach"]
    labels = amphora["metadata"]["labels"]
    assert labels["octavia.amphora-operator.dev/amphora-name"] == f"amphora-{build['amphora_id']}"
    assert amphora["spec"]["tags"] == [f"amphora-{build['amphora_id']}"]


def _assert_boot_secret(kube_api: ApiClient, namespace: str, amphora: dict[str, Any]) -> None:
    """User data and the four config-drive files live in a Secret owned by the Amphora."""
    spec = amphora["spec"]
    name = f"{amphora['metadata']['name']}-boot"
    assert spec["userData"] == {"secretRef": {"name": name, "key": "user-data"}}
    files = {f["path"]: f["secretRef"] for f in spec["configDriveFiles"]}
    assert set(files) == OCTAVIA_FILES
    assert all(ref["name"] == name and "content" not in ref for ref in files.values())
    secret, data = _secret_data(kube_api, namespace, name)
    owners = secret.metadata.owner_references or []
    assert [(o.kind, o.name, o.uid) for o in owners] == [
        ("Amphora", amphora["metadata"]["name"], amphora["metadata"]["uid"])
    ]
    assert secret.metadata.labels["app.kubernetes.io/managed-by"] == "amphora-octavia"
    assert data[files["/etc/octavia/certs/server.pem"]["key"]] == SERVER_PEM
    assert data[files["/etc/octavia/certs/client_ca.pem"]["key"]] == CLIENT_CA
    assert "[amphora_agent]" in data[files["/etc/octavia/amphora-agent.conf"]["key"]]
    assert data["user-data"].startswith("#cloud-config")
    # Nothing of it is inline in the Amphora, which anyone who may read Amphorae sees.
    assert "BEGIN CERTIFICATE" not in json.dumps(amphora)


def octavia_openstack_sections(nova_box: NovaBoxInfo) -> dict[str, dict[str, Any]]:
    """Octavia's [service_auth] and [nova] for the box, from the box's own clouds.yaml."""
    cloud = yaml.safe_load(nova_box.clouds_yaml_content())["clouds"][nova_box.cloud]
    nova = {"region_name": cloud.get("region_name", "RegionOne")}
    if cloud.get("compute_endpoint_override"):
        nova["endpoint"] = cloud["compute_endpoint_override"]
    return {
        "service_auth": {"auth_type": cloud.get("auth_type", "password"), **cloud.get("auth", {})},
        "nova": nova,
    }


def _container_operator(start_operator: Callable[..., OperatorProcess], tmp_path: Any
                        ) -> OperatorProcess:  # fmt: skip
    config = noop_config(tmp_path / "noop.json", profiles={"container": {"driver": "container"}})
    config["defaults"] = {"VM": "noop", "BareMetal": "noop", "Container": "container"}
    return start_operator(config)


@pytest.mark.cluster
def test_container_amphora_built_waited_for_and_deleted_by_octavia(
    octavia: Callable[..., Octavia],
    start_operator: Callable[..., OperatorProcess],
    kube_api: ApiClient,
    namespace: str,
    tmp_path: Any,
) -> None:
    _container_operator(start_operator, tmp_path)
    oct_ = octavia(
        {
            "amp_boot_network_list": [MGMT_NET],
            "amp_flavor_id": "container-small",
            "amp_secgroup_list": [SECGROUP],
        },
        {
            "flavor_map": {"container-small": "Container/small"},
            "image_map": {"amphora": CONTAINER_IMAGE},
            "network_map": {MGMT_NET: "pod"},
        },
    )
    build = oct_.run("build", {"server_pem": SERVER_PEM, "server_group": True})

    amphora = _amphora(kube_api, namespace, build["compute_id"])
    _assert_octavia_amphora(build, amphora)
    _assert_boot_secret(kube_api, namespace, amphora)
    group = build["server_group_id"]
    assert amphora["spec"] == {
        **amphora["spec"],
        "type": "Container",
        "flavor": "small",
        "image": CONTAINER_IMAGE,
        "networks": [],  # the management network is the Pod network
        "securityGroups": [SECGROUP],
        "keys": [PUBLIC_KEY],
        "serverGroup": {"name": group, "policy": "anti-affinity"},
    }
    assert amphora["metadata"]["annotations"]["octavia.amphora-operator.dev/key-name"] == KEY_NAME
    # The container driver's Pod carries the server group and runs with that address.
    pods = k8s.CoreV1Api(kube_api).list_namespaced_pod(namespace).items
    assert [p.metadata.labels["amphora-operator.dev/server-group"] for p in pods] == [group]
    assert pods[0].status.pod_ip == build["compute_obj"]["lb_network_ip"]

    gone = oct_.run("delete", {**build, "server_group_id": group})
    assert gone["not_found"] == f"Amphora {build['compute_id']} not found."
    assert set(gone["statuses_while_deleting"]) <= {"DELETED", "ACTIVE"}
    assert _wait_empty(kube_api, namespace) == {}
    print(f"Octavia up in {oct_.start_seconds} s, runs {oct_.runs}; flow: build "
          f"{build['seconds']} s, deleted and gone {gone['gone_seconds']} s")  # fmt: skip


@pytest.mark.cluster
@pytest.mark.nova
def test_vm_amphora_built_through_nova_and_deleted_by_octavia(
    octavia: Callable[..., Octavia],
    start_operator: Callable[..., OperatorProcess],
    kube_api: ApiClient,
    namespace: str,
    nova_box: NovaBoxInfo,
    tmp_path: Any,
) -> None:
    managed_tag = f"octavia-{uuid.uuid4().hex[:8]}"
    config = noop_config(
        tmp_path / "noop.json",
        profiles={
            "nova": {
                "driver": "nova",
                "options": {
                    "clouds_yaml_content": nova_box.clouds_yaml_content(),
                    "cloud": nova_box.cloud,
                    "managed_tag": managed_tag,
                    "api_timeout": 10,
                },
            }
        },
        # A build is several Nova calls; on two loaded cores one call can take 10 s.
        reconcile={"driverCallTimeout": 60},
    )
    config["defaults"] = {"VM": "nova", "BareMetal": "nova", "Container": "noop"}
    start_operator(config)
    key_name = f"octavia-{uuid.uuid4().hex[:8]}"
    oct_ = octavia(
        {
            "amp_boot_network_list": [nova_box.network_id],
            "amp_flavor_id": nova_box.flavor_id,
            "amp_ssh_key_name": key_name,
        },
        # The box's Glance has no tags: the tag is mapped to the box's image id. The key is
        # the Nova keypair's, read with Octavia's own Nova client and [service_auth].
        {"image_map": {"amphora": nova_box.image_id}, "default_type": "VM", "key_source": "nova"},
        **octavia_openstack_sections(nova_box),
    )
    # Nova keypairs belong to a user: create it as the user Octavia's [service_auth] is.
    as_service_user = connect(
        clouds_yaml_content=nova_box.clouds_yaml_content(), cloud=nova_box.cloud
    )
    with contextlib.closing(as_service_user) as conn:
        conn.compute.create_keypair(name=key_name, public_key=PUBLIC_KEY)
    build = oct_.run(
        "build", {"server_pem": SERVER_PEM, "availability_zone": {"compute_zone": "nova"}}
    )

    amphora = _amphora(kube_api, namespace, build["compute_id"])
    _assert_octavia_amphora(build, amphora)
    _assert_boot_secret(kube_api, namespace, amphora)
    spec = amphora["spec"]
    assert (spec["type"], spec["flavor"], spec["image"], spec["networks"]) == (
        "VM", nova_box.flavor_id, nova_box.image_id, [nova_box.network_id]
    )  # fmt: skip
    assert spec["availabilityZone"] == "nova"
    assert spec["keys"] == [PUBLIC_KEY]
    assert build["compute_obj"]["cached_zone"] == "nova"
    server_id = amphora["status"]["computeId"]
    with contextlib.closing(nova_box.connection()) as conn:
        server = conn.compute.get_server(server_id)
        nova_ips = [a["addr"] for net in server.addresses.values() for a in net]
        assert server.status == "ACTIVE"
        assert build["compute_obj"]["lb_network_ip"] in nova_ips

        gone = oct_.run("delete", build)
        assert gone["not_found"] == f"Amphora {build['compute_id']} not found."
        assert _wait_empty(kube_api, namespace) == {}
        with pytest.raises(openstack.exceptions.NotFoundException):
            conn.compute.get_server(server_id)
        assert [s.id for s in conn.compute.servers(tags=managed_tag)] == []
    with contextlib.closing(
        connect(clouds_yaml_content=nova_box.clouds_yaml_content(), cloud=nova_box.cloud)
    ) as conn:
        conn.compute.delete_keypair(key_name)
    print(f"Octavia up in {oct_.start_seconds} s, runs {oct_.runs}; flow: build "
          f"{build['seconds']} s, deleted and gone {gone['gone_seconds']} s")  # fmt: skip


@pytest.mark.cluster
def test_octavia_sees_a_failed_build_as_its_compute_build_exception(
    octavia: Callable[..., Octavia],
    start_operator: Callable[..., OperatorProcess],
    kube_api: ApiClient,
    namespace: str,
    tmp_path: Any,
) -> None:
    """A flavor the container driver lacks: Failed → ERROR → ComputeBuildException with the
    operator's fault; Octavia's revert deletes the Amphora. An unmapped Container image is
    refused before anything is created."""
    _container_operator(start_operator, tmp_path)
    oct_ = octavia(
        {"amp_boot_network_list": [MGMT_NET], "amp_flavor_id": "container-huge"},
        {
            "flavor_map": {"container-huge": "Container/no-such-flavor"},
            "image_map": {"amphora": CONTAINER_IMAGE},
            "network_map": {MGMT_NET: "pod"},
        },
    )
    failed = oct_.run("build", {"server_pem": SERVER_PEM, "expect_failure": True})
    assert failed["error"].startswith("ComputeBuildException: Failed to build compute instance")
    assert "no-such-flavor" in failed["error"], failed
    assert _wait_empty(kube_api, namespace) == {}

    refused = oct_.run(
        "build",
        {"server_pem": SERVER_PEM, "expect_failure": True},
        overrides={"controller_worker": {"amp_image_tag": "unmapped"}},
    )
    assert "image_tag 'unmapped': a Container amphora needs its image listed" in refused["error"]
    assert _leftovers(kube_api, namespace) == {}


@pytest.mark.cluster
def test_flavor_and_availability_zone_validation_through_the_provider_driver(
    octavia: Callable[..., Octavia],
) -> None:
    oct_ = octavia(
        {},
        {"flavor_map": {"container-small": "Container/small", "broken": "Blob/small"}},
    )
    result = oct_.run(
        "validate",
        {
            "flavors": ["container-small", "m1.amphora", "broken", "x" * 300],
            "zones": ["nova", "z" * 300],
        },
    )
    flavors, zones = result["flavors"], result["zones"]
    assert flavors["container-small"] == "ok"
    assert flavors["m1.amphora"] == "ok"
    assert flavors["broken"] == "InvalidSubresource: Amphora flavor broken not found."
    assert flavors["x" * 300].startswith("InvalidSubresource: Amphora flavor xxx")
    assert zones["nova"] == "ok"
    assert zones["z" * 300].startswith("InvalidSubresource: Amphora availability zone zzz")


#: Octavia 19's unit tests of the compute area. None is written against ComputeBase alone:
#: test_nova_driver mocks novaclient inside the Nova driver, noop_driver/test_driver asserts on
#: the noop driver's private call records, and test_compute_tasks patches the driver out of
#: stevedore. They cannot take another driver; run beside the plugin, they prove that its
#: installation (the Kubernetes client and what it pulls in) leaves Octavia's own code working.
OCTAVIA_COMPUTE_UNIT_TESTS = [
    "octavia.tests.unit.compute.drivers.test_nova_driver",
    "octavia.tests.unit.compute.drivers.noop_driver.test_driver",
    "octavia.tests.unit.controller.worker.v2.tasks.test_compute_tasks",
]


def test_octavias_own_compute_unit_tests_pass_beside_the_plugin(octavia_venv: OctaviaVenv) -> None:
    script = (
        "import sys, unittest, octavia.common.config, amphora_octavia.driver\n"
        "suite = unittest.defaultTestLoader.loadTestsFromNames(sys.argv[1:])\n"
        "result = unittest.TextTestRunner(stream=sys.stderr, verbosity=1).run(suite)\n"
        "print(result.testsRun, len(result.failures), len(result.errors), len(result.skipped))\n"
    )
    done = subprocess.run(
        [str(octavia_venv.python), "-c", script, *OCTAVIA_COMPUTE_UNIT_TESTS],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHONPATH": str(octavia_venv.plugin_site)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    run, failures, errors, skipped = map(int, done.stdout.split())
    assert (failures, errors, skipped) == (0, 0, 0), done.stderr[-4000:]
    assert run == 63  # 39 Nova driver + 10 noop driver + 14 compute task tests in 19.0.0
