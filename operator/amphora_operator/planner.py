"""Decide what to do for one Amphora: a pure function of spec, status and what the backend shows.

No I/O here. :func:`plan` returns the next status and the driver actions that lead towards the
spec; :mod:`amphora_operator.controller` persists the status *before* acting (so a crash never
forgets an intent) and then acts. The policies users see are all here:

- Build: the instance is named and owned from the resource UID and a revision; the revision is
  written to status before the build, so a restarted operator adopts (by owner, never by name).
- Failed instances (ERROR) keep their fault in status and are rebuilt after an exponential
  backoff (``retry_base`` doubling up to ``retry_max``); a spec change retries at once.
- Spec changes the backend cannot apply in place roll out by replacement: the new instance
  becomes ACTIVE first, then the old one is retired (deleted and confirmed gone).
- Drift: a Managed instance deleted behind the operator's back is rebuilt; an ObserveOnly one is
  reported as lost. ``suspended`` is applied in place through suspend/resume.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta

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
    "Action",
    "Build",
    "Delete",
    "Observation",
    "Plan",
    "Resume",
    "Suspend",
    "instance_name",
    "mark_failed",
    "next_retry",
    "owner_key",
    "parse_time",
    "plan",
    "plan_deletion",
    "spec_hash",
]

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


def _backoff(retries: int, base: float, cap: float) -> float:
    return float(min(cap, base * (2 ** max(0, retries))))


def next_retry(s: AmphoraStatus, *, now: datetime, retry_base: float, retry_max: float) -> float:
    """Count one more failure and set when to try again; return the delay in seconds."""
    delay = _backoff(s.retries, retry_base, retry_max)
    s.retries += 1
    s.next_retry_time = now_rfc3339(now + timedelta(seconds=delay))
    return delay


def _gone(instance: AmphoraInstance | None) -> bool:
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
) -> Plan:
    """The next status and actions for a live (not deleting) Amphora."""
    s = status.model_copy(deep=True)
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
            if _gone(current):
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
        elif current is not None and not _gone(current):
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
                return _finish(out, spec, generation, stamp)
            s.next_retry_time = None
            s.spec_hash = wanted_hash
            s.phase = Phase.BUILDING
            out.actions.append(Build(s.revision))
            return _finish(out, spec, generation, stamp)

    assert s.compute_id is not None
    if current is None or _gone(current):
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
        return _finish(out, spec, generation, stamp)

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
            return _failed(
                out,
                spec,
                generation,
                stamp,
                "InstanceError",
                f"{s.fault} (rebuild at {s.next_retry_time})",
            )
        s.retired.append(current.id)
        out.actions.append(Delete(current.id))
        s.retries += 1
        s.next_retry_time = None
        _rebuild(s, wanted_hash, out)
        return _finish(out, spec, generation, stamp)

    if current.state is AmphoraState.BUILDING:
        s.phase = Phase.BUILDING
        return _finish(out, spec, generation, stamp)

    if current.state in (AmphoraState.ACTIVE, AmphoraState.SUSPENDED):
        s.retries, s.next_retry_time, s.fault, s.failure_reason = 0, None, None, None
        if managed and s.spec_hash != wanted_hash:
            current = (
                _plan_replacement(s, observation, wanted_hash, now, retry_base, retry_max, out)
                or current
            )
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
        return _finish(out, spec, generation, stamp)

    s.phase = Phase.UPDATING  # UNKNOWN: report, do nothing
    return _finish(out, spec, generation, stamp)


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


def _rebuild(s: AmphoraStatus, wanted_hash: str, out: Plan) -> None:
    s.revision = max(s.revision, s.replacement.revision if s.replacement else 0) + 1
    if s.replacement is not None and s.replacement.compute_id is not None:
        s.retired.append(s.replacement.compute_id)
        out.actions.append(Delete(s.replacement.compute_id))
    s.replacement = None
    s.compute_id = None
    s.spec_hash = wanted_hash
    s.phase = Phase.BUILDING
    out.actions.append(Build(s.revision))


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
            s.retired.append(rep.compute_id)
            out.actions.append(Delete(rep.compute_id))
        rep = None
    if rep is None:
        revision = max(s.revision, s.replacement.revision if s.replacement else 0) + 1
        s.replacement = Replacement(revision=revision, spec_hash=wanted_hash, reason="SpecChanged")
        out.actions.append(Build(revision, replacement=True))
        out.events.append(("Normal", "Replacing", f"spec changed; building revision {revision}"))
        return None
    if rep.compute_id is None:
        if observed is not None and not _gone(observed):
            s.replacement = rep.model_copy(update={"compute_id": observed.id})
        else:
            out.actions.append(Build(rep.revision, replacement=True))
        return None
    if _gone(observed):
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
            s.retired.append(observed.id)
            out.actions.append(Delete(observed.id))
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
    s.retired.append(s.compute_id)
    out.actions.append(Delete(s.compute_id))
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
    mark_failed(out.status, reason=reason, message=message, generation=generation, stamp=stamp)
    return out


def mark_failed(
    s: AmphoraStatus, *, reason: str, message: str, generation: int | None, stamp: str
) -> None:
    """Phase Failed with Ready and Progressing False for ``reason`` (keeps an earlier fault)."""
    s.phase = Phase.FAILED
    s.fault = s.fault or message
    s.failure_reason = reason
    for condition in ("Ready", "Progressing"):
        s.conditions = set_condition(
            s.conditions,
            type=condition,
            status=False,
            reason=reason,
            message=message,
            generation=generation,
            now=stamp,
        )


def _finish(out: Plan, spec: AmphoraSpec, generation: int, stamp: str) -> Plan:
    """Derive Ready and Progressing from the phase the plan arrived at."""
    s = out.status
    phase = s.phase or Phase.PENDING
    if phase is Phase.FAILED:
        message = s.fault or "failed"
        if s.next_retry_time:
            message = f"{message} (retry at {s.next_retry_time})"
        return _failed(out, spec, generation, stamp, s.failure_reason or "BuildFailed", message)
    ready = phase is Phase.READY
    moving = bool(out.actions) or phase in (Phase.BUILDING, Phase.UPDATING, Phase.PENDING)
    messages = {
        Phase.PENDING: "waiting to build",
        Phase.BUILDING: f"building revision {s.revision}",
        Phase.READY: f"instance {s.compute_id} is active",
        Phase.SUSPENDED: f"instance {s.compute_id} is suspended as requested",
        Phase.UPDATING: _updating_message(s, spec),
    }
    s.conditions = set_condition(
        s.conditions,
        type="Ready",
        status=ready,
        reason="Ready" if ready else phase.value,
        message=messages.get(phase, phase.value),
        generation=generation,
        now=stamp,
    )
    s.conditions = set_condition(
        s.conditions,
        type="Progressing",
        status=moving,
        reason=phase.value if moving else "Stable",
        message=messages.get(phase, phase.value),
        generation=generation,
        now=stamp,
    )
    return out


def _updating_message(s: AmphoraStatus, spec: AmphoraSpec) -> str:
    if s.replacement is not None:
        return f"replacing with revision {s.replacement.revision} ({s.replacement.reason})"
    return "suspending" if spec.suspended else "resuming"


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
