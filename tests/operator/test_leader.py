"""Leader election on virtual time: replicas with their own monotonic and wall clocks share a
fake Lease store (compare-and-swap on resourceVersion, like the apiserver) that can fail any
call with a 503, a connection reset or a timeout. The Lease API is a MOCK on purpose: a real
apiserver cannot be made to fail exactly the n-th call, and a real clock cannot be skewed or a
replica paused deterministically (tests/reliability/test_ha.py does those end to end).

Safety is checked at every virtual instant: at most one replica's ``may_act()`` is True.
Also here: kopf's real /healthz server failing once the election task died, and the fence at
``Backend.call`` refusing mutating driver calls.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import socket
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import pytest
import urllib3
from amphora_operator.config import LeaderElectionConfig, OperatorConfig
from amphora_operator.handlers import RunOptions, make_registry, tasks_alive
from amphora_operator.leader import LeaseConflict, LeaseElector, LeaseRecord
from kubernetes.client import ApiException
from pydantic import ValidationError

SETTINGS = LeaderElectionConfig()  # client-go's 15 s / 10 s / 2 s
MARGIN = SETTINGS.lease_duration - SETTINGS.renew_deadline
EPOCH = datetime(2026, 12, 1, tzinfo=UTC)


def unavailable() -> Exception:
    return ApiException(status=503, reason="Service Unavailable")


def reset() -> Exception:
    return urllib3.exceptions.ProtocolError(
        "Connection aborted.", ConnectionResetError(104, "Connection reset by peer")
    )


ERRORS: list[Callable[[], Exception]] = [
    unavailable,
    reset,
    lambda: ConnectionResetError(104, "Connection reset by peer"),
    lambda: TimeoutError("read timed out"),
    lambda: ApiException(status=500, reason="Internal Server Error"),
]


class VirtualTime:
    """Seconds that pass only when every coroutine waits: ``sleep_until`` parks a coroutine,
    :meth:`run` jumps to the next wake-up and checks ``every`` on a fine grid in between."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def sleep_until(self, when: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._queue, (max(when, self.now), next(self._order), future))
        await future

    async def run(self, until: float, every: Callable[[], None], step: float = 0.1) -> None:
        sample = self.now
        stalled = 0
        while True:
            for _ in range(8):  # let every runnable coroutine reach its next sleep
                await asyncio.sleep(0)
            every()
            stalled = stalled + 1 if self._queue and self._queue[0][0] <= self.now else 0
            assert stalled < 1000, f"a coroutine keeps waking without time passing ({self.now})"
            wake = self._queue[0][0] if self._queue else math.inf
            sample = max(sample, self.now) + step if sample <= self.now else sample
            self.now = min(wake, sample, until)
            if self.now >= until:
                every()
                return
            while self._queue and self._queue[0][0] <= self.now:
                _, _, future = heapq.heappop(self._queue)
                if not future.done():
                    future.set_result(None)


@dataclass
class LeaseStore:
    """The apiserver's view of one Lease: a record, a resourceVersion, and who wrote when."""

    time: VirtualTime
    record: LeaseRecord | None = None
    version: int = 0
    writes: list[tuple[float, str | None]] = field(default_factory=list)

    def write(self, record: LeaseRecord) -> None:
        self.record = record
        self.version += 1
        self.writes.append((self.time.now, record.holder))


@dataclass
class FakeLeaseApi:
    """MOCK LeaseApi of one replica: ``fault(now)`` may return an error to raise instead."""

    store: LeaseStore
    fault: Callable[[float], Exception | None] = lambda now: None
    calls: int = 0
    failures: int = 0

    def _call(self) -> None:
        self.calls += 1
        error = self.fault(self.store.time.now)
        if error is not None:
            self.failures += 1
            raise error

    def read(self) -> tuple[LeaseRecord, str] | None:
        self._call()
        if self.store.record is None:
            return None
        return self.store.record, str(self.store.version)

    def create(self, record: LeaseRecord) -> None:
        self._call()
        if self.store.record is not None:
            raise LeaseConflict("exists")
        self.store.write(record)

    def update(self, record: LeaseRecord, resource_version: str) -> None:
        self._call()
        if str(self.store.version) != resource_version:
            raise LeaseConflict("changed")
        self.store.write(record)


