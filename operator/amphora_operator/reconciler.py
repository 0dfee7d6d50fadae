"""One reconcile pass of one live Amphora: observe, plan, persist intent, act, write status.

The order keeps the write budget and crash safety: a first status (Pending, Reconciling) is
written at first sight before any driver call; the intent (revision, replacement, retired ids)
is written before acting when it changed; a build that answers at once is observed again in
the same pass, so an instantly ACTIVE build costs one more write (Ready), not two. Status is
written only when what a user reads changed (:func:`~.planner.needs_write`). Events are posted
for failures and real transitions only, never on the way to Ready.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from amphora_drivers import AmphoraComputeError, AmphoraInstance, AmphoraState, UnknownDriverError
from amphora_drivers.base import describe_validation_error
from pydantic import ValidationError

from amphora_operator.backends import Backend, BackendPool, UnknownProfileError
from amphora_operator.config import OperatorConfig
from amphora_operator.effects import Effects, failure_of, owner_resource
from amphora_operator.kube import Gateway
from amphora_operator.metrics import Metrics
from amphora_operator.model import (
    FINALIZER,
    AmphoraSpec,
    AmphoraStatus,
    DeletionPolicy,
    ManagementPolicy,
    Phase,
)
from amphora_operator.planner import (
    Build,
    Failure,
    Observation,
    first_sight,
    gone,
    invalid,
    needs_write,
    owner_key,
    parse_time,
    plan,
    plan_backend,
    plan_failure,
)
from amphora_operator.store import Store, slim
from amphora_operator.tenancy import (
    ImportRules,
    Refusal,
    claimed,
    import_refusal,
    import_rules,
    tags_refusal,
)

__all__ = ["Interest", "Outcome", "Reconciler", "fingerprint", "observe"]

log = logging.getLogger(__name__)

Fingerprint = tuple[str, str | None, tuple[str, ...]] | None
_MOVING = (Phase.PENDING, Phase.BUILDING, Phase.UPDATING, Phase.DELETING)


def fingerprint(instance: AmphoraInstance | None) -> Fingerprint:
    """What of an instance can change a plan (the raw state words alone cannot)."""
    if instance is None or instance.state is AmphoraState.DELETED:
        return None
    return (instance.state.value, instance.fault, tuple(instance.addresses))


@dataclass(frozen=True)
class Interest:
    """What the poller watches for one Amphora: its instance ids and how they looked."""

    backend: Backend
    seen: dict[str, Fingerprint]
    moving: bool
    #: The backend did not answer: the poller probes it once per round for all such
    #: Amphorae and wakes them when it answers (no per-Amphora retries against an outage).
    waiting: bool = False
    #: When ``seen`` was looked at (before the pass's first lookup): a poller asking what
    #: changed must ask from no later than this. None: unknown, ask by id or list.
    observed_at: datetime | None = None

    def changed(self, found: dict[str, AmphoraInstance | None], *, partial: bool = False) -> bool:
        """Whether ``found`` differs from what was seen; ``partial``: ``found`` holds only what
        changed lately, so an id missing from it is unchanged rather than gone."""
        return any(
            fingerprint(found.get(i)) != fp
            for i, fp in self.seen.items()
            if not partial or i in found
        )


@dataclass
class Outcome:
    """What the runtime does after a pass: when to look again and what to poll."""

    requeue_after: float | None = None
    interest: Interest | None = None
    #: Deleted and released: forget it.
    released: bool = False
    events: list[tuple[str, str, str]] = field(default_factory=list)


async def observe(
    backend: Backend, uid: str, spec: AmphoraSpec, status: AmphoraStatus, *, importing: bool = True
) -> Observation:
    """Targeted lookups: by id where the id is known, by owner key before that.

    ``importing``: look at ``spec.importId`` while nothing is adopted yet (reconcile passes,
    which check the import rules first); deletion passes False, so an import that was never
    adopted (e.g. refused: another tenant's instance) is never deleted.
    """

    async def pick(amphora_id: str | None, owner: str | None) -> AmphoraInstance | None:
        if amphora_id is not None:
            return await backend.by_id(amphora_id)
        return await backend.by_owner(owner) if owner is not None else None

    rep = status.replacement
    current_id = status.compute_id or (spec.import_id if importing else None)
    return Observation(
        current=await pick(current_id, None if current_id else owner_key(uid, status.revision)),
        replacement=(
            await pick(rep.compute_id, owner_key(uid, rep.revision) if not rep.compute_id else None)
            if rep is not None
            else None
        ),
        retired={rid: await backend.by_id(rid) for rid in status.retired},
    )


def _seen(status: AmphoraStatus, observation: Observation) -> dict[str, Fingerprint]:
    """What the poller compares against, by id: the plan moves instances between roles (a
    promoted replacement, a retired current), so each id is matched wherever it was seen."""
    found = (observation.current, observation.replacement, *observation.retired.values())
    known = {i.id: i for i in found if i is not None}
    ids = [status.compute_id, status.replacement.compute_id if status.replacement else None]
    return {i: fingerprint(known.get(i)) for i in [*ids, *status.retired] if i}


class Reconciler:
    """Reconciles live Amphorae from the slim cache; deletion is :mod:`.finalizer`'s job."""

    def __init__(
        self,
        *,
        config: OperatorConfig,
        backends: BackendPool,
        gateway: Gateway,
        store: Store,
        metrics: Metrics,
        clock: Callable[[], datetime],
    ) -> None:
        self.config = config
        self.backends = backends
        self.gateway = gateway
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.effects = Effects(gateway)

    # -- shared helpers ---------------------------------------------------------------------

    async def write(self, body: dict[str, Any], status: AmphoraStatus) -> dict[str, Any]:
        """Patch status when what a user reads changed; return the latest body."""
        new = status.model_dump(mode="json", by_alias=True)
        old = AmphoraStatus.model_validate(body.get("status") or {}).model_dump(
            mode="json", by_alias=True
        )
        if not needs_write(old, new):
            return body
        meta = body["metadata"]
        updated = await self.gateway.patch_status(meta["namespace"], meta["name"], new)
        self.metrics.status_writes.inc()
        log.info(
            "status written",
            extra={"amphora": f"{meta['namespace']}/{meta['name']}", "phase": new.get("phase")},
        )
        self.store.update(updated)
        return self.store.get(meta["uid"]) or slim(updated)

    def resolve(self, body: dict[str, Any], spec: AmphoraSpec) -> Backend:
        profile = self.backends.profile_for(spec.type, spec.driver)
        return self.backends.get(profile, body["metadata"]["namespace"])

    def _retry_in(self, status: AmphoraStatus) -> float | None:
        if not status.next_retry_time:
            return None
        try:
            due = parse_time(status.next_retry_time)
        except ValueError:
            return 0.0
        return max(0.0, (due - self.clock()).total_seconds())

    # -- the pass ---------------------------------------------------------------------------

    async def reconcile(self, body: dict[str, Any]) -> Outcome:
        meta = body["metadata"]
        uid, generation = meta["uid"], int(meta.get("generation") or 0)
        settings = self.config.reconcile
        started = self.clock()
        status = AmphoraStatus.model_validate(body.get("status") or {})
        try:
            spec = AmphoraSpec.model_validate(body.get("spec") or {})
        except ValidationError as e:
            _path, message = describe_validation_error(e)
            text = f"spec.{message}"
            await self.write(body, invalid(status, reason="InvalidSpec", message=text,
                                           generation=generation, now=self.clock()))  # fmt: skip
            return Outcome()
        # Before anything may come to belong to it (a build, an adopted import, a build the
        # backend reports later): without our finalizer a DELETE would leak it. Once it owns
        # an instance, _settle_finalizer decides (instances that follow their Amphora by
        # ownerReference need none).
        if status.compute_id is None and not await self._ensure_finalizer(body):
            return Outcome(requeue_after=0.0)  # changed or being deleted: look again
        body = self.store.get(uid) or body
        try:
            backend = self.resolve(body, spec)
        except (UnknownProfileError, UnknownDriverError) as e:
            await self.write(body, invalid(status, reason="UnknownDriver", message=str(e),
                                           generation=generation, now=self.clock()))  # fmt: skip
            return Outcome()
        except Exception as e:  # a driver constructor failed: credentials, config...
            failure = Failure(
                "observe", "DriverUnavailable",
                f"compute profile could not start: {type(e).__name__}: {e}", True,
            )  # fmt: skip
            new = plan_backend(status, failure, generation=generation, now=self.clock())
            await self.write(body, new)
            return Outcome(requeue_after=settings.retry_max)

        rules = import_rules(backend.profile, self.config.profiles[backend.profile])
        refused = tags_refusal(spec.tags, rules)
        if refused is not None:
            await self.write(body, _refuse(status, refused, generation, self.clock()))
            return Outcome()

        first = first_sight(status, generation=generation, profile=backend.profile,
                            now=self.clock())  # fmt: skip
        if first is not None:
            body = await self.write(body, first)
            status = first

        observation: Observation | None = None
        for attempt in range(2):  # a second look picks up builds that finished at once
            try:
                observation = await observe(backend, uid, spec, status)
            except AmphoraComputeError as e:
                failure = failure_of("observe", e)
                if failure.reason == "CircuitOpen":  # when it is retried, without a countdown
                    every = backend.breaker.settings.reset_timeout
                    text = f"{failure.message}; one trial call every {every:g} s"
                    failure = dataclasses.replace(failure, message=text)
                new = plan_backend(status, failure, generation=generation, now=self.clock())
                await self.write(body, new)
                # No timer of its own: the poller's one probe per round wakes it.
                return Outcome(interest=Interest(backend, {}, moving=True, waiting=True))
            refused = self._import_refusal(meta, spec, status, observation, rules)
            if refused is not None:
                await self.write(body, _refuse(status, refused, generation, self.clock()))
                return Outcome()
            if attempt == 1 and _not_visible_yet(status, observation):
                # A backend that lists new instances late: not lost; the poller looks again.
                body = await self.write(body, status)
                break
            result = plan(
                spec=spec, status=status, observation=observation,
                generation=generation, profile=backend.profile, now=self.clock(),
                retry_base=settings.retry_base, retry_max=settings.retry_max,
                stall_after=settings.stall_after,
            )  # fmt: skip
            new = plan_backend(result.status, None, generation=generation, now=self.clock())
            builds = any(isinstance(a, Build) for a in result.actions)
            body = self.store.get(uid) or body
            if result.actions and _intent_changed(status, new):
                body = await self.write(body, new)
            failures = await self.effects.act(backend, body["metadata"], spec, new, result.actions)
            for failure in failures:
                new = plan_failure(
                    new, failure, generation=generation, now=self.clock(),
                    retry_base=settings.retry_base, retry_max=settings.retry_max,
                    stall_after=settings.stall_after,
                )  # fmt: skip
            events = list(result.events)
            events += [("Warning", f"{f.action.capitalize()}Failed", f.message) for f in failures]
            built = builds and not any(f.action == "build" for f in failures)
            if built and attempt == 0 and backend.driver.instant_builds:
                status = new  # written after the second look: one write, not two
                for type_, reason, message in events:
                    self.gateway.post_event(body, type_, reason, message)
                continue
            body = await self.write(body, new)
            for type_, reason, message in events:
                self.gateway.post_event(body, type_, reason, message)
            status = new
            break
        assert observation is not None
        await self._settle_finalizer(body, spec, backend, status)
        moving = status.phase in _MOVING or bool(status.retired) or status.replacement is not None
        requeue = self._retry_in(status)
        if moving and (status.compute_id is None or _owner_only(status)):
            # Nothing to poll by id yet (a build in flight): look again soon.
            requeue = settings.poll_interval if requeue is None else min(requeue, 30.0)
        return Outcome(
            requeue_after=requeue,
            interest=Interest(
                backend, _seen(status, observation), moving=moving, observed_at=started
            ),
        )

    async def _settle_finalizer(
        self, body: dict[str, Any], spec: AmphoraSpec, backend: Backend, status: AmphoraStatus
    ) -> None:
        """Hold our finalizer only where deletion needs the operator. A backend whose platform
        deletes the instances with their Amphora (Container instances carry ownerReferences
        to it) needs none for deletionPolicy Delete: a namespace deletion then completes
        without the operator. Orphan (and anything else) keeps it, to release the instance."""
        meta = (self.store.get(body["metadata"]["uid"]) or body)["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        cascades = (
            spec.management_policy is ManagementPolicy.MANAGED
            and spec.deletion_policy is DeletionPolicy.DELETE
            and status.compute_id is not None
            and backend.driver.follows_owner(owner_resource(meta))
        )
        if meta.get("deletionTimestamp"):
            return
        if not cascades:
            if FINALIZER not in finalizers and status.compute_id is not None:
                await self._ensure_finalizer({"metadata": meta})
            return
        if FINALIZER not in finalizers:
            return
        updated = await self.gateway.remove_finalizer(
            meta["namespace"], meta["name"], meta["resourceVersion"],
            [f for f in finalizers if f != FINALIZER],
        )  # fmt: skip
        if updated is not None:
            self.store.update(updated)
            log.info(
                "finalizer not needed: instances follow their Amphora",
                extra={"amphora": f"{meta['namespace']}/{meta['name']}"},
            )

    def _import_refusal(
        self,
        meta: dict[str, Any],
        spec: AmphoraSpec,
        status: AmphoraStatus,
        observation: Observation,
        rules: ImportRules,
    ) -> Refusal | None:
        """Whether ``spec.importId`` names an instance this Amphora may not adopt (checked
        until it is adopted, i.e. while status has no computeId)."""
        if spec.import_id is None or status.compute_id is not None:
            return None
        found = None if gone(observation.current) else observation.current
        others = (b for u in self.store.uids() if (b := self.store.get(u)) is not None)
        return import_refusal(
            found,
            import_id=spec.import_id,
            namespace=meta["namespace"],
            rules=rules,
            claimed=found is not None and claimed(found, meta["uid"], others),
        )

    async def _ensure_finalizer(self, body: dict[str, Any]) -> bool:
        """Our finalizer is on the object before anything can belong to it. Admission adds it
        (deploy/base/finalizer-policy.yaml); where the apiserver lacks MutatingAdmissionPolicy
        (or the policy's failurePolicy Ignore let a create through) this is the fallback, one
        PATCH per Amphora."""
        meta = body["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER in finalizers:
            return True
        if meta.get("deletionTimestamp"):
            return False
        updated = await self.gateway.add_finalizer(
            meta["namespace"], meta["name"], meta["resourceVersion"], [*finalizers, FINALIZER]
        )
        if updated is None:
            return False
        self.store.update(updated)
        return True


def _refuse(
    status: AmphoraStatus, refusal: Refusal, generation: int, now: datetime
) -> AmphoraStatus:
    """A tenancy rule refused the spec: terminal (Stalled) until the spec changes."""
    return invalid(
        status, reason=refusal.reason, message=refusal.message, generation=generation, now=now
    )


def _not_visible_yet(status: AmphoraStatus, observation: Observation) -> bool:
    """Right after a build, the new instance is not listed yet (eventually consistent APIs):
    that is not a lost instance."""
    rep = status.replacement
    return (status.compute_id is not None and observation.current is None) or (
        rep is not None and rep.compute_id is not None and observation.replacement is None
    )


def _owner_only(status: AmphoraStatus) -> bool:
    rep = status.replacement
    return rep is not None and rep.compute_id is None


def _intent_changed(before: AmphoraStatus, after: AmphoraStatus) -> bool:
    """Whether fields needed to recover after a crash changed (then they are written first)."""
    return (before.revision, before.replacement, before.retired, before.compute_id) != (
        after.revision,
        after.replacement,
        after.retired,
        after.compute_id,
    )
