"""The reconcile runtime: watch events in, a work queue, a bounded pool of workers, a poller.

Watch events land in the slim :class:`~.store.Store` and mark the Amphora dirty in O(1) when
something the operator must act on changed (first sight, a new generation, a deletion); our
own status writes never wake it again. ``concurrency`` workers take the oldest dirty Amphora
first, never one Amphora twice at once, and hand it to the :class:`~.reconciler.Reconciler`
or, once deleted, to the :class:`~.finalizer.Finalizer`. The :class:`~.poller.Poller` marks
Amphorae dirty when their instances change on the backend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from amphora_operator.backends import BackendPool
from amphora_operator.collector import Collector
from amphora_operator.config import OperatorConfig
from amphora_operator.finalizer import Finalizer
from amphora_operator.kube import Gateway, WriteFenced
from amphora_operator.metrics import Metrics
from amphora_operator.model import FINALIZER, Phase
from amphora_operator.poller import Poller
from amphora_operator.reconciler import Interest, Outcome, Reconciler
from amphora_operator.store import Store
from amphora_operator.workqueue import WorkQueue

__all__ = ["Runtime"]

log = logging.getLogger(__name__)


class Runtime:
    def __init__(
        self,
        *,
        config: OperatorConfig,
        backends: BackendPool,
        gateway: Gateway,
        metrics: Metrics,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        home_namespace: str = "default",
    ) -> None:
        """``home_namespace``: the operator's own, where Events about orphans whose Amphora
        and namespace are unknown go."""
        self.config = config
        self.backends = backends
        self.gateway = gateway
        self.metrics = metrics
        self.store = Store()
        self.queue = WorkQueue()
        self.interests: dict[str, Interest] = {}
        #: uids whose interest is moving: what a poll round between resyncs looks at.
        self.moving: set[str] = set()
        self.reconciler = Reconciler(
            config=config, backends=backends, gateway=gateway, store=self.store,
            metrics=metrics, clock=clock,
        )  # fmt: skip
        self.collector = Collector(
            config=config, backends=backends, gateway=gateway, store=self.store,
            metrics=metrics, home_namespace=home_namespace,
        )  # fmt: skip
        self.finalizer = Finalizer(
            config=config, backends=backends, gateway=gateway, reconciler=self.reconciler,
            clock=clock, spare=self.collector.spare,
        )  # fmt: skip
        self.poller = Poller(
            config=config, interests=self.interests, moving=self.moving, queue=self.queue,
            on_round=self._count_phases,
        )  # fmt: skip
        self._tasks: list[asyncio.Task[None]] = []
        self._cleanups: set[asyncio.Task[None]] = set()
        self._failures: dict[str, int] = {}
        self._last_count = 0.0

    # -- events (O(1) each) -------------------------------------------------------------------

    def observe(self, event_type: str, body: dict[str, Any], *, leading: bool = True) -> None:
        """Take one watch event; mark the Amphora dirty when there is something to do."""
        meta = body.get("metadata") or {}
        uid = meta.get("uid")
        if not uid:
            return
        if event_type == "DELETED":
            self.store.remove(uid)
            self.queue.forget(uid)
            self.interests.pop(uid, None)
            self.moving.discard(uid)
            self._failures.pop(uid, None)
            # With our finalizer but never marked for deletion: the apiserver deleted it at
            # once (a DELETE racing the finalizer being added), so our clean-up never ran.
            if (
                leading
                and FINALIZER in (meta.get("finalizers") or [])
                and not meta.get("deletionTimestamp")
            ):
                task = asyncio.create_task(self._vanished(dict(body)))
                self._cleanups.add(task)
                task.add_done_callback(self._cleanups.discard)
            return
        known = self.store.put(body)
        latest = self.store.get(uid)
        if latest is None or latest is known:
            return  # an older event than what we hold
        if known is None or _needs_reconcile(known, latest):
            self.queue.mark(uid)

    async def _vanished(self, body: dict[str, Any]) -> None:
        log.warning("deleted without clean-up; deleting its instances now")
        try:
            await self.finalizer.clean_up(body)
        except Exception:
            log.warning("clean-up after an unfinalized deletion failed", exc_info=True)

    # -- workers -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers, the poller and garbage collection (as the leader); everything
        known is looked at again, since another leader may have acted meanwhile."""
        for uid in self.store.uids():
            self.queue.mark(uid)
        for _ in range(self.config.reconcile.concurrency):
            self._tasks.append(asyncio.create_task(self._work()))
        self._tasks.append(asyncio.create_task(self.poller.run()))
        if self.config.garbage_collection.enabled:
            self._tasks.append(asyncio.create_task(self.collector.run()))

    async def stop(self) -> None:
        """Stop acting (leadership lost or shutdown); the cache and queue stay for a restart."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _work(self) -> None:
        while True:
            uid = await self.queue.get()
            try:
                await self.reconcile(uid)
            except asyncio.CancelledError:
                raise
            except WriteFenced:
                # Leadership is being lost (the elector exits the process): not a failure.
                log.info("reconcile stopped by the fence", extra={"uid": uid})
                self.queue.mark_after(uid, self.config.reconcile.retry_max)
            except Exception:
                count = self._failures.get(uid, 0) + 1
                self._failures[uid] = count
                log.exception("reconcile failed", extra={"uid": uid})
                delay = min(
                    self.config.reconcile.retry_max,
                    self.config.reconcile.retry_base * 2.0 ** min(count, 30),
                )
                self.queue.mark_after(uid, delay)
            finally:
                self.queue.done(uid)

    async def reconcile(self, uid: str) -> Outcome | None:
        """One pass over one Amphora from the cache (the worker's job; tests call it)."""
        body = self.store.get(uid)
        if body is None:
            return None
        started = time.perf_counter()
        deleting = bool(body["metadata"].get("deletionTimestamp"))
        if deleting and FINALIZER not in (body["metadata"].get("finalizers") or []):
            return None  # not ours to finalize (never built, or released already)
        if deleting:
            outcome = await self.finalizer.finalize(body)
        else:
            outcome = await self.reconciler.reconcile(body)
        latest = self.store.get(uid)
        if latest is not None and _needs_reconcile(body, latest):
            # Our own write's reply can be the first sight of a change (a DELETE landing
            # during the pass): its watch event then matches the cache and marks nothing.
            self.queue.mark(uid)
        elapsed = time.perf_counter() - started
        kind = "delete" if deleting else "reconcile"
        self.metrics.reconcile_seconds.labels(kind).observe(elapsed)
        self.metrics.handler_seconds.labels(kind).observe(elapsed)
        self._failures.pop(uid, None)
        self._apply(uid, outcome)
        return outcome

    def _apply(self, uid: str, outcome: Outcome) -> None:
        if outcome.released or uid not in self.store:
            self.interests.pop(uid, None)
            self.moving.discard(uid)
            return
        if outcome.interest is not None:
            self.interests[uid] = outcome.interest
            if not outcome.interest.moving:
                self.moving.discard(uid)
            elif uid not in self.moving:
                self.moving.add(uid)
                self.poller.wake()
        if outcome.requeue_after is not None:
            self.queue.mark_after(uid, outcome.requeue_after)

    # -- observability -------------------------------------------------------------------------

    def _count_phases(self) -> None:
        """Amphorae by phase for /metrics, at most every 2 s (it walks the cache)."""
        now = time.monotonic()
        if now - self._last_count < 2.0:
            return
        self._last_count = now
        phases: dict[str, int] = {p.value: 0 for p in Phase}
        for uid in self.store.uids():
            body = self.store.get(uid) or {}
            phase = (body.get("status") or {}).get("phase") or Phase.PENDING.value
            phases[phase] = phases.get(phase, 0) + 1
        for phase, count in phases.items():
            self.metrics.amphorae.labels(phase).set(count)

    def __len__(self) -> int:
        return len(self.store)


def _needs_reconcile(known: dict[str, Any], latest: dict[str, Any]) -> bool:
    """A change the operator must act on: the spec (generation) or a deletion. Status changes
    are our own writes (already in the cache), so they never wake a reconcile."""
    old, new = known["metadata"], latest["metadata"]
    return (
        old.get("generation") != new.get("generation")
        or bool(new.get("deletionTimestamp")) != bool(old.get("deletionTimestamp"))
        or (bool(new.get("deletionTimestamp")) and old.get("finalizers") != new.get("finalizers"))
    )
