"""Leader election on a coordination.k8s.io Lease, so two replicas never both act.

The operator blocks in start-up until it holds the Lease and exits the process the moment it
cannot renew it (crash-only: Kubernetes restarts it as a follower). This also guards our own
poller, which kopf's peering would not pause.
"""

from __future__ import annotations

import asyncio
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
    ) -> None:
        self.api = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds

    def try_acquire(self) -> bool:
        """One attempt (synchronous): take a free or expired Lease, or renew ours."""
        now = datetime.now(UTC)
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except client.ApiException as e:
            if e.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=self._spec(now, acquired=now, transitions=0),
            )
            try:
                self.api.create_namespaced_lease(self.namespace, body)
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
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
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
        """Renew for ever; exit the process when leadership is lost."""
        deadline = asyncio.get_running_loop().time() + self.lease_seconds
        while True:
            await asyncio.sleep(self.renew_seconds)
            try:
                if await asyncio.to_thread(self.try_acquire):
                    deadline = asyncio.get_running_loop().time() + self.lease_seconds
                    continue
            except Exception:
                log.warning("lease renewal failed", exc_info=True)
            if asyncio.get_running_loop().time() >= deadline or not await asyncio.to_thread(
                self._still_ours
            ):
                log.error("lost leadership; exiting so that only one replica acts")
                logging.shutdown()
                os._exit(70)

    def _still_ours(self) -> bool:
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except client.ApiException:
            return True  # cannot tell; the deadline decides
        return lease.spec is not None and lease.spec.holder_identity == self.identity
