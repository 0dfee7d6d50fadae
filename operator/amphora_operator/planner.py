"""Decide what to do for one Amphora: a pure function of spec, status and what the backend shows.

No I/O here. :func:`plan` returns the next status and the driver actions that lead towards the
spec; :mod:`amphora_operator.reconciler` persists the status *before* acting (so a crash never
forgets an intent) and then acts through :mod:`amphora_operator.effects`, whose failures come
back here (:func:`plan_failure`). The policies users see are all here:

- Build: the instance is named and owned from the resource UID and a revision; the revision is
  written to status before the build, so a restarted operator adopts (by owner, never by name).
- Failed instances (ERROR) keep their fault in status and are rebuilt after an exponential
  backoff (``retry_base`` doubling up to ``retry_max``); a spec change retries at once.
- Spec changes the backend cannot apply in place roll out by replacement: the new instance
  becomes ACTIVE first, then the old one is retired (deleted and confirmed gone).
- Drift: a Managed instance deleted behind the operator's back is rebuilt; an ObserveOnly one is
  reported as lost. ``suspended`` is applied in place through suspend/resume.
- Status follows kstatus (what Flux, Argo CD and ``kubectl wait`` read): ``Reconciling`` is True
  while work is in progress (InProgress), ``Stalled`` is True when nothing will progress without
  a change (Failed: spec errors, unknown driver, terminal driver errors, and transient failures
  that keep failing ``stall_after`` times), neither when the Amphora is as declared (Current).
  ``Ready`` is the abnormal-false summary: True only for a running instance. A driver error's
  ``retryable`` flag alone decides transient (retried with backoff, retry time in
  ``status.nextRetryTime``) against terminal (Stalled; re-checked every ``retry_max`` and at
  once when the spec changes). Messages never carry countdowns, so an unchanged situation never
  causes a status write.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from amphora_drivers.types import AmphoraInstance, AmphoraState

from amphora_operator.conditions import now_rfc3339, set_condition
from amphora_operator.model import (
    AmphoraSpec,
    AmphoraStatus,
    ManagementPolicy,
    Phase,
    Replacement,
)

__all__ = [
    "BACKEND_REASONS",
    "Action",
    "Build",
    "Delete",
    "Failure",
    "Observation",
    "Plan",
    "Resume",
    "Suspend",
    "backoff",
    "first_sight",
    "gone",
    "instance_name",
    "invalid",
    "mark_failed",
    "needs_write",
    "owner_key",
    "parse_time",
    "plan",
    "plan_backend",
    "plan_deletion",
    "plan_deletion_wait",
    "plan_failure",
    "spec_hash",
]

#: Failure reasons that describe the backend rather than one Amphora: they also set the
#: BackendAvailable condition. (Whether to retry is decided by ``retryable`` alone.)
BACKEND_REASONS = frozenset({"CircuitOpen", "BackendUnavailable", "Timeout", "RateLimited"})
_LAST_FAILURE = re.compile(r"\(last: (\w+)\)")
#: Exponents above this give the cap anyway; clamping avoids float overflow at any retry count.
_MAX_EXPONENT = 60

#: Spec fields that cannot change on a live instance: a change means a replacement.
_REBUILD_FIELDS = (
    "type",
    "flavor",
    "image",
    "networks",
    "security_groups",
    "keys",
    "config_drive_files",
    "user_data",
    "availability_zone",
    "server_group",
    "tags",
)


def spec_hash(spec: AmphoraSpec) -> str:
    """Hash of the fields an instance is built from (Secret references by name, not content)."""
    data = spec.model_dump(mode="json", include=set(_REBUILD_FIELDS))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def owner_key(uid: str, revision: int) -> str:
    """The owner stored on the instance of ``revision``: unique per resource and rebuild."""
    return f"{uid.replace('-', '')}-{revision}"


def instance_name(uid: str, revision: int) -> str:
    return f"amphora-{uid.replace('-', '')}-r{revision}"


@dataclass(frozen=True)
class Build:
    """Build the instance of ``revision`` (for the current slot or the replacement slot)."""

    revision: int
    replacement: bool = False


@dataclass(frozen=True)
class Delete:
    amphora_id: str


@dataclass(frozen=True)
class Suspend:
    amphora_id: str


@dataclass(frozen=True)
class Resume:
    amphora_id: str


Action = Build | Delete | Suspend | Resume


@dataclass(frozen=True)
class Observation:
    """What the backend shows for one resource (None: not there)."""

    current: AmphoraInstance | None = None
    replacement: AmphoraInstance | None = None
    retired: dict[str, AmphoraInstance | None] = field(default_factory=dict)


@dataclass
class Plan:
    status: AmphoraStatus
    actions: list[Action] = field(default_factory=list)
    #: (type, reason, message) Kubernetes Events to post.
    events: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Failure:
    """An action or lookup that failed, as the effects layer reports it (no exception types)."""

    #: build, delete, suspend, resume or observe.
    action: str
    reason: str
    message: str
    retryable: bool


def backoff(retries: int, base: float, cap: float) -> float:
    """``base * 2**retries`` capped at ``cap``, for any retry count (no overflow)."""
    return float(min(cap, base * 2.0 ** min(max(0, retries), _MAX_EXPONENT)))


_backoff = backoff


def _copy(status: AmphoraStatus) -> AmphoraStatus:
    """A copy safe to change: its lists are new; their items (frozen models, str) are shared.
    Much cheaper than a deep copy, which dominated a reconcile's CPU."""
    return status.model_copy(
        update={
            "addresses": list(status.addresses),
            "retired": list(status.retired),
            "conditions": list(status.conditions),
        }
    )


