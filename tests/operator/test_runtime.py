"""The reconcile runtime without a cluster: a fake Kubernetes gateway, the real noop driver.

The gateway is the one fake here (named as such): it stands for the apiserver so that API
writes per Amphora, Events and finalizer calls can be counted exactly. Everything else (work
queue, reconciler, effects, finalizer, poller, planner, breaker, noop driver) is the real code.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import itertools
import json
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any

import pytest
from amphora_drivers import AmphoraComputeError, AmphoraInstance, AmphoraState, Reason
from amphora_drivers.noop import NoopDriver
from amphora_operator.backends import BackendPool
from amphora_operator.config import BreakerConfig, OperatorConfig, ProfileConfig, ReconcileConfig
from amphora_operator.kube import SecretNotFound
from amphora_operator.metrics import Metrics
from amphora_operator.model import FINALIZER
from amphora_operator.poller import CHANGES_OVERLAP
from amphora_operator.runtime import Runtime
from amphora_operator.workqueue import WorkQueue

NS = "tenant"


def run_async(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on a fresh event loop (no asyncio pytest plugin needed)."""

    @functools.wraps(test)
    def wrapper() -> None:
        asyncio.run(test())

    return wrapper


class FakeGateway:
    """MOCK of the apiserver (status subresource, finalizers, Secrets, Events) for counting."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.versions = itertools.count(100)
        self.status_writes: list[tuple[str, dict[str, Any]]] = []
        self.finalizer_patches: list[str] = []
        self.events: list[tuple[str, str]] = []
        self.secrets: dict[tuple[str, str], bytes] = {}
        #: The pending-releases ConfigMap, per namespace; ``releases_down`` fails its calls.
        self.releases: dict[str, dict[str, str]] = {}
        self.releases_down = False

    def create(self, name: str, spec: dict[str, Any], *, finalizer: bool = True) -> dict[str, Any]:
        body = {
            "metadata": {
                "name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1,
                "resourceVersion": str(next(self.versions)),
                "finalizers": [FINALIZER] if finalizer else [],
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x" * 500},
            },
            "spec": spec,
        }  # fmt: skip
        self.objects[name] = body
        return copy.deepcopy(body)

    def _bump(self, name: str) -> dict[str, Any]:
        body = self.objects[name]
        body["metadata"]["resourceVersion"] = str(next(self.versions))
        return copy.deepcopy(body)

    def edit_spec(self, name: str, **spec: Any) -> dict[str, Any]:
        body = self.objects[name]
        body["spec"] = {**body["spec"], **spec}
        body["metadata"]["generation"] += 1
        return self._bump(name)

    def mark_deleted(self, name: str) -> dict[str, Any]:
        self.objects[name]["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
        return self._bump(name)

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        merged = {k: v for k, v in status.items() if v is not None}
        self.objects[name]["status"] = merged
        self.status_writes.append((name, merged))
        return self._bump(name)

    async def add_finalizer(
        self, namespace: str, name: str, resource_version: str, finalizers: list[str]
    ) -> dict[str, Any] | None:
        self.finalizer_patches.append(f"add {name}")
        if self.objects[name]["metadata"]["resourceVersion"] != resource_version:
            return None
        self.objects[name]["metadata"]["finalizers"] = finalizers
        return self._bump(name)

    async def remove_finalizer(
        self, namespace: str, name: str, resource_version: str, finalizers: list[str]
    ) -> dict[str, Any] | None:
        self.finalizer_patches.append(f"remove {name}")
        if self.objects[name]["metadata"]["resourceVersion"] != resource_version:
            return None
        self.objects[name]["metadata"]["finalizers"] = finalizers
        return self._bump(name)

    async def read_secret_key(self, namespace: str, ref_name: str, key: str, field: str) -> bytes:
        if (ref_name, key) not in self.secrets:
            raise SecretNotFound(f"{field}: Secret {ref_name!r} not found")
        return self.secrets[(ref_name, key)]

    async def read_releases(self, namespace: str) -> dict[str, str]:
        if self.releases_down:
            raise ConnectionError("apiserver unreachable")
        return dict(self.releases.get(namespace, {}))

    async def update_releases(
        self, namespace: str, change: Callable[[dict[str, str]], dict[str, str]]
    ) -> None:
        self.releases[namespace] = change(await self.read_releases(namespace))

    def post_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((body["metadata"]["name"], reason))

    def writes_of(self, name: str) -> list[dict[str, Any]]:
        return [status for n, status in self.status_writes if n == name]


def make_runtime(
    *, options: Mapping[str, Any] | None = None, **reconcile: Any
) -> tuple[Runtime, FakeGateway, NoopDriver]:
    config = OperatorConfig(
        profiles={
            "noop": ProfileConfig(
                driver="noop",
                options=dict(options or {}),
                breaker=BreakerConfig(failure_threshold=3, reset_timeout=0.3),
            )
        },
        defaults={"VM": "noop", "BareMetal": "noop", "Container": "noop"},
        reconcile=ReconcileConfig(
            **{"poll_interval": 0.05, "retry_base": 0.2, "retry_max": 1.0, **reconcile}
        ),
    )
    gateway = FakeGateway()
    pool = BackendPool(config, Metrics())
    runtime = Runtime(config=config, backends=pool, gateway=gateway, metrics=Metrics())
    driver = pool.get("noop", NS).driver
    assert isinstance(driver, NoopDriver)
    driver.record_calls = True
    return runtime, gateway, driver


SPEC = {"flavor": "f", "image": "img"}


def phases(gateway: FakeGateway, name: str) -> list[str]:
    return [w.get("phase", "") for w in gateway.writes_of(name)]


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


async def settle(runtime: Runtime, until: Callable[[], bool], timeout: float = 5.0) -> None:
    """Run workers and poller until ``until()`` holds."""
    runtime.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not until():
            assert asyncio.get_running_loop().time() < deadline, "did not settle in time"
            await asyncio.sleep(0.02)
    finally:
        await runtime.stop()


# -- the write budget ------------------------------------------------------------------------


@run_async
async def test_instant_build_costs_two_status_writes_and_no_event() -> None:
    runtime, gateway, driver = make_runtime()
    runtime.observe("ADDED", gateway.create("a", SPEC))
    await runtime.reconcile("uid-a")
    assert phases(gateway, "a") == ["Pending", "Ready"]
    first = gateway.writes_of("a")[0]
    assert "computeId" not in first, "the first write comes before any driver call"
    assert condition(first, "Reconciling")["status"] == "True"
    assert first["observedGeneration"] == 1
    ready = gateway.writes_of("a")[1]
    assert condition(ready, "Ready")["status"] == "True"
    assert condition(ready, "Reconciling")["status"] == "False"
    assert condition(ready, "Stalled")["status"] == "False"
    assert gateway.finalizer_patches == [] and gateway.events == []
    # Look up by owner (adoption) once, build without a second owner lookup, look at the
    # new instance (the noop driver's builds can be ACTIVE at once).
    assert [c.method for c in driver.calls] == ["find", "create", "find"]
    assert [bool(c.arguments.get("owner")) for c in driver.calls] == [True, True, False]


@run_async
async def test_without_admission_policy_the_finalizer_costs_one_patch() -> None:
    runtime, gateway, _ = make_runtime()
    runtime.observe("ADDED", gateway.create("a", SPEC, finalizer=False))
    await runtime.reconcile("uid-a")
    assert gateway.finalizer_patches == ["add a"]
    assert phases(gateway, "a") == ["Pending", "Ready"]
    assert FINALIZER in gateway.objects["a"]["metadata"]["finalizers"]


@run_async
async def test_a_build_through_building_costs_three_writes() -> None:
    runtime, gateway, _ = make_runtime(options={"build_seconds": 0.3})
    runtime.observe("ADDED", gateway.create("a", SPEC))
    await settle(runtime, lambda: "Ready" in phases(gateway, "a"))
    assert phases(gateway, "a") == ["Pending", "Building", "Ready"]
    assert gateway.events == []


@run_async
async def test_own_writes_do_not_wake_a_reconcile_but_spec_changes_do() -> None:
    runtime, gateway, _ = make_runtime()
    runtime.observe("ADDED", gateway.create("a", SPEC))
    assert await runtime.queue.get() == "uid-a"
    await runtime.reconcile("uid-a")
    runtime.queue.done("uid-a")
    # The watch delivers our own writes afterwards (older and equal versions): no work.
    for _, _status in gateway.status_writes:
        runtime.observe("MODIFIED", copy.deepcopy(gateway.objects["a"]))
    assert len(runtime.queue) == 0
    runtime.observe("MODIFIED", gateway.edit_spec("a", suspended=True))
    assert len(runtime.queue) == 1


@run_async
async def test_the_cache_keeps_no_managed_fields_or_annotations() -> None:
    runtime, gateway, _ = make_runtime()
    runtime.observe("ADDED", gateway.create("a", SPEC))
    body = runtime.store.get("uid-a")
    assert body is not None
    assert "managedFields" not in body["metadata"] and "annotations" not in body["metadata"]


@run_async
async def test_cached_amphorae_share_their_field_names_and_condition_words() -> None:
    """Each watch event is decoded into fresh strings; the cache keeps one copy of each."""
    runtime, gateway, _ = make_runtime()
    for name in ("a", "b"):
        runtime.observe("ADDED", gateway.create(name, SPEC))
        await runtime.reconcile(f"uid-{name}")
        runtime.observe("MODIFIED", json.loads(json.dumps(gateway.objects[name])))
    a, b = (runtime.store.get(f"uid-{n}") for n in ("a", "b"))
    assert a is not None and b is not None
    ready_a, ready_b = (condition(x["status"], "Ready") for x in (a, b))
    assert ready_a["reason"] is ready_b["reason"]
    key_a = next(k for k in ready_a if k == "lastTransitionTime")
    key_b = next(k for k in ready_b if k == "lastTransitionTime")
    assert key_a is key_b
    assert a["spec"]["flavor"] is b["spec"]["flavor"]


# -- failures: kstatus, bounded retries and writes -------------------------------------------


@run_async
async def test_terminal_error_stalls_and_stops_calling_until_the_spec_changes() -> None:
    def refuse(method: str, arguments: Mapping[str, Any]) -> None:
        if method == "create":
            raise AmphoraComputeError("image not found", reason=Reason.IMAGE_NOT_FOUND,
                                      retryable=False)  # fmt: skip

    runtime, gateway, driver = make_runtime(options={"on_call": refuse}, retry_max=60)
    runtime.observe("ADDED", gateway.create("a", SPEC))
    await settle(runtime, lambda: "Failed" in phases(gateway, "a"))
    status = gateway.objects["a"]["status"]
    assert condition(status, "Stalled")["status"] == "True"
    assert condition(status, "Reconciling")["status"] == "False"
    assert status["nextRetryTime"], "the slow re-check time is shown"
    creates = sum(c.method == "create" for c in driver.calls)
    runtime.start()
    await asyncio.sleep(0.6)
    await runtime.stop()
    assert sum(c.method == "create" for c in driver.calls) == creates, "hammered the backend"
    runtime.observe("MODIFIED", gateway.edit_spec("a", image="img-2"))
    await settle(runtime, lambda: sum(c.method == "create" for c in driver.calls) > creates)


@run_async
async def test_transient_error_keeps_reconciling_with_a_retry_time_then_stalls() -> None:
    def busy(method: str, arguments: Mapping[str, Any]) -> None:
        if method == "create":
            raise AmphoraComputeError("no valid host", reason=Reason.NO_VALID_HOST,
                                      retryable=True)  # fmt: skip

    runtime, gateway, _ = make_runtime(options={"on_call": busy}, stall_after=2)
    runtime.observe("ADDED", gateway.create("a", SPEC))
    await runtime.reconcile("uid-a")
    status = gateway.objects["a"]["status"]
    assert status["phase"] == "Failed" and status["nextRetryTime"]
    assert condition(status, "Reconciling")["status"] == "True"
    assert condition(status, "Stalled")["status"] == "False"
    assert "retry in" not in condition(status, "Ready")["message"], "no countdown in messages"
    await settle(runtime, lambda: gateway.objects["a"]["status"].get("retries", 0) >= 2)
    assert condition(gateway.objects["a"]["status"], "Stalled")["status"] == "True"


@run_async
async def test_backend_outage_costs_a_bounded_number_of_writes() -> None:
    down = {"now": False}

    def outage(method: str, arguments: Mapping[str, Any]) -> None:
        if down["now"]:
            raise AmphoraComputeError("backend down", reason=Reason.BACKEND_UNAVAILABLE)

    runtime, gateway, _ = make_runtime(
        options={"on_call": outage, "build_seconds": 0.2}, resync_interval=0.1
    )
    for i in range(5):
        runtime.observe("ADDED", gateway.create(f"a{i}", SPEC))
    await settle(runtime, lambda: all("Building" in phases(gateway, f"a{i}") for i in range(5)))
    before = len(gateway.status_writes)
    down["now"] = True
    runtime.start()
    await asyncio.sleep(1.5)  # many poll rounds and resyncs
    await runtime.stop()
    during = len(gateway.status_writes) - before
    assert during <= 2 * 5, f"{during} writes for 5 Amphorae during the outage"
    status = gateway.objects["a0"]["status"]
    assert condition(status, "BackendAvailable")["status"] == "False"
    down["now"] = False
    await settle(runtime, lambda: all("Ready" in phases(gateway, f"a{i}") for i in range(5)))


@run_async
async def test_unknown_driver_is_stalled_with_observed_generation() -> None:
    runtime, gateway, driver = make_runtime()
    runtime.observe("ADDED", gateway.create("a", {**SPEC, "driver": "nosuch"}))
    await runtime.reconcile("uid-a")
    status = gateway.objects["a"]["status"]
    assert status["observedGeneration"] == 1
    assert condition(status, "Stalled")["status"] == "True"
    assert condition(status, "Ready")["reason"] == "UnknownDriver"
    assert driver.calls == []


@run_async
async def test_missing_secret_stalls_after_a_few_tries() -> None:
    runtime, gateway, driver = make_runtime(stall_after=2)
    spec = {**SPEC, "userData": {"secretRef": {"name": "boot", "key": "cloud"}}}
    runtime.observe("ADDED", gateway.create("a", spec))
    await settle(runtime, lambda: gateway.objects["a"].get("status", {}).get("retries", 0) >= 2)
    status = gateway.objects["a"]["status"]
    assert condition(status, "Stalled")["status"] == "True"
    assert condition(status, "Ready")["reason"] == "SecretNotFound"
    assert not any(c.method == "create" for c in driver.calls)
    gateway.secrets[("boot", "cloud")] = b"#cloud-config\n"
    await settle(runtime, lambda: gateway.objects["a"]["status"].get("phase") == "Ready")


# -- deletion, fencing ------------------------------------------------------------------------


@run_async
async def test_deletion_releases_in_one_pass_without_waiting() -> None:
    runtime, gateway, driver = make_runtime()
    runtime.observe("ADDED", gateway.create("a", SPEC))
    await runtime.reconcile("uid-a")
    compute_id = gateway.objects["a"]["status"]["computeId"]
    runtime.observe("MODIFIED", gateway.mark_deleted("a"))
    outcome = await runtime.reconcile("uid-a")
    assert outcome is not None and outcome.released
    assert gateway.finalizer_patches == ["remove a"]
    assert driver.find(amphora_id=compute_id) == []


@run_async
async def test_a_fenced_replica_never_builds() -> None:
    runtime, gateway, driver = make_runtime()
    runtime.backends.may_act = lambda: False
    runtime.observe("ADDED", gateway.create("a", SPEC))
    await runtime.reconcile("uid-a")
    assert not any(c.method == "create" for c in driver.calls)
    assert gateway.objects["a"]["status"]["phase"] != "Ready"


# -- the poller asks only about what moves -----------------------------------------------------


@run_async
async def test_poller_asks_only_about_moving_amphorae() -> None:
    runtime, gateway, driver = make_runtime(resync_interval=3600)
    for i in range(3):
        runtime.observe("ADDED", gateway.create(f"ready{i}", SPEC))
        await runtime.reconcile(f"uid-ready{i}")
    runtime.observe("ADDED", gateway.create("slow", {**SPEC, "tags": ["noop:build-seconds=30"]}))
    await runtime.reconcile("uid-slow")
    slow_id = gateway.objects["slow"]["status"]["computeId"]
    driver._calls.clear()  # only the round's calls below
    await runtime.poller.round(full=False)
    asked = [c.arguments.get("amphora_id") for c in driver.calls]
    assert asked == [slow_id], asked


class ChangesNoop(NoopDriver):
    """The noop driver with a changes feed like Nova's ``changes-since``: each answer holds the
    instances whose state differs from the previous answer (finished deletions as DELETED),
    and, like a VM, a build is never looked at again at once."""

    instant_builds = False

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.answered: dict[str, AmphoraInstance] = {}
        self.asked: list[datetime] = []

    def changed_since(self, since: datetime) -> list[AmphoraInstance]:
        self._enter("changed_since")
        self.asked.append(since)
        now = {i.id: i for i in self.find()}
        gone = [
            i.model_copy(update={"state": AmphoraState.DELETED, "addresses": ()})
            for amphora_id, i in self.answered.items()
            if amphora_id not in now and i.state is not AmphoraState.DELETED
        ]
        news = [i for i in now.values() if self.answered.get(i.id) != i] + gone
        self.answered.update((i.id, i) for i in news)
        return news


def with_changes_feed(runtime: Runtime) -> ChangesNoop:
    backend = runtime.backends.get("noop", NS)
    driver = ChangesNoop(record_calls=True)
    backend.driver = driver
    backend.fresh_for = 60.0  # what a round saw stays usable however slow this machine is
    return driver


@run_async
async def test_a_changes_feed_costs_one_call_per_round_and_no_reads_after_a_wake() -> None:
    runtime, gateway, _ = make_runtime(resync_interval=3600, poll_interval=0.1)
    driver = with_changes_feed(runtime)
    for i in range(3):
        tags = [f"noop:build-seconds={0.3 + 0.2 * i}"]
        runtime.observe("ADDED", gateway.create(f"vm{i}", {**SPEC, "tags": tags}))
    await settle(runtime, lambda: all("Ready" in phases(gateway, f"vm{i}") for i in range(3)))
    for i in range(3):  # built, then never looked at again at once: Building, then Ready
        assert phases(gateway, f"vm{i}") == ["Pending", "Building", "Ready"]
    methods = [c.method for c in driver.calls]
    by_id = [c for c in driver.calls if c.method == "find" and c.arguments.get("amphora_id")]
    assert by_id == [], "the wakes read what the round saw; nothing asked by id"
    assert methods.count("create") == 3
    owners_asked = [
        c.arguments["owner"] for c in driver.calls if c.method == "find" and c.arguments["owner"]
    ]
    owners_asked += [
        o for c in driver.calls if c.method == "find_owners" for o in c.arguments["owners"]
    ]
    assert len(owners_asked) == len(set(owners_asked)) == 3, (
        "one owner lookup per build (alone or together with others)"
    )
    assert methods.count("changed_since") >= 2


@run_async
async def test_a_changes_feed_wakes_only_what_changed_and_asks_from_before_each_look() -> None:
    runtime, gateway, _ = make_runtime(resync_interval=3600)
    driver = with_changes_feed(runtime)
    for name in ("quick", "slow"):
        seconds = 0.2 if name == "quick" else 30
        tags = [f"noop:build-seconds={seconds}"]
        runtime.observe("ADDED", gateway.create(name, {**SPEC, "tags": tags}))
        await runtime.reconcile(f"uid-{name}")
        runtime.queue.forget(f"uid-{name}")
    observed = min(i.observed_at for i in runtime.interests.values() if i.observed_at)
    await runtime.poller.round(full=False)  # first sight of both builds: both woken
    assert driver.asked == [observed - CHANGES_OVERLAP], "from before the first look"
    assert len(runtime.queue) == 2
    for _ in range(2):
        uid = await runtime.queue.get()
        await runtime.reconcile(uid)
        runtime.queue.done(uid)
    await asyncio.sleep(0.3)  # quick is ACTIVE now, slow still builds
    await runtime.poller.round(full=False)
    assert await asyncio.wait_for(runtime.queue.get(), 1) == "uid-quick"
    assert len(runtime.queue) == 0, "slow did not change: not woken"
    assert driver.asked[-1] > observed - CHANGES_OVERLAP, "no further back than needed"


@run_async
async def test_queue_coalesces_and_never_hands_one_uid_to_two_workers() -> None:
    queue = WorkQueue()
    for uid in ("a", "b", "a", "a"):
        queue.mark(uid)
    assert len(queue) == 2
    first = await queue.get()
    assert first == "a", "oldest dirty first"
    queue.mark("a")  # while a worker holds it
    assert await queue.get() == "b"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(queue.get(), 0.05)
    queue.done("a")
    assert await queue.get() == "a", "queued again once the first worker was done"


@run_async
async def test_delayed_marks_keep_the_earliest() -> None:
    queue = WorkQueue()
    queue.mark_after("a", 10)
    queue.mark_after("a", 0.01)
    queue.mark_after("a", 5)
    assert await asyncio.wait_for(queue.get(), 1) == "a"
    queue.forget("a")
    assert queue.waiting() == 0
