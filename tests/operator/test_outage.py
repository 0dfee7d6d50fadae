"""Backend outages in the reconcile runtime (the fake gateway of test_runtime counts writes).

Settled Amphorae must show an outage too (the poller's one probe per round per backend wakes
all of them), with a bounded number of status writes whatever the outage's length, and come
back when the backend does. Quota errors stay one Amphora's problem; one hung backend delays
only its own Amphorae.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from amphora_drivers import AmphoraComputeError, Reason
from amphora_operator.backends import BackendPool
from amphora_operator.config import BreakerConfig, OperatorConfig, ProfileConfig, ReconcileConfig
from amphora_operator.metrics import Metrics
from amphora_operator.model import FINALIZER
from amphora_operator.runtime import Runtime

from tests.operator.test_runtime import (
    NS,
    SPEC,
    FakeGateway,
    condition,
    make_runtime,
    run_async,
    settle,
)


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not in time"
        await asyncio.sleep(0.02)


def backend_available(gateway: FakeGateway, name: str) -> str:
    return str(condition(gateway.objects[name]["status"], "BackendAvailable")["status"])


@run_async
async def test_settled_amphorae_show_an_outage_once_and_recover() -> None:
    down = {"now": False}

    def outage(method: str, arguments: Mapping[str, Any]) -> None:
        if down["now"]:
            raise AmphoraComputeError("injected outage", reason=Reason.BACKEND_UNAVAILABLE)

    # No resync during the test: only the round's probe of the moving newcomer sees the outage.
    runtime, gateway, _ = make_runtime(options={"on_call": outage}, resync_interval=3600)
    names = [f"a{i}" for i in range(20)]
    for name in names:
        runtime.observe("ADDED", gateway.create(name, SPEC))
    await settle(runtime, lambda: all(
        gateway.objects[n].get("status", {}).get("phase") == "Ready" for n in names))  # fmt: skip
    assert not runtime.moving, "all settled: no round asks about them any more"
    before = {n: len(gateway.writes_of(n)) for n in names}

    # One running runtime from here on (a restart would look at every Amphora again anyway).
    runtime.start()  # which looks at everything once more: let that pass first
    try:
        await asyncio.sleep(0.5)
        down["now"] = True
        runtime.observe("ADDED", gateway.create("newcomer", SPEC))
        names.append("newcomer")
        before["newcomer"] = 0
        await until(lambda: all(backend_available(gateway, n) == "False" for n in names))
        await asyncio.sleep(2.0)  # many rounds and breaker trials (reset 0.3 s)
        for name in names:
            shown = condition(gateway.objects[name]["status"], "BackendAvailable")
            assert shown["status"] == "False", name
            assert "next trial" not in shown["message"], shown
            if shown["reason"] == "CircuitOpen":  # when it is retried: fixed, not a countdown
                assert shown["message"].endswith("one trial call every 0.3 s"), shown
            if name != "newcomer":
                assert gateway.objects[name]["status"]["phase"] == "Ready", "it still runs"
        reasons = {condition(gateway.objects[n]["status"], "BackendAvailable")["reason"]
                   for n in names}  # fmt: skip
        assert "CircuitOpen" in reasons, reasons  # most looked after the breaker opened
        down["now"] = False
        await until(lambda: all(backend_available(gateway, n) == "True" for n in names))
        await until(lambda: gateway.objects["newcomer"]["status"]["phase"] == "Ready")
    finally:
        await runtime.stop()
    writes = {n: len(gateway.writes_of(n)) - before[n] for n in names if n != "newcomer"}
    assert max(writes.values()) <= 3, writes


@run_async
async def test_quota_errors_are_per_amphora_not_a_backend_outage() -> None:
    def quota(method: str, arguments: Mapping[str, Any]) -> None:
        if method == "create" and "poor" in str(arguments.get("name")):
            raise AmphoraComputeError(
                "Quota exceeded for instances", reason=Reason.QUOTA_EXCEEDED, retryable=True
            )

    runtime, gateway, _ = make_runtime(options={"on_call": quota})
    runtime.observe("ADDED", gateway.create("poor", SPEC))
    # More failures than the breaker's threshold (3), each after its backoff.
    await settle(runtime, lambda: gateway.objects["poor"].get("status", {}).get("retries", 0) >= 4)
    status = gateway.objects["poor"]["status"]
    assert condition(status, "Ready")["reason"] == "QuotaExceeded"
    assert status["nextRetryTime"], "retried with backoff"
    assert backend_available(gateway, "poor") == "True", "the backend itself answers"
    runtime.observe("ADDED", gateway.create("rich", SPEC))
    await runtime.reconcile("uid-rich")
    assert gateway.objects["rich"]["status"]["phase"] == "Ready", "the breaker stayed closed"


@run_async
async def test_a_hung_backend_delays_only_its_own_amphorae() -> None:
    hang = {"now": False}

    def hung(method: str, arguments: Mapping[str, Any]) -> None:
        if hang["now"]:
            time.sleep(1.5)

    profile = {"driver": "noop", "breaker": BreakerConfig(failure_threshold=3, reset_timeout=0.3)}
    config = OperatorConfig(
        profiles={
            "hung": ProfileConfig(**profile, options={"on_call": hung, "build_seconds": 0.5}),
            "fast": ProfileConfig(**profile, options={"build_seconds": 0.3}),
        },
        defaults={"VM": "fast", "BareMetal": "fast", "Container": "fast"},
        reconcile=ReconcileConfig(
            poll_interval=0.05, driver_call_timeout=0.2, retry_base=0.2, retry_max=1.0
        ),
    )
    gateway = FakeGateway()
    runtime = Runtime(config=config, backends=BackendPool(config, Metrics()), gateway=gateway,
                      metrics=Metrics())  # fmt: skip
    runtime.observe("ADDED", gateway.create("slow", {**SPEC, "driver": "hung"}))
    await settle(runtime, lambda: gateway.objects["slow"].get("status", {}).get("computeId"))
    hang["now"] = True  # from now on every call to it takes 1.5 s, over the 0.2 s timeout
    runtime.observe("ADDED", gateway.create("quick", {**SPEC, "driver": "fast"}))
    started = asyncio.get_running_loop().time()
    await settle(runtime, lambda: gateway.objects["quick"].get("status", {}).get("phase")
                 == "Ready", timeout=3.0)  # fmt: skip
    took = asyncio.get_running_loop().time() - started
    assert took < 1.5, f"the healthy backend's Amphora waited {took:.2f} s for the hung one"
    assert backend_available(gateway, "slow") == "False"


@run_async
async def test_a_forbidden_deletion_is_shown_then_released_after_a_bounded_time() -> None:
    refuse = {"now": False}

    def forbidden(method: str, arguments: Mapping[str, Any]) -> None:
        if refuse["now"]:
            raise AmphoraComputeError(
                "delete StatefulSet: HTTP 403: forbidden", reason=Reason.FORBIDDEN,
                retryable=False,
            )  # fmt: skip

    runtime, gateway, _ = make_runtime(
        options={"on_call": forbidden}, forbidden_release_after=1.0, delete_retry=0.2
    )
    runtime.observe("ADDED", gateway.create("a", SPEC))
    await runtime.reconcile("uid-a")
    assert gateway.objects["a"]["status"]["phase"] == "Ready"
    refuse["now"] = True  # say, the tenant's RoleBinding went first in a namespace deletion
    runtime.observe("MODIFIED", gateway.mark_deleted("a"))
    started = asyncio.get_running_loop().time()
    outcome = await runtime.reconcile("uid-a")
    assert outcome is not None and not outcome.released
    status = gateway.objects["a"]["status"]
    shown = condition(status, "Reconciling")
    assert (shown["status"], shown["reason"]) == ("True", "Forbidden")
    assert "403" in shown["message"] and "released 1 s after the first refusal" in shown["message"]
    assert status["phase"] == "Deleting"
    await settle(runtime, lambda: gateway.finalizer_patches == ["remove a"])
    took = asyncio.get_running_loop().time() - started
    assert 1.0 <= took < 3.0, took
    assert ("a", "ReleasedForbidden") in gateway.events
    assert len(gateway.writes_of("a")) <= 3, "waiting costs no write per retry"


def test_nova_over_limit_413_and_quota_403_are_quota_not_backend_failures() -> None:
    from amphora_drivers.exceptions import classify_status

    assert classify_status(413, "Maximum number of instances exceeded") == (
        Reason.QUOTA_EXCEEDED, True,
    )  # fmt: skip
    assert classify_status(403, "Quota exceeded for cores") == (Reason.QUOTA_EXCEEDED, True)
    assert classify_status(403, "Policy doesn't allow it") == (Reason.FORBIDDEN, False)


@run_async
async def test_no_finalizer_where_instances_follow_their_amphora_except_for_orphan() -> None:
    runtime, gateway, driver = make_runtime()
    # Stand-in for the Container driver's answer (its instances carry ownerReferences to the
    # Amphora): the noop driver told that its platform deletes them with their owner.
    driver.follows_owner = lambda owner: owner.namespace == NS  # type: ignore[method-assign]
    runtime.observe("ADDED", gateway.create("a", SPEC))
    await runtime.reconcile("uid-a")
    assert gateway.objects["a"]["status"]["phase"] == "Ready"
    assert gateway.finalizer_patches == ["remove a"], "one PATCH drops the admission's finalizer"
    assert gateway.objects["a"]["metadata"]["finalizers"] == []
    runtime.observe("MODIFIED", gateway.edit_spec("a", deletionPolicy="Orphan"))
    await runtime.reconcile("uid-a")
    assert gateway.finalizer_patches == ["remove a", "add a"], "Orphan needs the operator"
    assert FINALIZER in gateway.objects["a"]["metadata"]["finalizers"]
