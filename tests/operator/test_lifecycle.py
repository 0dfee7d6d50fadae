"""End-to-end scenarios on the real control plane: kubectl in, status and Events out.

The operator runs as a real process with the noop driver; the compute side is read back from
the driver's shared state file, so every scenario also checks that nothing was leaked or built
twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from amphora_operator.tenancy import USABLE_LABEL, namespace_tag
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.fixtures.operator import OperatorProcess, noop_config
from tests.operator.scenario import Steps, amphora, condition

StartOperator = Callable[..., OperatorProcess]


@pytest.fixture
def steps(kube_api: ApiClient, kubectl: Callable[..., Any], namespace: str) -> Steps:
    return Steps(kube_api, kubectl, namespace)


def owners(operator: OperatorProcess) -> list[str | None]:
    return sorted(i.owner for i in operator.instances())


def test_create_reaches_ready_and_kubectl_shows_it(
    start_operator: StartOperator, steps: Steps, kubectl: Callable[..., Any], namespace: str
) -> None:
    operator = start_operator()
    steps.apply(amphora("web-1", networks=["net-a"]))
    status = steps.wait_phase("web-1", "Ready")
    assert status["computeId"] == operator.instances()[0].id
    assert status["addresses"] and status["driver"] == "noop"
    assert status["observedGeneration"] == 1
    ready = condition(status, "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 1
    assert condition(status, "Progressing")["status"] == "False"
    assert condition(status, "Reconciling")["status"] == "False"
    assert condition(status, "Stalled")["status"] == "False"
    table = kubectl("get", "amphorae", "-n", namespace, "-o", "wide").stdout
    assert "web-1" in table and "Ready" in table and status["computeId"] in table
    assert "COMPUTE ID" in table and "ADDRESS" in table
    plain = kubectl("get", "amphorae", "-n", namespace).stdout
    assert "REASON" in plain.splitlines()[0], plain
    # Events are for failures and real transitions: none on the way to Ready (issue 14).
    assert steps.events("web-1") == []
    assert len(operator.instances()) == 1


def test_slow_build_does_not_block_other_amphorae(
    start_operator: StartOperator, steps: Steps
) -> None:
    start_operator()
    steps.apply(amphora("slow", tags=["noop:build-seconds=20"]))
    steps.wait_phase("slow", "Building")
    started = time.monotonic()
    steps.apply(amphora("fast-1"), amphora("fast-2"))
    steps.wait_phase("fast-1", "Ready")
    steps.wait_phase("fast-2", "Ready")
    assert time.monotonic() - started < 15, "fast amphorae waited for the slow build"
    assert steps.status("slow")["phase"] == "Building"
    assert condition(steps.status("slow"), "Progressing")["status"] == "True"


def test_failed_build_shows_the_fault_and_recovers_when_the_cause_goes(
    start_operator: StartOperator, steps: Steps
) -> None:
    operator = start_operator()
    steps.apply(amphora("unlucky", tags=["noop:fault=No valid host was found"]))
    status = steps.wait_phase("unlucky", "Failed")
    assert status["fault"] == "No valid host was found"
    assert condition(status, "Ready")["status"] == "False"
    assert "No valid host was found" in condition(status, "Ready")["message"]
    # It is retried with backoff, not abandoned: the revision moves on.
    steps.wait("unlucky", lambda s: s.get("retries", 0) >= 2, timeout=30, what="two rebuilds")
    # The cause goes away (here: the user drops the fault hint) and it recovers by itself.
    steps.patch_spec("unlucky", tags=["recovered"])
    status = steps.wait_phase("unlucky", "Ready")
    assert status.get("fault") is None
    steps.wait("unlucky", lambda s: not s.get("retired"), what="failed instances retired")
    assert [i.id for i in operator.instances()] == [status["computeId"]]


def test_suspend_and_resume_in_place(start_operator: StartOperator, steps: Steps) -> None:
    operator = start_operator()
    steps.apply(amphora("sleepy"))
    compute_id = steps.wait_phase("sleepy", "Ready")["computeId"]
    steps.patch_spec("sleepy", suspended=True)
    status = steps.wait_phase("sleepy", "Suspended")
    assert status["computeId"] == compute_id
    # Suspended as requested is as declared: Ready=True with reason Suspended (README, status).
    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Suspended"), ready
    steps.patch_spec("sleepy", suspended=False)
    assert steps.wait_phase("sleepy", "Ready")["computeId"] == compute_id
    assert len(operator.instances()) == 1


def test_image_change_rolls_out_by_replacement(start_operator: StartOperator, steps: Steps) -> None:
    operator = start_operator()
    steps.apply(amphora("rolling", tags=["noop:build-seconds=2"]))
    old_id = steps.wait_phase("rolling", "Ready")["computeId"]
    steps.patch_spec("rolling", image="amphora-image-2")
    updating = steps.wait_phase("rolling", "Updating", timeout=10)
    assert updating["replacement"]["reason"] == "SpecChanged"
    assert updating["computeId"] == old_id, "the old instance serves until the new is ready"
    status = steps.wait(
        "rolling",
        lambda s: s.get("phase") == "Ready" and s.get("computeId") != old_id,
        what="replacement ready",
    )
    steps.wait("rolling", lambda s: not s.get("retired"), what="old instance retired")
    assert [i.id for i in operator.instances()] == [status["computeId"]]
    assert status["revision"] == 1
    assert "Replaced" in {e.reason for e in steps.events("rolling")}


def test_out_of_band_deletion_is_repaired(start_operator: StartOperator, steps: Steps) -> None:
    operator = start_operator()
    steps.apply(amphora("drifty"))
    old_id = steps.wait_phase("drifty", "Ready")["computeId"]
    operator.compute().delete(old_id)  # behind the operator's back
    status = steps.wait(
        "drifty",
        lambda s: s.get("phase") == "Ready" and s.get("computeId") != old_id,
        timeout=20,
        what="rebuilt after drift",
    )
    assert [i.id for i in operator.instances()] == [status["computeId"]]
    # Events are posted after the status write (best effort): wait for it, do not race it.
    deadline = time.monotonic() + 10
    while "InstanceLost" not in {e.reason for e in steps.events("drifty")}:
        assert time.monotonic() < deadline, "no InstanceLost event within 10 s of the rebuild"
        time.sleep(0.2)


def test_operator_killed_mid_build_adopts_instead_of_building_twice(
    start_operator: StartOperator, steps: Steps
) -> None:
    operator = start_operator()
    steps.apply(amphora("crashy", tags=["noop:build-seconds=4"]))
    steps.wait("crashy", lambda s: s.get("computeId"), what="compute id recorded")
    operator.kill()
    assert len(operator.instances()) == 1
    operator.start()
    status = steps.wait_phase("crashy", "Ready", timeout=30)
    assert [i.id for i in operator.instances()] == [status["computeId"]]


def test_crash_between_create_and_record_adopts_by_owner(
    start_operator: StartOperator, steps: Steps, tmp_path: Path, namespace: str
) -> None:
    """The instance exists with the owner tag but status never got its id: adopt it."""
    from amphora_drivers.noop import NoopDriver
    from amphora_operator.planner import instance_name, owner_key

    steps.apply(amphora("orphan-risk"))  # no operator yet
    uid = steps.get("orphan-risk")["metadata"]["uid"]
    backend = NoopDriver(state_file=tmp_path / "noop.json")
    pre_built = backend.build(
        name=instance_name(uid, 0), owner=owner_key(uid, 0), image_id="amphora-image-1",
        amphora_flavor="m1.amphora",
    )  # fmt: skip
    operator = start_operator()
    status = steps.wait_phase("orphan-risk", "Ready")
    assert status["computeId"] == pre_built
    assert [i.id for i in operator.instances()] == [pre_built]
    # Events are posted after the status write (best effort): wait for it, do not race it.
    deadline = time.monotonic() + 10
    while "Adopted" not in {e.reason for e in steps.events("orphan-risk")}:
        assert time.monotonic() < deadline, "no Adopted event within 10 s of Ready"
        time.sleep(0.2)


def test_delete_waits_for_the_backend_and_orphan_leaves_the_instance(
    start_operator: StartOperator, steps: Steps
) -> None:
    operator = start_operator()
    steps.apply(amphora("doomed", tags=["noop:delete-failures=2"]), amphora("kept"))
    steps.wait_phase("doomed", "Ready")
    kept_id = steps.wait_phase("kept", "Ready")["computeId"]
    steps.patch_spec("kept", deletionPolicy="Orphan")
    steps.delete("doomed")  # waits until the finalizer is released
    steps.delete("kept")
    assert [i.id for i in operator.instances()] == [kept_id]


def test_amphora_never_built_deletes_at_once(start_operator: StartOperator, steps: Steps) -> None:
    start_operator()
    steps.apply(amphora("nothing", driver="does-not-exist"))
    status = steps.wait_phase("nothing", "Failed")
    assert condition(status, "Ready")["reason"] == "UnknownDriver"
    assert "does-not-exist" in status["fault"]
    steps.delete("nothing")


def test_missing_secret_is_a_condition_not_a_crash(
    start_operator: StartOperator, steps: Steps, kube_api: ApiClient, namespace: str
) -> None:
    operator = start_operator()
    steps.apply(amphora("secretive", userData={"secretRef": {"name": "boot", "key": "cloud"}}))
    status = steps.wait_phase("secretive", "Failed")
    assert condition(status, "Ready")["reason"] == "SecretNotFound"
    assert "spec.userData.secretRef" in status["fault"]
    assert operator.instances() == []
    k8s.CoreV1Api(kube_api).create_namespaced_secret(
        namespace,
        k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="boot", labels={USABLE_LABEL: "true"}),
                     string_data={"cloud": "#cloud-config\n"}),
    )  # fmt: skip
    steps.wait_phase("secretive", "Ready", timeout=30)


def test_import_and_observe_only(start_operator: StartOperator, steps: Steps) -> None:
    operator = start_operator()
    # Built for this namespace (as the operator tags its own builds): importable here.
    existing = operator.compute().build(
        name="legacy", image_id="img", amphora_flavor="f", tags=[namespace_tag(steps.namespace)]
    )
    steps.apply(amphora("watched", importId=existing, managementPolicy="ObserveOnly"))
    status = steps.wait_phase("watched", "Ready")
    assert status["computeId"] == existing
    steps.patch_spec("watched", suspended=True)  # ObserveOnly never acts
    time.sleep(2)
    assert operator.compute().status(existing).value == "ACTIVE"
    steps.delete("watched")
    assert operator.compute().status(existing).value == "ACTIVE", "ObserveOnly never deletes"
    steps.apply(amphora("adopted", importId=existing))
    assert steps.wait_phase("adopted", "Ready")["computeId"] == existing
    steps.delete("adopted")
    assert operator.compute().find(amphora_id=existing) == []


def test_open_circuit_breaker_is_reported_and_stops_hammering(
    start_operator: StartOperator, steps: Steps, tmp_path: Path
) -> None:
    config = noop_config(
        tmp_path / "noop.json",
        options={"call_latency": 1.5},
        breaker={"failureThreshold": 2, "resetTimeout": 60},
        reconcile={"driverCallTimeout": 0.3},
    )
    operator = start_operator(config)
    steps.apply(amphora("stuck"))
    status = steps.wait(
        "stuck",
        lambda s: any(
            c["type"] == "BackendAvailable" and c["reason"] == "CircuitOpen"
            for c in s.get("conditions", [])
        ),
        timeout=30,
        what="breaker open",
    )
    assert condition(status, "BackendAvailable")["status"] == "False"
    assert "circuit breaker" in condition(status, "BackendAvailable")["message"]
    log = operator.logs()
    assert log, "operator wrote no log"


def test_metrics_and_health_endpoints(
    start_operator: StartOperator, steps: Steps, tmp_path: Path
) -> None:
    import socket
    import urllib.request

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    metrics_port, health_port = free_port(), free_port()
    operator = start_operator(
        noop_config(tmp_path / "noop.json"),
        extra_args=["--metrics-port", str(metrics_port), "--health-port", str(health_port)],
    )
    steps.apply(amphora("observed"))
    steps.wait_phase("observed", "Ready")
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
    text = metrics.read().decode()
    for name in (
        "amphora_reconcile_seconds_count",
        "amphora_handler_seconds_bucket",
        'amphora_driver_call_seconds_count{method="build_from",profile="noop"}',
        "amphora_status_writes_total",
        "amphora_breaker_open",
    ):
        assert name in text, f"{name} missing from /metrics"
    deadline = time.monotonic() + 10
    while 'amphora_amphorae{phase="Ready"} 1.0' not in text and time.monotonic() < deadline:
        time.sleep(0.5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    assert 'amphora_amphorae{phase="Ready"} 1.0' in text
    health = urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=5)
    assert health.status == 200
    assert '"amphorae": 1' in health.read().decode()
    assert "Handler 'track' succeeded" not in operator.logs()
