"""Deletion: delete what an Amphora owns, confirm it gone, then release our finalizer.

A pass deletes, then looks again at once, so a backend that deletes quickly releases the
Amphora in the same pass; otherwise the runtime looks again after a short, growing delay (no
fixed wait). While it waits, status says why and how to escape (``deletionPolicy: Orphan``).
A deletion the backend refuses with 403 Forbidden (RBAC removed, namespace terminating) is
released after ``forbidden_release_after`` with a Warning Event, so it never blocks a
namespace for ever.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from amphora_drivers import AmphoraComputeError, AmphoraInstance, Reason, UnknownDriverError
from pydantic import ValidationError

from amphora_operator.backends import Backend, BackendPool, UnknownProfileError
from amphora_operator.config import OperatorConfig
from amphora_operator.effects import failure_of
from amphora_operator.garbage import uid_of
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
        spare: Callable[[Backend, str, str], Awaitable[None]],
    ) -> None:
        """``spare(backend, instance id, namespace)`` records an instance left by Orphan whose
        release failed, so that garbage collection never takes it and finishes its release
        (:mod:`.collector`); when it raises, the finalizer stays and the pass is retried."""
        self.config = config
        self.backends = backends
        self.gateway = gateway
        self.reconciler = reconciler
        self.clock = clock
        self.spare = spare
        #: When a deletion was first refused with 403, per uid (cleared once it passes).
        self._refused_since: dict[str, datetime] = {}

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
        started = self.clock()
        try:
            spec: AmphoraSpec | None = AmphoraSpec.model_validate(body.get("spec") or {})
        except ValidationError:
            spec = None
        owns = bool(status.compute_id or status.replacement or status.retired)
        if spec is None and not owns:
            return None, Outcome()  # it never passed validation, so nothing was built
        if spec is not None and spec.management_policy.value == "ObserveOnly":
            if status.compute_id:  # left as it is, but never collected if we built it
                with contextlib.suppress(Exception):
                    kept = self._backend(body, spec)
                    await self._release(kept, body, await kept.by_id(status.compute_id))
            return None, Outcome()
        orphan = spec is not None and spec.deletion_policy is DeletionPolicy.ORPHAN
        backend: Backend | None = None
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
                if backend is not None and status.compute_id:  # released once it answers
                    await self.spare(backend, status.compute_id, body["metadata"]["namespace"])
                return None, Outcome()
            failure = failure_of("delete", e)
            if failure.reason == Reason.FORBIDDEN:
                return await self._forbidden(body, status, failure.message)
            return await self._wait(body, status, failure.reason, failure.message, None)
        except Exception as e:  # the driver could not even start (credentials gone...)
            if orphan:
                return None, Outcome()
            return await self._wait(
                body, status, "DriverUnavailable", f"{type(e).__name__}: {e}", None
            )
        if orphan and backend is not None:
            await self._release(backend, body, observation.current)
        if orphan and status.compute_id:
            self.gateway.post_event(
                body, "Normal", "Orphaned",
                f"instance {status.compute_id} left running (deletionPolicy Orphan)",
            )  # fmt: skip
        self._refused_since.pop(uid, None)
        if not present:
            return None, Outcome()
        interest = Interest(
            backend,
            {i: fingerprint(observation_of(observation, i)) for i in present},
            moving=True,
            observed_at=started,
        )
        return await self._wait(
            body, status, "Deleting",
            f"waiting for the backend to confirm {', '.join(present)} gone", interest,
        )  # fmt: skip

    async def _forbidden(
        self, body: dict[str, Any], status: AmphoraStatus, message: str
    ) -> tuple[str | None, Outcome]:
        """A 403 no retry of ours fixes (the grant is gone, or the namespace is terminating):
        shown as reason Forbidden, then released after ``forbidden_release_after`` so that a
        namespace never hangs on it (its container instances follow their ownerReferences)."""
        uid = body["metadata"]["uid"]
        since = self._refused_since.setdefault(uid, self.clock())
        limit = self.config.reconcile.forbidden_release_after
        if (self.clock() - since).total_seconds() >= limit:
            self._refused_since.pop(uid, None)
            left = [i for i in (status.compute_id, *status.retired) if i]
            log.warning("deletion forbidden; finalizer released", extra={"uid": uid})
            self.gateway.post_event(
                body, "Warning", "ReleasedForbidden",
                f"the backend refused deletion (403 Forbidden) for {limit:g} s; released "
                f"without confirming {', '.join(left) or 'nothing'} gone",
            )  # fmt: skip
            return None, Outcome()
        text = f"{message}; the finalizer is released {limit:g} s after the first refusal"
        return await self._wait(body, status, Reason.FORBIDDEN, text, None)

    async def _release(
        self, backend: Backend, body: dict[str, Any], instance: AmphoraInstance | None
    ) -> None:
        """Drop our owner mark from an instance left running, so that garbage collection
        never takes it; on failure it is recorded and the collector retries (an Orphan never
        waits for the backend)."""
        meta = body["metadata"]
        if instance is None or uid_of(instance.owner) != meta["uid"].replace("-", ""):
            return  # gone, imported, or released already
        try:
            await backend.release(instance.id)
        except Exception:
            log.warning("release of an orphaned instance deferred", exc_info=True)
            await self.spare(backend, instance.id, meta["namespace"])

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
