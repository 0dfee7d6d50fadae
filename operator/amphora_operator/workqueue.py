"""A level-triggered work queue of Amphora uids (client-go's workqueue, in asyncio).

Marking is O(1) and idempotent: an Amphora marked ten times before a worker takes it is
reconciled once, from the latest body. Workers take the oldest dirty uid first; a uid being
reconciled is never handed to a second worker; marked again meanwhile, it is queued once more
when the first worker is done. Delayed marks (retries, polls of deletions) use one timer
handle each, never a task. Memory is bounded by the number of distinct uids, not by events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["WorkQueue"]


class WorkQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: uid → when it was first marked dirty (insertion order is age order).
        self._dirty: dict[str, float] = {}
        self._processing: set[str] = set()
        #: Marked while processing: queued again by done().
        self._again: dict[str, float] = {}
        self._later: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._dirty)

    @property
    def busy(self) -> int:
        return len(self._processing)

    def mark(self, uid: str) -> None:
        """Ask for a reconcile of ``uid`` as soon as a worker is free."""
        if uid in self._processing:
            self._again.setdefault(uid, self._clock())
            return
        if uid not in self._dirty:
            self._dirty[uid] = self._clock()
            self._ready.set()

    def mark_after(self, uid: str, delay: float) -> None:
        """Ask for a reconcile in ``delay`` seconds (an earlier pending request wins)."""
        if delay <= 0:
            self.mark(uid)
            return
        due = self._clock() + delay
        pending = self._later.get(uid)
        if pending is not None:
            if pending[0] <= due:
                return
            pending[1].cancel()
        handle = asyncio.get_running_loop().call_later(delay, self._fire, uid)
        self._later[uid] = (due, handle)

    def _fire(self, uid: str) -> None:
        self._later.pop(uid, None)
        self.mark(uid)

    def forget(self, uid: str) -> None:
        """Drop every pending request for ``uid`` (the object is gone)."""
        self._dirty.pop(uid, None)
        self._again.pop(uid, None)
        pending = self._later.pop(uid, None)
        if pending is not None:
            pending[1].cancel()

    async def get(self) -> str:
        """The oldest dirty uid not being reconciled; it is now being reconciled."""
        while not self._dirty:
            if self._closed:
                raise asyncio.CancelledError
            self._ready.clear()
            await self._ready.wait()
        uid = next(iter(self._dirty))
        del self._dirty[uid]
        self._processing.add(uid)
        return uid

    def done(self, uid: str) -> None:
        """A worker finished ``uid``; a mark that came meanwhile queues it again."""
        self._processing.discard(uid)
        if uid in self._again:
            self._dirty.setdefault(uid, self._again.pop(uid))
            self._ready.set()

    def waiting(self) -> int:
        """uids with a delayed reconcile pending."""
        return len(self._later)

    def close(self) -> None:
        self._closed = True
        for _, handle in self._later.values():
            handle.cancel()
        self._later.clear()
        self._ready.set()
