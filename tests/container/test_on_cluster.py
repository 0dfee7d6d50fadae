"""The Container driver's own promises, end to end on the real control plane (kwok Nodes).

kwok plays the kubelet: the real scheduler binds Pods, kwok marks them Running and Ready and hands
out Pod IPs. It cannot fail an image pull, and it would overwrite a Pending status at once, so
ImagePullBackOff is mapped from a Pod read from the API with the kubelet's status laid over it
(and in ``test_status.py``); a CrashLoopBackOff (phase Running, which kwok leaves alone) is
written into a real Pod's status, as a kubelet would, and observed through the driver.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from amphora_drivers.container import (
    DEFAULT_AUTHORIZED_KEYS_PATH,
    DEFAULT_USER_DATA_PATH,
    LABEL_ID,
    LABEL_OWNER,
    ContainerDriver,
    observe_pod,
)
from amphora_drivers.exceptions import AmphoraBuildError, AmphoraComputeError, Reason
from amphora_drivers.testing import make_ssh_public_key, wait_for
from amphora_drivers.types import AmphoraState, ServerGroup
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.container.support import IMAGE, TIMEOUT, fresh, items, wait_state
from tests.fixtures.control_plane import Cluster

pytestmark = pytest.mark.cluster

ZONE_LABEL = "topology.kubernetes.io/zone"


@pytest.fixture
def core(kube_api: ApiClient) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(kube_api)


@pytest.fixture
def apps(kube_api: ApiClient) -> k8s.AppsV1Api:
    return k8s.AppsV1Api(kube_api)


@pytest.fixture
def cleanup(driver: ContainerDriver) -> Iterator[list[str]]:
    """Amphora ids a test appends to are deleted afterwards, whatever happened."""
    built: list[str] = []
    yield built
    for amphora_id in built:
        driver.delete(amphora_id)


def test_pod_runs_on_a_kwok_node_with_every_field_mapped(
    driver: ContainerDriver,
    namespace: str,
    core: k8s.CoreV1Api,
    apps: k8s.AppsV1Api,
    kube_api: ApiClient,
    cleanup: list[str],
) -> None:
    name, owner = fresh()
    keys = [make_ssh_public_key("ops-a"), make_ssh_public_key("ops-b")]
    files = {
        "/etc/octavia/amphora-agent.conf": "[amphora_agent]\nagent_server_network_dir = /x\n",
        "/etc/octavia/certs/server.pem": b"-----BEGIN CERTIFICATE-----\n",
    }
    amphora_id = driver.build(
        "Container",
        "medium",
        IMAGE,
        keys=keys,
        sec_groups=["lb-mgmt-sec-grp"],
        network_ids=["lb-mgmt-net"],
        config_drive_files=files,
        user_data="#cloud-config\n",
        name=name,
        owner=owner,
        tags=["octavia"],
        availability_zone="zone-b",
        server_group=ServerGroup(name="lb-1", policy="soft-anti-affinity"),
    )
    cleanup.append(amphora_id)

    amphora = wait_state(driver, amphora_id, AmphoraState.ACTIVE)
    assert (amphora.raw_state, amphora.owner, amphora.tags) == (
        "Running/Ready",
        owner,
        ("octavia",),
    )
    workload = apps.read_namespaced_stateful_set(name, namespace)
    (pod,) = items(core.list_namespaced_pod, namespace, label_selector=f"{LABEL_ID}={amphora_id}")
    assert pod.metadata.name == f"{name}-0"
    assert pod.metadata.owner_references[0].uid == workload.metadata.uid
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.annotations["kwok.x-k8s.io/node"] == "fake"
    assert node.metadata.labels[ZONE_LABEL] == "zone-b"
    assert amphora.addresses == (pod.status.pod_ip,)
    assert pod.metadata.labels[LABEL_OWNER] == owner
    assert pod.metadata.labels["secgroup.amphora-operator.dev/lb-mgmt-sec-grp"] == "true"
    assert pod.metadata.annotations["k8s.v1.cni.cncf.io/networks"] == "lb-mgmt-net"

    (container,) = pod.spec.containers
    assert container.image == IMAGE
    assert container.resources.requests == {"cpu": "500m", "memory": "512Mi"}
    assert container.resources.limits == {"cpu": "2", "memory": "1Gi"}
    mounts = {m.mount_path: (m.name, m.sub_path, m.read_only) for m in container.volume_mounts}
    assert mounts == {
        DEFAULT_AUTHORIZED_KEYS_PATH: ("ssh-keys", "authorized_keys", None),
        "/etc/octavia/amphora-agent.conf": ("files", "file-0", None),
        "/etc/octavia/certs/server.pem": ("files", "file-1", None),
        DEFAULT_USER_DATA_PATH: ("user-data", "user-data", None),
    }
    assert {e.name: e.value for e in container.env} == {
        "AMPHORA_USER_DATA_FILE": DEFAULT_USER_DATA_PATH
    }
    volumes = {v.name: (v.secret.secret_name, v.secret.default_mode) for v in pod.spec.volumes}
    assert volumes == {
        "ssh-keys": (f"{name}-ssh-keys", 0o644),
        "files": (f"{name}-files", 0o440),
        "user-data": (f"{name}-user-data", 0o440),
    }

    def data(secret: str) -> dict[str, bytes]:
        found = core.read_namespaced_secret(secret, namespace)
        assert found.metadata.owner_references[0].uid == workload.metadata.uid
        assert found.metadata.labels[LABEL_OWNER] == owner
        return {k: base64.b64decode(v) for k, v in found.data.items()}

    assert data(f"{name}-ssh-keys") == {"authorized_keys": "".join(f"{k}\n" for k in keys).encode()}
    assert data(f"{name}-files") == {
        "file-0": files["/etc/octavia/amphora-agent.conf"].encode(),
        "file-1": files["/etc/octavia/certs/server.pem"],
    }
    assert json.loads(
        core.read_namespaced_secret(f"{name}-files", namespace).metadata.annotations[
            "amphora-operator.dev/files"
        ]
    ) == {"file-0": "/etc/octavia/amphora-agent.conf", "file-1": "/etc/octavia/certs/server.pem"}
    assert data(f"{name}-user-data") == {"user-data": b"#cloud-config\n"}

    policy = k8s.NetworkingV1Api(kube_api).read_namespaced_network_policy(
        f"{name}-secgroups", namespace
    )
    assert policy.metadata.owner_references[0].uid == workload.metadata.uid
    assert policy.spec.pod_selector.match_labels == {LABEL_ID: amphora_id}
    assert policy.spec.policy_types == ["Ingress"]
    (rule,) = policy.spec.ingress
    assert [p.pod_selector.match_labels for p in rule._from] == [
        {"secgroup.amphora-operator.dev/lb-mgmt-sec-grp": "true"}
    ]

    affinity = pod.spec.affinity
    zone_term = affinity.node_affinity.required_during_scheduling_ignored_during_execution
    assert zone_term.node_selector_terms[0].match_expressions[0].values == ["zone-b"]
    (preferred,) = affinity.pod_anti_affinity.preferred_during_scheduling_ignored_during_execution
    assert preferred.pod_affinity_term.label_selector.match_labels == {
        "amphora-operator.dev/server-group": "lb-1"
    }


def test_suspend_keeps_the_secrets_and_the_id(
    driver: ContainerDriver, namespace: str, core: k8s.CoreV1Api, cleanup: list[str]
) -> None:
    name, owner = fresh()
    amphora_id = driver.build(
        "Container", image_id=IMAGE, name=name, owner=owner, user_data="boot", keys=[]
    )
    cleanup.append(amphora_id)
    wait_state(driver, amphora_id, AmphoraState.ACTIVE)
    driver.suspend(amphora_id)
    # SUSPENDED as soon as replicas is 0 ("Suspending"), "Suspended" once the Pod is gone.
    assert wait_state(driver, amphora_id, AmphoraState.SUSPENDED).addresses == ()
    wait_for(
        lambda: driver.get_amphora(amphora_id=amphora_id).raw_state,
        lambda raw: raw == "Suspended",
        timeout=TIMEOUT,
    )
    selector = f"{LABEL_ID}={amphora_id}"
    assert items(core.list_namespaced_pod, namespace, label_selector=selector) == []
    assert [s.metadata.name for s in items(core.list_namespaced_secret, namespace)] == [
        f"{name}-user-data"
    ]
    driver.resume(amphora_id)
    assert wait_state(driver, amphora_id, AmphoraState.ACTIVE).id == amphora_id


def test_unschedulable_flavor_reports_the_schedulers_reason(
    driver: ContainerDriver, cleanup: list[str]
) -> None:
    name, owner = fresh()
    amphora_id = driver.build("Container", "huge", IMAGE, name=name, owner=owner)
    cleanup.append(amphora_id)
    amphora = wait_state(driver, amphora_id, AmphoraState.ERROR)
    assert amphora.raw_state == "Pending/Unschedulable"
    assert amphora.fault is not None
    # 0/2 with the kwok Nodes alone, 0/3 once the (tainted) real Node has joined.
    assert re.match(r"Unschedulable: 0/\d nodes are available", amphora.fault)
    assert "Insufficient cpu" in amphora.fault
    assert "smaller flavor" in amphora.fault


def test_hard_anti_affinity_spreads_and_then_cannot_place(
    driver: ContainerDriver, core: k8s.CoreV1Api, namespace: str, cleanup: list[str]
) -> None:
    group = ServerGroup(name=fresh("sg")[0], policy="anti-affinity")
    built = []
    for _ in range(3):
        name, owner = fresh()
        built.append(
            driver.build("Container", image_id=IMAGE, name=name, owner=owner, server_group=group)
        )
        cleanup.append(built[-1])
    nodes = set()
    for amphora_id in built[:2]:
        wait_state(driver, amphora_id, AmphoraState.ACTIVE)
        (pod,) = items(
            core.list_namespaced_pod, namespace, label_selector=f"{LABEL_ID}={amphora_id}"
        )
        nodes.add(pod.spec.node_name)
    assert len(nodes) == 2, "two members of an anti-affinity group share a node"
    third = wait_state(driver, built[2], AmphoraState.ERROR)
    assert third.fault is not None and "anti-affinity" in third.fault


def test_delete_leaves_nothing_with_the_owner_label(
    driver: ContainerDriver, namespace: str, kube_api: ApiClient
) -> None:
    name, owner = fresh()
    amphora_id = driver.build(
        "Container",
        image_id=IMAGE,
        name=name,
        owner=owner,
        keys=[make_ssh_public_key()],
        config_drive_files={"/etc/a.conf": "a"},
        user_data="u",
        sec_groups=["default"],
    )
    wait_state(driver, amphora_id, AmphoraState.ACTIVE)
    core, apps = k8s.CoreV1Api(kube_api), k8s.AppsV1Api(kube_api)
    networking = k8s.NetworkingV1Api(kube_api)
    listings = {
        "StatefulSet": apps.list_namespaced_stateful_set,
        "ControllerRevision": apps.list_namespaced_controller_revision,
        "Pod": core.list_namespaced_pod,
        "Secret": core.list_namespaced_secret,
        "NetworkPolicy": networking.list_namespaced_network_policy,
    }

    def labelled() -> dict[str, list[str]]:
        found = {
            kind: [
                o.metadata.name
                for o in items(listing, namespace, label_selector=f"{LABEL_OWNER}={owner}")
            ]
            for kind, listing in listings.items()
        }
        return {kind: names for kind, names in found.items() if names}

    assert set(labelled()) == set(listings), "every kind carries the owner label"
    driver.delete(amphora_id)
    wait_for(lambda: driver.find(owner=owner), lambda found: not found, timeout=TIMEOUT)
    # Foreground deletion removes the Pod and Secrets before the StatefulSet; a
    # ControllerRevision the garbage collector had not seen yet follows a moment later.
    wait_for(labelled, lambda left: left == {}, timeout=TIMEOUT)
    driver.delete(amphora_id)  # idempotent


def test_adoption_after_a_crash_before_the_statefulset(
    kube_api: ApiClient,
    namespace: str,
    driver: ContainerDriver,
    apps: k8s.AppsV1Api,
    core: k8s.CoreV1Api,
    cleanup: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first operator dies after the Secrets, the second one completes the same amphora."""
    name, owner = fresh()
    request: dict[str, Any] = {
        "amphora_type": "Container",
        "image_id": IMAGE,
        "name": name,
        "owner": owner,
        "user_data": "first",
    }
    crashing = ContainerDriver(namespace=namespace, api_client=kube_api)

    def crash(*args: object) -> None:
        raise SystemExit("operator killed")

    monkeypatch.setattr(crashing, "_create_workload", crash)
    with pytest.raises(SystemExit):
        crashing.build(**request)
    assert crashing.find(owner=owner) == []
    left = core.read_namespaced_secret(f"{name}-user-data", namespace)
    assert left.metadata.owner_references is None

    restarted = ContainerDriver(namespace=namespace, api_client=kube_api)
    amphora_id = restarted.build(**{**request, "user_data": "second"})
    cleanup.append(amphora_id)
    assert driver.build(**request) == amphora_id  # and any later build adopts
    (workload,) = items(
        apps.list_namespaced_stateful_set, namespace, label_selector=f"{LABEL_OWNER}={owner}"
    )
    taken = core.read_namespaced_secret(f"{name}-user-data", namespace)
    assert taken.metadata.owner_references[0].uid == workload.metadata.uid
    assert taken.metadata.labels[LABEL_ID] == amphora_id
    assert base64.b64decode(taken.data["user-data"]) == b"second"
    wait_state(driver, amphora_id, AmphoraState.ACTIVE)


