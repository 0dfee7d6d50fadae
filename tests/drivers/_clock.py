"""A controllable clock so time-dependent behaviour is tested without sleeping."""

from __future__ import annotations

import threading


class FakeClock:
    """A callable returning a time that only moves when the test calls :meth:`advance`."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        with self._lock:
            self._now += seconds
