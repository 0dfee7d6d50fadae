"""Garbage collection through the runtime: the real noop driver, finalizer and collector, with
the fake Kubernetes gateway of test_runtime (the one MOCK, standing for the apiserver)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path
from typing import Any

from amphora_drivers import AmphoraComputeError, BuildRequest, Reason
from amphora_drivers.noop import NoopDriver
from amphora_operator.backends import BackendPool
from amphora_operator.config import BreakerConfig, OperatorConfig, ProfileConfig, ReconcileConfig
from amphora_operator.metrics import Metrics
from amphora_operator.planner import owner_key
from amphora_operator.runtime import Runtime

from tests.operator.test_runtime import NS, SPEC, FakeGateway, run_async, settle


class ListingGateway(FakeGateway):
    """The MOCK apiserver of test_runtime, also answering the collector's list of Amphorae."""

    def __init__(self) -> None:
        super().__init__()
        self.lists = 0

    async def list_amphorae(self) -> list[dict[str, Any]]:
        self.lists += 1
        return [dict(o) for o in self.objects.values()]


def runtime_with(
    *, options: dict[str, Any] | None = None, **reconcile: Any
) -> tuple[Runtime, ListingGateway, NoopDriver]:
    """As test_runtime's make_runtime, with the listing gateway."""
    config = OperatorConfig(
        profiles={"noop": ProfileConfig(driver="noop", options=dict(options or {}),
                                        breaker=BreakerConfig(failure_threshold=3,
                                                              reset_timeout=0.3))},
        defaults={"VM": "noop", "BareMetal": "noop", "Container": "noop"},
        reconcile=ReconcileConfig(
            **{"poll_interval": 0.05, "retry_base": 0.2, "retry_max": 1.0, **reconcile}
        ),
    )  # fmt: skip
    gateway = ListingGateway()
    pool = BackendPool(config, Metrics())
    runtime = Runtime(config=config, backends=pool, gateway=gateway, metrics=Metrics())
    driver = pool.get("noop", NS).driver
    assert isinstance(driver, NoopDriver)
    return runtime, gateway, driver


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def create(runtime: Runtime, gateway: FakeGateway, name: str, **spec: Any) -> str:
    """An Amphora with a real UID (owner keys are made from it), seen by the runtime."""
    body = gateway.create(name, {**SPEC, **spec})
    uid = str(uuid.uuid4())
    body["metadata"]["uid"] = gateway.objects[name]["metadata"]["uid"] = uid
    runtime.observe("ADDED", body)
    return uid


def collector_of(runtime: Runtime, grace: float) -> Clock:
    clock = Clock()
    runtime.collector.clock = clock
    runtime.config.garbage_collection.grace_period = grace
    return clock


def collected(runtime: Runtime) -> float:
    value = runtime.metrics.registry.get_sample_value(
        "amphora_orphans_collected_total", {"profile": "noop", "reason": "OwnerGone"}
    )
    return value or 0.0


@run_async
async def test_an_instance_left_by_a_vanished_amphora_is_collected_after_the_grace_period() -> None:
    runtime, gateway, driver = runtime_with()
    clock = collector_of(runtime, grace=60.0)
    uid = create(runtime, gateway, "a")
    await runtime.reconcile(uid)
    compute_id = gateway.objects["a"]["status"]["computeId"]
    assert await runtime.collector.sweep() == 0, "claimed"
    # Deleted without our clean-up (say the finalizer was removed by hand).
    gone = gateway.objects.pop("a")
    runtime.observe("DELETED", {"metadata": {**gone["metadata"], "finalizers": []}})
    assert await runtime.collector.sweep() == 0
    clock.now += 59.0
    assert await runtime.collector.sweep() == 0, "still within the grace period"
    assert driver.find(amphora_id=compute_id)
    clock.now += 1.0
    assert await runtime.collector.sweep() == 1
    assert driver.find(amphora_id=compute_id) == []
    assert gateway.events == [("tenant", "OrphanCollected")], "on the namespace it lived in"
    assert collected(runtime) == 1.0


