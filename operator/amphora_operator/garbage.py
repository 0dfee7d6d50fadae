"""Decide which managed instances are orphans and when to collect them: pure, no I/O.

An instance is the operator's when it carries an owner key (:func:`~.planner.owner_key`:
the Amphora's UID and a revision). It is *claimed* when some Amphora still holds it: its id is
an Amphora's ``computeId``, replacement or retired id or ``importId``, or its owner key is
that of a build in flight (the current revision before ``computeId`` is recorded, or the
replacement's before its id is). Everything else the operator built is an orphan: its Amphora
is gone (deleted without clean-up, or deleted while a build was unrecorded), or it no longer
claims it (a stale revision, a duplicate). :mod:`.collector` deletes an orphan once it has
been one for ``grace`` seconds without a break, so an Amphora whose status is being written
right now, or a cache that is still filling after a restart, never loses an instance.
Instances without an owner key (released by ``deletionPolicy: Orphan``, or built by someone
else) are never considered.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from amphora_drivers.types import AmphoraInstance, AmphoraState

from amphora_operator.planner import owner_key

__all__ = ["Claim", "Orphan", "Sweep", "claims_of", "plan_collection", "uid_of"]

_OWNER_KEY = re.compile(r"^([0-9a-f]{32})-(\d+)$")


def uid_of(owner: str | None) -> str | None:
    """The Amphora UID (32 hex digits, no dashes) in an owner key; None when it is not one."""
    found = _OWNER_KEY.match(owner or "")
    return found.group(1) if found else None


@dataclass(frozen=True)
class Claim:
    """What one Amphora holds on the backends."""

    namespace: str
    name: str
    #: As Kubernetes writes it (with dashes).
    uid: str
    #: Instance ids it names in status or spec.
    ids: frozenset[str] = frozenset()
    #: Owner keys of builds in flight (no id recorded yet).
    owners: frozenset[str] = frozenset()
    #: Its status could not be read: everything with its UID is kept.
    everything: bool = False


def _claim(body: Mapping[str, Any]) -> Claim:
    meta = body.get("metadata") or {}
    uid = str(meta.get("uid") or "")
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    status = body.get("status") or {}
    spec = body.get("spec") or {}
    try:
        ids: set[str] = set()
        owners: set[str] = set()
        revision = int(status.get("revision") or 0)
        current = status.get("computeId")
        if current:
            ids.add(str(current))
        else:
            owners.add(owner_key(uid, revision))
        replacement = status.get("replacement")
        if replacement:
            if replacement.get("computeId"):
                ids.add(str(replacement["computeId"]))
            else:
                owners.add(owner_key(uid, int(replacement["revision"])))
        ids.update(str(i) for i in status.get("retired") or [])
        if isinstance(spec, Mapping) and spec.get("importId"):
            ids.add(str(spec["importId"]))
    except (AttributeError, KeyError, TypeError, ValueError):
        return Claim(namespace, name, uid, everything=True)
    return Claim(namespace, name, uid, ids=frozenset(ids), owners=frozenset(owners))


def claims_of(bodies: Iterable[Mapping[str, Any]]) -> dict[str, Claim]:
    """The claims of every known Amphora (deleting ones included), by UID without dashes (as
    :func:`uid_of` reads it from an owner key)."""
    claims = (_claim(b) for b in bodies)
    return {c.uid.replace("-", ""): c for c in claims if c.uid}


@dataclass(frozen=True)
class Orphan:
    """An instance to delete, and why (``OwnerGone`` or ``Unclaimed``)."""

    instance: AmphoraInstance
    reason: str
    #: The Amphora it names, when it still exists (then the Event goes there).
    claim: Claim | None = None


@dataclass
class Sweep:
    #: Orphans whose grace period has passed: delete them.
    collect: list[Orphan] = field(default_factory=list)
    #: Orphans still in their grace period: instance id -> when first seen (the next sweep's
    #: ``first_seen``; instances no longer orphaned are dropped).
    first_seen: dict[str, float] = field(default_factory=dict)


def _orphan(instance: AmphoraInstance, claims: Mapping[str, Claim], held: set[str]
            ) -> Orphan | None:  # fmt: skip
    uid = uid_of(instance.owner)
    if uid is None or instance.state in (AmphoraState.DELETING, AmphoraState.DELETED):
        return None  # not ours (or released), or already going
    if instance.id in held:
        return None
    claim = claims.get(uid)
    if claim is None:
        return Orphan(instance, "OwnerGone")
    if claim.everything or instance.owner in claim.owners:
        return None
    return Orphan(instance, "Unclaimed", claim)


def plan_collection(
    *,
    instances: Iterable[AmphoraInstance],
    claims: Mapping[str, Claim],
    first_seen: Mapping[str, float],
    now: float,
    grace: float,
    spared: Iterable[str] = (),
) -> Sweep:
    """Which of ``instances`` (one backend's listing) to delete now.

    ``first_seen`` is the previous sweep's; ``now`` and its times are from one monotonic
    clock. ``spared`` ids are never collected (releases the finalizer could not finish).
    The listing must be taken *before* the claims are read: an instance built after the
    claims were read would otherwise look unclaimed (its intent is written before the build).
    """
    held = {i for c in claims.values() for i in c.ids} | set(spared)
    sweep = Sweep()
    for instance in instances:
        orphan = _orphan(instance, claims, held)
        if orphan is None:
            continue
        since = first_seen.get(instance.id, now)
        if now - since >= grace:
            sweep.collect.append(orphan)
        else:
            sweep.first_seen[instance.id] = since
    return sweep