async def inline(fn: Callable[[], bool], timeout: float) -> bool:
    return fn()


@dataclass
class Replica:
    """One operator process: its clocks, its elector, the instants it was allowed to act."""

    name: str
    time: VirtualTime
    api: FakeLeaseApi
    #: Offset of this process's monotonic clock (arbitrary origin) and of its wall clock.
    monotonic_origin: float = 0.0
    wall_skew: float = 0.0
    #: (start, end) of a SIGSTOP in virtual seconds; the process cannot run in between.
    paused: tuple[float, float] | None = None
    settings: LeaderElectionConfig = field(default_factory=LeaderElectionConfig)
    seed: int = 0
    elector: LeaseElector = field(init=False)
    acting: list[float] = field(default_factory=list)
    acquired_at: float | None = None
    lost_at: float | None = None
    sleeps: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.elector = LeaseElector(
            self.api,
            identity=self.name,
            settings=self.settings,
            clock=lambda: self.time.now + self.monotonic_origin,
            wall_clock=lambda: EPOCH + timedelta(seconds=self.time.now + self.wall_skew),
            sleep=self.sleep,
            rand=random.Random(self.seed).random,
            run_blocking=inline,
        )

    def sleep(self, seconds: float) -> Awaitable[None]:
        self.sleeps.append(seconds)
        when = self.time.now + seconds
        if self.paused is not None and self.paused[0] <= when < self.paused[1]:
            when = self.paused[1]  # a stopped process wakes only when continued
        return self.time.sleep_until(when)

    async def life(self) -> None:
        """acquire → keep → exit, as handlers.lead() does."""
        await self.elector.acquire()
        self.acquired_at = self.time.now
        await self.elector.keep()
        self.lost_at = self.time.now


@dataclass
class Cluster:
    time: VirtualTime = field(default_factory=VirtualTime)
    replicas: list[Replica] = field(default_factory=list)
    store: LeaseStore = field(init=False)

    def __post_init__(self) -> None:
        self.store = LeaseStore(self.time)

    def replica(self, name: str, **kw: Any) -> Replica:
        r = Replica(name, self.time, FakeLeaseApi(self.store), seed=len(self.replicas), **kw)
        self.replicas.append(r)
        return r

    def check(self) -> None:
        allowed = [r for r in self.replicas if r.elector.may_act()]
        assert len(allowed) <= 1, (
            f"two replicas may act at t={self.time.now:.2f}: {[r.name for r in allowed]}"
        )
        for r in allowed:
            r.acting.append(self.time.now)

    def run(self, until: float, start: dict[str, float] | None = None) -> None:
        """Start every replica (at ``start[name]`` seconds, default 0) and run to ``until``."""

        async def main() -> None:
            async def later(r: Replica, at: float) -> None:
                await self.time.sleep_until(at)
                await r.life()

            tasks = [
                asyncio.create_task(later(r, (start or {}).get(r.name, 0.0))) for r in self.replicas
            ]
            await self.time.run(until, self.check)
            for task in tasks:
                if task.done():
                    task.result()  # a replica's loop must never die of an error
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run(main())


def takeovers(cluster: Cluster) -> list[tuple[float, str | None]]:
    """Writes that changed the holder."""
    out: list[tuple[float, str | None]] = []
    for at, holder in cluster.store.writes:
        if not out or out[-1][1] != holder:
            out.append((at, holder))
    return out


def faulty(start: float, end: float, seed: int = 7) -> Callable[[float], Exception | None]:
    """Every call between ``start`` and ``end`` fails with a random one of ERRORS."""
    pick = random.Random(seed)

    def fault(now: float) -> Exception | None:
        return pick.choice(ERRORS)() if start <= now < end else None

    return fault


