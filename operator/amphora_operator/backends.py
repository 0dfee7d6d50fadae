"""Compute profiles: a driver from the entry-point registry, behind a typed async proxy.

This is the only place the operator touches drivers. :class:`Backend` offers one typed
coroutine per driver operation; each runs in the profile's worker threads, through its circuit
breaker, bounded by ``driver_call_timeout``, and is measured. Before each mutating call the
``may_act`` fence is asked whether this process may still act (leader election): a replica
that lost its lease stops acting before another may start.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TypeVar

from amphora_drivers import (
    AmphoraComputeDriver,
    AmphoraComputeError,
    AmphoraInstance,
    AmphoraState,
    BreakerSettings,
    BreakerState,
    BuildRequest,
    CircuitBreaker,
    NotSuspendedError,
    Reason,
    driver_class,
)

from amphora_operator.config import OperatorConfig, ProfileConfig
from amphora_operator.metrics import Metrics

__all__ = ["Backend", "BackendPool", "NotLeading", "UnknownProfileError"]

T = TypeVar("T")
_GONE = (AmphoraState.DELETED, AmphoraState.DELETING)
#: How long (seconds) an owner lookup that found nothing spares the build its own lookup.
_OWNER_CHECK_VALID = 5.0
_ABSENT_PRUNE_AT = 256


class UnknownProfileError(LookupError):
    """spec.driver names no configured profile."""


class NotLeading(AmphoraComputeError):
    """The fence refused a mutating call: this replica may no longer act (retryable: the
    next leader does it)."""


class Backend:
    """One driver instance of one profile (per namespace for namespaced drivers)."""

    def __init__(
        self,
        *,
        profile: str,
        driver: AmphoraComputeDriver,
        breaker: CircuitBreaker,
        executor: ThreadPoolExecutor,
        timeout: float,
        metrics: Metrics,
        may_act: Callable[[], bool] = lambda: True,
        fresh_for: float = 0.5,
    ) -> None:
        """``fresh_for``: how old (seconds) a poll round's answer may be for by_id() to use
        it; the poll interval, so a reconcile never acts on anything older than one round."""
        self.profile = profile
        self.driver = driver
        self.breaker = breaker
        self.executor = executor
        self.timeout = timeout
        self.metrics = metrics
        self.may_act = may_act
        self.fresh_for = fresh_for
        #: What a poll round just saw of instances whose Amphorae it woke, by id, with when:
        #: the reconcile that follows reads it instead of asking the backend again.
        self._fresh: dict[str, tuple[float, AmphoraInstance | None]] = {}
        #: Owners a lookup just found without a live instance, with when (see build()).
        self._absent: dict[str, float] = {}
        self._batches_owners = type(driver).find_owners is not AmphoraComputeDriver.find_owners
        #: Owner lookups waiting for the next driver call, and the task making those calls.
        self._owner_waiters: dict[str, list[asyncio.Future[list[AmphoraInstance]]]] = {}
        self._owner_lookups: asyncio.Task[None] | None = None

    # -- reads --------------------------------------------------------------------------

    async def by_id(self, amphora_id: str) -> AmphoraInstance | None:
        """The instance, or None when it is gone; served from the last poll round's answer
        when that is at most ``fresh_for`` seconds old (once: the next read asks again)."""
        fresh = self._fresh.pop(amphora_id, None)
        if fresh is not None and time.monotonic() - fresh[0] <= self.fresh_for:
            return fresh[1]
        found = await self._call("find", lambda: self.driver.find(amphora_id=amphora_id))
        return found[0] if found else None

    async def by_owner(self, owner: str) -> AmphoraInstance | None:
        """The live instance carrying ``owner`` (else a dying one, else None). Where the driver
        answers many owners in one call (it overrides ``find_owners``), lookups that arrive
        while one is under way are asked together next: one call for a burst of new Amphorae,
        not one each; a lone lookup waits for nothing. Other drivers are asked one by one, in
        parallel threads, as before."""
        if not self._batches_owners:
            found = await self._call("find", lambda: self.driver.find(owner=owner))
        else:
            future: asyncio.Future[list[AmphoraInstance]]
            future = asyncio.get_running_loop().create_future()
            self._owner_waiters.setdefault(owner, []).append(future)
            if self._owner_lookups is None or self._owner_lookups.done():
                self._owner_lookups = asyncio.create_task(self._look_up_owners())
            found = await future
        live = [i for i in found if i.state not in _GONE]
        if not live:
            now = time.monotonic()
            if len(self._absent) >= _ABSENT_PRUNE_AT:  # lookups no build followed
                self._absent = {
                    o: t for o, t in self._absent.items() if now - t <= _OWNER_CHECK_VALID
                }
            self._absent[owner] = now
        candidates = live or found
        return candidates[0] if candidates else None

    async def _look_up_owners(self) -> None:
        """Answer the waiting owner lookups, all waiting ones in each driver call (the driver
        slices a long list itself: Nova's query-string limit), until none is left. A failure
        reaches exactly the lookups of that call; a cancel (shutdown) reaches every waiting one."""
        while self._owner_waiters:
            batch, self._owner_waiters = self._owner_waiters, {}
            owners = list(batch)
            lookup: Callable[[], list[AmphoraInstance]] = (
                functools.partial(self.driver.find, owner=owners[0])  # the plain lookup
                if len(owners) == 1
                else functools.partial(self.driver.find_owners, owners)
            )
            try:
                found = await self._call("find", lookup)
            except asyncio.CancelledError:
                for futures in [*batch.values(), *self._owner_waiters.values()]:
                    for future in futures:
                        future.cancel()
                self._owner_waiters.clear()
                raise
            except Exception as e:
                for future in (f for fs in batch.values() for f in fs if not f.done()):
                    future.set_exception(e)
                continue
            by_owner: dict[str, list[AmphoraInstance]] = {}
            for instance in found:
                by_owner.setdefault(instance.owner or "", []).append(instance)
            for owner, futures in batch.items():
                for future in (f for f in futures if not f.done()):
                    future.set_result(by_owner.get(owner, []))

    async def listing(self) -> list[AmphoraInstance]:
        """Every instance this backend manages (one call; for poll rounds and resyncs)."""
        return await self._call("find", self.driver.find)

    async def changed_since(self, since: datetime) -> list[AmphoraInstance] | None:
        """Instances changed since ``since``, in one call; None when the driver cannot tell."""
        return await self._call("changed_since", lambda: self.driver.changed_since(since))

    def remember(self, found: Mapping[str, AmphoraInstance | None]) -> None:
        """Keep what a poll round saw for the reconciles it is about to wake (see by_id)."""
        now = time.monotonic()
        for amphora_id in [i for i, (at, _) in self._fresh.items() if now - at > self.fresh_for]:
            del self._fresh[amphora_id]
        for amphora_id, instance in found.items():
            self._fresh[amphora_id] = (now, instance)

    # -- writes (fenced) ------------------------------------------------------------------

    async def build(self, request: BuildRequest) -> str:
        """Build; when by_owner() found no live instance of this owner moments ago (the same
        pass: one Amphora is never in two passes at once), the driver skips its own lookup."""
        looked = self._absent.pop(request.owner, None) if request.owner else None
        checked = looked is not None and time.monotonic() - looked <= _OWNER_CHECK_VALID
        return await self._call(
            "build_from",
            lambda: self.driver.build_from(request, owner_checked=checked),
            act=True,
        )

    async def delete(self, amphora_id: str) -> None:
        self._fresh.pop(amphora_id, None)
        await self._call("delete", lambda: self.driver.delete(amphora_id), act=True)

    async def release(self, amphora_id: str) -> None:
        """Drop the instance's owner mark (deletionPolicy Orphan): nothing collects it then."""
        self._fresh.pop(amphora_id, None)
        await self._call("release", lambda: self.driver.release(amphora_id), act=True)

    async def suspend(self, amphora_id: str) -> None:
        self._fresh.pop(amphora_id, None)
        await self._call("suspend", lambda: self.driver.suspend(amphora_id), act=True)

    async def resume(self, amphora_id: str) -> None:
        """Resume; an instance that is not suspended (it came back by itself) is fine."""
        self._fresh.pop(amphora_id, None)
        try:
            await self._call("resume", lambda: self.driver.resume(amphora_id), act=True)
        except NotSuspendedError:
            return

    def _fenced(self, method: str, fn: Callable[[], T]) -> T:
        """Ask the fence in the worker thread, right before the driver (see leader.py): the
        later the check, the smaller the window a paused replica can act in. A refusal is
        not a backend failure, so it bypasses the breaker."""
        if not self.may_act():
            raise NotLeading(
                f"{method} refused: this replica no longer holds the lease",
                reason="NotLeading",
                retryable=True,
            )
        return self.breaker.call(fn)

    # -- the one path every call takes ------------------------------------------------------

    async def _call(self, method: str, fn: Callable[[], T], *, act: bool = False) -> T:
        """Run ``fn`` off the event loop, through the breaker, with a timeout."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            call = (lambda: self._fenced(method, fn)) if act else (lambda: self.breaker.call(fn))
            future = loop.run_in_executor(self.executor, call)
            async with asyncio.timeout(self.timeout):  # wait_for can swallow cancels on 3.11
                return await future
        except TimeoutError as e:
            self.breaker.record_failure(Reason.TIMEOUT)
            self.metrics.driver_errors.labels(self.profile, method, Reason.TIMEOUT).inc()
            raise AmphoraComputeError(
                f"{self.profile}.{method} did not answer within {self.timeout:g} s",
                reason=Reason.TIMEOUT,
                retryable=True,
            ) from e
        except AmphoraComputeError as e:
            self.metrics.driver_errors.labels(self.profile, method, e.reason).inc()
            raise
        finally:
            self.metrics.driver_call_seconds.labels(self.profile, method).observe(
                time.perf_counter() - started
            )
            self.metrics.breaker_open.labels(self.profile).set(
                0 if self.breaker.state is BreakerState.CLOSED else 1
            )


class BackendPool:
    """Creates backends lazily, so a profile that is never used never needs credentials."""

    def __init__(
        self,
        config: OperatorConfig,
        metrics: Metrics,
        *,
        api_client: object = None,
        may_act: Callable[[], bool] = lambda: True,
    ) -> None:
        """``api_client`` is handed to drivers that take one (the container driver), so they
        act with the operator's own Kubernetes credentials rather than ambient ones;
        ``may_act`` fences every mutating driver call (see :class:`Backend`)."""
        self.config = config
        self.metrics = metrics
        self.api_client = api_client
        self.may_act = may_act
        # One pool per profile (a bulkhead): a hung backend can only hold its own threads.
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._backends: dict[tuple[str, str | None], Backend] = {}
        #: Per profile: the driver class and whether it follows the Amphora's namespace.
        #: Entry-point lookup scans installed metadata, far too slow for every reconcile.
        self._classes: dict[str, tuple[type[AmphoraComputeDriver], bool]] = {}

    def profile_for(self, spec_type: str, explicit: str | None) -> str:
        name = explicit or self.config.defaults.get(spec_type)  # type: ignore[call-overload]
        if name is None or name not in self.config.profiles:
            known = ", ".join(sorted(self.config.profiles))
            raise UnknownProfileError(
                f"spec.driver: no compute profile {name!r} is configured (profiles: {known})"
            )
        return name

    def get(self, profile: str, namespace: str) -> Backend:
        """The backend for ``profile``; namespaced drivers get one per Amphora namespace."""
        config = self.config.profiles[profile]
        if profile not in self._classes:
            cls = driver_class(config.driver)
            self._classes[profile] = (cls, _is_namespaced(cls, config))
        cls, namespaced = self._classes[profile]
        scope = namespace if namespaced else None
        key = (profile, scope)
        if key not in self._backends:
            options = dict(config.options)
            if scope is not None:
                options["namespace"] = scope
            if self.api_client is not None and _takes(cls, "api_client", config):
                options["api_client"] = self.api_client
            if profile not in self._executors:
                self._executors[profile] = ThreadPoolExecutor(
                    max_workers=self.config.reconcile.concurrency,
                    thread_name_prefix=f"driver-{profile}",
                )
            self._backends[key] = Backend(
                profile=profile,
                driver=cls(**options),
                breaker=CircuitBreaker(
                    BreakerSettings(
                        failure_threshold=config.breaker.failure_threshold,
                        reset_timeout=config.breaker.reset_timeout,
                    ),
                    name=profile,
                ),
                executor=self._executors[profile],
                timeout=self.config.reconcile.driver_call_timeout,
                metrics=self.metrics,
                may_act=lambda: self.may_act(),
                fresh_for=self.config.reconcile.poll_interval,
            )
        return self._backends[key]

    def close(self) -> None:
        for backend in self._backends.values():
            backend.driver.close()
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)


def _takes(cls: type[AmphoraComputeDriver], name: str, config: ProfileConfig) -> bool:
    """Whether the driver accepts ``name`` and the profile leaves it to the operator."""
    return name in inspect.signature(cls).parameters and name not in config.options


def _is_namespaced(cls: type[AmphoraComputeDriver], config: ProfileConfig) -> bool:
    """Drivers taking a ``namespace`` argument that the profile leaves open follow the Amphora."""
    return _takes(cls, "namespace", config)
