"""Container amphorae on the real kubelet + containerd Node: real processes, real failures.

Every test here runs in a namespace enforcing the ``restricted`` Pod Security level, with the
driver's Pods pinned to the real Node (``REAL_NODE_OPTIONS``). What runs is checked inside the
container (``kubectl exec``) and from containerd itself (``ctr``), never from the API alone.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
from amphora_devtools import images
from amphora_devtools.real_node import RealNode
from amphora_drivers.container import (
    DEFAULT_AUTHORIZED_KEYS_PATH,
    DEFAULT_USER_DATA_PATH,
    FILE_MODE,
    KEYS_MODE,
    ContainerDriver,
)
from amphora_drivers.testing import make_ssh_public_key, wait_for
from amphora_drivers.types import AmphoraState
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.container.support import REAL_NODE_OPTIONS, RESTRICTED, fresh, wait_state
from tests.fixtures.control_plane import Kubectl

pytestmark = [pytest.mark.cluster, pytest.mark.real_node]

START = 60.0  # a Pod on the real Node: schedule, sandbox, container, first probe
GC = 90.0  # the kubelet removes dead containers in a GC pass once a minute


@pytest.fixture
def built(real_driver: ContainerDriver) -> Iterator[list[str]]:
    """Amphora ids a test appends to are deleted afterwards, whatever happened."""
    ids: list[str] = []
    yield ids
    for amphora_id in ids:
        real_driver.delete(amphora_id)


def amphora_tasks(
    node: RealNode, namespace: str, pod: str, containers: dict[str, dict[str, Any]] | None = None
) -> dict[str, str]:
    """containerd's view of the Pod's ``amphora`` container: container id -> task status."""
    tasks = node.tasks()
    found = {}
    for cid, record in (node.containers() if containers is None else containers).items():
        labels = record.get("Labels", {})
        if (
            labels.get("io.kubernetes.pod.namespace") == namespace
            and labels.get("io.kubernetes.pod.name") == pod
            and labels.get("io.kubernetes.container.name") == "amphora"
        ):
            found[cid] = tasks.get(cid, "NO-TASK")
    return found


def namespace_containers(node: RealNode, namespace: str) -> list[str]:
    """Every containerd container (sandboxes included) of Pods in ``namespace``."""
    return [
        cid
        for cid, record in node.containers().items()
        if record.get("Labels", {}).get("io.kubernetes.pod.namespace") == namespace
    ]


def test_files_keys_and_user_data_are_in_the_container_exactly(
    real_driver: ContainerDriver,
    restricted_namespace: str,
    kubectl: Kubectl,
    built: list[str],
) -> None:
    name, owner = fresh()
    keys = [make_ssh_public_key("ops-a"), make_ssh_public_key("ops-b")]
    files = {
        "/etc/octavia/amphora-agent.conf": "[amphora_agent]\nagent_server_network_dir = /x\n",
        "/etc/octavia/certs/server.pem": "-----BEGIN CERTIFICATE-----\nMIIB\n",
        "/var/lib/octavia/ping-wrapper.sh": '#!/bin/sh\nexec ping "$@"\n',
    }
    user_data = "#cloud-config\nwrite_files: []\n"
    amphora_id = real_driver.build(
        "Container",
        image_id=images.STANDIN,
        keys=keys,
        config_drive_files=files,
        user_data=user_data,
        name=name,
        owner=owner,
    )
    built.append(amphora_id)
    amphora = wait_state(real_driver, amphora_id, AmphoraState.ACTIVE, timeout=START)
    assert amphora.addresses and amphora.addresses[0].startswith("10.88.77.")

    def inside(*command: str) -> str:
        return kubectl("exec", "-n", restricted_namespace, f"{name}-0", "--", *command).stdout

    expected = {
        **{path: (content, FILE_MODE) for path, content in files.items()},
        DEFAULT_AUTHORIZED_KEYS_PATH: ("".join(f"{k}\n" for k in keys), KEYS_MODE),
        DEFAULT_USER_DATA_PATH: (user_data, FILE_MODE),
    }
    for path, (content, mode) in expected.items():
        assert inside("cat", path) == content, path
        assert inside("stat", "-L", "-c", "%a", path).strip() == f"{mode:o}", path
    assert inside("sh", "-c", "echo $AMPHORA_USER_DATA_FILE").strip() == DEFAULT_USER_DATA_PATH
    # Non-root, and the files are readable through the fsGroup, not by being root.
    identity = inside("id")
    assert identity.startswith("uid=65532(amphora) gid=65532(amphora)"), identity
    assert inside("wget", "-qO-", f"http://127.0.0.1:{images.AGENT_PORT}/1.0/info").startswith(
        '{"api_version": "1.0"'
    )


def test_suspend_stops_the_process_and_resume_starts_it(
    real_driver: ContainerDriver,
    restricted_namespace: str,
    real_node: RealNode,
    built: list[str],
) -> None:
    name, owner = fresh()
    amphora_id = real_driver.build("Container", image_id=images.STANDIN, name=name, owner=owner)
    built.append(amphora_id)
    wait_state(real_driver, amphora_id, AmphoraState.ACTIVE, timeout=START)
    pod = f"{name}-0"
    (first,) = amphora_tasks(real_node, restricted_namespace, pod).items()
    assert first[1] == "RUNNING"

    real_driver.suspend(amphora_id)
    wait_state(real_driver, amphora_id, AmphoraState.SUSPENDED, timeout=START)
    # The process is gone at once; the stopped container waits for the kubelet's GC.
    wait_for(
        lambda: amphora_tasks(real_node, restricted_namespace, pod),
        lambda tasks: "RUNNING" not in tasks.values(),
        timeout=START,
    )

    real_driver.resume(amphora_id)
    wait_state(real_driver, amphora_id, AmphoraState.ACTIVE, timeout=START)
    running = {
        cid
        for cid, status in amphora_tasks(real_node, restricted_namespace, pod).items()
        if status == "RUNNING"
    }
    assert len(running) == 1 and first[0] not in running, "a new process, not the old one"


def test_delete_leaves_no_container_in_containerd(
    real_driver: ContainerDriver,
    restricted_namespace: str,
    real_node: RealNode,
) -> None:
    name, owner = fresh()
    amphora_id = real_driver.build("Container", image_id=images.STANDIN, name=name, owner=owner)
    wait_state(real_driver, amphora_id, AmphoraState.ACTIVE, timeout=START)
    assert amphora_tasks(real_node, restricted_namespace, f"{name}-0")
    real_driver.delete(amphora_id)
    wait_for(lambda: real_driver.find(owner=owner), lambda found: found == [], timeout=START)

    def of_this_pod() -> list[str]:
        return [
            cid
            for cid, record in real_node.containers().items()
            if record.get("Labels", {}).get("io.kubernetes.pod.name") == f"{name}-0"
            and record.get("Labels", {}).get("io.kubernetes.pod.namespace") == restricted_namespace
        ]

    # The processes stop with the Pod; the kubelet's container GC (every minute) then removes
    # the containers and the sandbox.
    wait_for(
        lambda: amphora_tasks(real_node, restricted_namespace, f"{name}-0"),
        lambda tasks: "RUNNING" not in tasks.values(),
        timeout=START,
    )
    wait_for(of_this_pod, lambda left: left == [], timeout=GC)


def test_an_image_not_on_the_node_is_a_fault_naming_it(
    real_driver: ContainerDriver, built: list[str]
) -> None:
    missing = f"{images.REGISTRY}/standin:missing"
    name, owner = fresh()
    amphora_id = real_driver.build("Container", image_id=missing, name=name, owner=owner)
    built.append(amphora_id)
    amphora = wait_state(real_driver, amphora_id, AmphoraState.ERROR, timeout=START)
    assert amphora.raw_state == "Pending/ErrImageNeverPull"
    assert amphora.fault is not None and missing in amphora.fault
    assert "the image is not on the node and the pull policy forbids pulling" in amphora.fault


def test_repeated_exits_are_a_crash_loop_with_the_exit_code(
    real_driver: ContainerDriver, built: list[str]
) -> None:
    name, owner = fresh()
    amphora_id = real_driver.build(
        "Container", image_id=images.STANDIN_CRASH, name=name, owner=owner
    )
    built.append(amphora_id)
    amphora = wait_for(
        lambda: real_driver.get_amphora(amphora_id=amphora_id),
        lambda a: a.raw_state.endswith("/CrashLoopBackOff"),
        timeout=START,
    )
    assert amphora.state is AmphoraState.ERROR
    assert amphora.fault is not None
    assert f"(last exit code {images.CRASH_EXIT_CODE}, Error)" in amphora.fault
    assert "the image's entrypoint keeps exiting" in amphora.fault


def test_a_probe_that_never_passes_keeps_it_not_ready_with_the_reason(
    real_driver: ContainerDriver, real_node: RealNode, restricted_namespace: str, built: list[str]
) -> None:
    name, owner = fresh()
    amphora_id = real_driver.build(
        "Container", image_id=images.STANDIN_MUTE, name=name, owner=owner
    )
    built.append(amphora_id)
    amphora = wait_for(
        lambda: real_driver.get_amphora(amphora_id=amphora_id),
        lambda a: a.raw_state == "Running/ProbeFailing",
        timeout=START,
    )
    assert amphora.state is AmphoraState.BUILDING
    assert amphora.fault is not None
    assert "Readiness probe failed" in amphora.fault
    assert f":{images.AGENT_PORT}/1.0/info" in amphora.fault
    # It really runs (the process is up), it just does not serve.
    (status,) = amphora_tasks(real_node, restricted_namespace, f"{name}-0").values()
    assert status == "RUNNING"


def test_the_restricted_level_is_enforced_and_a_widened_profile_is_refused(
    kube_api: ApiClient, restricted_namespace: str
) -> None:
    """The amphorae above run under ``restricted``; NET_ADMIN needs a privileged namespace."""
    labels = k8s.CoreV1Api(kube_api).read_namespace(restricted_namespace).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    widened = ContainerDriver(
        namespace=restricted_namespace,
        api_client=kube_api,
        **{**REAL_NODE_OPTIONS, "security": {"capabilities": ["NET_ADMIN", "NET_RAW"]}},
    )
    name, owner = fresh()
    amphora_id = widened.build("Container", image_id=images.STANDIN, name=name, owner=owner)
    try:
        amphora = wait_state(widened, amphora_id, AmphoraState.ERROR, timeout=START)
        assert amphora.raw_state == "NoPod/FailedCreate"
        assert amphora.fault is not None
        assert 'violates PodSecurity "restricted:latest"' in amphora.fault
        assert "NET_ADMIN" in amphora.fault
    finally:
        widened.delete(amphora_id)


def test_a_lost_kubelet_is_reported_and_recovers(
    real_driver: ContainerDriver, real_node: RealNode, built: list[str]
) -> None:
    """Stop the kubelet (the container keeps running): UNKNOWN once the node lifecycle
    controller gives up on the Node (its grace period, ~50 s); ACTIVE again once it returns."""
    name, owner = fresh()
    amphora_id = real_driver.build("Container", image_id=images.STANDIN, name=name, owner=owner)
    built.append(amphora_id)
    wait_state(real_driver, amphora_id, AmphoraState.ACTIVE, timeout=START)
    real_node.stop_kubelet()
    try:
        lost = wait_state(real_driver, amphora_id, AmphoraState.UNKNOWN, timeout=120)
        assert lost.raw_state == "Running/NodeNotReady"
        assert lost.fault is not None and f"the Node {real_node.name} stopped reporting" in (
            lost.fault
        )
    finally:
        real_node.start_kubelet()
    real_node.wait_ready()
    wait_state(real_driver, amphora_id, AmphoraState.ACTIVE, timeout=START)


def test_twenty_amphorae_become_ready(
    real_driver: ContainerDriver,
    real_node: RealNode,
    kube_api: ApiClient,
    restricted_namespace: str,
    built: list[str],
    record_property: Any,
) -> None:
    """All 20 serve; the figures (Pod created → Amphora ACTIVE as the driver sees it) are
    recorded as test properties and printed for the closing note."""
    count = 20
    owners: dict[str, str] = {}
    for _ in range(count):
        name, owner = fresh("many")
        amphora_id = real_driver.build("Container", image_id=images.STANDIN, name=name, owner=owner)
        built.append(amphora_id)
        owners[amphora_id] = name
    active_at: dict[str, float] = {}
    deadline = time.monotonic() + 180
    while len(active_at) < count and time.monotonic() < deadline:
        for amphora in real_driver.find():
            if amphora.id in owners and amphora.state is AmphoraState.ACTIVE:
                active_at.setdefault(amphora.id, time.time())
        time.sleep(0.2)
    assert len(active_at) == count, f"{count - len(active_at)} of {count} never became ACTIVE"
    core = k8s.CoreV1Api(kube_api)
    to_active, to_ready = [], []
    for amphora_id, name in owners.items():
        pod = core.read_namespaced_pod(f"{name}-0", restricted_namespace)
        created = pod.metadata.creation_timestamp.timestamp()
        (ready,) = [c for c in pod.status.conditions if c.type == "Ready"]
        to_ready.append(ready.last_transition_time.timestamp() - created)
        to_active.append(active_at[amphora_id] - created)

    def p50_p99(values: list[float]) -> tuple[float, float]:
        values = sorted(values)
        return statistics.median(values), values[min(count - 1, int(0.99 * count))]

    (ready50, ready99), (active50, active99) = p50_p99(to_ready), p50_p99(to_active)
    record_property("pod_to_ready_p50_p99_s", (round(ready50, 1), round(ready99, 1)))
    record_property("pod_to_active_p50_p99_s", (round(active50, 1), round(active99, 1)))
    record_property("node_start_s", round(real_node.started_in or 0.0, 2))
    print(
        f"\nreal node start {real_node.started_in:.1f} s; {count} amphorae built at once: "
        f"Pod created -> Pod Ready p50 {ready50:.1f} s, p99 {ready99:.1f} s (API, 1 s "
        f"resolution); -> driver reports ACTIVE p50 {active50:.1f} s, p99 {active99:.1f} s"
    )
    containers = real_node.containers()
    running = [
        cid
        for amphora_id in owners
        for cid, status in amphora_tasks(
            real_node, restricted_namespace, f"{owners[amphora_id]}-0", containers
        ).items()
        if status == "RUNNING"
    ]
    assert len(running) == count


@pytest.mark.slow
def test_deleting_the_namespace_removes_every_amphora_without_the_operator(
    kube_api: ApiClient, real_node: RealNode
) -> None:
    """Every object of an amphora lives in its namespace (the children owned by the
    StatefulSet), so namespace deletion alone removes them all, processes included."""
    namespace = fresh("gone")[0]
    core = k8s.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": namespace, "labels": RESTRICTED}})
    driver = ContainerDriver(namespace=namespace, api_client=kube_api, **REAL_NODE_OPTIONS)
    ids = [
        driver.build("Container", image_id=images.STANDIN, name=name, owner=owner)
        for name, owner in (fresh(), fresh())
    ]
    for amphora_id in ids:
        wait_state(driver, amphora_id, AmphoraState.ACTIVE, timeout=START)
    assert len(namespace_containers(real_node, namespace)) == 4  # 2 sandboxes + 2 amphorae
    started = time.monotonic()
    core.delete_namespace(namespace)

    def exists() -> bool:
        try:
            core.read_namespace(namespace)
        except k8s.ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    wait_for(exists, lambda present: not present, timeout=60)
    print(f"\nnamespace with 2 Container amphorae deleted in {time.monotonic() - started:.1f} s")
    wait_for(
        lambda: namespace_containers(real_node, namespace), lambda left: left == [], timeout=START
    )
