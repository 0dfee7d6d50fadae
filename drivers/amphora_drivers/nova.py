"""The Nova driver: VM and bare-metal amphorae as Nova servers, through openstacksdk.

How the spec's fields reach Nova (compute microversion pinned, default ``2.64``: tags at
create need 2.52, ``networks`` is required from 2.37, server-group ``policy`` needs 2.64)::

    amphora_flavor      flavorRef, looked up by id, then by name (private flavors too)
    image_id            imageRef: a UUID passes straight through (Nova validates it);
                        ``tag:<tag>`` or a plain name is resolved to the newest ACTIVE image
                        through the image service (see ImageLookup)
    network_ids         networks=[{"uuid": ...}] (never ``auto``: an empty list is an error)
    sec_groups          security_groups=[{"name": ...}] (Nova accepts names or ids)
    keys                cloud-init ``ssh_authorized_keys`` (no Nova keypair: several keys,
                        nothing to create or clean up, no per-user keypair namespace)
    config_drive_files  cloud-init ``write_files`` (``encoding: gz+b64``, mode 0600, root),
                        always with ``config_drive=True`` (Nova's file injection ended at 2.56)
    user_data           kept byte for byte as the first part of a MIME multipart document whose
                        second part is the driver's cloud-config; that part carries
                        ``merge_how`` (list append, dict no_replace) so a user cloud-config's own
                        write_files / ssh_authorized_keys are extended, not replaced. User data
                        that is already MIME multipart gets the part appended instead.
    availability_zone   availability_zone
    server_group        a Nova server group with that name and policy (reused by name, created
                        when missing), passed as the ``group`` scheduler hint
    owner, tags         server tags: ``amphora-owner:<owner>``, ``amphora-type:<type>``, the
                        managed tag (default ``amphora-operator``) and the user's tags

Nova limits ``user_data`` to 65535 bytes of base64. Files are gzipped one by one; when the
whole document still does not fit, it is gzipped as a whole (cloud-init decompresses gzip
user data); when even that does not fit (e.g. five 10 KiB files of random bytes), the build is
refused with AmphoraBuildError(reason InvalidInput, field config_drive_files or user_data)
before Nova is called.

BareMetal versus VM: a BareMetal amphora is a Nova server on an Ironic node, built, observed
and deleted exactly like a VM, but its flavor must be a bare-metal flavor: either listed in
``bare_metal_flavors``, or following Nova's Ironic convention (extra specs
``resources:CUSTOM_<CLASS>=1`` and ``resources:VCPU``/``MEMORY_MB``/``DISK_GB`` ``=0``). A VM
request with a bare-metal flavor is refused the same way. Ironic cannot suspend, so
``suspend()`` powers a BareMetal server off (SHUTOFF) and ``resume()`` powers it on. Builds take
minutes rather than seconds (callers poll status()).

Status mapping (``raw_state`` keeps Nova's ``<status>/<task_state>``)::

    BUILD, REBUILD, REBOOT, HARD_REBOOT                 BUILDING
    ACTIVE, PASSWORD, RESIZE, VERIFY_RESIZE,
    REVERT_RESIZE, MIGRATING                            ACTIVE
    SUSPENDED, SHUTOFF, PAUSED, SHELVED(_OFFLOADED)     SUSPENDED (resume() knows each way back)
    ERROR                                               ERROR, with the fault message
    DELETED, SOFT_DELETED                               DELETED
    any status with task_state ``deleting``             DELETING
    anything else (RESCUE, UNKNOWN...)                  UNKNOWN

Errors: quota (403) → QuotaExceeded, retryable; 5xx → BackendUnavailable (NoValidHost when Nova
says so), 429 → RateLimited, timeouts → Timeout, connection failures → BackendUnavailable, all
retryable; 400s name the field (ImageNotFound, FlavorNotFound, NetworkNotFound, InvalidKey,
InvalidInput) and are not retryable; 409 → Conflict, retryable. Nova schedules asynchronously,
so "No valid host" normally shows as state ERROR with that fault, not as an exception.

Nothing here logs user data, keys or file contents. keystoneauth logs request and response
bodies at DEBUG; a filter installed on its loggers blanks ``user_data`` in those lines.
"""

from __future__ import annotations

import base64
import email.policy
import gzip
import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.message import Message
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any, ClassVar, Protocol, TypeVar

import openstack.connection
import openstack.exceptions
import yaml
from keystoneauth1 import exceptions as ksa_exceptions
from openstack.config.loader import OpenStackConfig

