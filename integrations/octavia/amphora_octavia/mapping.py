"""Pure translation between Octavia's compute calls and Amphora resources (no API calls here).

``plan_build`` turns every ``build()`` argument into an Amphora manifest plus the one Secret
that carries user data and config-drive files (never inline in the spec, which anyone who may
read Amphorae sees); ``observe`` turns an Amphora back into what Octavia's Nova driver reports.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TextIO

GROUP = "amphora-operator.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Amphora"
PLURAL = "amphorae"

LABEL_PREFIX = "octavia.amphora-operator.dev"
MANAGED_BY = "amphora-octavia"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_AMPHORA_NAME = f"{LABEL_PREFIX}/amphora-name"
LABEL_COMPUTE_ID = f"{LABEL_PREFIX}/compute-id"
LABEL_SERVER_GROUP = f"{LABEL_PREFIX}/server-group"
ANNOTATION_IMAGE_TAG = f"{LABEL_PREFIX}/image-tag"
ANNOTATION_IMAGE_OWNER = f"{LABEL_PREFIX}/image-owner"
ANNOTATION_KEY_NAME = f"{LABEL_PREFIX}/key-name"
ANNOTATION_COMPUTE_FLAVOR = f"{LABEL_PREFIX}/compute-flavor"

#: The value of ``network_map`` that stands for a Container amphora's Pod network.
POD_NETWORK = "pod"
#: Limits of the Amphora API (``crds/``); refused here, before anything is created.
MAX_CONFIG_DRIVE_FILES = 5
MAX_CONFIG_DRIVE_FILE_BYTES = 10 * 1024
MAX_USER_DATA_BYTES = 64 * 1024
MAX_LIST = 16
USER_DATA_KEY = "user-data"

_ABSOLUTE_PATH = re.compile(r"^(/[^/]+)+$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_TAG = re.compile(r"^[^/,\x00-\x1f]{1,60}$")
_SSH_KEY = re.compile(
    r"^(ssh-rsa|ssh-ed25519|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521"
    r"|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+=*( [^\n]*)?$"
)

# Server-group ids are stored by Octavia in a 36-character column and carry their policy, so
# build() needs no state to know it: "<code>-<32 hex>" is also a valid serverGroup.name.
_POLICY_CODES = {"anti-affinity": "aa", "soft-anti-affinity": "saa", "affinity": "af"}
_CODE_POLICIES = {code: policy for policy, code in _POLICY_CODES.items()}
_SERVER_GROUP_ID = re.compile(r"^(aa|saa|af)-[0-9a-f]{32}$")

# Octavia's status words (octavia.common.constants / Nova's server statuses).
ACTIVE = "ACTIVE"
ERROR = "ERROR"
BUILD = "BUILD"
SHUTOFF = "SHUTOFF"
DELETED = "DELETED"
_PHASE_STATUS = {
    None: BUILD,
    "Pending": BUILD,
    "Building": BUILD,
    "Ready": ACTIVE,
    # The current instance keeps serving while a replacement is built.
    "Updating": ACTIVE,
    "Suspended": SHUTOFF,
    "Failed": ERROR,
    "Deleting": DELETED,
}


class PlanError(ValueError):
    """A build() argument the Amphora API cannot take; the message names it and the rule."""


@dataclass(frozen=True)
class Settings:
    """The ``[amphora_k8s]`` options the translation depends on."""

    namespace: str
    default_type: str = "VM"
    default_driver: str | None = None
    flavor_map: Mapping[str, str] = field(default_factory=dict)
    image_map: Mapping[str, str] = field(default_factory=dict)
    network_map: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    """What an Octavia compute flavor means for an Amphora."""

    type: str
    flavor: str | None
    driver: str | None


@dataclass(frozen=True)
class BuildPlan:
    amphora: dict[str, Any]
    #: The Secret with user data and files (created before the Amphora), or None.
    secret: dict[str, Any] | None


@dataclass(frozen=True)
class Observed:
    """An Amphora as Octavia's data model sees it."""

    status: str
    lb_network_ip: str | None
    fault: str | None
    cached_zone: str | None
    image_id: str | None
    compute_flavor: str | None


def new_compute_id() -> str:
    """The Amphora's name and Octavia's compute_id (a UUID fits Octavia's 36-character column)."""
    return str(uuid.uuid4())


def secret_name(compute_id: str) -> str:
    return f"{compute_id}-boot"


def server_group_id(policy: str) -> str:
    """A new server-group id for ``policy`` (refused when Amphorae have no such policy)."""
    code = _POLICY_CODES.get(policy)
    if code is None:
        raise PlanError(
            f"server group policy {policy!r}: Amphorae support {', '.join(_POLICY_CODES)}"
        )
    return f"{code}-{uuid.uuid4().hex}"


def server_group_policy(group_id: str) -> str:
    """The policy an id from :func:`server_group_id` stands for."""
    if not _SERVER_GROUP_ID.match(group_id):
        raise PlanError(
            f"server_group_id {group_id!r}: not a server group of this driver "
            "(expected '<aa|saa|af>-<32 hex digits>' from create_server_group)"
        )
    return _CODE_POLICIES[group_id.split("-", 1)[0]]


