"""The circuit breaker insulates callers from a failing backend, and only from that.

Only backend failures (retryable errors, unexpected exceptions) may open the circuit; the
caller's own mistakes (non-retryable errors, unsupported operations) must not. Time is a fake
clock, so open/half-open transitions are exact.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from amphora_drivers.breaker import BreakerSettings, BreakerState, CircuitBreaker
from amphora_drivers.exceptions import (
    AmphoraBuildError,
    AmphoraComputeError,
    InstanceNotFoundError,
    Reason,
)

from tests.drivers._clock import FakeClock


class Backend:
    """A callable whose next outcome the test chooses, counting how often it was called."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def __call__(self, value: Any = "ok") -> Any:
        with self._lock:
            self.calls += 1
        if self.error is not None:
            raise self.error
        return value


def outage() -> AmphoraComputeError:
    return AmphoraComputeError("nova unreachable", reason=Reason.BACKEND_UNAVAILABLE)


def fail(breaker: CircuitBreaker, backend: Backend, error: BaseException, times: int = 1) -> None:
    """Make ``times`` calls that fail with ``error`` and check the error passes through."""
    backend.error = error
    for _ in range(times):
        with pytest.raises(type(error)) as caught:
            breaker.call(backend)
        assert caught.value is error, "the backend's error is re-raised unchanged"
    backend.error = None


def rejected(breaker: CircuitBreaker, backend: Backend) -> AmphoraComputeError:
    """Call through an open circuit; check the backend was not called; return the rejection."""
    before = backend.calls
    with pytest.raises(AmphoraComputeError) as caught:
        breaker.call(backend)
    assert backend.calls == before, "an open circuit must not call the backend"
    return caught.value


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend() -> Backend:
    return Backend()


@pytest.fixture
def transitions() -> list[BreakerState]:
    return []


@pytest.fixture
def breaker(clock: FakeClock, transitions: list[BreakerState]) -> CircuitBreaker:
    settings = BreakerSettings(failure_threshold=3, reset_timeout=30, half_open_max_calls=1)
    return CircuitBreaker(settings, name="nova", clock=clock, on_state_change=transitions.append)


class TestClosed:
    """Closed: calls pass through and consecutive backend failures are counted."""

    def test_defaults(self) -> None:
        settings = BreakerSettings()
        assert (settings.failure_threshold, settings.reset_timeout) == (5, 30.0)
        assert settings.half_open_max_calls == 1
        assert CircuitBreaker().state is BreakerState.CLOSED

    def test_results_and_arguments_pass_through(
        self, breaker: CircuitBreaker, backend: Backend
    ) -> None:
        assert breaker.call(backend, "x") == "x"
        assert breaker.call(backend, value="y") == "y"
        assert backend.calls == 2

    def test_opens_after_threshold_consecutive_retryable_failures(
        self, breaker: CircuitBreaker, backend: Backend, transitions: list[BreakerState]
    ) -> None:
        fail(breaker, backend, outage(), times=2)
        assert breaker.state is BreakerState.CLOSED
        fail(breaker, backend, outage())
        assert breaker.state is BreakerState.OPEN
        assert transitions == [BreakerState.OPEN]
        assert breaker.last_failure == Reason.BACKEND_UNAVAILABLE

    def test_a_success_resets_the_count(self, breaker: CircuitBreaker, backend: Backend) -> None:
        fail(breaker, backend, outage(), times=2)
        breaker.call(backend)
        fail(breaker, backend, outage(), times=2)
        assert breaker.state is BreakerState.CLOSED

    def test_unexpected_exceptions_count(self, breaker: CircuitBreaker, backend: Backend) -> None:
        fail(breaker, backend, TimeoutError("read timed out"), times=3)
        assert breaker.state is BreakerState.OPEN
        assert breaker.last_failure == "TimeoutError"

    @pytest.mark.parametrize(
        "error",
        [
            InstanceNotFoundError("gone"),
            AmphoraBuildError("bad image", reason=Reason.IMAGE_NOT_FOUND, retryable=False),
            AmphoraComputeError("invalid", reason=Reason.INVALID_INPUT, retryable=False),
            NotImplementedError("HWLoadBalancer"),
        ],
        ids=["not-found", "bad-image", "invalid-input", "not-implemented"],
    )
    def test_caller_mistakes_never_open_the_circuit(
        self,
        breaker: CircuitBreaker,
        backend: Backend,
        transitions: list[BreakerState],
        error: BaseException,
    ) -> None:
        fail(breaker, backend, error, times=10)
        assert breaker.state is BreakerState.CLOSED
        assert transitions == []

    def test_a_caller_mistake_breaks_a_failure_streak(
        self, breaker: CircuitBreaker, backend: Backend
    ) -> None:
        """A non-retryable answer proves the backend is up, so the streak starts over."""
        fail(breaker, backend, outage(), times=2)
        fail(breaker, backend, InstanceNotFoundError("gone"))
        fail(breaker, backend, outage(), times=2)
        assert breaker.state is BreakerState.CLOSED

    def test_retry_after_is_zero_when_closed(self, breaker: CircuitBreaker) -> None:
        assert breaker.retry_after == 0.0


