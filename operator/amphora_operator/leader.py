"""Leader election on a coordination.k8s.io Lease, so two replicas never both act.

The operator blocks in start-up until it holds the Lease and exits the process the moment it
cannot renew it (crash-only: Kubernetes restarts it as a follower). This also guards our own
poller, which kopf's peering would not pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from datetime import UTC, datetime, timedelta

from kubernetes import client

__all__ = ["LeaseElector"]

log = logging.getLogger(__name__)


class LeaseElector:
    """Acquire and renew one Lease; ``identity`` must be unique per replica (the Pod name)."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        namespace: str,
        name: str = "amphora-operator",
        identity: str,
        lease_seconds: int = 15,
        renew_seconds: float = 5.0,
        renew_deadline: float = 10.0,
    ) -> None:
        self.api = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        #: Stop leading this long after the last renewal was SENT, before the Lease can expire.
        self.renew_deadline = min(renew_deadline, lease_seconds - renew_seconds)
        self._timeout = renew_seconds  # per API call: a partition must not hang a renewal

    def try_acquire(self) -> bool:
        """One attempt (synchronous): take a free or expired Lease, or renew ours."""
        now = datetime.now(UTC)
        try:
            lease = self.api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self._timeout
            )
        except client.ApiException as e:
            if e.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=self._spec(now, acquired=now, transitions=0),
            )
            try:
                self.api.create_namespaced_lease(
                    self.namespace, body, _request_timeout=self._timeout
                )
            except client.ApiException as conflict:
                if conflict.status == 409:
                    return False
                raise
            return True
        spec = lease.spec
        assert spec is not None, "a Lease always has a spec"
        holder = spec.holder_identity
        renewed = spec.renew_time
        expired = (
            renewed is None
            or renewed + timedelta(seconds=spec.lease_duration_seconds or self.lease_seconds) < now
        )
        if holder not in (None, "", self.identity) and not expired:
            return False
        transitions = (spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
        acquired = (spec.acquire_time or now) if holder == self.identity else now
        lease.spec = self._spec(now, acquired=acquired, transitions=transitions)
        try:
            # resourceVersion in the body makes this a compare-and-swap.
            self.api.replace_namespaced_lease(
                self.name, self.namespace, lease, _request_timeout=self._timeout
            )
        except client.ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    def _spec(self, now: datetime, *, acquired: datetime, transitions: int) -> client.V1LeaseSpec:
        return client.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.lease_seconds,
            acquire_time=acquired,
            renew_time=now,
            lease_transitions=transitions,
        )

    async def acquire(self) -> None:
        """Wait until this replica leads."""
        logged = False
        while not await asyncio.to_thread(self.try_acquire):
            if not logged:
                log.info("waiting for leadership", extra={"lease": self.name})
                logged = True
            await asyncio.sleep(self.renew_seconds)
        log.info("acquired leadership", extra={"lease": self.name, "identity": self.identity})

    async def keep(self) -> None:
        """Renew for ever; exit the process when leadership is lost.

        The deadline runs from when the last successful renewal was sent (its renewTime) and
        is shorter than the Lease, so this replica stops before another may take over, even
        when the apiserver stops answering.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.renew_deadline
        while True:
            await asyncio.sleep(self.renew_seconds)
            sent = loop.time()
            try:
                renewed = await asyncio.wait_for(
                    asyncio.to_thread(self.try_acquire), max(0.1, deadline - sent)
                )
                if renewed:
                    deadline = sent + self.renew_deadline
                    continue
            except Exception:
                log.warning("lease renewal failed", exc_info=True)
            still_ours = True  # cannot tell: the deadline decides
            if loop.time() < deadline:
                with contextlib.suppress(Exception):
                    still_ours = await asyncio.wait_for(
                        asyncio.to_thread(self._still_ours), max(0.1, deadline - loop.time())
                    )
            if loop.time() >= deadline or not still_ours:
                log.error("lost leadership; exiting so that only one replica acts")
                logging.shutdown()
                os._exit(70)

    def _still_ours(self) -> bool:
        try:
            lease = self.api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self._timeout
            )
        except client.ApiException:
            return True  # cannot tell; the deadline decides
        return lease.spec is not None and lease.spec.holder_identity == self.identity
