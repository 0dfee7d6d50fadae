"""The Amphora resource: the one source of its spec, its CRD schema and its status shape.

The CRD in ``crds/`` is generated from these models by :mod:`amphora_operator.crd`; a test
fails if the committed YAML drifts. Rules that the apiserver can check at admission time are
declared here as JSON-schema keywords or CEL rules (``x-kubernetes-validations``), so bad
input is refused by ``kubectl apply`` before the operator sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from amphora_drivers.types import (
    MAX_CONFIG_DRIVE_FILE_BYTES,
    MAX_CONFIG_DRIVE_FILES,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    MAX_USER_DATA_BYTES,
    ServerGroupPolicy,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "AmphoraSpec",
    "AmphoraStatus",
    "Condition",
    "ConfigDriveFile",
    "DeletionPolicy",
    "ManagementPolicy",
    "Phase",
    "SecretKeyRef",
    "ServerGroupSpec",
    "SpecType",
    "UserData",
]

GROUP = "amphora-operator.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Amphora"
PLURAL = "amphorae"
#: The finalizer that keeps an Amphora until its instances are gone (kopf's and ours).
FINALIZER = f"{GROUP}/finalizer"
SINGULAR = "amphora"
SHORT_NAMES = ["amp"]

SSH_KEY_PATTERN = (
    r"^(ssh-rsa|ssh-ed25519|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521"
    r"|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+=*( [^\n]*)?$"
)
ABSOLUTE_PATH_PATTERN = r"^(/[^/]+)+$"
TAG_PATTERN = r"^[^/,\x00-\x1f]+$"


def _cel(rule: str, message: str, **extra: str) -> JsonDict:
    return {"rule": rule, "message": message, **extra}


@dataclass(frozen=True)
class Rule:
    """One validation rule, stated once: as CEL for the apiserver and as Python for pydantic.

    ``tests/operator/test_crd.py`` proves both halves accept and refuse the same specs.
    """

    cel: str
    message: str
    holds: Callable[[Any], bool]
    #: The field the error is about, relative to the object (``.flavor``).
    field_path: str | None = None

    def schema(self) -> JsonDict:
        extra = {"fieldPath": self.field_path} if self.field_path else {}
        return _cel(self.cel, self.message, **extra)


def _with_rules(schema: JsonDict, cls: type[BaseModel]) -> None:
    """Publish a model's rules (and apiserver-only transition rules) as CEL in its schema."""
    rules = [r.schema() for r in getattr(cls, "rules", ())]
    rules += list(getattr(cls, "transition_rules", ()))
    if rules:
        schema["x-kubernetes-validations"] = rules


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        json_schema_extra=_with_rules,
    )

    #: Rules over several fields, checked by the apiserver (CEL) and by pydantic alike.
    rules: ClassVar[tuple[Rule, ...]] = ()
    #: Rules on updates (they compare with ``oldSelf``): only the apiserver can check them.
    transition_rules: ClassVar[tuple[JsonDict, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in self.rules:
            if not rule.holds(self):
                where = rule.field_path.lstrip(".") if rule.field_path else ""
                raise ValueError(f"{where}: {rule.message}" if where else rule.message)
        return self


class SpecType(StrEnum):
    VM = "VM"
    CONTAINER = "Container"
    BARE_METAL = "BareMetal"


class DeletionPolicy(StrEnum):
    DELETE = "Delete"
    ORPHAN = "Orphan"


class ManagementPolicy(StrEnum):
    MANAGED = "Managed"
    OBSERVE_ONLY = "ObserveOnly"


class SecretKeyRef(_Model):
    """A key of a Secret in the Amphora's namespace; its value is never copied anywhere."""

    name: Annotated[
        str,
        Field(
            description="Name of the Secret, in the Amphora's namespace.",
            min_length=1,
            max_length=253,
        ),
    ]
    key: Annotated[
        str,
        Field(description="Key within the Secret's data.", min_length=1, max_length=253),
    ]


class ConfigDriveFile(_Model):
    """One file written onto the amphora at boot, inline or from a Secret."""

    rules = (
        Rule(
            "has(self.content) != has(self.secretRef)",
            "exactly one of content or secretRef must be set",
            lambda f: (f.content is None) != (f.secret_ref is None),
        ),
        Rule(
            "!self.path.split('/').exists(s, s == '..' || s == '.')",
            "must not contain '.' or '..' segments",
            lambda f: not any(part in (".", "..") for part in f.path.split("/")),
            field_path=".path",
        ),
    )

    path: Annotated[
        str,
        Field(
            description="Absolute path of the file on the amphora, without '..' segments.",
            min_length=2,
            max_length=255,
            pattern=ABSOLUTE_PATH_PATTERN,
        ),
    ]
    content: Annotated[
        str | None,
        Field(
            description=f"Inline file content (at most {MAX_CONFIG_DRIVE_FILE_BYTES} bytes).",
            max_length=MAX_CONFIG_DRIVE_FILE_BYTES,
        ),
    ] = None
    secret_ref: Annotated[
        SecretKeyRef | None,
        Field(description="Take the content from this Secret key instead (at most 10 KiB)."),
    ] = None


class UserData(_Model):
    """User data for the amphora's first boot (e.g. cloud-init), inline or from a Secret."""

    rules = (
        Rule(
            "has(self.content) != has(self.secretRef)",
            "exactly one of content or secretRef must be set",
            lambda u: (u.content is None) != (u.secret_ref is None),
        ),
    )

    content: Annotated[
        str | None,
        Field(
            description=f"Inline user data (at most {MAX_USER_DATA_BYTES} bytes).",
            max_length=MAX_USER_DATA_BYTES,
        ),
    ] = None
    secret_ref: Annotated[
        SecretKeyRef | None,
        Field(description="Take the user data from this Secret key instead (keeps it private)."),
    ] = None


class ServerGroupSpec(_Model):
    """Place this amphora relative to the others in the same group (e.g. an LB's pair)."""

    name: Annotated[
        str,
        Field(
            description="Group name; amphorae sharing it are placed together per policy.",
            min_length=1,
            max_length=63,
            pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        ),
    ]
    policy: Annotated[
        ServerGroupPolicy,
        Field(description="anti-affinity (never share a host), soft-anti-affinity, affinity."),
    ] = ServerGroupPolicy.ANTI_AFFINITY


_IMMUTABLE = "self == oldSelf"


class AmphoraSpec(_Model):
    """The desired amphora."""

    rules = (
        Rule(
            "self.type == 'Container' || has(self.flavor)",
            "flavor is required for VM and BareMetal amphorae",
            lambda s: s.type is SpecType.CONTAINER or s.flavor is not None,
            field_path=".flavor",
        ),
        Rule(
            "self.managementPolicy != 'ObserveOnly' || has(self.importId)",
            "importId is required when managementPolicy is ObserveOnly",
            lambda s: (
                s.management_policy is not ManagementPolicy.OBSERVE_ONLY or s.import_id is not None
            ),
            field_path=".importId",
        ),
    )
    transition_rules = (
        _cel(
            "has(self.driver) == has(oldSelf.driver)",
            "driver may not be added or removed after creation",
            fieldPath=".driver",
        ),
        _cel(
            "has(self.importId) == has(oldSelf.importId)",
            "importId may not be added or removed after creation",
            fieldPath=".importId",
        ),
    )

    type: Annotated[
        SpecType,
        Field(
            description="Kind of amphora: VM, Container or BareMetal. Immutable.",
            json_schema_extra={"x-kubernetes-validations": [_cel(_IMMUTABLE, "type is immutable")]},
        ),
    ] = SpecType.VM
    driver: Annotated[
        str | None,
        Field(
            description=(
                "Compute profile from the operator configuration (e.g. nova, container, noop). "
                "Defaults per type (VM and BareMetal: nova, Container: container). Immutable."
            ),
            min_length=1,
            max_length=63,
            pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
            json_schema_extra={
                "x-kubernetes-validations": [_cel(_IMMUTABLE, "driver is immutable")]
            },
        ),
    ] = None
    flavor: Annotated[
        str | None,
        Field(
            description="Flavor name or id: a Nova flavor, or a Container flavor from the table.",
            min_length=1,
            max_length=255,
        ),
    ] = None
    image: Annotated[
        str,
        Field(
            description="Image: a Nova image id, name or tag, or a container image reference.",
            min_length=1,
            max_length=255,
        ),
    ]
    networks: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=255)]],
        Field(
            description="Network ids to attach (Nova), or secondary networks (Container/Multus).",
            max_length=16,
            json_schema_extra={"x-kubernetes-list-type": "set"},
        ),
    ] = []
    security_groups: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=255)]],
        Field(
            description="Security group names or ids.",
            max_length=16,
            json_schema_extra={"x-kubernetes-list-type": "set"},
        ),
    ] = []
    keys: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=16384, pattern=SSH_KEY_PATTERN)]],
        Field(
            description="SSH public keys (OpenSSH one-line format) allowed to log in.",
            max_length=16,
        ),
    ] = []
    config_drive_files: Annotated[
        list[ConfigDriveFile],
        Field(
            description=(
                f"Files written at boot: at most {MAX_CONFIG_DRIVE_FILES}, each at most "
                f"{MAX_CONFIG_DRIVE_FILE_BYTES} bytes, at absolute paths."
            ),
            max_length=MAX_CONFIG_DRIVE_FILES,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["path"],
            },
        ),
    ] = []
    user_data: Annotated[
        UserData | None,
        Field(description="User data for first boot, inline or from a Secret."),
    ] = None
    availability_zone: Annotated[
        str | None,
        Field(
            description="Availability zone (Nova) or topology zone (Container).",
            min_length=1,
            max_length=255,
        ),
    ] = None
    server_group: Annotated[
        ServerGroupSpec | None,
        Field(description="Placement group, e.g. anti-affinity between an LB's amphorae."),
    ] = None
    tags: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=MAX_TAG_LENGTH, pattern=TAG_PATTERN)]],
        Field(
            description=(
                f"Tags put on the instance (at most {MAX_TAGS - 4}; no '/', ',' or control "
                "characters)."
            ),
            # The operator adds the namespace tag, drivers up to three of their own (owner,
            # type, managed-by).
            max_length=MAX_TAGS - 4,
            json_schema_extra={"x-kubernetes-list-type": "set"},
        ),
    ] = []
    suspended: Annotated[
        bool,
        Field(description="Desired power state: true suspends the amphora, false resumes it."),
    ] = False
    deletion_policy: Annotated[
        DeletionPolicy,
        Field(
            description=(
                "Delete removes the instance when the Amphora is deleted; Orphan leaves it "
                "running. May be changed at any time (e.g. to release a stuck deletion)."
            )
        ),
    ] = DeletionPolicy.DELETE
    management_policy: Annotated[
        ManagementPolicy,
        Field(
            description=(
                "Managed: the operator builds, changes and deletes the instance. ObserveOnly: "
                "it only reports the state of the instance named by importId."
            )
        ),
    ] = ManagementPolicy.MANAGED
    import_id: Annotated[
        str | None,
        Field(
            description="Adopt this existing instance (compute id) instead of building one. "
            "Immutable.",
            min_length=1,
            max_length=255,
            json_schema_extra={
                "x-kubernetes-validations": [_cel(_IMMUTABLE, "importId is immutable")]
            },
        ),
    ] = None