def placement(settings: Settings, amphora_flavor: str | None) -> Placement:
    """Type, Amphora flavor and profile for an Octavia compute flavor (``flavor_map``)."""
    mapped = settings.flavor_map.get(amphora_flavor or "")
    if mapped is None:
        return Placement(settings.default_type, amphora_flavor, settings.default_driver)
    kind, slash, rest = mapped.partition("/")
    if not slash or kind not in ("VM", "Container", "BareMetal"):
        raise PlanError(
            f"[amphora_k8s] flavor_map {amphora_flavor}: {mapped!r} is not "
            "'<VM|Container|BareMetal>/<flavor>[@<profile>]'"
        )
    flavor, _, driver = rest.partition("@")
    return Placement(kind, flavor or None, driver or settings.default_driver)


def _text(value: str | bytes | TextIO | BinaryIO, what: str) -> str:
    """Octavia passes strings, bytes or file-like objects; the Secret holds UTF-8 text."""
    if not isinstance(value, str | bytes):
        value = value.read()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PlanError(f"{what}: must be UTF-8 text") from e
    return value


def _image(settings: Settings, kind: str, image_tag: str | None) -> str:
    if not image_tag:
        raise PlanError("image_tag: required ([controller_worker] amp_image_tag)")
    mapped = settings.image_map.get(image_tag)
    if mapped:
        return mapped
    if kind == "Container":
        raise PlanError(
            f"image_tag {image_tag!r}: a Container amphora needs its image listed in "
            "[amphora_k8s] image_map (a Glance tag means nothing to a container runtime)"
        )
    return f"tag:{image_tag}"


def _networks(settings: Settings, kind: str, network_ids: Sequence[str]) -> list[str]:
    out: list[str] = []
    for net in network_ids:
        mapped = settings.network_map.get(net)
        if mapped is None and kind == "Container":
            raise PlanError(
                f"network_ids: network {net} is not in [amphora_k8s] network_map (a Container "
                "amphora needs a Multus network or 'pod' for each)"
            )
        target = mapped if mapped is not None else net
        if target == POD_NETWORK:
            if kind != "Container":
                raise PlanError(f"network_ids: {net} maps to 'pod', which only Containers have")
            continue
        if target not in out:
            out.append(target)
    if len(out) > MAX_LIST:
        raise PlanError(f"network_ids: at most {MAX_LIST} networks")
    return out


def _files(config_drive_files: Mapping[str, Any] | None) -> dict[str, str]:
    files = {
        path: _text(value, f"config_drive_files[{path}]")
        for path, value in (config_drive_files or {}).items()
    }
    if len(files) > MAX_CONFIG_DRIVE_FILES:
        raise PlanError(f"config_drive_files: at most {MAX_CONFIG_DRIVE_FILES} files")
    for path, content in files.items():
        if not _ABSOLUTE_PATH.match(path) or any(p in (".", "..") for p in path.split("/")):
            raise PlanError(f"config_drive_files: {path!r} is not an absolute path without '..'")
        if len(content.encode()) > MAX_CONFIG_DRIVE_FILE_BYTES:
            raise PlanError(
                f"config_drive_files[{path}]: larger than {MAX_CONFIG_DRIVE_FILE_BYTES} bytes"
            )
    return files


