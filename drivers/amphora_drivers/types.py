"""Typed values exchanged with a compute driver, and the spec's input rules in one place.

:class:`BuildRequest` is the only place where the seed spec's input rules live (types,
config-drive limits, key format, tag limits); every driver and the operator rely on it.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import re
import struct
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "MAX_CONFIG_DRIVE_FILES",
    "MAX_CONFIG_DRIVE_FILE_BYTES",
    "MAX_TAGS",
    "MAX_TAG_LENGTH",
    "MAX_USER_DATA_BYTES",
    "AmphoraInstance",
    "AmphoraState",
    "AmphoraType",
    "BuildRequest",
    "OwnerResource",
    "ServerGroup",
    "ServerGroupPolicy",
    "validate_ssh_public_key",
]

MAX_CONFIG_DRIVE_FILES = 5
MAX_CONFIG_DRIVE_FILE_BYTES = 10 * 1024
MAX_USER_DATA_BYTES = 64 * 1024
MAX_TAGS = 50
MAX_TAG_LENGTH = 60
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_FILE_PATH = re.compile(r"(/[^/\x00]+)+")

_SSH_KEY_TYPES = frozenset(
    {
        "ssh-rsa",
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)


class AmphoraType(StrEnum):
    """What kind of amphora to build; the spec's list."""

    VM = "VM"
    CONTAINER = "Container"
    BARE_METAL = "BareMetal"
    #: Recognised so that it fails with NotImplementedError rather than a validation error.
    HW_LOAD_BALANCER = "HWLoadBalancer"


class AmphoraState(StrEnum):
    """The driver-independent state of an instance; the driver's own word is kept in raw_state."""

    BUILDING = "BUILDING"
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    ERROR = "ERROR"
    DELETING = "DELETING"
    DELETED = "DELETED"
    UNKNOWN = "UNKNOWN"


class ServerGroupPolicy(StrEnum):
    ANTI_AFFINITY = "anti-affinity"
    SOFT_ANTI_AFFINITY = "soft-anti-affinity"
    AFFINITY = "affinity"


class ServerGroup(BaseModel):
    """Instances with the same server group name are placed per ``policy``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=NAME_PATTERN)]
    policy: ServerGroupPolicy = ServerGroupPolicy.ANTI_AFFINITY
    #: Whose name it is (the operator passes the Kubernetes namespace): groups of different
    #: scopes never mix, however they are named. None: the backend's plain name.
    scope: Annotated[str, Field(min_length=1, max_length=63, pattern=NAME_PATTERN)] | None = None


class OwnerResource(BaseModel):
    """The caller's resource an instance belongs to, as opaque words (the interface does not
    interpret them). A driver whose platform can delete an instance together with its owner
    (see :meth:`~amphora_drivers.base.AmphoraComputeDriver.follows_owner`) links the two;
    any other driver ignores it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_version: Annotated[str, Field(min_length=1, max_length=253)]
    kind: Annotated[str, Field(min_length=1, max_length=63)]
    name: Annotated[str, Field(min_length=1, max_length=253)]
    uid: Annotated[str, Field(min_length=1, max_length=64)]
    #: Where the owner lives (a scope of the caller's own, e.g. a tenant); None: nowhere.
    namespace: Annotated[str, Field(min_length=1, max_length=63)] | None = None


def validate_ssh_public_key(key: str) -> str:
    """Return ``key`` stripped if it is an OpenSSH public key line, else raise ValueError.

    Checks the type name, that the body is base64, and that the body's embedded type
    matches the declared one (catches truncated or pasted-together keys).
    """
    parts = key.strip().split(None, 2)
    if len(parts) < 2:
        raise ValueError("must be '<type> <base64> [comment]', an OpenSSH public key line")
    key_type, body = parts[0], parts[1]
    if key_type not in _SSH_KEY_TYPES:
        raise ValueError(f"key type {key_type!r} is not one of {sorted(_SSH_KEY_TYPES)}")
    try:
        blob = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError("key body is not valid base64") from e
    if len(blob) < 4:
        raise ValueError("key body is too short")
    (length,) = struct.unpack(">I", blob[:4])
    if blob[4 : 4 + length].decode("ascii", errors="replace") != key_type:
        raise ValueError("key body does not match its declared type")
    if "\n" in key.strip() or "\r" in key:
        raise ValueError("key must be a single line")
    return key.strip()


def _to_bytes(value: Any, what: str) -> bytes:
    """Accept str, bytes or a file-like object, as the spec allows for contents."""
    if hasattr(value, "read"):
        value = value.read()
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise ValueError(f"{what} must be str, bytes or a file-like object, not {type(value).__name__}")


