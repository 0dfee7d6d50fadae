"""Deletion: delete what an Amphora owns, confirm it gone, then release our finalizer.

A pass deletes, then looks again at once, so a backend that deletes quickly releases the
Amphora in the same pass; otherwise the runtime looks again after a short, growing delay (no
fixed wait). While it waits, status says why and how to escape (``deletionPolicy: Orphan``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from amphora_drivers import AmphoraComputeError, UnknownDriverError
from pydantic import ValidationError

from amphora_operator.backends import Backend, BackendPool, UnknownProfileError
from amphora_operator.config import OperatorConfig
from amphora_operator.effects import failure_of
from amphora_operator.kube import Gateway
from amphora_operator.model import FINALIZER, AmphoraSpec, AmphoraStatus, DeletionPolicy
from amphora_operator.planner import Observation, plan_deletion, plan_deletion_wait
from amphora_operator.reconciler import Interest, Outcome, Reconciler, fingerprint, observe

__all__ = ["Finalizer"]

log = logging.getLogger(__name__)


class Finalizer:
    def __init__(
        self,
        *,
        config: OperatorConfig,
        backends: BackendPool,
        gateway: Gateway,
        reconciler: Reconciler,
        clock: Callable[[], datetime],
    ) -> None:
        self.config = config
        self.backends = backends
        self.gateway = gateway
        self.reconciler = reconciler
        self.clock = clock

    def _backend(self, body: dict[str, Any], spec: AmphoraSpec | None) -> Backend:
        """The spec's profile; for a spec that no longer validates, the one status recorded."""
        namespace = body["metadata"]["namespace"]
        if spec is not None:
            return self.reconciler.resolve(body, spec)
        profile = (body.get("status") or {}).get("driver")
        if not profile or profile not in self.config.profiles:
            raise UnknownProfileError(f"no compute profile {profile!r} recorded in status")
        return self.backends.get(profile, namespace)

    async def clean_up(self, body: dict[str, Any]) -> tuple[str | None, Outcome]:
        """Delete the Amphora's instances; (why it must wait or None when done, outcome)."""
        status = AmphoraStatus.model_validate(body.get("status") or {})
        uid = body["metadata"]["uid"]
        try:
            spec: AmphoraSpec | None = AmphoraSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            spec = None
        owns = bool(status.compute_id or status.replacement or status.retired)
        if spec is None and not owns:
            return None, Outcome()  # it never passed validation, so nothing was built
        if spec is not None and spec.management_policy.value == "ObserveOnly":
            return None, Outcome()
        orphan = spec is not None and spec.deletion_policy is DeletionPolicy.ORPHAN
        try:
            backend = self._backend(body, spec)
            observation = (
                await observe(backend, uid, spec, status, importing=False)
                if spec is not None
                else Observation(
                    current=await backend.by_id(status.compute_id) if status.compute_id else None,
                    retired={rid: await backend.by_id(rid) for rid in status.retired},
                )
            )
            to_delete, present = plan_deletion(spec=spec, status=status, observation=observation)
            for amphora_id in to_delete:
                await backend.delete(amphora_id)
            if present:  # look again at once: most backends confirm quickly
                observation = (
                    await observe(backend, uid, spec, status, importing=False)
                    if spec is not None
                    else observation
                )
                _, present = plan_deletion(spec=spec, status=status, observation=observation)
        except (UnknownProfileError, UnknownDriverError) as e:
            if not owns or orphan:
                return None, Outcome()
            return await self._wait(body, status, "UnknownDriver", str(e), None)
        except AmphoraComputeError as e:
            if orphan:  # best effort: Orphan never waits for the backend
                log.warning("Orphan: leftover instances not deleted", exc_info=True)
                return None, Outcome()
            failure = failure_of("delete", e)
            return await self._wait(body, status, failure.reason, failure.message, None)
        except Exception as e:  # the driver could not even start (credentials gone...)
            if orphan:
                return None, Outcome()
            return await self._wait(
                body, status, "DriverUnavailable", f"{type(e).__name__}: {e}", None
            )
        if orphan and status.compute_id:
            self.gateway.post_event(
                body, "Normal", "Orphaned",
                f"instance {status.compute_id} left running (deletionPolicy Orphan)",
            )  # fmt: skip
        if not present:
            return None, Outcome()
        interest = Interest(
            backend,
            {i: fingerprint(observation_of(observation, i)) for i in present},
            moving=True,
        )
        return await self._wait(
            body, status, "Deleting",
            f"waiting for the backend to confirm {', '.join(present)} gone", interest,
        )  # fmt: skip

    async def _wait(
        self,
        body: dict[str, Any],
        status: AmphoraStatus,
        reason: str,
        message: str,
        interest: Interest | None,
    ) -> tuple[str, Outcome]:
        new, text = plan_deletion_wait(
            status, reason=reason, message=message,
            generation=body["metadata"].get("generation"), now=self.clock(),
        )  # fmt: skip
        try:
            await self.reconciler.write(body, new)
        except Exception:  # status is best effort while deleting; the wait goes on
            log.warning("status not written during deletion", exc_info=True)
        return text, Outcome(requeue_after=self.config.reconcile.delete_retry, interest=interest)

    async def finalize(self, body: dict[str, Any]) -> Outcome:
        """One deletion pass; releases the finalizer once nothing is left."""
        waiting, outcome = await self.clean_up(body)
        if waiting is not None:
            return outcome
        meta = body["metadata"]
        finalizers = [f for f in meta.get("finalizers") or [] if f != FINALIZER]
        released = await self.gateway.remove_finalizer(
            meta["namespace"], meta["name"], meta["resourceVersion"], finalizers
        )
        if released is None:  # changed meanwhile (or gone): the next event brings it back
            return Outcome(requeue_after=self.config.reconcile.poll_interval)
        return Outcome(released=True)


def observation_of(observation: Observation, amphora_id: str) -> Any:
    for instance in (observation.current, observation.replacement):
        if instance is not None and instance.id == amphora_id:
            return instance
    return observation.retired.get(amphora_id)
