"""Deletion never hangs for ever: when the backend refuses deletes, is gone, or the profile's
cloud credentials are wrong, a deleted Amphora says why it waits (phase Deleting, a condition
naming the cause and the escape); switching it to ``deletionPolicy: Orphan`` releases it within
a bounded time, without leaking what the operator can still reach.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from amphora_drivers.noop import NoopDriver
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.fixtures.nova_box import NovaBoxInfo
from tests.fixtures.operator import GROUP, PLURAL, VERSION, noop_config
from tests.nova.fault_proxy import Fault, FaultProxy
from tests.operator.scenario import Steps, amphora
from tests.reliability.conftest import Launch
from tests.reliability.support import Fleet, Item, condition_of, record, status_of
from tests.reliability.test_crash_safety import nova_amphora, nova_config, nova_servers

ESCAPE = "deletionPolicy: Orphan"


def waiting_with_reason(item: Item) -> bool:
    progressing = condition_of(item, "Progressing") or {}
    return (
        bool(item["metadata"].get("deletionTimestamp"))
        and status_of(item).get("phase") == "Deleting"
        and ESCAPE in progressing.get("message", "")
    )


def pending_releases(kube_api: ApiClient) -> dict[str, str]:
    """The operator's record of unfinished Orphan releases (its namespace: "default" here)."""
    try:
        found = k8s.CoreV1Api(kube_api).read_namespaced_config_map(
            "amphora-operator-releases", "default"
        )
    except k8s.ApiException as e:
        if e.status == 404:
            return {}
        raise
    return dict(found.data or {})


def stuck_then_released(steps: Steps, fleet: Fleet, name: str, hold: float = 3.0) -> tuple[
    dict[str, str], float
]:  # fmt: skip
    """Delete ``name``: it must wait and say why; Orphan must release it. (condition, seconds)"""
    steps.delete(name, wait=False)
    fleet.wait_all([name], waiting_with_reason, timeout=20, what=f"{name} Deleting with a reason")
    time.sleep(hold)  # it keeps waiting: nothing releases it by itself
    item = fleet.by_name().get(name)
    assert item is not None and waiting_with_reason(item), f"{name} was released by itself"
    progressing = condition_of(item, "Progressing") or {}
    ready = condition_of(item, "Ready") or {}
    assert ESCAPE in ready.get("message", ""), ready
    started = time.monotonic()
    steps.patch_spec(name, deletionPolicy="Orphan")
    fleet.wait(
        lambda items: name not in {i["metadata"]["name"] for i in items},
        timeout=15,
        what=f"{name} released after switching to Orphan",
    )
    return progressing, time.monotonic() - started


def test_refused_deletes_wait_with_a_reason_and_orphan_releases(
    launch: Launch, steps: Steps, fleet: Fleet, state_file: Path
) -> None:
    launch(noop_config(state_file))
    steps.apply(amphora("undeletable", tags=["noop:delete-failures=1000"]))
    compute_id = steps.wait_phase("undeletable", "Ready")["computeId"]
    progressing, released = stuck_then_released(steps, fleet, "undeletable")
    assert progressing["reason"] in ("DeleteFailed", "CircuitOpen"), progressing
    assert "delete" in progressing["message"] or "circuit" in progressing["message"]
    # Orphan leaves the instance it could not delete, as documented.
    assert [i.id for i in NoopDriver(state_file=state_file).find()] == [compute_id]
    record("deletion_refused", "seconds from Orphan to released", released)
    assert released < 10


def test_broken_profiles_wait_with_a_reason_and_orphan_releases(
    launch: Launch, steps: Steps, fleet: Fleet, state_file: Path
) -> None:
    """Wrong cloud credentials (unreadable clouds.yaml) and a backend that is gone."""
    gone = yaml.safe_dump({"clouds": {"gone": {
        "auth_type": "none", "compute_endpoint_override": "http://127.0.0.1:9/v2.1"}}})  # fmt: skip
    config = noop_config(
        state_file,
        profiles={
            "wrong-creds": {"driver": "nova", "options": {"clouds_yaml_content": "clouds: [oops"}},
            "gone": {"driver": "nova", "options": {"clouds_yaml_content": gone, "api_timeout": 2}},
        },
    )
    launch(config)
    steps.apply(amphora("creds", driver="wrong-creds"), amphora("unreachable", driver="gone"))
    for name in ("creds", "unreachable"):
        steps.wait(name, lambda s: (condition_of({"status": s}, "BackendAvailable") or {}).get(
            "status") == "False", what="BackendAvailable False")  # fmt: skip
    figures = {}
    for name, words in (("creds", "cloud configuration"), ("unreachable", "")):
        progressing, released = stuck_then_released(steps, fleet, name, hold=2.0)
        assert words in progressing["message"], progressing
        figures[name] = released
        assert released < 10
    record("deletion_broken_profile", "seconds from Orphan to released", figures)