def test_adoption_after_a_crash_after_the_statefulset(
    kube_api: ApiClient, namespace: str, apps: k8s.AppsV1Api, cleanup: list[str]
) -> None:
    """The id was never recorded: a new driver object's build returns the same amphora."""
    name, owner = fresh()
    first = ContainerDriver(namespace=namespace, api_client=kube_api)
    amphora_id = first.build("Container", image_id=IMAGE, name=name, owner=owner)
    cleanup.append(amphora_id)
    second = ContainerDriver(namespace=namespace, api_client=kube_api)
    assert second.build("Container", image_id=IMAGE, name=name, owner=owner) == amphora_id
    selector = f"{LABEL_OWNER}={owner}"
    assert len(items(apps.list_namespaced_stateful_set, namespace, label_selector=selector)) == 1


def test_a_name_taken_by_another_owner_is_a_permanent_conflict(
    driver: ContainerDriver, cleanup: list[str]
) -> None:
    name, owner = fresh()
    cleanup.append(driver.build("Container", image_id=IMAGE, name=name, owner=owner, user_data="x"))
    with pytest.raises(AmphoraBuildError) as err:
        driver.build("Container", image_id=IMAGE, name=name, owner=fresh()[1], user_data="y")
    assert (err.value.reason, err.value.retryable, err.value.field) == (
        Reason.CONFLICT,
        False,
        "name",
    )
    assert f"belongs to owner {owner}" in str(err.value)


