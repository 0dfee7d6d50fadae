"""Garbage collection: delete managed instances no Amphora claims, as the leader.

Every resync interval (with jitter) each backend in use is listed, then the claims of every
known Amphora are read from the cache, and :func:`~.garbage.plan_collection` decides; what it
would delete is confirmed against a fresh list of Amphorae from the apiserver (so an empty or
stale cache, after a start or during a watch outage, never costs an instance). This module only
performs. Deletes go through the backend's fence (``may_act``), so a replica that
lost the lease collects nothing. Each collected instance gets a Warning Event (on its Amphora
when that still exists, else on the namespace it lived in, else on the operator's own), a
count in ``amphora_orphans_collected_total`` and one log line (ids and reasons only).

It also finishes ``deletionPolicy: Orphan`` releases the finalizer could not complete (the
backend did not answer): those instances are never collected and their release is retried
every sweep. They are recorded in a ConfigMap in the operator's namespace
(:data:`~.kube.RELEASES_CONFIGMAP`) before the finalizer goes, and read before the first
sweep, so a restart or a new leader never collects an instance its user asked to keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from amphora_operator.backends import Backend, BackendPool
from amphora_operator.config import OperatorConfig
from amphora_operator.garbage import Claim, Orphan, claims_of, plan_collection, uid_of
from amphora_operator.kube import Gateway
from amphora_operator.metrics import Metrics
from amphora_operator.store import Store

__all__ = ["Collector"]

log = logging.getLogger(__name__)


class Collector:
    def __init__(
        self,
        *,
        config: OperatorConfig,
        backends: BackendPool,
        gateway: Gateway,
        store: Store,
        metrics: Metrics,
        home_namespace: str = "default",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.backends = backends
        self.gateway = gateway
        self.store = store
        self.metrics = metrics
        self.home_namespace = home_namespace
        self.clock = clock
        #: Per backend: unclaimed instance id -> when first seen unclaimed.
        self._first_seen: dict[int, dict[str, float]] = {}
        #: Every backend swept so far, with the namespace it serves (namespaced drivers), so
        #: that one whose last Amphora is gone is still swept.
        self._swept: dict[int, tuple[Backend, str | None]] = {}
        #: Where Amphorae lived (by UID without dashes), for Events after they are gone.
        self._homes: dict[str, tuple[str, str]] = {}
        #: Orphan releases to finish: instance id -> its backend (None: its profile is gone
        #: from the configuration, so it is only spared).
        self._releases: dict[str, Backend | None] = {}
        self._releases_loaded = False

    async def spare(self, backend: Backend, amphora_id: str, namespace: str) -> None:
        """Never collect ``amphora_id``; release it at the next sweeps (the finalizer's
        release failed). Recorded in the apiserver first: raises when it cannot be, and the
        finalizer then stays until it can."""
        record = json.dumps({"profile": backend.profile, "namespace": namespace})
        await self.gateway.update_releases(
            self.home_namespace, lambda pending: {**pending, amphora_id: record}
        )
        self._releases[amphora_id] = backend

    async def run(self) -> None:
        """Sweep for ever (cancelled when leadership ends); a failing sweep never ends it."""
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("garbage collection sweep failed")
            interval = self.config.reconcile.resync_interval * random.uniform(0.9, 1.1)
            await asyncio.sleep(interval)

    async def sweep(self) -> int:
        """One sweep over every backend in use; returns how many instances were deleted."""
        if not self._releases_loaded:  # no verdict before the recorded releases are known
            await self._load_releases()
        await self._finish_releases()
        backends = self._backends_in_use()
        results = await asyncio.gather(*(self._sweep(b, ns) for b, ns in backends))
        owners = {uid for _, seen in results for uid in seen}
        self._homes = {u: home for u, home in self._homes.items() if u in owners}
        return sum(deleted for deleted, _ in results)

    def _backends_in_use(self) -> list[tuple[Backend, str | None]]:
        for uid in self.store.uids():
            body = self.store.get(uid) or {}
            profile = (body.get("status") or {}).get("driver")
            namespace = body["metadata"].get("namespace", "")
            if not profile or profile not in self.config.profiles:
                continue
            try:
                backend = self.backends.get(profile, namespace)
            except Exception:  # a driver that cannot start: the reconciler reports it
                continue
            if id(backend) not in self._swept:
                self._swept[id(backend)] = (backend, namespace if _namespaced(backend) else None)
        return list(self._swept.values())

    async def _sweep(self, backend: Backend, namespace: str | None) -> tuple[int, set[str]]:
        """Sweep one backend: (instances deleted, owner UIDs still worth remembering)."""
        key = id(backend)
        try:
            listing = await backend.listing()
        except Exception as e:  # down: try again next sweep; grace periods keep running
            log.info(
                "garbage collection skipped a backend",
                extra={"profile": backend.profile, "error": type(e).__name__},
            )
            return 0, set(self._homes)
        # After the listing: whatever it shows was built after its intent was cached.
        bodies = [b for u in self.store.uids() if (b := self.store.get(u)) is not None]
        claims = claims_of(bodies)
        for uid, claim in claims.items():
            self._homes[uid] = (claim.namespace, claim.name)
        result = plan_collection(
            instances=listing,
            claims=claims,
            first_seen=self._first_seen.get(key, {}),
            now=self.clock(),
            grace=self.config.garbage_collection.grace_period,
            spared=self._releases,
        )
        self._first_seen[key] = result.first_seen
        self.metrics.orphans_pending.labels(backend.profile).set(len(result.first_seen))
        orphans = await self._confirm(result.collect, bodies) if result.collect else []
        deleted = 0
        for orphan in orphans:
            if await self._collect(backend, namespace, orphan):
                deleted += 1
        owners = {u for i in listing if (u := uid_of(i.owner)) is not None}
        return deleted, owners | set(claims)

    async def _confirm(self, orphans: list[Orphan], cached: list[dict[str, Any]]) -> list[Orphan]:
        """The orphans that the apiserver's own list of Amphorae confirms (read after the
        backend's listing). The cache alone could be empty or behind: right after a start,
        or while the watch cannot reach the apiserver. No answer, no deletion."""
        try:
            listed = await self.gateway.list_amphorae()
        except Exception as e:
            log.warning("orphans not confirmed", extra={"error": type(e).__name__})
            return []
        again = plan_collection(
            instances=[o.instance for o in orphans],
            claims=claims_of([*listed, *cached]),
            first_seen={},
            now=0.0,
            grace=0.0,
            spared=self._releases,
        )
        return again.collect

    async def _collect(self, backend: Backend, namespace: str | None, orphan: Orphan) -> bool:
        instance = orphan.instance
        try:
            await backend.delete(instance.id)
        except Exception as e:  # refused, down, or no longer leading: next sweep
            log.warning(
                "orphan not deleted",
                extra={"profile": backend.profile, "instance": instance.id,
                       "error": type(e).__name__},
            )  # fmt: skip
            return False
        self.metrics.orphans_collected.labels(backend.profile, orphan.reason).inc()
        log.warning(
            "orphan deleted",
            extra={"profile": backend.profile, "instance": instance.id, "owner": instance.owner,
                   "reason": orphan.reason},
        )  # fmt: skip
        why = (
            "its Amphora no longer exists"
            if orphan.reason == "OwnerGone"
            else "its Amphora no longer claims it"
        )
        message = (
            f"deleted instance {instance.id} ({backend.profile}, owner {instance.owner}): {why} "
            f"for {self.config.garbage_collection.grace_period:g} s"
        )
        self.gateway.post_event(self._about(orphan.claim, instance.owner, namespace),
                                "Warning", "OrphanCollected", message)  # fmt: skip
        return True

    def _about(self, claim: Claim | None, owner: str | None, namespace: str | None
               ) -> dict[str, Any]:  # fmt: skip
        """The object the Event is about: the Amphora if it exists, else a namespace."""
        if claim is not None:
            return {"metadata": {"name": claim.name, "namespace": claim.namespace,
                                 "uid": claim.uid}}  # fmt: skip
        home = self._homes.get(uid_of(owner) or "")
        where = namespace or (home[0] if home else self.home_namespace)
        return {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": where, "namespace": where}}  # fmt: skip

    async def _load_releases(self) -> None:
        """The releases recorded by earlier processes or leaders, with their backends (swept
        from now on, even if no Amphora uses them any more)."""
        for amphora_id, text in (await self.gateway.read_releases(self.home_namespace)).items():
            backend: Backend | None = None
            with contextlib.suppress(Exception):  # unknown profile or bad record: spared only
                record = json.loads(text)
                backend = self.backends.get(record["profile"], record["namespace"])
                scope = record["namespace"] if _namespaced(backend) else None
                self._swept.setdefault(id(backend), (backend, scope))
            self._releases.setdefault(amphora_id, backend)
        self._releases_loaded = True

    async def _finish_releases(self) -> None:
        for amphora_id, backend in list(self._releases.items()):
            if backend is None:
                continue
            with contextlib.suppress(Exception):  # still down: the next sweep tries again
                await backend.release(amphora_id)
                await self.gateway.update_releases(self.home_namespace, _without(amphora_id))
                del self._releases[amphora_id]
                log.info("orphan release finished", extra={"instance": amphora_id})


def _without(amphora_id: str) -> Callable[[dict[str, str]], dict[str, str]]:
    def change(pending: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in pending.items() if k != amphora_id}

    return change


def _namespaced(backend: Backend) -> bool:
    return getattr(backend.driver, "namespace", None) is not None