def plan_build(
    settings: Settings,
    *,
    compute_id: str,
    name: str,
    amphora_flavor: str | None,
    image_tag: str | None,
    image_owner: str | None,
    keys: Sequence[str],
    key_name: str | None,
    sec_groups: Sequence[str] | None,
    network_ids: Sequence[str] | None,
    port_ids: Sequence[str] | None,
    config_drive_files: Mapping[str, Any] | None,
    user_data: str | bytes | TextIO | BinaryIO | None,
    server_group_id: str | None,
    availability_zone: Mapping[str, Any] | None,
    default_zone: str | None,
) -> BuildPlan:
    """The Amphora and its Secret for one ``build()`` call; PlanError names a bad argument."""
    if port_ids:
        raise PlanError(
            "port_ids: booting with existing Neutron ports is not supported by the Amphora API "
            "(spec.networks takes networks only)"
        )
    where = placement(settings, amphora_flavor)
    if where.type != "Container" and not where.flavor:
        raise PlanError(f"amphora_flavor: required for {where.type} amphorae")
    for key in keys:
        if not _SSH_KEY.match(key):
            raise PlanError(f"key_name {key_name}: {key[:20]!r}... is not an OpenSSH public key")
    groups = list(dict.fromkeys(sec_groups or []))
    if len(groups) > MAX_LIST:
        raise PlanError(f"sec_groups: at most {MAX_LIST} security groups")
    files = _files(config_drive_files)
    user_text = None if user_data is None else _text(user_data, "user_data")
    if user_text is not None and len(user_text.encode()) > MAX_USER_DATA_BYTES:
        raise PlanError(f"user_data: larger than {MAX_USER_DATA_BYTES} bytes")

    zone = (availability_zone or {}).get("compute_zone") or default_zone
    labels = {LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPUTE_ID: compute_id}
    if _LABEL_VALUE.match(name) and len(name) <= 63:
        labels[LABEL_AMPHORA_NAME] = name
    annotations = {ANNOTATION_IMAGE_TAG: image_tag or ""}
    if image_owner:
        annotations[ANNOTATION_IMAGE_OWNER] = image_owner
    if key_name:
        annotations[ANNOTATION_KEY_NAME] = key_name
    if amphora_flavor:
        annotations[ANNOTATION_COMPUTE_FLAVOR] = amphora_flavor

    spec: dict[str, Any] = {
        "type": where.type,
        "image": _image(settings, where.type, image_tag),
        "networks": _networks(settings, where.type, network_ids or []),
        "securityGroups": groups,
        "keys": list(dict.fromkeys(keys)),
    }
    if _TAG.match(name):
        spec["tags"] = [name]
    if where.flavor:
        spec["flavor"] = where.flavor
    if where.driver:
        spec["driver"] = where.driver
    if zone:
        spec["availabilityZone"] = zone
    if server_group_id:
        spec["serverGroup"] = {
            "name": server_group_id,
            "policy": server_group_policy(server_group_id),
        }
        labels[LABEL_SERVER_GROUP] = server_group_id

    secret = None
    data: dict[str, str] = {}
    ref = secret_name(compute_id)
    if user_text is not None:
        data[USER_DATA_KEY] = user_text
        spec["userData"] = {"secretRef": {"name": ref, "key": USER_DATA_KEY}}
    if files:
        entries = []
        for index, path in enumerate(sorted(files)):
            data[f"file-{index}"] = files[path]
            entries.append({"path": path, "secretRef": {"name": ref, "key": f"file-{index}"}})
        spec["configDriveFiles"] = entries
    if data:
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": ref,
                "namespace": settings.namespace,
                # The operator reads only Secrets that consent (amphora_operator.tenancy).
                "labels": {**labels, "amphora-operator.dev/usable": "true"},
            },
            "stringData": data,
        }
    amphora = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": compute_id,
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    }
    return BuildPlan(amphora=amphora, secret=secret)


def owner_reference(amphora: Mapping[str, Any]) -> dict[str, Any]:
    """Makes a Secret go with its Amphora (the garbage collector deletes it afterwards)."""
    meta = amphora["metadata"]
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"]}


def management_address(addresses: Sequence[str]) -> str | None:
    """The address on the management network: the first one.

    ``status.addresses`` is one flat list without per-network attribution, so this relies on
    the drivers' order: a Container's Pod IPs first, then its Multus networks in spec order; a
    Nova server's addresses as Nova lists them. That is the management network whenever it is
    the amphora's only or first network, which is how Octavia boots amphorae (VIPs are
    plugged later).
    """
    return addresses[0] if addresses else None


def observe(amphora: Mapping[str, Any]) -> Observed:
    """Status, lb_network_ip and fault of an Amphora, in Octavia's words."""
    spec = amphora.get("spec") or {}
    status = amphora.get("status") or {}
    phase = status.get("phase")
    word = _PHASE_STATUS.get(phase, BUILD)
    if word == ERROR and not _stalled(status):
        # The operator retries this failure (a timeout, a 5xx): Octavia keeps waiting within
        # its own amp_active_retries instead of failing the load balancer on a transient error.
        word = BUILD
    if amphora.get("metadata", {}).get("deletionTimestamp"):
        word = DELETED
    fault = status.get("fault")
    if word == ERROR and not fault:
        ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
        fault = (ready[0].get("message") or ready[0].get("reason")) if ready else phase
    addresses = list(status.get("addresses") or [])
    return Observed(
        status=word,
        lb_network_ip=management_address(addresses),
        fault=fault,
        cached_zone=spec.get("availabilityZone"),
        image_id=spec.get("image"),
        compute_flavor=(amphora.get("metadata", {}).get("annotations") or {}).get(
            ANNOTATION_COMPUTE_FLAVOR, spec.get("flavor")
        ),
    )


def _stalled(status: Mapping[str, Any]) -> bool:
    """The operator gave up retrying: condition Stalled=True, or no Stalled condition at all
    (then nothing says a retry is coming)."""
    stalled = [c for c in status.get("conditions") or [] if c.get("type") == "Stalled"]
    return not stalled or stalled[0].get("status") == "True"


def validation_probe(settings: Settings, **spec: Any) -> dict[str, Any]:
    """A minimal Amphora for a server-side dry run (validate_flavor / _availability_zone)."""
    body: dict[str, Any] = {"type": settings.default_type, "image": "validation", **spec}
    if body["type"] != "Container" and "flavor" not in body:
        body["flavor"] = "validation"
    if settings.default_driver and "driver" not in body:
        body["driver"] = settings.default_driver
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"generateName": "validation-", "namespace": settings.namespace},
        "spec": body,
    }