# -- errors are survived ------------------------------------------------------------------------


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e()).__name__)
def test_one_api_error_while_acquiring_is_retried(error: Callable[[], Exception]) -> None:
    cluster = Cluster()
    a = cluster.replica("a")
    calls = 0

    def first_call_fails(now: float) -> Exception | None:
        nonlocal calls
        calls += 1
        return error() if calls == 1 else None

    a.api.fault = first_call_fails
    cluster.run(until=10)
    assert a.api.failures == 1
    assert a.acquired_at is not None and a.acquired_at <= SETTINGS.retry_period * 1.2
    assert a.lost_at is None and a.elector.may_act()


def test_a_long_outage_while_acquiring_backs_off_with_jitter_and_never_gives_up() -> None:
    cluster = Cluster()
    a = cluster.replica("a")
    a.api.fault = faulty(0, 300)
    cluster.run(until=400)
    assert a.acquired_at is not None
    assert 300 <= a.acquired_at <= 300 + SETTINGS.lease_duration * 1.2
    waits = a.sleeps[: a.api.failures]
    # Doubling from the retry period up to the lease duration, each with up to 20 % jitter.
    for i, wait in enumerate(waits):
        base = min(SETTINGS.retry_period * 2**i, SETTINGS.lease_duration)
        assert base <= wait <= base * 1.2, (i, wait)
    assert len(set(waits)) == len(waits), "no jitter: replicas would retry in lockstep"
    assert a.api.failures <= 300 / SETTINGS.lease_duration + 5, f"{a.api.failures}: no backoff"


def test_errors_while_renewing_are_survived_until_the_renew_deadline() -> None:
    cluster = Cluster()
    a = cluster.replica("a")
    b = cluster.replica("b")
    a.api.fault = faulty(30, 30 + SETTINGS.renew_deadline - 2 * SETTINGS.retry_period)
    b.api.fault = faulty(0, 100, seed=3)  # the follower's errors change nothing either
    cluster.run(until=120)
    assert a.api.failures >= 3
    assert a.lost_at is None and a.elector.may_act(), "a renewal outage within the deadline"
    assert takeovers(cluster) == [(0.0, "a")]
    assert b.acquired_at is None


def test_renewal_failing_past_the_deadline_stops_the_leader_before_the_takeover() -> None:
    cluster = Cluster()
    a = cluster.replica("a")
    b = cluster.replica("b")
    a.api.fault = faulty(30, math.inf)
    cluster.run(until=100)
    assert a.lost_at is not None and b.acquired_at is not None
    assert takeovers(cluster)[-1][1] == "b"
    assert max(a.acting) + MARGIN <= min(b.acting) + 0.1, (max(a.acting), min(b.acting))
    assert a.lost_at <= 30 + SETTINGS.renew_deadline + 0.1


def test_a_follower_whose_api_fails_takes_over_once_it_recovers() -> None:
    """The issue's scenario: the follower hits an apiserver blip, the leader dies later."""
    cluster = Cluster()
    a = cluster.replica("a")
    b = cluster.replica("b")
    b.api.fault = faulty(5, 60)
    a.paused = (40, math.inf)  # the leader dies (never continues)
    cluster.run(until=150)
    assert b.api.failures > 3
    assert b.acquired_at is not None, "the follower gave up after an API error"
    # It must first see the Lease unchanged for a full duration, then within its backoff.
    assert 60 <= b.acquired_at <= 60 + 2.2 * SETTINGS.lease_duration
    assert max(a.acting) + MARGIN <= min(b.acting) + 0.1