@run_async
async def test_an_empty_cache_is_overruled_by_the_apiserver() -> None:
    """Right after a start the cache is empty (or, during a watch outage, behind): what the
    apiserver lists still claims its instances."""
    runtime, gateway, driver = runtime_with()
    collector_of(runtime, grace=0.0)
    uid = create(runtime, gateway, "a")
    await runtime.reconcile(uid)
    assert await runtime.collector.sweep() == 0 and gateway.lists == 0, "nothing unclaimed"
    runtime.store.remove(uid)  # the cache lost it; the apiserver still has it
    assert await runtime.collector.sweep() == 0
    assert gateway.lists == 1, "the verdict was checked with the apiserver"
    assert driver.find(amphora_id=gateway.objects["a"]["status"]["computeId"])


@run_async
async def test_a_replica_that_may_not_act_collects_nothing() -> None:
    runtime, gateway, driver = runtime_with()
    collector_of(runtime, grace=0.0)
    create(runtime, gateway, "a")
    await runtime.reconcile(gateway.objects["a"]["metadata"]["uid"])
    stray = driver.create(BuildRequest(name="stray", owner=owner_key(str(uuid.uuid4()), 1)))
    runtime.backends.may_act = lambda: False
    assert await runtime.collector.sweep() == 0
    assert driver.find(amphora_id=stray)
    runtime.backends.may_act = lambda: True
    assert await runtime.collector.sweep() == 1
    assert driver.find(amphora_id=stray) == []