from amphora_drivers.base import AmphoraComputeDriver
from amphora_drivers.exceptions import (
    AmphoraBuildError,
    AmphoraComputeError,
    DeleteFailed,
    InstanceNotFoundError,
    NotSuspendedError,
    Reason,
)
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
    "NOVA_USER_DATA_LIMIT",
    "ImageCandidate",
    "ImageLookup",
    "NovaDriver",
    "UserDataTooLarge",
    "connect",
    "is_bare_metal_flavor",
    "render_user_data",
]

LOG = logging.getLogger(__name__)

#: The lowest compute microversion the driver works with (server-group ``policy``).
MIN_MICROVERSION = "2.64"
#: Nova's limit on the base64-encoded ``user_data`` (bytes).
NOVA_USER_DATA_LIMIT = 65535
OWNER_TAG_PREFIX = "amphora-owner:"
TYPE_TAG_PREFIX = "amphora-type:"
RESERVED_TAG_PREFIXES = (OWNER_TAG_PREFIX, TYPE_TAG_PREFIX)
#: cloud-init merge rules for the driver's part: extend the user's lists and keep their keys.
MERGE_HOW = [
    {"name": "list", "settings": ["append"]},
    {"name": "dict", "settings": ["no_replace", "recurse_list"]},
]
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
_GZIP_MAGIC = b"\x1f\x8b"
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
# The message fragments of Nova's 400s, checked in order, and the field they are about.
_BAD_REQUEST_FIELDS = (
    ("security group", Reason.INVALID_INPUT, "sec_groups"),
    ("availability zone", Reason.INVALID_INPUT, "availability_zone"),
    ("user_data", Reason.INVALID_INPUT, "user_data"),
    ("image", Reason.IMAGE_NOT_FOUND, "image_id"),
    ("flavor", Reason.FLAVOR_NOT_FOUND, "amphora_flavor"),
    ("network", Reason.NETWORK_NOT_FOUND, "network_ids"),
    ("key", Reason.INVALID_KEY, "keys"),
    ("group", Reason.INVALID_INPUT, "server_group"),
    ("tag", Reason.INVALID_INPUT, "tags"),
)


# -- user data ------------------------------------------------------------------------------


class UserDataTooLarge(ValueError):
    """The rendered user data does not fit Nova's limit even gzipped."""

    def __init__(self, encoded_size: int) -> None:
        super().__init__(
            f"user data would be {encoded_size} bytes of base64 even gzipped; Nova accepts at "
            f"most {NOVA_USER_DATA_LIMIT}"
        )
        self.encoded_size = encoded_size


def render_user_data(
    *, files: Mapping[str, bytes], keys: Sequence[str], user_data: bytes | None
) -> str | None:
    """Return Nova's base64 ``user_data`` carrying the files, keys and user data, or None.

    Raises UserDataTooLarge when the result cannot fit Nova's 65535-byte limit.
    """
    own = _cloud_config(files, keys)
    if own is None:
        document = user_data
    elif user_data is None:
        document = own
    else:
        document = _multipart(user_data, own)
    if document is None:
        return None
    encoded = base64.b64encode(document)
    if len(encoded) > NOVA_USER_DATA_LIMIT:
        encoded = base64.b64encode(gzip.compress(document, mtime=0))
    if len(encoded) > NOVA_USER_DATA_LIMIT:
        raise UserDataTooLarge(len(encoded))
    return encoded.decode("ascii")


def _cloud_config(files: Mapping[str, bytes], keys: Sequence[str]) -> bytes | None:
    """The driver's own cloud-config part, or None when it has nothing to say."""
    if not files and not keys:
        return None
    config: dict[str, Any] = {"merge_how": MERGE_HOW}
    if keys:
        config["ssh_authorized_keys"] = list(keys)
    if files:
        config["write_files"] = [
            {
                "path": path,
                "encoding": "gz+b64",
                "content": base64.b64encode(gzip.compress(content, mtime=0)).decode("ascii"),
                "owner": "root:root",
                "permissions": "0600",
            }
            for path, content in files.items()
        ]
    # A huge width keeps base64 on one line; safe_dump escapes any non-ASCII path.
    text = yaml.safe_dump(config, default_flow_style=False, sort_keys=False, width=1 << 30)
    return b"#cloud-config\n" + text.encode("ascii")