def gone(instance: AmphoraInstance | None) -> bool:
    """Nothing to manage or import: no instance, or one deleted or being deleted."""
    return instance is None or instance.state in (AmphoraState.DELETED, AmphoraState.DELETING)


def plan(
    *,
    spec: AmphoraSpec,
    status: AmphoraStatus,
    observation: Observation,
    generation: int,
    profile: str,
    now: datetime,
    retry_base: float,
    retry_max: float,
    stall_after: int = 3,
) -> Plan:
    """The next status and actions for a live (not deleting) Amphora.

    Never raises for anything the backend reports (ERROR, unknown states, odd faults)."""
    s = _copy(status)
    out = Plan(status=s)
    s.driver = profile
    s.observed_generation = generation
    managed = spec.management_policy is ManagementPolicy.MANAGED
    wanted_hash = spec_hash(spec)
    stamp = now_rfc3339(now)

    _plan_retired(s, observation, out)

    current = observation.current
    if s.compute_id is None:
        if spec.import_id is not None:
            if gone(current):
                return _failed(
                    out,
                    spec,
                    generation,
                    stamp,
                    "ImportNotFound",
                    f"spec.importId: no instance {spec.import_id} on the backend",
                )
            assert current is not None
            s.compute_id, s.spec_hash = current.id, wanted_hash
            out.events.append(("Normal", "Imported", f"adopted instance {current.id}"))
        elif current is not None and not gone(current):
            # Built before a crash. Its spec hash is known if it was written; if not, it was
            # built from generation 1, which is this spec only if the spec never changed.
            s.compute_id = current.id
            if s.spec_hash is None:
                s.spec_hash = wanted_hash if generation <= 1 else "unknown"
            out.events.append(("Normal", "Adopted", f"found instance {current.id} by owner"))
        elif not managed:
            return _failed(out, spec, generation, stamp, "ImportNotFound", "nothing to observe")
        else:
            if s.spec_hash != wanted_hash:
                s.next_retry_time = None  # the user changed the spec: try again now
            if s.next_retry_time is not None and now < parse_time(s.next_retry_time):
                return _finish(out, spec, generation, stamp, stall_after)
            s.next_retry_time = None
            s.spec_hash = wanted_hash
            s.phase = Phase.BUILDING
            out.actions.append(Build(s.revision))
            return _finish(out, spec, generation, stamp, stall_after)

    assert s.compute_id is not None
    if current is None or gone(current):
        if not managed:
            s.addresses, s.raw_state = [], None
            return _failed(
                out,
                spec,
                generation,
                stamp,
                "InstanceLost",
                f"instance {s.compute_id} no longer exists on the backend",
            )
        out.events.append(
            ("Warning", "InstanceLost", f"instance {s.compute_id} vanished; rebuilding")
        )
        if current is not None:
            s.retired.append(current.id)
        _rebuild(s, wanted_hash, out)
        return _finish(out, spec, generation, stamp, stall_after)

    s.raw_state = current.raw_state
    s.addresses = list(current.addresses)
    if current.state is AmphoraState.ERROR:
        s.fault = current.fault or "the backend reports an error without a message"
        if not managed:
            return _failed(out, spec, generation, stamp, "InstanceError", s.fault)
        if s.spec_hash != wanted_hash:
            s.next_retry_time = None
        elif s.next_retry_time is None:
            delay = _backoff(s.retries, retry_base, retry_max)
            s.next_retry_time = now_rfc3339(now + timedelta(seconds=delay))
            out.events.append(("Warning", "BuildFailed", f"{s.fault}; rebuilding in {delay:.0f} s"))
        if s.next_retry_time is not None and now < parse_time(s.next_retry_time):
            s.phase, s.failure_reason = Phase.FAILED, "InstanceError"
            return _finish(out, spec, generation, stamp, stall_after)
        _retire(s, current.id, out)
        s.retries += 1
        s.next_retry_time = None
        _rebuild(s, wanted_hash, out)
        return _finish(out, spec, generation, stamp, stall_after)

    if current.state is AmphoraState.BUILDING:
        s.phase = Phase.BUILDING
        return _finish(out, spec, generation, stamp, stall_after)

    if current.state in (AmphoraState.ACTIVE, AmphoraState.SUSPENDED):
        replacing = managed and s.spec_hash != wanted_hash
        if not replacing or s.replacement is None:
            # The retry fields belong to a failing replacement while one is under way: reset
            # every pass, its backoff would start again each time and it would never be rebuilt.
            s.retries, s.next_retry_time, s.fault, s.failure_reason = 0, None, None, None
        if replacing:
            swapped = _plan_replacement(
                s, observation, wanted_hash, now, retry_base, retry_max, out
            )
            if swapped is not None:
                s.retries, s.next_retry_time, s.fault, s.failure_reason = 0, None, None, None
            current = swapped or current
        elif managed and s.replacement is not None:
            _drop_replacement(s, observation, out)
        s.addresses = list(current.addresses)
        s.raw_state = current.raw_state
        if managed and spec.suspended and current.state is AmphoraState.ACTIVE:
            out.actions.append(Suspend(current.id))
            s.phase = Phase.UPDATING
        elif managed and not spec.suspended and current.state is AmphoraState.SUSPENDED:
            out.actions.append(Resume(current.id))
            s.phase = Phase.UPDATING
        elif s.replacement is not None:
            s.phase = Phase.UPDATING
        else:
            s.phase = Phase.SUSPENDED if current.state is AmphoraState.SUSPENDED else Phase.READY
        return _finish(out, spec, generation, stamp, stall_after)

    s.phase = Phase.UPDATING  # UNKNOWN: report, do nothing
    return _finish(out, spec, generation, stamp, stall_after)


