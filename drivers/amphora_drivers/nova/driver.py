"""The Nova driver: VM and bare-metal amphorae as Nova servers, through openstacksdk.

What each spec field becomes, the status mapping and the error table are in
``docs/drivers/nova.md``. This module holds the driver class and the lookups it makes before
a create: flavors (cached), images (Glance: id, name or ``tag:``), networks and security
groups (Neutron: id or name), server groups.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol, TypeVar

import openstack.connection
import openstack.exceptions

from amphora_drivers.base import AmphoraComputeDriver
from amphora_drivers.exceptions import (
    AmphoraBuildError,
    AmphoraComputeError,
    DeleteFailed,
    InstanceNotFoundError,
    NotSuspendedError,
    Reason,
    invalid,
)
from amphora_drivers.nova.connect import CloudConfigError, connect, install_log_redaction
from amphora_drivers.nova.errors import API_ERRORS, NO_SERVICE, api_error
from amphora_drivers.nova.user_data import UserDataTooLarge, render_user_data
from amphora_drivers.types import (
    MAX_TAGS,
    AmphoraInstance,
    AmphoraState,
    AmphoraType,
    BuildRequest,
    ServerGroup,
)

__all__ = [
    "MIN_MICROVERSION",
    "ImageCandidate",
    "ImageLookup",
    "NovaDriver",
    "is_bare_metal_flavor",
]

LOG = logging.getLogger(__name__)

#: The lowest compute microversion the driver works with (server-group ``policy``).
MIN_MICROVERSION = "2.64"
#: The reason of a refusal by the profile's network or security-group rules.
NOT_ALLOWED = "NotAllowed"
OWNER_TAG_PREFIX = "amphora-owner:"
TYPE_TAG_PREFIX = "amphora-type:"
RESERVED_TAG_PREFIXES = (OWNER_TAG_PREFIX, TYPE_TAG_PREFIX)
#: Owners per ``tags-any`` listing: 50 owner tags keep the query string under 3 KB.
OWNERS_PER_LISTING = 50
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
_STANDARD_RESOURCE_CLASSES = ("VCPU", "MEMORY_MB", "DISK_GB")
_STATUS_STATES = {
    "BUILD": AmphoraState.BUILDING,
    "REBUILD": AmphoraState.BUILDING,
    "REBOOT": AmphoraState.BUILDING,
    "HARD_REBOOT": AmphoraState.BUILDING,
    "ACTIVE": AmphoraState.ACTIVE,
    "PASSWORD": AmphoraState.ACTIVE,
    "RESIZE": AmphoraState.ACTIVE,
    "VERIFY_RESIZE": AmphoraState.ACTIVE,
    "REVERT_RESIZE": AmphoraState.ACTIVE,
    "MIGRATING": AmphoraState.ACTIVE,
    "SUSPENDED": AmphoraState.SUSPENDED,
    "SHUTOFF": AmphoraState.SUSPENDED,
    "PAUSED": AmphoraState.SUSPENDED,
    "SHELVED": AmphoraState.SUSPENDED,
    "SHELVED_OFFLOADED": AmphoraState.SUSPENDED,
    "ERROR": AmphoraState.ERROR,
    "DELETED": AmphoraState.DELETED,
    "SOFT_DELETED": AmphoraState.DELETED,
}


# -- lookups ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageCandidate:
    """One ACTIVE image that matched a name or tag."""

    id: str
    #: ISO 8601 creation time; the newest candidate wins.
    created_at: str


class ImageLookup(Protocol):
    """Finds ACTIVE images by exact name or by tag (exactly one of them is given)."""

    def __call__(self, *, name: str | None, tag: str | None) -> Sequence[ImageCandidate]: ...


class _GlanceImageLookup:
    """The default ImageLookup: the cloud's image service (Glance) through the catalog."""

    def __init__(self, driver: NovaDriver, owner: str | None) -> None:
        self._driver = driver
        self._owner = owner

    def __call__(self, *, name: str | None, tag: str | None) -> Sequence[ImageCandidate]:
        query: dict[str, Any] = {"status": "active"}
        if name is not None:
            query["name"] = name
        if tag is not None:
            query["tag"] = [tag]
        if self._owner is not None:
            query["owner"] = self._owner
        images = self._driver.connection.image.images(**query)
        return [ImageCandidate(id=i.id, created_at=str(i.created_at or "")) for i in images]


@dataclass(frozen=True)
class _Flavor:
    id: str
    bare_metal: bool