def test_crash_loop_written_by_the_kubelet_is_an_actionable_error(
    driver: ContainerDriver, core: k8s.CoreV1Api, namespace: str, cleanup: list[str]
) -> None:
    name, owner = fresh()
    amphora_id = driver.build("Container", image_id=IMAGE, name=name, owner=owner)
    cleanup.append(amphora_id)
    wait_state(driver, amphora_id, AmphoraState.ACTIVE)
    # What a kubelet writes after the entrypoint exited 1 three times (kwok never does).
    status = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
        "containerStatuses": [
            {
                "name": "amphora",
                "image": IMAGE,
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": 3,
                "lastState": {
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "startedAt": "2026-01-01T00:00:00Z",
                        "finishedAt": "2026-01-01T00:00:01Z",
                    }
                },
                "state": {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off 40s restarting failed container=amphora pod={name}-0",
                    }
                },
            }
        ],
    }
    core.patch_namespaced_pod_status(f"{name}-0", namespace, {"status": status})
    amphora = wait_state(driver, amphora_id, AmphoraState.ERROR)
    assert amphora.raw_state == "Running/CrashLoopBackOff"
    assert amphora.fault == (
        f"CrashLoopBackOff: back-off 40s restarting failed container=amphora pod={name}-0 "
        "(last exit code 1, Error); the image's entrypoint keeps exiting; "
        "see kubectl logs --previous"
    )


