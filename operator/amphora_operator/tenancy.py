"""Tenancy rules: what an Amphora in one namespace may touch, decided without I/O.

One operator serves every namespace with one cloud credential, so the operator, not the cloud,
keeps tenants apart. These pure functions state the rules; the reconciler applies them and a
refusal becomes a terminal (Stalled) condition whose message names the field and the rule:

- Every instance the operator builds carries :func:`namespace_tag` of its Amphora's namespace
  (drivers keep user tags on the instance and expose them in ``AmphoraInstance.tags``).
- ``spec.importId`` adopts only an instance built for the same namespace (e.g. one released
  earlier with ``deletionPolicy: Orphan``), unless the profile's ``imports`` allow more: whole
  namespaces (``allowedNamespaces``) or instances carrying an admin's tag (``requiredTag``).
  An instance another live Amphora manages is never imported.
- Secrets are read only with the owner's consent: the label :data:`USABLE_LABEL` = "true".
- ``spec.tags`` may not carry the namespace tag prefix nor the profile's import tag: a tenant
  could otherwise mark its instance as another namespace's or as importable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from amphora_drivers.types import MAX_TAG_LENGTH, AmphoraInstance

from amphora_operator.config import ProfileConfig

__all__ = [
    "NAMESPACE_TAG_PREFIX",
    "USABLE_LABEL",
    "ImportRules",
    "Refusal",
    "claimed",
    "import_refusal",
    "import_rules",
    "namespace_tag",
    "owner_uid",
    "tags_refusal",
]

#: Secrets consent to be read through an Amphora's secretRef with this label set to "true":
#: whoever may create Amphorae in a namespace can otherwise not make the operator read (and
#: boot into an instance carrying their own ssh key) any Secret of that namespace.
USABLE_LABEL = "amphora-operator.dev/usable"
#: The tag prefix naming the Kubernetes namespace an instance was built for.
NAMESPACE_TAG_PREFIX = "amphora-namespace:"
_HASHED = 16


@dataclass(frozen=True)
class Refusal:
    """Why a spec is refused: the spec field, the rule's name (the condition reason) and a
    message naming both."""

    field: str
    reason: str
    message: str


@dataclass(frozen=True)
class ImportRules:
    """A profile's import allowances beyond the same-namespace rule (see config.ImportConfig)."""

    profile: str
    allowed_namespaces: frozenset[str] = frozenset()
    required_tag: str | None = None


def namespace_tag(namespace: str) -> str:
    """The tag marking an instance as built for ``namespace`` (at most 60 characters: a long
    namespace keeps its head and a hash of the whole, so tags of two namespaces never match)."""
    tag = f"{NAMESPACE_TAG_PREFIX}{namespace}"
    if len(tag) <= MAX_TAG_LENGTH:
        return tag
    digest = hashlib.sha256(namespace.encode()).hexdigest()[:_HASHED]
    head = MAX_TAG_LENGTH - len(NAMESPACE_TAG_PREFIX) - _HASHED - 1
    return f"{NAMESPACE_TAG_PREFIX}{namespace[:head]}~{digest}"


def owner_uid(owner: str | None) -> str | None:
    """The Amphora UID (hex, no dashes) in an instance's owner key ``<uid hex>-<revision>``."""
    if not owner or "-" not in owner:
        return None
    return owner.rsplit("-", 1)[0]


def tags_refusal(tags: Sequence[str], rules: ImportRules) -> Refusal | None:
    """Refuse user tags that would forge a namespace or an import permission."""
    for index, tag in enumerate(tags):
        if tag.startswith(NAMESPACE_TAG_PREFIX):
            return Refusal(
                "spec.tags",
                "ReservedTag",
                f"spec.tags[{index}]: the prefix {NAMESPACE_TAG_PREFIX!r} is reserved: the "
                "operator tags every instance with its Amphora's namespace",
            )
        if rules.required_tag is not None and tag == rules.required_tag:
            return Refusal(
                "spec.tags",
                "ReservedTag",
                f"spec.tags[{index}]: {tag!r} is profile {rules.profile!r}'s import tag "
                "(imports.requiredTag); only an administrator may set it",
            )
    return None


def import_refusal(
    instance: AmphoraInstance | None,
    *,
    import_id: str,
    namespace: str,
    rules: ImportRules,
    claimed: bool = False,
) -> Refusal | None:
    """None when an Amphora in ``namespace`` may import ``instance`` (None: not on the
    backend), else why not.

    A missing instance gets the very refusal a forbidden one gets, unless the namespace may
    import any instance: otherwise a tenant could tell another namespace's ids from unused
    ones (ImportNotFound vs ImportRefused). ``claimed``: another live Amphora manages this
    instance (its status holds the id, or the owner key is its UID); the import then waits
    for its release. The message never names the other Amphora (it may live in another
    namespace).
    """
    own = namespace_tag(namespace)
    if instance is None:
        allowed = namespace in rules.allowed_namespaces  # ImportNotFound tells it nothing new
    else:
        allowed = (
            own in instance.tags
            or namespace in rules.allowed_namespaces
            or (rules.required_tag is not None and rules.required_tag in instance.tags)
        )
    if not allowed:
        namespaces = ", ".join(sorted(rules.allowed_namespaces)) or "none"
        tag = repr(rules.required_tag) if rules.required_tag else "none"
        return Refusal(
            "spec.importId",
            "ImportRefused",
            f"spec.importId: no instance {import_id} that namespace {namespace!r} may import: "
            f"only instances this operator built for the same namespace (tag {own!r}) may be "
            f"imported, unless profile {rules.profile!r} allows it "
            f"(imports.allowedNamespaces: {namespaces}; imports.requiredTag: {tag})",
        )
    if claimed and instance is not None:
        return Refusal(
            "spec.importId",
            "ImportRefused",
            f"spec.importId: instance {instance.id} is managed by another Amphora; an "
            "instance may be imported only after its Amphora released it "
            "(deletionPolicy: Orphan)",
        )
    return None


def claimed(instance: AmphoraInstance, uid: str, bodies: Iterable[Mapping[str, Any]]) -> bool:
    """Whether an Amphora other than ``uid`` manages ``instance``: its status holds the id
    (current, replacement or retired), or the instance's owner key is its UID."""
    owner = owner_uid(instance.owner)
    for body in bodies:
        other = body["metadata"]["uid"]
        if other == uid or body["metadata"].get("deletionTimestamp"):
            continue
        if owner is not None and other.replace("-", "") == owner:
            return True
        status = body.get("status") or {}
        replacement = status.get("replacement") or {}
        ids = {status.get("computeId"), replacement.get("computeId"), *status.get("retired", [])}
        if instance.id in ids:
            return True
    return False


def import_rules(name: str, profile: ProfileConfig) -> ImportRules:
    """The import allowances of the profile called ``name``."""
    return ImportRules(
        profile=name,
        allowed_namespaces=frozenset(profile.imports.allowed_namespaces),
        required_tag=profile.imports.required_tag,
    )