def is_bare_metal_flavor(extra_specs: Mapping[str, Any]) -> bool:
    """True for Nova's Ironic flavor convention: one custom resource class, no VCPU/RAM/disk."""
    custom = [
        k for k, v in extra_specs.items() if k.startswith("resources:CUSTOM_") and str(v) == "1"
    ]
    zeroed = all(
        str(extra_specs.get(f"resources:{rc}", "")) == "0" for rc in _STANDARD_RESOURCE_CLASSES
    )
    return len(custom) == 1 and zeroed


_T = TypeVar("_T")


class _TTLCache:
    """Answers of lookups that rarely change (flavors, networks, security groups), for a while.

    Only successful lookups are kept: an unknown name is asked again next time, so a flavor
    or network created after a refusal is found at once.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._entries: dict[tuple[str, str], tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, kind: str, key: str, load: Callable[[], _T]) -> _T:
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get((kind, key))
        if hit is not None and now - hit[0] < self.seconds:
            return hit[1]  # type: ignore[no-any-return]
        value = load()
        if self.seconds > 0:
            with self._lock:
                self._entries[(kind, key)] = (now, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# -- the driver ---------------------------------------------------------------------------------


class NovaDriver(AmphoraComputeDriver):
    """Amphorae as Nova servers (VM, or BareMetal through Ironic) via openstacksdk."""

    name: ClassVar[str] = "nova"
    supported_types: ClassVar[frozenset[AmphoraType]] = frozenset(
        {AmphoraType.VM, AmphoraType.BARE_METAL}
    )

    def __init__(
        self,
        *,
        cloud: str | None = None,
        clouds_yaml: str | None = None,
        clouds_yaml_content: str | None = None,
        connection: openstack.connection.Connection | None = None,
        microversion: str = MIN_MICROVERSION,
        api_timeout: float = 10.0,
        default_flavor: str | None = None,
        default_image: str | None = None,
        default_network_ids: Sequence[str] = (),
        bare_metal_flavors: Collection[str] = (),
        image_owner: str | None = None,
        image_lookup: ImageLookup | None = None,
        managed_tag: str = "amphora-operator",
        delete_attempts: int = 3,
        delete_backoff: float = 0.2,
        lookup_cache_seconds: float = 60.0,
        management_networks: Sequence[str] = (),
        reserved_networks: Sequence[str] = (),
        allowed_networks: Sequence[str] | None = None,
        allowed_security_groups: Sequence[str] | None = None,
    ) -> None:
        """Configure the driver; nothing is contacted until the first call.

        Give exactly one credential source:

        :param clouds_yaml: path of a ``clouds.yaml``; ``cloud`` names the entry.
        :param clouds_yaml_content: the text of a ``clouds.yaml`` (a Kubernetes Secret key);
            ``cloud`` names the entry and may be omitted when there is only one.
        :param connection: a ready openstacksdk Connection (tests, callers with their own auth).
            Build it with ``compute_api_version=<microversion>``: the driver checks the pin.
        :param microversion: the compute microversion every request uses (at least 2.64).
        :param api_timeout: seconds before one HTTP request gives up (raises Timeout).
        :param default_flavor: flavor (id or name) when a request names none.
        :param default_image: image (id, name or ``tag:<tag>``) when a request names none.
        :param default_network_ids: networks (ids or names) when a request names none.
        :param bare_metal_flavors: flavor ids or names to treat as bare metal even without the
            Ironic extra-spec convention.
        :param image_owner: only resolve image names and tags to images of this project.
        :param image_lookup: resolves image names and tags; defaults to the cloud's image
            service. Image UUIDs never need it.
        :param managed_tag: the tag marking every server this driver builds; find() with no
            criteria lists the servers carrying it.
        :param delete_attempts: tries of one delete() on retryable errors (bounded retries).
        :param delete_backoff: seconds before the second try, doubled for each next one.
        :param lookup_cache_seconds: how long a found flavor, network or security group is
            reused without asking the cloud again (0 asks every time).
        :param management_networks: networks (ids or names) the driver attaches first to every
            server, for the operator's own use (e.g. Octavia's lb-mgmt-net); no request may
            name them.
        :param reserved_networks: more networks no request may name (they may still be
            ``default_network_ids``, which the operator, not a request, chooses).
        :param allowed_networks: when set, the only networks a request may name.
        :param allowed_security_groups: when set, the only security groups a request may name.
            Entries of these lists are ids or names, compared after resolving both sides to
            ids, so a name cannot slip past an id (or the reverse).
        """
        sources = [s for s in (clouds_yaml, clouds_yaml_content, connection) if s is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of clouds_yaml, clouds_yaml_content or connection")
        if _version(microversion) < _version(MIN_MICROVERSION):
            raise ValueError(f"microversion must be at least {MIN_MICROVERSION}")
        if (
            not managed_tag
            or len(managed_tag) > 60
            or managed_tag.startswith(RESERVED_TAG_PREFIXES)
        ):
            raise ValueError("managed_tag must be 1-60 characters without a reserved prefix")
        if delete_attempts < 1:
            raise ValueError("delete_attempts must be at least 1")
        self.cloud = cloud
        self.microversion = microversion
        self.api_timeout = api_timeout
        self.default_flavor = default_flavor
        self.default_image = default_image
        self.default_network_ids = tuple(default_network_ids)
        self.bare_metal_flavors = frozenset(bare_metal_flavors)
        self.managed_tag = managed_tag
        self.delete_attempts = delete_attempts
        self.delete_backoff = delete_backoff
        self._clouds_yaml = clouds_yaml
        self._clouds_yaml_content = clouds_yaml_content
        self._connection = connection
        self._owns_connection = connection is None
        self._checked = False
        self._lock = threading.Lock()
        self._image_lookup: ImageLookup = image_lookup or _GlanceImageLookup(self, image_owner)
        self._lookups = _TTLCache(lookup_cache_seconds)
        self.management_networks = tuple(management_networks)
        self.reserved_networks = tuple(reserved_networks)
        self.allowed_networks = None if allowed_networks is None else tuple(allowed_networks)
        self.allowed_security_groups = (
            None if allowed_security_groups is None else tuple(allowed_security_groups)
        )
        #: Held from choosing a server group until the server that joins it is created, and
        #: while empty groups are deleted: a group is never deleted under a build using it.
        self._groups_lock = threading.RLock()
        #: Server id -> ids of its scoped server groups, checked once the server is gone.
        self._leaving: dict[str, list[str]] = {}
        install_log_redaction()

    # -- connection -------------------------------------------------------------------------

    @property
    def connection(self) -> openstack.connection.Connection:
        """The openstacksdk connection, made on first use with the pinned microversion."""
        with self._lock:
            if self._connection is None:
                self._connection = self._connect()
            return self._connection

    def _connect(self) -> openstack.connection.Connection:
        try:
            return connect(
                clouds_yaml=self._clouds_yaml,
                clouds_yaml_content=self._clouds_yaml_content,
                cloud=self.cloud,
                compute_api_version=self.microversion,
                api_timeout=self.api_timeout,
                # The caller retries with backoff (errors say whether to); no hidden waits here.
                connect_retries=0,
                status_code_retries=0,
            )
        except CloudConfigError as e:
            problem = str(e)  # written to carry no text of the file
        except (openstack.exceptions.SDKException, ValueError) as e:
            # openstacksdk's own messages name settings, not values; still, say only the kind.
            problem = f"{type(e).__name__} while loading the cloud {self.cloud or '(only)'}"
        raise AmphoraComputeError(
            f"cannot read the cloud configuration: {problem}",
            reason=Reason.INVALID_INPUT,
            retryable=False,
        )

    @property
    def _compute(self) -> Any:
        """The compute proxy, checked once to speak the pinned microversion."""
        compute = self.connection.compute
        if not self._checked:
            pinned = compute.default_microversion
            if pinned is None or _version(pinned) < _version(MIN_MICROVERSION):
                raise AmphoraComputeError(
                    f"the compute connection must pin microversion >= {MIN_MICROVERSION} "
                    f"(compute_api_version), not {pinned}",
                    reason=Reason.INVALID_INPUT,
                    retryable=False,
                )
            self._checked = True
        return compute

    def close(self) -> None:
        """Close the HTTP sessions of a connection this driver made."""
        with self._lock:
            if self._owns_connection and self._connection is not None:
                self._connection.close()
                self._connection = None
                self._checked = False
            self._lookups.clear()

    # -- build ------------------------------------------------------------------------------

    def validate(self, request: BuildRequest) -> None:
        """Refuse what Nova cannot take, before any API call."""
        own_tags = 3 if request.owner else 2
        if len(request.tags) + own_tags > MAX_TAGS:
            raise invalid(
                "tags",
                f"tags: at most {MAX_TAGS - own_tags} tags are allowed with the driver's own "
                f"{own_tags}, got {len(request.tags)}",
            )
        for tag in request.tags:
            if tag == self.managed_tag or tag.startswith(RESERVED_TAG_PREFIXES):
                raise invalid("tags", f"tags: {tag!r} uses a tag reserved for the driver")
        if not (request.amphora_flavor or self.default_flavor):
            raise invalid("amphora_flavor", "amphora_flavor: required (no default_flavor)")
        if not (request.image_id or self.default_image):
            raise invalid("image_id", "image_id: required (no default_image)")
        if not (request.network_ids or self.default_network_ids or self.management_networks):
            raise invalid(
                "network_ids",
                "network_ids: give at least one network id (no default_network_ids or "
                "management_networks); the "
                "driver never lets Nova pick ('auto' fails when several networks exist)",
            )
        self._user_data(request)

    def create(self, request: BuildRequest) -> str:
        """Resolve flavor, image, networks, security groups and server group, then POST."""
        user_data = self._user_data(request)
        flavor_id = self._flavor(request)
        image_id = self._image(request.image_id or self.default_image or "")
        requested = [(n, self._network(n)) for n in request.network_ids]
        self._check_networks(requested)
        groups = [(g, self._security_group(g)) for g in request.sec_groups]
        self._check_security_groups(groups)
        chosen = [i for _, i in requested] or [self._network(n) for n in self.default_network_ids]
        management = [self._network(n) for n in self.management_networks]
        attrs: dict[str, Any] = {
            "name": request.name,
            "flavor_id": flavor_id,
            "image_id": image_id,
            "networks": [{"uuid": i} for i in _unique([*management, *chosen])],
            "tags": self._tags(request),
            "config_drive": True,
        }
        if user_data is not None:
            attrs["user_data"] = user_data
        if groups:
            attrs["security_groups"] = [{"name": i} for _, i in groups]
        if request.availability_zone:
            attrs["availability_zone"] = request.availability_zone
        if request.server_group is None:
            return self._create_server(request, attrs)
        with self._groups_lock:  # the group cannot be swept before the server joins it
            attrs["scheduler_hints"] = {"group": self._server_group(request.server_group)}
            return self._create_server(request, attrs)

    def _create_server(self, request: BuildRequest, attrs: dict[str, Any]) -> str:
        LOG.info(
            "creating Nova server name=%s owner=%s type=%s flavor=%s image=%s networks=%s",
            request.name,
            request.owner,
            request.amphora_type.value,
            attrs["flavor_id"],
            attrs["image_id"],
            [n["uuid"] for n in attrs["networks"]],
        )
        try:
            server = self._compute.create_server(**attrs)
        except API_ERRORS as e:
            raise api_error(e, f"create server {request.name}", AmphoraBuildError) from e
        return str(server.id)

    def _user_data(self, request: BuildRequest) -> str | None:
        try:
            return render_user_data(
                files=request.config_drive_files, keys=request.keys, user_data=request.user_data
            )
        except UserDataTooLarge as e:
            field = "config_drive_files" if request.config_drive_files else "user_data"
            sizes = ", ".join(
                f"{path}: {len(content)} bytes"
                for path, content in request.config_drive_files.items()
            )
            raise invalid(
                field,
                f"{field}: {e} (files: {sizes or 'none'}; user_data: "
                f"{len(request.user_data or b'')} bytes); random or already compressed content "
                "does not shrink: send fewer or smaller files",
            ) from e

    def _tags(self, request: BuildRequest) -> list[str]:
        tags = [self.managed_tag, f"{TYPE_TAG_PREFIX}{request.amphora_type.value}"]
        if request.owner is not None:
            tags.append(f"{OWNER_TAG_PREFIX}{request.owner}")
        return tags + [t for t in request.tags if t not in tags]

    def _flavor(self, request: BuildRequest) -> str:
        """Find the flavor (cached) by id, then by name, and check it suits the amphora type."""
        ref = request.amphora_flavor or self.default_flavor or ""
        flavor = self._lookups.get("flavor", ref, lambda: self._find_flavor(ref))
        wanted = request.amphora_type is AmphoraType.BARE_METAL
        if flavor.bare_metal != wanted:
            rule = (
                "a BareMetal amphora needs a bare-metal flavor (extra specs "
                "resources:CUSTOM_<CLASS>=1 and resources:VCPU/MEMORY_MB/DISK_GB=0, or listed "
                "in bare_metal_flavors)"
                if wanted
                else "a VM amphora cannot use a bare-metal flavor"
            )
            raise invalid("amphora_flavor", f"flavor {ref!r}: {rule}")
        return flavor.id

    def _find_flavor(self, ref: str) -> _Flavor:
        try:
            flavor = self._compute.get_flavor(ref)
        except openstack.exceptions.NotFoundException as by_id:
            try:  # is_public=none: private flavors too (bare-metal flavors often are)
                matches = [f for f in self._compute.flavors(is_public="none") if f.name == ref]
            except API_ERRORS as e:
                raise api_error(e, f"list flavors for {ref!r}", AmphoraBuildError) from e
            if len(matches) != 1:
                raise AmphoraBuildError(
                    f"amphora_flavor: {len(matches) or 'no'} flavors have the id or name {ref!r}",
                    reason=Reason.AMBIGUOUS_MATCH if matches else Reason.FLAVOR_NOT_FOUND,
                    retryable=False,
                    field="amphora_flavor",
                ) from by_id
            flavor = matches[0]
        except API_ERRORS as e:
            raise api_error(e, f"look up flavor {ref!r}", AmphoraBuildError) from e
        bare_metal = (
            flavor.id in self.bare_metal_flavors
            or flavor.name in self.bare_metal_flavors
            or is_bare_metal_flavor(flavor.extra_specs or {})
        )
        return _Flavor(id=str(flavor.id), bare_metal=bare_metal)

    def _image(self, ref: str) -> str:
        """An id passes through; ``tag:<t>`` or a name becomes the newest ACTIVE image's id."""
        if _UUID.match(ref):
            return ref
        tag = ref.removeprefix("tag:") if ref.startswith("tag:") else None
        name = None if tag is not None else ref
        try:
            candidates = self._image_lookup(name=name, tag=tag)
        except NO_SERVICE as e:
            raise AmphoraBuildError(
                f"image_id: {ref!r} is not an image id, and no image service is reachable to "
                "resolve names and tags; give the image's UUID",
                reason=Reason.IMAGE_NOT_FOUND,
                retryable=False,
                field="image_id",
            ) from e
        except API_ERRORS as e:
            raise api_error(e, f"look up image {ref!r}", AmphoraBuildError) from e
        if not candidates:
            what = f"tag {tag!r}" if tag is not None else f"name {name!r}"
            raise AmphoraBuildError(
                f"image_id: no ACTIVE image has the {what}",
                reason=Reason.IMAGE_NOT_FOUND,
                retryable=False,
                field="image_id",
            )
        return max(candidates, key=lambda c: (c.created_at, c.id)).id

    def _network(self, ref: str) -> str:
        """A network's id from its id or name, through Neutron (cached while found)."""
        return self._lookups.get(
            "network", ref, lambda: self._neutron_id("network_ids", "network", ref)
        )

    def _security_group(self, ref: str) -> str:
        """A security group's id from its id or name, through Neutron (cached while found)."""
        return self._lookups.get(
            "security_group", ref, lambda: self._neutron_id("sec_groups", "security group", ref)
        )

    def _neutron_id(self, field: str, kind: str, ref: str) -> str:
        """Resolve ``ref`` (id or exact name) to exactly one id; terminal errors name it.

        Without a network service in the catalog, ids pass through to Nova (which checks
        them) and names are refused: nothing else could resolve them.
        """
        reason = Reason.NETWORK_NOT_FOUND if kind == "network" else Reason.INVALID_INPUT
        try:  # the catalog is read on first use: authentication may fail here
            has_network = self.connection.has_service("network")
        except API_ERRORS as e:
            raise api_error(e, f"look up {kind} {ref!r}", AmphoraBuildError) from e
        if not has_network:
            if _UUID.match(ref):
                return ref
            raise AmphoraBuildError(
                f"{field}: {kind} {ref!r} is not an id, and no network service is reachable "
                "to resolve names; give its UUID",
                reason=reason,
                retryable=False,
                field=field,
            )
        network = self.connection.network
        found: Any
        try:
            if kind == "network":
                found = network.find_network(ref, ignore_missing=True)
            else:  # names are per project, as when Nova resolves them
                project = self.connection.current_project_id
                scope = {"project_id": project} if project else {}
                found = network.find_security_group(ref, ignore_missing=True, **scope)
        except openstack.exceptions.DuplicateResource as e:
            raise AmphoraBuildError(
                f"{field}: several {kind}s are named {ref!r}; give the id of one",
                reason=Reason.AMBIGUOUS_MATCH,
                retryable=False,
                field=field,
            ) from e
        except API_ERRORS as e:
            raise api_error(e, f"look up {kind} {ref!r}", AmphoraBuildError) from e
        if found is None:
            raise AmphoraBuildError(
                f"{field}: no {kind} has the id or name {ref!r}",
                reason=reason,
                retryable=False,
                field=field,
            )
        return str(found.id)

    # -- the profile's tenancy rules ------------------------------------------------------

    def _check_networks(self, requested: Sequence[tuple[str, str]]) -> None:
        """Refuse reserved networks and, with an allow-list, any other network (terminal)."""
        reserved = self._ids("network", (*self.management_networks, *self.reserved_networks))
        allowed = (
            None if self.allowed_networks is None else self._ids("network", self.allowed_networks)
        )
        for ref, network_id in requested:
            if network_id in reserved:
                raise _not_allowed(
                    "network_ids",
                    f"network {ref!r} is reserved for the operator's own use (profile options "
                    "management_networks, reserved_networks)",
                )
            if allowed is not None and network_id not in allowed:
                raise _not_allowed(
                    "network_ids",
                    f"network {ref!r} is not allowed by the profile (allowed_networks: "
                    f"{', '.join(self.allowed_networks or ()) or 'none'})",
                )

    def _check_security_groups(self, requested: Sequence[tuple[str, str]]) -> None:
        if self.allowed_security_groups is None:
            return
        allowed = self._ids("security_group", self.allowed_security_groups)
        listed = ", ".join(self.allowed_security_groups) or "none"
        for ref, group_id in requested:
            if group_id not in allowed:
                raise _not_allowed(
                    "sec_groups",
                    f"security group {ref!r} is not allowed by the profile "
                    f"(allowed_security_groups: {listed})",
                )

    def _ids(self, kind: str, refs: Sequence[str]) -> set[str]:
        """Ids of a rule's entries (ids or names); an entry that names nothing (a network
        deleted since) matches nothing, while lookups that fail for other reasons raise."""
        resolve = self._network if kind == "network" else self._security_group
        ids = set()
        for ref in refs:
            try:
                ids.add(resolve(ref))
            except AmphoraBuildError as e:
                if e.reason not in (Reason.NETWORK_NOT_FOUND, Reason.INVALID_INPUT):
                    raise
                ids.add(ref)  # compared literally: an id Neutron no longer knows
        return ids

    # -- server groups ----------------------------------------------------------------------

    def _group_name(self, group: ServerGroup) -> str:
        """The Nova name of ``group``: scoped groups carry the managed tag and their scope
        (``<managed_tag>:<scope>:<name>``), so equal names of two scopes never meet."""
        if group.scope is None:
            return group.name
        return f"{self.managed_tag}:{group.scope}:{group.name}"

    def _is_scoped(self, nova_name: str | None) -> bool:
        return bool(nova_name) and str(nova_name).startswith(f"{self.managed_tag}:")

    def _server_group(self, group: ServerGroup) -> str:
        """Reuse the server group of that (scoped) name, or create it (racing creators agree)."""
        try:
            same = self._groups_named(group)
            if same:
                chosen = min(same, key=lambda g: g.id)
            else:
                created = self._compute.create_server_group(
                    name=self._group_name(group), policy=group.policy.value
                )
                # Two builds may create the group at once: both keep the lowest id.
                chosen = min(self._groups_named(group) or [created], key=lambda g: g.id)
                if chosen.id != created.id:
                    self._compute.delete_server_group(created.id, ignore_missing=True)
        except API_ERRORS as e:
            raise api_error(e, f"server group {group.name}", AmphoraBuildError) from e
        if chosen.policy != group.policy.value:
            raise invalid(
                "server_group",
                f"server_group: a group named {group.name!r} exists with policy "
                f"{chosen.policy!r}, not {group.policy.value!r}",
            )
        return str(chosen.id)

    def _groups_named(self, group: ServerGroup) -> list[Any]:
        name = self._group_name(group)
        return [g for g in self._compute.server_groups() if g.name == name]

    def _note_leaving(self, amphora_id: str) -> None:
        """Before deleting a server: remember its scoped groups, and delete scoped groups
        that are already empty (left over from a restart or a failed create)."""
        with self._groups_lock:
            groups = [g for g in self._compute.server_groups() if self._is_scoped(g.name)]
            mine = [g.id for g in groups if amphora_id in (g.member_ids or ())]
            if mine:
                self._leaving[amphora_id] = mine
            for group in groups:
                if not group.member_ids:
                    self._delete_group(group.id)

    def _groups_left(self, amphora_id: str) -> None:
        """The server is gone (seen by id, missing from a full listing, or listed DELETED by
        changes-since, which is how the operator's poller confirms deletions): delete each of
        its scoped groups it was the last member of. A group that still lists the server
        (Nova drops members a moment after it reports the server DELETED) is kept for a later
        look, so that no group is forgotten."""
        with self._groups_lock:
            waiting = []
            for group_id in self._leaving.pop(amphora_id, ()):
                try:
                    group = self._compute.get_server_group(group_id)
                except openstack.exceptions.NotFoundException:
                    continue
                if amphora_id in (group.member_ids or ()):
                    waiting.append(group_id)
                elif not group.member_ids:
                    self._delete_group(group_id)
            if waiting:
                self._leaving[amphora_id] = waiting

    def _delete_group(self, group_id: str) -> None:
        self._compute.delete_server_group(group_id, ignore_missing=True)
        LOG.info("deleted empty server group %s", group_id)

    # -- observe ----------------------------------------------------------------------------

    def find(
        self,
        *,
        amphora_id: str | None = None,
        name: str | None = None,
        owner: str | None = None,
    ) -> list[AmphoraInstance]:
        """By id: GET the server. Otherwise list the servers with the managed (owner) tags."""
        try:
            if amphora_id is not None:
                servers = self._server_or_none(amphora_id)
                if not servers and amphora_id in self._leaving:
                    self._groups_left(amphora_id)
            else:
                query: dict[str, Any] = {"tags": self.managed_tag}
                if owner is not None:
                    query["tags"] += f",{OWNER_TAG_PREFIX}{owner}"
                if name is not None:
                    query["name"] = f"^{re.escape(name)}$"  # Nova's name filter is a regex
                servers = list(self._compute.servers(**query))
                if owner is None and name is None:  # every managed server: who has left?
                    listed = {s.id for s in servers}
                    with self._groups_lock:
                        left = [i for i in self._leaving if i not in listed]
                    for amphora_left in left:
                        self._groups_left(amphora_left)
        except API_ERRORS as e:
            raise api_error(e, "list servers") from e
        found = [self._instance(s) for s in servers]
        return [
            i
            for i in found
            if (name is None or i.name == name) and (owner is None or i.owner == owner)
        ]

    def find_owners(self, owners: Sequence[str]) -> list[AmphoraInstance]:
        """One listing for many owners: our managed tag and any of their owner tags
        (``tags-any``), in slices that keep the query string short."""
        wanted = list(dict.fromkeys(owners))
        found: list[AmphoraInstance] = []
        for start in range(0, len(wanted), OWNERS_PER_LISTING):
            chunk = set(wanted[start : start + OWNERS_PER_LISTING])
            any_tags = ",".join(sorted(f"{OWNER_TAG_PREFIX}{o}" for o in chunk))
            try:
                servers = list(self._compute.servers(tags=self.managed_tag, any_tags=any_tags))
            except API_ERRORS as e:
                raise api_error(e, "list servers") from e
            found += [i for i in map(self._instance, servers) if i.owner in chunk]
        return found

    def changed_since(self, since: datetime) -> list[AmphoraInstance]:
        """One listing of the servers Nova changed since ``since`` (``changes-since``, which
        includes deleted servers). Not filtered by our tag: Nova drops a server's tags when it
        is deleted, and a tag filter would hide exactly the deletions a poller waits for.
        Nova compares ``updated_at``: a server it deletes locally (its compute service deemed
        down) is not reported, which a caller's lookups by id and full listings cover."""
        stamp = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            servers = list(self._compute.servers(details=True, changes_since=stamp))
            deleted = [s.id for s in servers if str(s.status).upper() == "DELETED"]
            for amphora_left in [i for i in deleted if i in self._leaving]:
                self._groups_left(amphora_left)
        except API_ERRORS as e:
            raise api_error(e, "list changed servers") from e
        return [
            self._instance(s)
            for s in servers
            if self.managed_tag in (s.tags or ()) or s.id in deleted
        ]

    def _server_or_none(self, amphora_id: str) -> list[Any]:
        try:
            return [self._compute.get_server(amphora_id)]
        except openstack.exceptions.NotFoundException:
            return []

    def _server(self, amphora_id: str) -> Any:
        try:
            return self._compute.get_server(amphora_id)
        except openstack.exceptions.NotFoundException as e:
            raise InstanceNotFoundError(f"no Nova server with id {amphora_id}") from e
        except API_ERRORS as e:
            raise api_error(e, f"get server {amphora_id}") from e

    def _instance(self, server: Any) -> AmphoraInstance:
        status = str(server.status or "UNKNOWN").upper()
        task_state = server.task_state
        tags = tuple(server.tags or ())
        if task_state == "deleting":
            state = AmphoraState.DELETING
        else:
            state = _STATUS_STATES.get(status, AmphoraState.UNKNOWN)
        fault = None
        if state is AmphoraState.ERROR:
            fault = (server.fault or {}).get("message") or "Nova reports ERROR without a fault"
        return AmphoraInstance(
            id=server.id,
            name=server.name or "",
            amphora_type=_tag_value(tags, TYPE_TAG_PREFIX, AmphoraType) or AmphoraType.VM,
            state=state,
            raw_state=f"{status}/{task_state}",
            addresses=tuple(_addresses(server.addresses or {})),
            fault=fault,
            owner=_tag_value(tags, OWNER_TAG_PREFIX, str),
            tags=tuple(
                t for t in tags if t != self.managed_tag and not t.startswith(RESERVED_TAG_PREFIXES)
            ),
        )

    # -- lifecycle --------------------------------------------------------------------------

    def delete(self, amphora_id: str) -> None:
        """DELETE the server; gone already is success.

        Failures whose error is ``retryable`` (5xx, 429, 409, timeouts, no connection) are
        retried in place, at most ``delete_attempts`` tries, then raised; terminal ones (401,
        403) at once.
        """
        try:
            self._note_leaving(amphora_id)
        except API_ERRORS as e:  # groups are tidied later; the delete matters now
            LOG.warning("server groups of %s not checked: %s", amphora_id, type(e).__name__)
        for attempt in range(1, self.delete_attempts + 1):
            try:
                self._compute.delete_server(amphora_id, ignore_missing=True)
                LOG.info("delete of Nova server %s accepted", amphora_id)
                return
            except API_ERRORS as e:
                error = api_error(e, f"delete server {amphora_id}", DeleteFailed)
                if not error.retryable or attempt == self.delete_attempts:
                    raise error from e
                LOG.warning("delete of %s failed (%s); retrying", amphora_id, error.reason)
            time.sleep(self.delete_backoff * 2 ** (attempt - 1))

    def release(self, amphora_id: str) -> None:
        """Remove the owner tag (one tag DELETE); the server and its other tags stay."""
        server = self._server_or_none_checked(amphora_id)
        if server is None:
            return
        for tag in server.tags or ():
            if not tag.startswith(OWNER_TAG_PREFIX):
                continue
            try:
                server.remove_tag(self._compute, tag)
            except openstack.exceptions.NotFoundException:
                return  # the server (or the tag) went meanwhile
            except API_ERRORS as e:
                raise api_error(e, f"release server {amphora_id}") from e
        LOG.info("Nova server %s released (owner tag removed)", amphora_id)

    def _server_or_none_checked(self, amphora_id: str) -> Any:
        try:
            found = self._server_or_none(amphora_id)
        except API_ERRORS as e:
            raise api_error(e, f"get server {amphora_id}") from e
        return found[0] if found else None

    def suspend(self, amphora_id: str) -> None:
        """Suspend a VM (memory kept) or power off a bare-metal server; no-op if already down."""
        instance = self._instance(self._server(amphora_id))
        if instance.state is AmphoraState.SUSPENDED:
            return
        action = (
            self._compute.stop_server
            if instance.amphora_type is AmphoraType.BARE_METAL
            else self._compute.suspend_server
        )
        self._act(action, amphora_id, "suspend")

    def resume(self, amphora_id: str) -> None:
        """Bring the server back the way it went down; NotSuspendedError when it is not down."""
        server = self._server(amphora_id)
        status = str(server.status or "").upper()
        actions = {
            "SUSPENDED": self._compute.resume_server,
            "SHUTOFF": self._compute.start_server,
            "PAUSED": self._compute.unpause_server,
            "SHELVED": self._compute.unshelve_server,
            "SHELVED_OFFLOADED": self._compute.unshelve_server,
        }
        if status not in actions or server.task_state == "deleting":
            raise NotSuspendedError(
                f"amphora {amphora_id} is not suspended (Nova status {status}/{server.task_state})"
            )
        self._act(actions[status], amphora_id, "resume")

    def _act(self, action: Any, amphora_id: str, what: str) -> None:
        try:
            action(amphora_id)
        except openstack.exceptions.NotFoundException as e:
            raise InstanceNotFoundError(f"no Nova server with id {amphora_id}") from e
        except API_ERRORS as e:
            raise api_error(e, f"{what} server {amphora_id}") from e
        LOG.info("%s of Nova server %s accepted", what, amphora_id)


# -- helpers ------------------------------------------------------------------------------------


def _not_allowed(field: str, message: str) -> AmphoraBuildError:
    """A terminal refusal by the profile's rules, naming the field and the rule."""
    return AmphoraBuildError(
        f"{field}: {message}", reason=NOT_ALLOWED, retryable=False, field=field
    )


def _unique(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _tag_value(tags: Sequence[str], prefix: str, kind: Callable[[str], _T]) -> _T | None:
    """The value of the first tag with ``prefix``, converted; None when absent or invalid."""
    for tag in tags:
        if tag.startswith(prefix):
            try:
                return kind(tag[len(prefix) :])
            except ValueError:
                return None
    return None


def _addresses(addresses: Mapping[str, Any]) -> Iterator[str]:
    """Fixed addresses first, network by network, then floating ones."""
    entries = [a for network in addresses.values() for a in network]
    entries.sort(key=lambda a: a.get("OS-EXT-IPS:type") == "floating")
    for entry in entries:
        if entry.get("addr"):
            yield str(entry["addr"])


def _version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)