@run_async
async def test_live_amphorae_lose_nothing_through_builds_and_replacements() -> None:
    """Grace 0 and a sweep every poll: the worst case for a collector racing the reconciler."""
    runtime, gateway, driver = runtime_with(options={"build_seconds": 0.2}, resync_interval=0.05)
    collector_of(runtime, grace=0.0)
    runtime.collector.clock = time.monotonic
    uids = [create(runtime, gateway, f"a{i}") for i in range(4)]

    def ready(spec_image: str) -> bool:
        return all(
            (o.get("status") or {}).get("phase") == "Ready"
            and not (o.get("status") or {}).get("replacement")
            and o["spec"]["image"] == spec_image
            and (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"]
            for o in gateway.objects.values()
        )

    await settle(runtime, lambda: ready("img"))
    for i in range(4):
        runtime.observe("MODIFIED", gateway.edit_spec(f"a{i}", image="img-2"))
    await settle(runtime, lambda: ready("img-2") and len(driver.find()) == 4)
    swept = runtime.metrics.registry.get_sample_value(
        "amphora_orphans_pending", {"profile": "noop"}
    )
    assert swept == 0.0, "the collector swept, and found nothing unclaimed"
    assert collected(runtime) == 0.0
    owners = {i.owner for i in driver.find()}
    assert owners == {
        owner_key(u, gateway.objects[f"a{n}"]["status"]["revision"]) for n, u in enumerate(uids)
    }


@run_async
async def test_orphan_policy_releases_the_instance_and_it_is_never_collected() -> None:
    runtime, gateway, driver = runtime_with()
    clock = collector_of(runtime, grace=0.0)
    uid = create(runtime, gateway, "keep", deletionPolicy="Orphan")
    await runtime.reconcile(uid)
    compute_id = gateway.objects["keep"]["status"]["computeId"]
    runtime.observe("MODIFIED", gateway.mark_deleted("keep"))
    outcome = await runtime.reconcile(uid)
    assert outcome is not None and outcome.released
    runtime.observe("DELETED", gateway.objects.pop("keep"))
    clock.now += 3600
    assert await runtime.collector.sweep() == 0
    kept = driver.get_amphora(amphora_id=compute_id)
    assert kept.owner is None, "released: no owner mark left"


def failing_release() -> tuple[dict[str, bool], Any]:
    failing = {"release": True}

    def on_call(method: str, arguments: Any) -> None:
        if method == "release" and failing["release"]:
            raise AmphoraComputeError("down", reason=Reason.BACKEND_UNAVAILABLE, retryable=True)

    return failing, on_call


async def orphan_whose_release_fails(runtime: Runtime, gateway: ListingGateway, name: str) -> str:
    """An Orphan Amphora deleted while its backend refuses the release: its instance id."""
    uid = create(runtime, gateway, name, deletionPolicy="Orphan")
    await runtime.reconcile(uid)
    compute_id = str(gateway.objects[name]["status"]["computeId"])
    runtime.observe("MODIFIED", gateway.mark_deleted(name))
    outcome = await runtime.reconcile(uid)
    assert outcome is not None and outcome.released, "Orphan never waits for the backend"
    runtime.observe("DELETED", gateway.objects.pop(name))
    return compute_id


@run_async
async def test_a_release_that_fails_is_spared_and_finished_by_the_collector() -> None:
    failing, on_call = failing_release()
    runtime, gateway, _ = runtime_with(options={"on_call": on_call})
    driver = runtime.backends.get("noop", "tenant").driver
    assert isinstance(driver, NoopDriver)
    collector_of(runtime, grace=0.0)
    compute_id = await orphan_whose_release_fails(runtime, gateway, "keep")
    assert set(gateway.releases["default"]) == {compute_id}, "recorded before the finalizer went"
    assert await runtime.collector.sweep() == 0, "spared while its release is pending"
    assert driver.get_amphora(amphora_id=compute_id).owner is not None
    failing["release"] = False
    assert await runtime.collector.sweep() == 0
    assert driver.get_amphora(amphora_id=compute_id).owner is None
    assert gateway.releases["default"] == {}, "the record goes with the release"


def test_a_pending_release_survives_a_restart_and_is_never_collected(tmp_path: Path) -> None:
    asyncio.run(pending_release_across_a_restart(tmp_path))


async def pending_release_across_a_restart(tmp_path: Path) -> None:
    """The process that spared it is gone (a restart, or another replica leads now)."""
    failing, on_call = failing_release()
    options = {"state_file": str(tmp_path / "noop.json"), "on_call": on_call}
    first, gateway, _ = runtime_with(options=options)
    compute_id = await orphan_whose_release_fails(first, gateway, "keep")
    second, _, driver = runtime_with(options=options)
    second.gateway = second.collector.gateway = gateway  # the same apiserver
    collector_of(second, grace=0.0)
    stray = driver.create(BuildRequest(name="stray", owner=owner_key(str(uuid.uuid4()), 1)))
    assert await second.collector.sweep() == 1, "the stray is collected, the kept one is not"
    assert [i.id for i in driver.find()] == [compute_id] and stray != compute_id
    failing["release"] = False
    assert await second.collector.sweep() == 0
    assert driver.get_amphora(amphora_id=compute_id).owner is None
    assert gateway.releases["default"] == {}


@run_async
async def test_an_orphan_keeps_its_finalizer_while_its_release_cannot_be_recorded() -> None:
    _, on_call = failing_release()
    runtime, gateway, _ = runtime_with(options={"on_call": on_call})
    uid = create(runtime, gateway, "keep", deletionPolicy="Orphan")
    await runtime.reconcile(uid)
    runtime.observe("MODIFIED", gateway.mark_deleted("keep"))
    gateway.releases_down = True
    with contextlib.suppress(ConnectionError):  # the worker retries the pass with backoff
        await runtime.reconcile(uid)
    assert runtime.config.garbage_collection.enabled
    assert gateway.objects["keep"]["metadata"]["finalizers"], "no record, no release"
    assert await _sweep_refused(runtime), "and no collection without the records"


async def _sweep_refused(runtime: Runtime) -> bool:
    try:
        await runtime.collector.sweep()
    except ConnectionError:
        return True
    return False