class BuildRequest(BaseModel):
    """Everything a driver needs to build one amphora, validated once.

    Field names follow the seed spec (``amphora_flavor``, ``image_id``, ``sec_groups``...).
    ``owner`` is the caller's unique key (the Amphora resource UID): drivers store it on the
    instance so that a crashed caller finds the instance again instead of building twice.
    ``owner_resource`` optionally names the resource itself, for drivers that can tie the
    instance's lifetime to it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=NAME_PATTERN)]
    amphora_type: AmphoraType = AmphoraType.VM
    amphora_flavor: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    image_id: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    keys: tuple[str, ...] = ()
    sec_groups: tuple[Annotated[str, Field(min_length=1, max_length=255)], ...] = ()
    network_ids: tuple[Annotated[str, Field(min_length=1, max_length=255)], ...] = ()
    config_drive_files: Mapping[str, bytes] = Field(default_factory=dict)
    user_data: bytes | None = None
    owner: Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9-]+$")] | None = (
        None
    )
    tags: tuple[str, ...] = ()
    availability_zone: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    server_group: ServerGroup | None = None
    owner_resource: OwnerResource | None = None

    @field_validator("keys", mode="before")
    @classmethod
    def _keys_are_ssh_public_keys(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        out = []
        for index, key in enumerate(value):
            if not isinstance(key, str):
                raise ValueError(f"keys[{index}] must be a string")
            try:
                out.append(validate_ssh_public_key(key))
            except ValueError as e:
                raise ValueError(f"keys[{index}]: {e}") from e
        return tuple(out)

    @field_validator("sec_groups", "network_ids", "tags", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return () if value is None else value

    @field_validator("config_drive_files", mode="before")
    @classmethod
    def _config_drive_rules(cls, value: Any) -> dict[str, bytes]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValueError("must be a mapping of absolute path to contents")
        if len(value) > MAX_CONFIG_DRIVE_FILES:
            raise ValueError(
                f"at most {MAX_CONFIG_DRIVE_FILES} files are allowed, got {len(value)}"
            )
        files: dict[str, bytes] = {}
        for path, content in value.items():
            if not isinstance(path, str) or not path.startswith("/"):
                raise ValueError(f"path {path!r} must be absolute (start with '/')")
            if (
                not _FILE_PATH.fullmatch(path)
                or posixpath.normpath(path) != path
                or len(path) > 255
            ):
                raise ValueError(
                    f"path {path!r} must name a file: normalised (no '.', '..', '//' or "
                    "trailing '/'), without NUL, at most 255 characters"
                )
            data = _to_bytes(content, f"contents of {path}")
            if len(data) > MAX_CONFIG_DRIVE_FILE_BYTES:
                raise ValueError(
                    f"file {path} is {len(data)} bytes; each file must be at most "
                    f"{MAX_CONFIG_DRIVE_FILE_BYTES} bytes (10 KiB)"
                )
            files[path] = data
        return files

    @field_validator("user_data", mode="before")
    @classmethod
    def _user_data_rules(cls, value: Any) -> bytes | None:
        if value is None:
            return None
        data = _to_bytes(value, "user_data")
        if len(data) > MAX_USER_DATA_BYTES:
            raise ValueError(
                f"user_data is {len(data)} bytes; at most {MAX_USER_DATA_BYTES} bytes are allowed"
            )
        return data

    @field_validator("tags")
    @classmethod
    def _tag_rules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > MAX_TAGS:
            raise ValueError(f"at most {MAX_TAGS} tags are allowed, got {len(value)}")
        for tag in value:
            if not tag or len(tag) > MAX_TAG_LENGTH or re.search(r"[/,\x00-\x1f]", tag):
                raise ValueError(
                    f"tag {tag!r} must be 1-{MAX_TAG_LENGTH} characters without '/', ',' "
                    "or control characters"
                )
        return value


class AmphoraInstance(BaseModel):
    """What a driver knows of one instance, normalised across drivers."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    amphora_type: AmphoraType
    state: AmphoraState
    #: The driver's own state words (e.g. Nova ``ERROR/None``, Pod ``Pending/ImagePullBackOff``).
    raw_state: str
    addresses: tuple[str, ...] = ()
    #: A human-readable reason when state is ERROR (e.g. Nova's "No valid host was found").
    fault: str | None = None
    owner: str | None = None
    tags: tuple[str, ...] = ()