class TestOpen:
    """Open: calls are rejected at once with a retryable CircuitOpen, the backend is spared."""

    @pytest.fixture
    def opened(self, breaker: CircuitBreaker, backend: Backend) -> CircuitBreaker:
        fail(breaker, backend, outage(), times=3)
        return breaker

    def test_rejects_without_calling_the_backend(
        self, opened: CircuitBreaker, backend: Backend
    ) -> None:
        err = rejected(opened, backend)
        assert type(err) is AmphoraComputeError
        assert err.reason == Reason.CIRCUIT_OPEN
        assert err.retryable is True
        assert "'nova'" in str(err) and "BackendUnavailable" in str(err)
        assert "next trial in 30 s" in str(err)

    def test_stays_open_until_reset_timeout(
        self, opened: CircuitBreaker, clock: FakeClock, backend: Backend
    ) -> None:
        clock.advance(29.9)
        assert opened.state is BreakerState.OPEN
        rejected(opened, backend)

    def test_retry_after_counts_down(self, opened: CircuitBreaker, clock: FakeClock) -> None:
        assert opened.retry_after == pytest.approx(30)
        clock.advance(10)
        assert opened.retry_after == pytest.approx(20)
        clock.advance(20)
        assert opened.retry_after == 0.0, "half-open now: a trial may go"

    def test_rejections_do_not_extend_the_open_period(
        self, opened: CircuitBreaker, clock: FakeClock, backend: Backend
    ) -> None:
        clock.advance(20)
        for _ in range(5):
            rejected(opened, backend)
        clock.advance(10)
        assert opened.state is BreakerState.HALF_OPEN


class TestHalfOpen:
    """Half-open: a few trial calls; one success closes, one failure re-opens."""

    @pytest.fixture
    def half_open(
        self, breaker: CircuitBreaker, backend: Backend, clock: FakeClock
    ) -> CircuitBreaker:
        fail(breaker, backend, outage(), times=3)
        clock.advance(30)
        assert breaker.state is BreakerState.HALF_OPEN
        return breaker

    def test_a_successful_trial_closes(
        self, half_open: CircuitBreaker, backend: Backend, transitions: list[BreakerState]
    ) -> None:
        assert half_open.call(backend, "trial") == "trial"
        assert half_open.state is BreakerState.CLOSED
        assert transitions == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
        fail(half_open, backend, outage(), times=2)
        assert half_open.state is BreakerState.CLOSED, "the failure count starts from zero"

    def test_a_failed_trial_reopens_at_once(
        self,
        half_open: CircuitBreaker,
        backend: Backend,
        clock: FakeClock,
        transitions: list[BreakerState],
    ) -> None:
        fail(half_open, backend, outage())
        assert half_open.state is BreakerState.OPEN
        assert half_open.retry_after == pytest.approx(30), "a fresh open period"
        rejected(half_open, backend)
        clock.advance(30)
        half_open.call(backend)
        assert transitions == [
            BreakerState.OPEN,
            BreakerState.HALF_OPEN,
            BreakerState.OPEN,
            BreakerState.HALF_OPEN,
            BreakerState.CLOSED,
        ]

    def test_a_caller_mistake_in_a_trial_closes(
        self, half_open: CircuitBreaker, backend: Backend
    ) -> None:
        fail(half_open, backend, InstanceNotFoundError("gone"))
        assert half_open.state is BreakerState.CLOSED

    def test_only_max_calls_trials_at_once(self, clock: FakeClock, backend: Backend) -> None:
        """Trials in flight are capped; the next caller is rejected until one finishes."""
        settings = BreakerSettings(failure_threshold=1, reset_timeout=5, half_open_max_calls=2)
        breaker = CircuitBreaker(settings, clock=clock)
        fail(breaker, backend, outage())
        clock.advance(5)
        third: list[AmphoraComputeError] = []

        def second_trial() -> str:
            with pytest.raises(AmphoraComputeError) as caught:
                breaker.call(backend)
            third.append(caught.value)
            return "second"

        def first_trial() -> str:
            return breaker.call(second_trial)  # still in flight while the second is admitted

        assert breaker.call(first_trial) == "second"
        assert third[0].reason == Reason.CIRCUIT_OPEN
        assert backend.calls == 1, "only the failure that opened the circuit reached it"
        assert breaker.state is BreakerState.CLOSED

    def test_concurrent_trials_are_capped(self, clock: FakeClock) -> None:
        settings = BreakerSettings(failure_threshold=1, reset_timeout=5, half_open_max_calls=3)
        breaker = CircuitBreaker(settings, clock=clock)
        fail(breaker, Backend(), outage())
        clock.advance(5)
        release = threading.Event()
        lock = threading.Lock()
        outcome = {"admitted": 0, "rejected": 0}

        def slow_trial() -> None:
            with lock:
                outcome["admitted"] += 1
            assert release.wait(timeout=30)

        def attempt(_: int) -> None:
            try:
                breaker.call(slow_trial)
            except AmphoraComputeError as e:
                assert e.reason == Reason.CIRCUIT_OPEN
                with lock:
                    outcome["rejected"] += 1

        with ThreadPoolExecutor(20) as pool:
            futures = [pool.submit(attempt, i) for i in range(20)]
            _wait_until(lambda: sum(outcome.values()) == 20)
            release.set()
            for future in futures:
                future.result(timeout=30)
        assert outcome == {"admitted": 3, "rejected": 17}
        assert breaker.state is BreakerState.CLOSED


