"""Leader election on a coordination.k8s.io Lease, so that only one replica acts.

How a replica decides (as client-go's ``leaderelection`` does):

- **Expiry on the local monotonic clock.** A follower records when it last saw the Lease
  *change* (holder, renewTime, transitions, or any other write: its resourceVersion) and takes
  it over only once ``leaseDuration`` has passed on its own monotonic clock since then. It never
  compares the holder's ``renewTime`` with its own wall clock, so skewed wall clocks cannot
  make two leaders; ``renewTime`` is written for humans only.
- **Every API error is retried** (503, connection reset, timeout, anything raised), with
  exponential backoff (capped at ``leaseDuration``) and 0-20 % jitter while following, and
  every ``retryPeriod`` while leading (the renew deadline bounds that). No error
  ends the election; only lost leadership does.
- **Fencing.** :meth:`LeaseElector.may_act` is True only while ``renewDeadline`` has not passed
  on the monotonic clock since the last successful renewal was *sent*. Any other replica can
  only see that write after it was sent, and then waits ``leaseDuration`` more, so the leader's
  permission ends ``leaseDuration - renewDeadline`` (the safety margin) before anyone may take
  over, even when the leader was paused (SIGSTOP, GC, VM freeze) or cut off from the apiserver.
  :meth:`LeaseElector.keep` returns at that moment; the operator then exits (crash-only:
  Kubernetes restarts it as a follower).

Contract for the runtime that acts on the leader's behalf:

- It MUST call :meth:`LeaseElector.may_act` immediately before each mutating backend call
  (build, delete, suspend, resume) and MUST NOT make the call when it returns False. The
  check is a clock read and an attribute test: cheap, synchronous, safe from any thread.
- It SHOULD make the check in the thread that makes the call, after any queueing, so that a
  pause between the check and the call is as short as possible: a pause longer than the safety
  margin *between* the check and the call cannot be fenced without fencing tokens in the backend.
- It MUST stop acting when :meth:`LeaseElector.keep` returns.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from kubernetes import client

from amphora_operator.config import LeaderElectionConfig

__all__ = ["KubeLeaseApi", "LeaseApi", "LeaseConflict", "LeaseElector", "LeaseRecord"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec as the election reads and writes it."""

    holder: str | None
    lease_duration: float
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int


class LeaseConflict(Exception):
    """The Lease changed (409) or appeared (409 on create) since it was read: lost the race."""


class LeaseApi(Protocol):
    """Where the Lease lives. Any exception but :class:`LeaseConflict` is an API error."""

    def read(self) -> tuple[LeaseRecord, str] | None:
        """The record and its resourceVersion, or None when the Lease does not exist."""

    def create(self, record: LeaseRecord) -> None:
        """Create the Lease; raise LeaseConflict when it exists."""

    def update(self, record: LeaseRecord, resource_version: str) -> None:
        """Compare-and-swap on ``resource_version``; raise LeaseConflict when it changed."""


class KubeLeaseApi:
    """:class:`LeaseApi` on a real apiserver, each call bounded by ``request_timeout`` seconds."""

    def __init__(
        self, api_client: client.ApiClient, *, namespace: str, name: str, request_timeout: float
    ) -> None:
        self.api = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.timeout = request_timeout

    def read(self) -> tuple[LeaseRecord, str] | None:
        try:
            lease = self.api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.timeout
            )
        except client.ApiException as e:
            if e.status == 404:
                return None
            raise
        spec = lease.spec or client.V1LeaseSpec()
        record = LeaseRecord(
            holder=spec.holder_identity,
            lease_duration=float(spec.lease_duration_seconds or 0),
            acquire_time=spec.acquire_time,
            renew_time=spec.renew_time,
            transitions=spec.lease_transitions or 0,
        )
        assert lease.metadata is not None, "the apiserver always returns metadata"
        return record, str(lease.metadata.resource_version)

    def create(self, record: LeaseRecord) -> None:
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=self._spec(record),
        )
        try:
            self.api.create_namespaced_lease(self.namespace, body, _request_timeout=self.timeout)
        except client.ApiException as e:
            if e.status == 409:
                raise LeaseConflict("the Lease was created by another replica") from e
            raise

    def update(self, record: LeaseRecord, resource_version: str) -> None:
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(
                name=self.name, namespace=self.namespace, resource_version=resource_version
            ),
            spec=self._spec(record),
        )
        try:
            self.api.replace_namespaced_lease(
                self.name, self.namespace, body, _request_timeout=self.timeout
            )
        except client.ApiException as e:
            if e.status in (404, 409):
                raise LeaseConflict("the Lease changed since it was read") from e
            raise

    @staticmethod
    def _spec(record: LeaseRecord) -> client.V1LeaseSpec:
        return client.V1LeaseSpec(
            holder_identity=record.holder,
            lease_duration_seconds=max(1, round(record.lease_duration)),
            acquire_time=record.acquire_time,
            renew_time=record.renew_time,
            lease_transitions=record.transitions,
        )


async def _in_thread(fn: Callable[[], T], timeout: float) -> T:
    """Run a blocking API call off the event loop; give up waiting after ``timeout``."""
    async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancel on 3.11
        return await asyncio.to_thread(fn)


def _status(error: Exception) -> int | None:
    """The HTTP status of an API error; None when there was no answer (reset, timeout)."""
    status = getattr(error, "status", None)
    return status if isinstance(status, int) else None


def _utcnow() -> datetime:
    return datetime.now(UTC)


