"""Poll compute backends and wake only the Amphorae whose instances changed.

Each round asks every backend, concurrently and each under its own timeout, only about the
instances of Amphorae still moving (building, updating, deleting, retiring): by id when they
are few, with one listing when they are many. Every ``resync_interval`` (with jitter) a full
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

from amphora_drivers import AmphoraInstance

from amphora_operator.backends import Backend
from amphora_operator.config import OperatorConfig
from amphora_operator.reconciler import Interest
from amphora_operator.workqueue import WorkQueue

__all__ = ["Poller"]

log = logging.getLogger(__name__)

#: Up to this many moving instances on one backend are looked up by id; more: one listing.
BY_ID_LIMIT = 16


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
    ) -> None:
        self.config = config
        self.interests = interests
        self.moving = moving
        self.queue = queue
        self.on_round = on_round
        self.clock = clock
        self._wake = asyncio.Event()
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
            full = self.clock() >= self._next_resync
            try:
                moving = await self.round(full=full)
            except Exception:
                log.exception("poll round failed")
                moving = True
            if full:
                jitter = random.uniform(0.9, 1.1)
                self._next_resync = self.clock() + settings.resync_interval * jitter
            self.on_round()
            interval = settings.poll_interval
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
        try:
            async with asyncio.timeout(backend.timeout * 2):
                found = await self._look(backend, ids, full or bool(waiting))
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
        if self._down.pop(key, None) is not None:
            log.info("backend answers again", extra={"profile": backend.profile})
            self._mark_all(backend)
            return
        for uid, interest in items.items():
            if interest.waiting or interest.changed(found):
                self.queue.mark(uid)

    def _mark_all(self, backend: Backend) -> None:
        """Wake every Amphora of ``backend``, settled ones too: an outage (or its end) is news
        to all of them, not only to those the round asked about. Only when the backend's state
        changes, so a long outage costs each Amphora a bounded number of reconciles."""
        for uid, interest in list(self.interests.items()):
            if interest.backend is backend:
                self.queue.mark(uid)

    async def _look(
        self, backend: Backend, ids: set[str], full: bool
    ) -> dict[str, AmphoraInstance | None]:
        if full or len(ids) > BY_ID_LIMIT:
            listing = await backend.listing()
            by_id: dict[str, AmphoraInstance | None] = {i.id: i for i in listing}
            return {i: by_id.get(i) for i in ids}
        found = await asyncio.gather(*(backend.by_id(i) for i in ids))
        return dict(zip(ids, found, strict=True))