# -- clocks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("skew", [-3600.0, -30.0, -3.0, 3.0, 30.0, 3600.0])
@pytest.mark.parametrize("skewed", ["leader", "follower"])
def test_a_skewed_wall_clock_never_makes_two_leaders(skew: float, skewed: str) -> None:
    cluster = Cluster()
    a = cluster.replica("a", wall_skew=skew if skewed == "leader" else 0.0)
    b = cluster.replica("b", wall_skew=skew if skewed == "follower" else 0.0, monotonic_origin=9e5)
    cluster.run(until=120, start={"b": 1.0})
    assert takeovers(cluster) == [(0.0, "a")], "the follower took a Lease renewed on time"
    assert b.acquired_at is None and a.lost_at is None


def test_a_frozen_wall_clock_still_counts_as_renewing() -> None:
    """renewTime never changes, yet every renewal is a write: the follower sees the Lease move."""
    cluster = Cluster()
    a = cluster.replica("a")
    a.elector._wall_clock = lambda: EPOCH  # stuck (e.g. a broken NTP step)
    b = cluster.replica("b")
    cluster.run(until=120, start={"b": 1.0})
    assert takeovers(cluster) == [(0.0, "a")]
    assert b.acquired_at is None


def test_a_new_follower_waits_a_full_lease_duration_even_for_an_old_renew_time() -> None:
    """The Lease says it was renewed an hour ago (by the holder's clock): only the follower's
    own observation counts, so it still waits leaseDuration before taking over."""
    cluster = Cluster()
    cluster.store.write(
        LeaseRecord("gone", 15.0, EPOCH - timedelta(hours=2), EPOCH - timedelta(hours=1), 4)
    )
    b = cluster.replica("b")
    cluster.run(until=40)
    assert b.acquired_at is not None
    assert SETTINGS.lease_duration <= b.acquired_at <= SETTINGS.lease_duration + 2 * 1.2
    assert cluster.store.record is not None and cluster.store.record.transitions == 5


# -- pauses -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_a_paused_leader_stops_acting_before_the_other_takes_over(seed: int) -> None:
    """SIGSTOP at a random instant for longer than the Lease; the standby takes over; the old
    leader, continued, is not allowed to act for a single instant and steps down."""
    pick = random.Random(seed)
    stop = pick.uniform(20, 40)
    cont = stop + pick.uniform(SETTINGS.lease_duration + 5, 60)
    cluster = Cluster()
    a = cluster.replica("a", paused=(stop, cont), monotonic_origin=pick.uniform(0, 1e6))
    b = cluster.replica("b", monotonic_origin=pick.uniform(0, 1e6))
    cluster.run(until=cont + 30, start={"b": pick.uniform(0, 5)})
    assert b.acquired_at is not None and stop < b.acquired_at < cont
    assert max(a.acting) + MARGIN <= min(b.acting) + 0.1, (max(a.acting), min(b.acting))
    assert max(a.acting) < stop + SETTINGS.renew_deadline
    assert a.lost_at is not None and a.lost_at == pytest.approx(cont), "continued: steps down"
    assert not [t for t in a.acting if t >= cont], "acted after being continued"
    assert [h for _, h in takeovers(cluster)] == ["a", "b"]


def test_a_short_pause_within_the_renew_deadline_keeps_the_leader() -> None:
    cluster = Cluster()
    a = cluster.replica("a", paused=(30, 30 + SETTINGS.renew_deadline - SETTINGS.retry_period * 2))
    b = cluster.replica("b")
    cluster.run(until=80, start={"b": 1.0})
    assert a.lost_at is None and b.acquired_at is None


def test_a_pause_past_the_deadline_without_a_standby_ends_leadership() -> None:
    """Crash-only: having been unable to renew, the replica steps down (and restarts) even when
    nobody else took the Lease in the meantime."""
    cluster = Cluster()
    a = cluster.replica("a", paused=(30, 60))
    cluster.run(until=80)
    assert a.lost_at == pytest.approx(60)
    assert not [t for t in a.acting if 30 + SETTINGS.renew_deadline <= t]


# -- races and bookkeeping ---------------------------------------------------------------------