def _plan_retired(s: AmphoraStatus, observation: Observation, out: Plan) -> None:
    """Keep deleting retired instances until the backend confirms they are gone."""
    still = []
    for rid in s.retired:
        instance = observation.retired.get(rid)
        if instance is None or instance.state is AmphoraState.DELETED:
            continue
        still.append(rid)
        if instance.state is not AmphoraState.DELETING:
            out.actions.append(Delete(rid))
    s.retired = still


def _retire(s: AmphoraStatus, instance_id: str, out: Plan) -> None:
    """Delete an instance that is no longer wanted, and keep it in ``retired`` until the
    backend confirms it gone (see :func:`_plan_retired`)."""
    s.retired.append(instance_id)
    out.actions.append(Delete(instance_id))


def _rebuild(s: AmphoraStatus, wanted_hash: str, out: Plan) -> None:
    s.revision = max(s.revision, s.replacement.revision if s.replacement else 0) + 1
    if s.replacement is not None and s.replacement.compute_id is not None:
        _retire(s, s.replacement.compute_id, out)
    s.replacement = None
    s.compute_id = None
    s.spec_hash = wanted_hash
    s.phase = Phase.BUILDING
    out.actions.append(Build(s.revision))


def _drop_replacement(s: AmphoraStatus, observation: Observation, out: Plan) -> None:
    """The spec came back to the current instance's: the replacement is no longer wanted.
    Its instance, recorded or found by owner, is retired; waiting for it would wait for ever."""
    rep, observed = s.replacement, observation.replacement
    assert rep is not None
    instance_id = rep.compute_id or (observed.id if observed and not gone(observed) else None)
    if instance_id is not None and instance_id not in s.retired:
        _retire(s, instance_id, out)
    s.replacement = None


