"""Polling until something holds: the one helper tests, bench and the control plane share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: How often to look again; short enough for tests, long enough not to load the machine.
POLL_SECONDS = 0.2


class WaitTimeout(AssertionError):
    """The awaited condition did not hold in time; the message names it and the last value.

    An ``AssertionError``, so pytest reports it as a failed expectation, not as a crash.
    """


def wait_until(
    probe: Callable[[], T],
    until: Callable[[T], bool] = bool,
    *,
    timeout: float,
    what: str,
    interval: float = POLL_SECONDS,
) -> T:
    """Call ``probe`` until ``until(value)`` holds and return that value.

    Raises :class:`WaitTimeout` with ``what`` and the last value once ``timeout`` seconds have
    passed (``probe`` is called at least once, and once more at the deadline).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if until(value):
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"{what}: not reached within {timeout:.0f} s; last: {value!r}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