class TestObservation:
    """State changes are observable, including from the callback itself."""

    def test_callback_not_called_without_a_change(
        self, breaker: CircuitBreaker, backend: Backend, transitions: list[BreakerState]
    ) -> None:
        for _ in range(5):
            breaker.call(backend)
        assert transitions == []

    def test_callback_may_read_the_breaker(self, clock: FakeClock, backend: Backend) -> None:
        seen: list[tuple[BreakerState, float]] = []
        breaker: CircuitBreaker

        def observe(state: BreakerState) -> None:
            seen.append((breaker.state, breaker.retry_after))

        breaker = CircuitBreaker(
            BreakerSettings(failure_threshold=1), clock=clock, on_state_change=observe
        )
        backend.error = outage()
        worker = threading.Thread(target=_swallow, args=(breaker.call, backend), daemon=True)
        worker.start()
        worker.join(timeout=2)
        assert not worker.is_alive(), "deadlocked inside on_state_change"
        assert seen == [(BreakerState.OPEN, 30.0)]


class TestThreadSafety:
    """Counting stays exact under contention."""

    THREADS, CALLS = 8, 100

    @pytest.mark.parametrize(("threshold", "expected"), [(800, "open"), (801, "closed")])
    def test_failures_from_many_threads_are_all_counted(
        self, clock: FakeClock, threshold: int, expected: str
    ) -> None:
        """Exactly 800 failures: the circuit opens at a threshold of 800 but not of 801."""
        breaker = CircuitBreaker(BreakerSettings(failure_threshold=threshold), clock=clock)
        backend = Backend()
        backend.error = outage()

        def hammer(_: int) -> None:
            for _ in range(self.CALLS):
                _swallow(breaker.call, backend)

        with ThreadPoolExecutor(self.THREADS) as pool:
            list(pool.map(hammer, range(self.THREADS)))
        assert backend.calls == self.THREADS * self.CALLS
        assert breaker.state is BreakerState(expected)

    def test_successes_from_many_threads(self, breaker: CircuitBreaker) -> None:
        backend = Backend()
        with ThreadPoolExecutor(self.THREADS) as pool:
            results = list(pool.map(lambda i: breaker.call(backend, i), range(500)))
        assert results == list(range(500))
        assert backend.calls == 500
        assert breaker.state is BreakerState.CLOSED

    def test_an_open_circuit_spares_the_backend_under_load(
        self, breaker: CircuitBreaker, backend: Backend
    ) -> None:
        fail(breaker, backend, outage(), times=3)
        codes: list[str] = []

        def attempt(_: int) -> None:
            try:
                breaker.call(backend)
            except AmphoraComputeError as e:
                codes.append(e.reason)

        with ThreadPoolExecutor(self.THREADS) as pool:
            list(pool.map(attempt, range(200)))
        assert backend.calls == 3
        assert codes == [Reason.CIRCUIT_OPEN] * 200


def _swallow(fn: Callable[..., Any], *args: Any) -> None:
    """Call ``fn`` and ignore driver errors (for background threads)."""
    with contextlib.suppress(AmphoraComputeError):
        fn(*args)


def _wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Poll a condition driven by other threads; fail (never pass) on timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.001)


def test_quota_errors_are_one_tenants_problem_not_a_backend_failure() -> None:
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=2, reset_timeout=30))

    def over_quota() -> None:
        raise AmphoraComputeError("quota exceeded", reason=Reason.QUOTA_EXCEEDED, retryable=True)

    for _ in range(5):
        with pytest.raises(AmphoraComputeError):
            breaker.call(over_quota)
    assert breaker.state is BreakerState.CLOSED