def _plan_replacement(
    s: AmphoraStatus,
    observation: Observation,
    wanted_hash: str,
    now: datetime,
    retry_base: float,
    retry_max: float,
    out: Plan,
) -> AmphoraInstance | None:
    """Roll out a spec change; return the instance that is current afterwards if it swapped."""
    rep = s.replacement
    observed = observation.replacement
    if rep is not None and rep.spec_hash != wanted_hash:
        if rep.compute_id is not None:  # the spec moved on: drop the outdated replacement
            _retire(s, rep.compute_id, out)
        rep = None
    if rep is None:
        s.next_retry_time = None  # a new spec: a failed replacement's backoff no longer applies
        revision = max(s.revision, s.replacement.revision if s.replacement else 0) + 1
        s.replacement = Replacement(revision=revision, spec_hash=wanted_hash, reason="SpecChanged")
        out.actions.append(Build(revision, replacement=True))
        out.events.append(("Normal", "Replacing", f"spec changed; building revision {revision}"))
        return None
    if rep.compute_id is None:  # built before a crash, its id never written: found by owner
        if observed is None or gone(observed):
            out.actions.append(Build(rep.revision, replacement=True))
            return None
        # Judge it in this same pass: already ACTIVE, it would never change again, so
        # nothing would wake this Amphora to swap it in.
        rep = rep.model_copy(update={"compute_id": observed.id})
        s.replacement = rep
    if gone(observed):
        s.replacement = Replacement(revision=rep.revision + 1, spec_hash=wanted_hash, reason="Lost")
        out.actions.append(Build(rep.revision + 1, replacement=True))
        return None
    assert observed is not None
    if observed.state is AmphoraState.ERROR:
        s.fault = f"replacement failed: {observed.fault or 'unknown fault'}"
        if s.next_retry_time is None:
            delay = _backoff(s.retries, retry_base, retry_max)
            s.next_retry_time = now_rfc3339(now + timedelta(seconds=delay))
        elif now >= parse_time(s.next_retry_time):
            _retire(s, observed.id, out)
            s.retries += 1
            s.next_retry_time = None
            s.replacement = Replacement(
                revision=rep.revision + 1, spec_hash=wanted_hash, reason="Failed"
            )
            out.actions.append(Build(rep.revision + 1, replacement=True))
        return None
    if observed.state is not AmphoraState.ACTIVE:
        return None
    assert s.compute_id is not None
    _retire(s, s.compute_id, out)
    out.events.append(("Normal", "Replaced", f"instance {observed.id} replaced {s.compute_id}"))
    s.compute_id, s.revision, s.spec_hash = observed.id, rep.revision, rep.spec_hash
    s.replacement = None
    return observed