class Phase(StrEnum):
    PENDING = "Pending"
    BUILDING = "Building"
    READY = "Ready"
    SUSPENDED = "Suspended"
    UPDATING = "Updating"
    FAILED = "Failed"
    DELETING = "Deleting"


class Condition(_Model):
    """A Kubernetes API convention condition."""

    type: Annotated[
        str,
        Field(description="Ready, Reconciling, Stalled, Progressing or BackendAvailable."),
    ]
    status: Annotated[str, Field(description="True, False or Unknown.")]
    reason: Annotated[str, Field(description="CamelCase machine-readable reason.")]
    message: Annotated[str, Field(description="Human-readable details.")] = ""
    observed_generation: Annotated[
        int | None, Field(description="The .metadata.generation the condition was set from.")
    ] = None
    last_transition_time: Annotated[str, Field(description="When status last changed (RFC 3339).")]


class Replacement(_Model):
    """A replacement instance being built; the current one is deleted once it is ready."""

    revision: Annotated[int, Field(description="Revision of the replacement instance.")]
    compute_id: Annotated[
        str | None, Field(description="Compute id of the replacement, once built.")
    ] = None
    spec_hash: Annotated[str, Field(description="Hash of the spec it is built from.")]
    reason: Annotated[str, Field(description="Why it is replaced (SpecChanged, Failed, Lost).")]