def test_two_replicas_starting_together_elect_exactly_one() -> None:
    cluster = Cluster()
    replicas = [cluster.replica(name) for name in "abcde"]
    cluster.run(until=60)
    leaders = [r.name for r in replicas if r.acquired_at is not None]
    assert len(leaders) == 1
    assert cluster.store.record is not None and cluster.store.record.transitions == 0


def test_renewals_keep_acquire_time_and_transitions_and_a_takeover_counts_one() -> None:
    cluster = Cluster()
    cluster.replica("a", paused=(30, math.inf))
    cluster.replica("b")
    cluster.run(until=80)
    record = cluster.store.record
    assert record is not None and record.holder == "b" and record.transitions == 1
    assert record.acquire_time is not None and record.renew_time is not None
    assert record.acquire_time < record.renew_time


def test_a_released_lease_is_taken_at_once() -> None:
    cluster = Cluster()
    cluster.store.write(LeaseRecord(None, 1.0, None, None, 2))
    b = cluster.replica("b")
    cluster.run(until=5)
    assert b.acquired_at == 0.0


def test_may_act_is_false_before_acquiring_and_when_the_lease_is_anothers() -> None:
    cluster = Cluster()
    cluster.store.write(LeaseRecord("a", 15.0, EPOCH, EPOCH, 0))
    b = cluster.replica("b")
    assert not b.elector.may_act()
    assert b.elector.try_acquire_or_renew() is False
    assert not b.elector.may_act() and not b.elector.leading


def test_settings_refuse_a_renew_deadline_not_below_the_lease_duration() -> None:
    with pytest.raises(ValidationError, match="renewDeadline must be less than leaseDuration"):
        LeaderElectionConfig.model_validate({"leaseDuration": 10, "renewDeadline": 10})
    with pytest.raises(ValidationError, match="retryPeriod must be less than renewDeadline"):
        LeaderElectionConfig.model_validate({"renewDeadline": 2, "retryPeriod": 2})
    config = OperatorConfig.model_validate({"leaderElection": {"leaseDuration": 12}})
    assert config.leader_election == SETTINGS.model_copy(update={"lease_duration": 12.0})


# -- liveness -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthz(tasks: list[asyncio.Task[None]]) -> int:
    """Serve the operator's own probes through kopf's real /healthz server; its HTTP status."""
    from kopf._core.engines.probing import health_reporter
    from kopf._core.intents.causes import Activity

    operator = make_registry(RunOptions(config=OperatorConfig()))
    registry = kopf.OperatorRegistry()
    for handler in operator._activities.get_handlers(activity=Activity.PROBE):
        if handler.id == "alive":  # the real registration, bound to the given tasks
            registry._activities.append(replace(handler, fn=lambda **_: tasks_alive(tasks)))
    assert registry._activities.get_handlers(activity=Activity.PROBE), "no 'alive' probe"

    async def main() -> int:
        port = free_port()
        ready = asyncio.Event()
        server = asyncio.create_task(
            health_reporter(
                f"http://127.0.0.1:{port}/healthz",
                memo=kopf.Memo(),  # type: ignore[arg-type]
                indices={},
                registry=registry,
                settings=kopf.OperatorSettings(),
                ready_flag=ready,
            )
        )
        await asyncio.wait_for(ready.wait(), 10)

        def get() -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    return int(r.status)
            except urllib.error.HTTPError as e:
                return int(e.code)

        try:
            return await asyncio.to_thread(get)
        finally:
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)

    return asyncio.run(main())


def test_healthz_fails_when_the_election_task_has_died() -> None:
    async def died() -> None:
        raise RuntimeError("elector bug")

    async def dead_and_alive() -> tuple[asyncio.Task[None], asyncio.Task[None]]:
        dead = asyncio.create_task(died())
        await asyncio.gather(dead, return_exceptions=True)
        alive = asyncio.create_task(asyncio.sleep(3600))
        return dead, alive

    loop = asyncio.new_event_loop()
    try:
        dead, alive = loop.run_until_complete(dead_and_alive())
        assert healthz([alive]) == 200
        assert healthz([dead]) == 500
        alive.cancel()
        loop.run_until_complete(asyncio.gather(alive, return_exceptions=True))
    finally:
        loop.close()