class LeaseElector:
    """Acquire, renew and fence one Lease; ``identity`` must be unique per replica (Pod name).

    ``clock`` must be monotonic (seconds); ``wall_clock`` only stamps the record for humans.
    ``sleep``, ``rand`` and ``run_blocking`` exist so tests can run it on virtual time.
    """

    def __init__(
        self,
        api: LeaseApi,
        *,
        identity: str,
        settings: LeaderElectionConfig,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = _utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        run_blocking: Callable[[Callable[[], bool], float], Awaitable[bool]] = _in_thread,
    ) -> None:
        self.api = api
        self.identity = identity
        self.settings = settings
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._rand = rand
        self._run_blocking = run_blocking
        self._lock = threading.Lock()  # try_acquire_or_renew may outlive a timed-out wait
        #: The record (with its resourceVersion) last read, and when it was first seen so.
        self._observed: tuple[LeaseRecord, str] | None = None
        self._observed_at = 0.0
        #: Monotonic time the last successful acquire/renew write was sent; None: never.
        self._renewed_at: float | None = None
        self._leading = False

    # -- fencing --------------------------------------------------------------------------

    def may_act(self) -> bool:
        """True only while this replica leads and its last renewal was sent less than
        ``renewDeadline`` ago on the monotonic clock. Cheap, synchronous, thread-safe."""
        renewed = self._renewed_at
        return (
            self._leading
            and renewed is not None
            and self._clock() < renewed + self.settings.renew_deadline
        )

    @property
    def leading(self) -> bool:
        """This replica won the Lease and has not lost it yet (see :meth:`may_act` to act)."""
        return self._leading

    # -- one attempt ----------------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """One synchronous attempt: take a free or expired Lease, or renew ours.

        Returns False when another replica holds a live Lease or won the race; raises any
        API error for the caller to retry.
        """
        with self._lock:
            current = self.api.read()
            if current is None:
                sent = self._clock()
                now = self._wall_clock()
                record = LeaseRecord(self.identity, self.settings.lease_duration, now, now, 0)
                try:
                    self.api.create(record)
                except LeaseConflict:
                    return False
                self._renewed(sent)
                return True
            record, version = current
            if self._observed != current:
                self._observed = current
                self._observed_at = self._clock()
            holder = record.holder or None
            if holder not in (None, self.identity):
                duration = record.lease_duration or self.settings.lease_duration
                if self._clock() < self._observed_at + duration:
                    return False  # held, and renewed within its duration as we saw it
            now = self._wall_clock()
            if holder == self.identity:
                mine = replace(record, renew_time=now, lease_duration=self.settings.lease_duration)
            else:
                mine = LeaseRecord(
                    self.identity, self.settings.lease_duration, now, now, record.transitions + 1
                )
            sent = self._clock()
            try:
                self.api.update(mine, version)
            except LeaseConflict:
                return False
            self._renewed(sent)
            return True

    def _renewed(self, sent: float) -> None:
        if self._renewed_at is None or sent > self._renewed_at:
            self._renewed_at = sent

    def _held_by_other(self) -> bool:
        return self._observed is not None and (self._observed[0].holder or None) not in (
            None,
            self.identity,
        )

    def _backoff(self, errors: int) -> float:
        """Doubling from the retry period, capped at the lease duration: after an outage a
        follower is back within one lease duration, and never hammers a failing apiserver."""
        period = self.settings.retry_period
        doubled: float = period * 2.0 ** min(errors - 1, 30)
        return min(doubled, max(period, self.settings.lease_duration))

    def _jitter(self, seconds: float) -> float:
        return seconds * (1.0 + 0.2 * self._rand())

    # -- loops ----------------------------------------------------------------------------

    async def acquire(self) -> None:
        """Return once this replica leads. Retries for ever: API errors back off."""
        period = self.settings.retry_period
        errors = 0
        waiting_logged = False
        while True:
            try:
                won = await self._run_blocking(
                    self.try_acquire_or_renew, self.settings.request_timeout
                )
            except Exception as e:  # every API error is retryable here
                errors += 1
                log.warning(
                    "lease acquisition failed; retrying",
                    extra={"error": type(e).__name__, "status": _status(e), "attempt": errors},
                )
                await self._sleep(self._jitter(self._backoff(errors)))
                continue
            errors = 0
            if won:
                self._leading = True
                log.info("acquired leadership", extra={"identity": self.identity})
                return
            if not waiting_logged:
                log.info("waiting for leadership", extra={"identity": self.identity})
                waiting_logged = True
            await self._sleep(self._jitter(period))

    async def keep(self) -> None:
        """Renew until leadership is lost, then return with :meth:`may_act` already False.

        Lost means: ``renewDeadline`` passed since the last renewal was sent (API errors,
        a partition, a pause), or another replica holds the Lease.
        """
        period = self.settings.retry_period
        while True:
            renewed = self._renewed_at
            assert renewed is not None, "keep() runs after acquire()"
            deadline = renewed + self.settings.renew_deadline
            await self._sleep(max(0.0, min(self._jitter(period), deadline - self._clock())))
            if not self.may_act():
                break
            timeout = max(0.05, min(self.settings.request_timeout, deadline - self._clock()))
            try:
                if await self._run_blocking(self.try_acquire_or_renew, timeout):
                    continue
            except Exception as e:  # retried until the deadline
                log.warning(
                    "lease renewal failed; retrying",
                    extra={"error": type(e).__name__, "status": _status(e)},
                )
                continue
            if self._held_by_other():
                break
        self._leading = False
        log.error(
            "lost leadership",
            extra={"identity": self.identity, "holder": self._holder_seen()},
        )

    def _holder_seen(self) -> str | None:
        return self._observed[0].holder if self._observed is not None else None