def test_image_pull_back_off_on_a_real_pod_response(
    driver: ContainerDriver, core: k8s.CoreV1Api, namespace: str, cleanup: list[str]
) -> None:
    """kwok cannot fail a pull: map the kubelet's ImagePullBackOff onto a Pod read from the API."""
    name, owner = fresh()
    amphora_id = driver.build("Container", image_id=IMAGE, name=name, owner=owner)
    cleanup.append(amphora_id)
    wait_state(driver, amphora_id, AmphoraState.ACTIVE)
    response = core.read_namespaced_pod(f"{name}-0", namespace, _preload_content=False)
    pod = json.loads(response.data)
    pod["status"]["phase"] = "Pending"
    pod["status"]["containerStatuses"][0]["ready"] = False
    pod["status"]["containerStatuses"][0]["state"] = {
        "waiting": {
            "reason": "ImagePullBackOff",
            "message": f'Back-off pulling image "{IMAGE}"',
        }
    }
    observed = observe_pod(pod)
    assert (observed.state, observed.raw_state) == (AmphoraState.ERROR, "Pending/ImagePullBackOff")
    assert observed.fault == (
        f'ImagePullBackOff: Back-off pulling image "{IMAGE}"; '
        "check image_id and the registry's pull credentials"
    )
    assert observed.addresses == (pod["status"]["podIP"],)


