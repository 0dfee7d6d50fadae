"""A circuit breaker that insulates callers from a failing compute backend (the spec's ask).

States: CLOSED (calls pass; consecutive retryable failures are counted), OPEN (calls fail at
once with reason CircuitOpen until ``reset_timeout`` has passed), HALF_OPEN (up to
``half_open_max_calls`` trial calls pass; one success closes, one failure re-opens).

Only failures of the backend count: retryable driver errors, timeouts and unexpected
exceptions. A bad image or a missing instance is the caller's problem, not the backend's, and
an exceeded quota is one tenant's (reason QuotaExceeded): it must not cut off every tenant.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import ParamSpec, TypeVar

from amphora_drivers.exceptions import AmphoraComputeError, Reason

__all__ = ["BreakerSettings", "BreakerState", "CircuitBreaker"]

P = ParamSpec("P")
#: Retryable errors that say nothing about the backend's health.
_NOT_THE_BACKEND = frozenset({Reason.QUOTA_EXCEEDED})
T = TypeVar("T")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True)
class BreakerSettings:
    #: Consecutive backend failures that open the circuit.
    failure_threshold: int = 5
    #: Seconds the circuit stays open before trial calls are let through.
    reset_timeout: float = 30.0
    #: Trial calls allowed at once while half-open.
    half_open_max_calls: int = 1


class CircuitBreaker:
    """Thread-safe breaker; wrap any callable with :meth:`call`."""

    def __init__(
        self,
        settings: BreakerSettings = BreakerSettings(),
        *,
        name: str = "compute",
        clock: Callable[[], float] = time.monotonic,
        on_state_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self._clock = clock
        self._on_state_change = on_state_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trials = 0
        self.last_failure: str | None = None
        self._pending: list[BreakerState] = []

    @property
    def state(self) -> BreakerState:
        with self._locked():
            self._advance()
            return self._state

    @property
    def retry_after(self) -> float:
        """Seconds until an open circuit lets a trial call through (0 when not open)."""
        with self._locked():
            self._advance()
            if self._state is not BreakerState.OPEN:
                return 0.0
            return max(0.0, self._opened_at + self.settings.reset_timeout - self._clock())

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        self._admit()
        try:
            result = fn(*args, **kwargs)
        except AmphoraComputeError as e:
            if e.retryable and e.reason not in _NOT_THE_BACKEND:
                self.record_failure(e.reason)
            else:
                self._record_success()
            raise
        except NotImplementedError:
            self._record_success()
            raise
        except BaseException as e:
            self.record_failure(type(e).__name__)
            raise
        self._record_success()
        return result

    def _admit(self) -> None:
        with self._locked():
            self._advance()
            if self._state is BreakerState.OPEN or (
                self._state is BreakerState.HALF_OPEN
                and self._trials >= self.settings.half_open_max_calls
            ):
                wait = max(0.0, self._opened_at + self.settings.reset_timeout - self._clock())
                raise AmphoraComputeError(
                    f"circuit breaker {self.name!r} is open after repeated backend failures "
                    f"(last: {self.last_failure}); next trial in {wait:.0f} s",
                    reason=Reason.CIRCUIT_OPEN,
                    retryable=True,
                )
            if self._state is BreakerState.HALF_OPEN:
                self._trials += 1

    def _advance(self) -> None:
        if (
            self._state is BreakerState.OPEN
            and self._clock() >= self._opened_at + self.settings.reset_timeout
        ):
            self._set(BreakerState.HALF_OPEN)
            self._trials = 0

    def record_failure(self, reason: str) -> None:
        """Count a backend failure seen outside :meth:`call` (e.g. a caller's timeout)."""
        with self._locked():
            self.last_failure = reason
            self._failures += 1
            if self._state is BreakerState.HALF_OPEN or (
                self._failures >= self.settings.failure_threshold
            ):
                self._opened_at = self._clock()
                self._set(BreakerState.OPEN)

    def _record_success(self) -> None:
        with self._locked():
            self._failures = 0
            if self._state is not BreakerState.CLOSED:
                self._set(BreakerState.CLOSED)

    def _set(self, state: BreakerState) -> None:
        """Change state (lock held); the callback runs once the lock is released."""
        if state is not self._state:
            self._state = state
            self._pending.append(state)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the lock; afterwards, tell the callback about state changes made meanwhile."""
        try:
            with self._lock:
                yield
        finally:
            self._notify()

    def _notify(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if self._on_state_change is not None:
            for state in pending:
                self._on_state_change(state)