def _multipart(user_data: bytes, own: bytes) -> bytes:
    """Combine the user's data (kept as given) with the driver's cloud-config part."""
    part = MIMEText(own.decode("ascii"), "cloud-config", "us-ascii")
    part.add_header("Content-Disposition", "attachment", filename="amphora-driver.cfg")
    head = user_data.lstrip()[:64].lower()
    if head.startswith((b"content-type: multipart/", b"mime-version:")):
        existing = email.message_from_bytes(user_data, policy=email.policy.compat32)
        if existing.is_multipart():
            existing.attach(part)
            return existing.as_bytes()
    container = MIMEMultipart()
    container.attach(_user_part(user_data))
    container.attach(part)
    return container.as_bytes()


def _user_part(user_data: bytes) -> Message:
    """The user's data as a MIME part that cloud-init types by content, as it would unwrapped."""
    if user_data.startswith(_GZIP_MAGIC):
        return MIMEApplication(user_data, "x-gzip")  # cloud-init gunzips, then sniffs
    try:
        user_data.decode("utf-8")
    except UnicodeDecodeError:
        return MIMEApplication(user_data, "octet-stream")
    # text/plain makes cloud-init sniff the type (#cloud-config, #!, ## template: jinja...);
    # 8bit with surrogate-escaped text makes the generator write the bytes unchanged.
    part = Message()
    part["Content-Type"] = 'text/plain; charset="utf-8"'
    part["Content-Transfer-Encoding"] = "8bit"
    part.set_payload(user_data.decode("ascii", "surrogateescape"))
    return part


# -- images and flavors -----------------------------------------------------------------------


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
    """The default ImageLookup: the cloud's image service through openstacksdk.

    Not exercised against a real Glance by the tests: the Nova box's Glance is an in-process
    stub with no HTTP endpoint. The tests cover resolution with an injected lookup, and this
    class's failure when no image service is reachable.
    """

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