def test_failed_pod_creation_is_reported_and_recovers(
    kube_api: ApiClient, cleanup: list[str], driver: ContainerDriver
) -> None:
    """A ResourceQuota forbids the Pod: ERROR with the controller's message, ACTIVE once lifted."""
    quota_namespace = f"{driver.namespace}-quota"
    core = k8s.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": quota_namespace}})
    try:
        core.create_namespaced_resource_quota(
            quota_namespace, {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}
        )
        limited = ContainerDriver(namespace=quota_namespace, api_client=kube_api)
        name, owner = fresh()
        amphora_id = limited.build("Container", image_id=IMAGE, name=name, owner=owner)
        amphora = wait_state(limited, amphora_id, AmphoraState.ERROR)
        assert amphora.raw_state == "NoPod/FailedCreate"
        assert amphora.fault is not None and "exceeded quota: no-pods" in amphora.fault
        core.delete_namespaced_resource_quota("no-pods", quota_namespace)
        # The StatefulSet controller retries with backoff; the state follows without a rebuild.
        wait_state(limited, amphora_id, AmphoraState.ACTIVE, timeout=60)
    finally:
        core.delete_namespace(quota_namespace)


def test_flavor_configmap_overrides_the_table(
    kube_api: ApiClient, namespace: str, core: k8s.CoreV1Api, cleanup: list[str]
) -> None:
    configmap = fresh("flavors")[0]
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {"name": configmap},
            "data": {
                "small": "requests: {cpu: 100m, memory: 128Mi}\n",
                "tiny": "requests: {cpu: 50m}\nlimits: {cpu: 100m}\n",
                "broken": "requests: {cpu: lots}\n",
            },
        },
    )
    flavored = ContainerDriver(namespace=namespace, api_client=kube_api, flavor_configmap=configmap)
    for flavor, requests in (
        ("small", {"cpu": "100m", "memory": "128Mi"}),
        ("tiny", {"cpu": "50m"}),
    ):
        name, owner = fresh()
        amphora_id = flavored.build("Container", flavor, IMAGE, name=name, owner=owner)
        cleanup.append(amphora_id)
        (pod,) = wait_for(
            lambda amphora_id=amphora_id: items(
                core.list_namespaced_pod, namespace, label_selector=f"{LABEL_ID}={amphora_id}"
            ),
            lambda pods: len(pods) == 1,
            timeout=TIMEOUT,
        )
        assert pod.spec.containers[0].resources.requests == requests
    complaints = {
        "broken": f"flavor 'broken' in ConfigMap {namespace}/{configmap} is invalid",
        "missing": "no flavor 'missing' (known: broken, large, medium, small, tiny)",
    }
    for flavor, complaint in complaints.items():
        name, owner = fresh()
        with pytest.raises(AmphoraBuildError) as err:
            flavored.build("Container", flavor, IMAGE, name=name, owner=owner)
        assert (err.value.reason, err.value.field) == (Reason.FLAVOR_NOT_FOUND, "amphora_flavor")
        assert complaint in str(err.value)


