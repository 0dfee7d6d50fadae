"""Poll compute backends and wake only the Amphorae whose instances changed.

Each round asks every backend, concurrently and each under its own timeout, only about the
instances of Amphorae still moving (building, updating, deleting, retiring): with one
"what changed since the last round" call where the driver can answer it (Nova's
``changes-since``), else by id when they are few and with one listing when they are many.
What a round saw of the Amphorae it wakes is handed to their reconciles (``Backend.remember``),
so a transition costs the backend no second read. Every ``resync_interval`` (with jitter) a full
listing of each backend checks every Amphora for drift. These calls are the backend's health
probe, one per round per backend: a backend that fails marks *every* Amphora it serves dirty
(settled ones included, so each shows BackendAvailable=False), once when it goes down, once
when its failure changes kind and once when it comes back, never every round, so an outage
costs a bounded number of status writes; Amphorae whose own lookups failed wait for the one
probe per round (a listing) instead of retrying each on its own. A backend nobody waits on is
probed at the next resync. Nothing a backend returns can break a round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from amphora_drivers import AmphoraInstance

from amphora_operator.backends import Backend
from amphora_operator.config import OperatorConfig
from amphora_operator.reconciler import Interest
from amphora_operator.workqueue import WorkQueue

__all__ = ["Poller"]

log = logging.getLogger(__name__)

#: Up to this many moving instances on one backend are looked up by id; more: one listing.
BY_ID_LIMIT = 16
#: A changes-since question reaches this much further back than it must: clock skew between
#: the operator and the backend, and second-resolution timestamps, lose nothing.
CHANGES_OVERLAP = timedelta(seconds=10)


class Poller:
    def __init__(
        self,
        *,
        config: OperatorConfig,
        interests: Mapping[str, Interest],
        moving: set[str],
        queue: WorkQueue,
        on_round: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.interests = interests
        self.moving = moving
        self.queue = queue
        self.on_round = on_round
        self.clock = clock
        self.wall_clock = wall_clock
        self._wake = asyncio.Event()
        #: Per backend: the Amphorae its last answered round compared, with when it started.
        self._covered: dict[int, dict[str, datetime]] = {}
        #: Backends that failed, with the kind of failure last seen (news when it changes).
        self._down: dict[int, str] = {}
        self._next_resync = 0.0

    def wake(self) -> None:
        """Something started moving: poll soon rather than at the next resync."""
        self._wake.set()

    async def run(self) -> None:
        """Poll for ever (cancelled at shutdown); a failing round never ends the loop."""
        settings = self.config.reconcile
        while True:
            began = self.clock()
            full = began >= self._next_resync
            try:
                moving = await self.round(full=full)
            except Exception:
                log.exception("poll round failed")
                moving = True
            if full:
                jitter = random.uniform(0.9, 1.1)
                self._next_resync = self.clock() + settings.resync_interval * jitter
            self.on_round()
            # Rounds start every poll_interval (a slow backend's answer is not added to it).
            interval = max(0.0, began + settings.poll_interval - self.clock())
            if not moving:
                interval = max(0.0, self._next_resync - self.clock())
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands
            # as the wait ends, and stop() would then wait for this loop for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()

    async def round(self, *, full: bool) -> bool:
        """One round; True while anything is still moving."""
        groups: dict[int, tuple[Backend, dict[str, Interest]]] = {}
        for uid in list(self.interests) if full else list(self.moving):
            interest = self.interests.get(uid)
            if interest is not None:
                key = id(interest.backend)
                groups.setdefault(key, (interest.backend, {}))[1][uid] = interest
        await asyncio.gather(*(self._poll(b, items, full) for b, items in groups.values()))
        return bool(self.moving)

    async def _poll(self, backend: Backend, items: dict[str, Interest], full: bool) -> None:
        key = id(backend)
        ids = {i for interest in items.values() for i in interest.seen}
        waiting = [uid for uid, interest in items.items() if interest.waiting]
        started = self.wall_clock()
        since = self._changes_since(key, items)
        try:
            async with asyncio.timeout(backend.timeout * 2):
                found, partial = await self._look(backend, ids, full or bool(waiting), since)
        except Exception as e:  # down, slow, or returning garbage: only its own Amphorae wait
            cause = str(getattr(e, "reason", type(e).__name__))
            if cause == "CircuitOpen":
                cause = backend.breaker.last_failure or cause
            if self._down.get(key) != cause:  # down, or failing differently: they show it
                self._down[key] = cause
                log.warning(
                    "backend poll failed",
                    extra={"profile": backend.profile, "error": type(e).__name__},
                )
                self._mark_all(backend)
            return
        self._covered[key] = dict.fromkeys(items, started)
        if self._down.pop(key, None) is not None:
            log.info("backend answers again", extra={"profile": backend.profile})
            self._mark_all(backend)
            return
        news: dict[str, AmphoraInstance | None] = {}
        for uid, interest in items.items():
            if interest.waiting or interest.changed(found, partial=partial):
                self.queue.mark(uid)
                news.update((i, found[i]) for i in interest.seen if found.get(i) is not None)
        # The reconciles just woken read these instead of asking again. Not an absence: a
        # listing leaves out instances that are not ours by tag (an adopted import).
        backend.remember(news)

    def _changes_since(self, key: int, items: dict[str, Interest]) -> datetime | None:
        """What a changes question must reach back to so that nothing is missed: for each
        Amphora, its last look at its instances or the start of the last answered round that
        compared them, whichever came later. None when some look's time is unknown."""
        covered = self._covered.get(key, {})
        since: datetime | None = None
        for uid, interest in items.items():
            if interest.observed_at is None:
                return None
            last = covered.get(uid)
            need = interest.observed_at if last is None else max(last, interest.observed_at)
            since = need if since is None else min(since, need)
        return since

    def _mark_all(self, backend: Backend) -> None:
        """Wake every Amphora of ``backend``, settled ones too: an outage (or its end) is news
        to all of them, not only to those the round asked about. Only when the backend's state
        changes, so a long outage costs each Amphora a bounded number of reconciles."""
        for uid, interest in list(self.interests.items()):
            if interest.backend is backend:
                self.queue.mark(uid)

    async def _look(
        self, backend: Backend, ids: set[str], full: bool, since: datetime | None
    ) -> tuple[dict[str, AmphoraInstance | None], bool]:
        """What the backend says of ``ids``, and whether that is partial (only what changed
        after ``since``: an id left out is unchanged, not gone)."""
        if not full and since is not None:
            changed = await backend.changed_since(since - CHANGES_OVERLAP)
            if changed is not None:
                return {i.id: i for i in changed if i.id in ids}, True
        if full or len(ids) > BY_ID_LIMIT:
            listing = await backend.listing()
            by_id: dict[str, AmphoraInstance | None] = {i.id: i for i in listing}
            return {i: by_id.get(i) for i in ids}, False
        found = await asyncio.gather(*(backend.by_id(i) for i in ids))
        return dict(zip(ids, found, strict=True)), False