def parse_time(stamp: str) -> datetime:
    """Read an RFC 3339 stamp as written by :func:`now_rfc3339`."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _failed(
    out: Plan, spec: AmphoraSpec, generation: int, stamp: str, reason: str, message: str
) -> Plan:
    """A failure no retry of ours can fix (ObserveOnly, a missing import): Stalled."""
    mark_failed(
        out.status, reason=reason, message=message, generation=generation, stamp=stamp, stalled=True
    )
    return out


def _set(s: AmphoraStatus, type_: str, status: bool, reason: str, message: str, gen: int | None,
         stamp: str) -> None:  # fmt: skip
    s.conditions = set_condition(
        s.conditions, type=type_, status=status, reason=reason, message=message,
        generation=gen, now=stamp,
    )  # fmt: skip


def mark_failed(
    s: AmphoraStatus,
    *,
    reason: str,
    message: str,
    generation: int,
    stamp: str,
    stalled: bool = False,
) -> None:
    """Phase Failed for ``reason`` (keeps an earlier fault): Stalled when ``stalled``, else
    still Reconciling (a retry is scheduled in ``next_retry_time``)."""
    s.phase = Phase.FAILED
    s.fault = s.fault or message
    s.failure_reason = reason
    s.observed_generation = generation
    _set(s, "Ready", False, reason, message, generation, stamp)
    _set(s, "Progressing", not stalled, reason, message, generation, stamp)
    _set(s, "Reconciling", not stalled, reason if not stalled else "Stalled", message,
         generation, stamp)  # fmt: skip
    _set(s, "Stalled", stalled, reason if stalled else "Retrying", message, generation, stamp)


def invalid(
    status: AmphoraStatus, *, reason: str, message: str, generation: int, now: datetime
) -> AmphoraStatus:
    """A spec error or an unknown driver: nothing happens until the spec changes (Stalled)."""
    s = _copy(status)
    s.next_retry_time = None
    mark_failed(
        s, reason=reason, message=message, generation=generation, stamp=now_rfc3339(now),
        stalled=True,
    )  # fmt: skip
    s.fault = message
    return s


def first_sight(
    status: AmphoraStatus, *, generation: int, profile: str | None, now: datetime
) -> AmphoraStatus | None:
    """The status written before any driver call when the Amphora has none yet (no status, or
    only the CRD's default ``observedGeneration: 0``): phase Pending, Reconciling, so that no
    reader takes a not-yet-observed Amphora for a healthy one; None when status already exists."""
    if status.observed_generation or status.phase is not None:
        return None
    s = _copy(status)
    s.phase = Phase.PENDING
    s.driver = profile
    s.observed_generation = generation
    stamp = now_rfc3339(now)
    _set(s, "Ready", False, "Pending", "waiting to build", generation, stamp)
    _set(s, "Reconciling", True, "Pending", "waiting to build", generation, stamp)
    return s


def _finish(out: Plan, spec: AmphoraSpec, generation: int, stamp: str,
            stall_after: int = 3) -> Plan:  # fmt: skip
    """Derive Ready, Reconciling, Stalled and Progressing from the phase the plan arrived at."""
    s = out.status
    phase = s.phase or Phase.PENDING
    if phase is Phase.FAILED:
        stalled = s.retries >= stall_after or any(
            c.type == "Stalled" and c.status == "True" for c in s.conditions
        )
        mark_failed(
            s, reason=s.failure_reason or "BuildFailed", message=s.fault or "failed",
            generation=generation, stamp=stamp, stalled=stalled,
        )  # fmt: skip
        return out
    moving = bool(out.actions) or phase in (Phase.BUILDING, Phase.UPDATING, Phase.PENDING)
    # Suspended as requested is what the user declared: Ready (reason Suspended), so kstatus
    # reads it Current and a GitOps pipeline waiting on it does not time out.
    suspended = phase is Phase.SUSPENDED and not moving
    ready = phase is Phase.READY or suspended
    messages = {
        Phase.PENDING: "waiting to build",
        Phase.BUILDING: f"building revision {s.revision}",
        Phase.READY: f"instance {s.compute_id} is active",
        Phase.SUSPENDED: f"instance {s.compute_id} is suspended as requested",
        Phase.UPDATING: _updating_message(s, spec),
    }
    message = messages.get(phase, phase.value)
    _set(s, "Ready", ready, phase.value, message, generation, stamp)
    _set(s, "Progressing", moving, phase.value if moving else "Stable", message, generation,
         stamp)  # fmt: skip
    _set(s, "Reconciling", moving, phase.value if moving else "Stable", message, generation,
         stamp)  # fmt: skip
    _set(s, "Stalled", False, "Progressing" if moving else "Stable", message, generation, stamp)
    return out


def _updating_message(s: AmphoraStatus, spec: AmphoraSpec) -> str:
    if s.replacement is not None:
        return f"replacing with revision {s.replacement.revision} ({s.replacement.reason})"
    return "suspending" if spec.suspended else "resuming"


def plan_failure(
    status: AmphoraStatus,
    failure: Failure,
    *,
    generation: int,
    now: datetime,
    retry_base: float,
    retry_max: float,
    stall_after: int = 3,
) -> AmphoraStatus:
    """The status after an action failed: a failed build counts a retry (transient: backoff;
    terminal: Stalled, re-checked every ``retry_max``); other actions are simply retried."""
    s = _copy(status)
    stamp = now_rfc3339(now)
    s.observed_generation = generation
    if failure.reason in BACKEND_REASONS:
        _backend_down(s, failure, generation, stamp)
    if failure.action != "build":
        text = f"{failure.action} failed, retrying: {failure.message}"
        _set(s, "Progressing", True, failure.reason, text, generation, stamp)
        _set(s, "Reconciling", True, failure.reason, text, generation, stamp)
        return s
    delay = retry_max if not failure.retryable else backoff(s.retries, retry_base, retry_max)
    s.retries += 1
    s.next_retry_time = now_rfc3339(now + timedelta(seconds=delay))
    s.fault = failure.message
    mark_failed(
        s, reason=failure.reason, message=failure.message, generation=generation, stamp=stamp,
        stalled=not failure.retryable or s.retries >= stall_after,
    )  # fmt: skip
    return s


def plan_backend(
    status: AmphoraStatus, failure: Failure | None, *, generation: int, now: datetime
) -> AmphoraStatus:
    """BackendAvailable from a lookup: reachable, or down for ``failure`` (stable wording, so
    an outage costs one write per Amphora, not one per poll round). An Amphora never observed
    before also shows that its reconcile waits for the backend."""
    s = _copy(status)
    stamp = now_rfc3339(now)
    s.observed_generation = generation
    if failure is None:
        _set(s, "BackendAvailable", True, "Reachable", "the compute backend answers", generation,
             stamp)  # fmt: skip
        return s
    _backend_down(s, failure, generation, stamp)
    if s.phase in (None, Phase.PENDING):
        s.phase = Phase.PENDING
        text = f"waiting for the compute backend: {failure.message}"
        _set(s, "Ready", False, failure.reason, text, generation, stamp)
        _set(s, "Reconciling", True, failure.reason, text, generation, stamp)
    return s


def _cause(reason: str, message: str) -> str:
    """The backend's own failure behind a reason (CircuitOpen names its last one)."""
    if reason == "CircuitOpen":
        found = _LAST_FAILURE.search(message)
        return found.group(1) if found else reason
    return reason


def _backend_down(s: AmphoraStatus, failure: Failure, gen: int | None, stamp: str) -> None:
    """BackendAvailable False. Rewritten only when the backend's failure changes kind (say 5xx
    to 429) or the breaker opens: a breaker flipping between open and half-open is not news,
    so an outage costs a few writes per Amphora, whatever its length."""
    known = next((c for c in s.conditions if c.type == "BackendAvailable"), None)
    if (
        known is not None
        and known.status == "False"
        and _cause(known.reason, known.message) == _cause(failure.reason, failure.message)
        and (known.reason == "CircuitOpen" or failure.reason != "CircuitOpen")
    ):
        return
    _set(s, "BackendAvailable", False, failure.reason, failure.message, gen, stamp)


def needs_write(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether a status change is one a user reads: ``rawState`` alone is not one."""
    if before == after:
        return False
    strip = {"rawState"}
    return {k: v for k, v in before.items() if k not in strip} != {
        k: v for k, v in after.items() if k not in strip
    }


def plan_deletion_wait(
    status: AmphoraStatus, *, reason: str, message: str, generation: int, now: datetime
) -> tuple[AmphoraStatus, str]:
    """Phase Deleting with why it waits and the escape (Orphan); returns (status, text)."""
    text = (
        f"{message}; deletion waits (set spec.deletionPolicy: Orphan to release the "
        "Amphora and leave the instance)"
    )
    s = _copy(status)
    s.phase = Phase.DELETING
    stamp = now_rfc3339(now)
    _set(s, "Ready", False, "Deleting", text, generation, stamp)
    _set(s, "Progressing", True, reason, text, generation, stamp)
    _set(s, "Reconciling", True, reason, text, generation, stamp)
    if reason in BACKEND_REASONS:
        _set(s, "BackendAvailable", False, reason, message, generation, stamp)
    return s, text


def plan_deletion(
    *, spec: AmphoraSpec | None, status: AmphoraStatus, observation: Observation
) -> tuple[list[str], list[str]]:
    """Return (ids to delete now, ids still present) for a deleted Amphora.

    The finalizer is released when the second list is empty. Orphan (or ObserveOnly) leaves
    every instance and returns nothing to wait for.
    """
    if spec is not None and spec.management_policy is ManagementPolicy.OBSERVE_ONLY:
        return [], []
    present: dict[str, AmphoraInstance] = {}
    for instance in (observation.current, observation.replacement, *observation.retired.values()):
        if instance is not None and instance.state is not AmphoraState.DELETED:
            present[instance.id] = instance
    to_delete = [i for i, inst in present.items() if inst.state is not AmphoraState.DELETING]
    if spec is not None and spec.deletion_policy.value == "Orphan":
        # Orphan leaves THE instance; replaced, retired or half-built ones are the operator's
        # own garbage: delete them (best effort) and never wait.
        keep = observation.current.id if observation.current is not None else None
        return [i for i in to_delete if i != keep], []
    return to_delete, list(present)