def test_missing_rbac_is_a_permanent_forbidden(
    control_plane: Cluster, kube_api: ApiClient, namespace: str, core: k8s.CoreV1Api
) -> None:
    """No rights: find() is Forbidden. Read-only rights: build() is Forbidden at create."""
    nobody, reader = fresh("nobody")[0], fresh("reader")[0]
    for account in (nobody, reader):
        core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    rbac = k8s.RbacAuthorizationV1Api(kube_api)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": reader},
            "rules": [
                {"apiGroups": ["apps"], "resources": ["statefulsets"], "verbs": ["list"]},
                {"apiGroups": [""], "resources": ["pods", "events"], "verbs": ["list"]},
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": reader},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": reader},
            "subjects": [{"kind": "ServiceAccount", "name": reader, "namespace": namespace}],
        },
    )
    nobody_token = control_plane.service_account_token(namespace, nobody)
    with control_plane.api_client(nobody_token) as c, pytest.raises(AmphoraComputeError) as err:
        ContainerDriver(namespace=namespace, api_client=c).find()
    assert (err.value.reason, err.value.retryable) == ("Forbidden", False)
    assert 'cannot list resource "statefulsets"' in str(err.value)
    assert "grant the driver's identity the RBAC rules" in str(err.value)

    with control_plane.api_client(control_plane.service_account_token(namespace, reader)) as c:
        read_only = ContainerDriver(namespace=namespace, api_client=c)

        def can_list() -> bool:
            try:
                read_only.find()
            except AmphoraComputeError:
                return False  # the RoleBinding has not reached the authorizer yet
            return True

        wait_for(can_list, bool, timeout=TIMEOUT)
        name, owner = fresh()
        with pytest.raises(AmphoraBuildError) as build_err:
            read_only.build("Container", image_id=IMAGE, name=name, owner=owner)
    assert (build_err.value.reason, build_err.value.retryable) == ("Forbidden", False)
    assert 'cannot create resource "statefulsets"' in str(build_err.value)


def test_secret_contents_never_reach_the_logs(
    driver: ContainerDriver, caplog: pytest.LogCaptureFixture, cleanup: list[str]
) -> None:
    secrets = {"user_data": "s3cr3t-user-data", "file": "s3cr3t-file", "key": make_ssh_public_key()}
    caplog.set_level(logging.DEBUG)
    name, owner = fresh()
    amphora_id = driver.build(
        "Container",
        image_id=IMAGE,
        name=name,
        owner=owner,
        user_data=secrets["user_data"],
        config_drive_files={"/etc/secret.conf": secrets["file"]},
        keys=[secrets["key"]],
    )
    cleanup.append(amphora_id)
    wait_state(driver, amphora_id, AmphoraState.ACTIVE)
    driver.delete(amphora_id)
    assert caplog.records, "the driver logs what it does"
    for value in secrets.values():
        assert value not in caplog.text
        assert base64.b64encode(value.encode()).decode() not in caplog.text


def test_malformed_statefulsets_are_skipped_and_reported(
    driver: ContainerDriver,
    apps: k8s.AppsV1Api,
    namespace: str,
    cleanup: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A tenant can label anything as ours; listing the good amphorae must still work."""
    name, owner = fresh()
    good = driver.build("Container", image_id=IMAGE, name=name, owner=owner)
    cleanup.append(good)
    bad = {
        f"{name}-no-id": ({}, {}),
        f"{name}-bad-tags": ({LABEL_ID: "bad-tags-id"}, {"amphora-operator.dev/tags": "{oops"}),
    }
    for bad_name, (labels, notes) in bad.items():
        apps.create_namespaced_stateful_set(
            namespace,
            {
                "metadata": {
                    "name": bad_name,
                    "labels": {
                        "app.kubernetes.io/managed-by": "amphora-container-driver",
                        **labels,
                    },
                    "annotations": notes,
                },
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"x": bad_name}},
                    "template": {
                        "metadata": {"labels": {"x": bad_name}},
                        "spec": {"containers": [{"name": "c", "image": IMAGE}]},
                    },
                },
            },
        )
    try:
        with caplog.at_level(logging.WARNING):
            found = {a.id for a in driver.find()}
        assert good in found
        assert driver.skipped == (
            f"{name}-bad-tags: annotation amphora-operator.dev/tags is not JSON",
            f"{name}-no-id: label {LABEL_ID} is missing or not a valid label value",
        )
        assert f"skipping malformed StatefulSet {namespace}/{name}-no-id" in caplog.text
        assert driver.get_amphora(amphora_id=good).id == good
    finally:
        for bad_name in bad:
            apps.delete_namespaced_stateful_set(bad_name, namespace)
