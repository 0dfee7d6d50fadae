"""Translate a build request into the Kubernetes objects of one amphora (pure, no API calls).

Names, labels, flavors and the Pod's security context and placement; see docs/drivers/container.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal

from kubernetes.utils import parse_quantity as _untyped_parse_quantity
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from amphora_drivers.types import BuildRequest, OwnerResource, ServerGroup, ServerGroupPolicy

#: The client's quantity parser ("250m", "1Gi" → Decimal), typed.
_parse_quantity: Callable[[str], Decimal] = _untyped_parse_quantity

DEFAULT_AUTHORIZED_KEYS_PATH = "/home/amphora/.ssh/authorized_keys"
DEFAULT_USER_DATA_PATH = "/var/lib/amphora/user-data"
USER_DATA_ENV = "AMPHORA_USER_DATA_FILE"
CONTAINER_NAME = "amphora"
FIELD_MANAGER = "amphora-container-driver"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_APP = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_ID = "amphora-operator.dev/id"
LABEL_OWNER = "amphora-operator.dev/owner"
LABEL_SERVER_GROUP = "amphora-operator.dev/server-group"
SECGROUP_LABEL_PREFIX = "secgroup.amphora-operator.dev/"
ANNOTATION_OWNER = "amphora-operator.dev/owner"
ANNOTATION_TAGS = "amphora-operator.dev/tags"
ANNOTATION_FLAVOR = "amphora-operator.dev/flavor"
ANNOTATION_FILES = "amphora-operator.dev/files"
MULTUS_NETWORKS = "k8s.v1.cni.cncf.io/networks"
MULTUS_NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"
ZONE_LABEL = "topology.kubernetes.io/zone"
HOSTNAME_LABEL = "kubernetes.io/hostname"
MANAGED_BY = "amphora-container-driver"
#: Modes of the mounted files. Read-only for owner (root) and group: with the Pod's fsGroup the
#: group is the amphora's, and the kubelet adds group read to Secret files anyway (0600 would
#: show as 0640), so 0440 is what the amphora sees with or without an fsGroup.
FILE_MODE = 0o440
KEYS_MODE = 0o644

#: The StatefulSet controller labels Pods ``controller-revision-hash=<name>-<hash>`` (63 max).
MAX_WORKLOAD_NAME = 52
LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
NETWORK_REF = re.compile(
    r"^(?:[a-z0-9](?:[-a-z0-9]*[a-z0-9])?/)?[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?"
    r"(?:@[A-Za-z0-9_.-]{1,15})?$"
)

#: Container waiting reasons that will not clear without a change; the value says what to do.


class Flavor(BaseModel):
    """CPU/memory (or any resource) requests and limits of the amphora container.

    Written as in a Pod spec (``{"requests": {"cpu": "250m"}, "limits": {"cpu": "1"}}``) so an
    admin can copy it from one to the other. Quantities are checked here, and requests must not
    exceed limits, so a bad flavor fails before anything is created.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: dict[str, str]
    limits: dict[str, str] = {}

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, value: dict[str, str]) -> dict[str, str]:
        for resource, quantity in value.items():
            try:
                _parse_quantity(quantity)
            except ValueError as e:
                raise ValueError(f"{resource}: {quantity!r} is not a quantity") from e
        return value

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Flavor:
        for resource, limit in self.limits.items():
            request = self.requests.get(resource)
            if request is not None and _parse_quantity(request) > _parse_quantity(limit):
                raise ValueError(f"{resource}: request {request} exceeds limit {limit}")
        return self

    def resources(self) -> dict[str, dict[str, str]]:
        """The container's ``resources`` field."""
        return {"requests": dict(self.requests), "limits": dict(self.limits)}