# -- the fence at the backend ------------------------------------------------------------------


def test_the_backend_refuses_mutating_calls_once_the_fence_closes() -> None:
    """The backend asks the elector's may_act in the worker thread, right before the driver:
    reads go on (a follower may look), build/delete/suspend/resume are refused."""
    from concurrent.futures import ThreadPoolExecutor

    from amphora_drivers import AmphoraType, BreakerSettings, BuildRequest, CircuitBreaker
    from amphora_drivers.noop import NoopDriver
    from amphora_operator.backends import Backend, NotLeading
    from amphora_operator.metrics import Metrics

    fence = {"open": True}
    driver = NoopDriver(record_calls=True)
    request = BuildRequest(
        name="n", amphora_type=AmphoraType.VM, amphora_flavor="f", image_id="i", owner="o-0"
    )

    async def scenario() -> None:
        with ThreadPoolExecutor(2) as executor:
            backend = Backend(
                profile="noop",
                driver=driver,
                breaker=CircuitBreaker(BreakerSettings(), name="noop"),
                executor=executor,
                timeout=5,
                metrics=Metrics(),
                may_act=lambda: fence["open"],
            )
            built = await backend.build(request)
            fence["open"] = False
            found = await backend.by_owner("o-0")
            assert found is not None and found.id == built
            for attempt in (
                lambda: backend.build(request),
                lambda: backend.delete(built),
                lambda: backend.suspend(built),
                lambda: backend.resume(built),
            ):
                with pytest.raises(NotLeading):
                    await attempt()
            assert backend.breaker.state.name == "CLOSED", "a refusal is no backend failure"

    asyncio.run(scenario())
    # build_from adopts before it creates; nothing reached the driver after the fence closed.
    assert [c.method for c in driver.calls] == ["find", "create", "find"]


def test_the_gateway_refuses_kubernetes_writes_once_the_fence_closes() -> None:
    """A paused leader continued after its Lease passed must not write a stale status over
    the next leader's: status, finalizer and releases writes and Events are refused, reads
    go on."""
    from amphora_operator.kube import ThreadedGateway, WriteFenced

    class Recorder:
        """The KubeGateway calls the fence sits in front of, recorded."""

        def __init__(self) -> None:
            self.calls: list[str] = []

        def patch_status(self, *_: Any) -> dict[str, Any]:
            self.calls.append("patch_status")
            return {}

        def add_finalizer(self, *_: Any) -> None:
            self.calls.append("add_finalizer")

        def remove_finalizer(self, *_: Any) -> None:
            self.calls.append("remove_finalizer")

        def update_releases(self, *_: Any) -> None:
            self.calls.append("update_releases")

        def read_releases(self, *_: Any) -> dict[str, str]:
            self.calls.append("read_releases")
            return {}

        def post_event(self, *_: Any) -> None:
            self.calls.append("post_event")

    fence = {"open": True}
    kube = Recorder()
    gateway = ThreadedGateway(kube, 2, lambda: fence["open"])  # type: ignore[arg-type]

    async def scenario() -> None:
        await gateway.patch_status("ns", "a", {})
        fence["open"] = False
        for attempt in (
            lambda: gateway.patch_status("ns", "a", {}),
            lambda: gateway.add_finalizer("ns", "a", "1", []),
            lambda: gateway.remove_finalizer("ns", "a", "1", []),
            lambda: gateway.update_releases("ns", lambda r: r),
        ):
            with pytest.raises(WriteFenced):
                await attempt()
        gateway.post_event({}, "Normal", "Ready", "ready")
        assert await gateway.read_releases("ns") == {}

    asyncio.run(scenario())
    gateway.executor.shutdown(wait=True)
    assert kube.calls == ["patch_status", "read_releases"]