def is_bare_metal_flavor(extra_specs: Mapping[str, Any]) -> bool:
    """True for Nova's Ironic flavor convention: one custom resource class, no VCPU/RAM/disk."""
    custom = [
        k for k, v in extra_specs.items() if k.startswith("resources:CUSTOM_") and str(v) == "1"
    ]
    zeroed = all(
        str(extra_specs.get(f"resources:{rc}", "")) == "0" for rc in _STANDARD_RESOURCE_CLASSES
    )
    return len(custom) == 1 and zeroed


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
        :param default_image: image (see the module docstring) when a request names none.
        :param default_network_ids: networks when a request names none.
        :param bare_metal_flavors: flavor ids or names to treat as bare metal even without the
            Ironic extra-spec convention.
        :param image_owner: only resolve image names and tags to images of this project.
        :param image_lookup: resolves image names and tags; defaults to the cloud's image
            service. Image UUIDs never need it.
        :param managed_tag: the tag marking every server this driver builds; find() with no
            criteria lists the servers carrying it.
        :param delete_attempts: tries of one delete() on transient errors (bounded retries).
        :param delete_backoff: seconds before the second try, doubled for each next one.
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
        _install_log_redaction()

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
        except (openstack.exceptions.SDKException, yaml.YAMLError, ValueError) as e:
            raise AmphoraComputeError(
                f"cannot read the cloud configuration: {e}",
                reason=Reason.INVALID_INPUT,
                retryable=False,
            ) from e

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

    # -- build ------------------------------------------------------------------------------

    def validate(self, request: BuildRequest) -> None:
        """Refuse what Nova cannot take, before any API call."""
        own_tags = 3 if request.owner else 2
        if len(request.tags) + own_tags > MAX_TAGS:
            raise _invalid(
                "tags",
                f"tags: at most {MAX_TAGS - own_tags} tags are allowed with the driver's own "
                f"{own_tags}, got {len(request.tags)}",
            )
        for tag in request.tags:
            if tag == self.managed_tag or tag.startswith(RESERVED_TAG_PREFIXES):
                raise _invalid("tags", f"tags: {tag!r} uses a tag reserved for the driver")
        if not (request.amphora_flavor or self.default_flavor):
            raise _invalid("amphora_flavor", "amphora_flavor: required (no default_flavor)")
        if not (request.image_id or self.default_image):
            raise _invalid("image_id", "image_id: required (no default_image)")
        if not (request.network_ids or self.default_network_ids):
            raise _invalid(
                "network_ids",
                "network_ids: give at least one network id (no default_network_ids); the "
                "driver never lets Nova pick ('auto' fails when several networks exist)",
            )
        self._user_data(request)

    def create(self, request: BuildRequest) -> str:
        """Resolve flavor, image and server group, then POST the server; return its id."""
        user_data = self._user_data(request)
        flavor_id = self._flavor(request)
        image_id = self._image(request.image_id or self.default_image or "")
        attrs: dict[str, Any] = {
            "name": request.name,
            "flavor_id": flavor_id,
            "image_id": image_id,
            "networks": [{"uuid": n} for n in request.network_ids or self.default_network_ids],
            "tags": self._tags(request),
            "config_drive": True,
        }
        if user_data is not None:
            attrs["user_data"] = user_data
        if request.sec_groups:
            attrs["security_groups"] = [{"name": g} for g in request.sec_groups]
        if request.availability_zone:
            attrs["availability_zone"] = request.availability_zone
        if request.server_group is not None:
            attrs["scheduler_hints"] = {"group": self._server_group(request.server_group)}
        LOG.info(
            "creating Nova server name=%s owner=%s type=%s flavor=%s image=%s networks=%s",
            request.name,
            request.owner,
            request.amphora_type.value,
            flavor_id,
            image_id,
            [n["uuid"] for n in attrs["networks"]],
        )
        try:
            server = self._compute.create_server(**attrs)
        except _API_ERRORS as e:
            raise _api_error(e, f"create server {request.name}", AmphoraBuildError) from e
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
            raise _invalid(
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
        """Find the flavor by id, then by name, and check it suits the amphora type."""
        ref = request.amphora_flavor or self.default_flavor or ""
        try:
            flavor = self._compute.get_flavor(ref)
        except openstack.exceptions.NotFoundException as by_id:
            try:  # is_public=none: private flavors too (bare-metal flavors often are)
                matches = [f for f in self._compute.flavors(is_public="none") if f.name == ref]
            except _API_ERRORS as e:
                raise _api_error(e, f"list flavors for {ref!r}", AmphoraBuildError) from e
            if len(matches) != 1:
                raise AmphoraBuildError(
                    f"amphora_flavor: {len(matches) or 'no'} flavors have the id or name {ref!r}",
                    reason=Reason.AMBIGUOUS_MATCH if matches else Reason.FLAVOR_NOT_FOUND,
                    retryable=False,
                    field="amphora_flavor",
                ) from by_id
            flavor = matches[0]
        except _API_ERRORS as e:
            raise _api_error(e, f"look up flavor {ref!r}", AmphoraBuildError) from e
        bare_metal = (
            flavor.id in self.bare_metal_flavors
            or flavor.name in self.bare_metal_flavors
            or is_bare_metal_flavor(flavor.extra_specs or {})
        )
        wanted = request.amphora_type is AmphoraType.BARE_METAL
        if bare_metal != wanted:
            rule = (
                "a BareMetal amphora needs a bare-metal flavor (extra specs "
                "resources:CUSTOM_<CLASS>=1 and resources:VCPU/MEMORY_MB/DISK_GB=0, or listed "
                "in bare_metal_flavors)"
                if wanted
                else "a VM amphora cannot use a bare-metal flavor"
            )
            raise _invalid("amphora_flavor", f"amphora_flavor: flavor {ref!r}: {rule}")
        return str(flavor.id)

    def _image(self, ref: str) -> str:
        """An id passes through; ``tag:<t>`` or a name becomes the newest ACTIVE image's id."""
        if _UUID.match(ref):
            return ref
        tag = ref.removeprefix("tag:") if ref.startswith("tag:") else None
        name = None if tag is not None else ref
        try:
            candidates = self._image_lookup(name=name, tag=tag)
        except _NO_SERVICE as e:
            raise AmphoraBuildError(
                f"image_id: {ref!r} is not an image id, and no image service is reachable to "
                "resolve names and tags; give the image's UUID",
                reason=Reason.IMAGE_NOT_FOUND,
                retryable=False,
                field="image_id",
            ) from e
        except _API_ERRORS as e:
            raise _api_error(e, f"look up image {ref!r}", AmphoraBuildError) from e
        if not candidates:
            what = f"tag {tag!r}" if tag is not None else f"name {name!r}"
            raise AmphoraBuildError(
                f"image_id: no ACTIVE image has the {what}",
                reason=Reason.IMAGE_NOT_FOUND,
                retryable=False,
                field="image_id",
            )
        return max(candidates, key=lambda c: c.created_at).id

    def _server_group(self, group: ServerGroup) -> str:
        """Reuse the project's server group of that name, or create it (racing creators agree)."""
        try:
            same = self._groups_named(group)
            if same:
                chosen = min(same, key=lambda g: g.id)
            else:
                created = self._compute.create_server_group(
                    name=group.name, policy=group.policy.value
                )
                # Two builds may create the group at once: both keep the lowest id.
                chosen = min(self._groups_named(group) or [created], key=lambda g: g.id)
                if chosen.id != created.id:
                    self._compute.delete_server_group(created.id, ignore_missing=True)
        except _API_ERRORS as e:
            raise _api_error(e, f"server group {group.name}", AmphoraBuildError) from e
        if chosen.policy != group.policy.value:
            raise _invalid(
                "server_group",
                f"server_group: a group named {group.name!r} exists with policy "
                f"{chosen.policy!r}, not {group.policy.value!r}",
            )
        return str(chosen.id)

    def _groups_named(self, group: ServerGroup) -> list[Any]:
        return [g for g in self._compute.server_groups() if g.name == group.name]

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
            else:
                query: dict[str, Any] = {"tags": self.managed_tag}
                if owner is not None:
                    query["tags"] += f",{OWNER_TAG_PREFIX}{owner}"
                if name is not None:
                    query["name"] = f"^{re.escape(name)}$"  # Nova's name filter is a regex
                servers = list(self._compute.servers(**query))
        except _API_ERRORS as e:
            raise _api_error(e, "list servers") from e
        found = [self._instance(s) for s in servers]
        return [
            i
            for i in found
            if (name is None or i.name == name) and (owner is None or i.owner == owner)
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
        except _API_ERRORS as e:
            raise _api_error(e, f"get server {amphora_id}") from e

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

        Transient failures (5xx, 429, timeouts, no connection) are retried in place, at most
        ``delete_attempts`` tries; a refusal (e.g. 409, a locked server) raises DeleteFailed at
        once, retryable by the caller later.
        """
        for attempt in range(1, self.delete_attempts + 1):
            try:
                self._compute.delete_server(amphora_id, ignore_missing=True)
                LOG.info("delete of Nova server %s accepted", amphora_id)
                return
            except _API_ERRORS as e:
                error = _api_error(e, f"delete server {amphora_id}", DeleteFailed)
                if error.reason not in _TRANSIENT or attempt == self.delete_attempts:
                    raise error from e
                LOG.warning("delete of %s failed (%s); retrying", amphora_id, error.reason)
            time.sleep(self.delete_backoff * 2 ** (attempt - 1))

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
        except _API_ERRORS as e:
            raise _api_error(e, f"{what} server {amphora_id}") from e
        LOG.info("%s of Nova server %s accepted", what, amphora_id)


# -- helpers ------------------------------------------------------------------------------------

_API_ERRORS = (openstack.exceptions.SDKException, ksa_exceptions.ClientException)
# Failures that may clear within a second: worth a bounded retry in place.
_TRANSIENT = frozenset({Reason.BACKEND_UNAVAILABLE, Reason.RATE_LIMITED, Reason.TIMEOUT})
# What openstacksdk raises when the cloud has no usable endpoint for a service at all.
_NO_SERVICE = (
    ksa_exceptions.EndpointNotFound,
    openstack.exceptions.EndpointNotFound,
    openstack.exceptions.NotSupported,
)


def _api_error(
    error: Exception, action: str, cls: type[AmphoraComputeError] = AmphoraComputeError
) -> AmphoraComputeError:
    """Map an openstacksdk/keystoneauth error to the spec's exception (the caller chains it)."""
    reason, retryable, field = _classify(error)
    detail = _nova_message(error)
    if reason == Reason.NOT_FOUND and cls is AmphoraComputeError:
        return InstanceNotFoundError(f"{action}: {detail}")
    prefix = f"{field}: " if field else ""
    return cls(f"{prefix}{action}: {detail}", reason=reason, retryable=retryable, field=field)


def _classify(error: Exception) -> tuple[Reason, bool, str | None]:
    """(reason, retryable, field) for an API error; see the module docstring."""
    if isinstance(error, ksa_exceptions.ConnectTimeout):
        return Reason.TIMEOUT, True, None
    if isinstance(error, ksa_exceptions.ConnectionError | ksa_exceptions.DiscoveryFailure):
        return Reason.BACKEND_UNAVAILABLE, True, None
    status = getattr(error, "status_code", None)
    message = _nova_message(error).lower()
    if status is None:
        return Reason.UNKNOWN, False, None
    if "no valid host" in message:
        return Reason.NO_VALID_HOST, True, None
    if status in (403, 413) and "quota" in message:
        return Reason.QUOTA_EXCEEDED, True, None
    if status == 429:
        return Reason.RATE_LIMITED, True, None
    if status in (408, 504):
        return Reason.TIMEOUT, True, None
    if status >= 500:
        return Reason.BACKEND_UNAVAILABLE, True, None
    if status == 404:
        return Reason.NOT_FOUND, False, None
    if status == 409:
        if "network" in message:  # "Multiple possible networks found"
            return Reason.INVALID_INPUT, False, "network_ids"
        return Reason.CONFLICT, True, None
    if status == 400:
        for fragment, reason, field in _BAD_REQUEST_FIELDS:
            if fragment in message:
                return reason, False, field
        return Reason.INVALID_INPUT, False, None
    return Reason.UNKNOWN, False, None


def _nova_message(error: Exception) -> str:
    """Nova's own words with the HTTP status when the error carries them, else str(error)."""
    details = getattr(error, "details", None)
    status = getattr(error, "status_code", None)
    if isinstance(details, str) and details and status is not None:
        return f"Nova answered {status}: {details}"
    return str(error) or type(error).__name__


def _invalid(field: str, message: str) -> AmphoraBuildError:
    return AmphoraBuildError(message, reason=Reason.INVALID_INPUT, retryable=False, field=field)


_T = TypeVar("_T")


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


def connect(
    *,
    clouds_yaml: str | None = None,
    clouds_yaml_content: str | None = None,
    cloud: str | None = None,
    **options: Any,
) -> openstack.connection.Connection:
    """An openstacksdk Connection from a clouds.yaml path or text only (no env, no defaults).

    ``options`` override the cloud's settings (e.g. ``compute_api_version``, ``api_timeout``,
    ``timing``).
    """
    if clouds_yaml is not None:
        config = OpenStackConfig(
            config_files=[clouds_yaml], vendor_files=[], secure_files=[], load_envvars=False
        )
        settings: dict[str, Any] = {"cloud": cloud, **options}
    else:
        config = OpenStackConfig(load_yaml_config=False, load_envvars=False)
        settings = {**_cloud_entry(clouds_yaml_content or "", cloud), **options}
    with warnings.catch_warnings():
        # openstacksdk 4.x warns about InfluxDB on every config, even with no InfluxDB set.
        warnings.filterwarnings("ignore", message="Support for InfluxDB")
        region = config.get_one(**settings)
    return openstack.connection.Connection(config=region)


def _cloud_entry(content: str, cloud: str | None) -> dict[str, Any]:
    """The chosen cloud's settings from clouds.yaml text (one cloud may go unnamed)."""
    parsed = yaml.safe_load(content) or {}
    clouds = parsed.get("clouds") if isinstance(parsed, dict) else None
    if not isinstance(clouds, dict) or not clouds:
        raise ValueError("clouds.yaml content has no 'clouds' mapping")
    if cloud is None:
        if len(clouds) != 1:
            raise ValueError(f"clouds.yaml has {len(clouds)} clouds; name one with cloud=")
        cloud = next(iter(clouds))
    if cloud not in clouds or not isinstance(clouds[cloud], dict):
        raise ValueError(f"clouds.yaml has no cloud {cloud!r} (has: {', '.join(clouds)})")
    return dict(clouds[cloud])


class _RedactUserData(logging.Filter):
    """Blank user_data in keystoneauth's DEBUG lines (it logs whole request/response bodies)."""

    PATTERN = re.compile(r'("(?:OS-EXT-SRV-ATTR:)?user_data"\s*:\s*)"[^"]*"')

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()  # only runs for records DEBUG-enabled loggers emit
        if "user_data" in message:
            record.msg, record.args = self.PATTERN.sub(r'\1"<redacted>"', message), None
        return True


_REDACTION = _RedactUserData()
_REDACTED_LOGGERS = (
    "keystoneauth.session",
    "keystoneauth.session.request",
    "keystoneauth.session.response",
    "keystoneauth.session.body",
)


def _install_log_redaction() -> None:
    """Attach the user_data filter to keystoneauth's loggers, once."""
    for name in _REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if _REDACTION not in logger.filters:
            logger.addFilter(_REDACTION)