#: Built-in flavors: a haproxy+keepalived amphora needs little; limits leave room for bursts.
BUILTIN_FLAVORS: Mapping[str, Flavor] = {
    "small": Flavor(
        requests={"cpu": "250m", "memory": "256Mi"}, limits={"cpu": "1", "memory": "512Mi"}
    ),
    "medium": Flavor(
        requests={"cpu": "500m", "memory": "512Mi"}, limits={"cpu": "2", "memory": "1Gi"}
    ),
    "large": Flavor(requests={"cpu": "1", "memory": "1Gi"}, limits={"cpu": "4", "memory": "2Gi"}),
}


#: Capabilities the ``restricted`` Pod Security level allows a container to add.
RESTRICTED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
_CAPABILITY = re.compile(r"^[A-Z][A-Z0-9_]*$")


class HealthProbe(BaseModel):
    """The amphora's readiness probe: Ready (and the Amphora Ready) only once this answers.

    The default is the amphora agent's health endpoint, ``GET /1.0/info`` on port 9443. An agent
    that demands client certificates (Octavia's mutual TLS) cannot be probed over HTTP by the
    kubelet; use ``type: tcp`` for it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["http", "tcp"] = "http"
    port: Annotated[int, Field(ge=1, le=65535)] = 9443
    path: Annotated[str, Field(pattern=r"^/")] = "/1.0/info"
    scheme: Literal["HTTP", "HTTPS"] = "HTTP"
    period_seconds: Annotated[int, Field(ge=1)] = 2
    timeout_seconds: Annotated[int, Field(ge=1)] = 1
    failure_threshold: Annotated[int, Field(ge=1)] = 3

    def readiness_probe(self) -> dict[str, Any]:
        action: dict[str, Any]
        if self.type == "tcp":
            action = {"tcpSocket": {"port": self.port}}
        else:
            action = {"httpGet": {"port": self.port, "path": self.path, "scheme": self.scheme}}
        return {
            **action,
            "periodSeconds": self.period_seconds,
            "timeoutSeconds": self.timeout_seconds,
            "failureThreshold": self.failure_threshold,
        }


DEFAULT_HEALTH_PROBE = HealthProbe()


class PodSecurity(BaseModel):
    """The Pod's security context: the ``restricted`` Pod Security Standard unless widened.

    Always: no privilege escalation, every capability dropped, the runtime's default seccomp
    profile. Non-root unless ``run_as_user`` is 0. ``fs_group`` is added to the process's groups
    and owns the mounted Secrets, so a non-root amphora can read its files. ``capabilities``
    adds capabilities back (``NET_ADMIN``, ``NET_RAW`` for keepalived and haproxy): anything but
    ``NET_BIND_SERVICE`` leaves ``restricted`` (and NET_ADMIN/NET_RAW ``baseline`` too), so the
    namespace must allow the ``privileged`` level; see docs/drivers/container.md.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_as_user: Annotated[int, Field(ge=0)] | None = None
    run_as_group: Annotated[int, Field(ge=0)] | None = None
    fs_group: Annotated[int, Field(ge=0)] | None = 65532
    capabilities: tuple[str, ...] = ()

    @field_validator("capabilities")
    @classmethod
    def _capability_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _CAPABILITY.match(name) or name.startswith("CAP_"):
                raise ValueError(f"{name!r} is not a capability name like NET_ADMIN (no CAP_)")
        return value

    @property
    def restricted(self) -> bool:
        """Whether Pods pass the ``restricted`` Pod Security level."""
        return self.run_as_user != 0 and set(self.capabilities) <= RESTRICTED_CAPABILITIES

    def pod_context(self) -> dict[str, Any]:
        context: dict[str, Any] = {
            "runAsNonRoot": self.run_as_user != 0,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        for key, value in (
            ("runAsUser", self.run_as_user),
            ("runAsGroup", self.run_as_group),
            ("fsGroup", self.fs_group),
        ):
            if value is not None:
                context[key] = value
        return context

    def container_context(self) -> dict[str, Any]:
        capabilities: dict[str, Any] = {"drop": ["ALL"]}
        if self.capabilities:
            capabilities["add"] = list(self.capabilities)
        return {"allowPrivilegeEscalation": False, "capabilities": capabilities}


class PodOptions(BaseModel):
    """How the driver shapes every Pod: placement, image pull, readiness, security.

    Set per compute profile (the driver's constructor options); see docs/drivers/container.md.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    node_selector: dict[str, str] = {}
    tolerations: tuple[dict[str, Any], ...] = ()
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    health_probe: HealthProbe | None = DEFAULT_HEALTH_PROBE
    security: PodSecurity = PodSecurity()
    termination_grace_period_seconds: Annotated[int, Field(ge=0)] | None = None


# -- names, labels and manifests (pure) --------------------------------------------------------


def workload_name(name: str) -> str:
    """The StatefulSet name for an amphora name: the name itself, or a hashed prefix if long."""
    if len(name) <= MAX_WORKLOAD_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_WORKLOAD_NAME - 9].rstrip('-')}-{digest}"


def owner_reference(owner: OwnerResource) -> dict[str, Any]:
    """The ownerReference to the request's owner resource. Neither the controller reference
    (children keep theirs to the StatefulSet) nor a blocking one: deleting the owner never
    waits for the amphora's objects, and needs no grant on the owner's finalizers."""
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": False,
        "blockOwnerDeletion": False,
    }


def owner_label(owner: str) -> str:
    """A label value for ``owner``; owners may start or end with '-', label values may not."""
    return owner if LABEL_VALUE.match(owner) else f"x{owner}x"


def selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in labels.items())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class Manifests:
    """Every object of one amphora, as API dicts, in creation order."""

    secrets: list[dict[str, Any]]
    network_policy: dict[str, Any] | None
    workload: dict[str, Any]

    @property
    def children(self) -> list[tuple[str, dict[str, Any]]]:
        kinds = [("Secret", secret) for secret in self.secrets]
        if self.network_policy is not None:
            kinds.append(("NetworkPolicy", self.network_policy))
        return kinds


def build_manifests(
    request: BuildRequest,
    *,
    amphora_id: str,
    flavor_name: str,
    flavor: Flavor,
    authorized_keys_path: str,
    user_data_path: str,
    options: PodOptions,
    owner_reference: Mapping[str, Any] | None = None,
) -> Manifests:
    """Translate one build request into Kubernetes objects; no API calls.

    ``owner_reference`` (the request's owner resource, when it lives in this namespace) goes
    on every object, so Kubernetes' garbage collector deletes them with their owner."""
    base = workload_name(request.name)
    labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_APP: "amphora",
        LABEL_INSTANCE: request.name,
        LABEL_ID: amphora_id,
    }
    annotations: dict[str, str] = {}
    if request.owner is not None:
        labels[LABEL_OWNER] = owner_label(request.owner)
        annotations[ANNOTATION_OWNER] = request.owner

    def meta(name: str, **extra: str) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": name, "labels": dict(labels), "annotations": {**annotations, **extra},
        }  # fmt: skip
        if owner_reference is not None:
            metadata["ownerReferences"] = [dict(owner_reference)]
        return metadata

    secrets: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    env: list[dict[str, str]] = []

    def secret(suffix: str, data: Mapping[str, bytes], mode: int, **extra: str) -> None:
        secrets.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": meta(f"{base}-{suffix}", **extra),
                "type": "Opaque",
                "data": {key: _b64(value) for key, value in data.items()},
            }
        )
        volumes.append(
            {"name": suffix, "secret": {"secretName": f"{base}-{suffix}", "defaultMode": mode}}
        )

    if request.keys:
        secret(
            "ssh-keys",
            {"authorized_keys": "".join(f"{k}\n" for k in request.keys).encode()},
            KEYS_MODE,
        )
        mounts.append(
            {"name": "ssh-keys", "mountPath": authorized_keys_path, "subPath": "authorized_keys"}
        )
    if request.config_drive_files:
        paths = {f"file-{i}": path for i, path in enumerate(sorted(request.config_drive_files))}
        secret(
            "files",
            {key: request.config_drive_files[path] for key, path in paths.items()},
            FILE_MODE,
            **{ANNOTATION_FILES: json.dumps(paths)},
        )
        mounts.extend(
            {"name": "files", "mountPath": path, "subPath": key} for key, path in paths.items()
        )
    if request.user_data is not None:
        secret("user-data", {"user-data": request.user_data}, FILE_MODE)
        mounts.append({"name": "user-data", "mountPath": user_data_path, "subPath": "user-data"})
        env.append({"name": USER_DATA_ENV, "value": user_data_path})

    pod_labels = dict(labels)
    pod_labels.update({f"{SECGROUP_LABEL_PREFIX}{group}": "true" for group in request.sec_groups})
    if request.server_group is not None:
        pod_labels[LABEL_SERVER_GROUP] = request.server_group.name

    network_policy = None
    if request.sec_groups:
        network_policy = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": meta(f"{base}-secgroups"),
            "spec": {
                "podSelector": {"matchLabels": {LABEL_ID: amphora_id}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [
                            {
                                "podSelector": {
                                    "matchLabels": {f"{SECGROUP_LABEL_PREFIX}{g}": "true"}
                                }
                            }
                            for g in request.sec_groups
                        ]
                    }
                ],
            },
        }

    pod_spec: dict[str, Any] = {
        # An amphora has no business with the Kubernetes API or the namespace's Services.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [
            {
                "name": CONTAINER_NAME,
                "image": request.image_id,
                "resources": flavor.resources(),
                "env": env,
                "volumeMounts": mounts,
                "securityContext": options.security.container_context(),
            }
        ],
        "volumes": volumes,
        "securityContext": options.security.pod_context(),
    }
    container = pod_spec["containers"][0]
    if options.image_pull_policy is not None:
        container["imagePullPolicy"] = options.image_pull_policy
    if options.health_probe is not None:
        container["readinessProbe"] = options.health_probe.readiness_probe()
    if options.node_selector:
        pod_spec["nodeSelector"] = dict(options.node_selector)
    if options.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in options.tolerations]
    if options.termination_grace_period_seconds is not None:
        pod_spec["terminationGracePeriodSeconds"] = options.termination_grace_period_seconds
    affinity = _affinity(request.availability_zone, request.server_group)
    if affinity:
        pod_spec["affinity"] = affinity
    pod_annotations = (
        {MULTUS_NETWORKS: ",".join(request.network_ids)} if request.network_ids else {}
    )
    workload = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(
            base,
            **{ANNOTATION_TAGS: json.dumps(list(request.tags)), ANNOTATION_FLAVOR: flavor_name},
        ),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {LABEL_ID: amphora_id}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": pod_spec,
            },
        },
    }
    return Manifests(secrets=secrets, network_policy=network_policy, workload=workload)


def _affinity(zone: str | None, group: ServerGroup | None) -> dict[str, Any]:
    """Node affinity for the zone, pod (anti-)affinity per host for the server group."""
    affinity: dict[str, Any] = {}
    if zone is not None:
        affinity["nodeAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": ZONE_LABEL, "operator": "In", "values": [zone]}]}
                ]
            }
        }
    if group is not None:
        term = {
            "labelSelector": {"matchLabels": {LABEL_SERVER_GROUP: group.name}},
            "topologyKey": HOSTNAME_LABEL,
        }
        if group.policy is ServerGroupPolicy.AFFINITY:
            affinity["podAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
        elif group.policy is ServerGroupPolicy.ANTI_AFFINITY:
            affinity["podAntiAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
        else:
            affinity["podAntiAffinity"] = {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": term}
                ]
            }
    return affinity
