"""The compute driver interface: the seed spec's ``AmphoraComputeDriver``, typed.

Contract for every driver (proven by :mod:`amphora_drivers.testing.conformance`):

- Every method MUST return promptly (the spec's 200 ms guideline is the target; long work such
  as booting is started and then observed through :meth:`status` / :meth:`get_amphora`).
  Methods are synchronous; callers run them off their event loop.
- :meth:`create` MUST store ``request.owner`` and ``request.name`` on the instance so that
  :meth:`find` can match on them, and SHOULD NOT do anything that can fail after the instance
  exists (record first, decorate never).
- :meth:`build` MUST be idempotent on ``owner``: when a live (not DELETING/DELETED) instance with
  that owner exists, its id is returned and nothing new is built. A crash between "create" and
  "record the id" therefore never yields two instances.
- :meth:`find_owners` MUST report, for every owner asked, what :meth:`find` reports for that
  owner (an override exists to answer many owners in one backend call).
- :meth:`delete` MUST NOT fail when the instance is already gone, and MUST raise
  :class:`DeleteFailed` when the backend refuses. It returns once deletion is accepted; the
  instance may be visible as DELETING until :meth:`get_amphora` raises InstanceNotFoundError.
- :meth:`release` MUST remove the owner mark so that :meth:`find` no longer matches the
  instance by owner nor reports one (a garbage collector then never claims it); the instance
  keeps running and stays reachable by id. Releasing an instance that is gone is a no-op; a
  backend may refuse while the instance builds (Nova: 409) with a retryable error.
- :meth:`resume` MUST raise :class:`NotSuspendedError` when the instance is not suspended;
  :meth:`suspend` of a suspended instance is a no-op.
- Errors MUST be the spec's exceptions (:mod:`amphora_drivers.exceptions`) chained with
  ``raise ... from e``, with a ``reason`` and a correct ``retryable`` flag; unsupported
  operations or types raise ``NotImplementedError``.
- Drivers MUST NOT read global configuration: everything comes through the constructor.
- Drivers MUST NOT log user data, file contents or keys.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import IO, ClassVar

from pydantic import ValidationError

from amphora_drivers.exceptions import (
    AmphoraBuildError,
    AmphoraComputeError,
    InstanceNotFoundError,
    Reason,
)
from amphora_drivers.types import (
    AmphoraInstance,
    AmphoraState,
    AmphoraType,
    BuildRequest,
    OwnerResource,
    ServerGroup,
)

__all__ = ["AmphoraComputeDriver", "FileContent", "UserData", "describe_validation_error"]

_LOCKS_GUARD = threading.Lock()

FileContent = str | bytes | IO[str] | IO[bytes]
UserData = str | bytes | IO[str] | IO[bytes]


def describe_validation_error(error: ValidationError) -> tuple[str, str]:
    """Return ``(field, message)`` for the first error, naming the field and the rule."""
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "request"
    message = first["msg"].removeprefix("Value error, ")
    return field, f"{field}: {message}"


class AmphoraComputeDriver(abc.ABC):
    """Builds, observes, suspends, resumes and deletes amphorae on one compute backend."""

    #: The entry-point name the driver is registered under (``amphora.compute_drivers``).
    name: ClassVar[str]
    #: The amphora types this driver can build; others raise NotImplementedError/BuildError.
    supported_types: ClassVar[frozenset[AmphoraType]]
    #: Whether an instance can be ACTIVE as soon as build() returns (the noop driver). Callers
    #: look once more right away only for such drivers: for the others (a VM boots for
    #: seconds) that look is one more API call that never finds it ACTIVE.
    instant_builds: ClassVar[bool] = False

    # -- the seed spec's interface -------------------------------------------------------

    def build(
        self,
        amphora_type: AmphoraType | str = AmphoraType.VM,
        amphora_flavor: str | None = None,
        image_id: str | None = None,
        keys: Sequence[str] | None = None,
        sec_groups: Sequence[str] | None = None,
        network_ids: Sequence[str] | None = None,
        config_drive_files: Mapping[str, FileContent] | None = None,
        user_data: UserData | None = None,
        *,
        name: str,
        owner: str | None = None,
        tags: Sequence[str] | None = None,
        availability_zone: str | None = None,
        server_group: ServerGroup | None = None,
    ) -> str:
        """Build a new amphora (or return the one already built for ``owner``); return its id.

        Raises AmphoraBuildError (reason InvalidInput, not retryable) naming the offending
        field when the input breaks the spec's rules.
        """
        try:
            request = BuildRequest(
                name=name,
                amphora_type=AmphoraType(amphora_type),
                amphora_flavor=amphora_flavor,
                image_id=image_id,
                keys=keys,
                sec_groups=sec_groups,
                network_ids=network_ids,
                config_drive_files=config_drive_files,
                user_data=user_data,
                owner=owner,
                tags=tags,
                availability_zone=availability_zone,
                server_group=server_group,
            )
        except ValueError as e:  # ValidationError is a ValueError; so is a bad AmphoraType
            if isinstance(e, ValidationError):
                field, message = describe_validation_error(e)
            else:
                field, message = "amphora_type", f"amphora_type: {e}"
            raise AmphoraBuildError(
                message, reason=Reason.INVALID_INPUT, retryable=False, field=field
            ) from e
        return self.build_from(request)

    def build_from(self, request: BuildRequest, *, owner_checked: bool = False) -> str:
        """Build from an already validated request; idempotent on ``request.owner``.

        Builds for one owner are serialised within this driver object, so concurrent callers
        in one process get one instance; across processes, callers must not build the same
        owner at once (the operator's leader election guarantees it). ``owner_checked``: the
        caller looked the owner up itself just before and found no live instance, and no other
        build of that owner can have run since; the driver then skips its own lookup (one
        owner lookup per build, not two).
        """
        if request.amphora_type is AmphoraType.CONTAINER and not request.image_id:
            raise AmphoraBuildError(
                "image_id: required for a Container amphora",
                reason=Reason.INVALID_INPUT,
                retryable=False,
                field="image_id",
            )
        self.check_supported(request.amphora_type)
        self.validate(request)
        if request.owner is None:
            return self.create(request)
        with self._owner_lock(request.owner):
            if owner_checked:
                return self.create(request)
            existing = self.find(owner=request.owner)
            gone = (AmphoraState.DELETED, AmphoraState.DELETING)
            live = [i for i in existing if i.state not in gone]
            if len(live) > 1:
                raise AmphoraBuildError(
                    f"{len(live)} instances carry owner {request.owner}; refusing to guess",
                    reason=Reason.AMBIGUOUS_MATCH,
                    retryable=False,
                )
            if live:
                return live[0].id
            return self.create(request)

    def _owner_lock(self, owner: str) -> threading.Lock:
        # Drivers do not call super().__init__(), so the lock table is created on first use.
        with _LOCKS_GUARD:
            locks: dict[str, threading.Lock] = self.__dict__.setdefault("_owner_locks", {})
            return locks.setdefault(owner, threading.Lock())

    def status(self, amphora_id: str) -> AmphoraState:
        """Return the normalised state of the instance (raises InstanceNotFoundError)."""
        return self.get_amphora(amphora_id=amphora_id).state

    def get_amphora(
        self,
        amphora_name: str | None = None,
        amphora_id: str | None = None,
        *,
        owner: str | None = None,
    ) -> AmphoraInstance:
        """Find exactly one instance by id, name or owner.

        Raises InstanceNotFoundError when nothing matches and AmphoraComputeError with reason
        AmbiguousMatch when several do (names are not unique on every backend).
        """
        given = [c for c in (amphora_name, amphora_id, owner) if c is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of amphora_name, amphora_id or owner")
        matches = self.find(amphora_id=amphora_id, name=amphora_name, owner=owner)
        if not matches:
            raise InstanceNotFoundError(
                f"no amphora matches {self._criteria(amphora_name, amphora_id, owner)}"
            )
        if len(matches) > 1:
            raise AmphoraComputeError(
                f"{len(matches)} amphorae match {self._criteria(amphora_name, amphora_id, owner)}",
                reason=Reason.AMBIGUOUS_MATCH,
                retryable=False,
            )
        return matches[0]

    @abc.abstractmethod
    def delete(self, amphora_id: str) -> None:
        """Start deleting the instance; a no-op when it is already gone."""

    # -- extensions a reconciler needs --------------------------------------------------

    @abc.abstractmethod
    def create(self, request: BuildRequest) -> str:
        """Start building a new instance and return its id without waiting for it to boot."""

    @abc.abstractmethod
    def find(
        self,
        *,
        amphora_id: str | None = None,
        name: str | None = None,
        owner: str | None = None,
    ) -> list[AmphoraInstance]:
        """Return the instances matching every given criterion.

        With no criteria, return every instance this driver manages (those built with an
        owner, released ones included with ``owner`` None), which lets callers look for
        orphans.
        """

    def find_owners(self, owners: Sequence[str]) -> list[AmphoraInstance]:
        """The instances carrying any of ``owners``, as :meth:`find` reports them by owner.

        For callers with many owner lookups at once (a burst of new Amphorae): a backend that
        can match several owners in one call (Nova's ``tags-any``) SHOULD override this; the
        default asks :meth:`find` once per owner.
        """
        return [i for owner in dict.fromkeys(owners) for i in self.find(owner=owner)]

    def changed_since(self, since: datetime) -> list[AmphoraInstance] | None:
        """Instances whose state changed at or after ``since`` (UTC), deleted ones included as
        DELETED; None when the backend cannot tell (the default), and callers then look up by
        id or list everything instead. A poller asks this of backends that can answer it in
        one cheap call (Nova's ``changes-since``); callers allow for clock skew themselves.
        Creation alone need not count (Nova compares ``updated_at``, unset until the first
        change), so an instance absent from the answer is unchanged, not necessarily absent.
        """
        return None

    @abc.abstractmethod
    def suspend(self, amphora_id: str) -> None:
        """Stop the instance keeping its identity, so that resume() brings it back."""

    @abc.abstractmethod
    def resume(self, amphora_id: str) -> None:
        """Bring a suspended instance back; NotSuspendedError when it is not suspended."""

    @abc.abstractmethod
    def release(self, amphora_id: str) -> None:
        """Stop owning the instance (``deletionPolicy: Orphan``): drop its owner mark, keep it
        running. Afterwards find() reports it with ``owner`` None; a no-op when it is gone."""

    def validate(self, request: BuildRequest) -> None:
        """Reject input this driver cannot serve, before anything is built.

        The default accepts everything the generic rules accepted. Raise AmphoraBuildError with
        reason InvalidInput (or a more specific one) and ``field`` set.
        """

    def follows_owner(self, owner: OwnerResource) -> bool:
        """Whether instances built with ``owner_resource=owner`` are deleted by the platform
        itself once that owner is gone (the caller then needs no clean-up step of its own).
        The default: no, the caller must delete them."""
        return False

    def check_supported(self, amphora_type: AmphoraType) -> None:
        """Raise NotImplementedError for a type this driver does not build."""
        if amphora_type not in self.supported_types:
            supported = ", ".join(sorted(t.value for t in self.supported_types))
            raise NotImplementedError(
                f"driver {self.name!r} does not build {amphora_type.value} amphorae "
                f"(supported: {supported})"
            )

    def close(self) -> None:
        """Release connections; the default holds none."""

    @staticmethod
    def _criteria(name: str | None, amphora_id: str | None, owner: str | None) -> str:
        if amphora_id is not None:
            return f"id {amphora_id}"
        if owner is not None:
            return f"owner {owner}"
        return f"name {name}"