def test_amphorae_deleted_right_after_creation_leave_nothing(
    launch: Launch, fleet: Fleet, kube_api: ApiClient, namespace: str, state_file: Path
) -> None:
    """Create-then-delete at once (a GitOps prune, a script): whatever the operator started to
    build for them must be cleaned up. Two ways to leak: building before the finalizer is on
    the object, and the apiserver deleting an object at once when the DELETE races the
    finalizer being added (its DELETED event then shows the finalizer and no
    deletionTimestamp)."""
    launch(noop_config(state_file))
    api = k8s.CustomObjectsApi(kube_api)
    time.sleep(2.0)  # the operator is up and watching
    count = 100
    for i in range(count):
        name = f"blink-{i:02d}"
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, amphora(name))
        time.sleep(0.002 * (i % 16))  # spread over the moments the finalizer lands (~5-30 ms)
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        time.sleep(0.02)
    fleet.wait_empty(timeout=30, what="every blinked Amphora gone")
    time.sleep(1.0)  # a build started for a vanished object would have landed by now
    left = NoopDriver(state_file=state_file).find()
    record("deletion_blink", "create-then-delete cycles", count)
    record("deletion_blink", "instances leaked", len(left))
    assert left == [], f"{len(left)} of {count} quickly deleted Amphorae leaked an instance"


def test_orphan_keeps_the_serving_instance_and_deletes_the_rest(
    launch: Launch, steps: Steps, fleet: Fleet, state_file: Path
) -> None:
    """Orphan leaves THE instance; a half-built replacement is the operator's, not the user's."""
    launch(noop_config(state_file))
    steps.apply(amphora("keeper", deletionPolicy="Orphan"))
    serving = steps.wait_phase("keeper", "Ready")["computeId"]
    steps.patch_spec("keeper", image="amphora-image-2", tags=["noop:build-seconds=60"])
    status = steps.wait(
        "keeper",
        lambda s: bool((s.get("replacement") or {}).get("computeId")),
        what="replacement building",
    )
    replacement = status["replacement"]["computeId"]
    steps.delete("keeper")
    time.sleep(1.0)  # what the operator deletes goes at once on this backend
    left = sorted(i.id for i in NoopDriver(state_file=state_file).find())
    record("deletion_orphan", "instances left (want 1)", len(left))
    assert replacement not in left, (
        f"the unfinished replacement {replacement} leaked after deleting an Orphan Amphora "
        f"(left: {left}, serving: {serving})"
    )
    assert left == [serving]


@pytest.fixture
def proxy(nova_box: NovaBoxInfo) -> Iterator[FaultProxy]:
    with FaultProxy(upstream_port=nova_box.box.port).running() as running:
        yield running


@pytest.mark.nova
def test_nova_gone_after_build_waits_with_a_reason_and_orphan_releases(
    launch: Launch,
    steps: Steps,
    fleet: Fleet,
    state_file: Path,
    nova_box: NovaBoxInfo,
    proxy: FaultProxy,
    kube_api: ApiClient,
) -> None:
    tag = f"rel-gone-{uuid.uuid4().hex[:8]}"
    config = nova_config(state_file, nova_box, tag)
    config["profiles"]["nova"]["options"]["clouds_yaml_content"] = yaml.safe_dump(proxy.clouds())
    launch(config)
    steps.apply(nova_amphora(nova_box, "cut-off"))
    server = steps.wait_phase("cut-off", "Ready")["computeId"]
    for method in ("GET", "POST", "PUT", "DELETE"):
        proxy.inject(Fault(method, r".*", status=503, message="the cloud is gone"))
    try:
        progressing, released = stuck_then_released(steps, fleet, "cut-off", hold=2.0)
        assert progressing["reason"] in ("BackendUnavailable", "CircuitOpen", "DeleteFailed")
        assert released < 10
        record("deletion_nova_gone", "seconds from Orphan to released", released)
        assert [s.id for s in nova_servers(nova_box, tag)] == [server], "Orphan keeps the server"
        # Its release (dropping the owner mark) waits for Nova, recorded in the apiserver so
        # that no restart or new leader collects it; the collector finishes it once Nova is back.
        assert server in pending_releases(kube_api)
        with proxy.lock:
            proxy.faults.clear()
        deadline = time.monotonic() + 30
        while server in pending_releases(kube_api) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert server not in pending_releases(kube_api), "the release was never finished"
        assert [s.id for s in nova_servers(nova_box, tag)] == [server], "released, not collected"
    finally:
        with contextlib.closing(nova_box.connection()) as conn:
            conn.compute.delete_server(server, ignore_missing=True)