class AmphoraStatus(_Model):
    """The observed amphora, written by the operator only."""

    model_config = ConfigDict(frozen=False)

    phase: Annotated[Phase | None, Field(description="Summary of the lifecycle.")] = None
    compute_id: Annotated[str | None, Field(description="The instance's id on the backend.")] = None
    driver: Annotated[str | None, Field(description="Compute profile in use.")] = None
    addresses: Annotated[list[str], Field(description="IP addresses of the amphora.")] = []
    fault: Annotated[
        str | None, Field(description="Why the amphora is not ready, from the backend.")
    ] = None
    observed_generation: Annotated[
        int,
        Field(
            description=(
                "The .metadata.generation last acted on; 0 (the default every new Amphora is "
                "created with) until the operator has observed it."
            )
        ),
    ] = 0
    revision: Annotated[
        int, Field(description="Revision of the current instance; bumps on each rebuild.")
    ] = 0
    spec_hash: Annotated[
        str | None, Field(description="Hash of the spec the current instance was built from.")
    ] = None
    replacement: Annotated[
        Replacement | None, Field(description="A replacement instance being rolled out.")
    ] = None
    retries: Annotated[int, Field(description="Consecutive failed builds.")] = 0
    next_retry_time: Annotated[
        str | None,
        Field(description="When a failed build is tried again (RFC 3339); messages never count."),
    ] = None
    retired: Annotated[
        list[str],
        Field(
            description="Ids of replaced or failed instances being deleted until confirmed gone."
        ),
    ] = []
    failure_reason: Annotated[
        str | None, Field(description="Machine-readable reason of the last failure.")
    ] = None
    raw_state: Annotated[str | None, Field(description="The backend's own state words.")] = None
    conditions: Annotated[
        list[Condition],
        Field(
            description=(
                "kstatus conditions: Ready (running as declared), Reconciling (work in "
                "progress), Stalled (cannot progress without a change); also Progressing and "
                "BackendAvailable."
            ),
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
        ),
    ] = []
