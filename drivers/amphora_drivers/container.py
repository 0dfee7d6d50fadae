"""The Container driver: each amphora is a one-replica StatefulSet in one namespace.

The seed spec's Container type, which Octavia never shipped, done with objects a cluster admin
already knows. For an amphora named ``<name>`` (the StatefulSet is ``<name>`` itself, shortened
with a hash suffix beyond 52 characters because the StatefulSet controller derives 63-character
label values from it) the driver creates:

==========================  ===============================================================
StatefulSet ``<name>``      ``replicas: 1``; the record of the amphora. Its Pod is ``<name>-0``.
Secret ``<name>-ssh-keys``  ``keys`` → key ``authorized_keys``, mounted (subPath, mode 0644)
                            at ``authorized_keys_path`` (default
                            ``/home/amphora/.ssh/authorized_keys``).
Secret ``<name>-files``     ``config_drive_files`` → keys ``file-0`` … ``file-4`` (paths in
                            sorted order; the annotation ``amphora-operator.dev/files`` maps
                            key → path), each mounted (subPath, mode 0600) at its exact path.
Secret ``<name>-user-data`` ``user_data`` → key ``user-data``, mounted (subPath, mode 0600) at
                            ``user_data_path`` (default ``/var/lib/amphora/user-data``); the
                            container gets ``AMPHORA_USER_DATA_FILE=<that path>``.
NetworkPolicy               only with ``sec_groups``; see "Security groups" below.
``<name>-secgroups``
==========================  ===============================================================

Other fields: ``image_id`` is the container image; ``amphora_flavor`` picks CPU/memory requests
and limits from the flavor table (:data:`BUILTIN_FLAVORS`, replaced by the ``flavors`` argument,
overridden per flavor by the optional ``flavor_configmap``, whose data keys are flavor names and
values YAML ``{requests: {...}, limits: {...}}``; it is read at each build, and a missing
ConfigMap means "no overrides"); ``network_ids`` become the Multus annotation
``k8s.v1.cni.cncf.io/networks`` (each id names a NetworkAttachmentDefinition,
``[namespace/]name[@interface]``; the pod network stays the default); the availability zone is
required node affinity on ``topology.kubernetes.io/zone``; a server group labels the Pod
``amphora-operator.dev/server-group=<name>`` and adds pod (anti-)affinity on that label per
``kubernetes.io/hostname``: required for ``anti-affinity`` and ``affinity``, preferred (weight
100) for ``soft-anti-affinity``. Tags are kept in the annotation ``amphora-operator.dev/tags``.

Labels on every object: ``app.kubernetes.io/managed-by=amphora-container-driver``,
``app.kubernetes.io/name=amphora``, ``app.kubernetes.io/instance=<request name>``,
``amphora-operator.dev/id=<amphora id>`` and, with an owner, ``amphora-operator.dev/owner``
(the owner itself when it is a valid label value, else wrapped in ``x…x``; the exact owner is in
the annotation of the same name, which is what :meth:`ContainerDriver.find` compares).

Security groups: a security group named ``g`` is the Pod label ``secgroup.amphora-operator.dev/g
=true`` (names must be valid label names). With at least one group, the NetworkPolicy selects the
Pod and makes its ingress default-deny except from Pods of the same namespace that are members of
one of its groups (OpenStack's default "remote group = self" rule); egress stays open, as in
OpenStack. A group's further rules are NetworkPolicies the admin writes selecting its label
(policies are additive). Without groups no policy is created and the namespace's rules apply.

Why a one-replica StatefulSet rather than a bare Pod or a Deployment: the StatefulSet controller
recreates the Pod when it is evicted or deleted (node drain, preemption), which a bare Pod never
survives; unlike a Deployment it never runs two Pods of one amphora at once (no surge, and no
replacement while a lost node may still run the old Pod), which matters for an amphora that
holds a VRRP address; and ``replicas: 0`` is a natural suspend that keeps the record, the
Secrets and the id. A Pod on a lost node is replaced only once that Pod is deleted, which is the
failover the operator's health checks already drive.

Build order (the contract's "record first, decorate never"): Secrets and NetworkPolicy first,
so the Pod never starts without its files or its policy; then the StatefulSet, whose creation is
the build; then ownerReferences from the children to it, so the garbage collector removes them
with it. A crash before the StatefulSet leaves labelled children that the next build with the
same owner takes over; a failed ownerReferences patch is logged and :meth:`delete` still removes
the children by label. The id is a UUID chosen at create and stored in the ``id`` label (label
selectors then find an amphora without listing all of them).

States (the pure :func:`observe_workload`): StatefulSet being deleted → DELETING;
``replicas: 0`` → SUSPENDED (raw ``Suspending`` while a Pod remains); no Pod and a recent
``FailedCreate`` event (quota, admission) → ERROR; no Pod → BUILDING; Pod ``Running`` and
``Ready`` → ACTIVE; a container waiting with ``ErrImagePull``, ``ImagePullBackOff``,
``CrashLoopBackOff``, ``CreateContainerConfigError``… → ERROR; ``PodScheduled=False`` with
reason ``Unschedulable`` → ERROR carrying the scheduler's message, like Nova's "No valid host":
nothing will run until an admin adds capacity or the user picks another flavor, zone or server
group. These ERRORs are observations, not verdicts: Kubernetes keeps retrying, and the state
moves on by itself once the cause is gone. Addresses are the Pod IPs followed by the secondary
networks' IPs from Multus's ``k8s.v1.cni.cncf.io/network-status``.

suspend scales to zero (the Pod is deleted; Secrets, NetworkPolicy and id stay); resume scales
back to one and raises NotSuspendedError unless ``replicas`` is 0. delete removes the StatefulSet
with foreground propagation (it stays visible as DELETING while the garbage collector removes its
Pod) and the children by label.

RBAC in the namespace: ``statefulsets`` get/list/create/patch/delete and
``statefulsets/finalizers`` update (ownerReferences that block deletion); ``secrets`` and
``networkpolicies`` get/create/update/patch/deletecollection; ``pods`` and ``events`` list;
``configmaps`` get (only with ``flavor_configmap``). Secret contents are never logged.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity as _untyped_parse_quantity
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

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
    AmphoraInstance,
    AmphoraState,
    AmphoraType,
    BuildRequest,
    ServerGroup,
    ServerGroupPolicy,
)

__all__ = [
    "BUILTIN_FLAVORS",
    "DEFAULT_AUTHORIZED_KEYS_PATH",
    "DEFAULT_USER_DATA_PATH",
    "LABEL_ID",
    "LABEL_INSTANCE",
    "LABEL_MANAGED_BY",
    "LABEL_OWNER",
    "LABEL_SERVER_GROUP",
    "MANAGED_BY",
    "SECGROUP_LABEL_PREFIX",
    "USER_DATA_ENV",
    "ContainerDriver",
    "Flavor",
    "Observation",
    "observe_pod",
    "observe_workload",
    "workload_name",
]

LOG = logging.getLogger(__name__)

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

#: The StatefulSet controller labels Pods ``controller-revision-hash=<name>-<hash>`` (63 max).
MAX_WORKLOAD_NAME = 52
_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_NETWORK_REF = re.compile(
    r"^(?:[a-z0-9](?:[-a-z0-9]*[a-z0-9])?/)?[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?"
    r"(?:@[A-Za-z0-9_.-]{1,15})?$"
)

#: Container waiting reasons that will not clear without a change; the value says what to do.
_WAITING_ERRORS: Mapping[str, str] = {
    "ErrImagePull": "check image_id and the registry's pull credentials",
    "ImagePullBackOff": "check image_id and the registry's pull credentials",
    "InvalidImageName": "image_id is not a valid image reference",
    "ErrImageNeverPull": "the image is not on the node and the pull policy forbids pulling",
    "CrashLoopBackOff": "the image's entrypoint keeps exiting; see kubectl logs --previous",
    "CreateContainerConfigError": "the container's configuration cannot be resolved",
    "CreateContainerError": "the container runtime cannot create the container",
    "RunContainerError": "the container runtime cannot start the container",
}


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


@dataclass(frozen=True)
class Observation:
    """What the objects of one amphora say about it, normalised."""

    state: AmphoraState
    raw_state: str
    fault: str | None = None
    addresses: tuple[str, ...] = ()


# -- names, labels and manifests (pure) --------------------------------------------------------


def workload_name(name: str) -> str:
    """The StatefulSet name for an amphora name: the name itself, or a hashed prefix if long."""
    if len(name) <= MAX_WORKLOAD_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_WORKLOAD_NAME - 9].rstrip('-')}-{digest}"


def _owner_label(owner: str) -> str:
    """A label value for ``owner``; owners may start or end with '-', label values may not."""
    return owner if _LABEL_VALUE.match(owner) else f"x{owner}x"


def _selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in labels.items())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class _Manifests:
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


def _manifests(
    request: BuildRequest,
    *,
    amphora_id: str,
    flavor_name: str,
    flavor: Flavor,
    authorized_keys_path: str,
    user_data_path: str,
) -> _Manifests:
    """Translate one build request into Kubernetes objects; no API calls."""
    base = workload_name(request.name)
    labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_APP: "amphora",
        LABEL_INSTANCE: request.name,
        LABEL_ID: amphora_id,
    }
    annotations: dict[str, str] = {}
    if request.owner is not None:
        labels[LABEL_OWNER] = _owner_label(request.owner)
        annotations[ANNOTATION_OWNER] = request.owner

    def meta(name: str, **extra: str) -> dict[str, Any]:
        return {"name": name, "labels": dict(labels), "annotations": {**annotations, **extra}}

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
            "ssh-keys", {"authorized_keys": "".join(f"{k}\n" for k in request.keys).encode()}, 0o644
        )
        mounts.append(
            {"name": "ssh-keys", "mountPath": authorized_keys_path, "subPath": "authorized_keys"}
        )
    if request.config_drive_files:
        paths = {f"file-{i}": path for i, path in enumerate(sorted(request.config_drive_files))}
        secret(
            "files",
            {key: request.config_drive_files[path] for key, path in paths.items()},
            0o600,
            **{ANNOTATION_FILES: json.dumps(paths)},
        )
        mounts.extend(
            {"name": "files", "mountPath": path, "subPath": key} for key, path in paths.items()
        )
    if request.user_data is not None:
        secret("user-data", {"user-data": request.user_data}, 0o600)
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
            }
        ],
        "volumes": volumes,
    }
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
    return _Manifests(secrets=secrets, network_policy=network_policy, workload=workload)


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


# -- status (pure) --------------------------------------------------------------------------


def observe_workload(
    workload: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    failed_create: str | None = None,
) -> Observation:
    """Map a StatefulSet, its Pods (API JSON) and a FailedCreate message to a state.

    ``failed_create`` is the message of a FailedCreate event newer than the last change to the
    StatefulSet; the caller only looks it up when there is no Pod.
    """
    if workload.get("metadata", {}).get("deletionTimestamp"):
        return Observation(AmphoraState.DELETING, "Terminating")
    if workload.get("spec", {}).get("replicas", 1) == 0:
        return Observation(AmphoraState.SUSPENDED, "Suspending" if pods else "Suspended")
    live = [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")]
    if not live:
        if pods:
            return Observation(AmphoraState.BUILDING, "Terminating")
        if failed_create:
            fault = f"the StatefulSet controller cannot create the Pod: {failed_create}"
            return Observation(AmphoraState.ERROR, "NoPod/FailedCreate", fault)
        return Observation(AmphoraState.BUILDING, "NoPod")
    return observe_pod(live[0])


def observe_pod(pod: Mapping[str, Any]) -> Observation:
    """Map one Pod (API JSON) to a state, a fault a user can act on and its addresses."""
    status = pod.get("status", {})
    phase = status.get("phase", "Pending")
    addresses = _addresses(pod)
    conditions = {c.get("type"): c for c in status.get("conditions", [])}
    if phase in ("Failed", "Succeeded"):
        reason = status.get("reason", "Stopped")
        message = status.get("message", "every container has exited")
        fault = f"the Pod stopped ({reason}): {message}; the StatefulSet will replace it"
        return Observation(AmphoraState.ERROR, f"{phase}/{reason}", fault, addresses)
    if phase == "Unknown":
        return Observation(AmphoraState.UNKNOWN, "Unknown/NodeUnreachable", None, addresses)
    scheduled = conditions.get("PodScheduled", {})
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        fault = (
            f"Unschedulable: {scheduled.get('message', 'no node fits the Pod')}; choose a "
            "smaller flavor, another availability zone or server group, or add capacity"
        )
        return Observation(AmphoraState.ERROR, f"{phase}/Unschedulable", fault, addresses)
    statuses = [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]
    waiting = [s for s in statuses if "waiting" in s.get("state", {})]
    for container in waiting:
        reason = container["state"]["waiting"].get("reason", "")
        if reason in _WAITING_ERRORS:
            return Observation(
                AmphoraState.ERROR,
                f"{phase}/{reason}",
                _waiting_fault(container, reason),
                addresses,
            )
    if phase == "Running" and conditions.get("Ready", {}).get("status") == "True":
        return Observation(AmphoraState.ACTIVE, "Running/Ready", None, addresses)
    if phase == "Running":
        return Observation(AmphoraState.BUILDING, "Running/NotReady", None, addresses)
    if waiting:
        detail = waiting[0]["state"]["waiting"].get("reason", "Waiting")
    else:
        detail = "Scheduled" if scheduled.get("status") == "True" else "Scheduling"
    return Observation(AmphoraState.BUILDING, f"{phase}/{detail}", None, addresses)


def _waiting_fault(container: Mapping[str, Any], reason: str) -> str:
    message = container["state"]["waiting"].get("message")
    fault = f"{reason}: {message}" if message else reason
    terminated = container.get("lastState", {}).get("terminated")
    if terminated:
        fault += (
            f" (last exit code {terminated.get('exitCode')}, {terminated.get('reason', 'Error')})"
        )
    return f"{fault}; {_WAITING_ERRORS[reason]}"


def _addresses(pod: Mapping[str, Any]) -> tuple[str, ...]:
    """Pod IPs, then the secondary networks' IPs that Multus reports."""
    status = pod.get("status", {})
    found = [entry["ip"] for entry in status.get("podIPs", []) if entry.get("ip")]
    if not found and status.get("podIP"):
        found.append(status["podIP"])
    raw = pod.get("metadata", {}).get("annotations", {}).get(MULTUS_NETWORK_STATUS)
    try:
        networks = json.loads(raw) if raw else []
    except ValueError:
        networks = []  # written by a CNI plugin, not by us: a bad one costs addresses only
    for network in networks if isinstance(networks, list) else []:
        if isinstance(network, dict) and not network.get("default"):
            found.extend(ip for ip in network.get("ips", []) if ip not in found)
    return tuple(found)


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _last_change(workload: Mapping[str, Any]) -> datetime | None:
    """When anyone last wrote the StatefulSet outside its status (create, scale, edit)."""
    times = [
        _time(entry.get("time"))
        for entry in workload.get("metadata", {}).get("managedFields", [])
        if entry.get("subresource") != "status"
    ]
    return max((t for t in times if t is not None), default=None)


def _event_time(event: Mapping[str, Any]) -> datetime | None:
    return _time(
        event.get("series", {}).get("lastObservedTime")
        or event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("metadata", {}).get("creationTimestamp")
    )


# -- errors ---------------------------------------------------------------------------------


def _api_error(e: ApiException, what: str, error: type[AmphoraComputeError]) -> AmphoraComputeError:
    """Translate an API answer into the spec's exceptions, with reason and retryability."""
    detail = e.reason or ""
    with contextlib.suppress(ValueError, TypeError):
        detail = json.loads(e.body or "").get("message", detail)
    message = f"{what}: HTTP {e.status}: {detail}"
    status = e.status or 0
    reason: Reason | str
    if status == 401:
        reason, retryable = Reason.UNAUTHORIZED, False
        message += "; the driver's credentials were rejected"
    elif status == 403 and "exceeded quota" in detail:
        reason, retryable = Reason.QUOTA_EXCEEDED, True
    elif status == 403:
        reason, retryable = Reason.FORBIDDEN, False
        message += "; grant the driver's identity the RBAC rules in the container driver's docs"
    elif status == 404:
        reason, retryable = Reason.NOT_FOUND, False
    elif status == 409:
        reason, retryable = Reason.CONFLICT, True
    elif status in (400, 422):
        reason, retryable = Reason.INVALID_INPUT, False
    elif status == 429:
        reason, retryable = Reason.RATE_LIMITED, True
    elif status == 504:
        reason, retryable = Reason.TIMEOUT, True
    elif status >= 500 or status == 0:
        reason, retryable = Reason.BACKEND_UNAVAILABLE, True
    else:
        reason, retryable = Reason.UNKNOWN, False
    return error(message, reason=reason, retryable=retryable)


@contextlib.contextmanager
def _translated(what: str, error: type[AmphoraComputeError]) -> Iterator[None]:
    """Turn API and transport failures inside the block into ``error`` (chained)."""
    try:
        yield
    except ApiException as e:
        raise _api_error(e, what, error) from e
    except urllib3.exceptions.HTTPError as e:
        cause = e.reason if isinstance(e, urllib3.exceptions.MaxRetryError) else e
        # NewConnectionError subclasses ConnectTimeoutError in urllib3 2, yet means "refused".
        refused = isinstance(cause, urllib3.exceptions.NewConnectionError)
        if isinstance(cause, urllib3.exceptions.TimeoutError) and not refused:
            raise error(
                f"{what}: the Kubernetes API did not answer in time ({cause})",
                reason=Reason.TIMEOUT,
                retryable=True,
            ) from e
        raise error(
            f"{what}: the Kubernetes API is unreachable ({cause})",
            reason=Reason.BACKEND_UNAVAILABLE,
            retryable=True,
        ) from e


def _invalid(field: str, message: str) -> AmphoraBuildError:
    return AmphoraBuildError(
        f"{field}: {message}", reason=Reason.INVALID_INPUT, retryable=False, field=field
    )


# -- the driver -----------------------------------------------------------------------------


class ContainerDriver(AmphoraComputeDriver):
    """Container amphorae as one-replica StatefulSets with Secrets, in one namespace."""

    name: ClassVar[str] = "container"
    supported_types: ClassVar[frozenset[AmphoraType]] = frozenset({AmphoraType.CONTAINER})

    def __init__(
        self,
        *,
        namespace: str,
        api_client: k8s.ApiClient | None = None,
        flavors: Mapping[str, Flavor | Mapping[str, Any]] | None = None,
        default_flavor: str = "small",
        flavor_configmap: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        authorized_keys_path: str = DEFAULT_AUTHORIZED_KEYS_PATH,
        user_data_path: str = DEFAULT_USER_DATA_PATH,
    ) -> None:
        """Configure the driver; nothing is read from the environment except by the fallback.

        :param namespace: where every object of every amphora lives.
        :param api_client: the client to use; without one, in-cluster configuration is tried,
            then the default kubeconfig (the client is then owned and closed by :meth:`close`).
        :param flavors: flavor name → :class:`Flavor` (or its dict form); replaces
            :data:`BUILTIN_FLAVORS`.
        :param default_flavor: used when a build names no flavor.
        :param flavor_configmap: a ConfigMap in ``namespace`` whose entries override the table.
        :param connect_timeout: seconds to connect to the API server, per request.
        :param read_timeout: seconds to wait for its answer, per request.
        :param authorized_keys_path: where the ``keys`` appear in the container.
        :param user_data_path: where ``user_data`` appears (also in ``$AMPHORA_USER_DATA_FILE``).
        """
        self.namespace = namespace
        try:
            given = BUILTIN_FLAVORS if flavors is None else flavors
            table = {n: Flavor.model_validate(f) for n, f in given.items()}
        except ValidationError as e:
            raise ValueError(f"flavors: {e}") from e
        self.flavors: Mapping[str, Flavor] = table
        self.default_flavor = default_flavor
        self.flavor_configmap = flavor_configmap
        self.timeout = (connect_timeout, read_timeout)
        self.authorized_keys_path = authorized_keys_path
        self.user_data_path = user_data_path
        self._owns_client = api_client is None
        self.api_client = api_client if api_client is not None else _default_client()
        self._core = k8s.CoreV1Api(self.api_client)
        self._apps = k8s.AppsV1Api(self.api_client)
        self._networking = k8s.NetworkingV1Api(self.api_client)

    def close(self) -> None:
        """Close the API client if the driver created it."""
        if self._owns_client:
            self.api_client.close()  # type: ignore[no-untyped-call]

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Call the API and return its JSON answer (the raw JSON, not the client's models)."""
        response = method(*args, _request_timeout=self.timeout, _preload_content=False, **kwargs)
        body: dict[str, Any] = json.loads(response.data or b"{}")
        return body

    # -- validation ------------------------------------------------------------------------

    def validate(self, request: BuildRequest) -> None:
        """Reject what Kubernetes would reject later, or what would collide in the container."""
        for index, network in enumerate(request.network_ids):
            if not _NETWORK_REF.match(network):
                raise _invalid(
                    f"network_ids[{index}]",
                    f"{network!r} is not a NetworkAttachmentDefinition reference "
                    "([namespace/]name[@interface], lower-case DNS names)",
                )
        for index, group in enumerate(request.sec_groups):
            if not _LABEL_NAME.match(group):
                raise _invalid(
                    f"sec_groups[{index}]",
                    f"{group!r} must be 1-63 letters, digits, '-', '_' or '.', starting and "
                    "ending with a letter or digit (it becomes a Pod label)",
                )
        if request.availability_zone is not None and not _LABEL_VALUE.match(
            request.availability_zone
        ):
            raise _invalid(
                "availability_zone",
                f"{request.availability_zone!r} is not a valid topology.kubernetes.io/zone value",
            )
        mounts = list(request.config_drive_files)
        if request.keys:
            mounts.append(self.authorized_keys_path)
        if request.user_data is not None:
            mounts.append(self.user_data_path)
        for path in mounts:
            clash = [o for o in mounts if o != path and o.startswith(path + "/")]
            if clash or mounts.count(path) > 1:
                raise _invalid(
                    "config_drive_files",
                    f"{path} collides with {(clash or [path])[0]} (the keys are mounted at "
                    f"{self.authorized_keys_path}, user data at {self.user_data_path})",
                )

    def _flavor(self, name: str) -> Flavor:
        """The flavor called ``name``: the ConfigMap's entry if it has one, else the table's."""
        if self.flavor_configmap is not None:
            what = f"read flavor ConfigMap {self.namespace}/{self.flavor_configmap}"
            data: dict[str, str] = {}
            with _translated(what, AmphoraBuildError):
                try:
                    data = self._call(
                        self._core.read_namespaced_config_map,
                        self.flavor_configmap,
                        self.namespace,
                    ).get("data", {})
                except ApiException as e:
                    if e.status != 404:  # a missing ConfigMap means no overrides
                        raise
            if name in data:
                try:
                    return Flavor.model_validate(yaml.safe_load(data[name]))
                except (ValidationError, yaml.YAMLError) as e:
                    raise AmphoraBuildError(
                        f"amphora_flavor: flavor {name!r} in ConfigMap "
                        f"{self.namespace}/{self.flavor_configmap} is invalid: {e}",
                        reason=Reason.FLAVOR_NOT_FOUND,
                        retryable=False,
                        field="amphora_flavor",
                    ) from e
            known = sorted({*self.flavors, *data})
        else:
            known = sorted(self.flavors)
        if name not in self.flavors:
            raise AmphoraBuildError(
                f"amphora_flavor: no flavor {name!r} (known: {', '.join(known)})",
                reason=Reason.FLAVOR_NOT_FOUND,
                retryable=False,
                field="amphora_flavor",
            )
        return self.flavors[name]

    # -- build -----------------------------------------------------------------------------

    def create(self, request: BuildRequest) -> str:
        flavor_name = request.amphora_flavor or self.default_flavor
        flavor = self._flavor(flavor_name)
        amphora_id = str(uuid.uuid4())
        manifests = _manifests(
            request,
            amphora_id=amphora_id,
            flavor_name=flavor_name,
            flavor=flavor,
            authorized_keys_path=self.authorized_keys_path,
            user_data_path=self.user_data_path,
        )
        for kind, child in manifests.children:
            self._create_child(kind, child, request.owner)
        workload = self._create_workload(manifests.workload, request.owner)
        self._own_children(workload, manifests.children)
        built_id: str = workload["metadata"]["labels"][LABEL_ID]
        LOG.info(
            "amphora %s: StatefulSet %s/%s created (flavor %s)",
            built_id,
            self.namespace,
            workload["metadata"]["name"],
            flavor_name,
        )
        return built_id

    def _child_api(self, kind: str) -> tuple[Callable[..., Any], ...]:
        """(create, read, replace) of a child kind."""
        if kind == "Secret":
            core = self._core
            return (
                core.create_namespaced_secret,
                core.read_namespaced_secret,
                core.replace_namespaced_secret,
            )
        net = self._networking
        return (
            net.create_namespaced_network_policy,
            net.read_namespaced_network_policy,
            net.replace_namespaced_network_policy,
        )

    def _create_child(self, kind: str, body: dict[str, Any], owner: str | None) -> None:
        """Create a Secret or NetworkPolicy, taking over one a crashed build left behind."""
        create, read, replace = self._child_api(kind)
        name = body["metadata"]["name"]
        with _translated(f"create {kind} {self.namespace}/{name}", AmphoraBuildError):
            try:
                self._call(create, self.namespace, body, field_manager=FIELD_MANAGER)
                return
            except ApiException as e:
                if e.status != 409:
                    raise
            existing = self._call(read, name, self.namespace)
            self._check_takeover(kind, existing, owner)
            # Stale ownerReferences are dropped; _own_children() sets the new StatefulSet's.
            version = existing["metadata"]["resourceVersion"]
            body = {**body, "metadata": {**body["metadata"], "resourceVersion": version}}
            self._call(replace, name, self.namespace, body, field_manager=FIELD_MANAGER)
            LOG.info("took over %s %s/%s left by an earlier build", kind, self.namespace, name)

    def _check_takeover(self, kind: str, existing: Mapping[str, Any], owner: str | None) -> None:
        """Allow reusing an object only when it is ours, alive and of the same owner."""
        metadata = existing.get("metadata", {})
        name = metadata.get("name")
        if metadata.get("deletionTimestamp"):
            raise AmphoraBuildError(
                f"{kind} {self.namespace}/{name} of an earlier amphora is still being deleted",
                reason=Reason.CONFLICT,
                retryable=True,
            )
        theirs = metadata.get("annotations", {}).get(ANNOTATION_OWNER)
        ours = metadata.get("labels", {}).get(LABEL_MANAGED_BY) == MANAGED_BY
        if owner is None or theirs != owner or not ours:
            holder = f"owner {theirs}" if ours and theirs else "something else"
            raise AmphoraBuildError(
                f"{kind} {self.namespace}/{name} already exists and belongs to {holder}; "
                "choose another amphora name",
                reason=Reason.CONFLICT,
                retryable=False,
                field="name",
            )

    def _create_workload(self, body: dict[str, Any], owner: str | None) -> dict[str, Any]:
        """Create the StatefulSet; on a name clash, return it if the same owner built it."""
        name = body["metadata"]["name"]
        with _translated(f"create StatefulSet {self.namespace}/{name}", AmphoraBuildError):
            try:
                return self._call(
                    self._apps.create_namespaced_stateful_set,
                    self.namespace,
                    body,
                    field_manager=FIELD_MANAGER,
                )
            except ApiException as e:
                if e.status != 409:
                    raise
            existing = self._call(self._apps.read_namespaced_stateful_set, name, self.namespace)
        self._check_takeover("StatefulSet", existing, owner)
        return existing  # a concurrent build with the same owner won the race

    def _own_children(
        self, workload: Mapping[str, Any], children: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> None:
        """Make the StatefulSet the children's owner, so garbage collection follows it.

        Best effort: the amphora exists already, and delete() removes children by label too.
        """
        reference = {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "name": workload["metadata"]["name"],
            "uid": workload["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        patch = {"metadata": {"ownerReferences": [reference]}}
        for kind, child in children:
            name = child["metadata"]["name"]
            method = (
                self._core.patch_namespaced_secret
                if kind == "Secret"
                else self._networking.patch_namespaced_network_policy
            )
            try:
                with _translated(f"set owner of {kind} {name}", AmphoraComputeError):
                    self._call(
                        method,
                        name,
                        self.namespace,
                        patch,
                        field_manager=FIELD_MANAGER,
                        _content_type="application/merge-patch+json",
                    )
            except AmphoraComputeError as e:
                LOG.warning("%s; delete() will still remove it by label", e.message)

    # -- observe ---------------------------------------------------------------------------

    def find(
        self,
        *,
        amphora_id: str | None = None,
        name: str | None = None,
        owner: str | None = None,
    ) -> list[AmphoraInstance]:
        labels = {LABEL_MANAGED_BY: MANAGED_BY}
        owner_label = _owner_label(owner) if owner is not None else None
        for key, value in (
            (LABEL_ID, amphora_id),
            (LABEL_INSTANCE, name),
            (LABEL_OWNER, owner_label),
        ):
            if value is None:
                continue
            if not _LABEL_VALUE.match(value):
                return []  # no object can carry it
            labels[key] = value
        selector = _selector(labels)
        with _translated(f"list amphorae in {self.namespace}", AmphoraComputeError):
            workloads = self._call(
                self._apps.list_namespaced_stateful_set, self.namespace, label_selector=selector
            )["items"]
            if owner is not None:
                workloads = [
                    w
                    for w in workloads
                    if w["metadata"].get("annotations", {}).get(ANNOTATION_OWNER) == owner
                ]
            if not workloads:
                return []
            pods = self._call(
                self._core.list_namespaced_pod, self.namespace, label_selector=selector
            )["items"]
            by_id: dict[str, list[dict[str, Any]]] = {}
            for pod in pods:
                pod_id = pod["metadata"].get("labels", {}).get(LABEL_ID, "")
                by_id.setdefault(pod_id, []).append(pod)
            return [
                self._instance(w, by_id.get(w["metadata"]["labels"].get(LABEL_ID, ""), []))
                for w in sorted(workloads, key=lambda w: str(w["metadata"]["name"]))
            ]

    def _instance(
        self, workload: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]
    ) -> AmphoraInstance:
        metadata = workload["metadata"]
        failed_create = None
        wants_pod = workload["spec"].get("replicas", 1) > 0 and not metadata.get(
            "deletionTimestamp"
        )
        if wants_pod and not pods:
            failed_create = self._failed_create(workload)
        observed = observe_workload(workload, pods, failed_create)
        annotations = metadata.get("annotations", {})
        return AmphoraInstance(
            id=metadata["labels"][LABEL_ID],
            name=metadata["labels"].get(LABEL_INSTANCE, metadata["name"]),
            amphora_type=AmphoraType.CONTAINER,
            state=observed.state,
            raw_state=observed.raw_state,
            addresses=observed.addresses,
            fault=observed.fault,
            owner=annotations.get(ANNOTATION_OWNER),
            tags=tuple(json.loads(annotations.get(ANNOTATION_TAGS, "[]"))),
        )

    def _failed_create(self, workload: Mapping[str, Any]) -> str | None:
        """The newest FailedCreate event of the StatefulSet since it last changed, if any."""
        events = self._call(
            self._core.list_namespaced_event,
            self.namespace,
            field_selector=f"involvedObject.uid={workload['metadata']['uid']},reason=FailedCreate",
        )["items"]
        since = _last_change(workload)
        dated = [(t, e) for e in events if (t := _event_time(e)) is not None]
        recent = [(t, e) for t, e in dated if since is None or t >= since]
        if not recent:
            return None
        message: str = max(recent, key=lambda pair: pair[0])[1].get("message", "FailedCreate")
        return message

    def _workload(self, amphora_id: str, what: str) -> dict[str, Any]:
        """The StatefulSet of ``amphora_id``, refusing one that is being deleted."""
        if not _LABEL_VALUE.match(amphora_id):
            raise InstanceNotFoundError(f"no amphora with id {amphora_id}")
        selector = _selector({LABEL_MANAGED_BY: MANAGED_BY, LABEL_ID: amphora_id})
        with _translated(f"{what} amphora {amphora_id}", AmphoraComputeError):
            items = self._call(
                self._apps.list_namespaced_stateful_set, self.namespace, label_selector=selector
            )["items"]
        if not items:
            raise InstanceNotFoundError(f"no amphora with id {amphora_id}")
        workload: dict[str, Any] = items[0]
        if workload["metadata"].get("deletionTimestamp"):
            raise AmphoraComputeError(
                f"cannot {what} amphora {amphora_id}: it is being deleted",
                reason=Reason.CONFLICT,
                retryable=False,
            )
        return workload

    # -- lifecycle -------------------------------------------------------------------------

    def suspend(self, amphora_id: str) -> None:
        workload = self._workload(amphora_id, "suspend")
        if workload["spec"].get("replicas", 1) == 0:
            return
        self._scale(workload, [{"op": "replace", "path": "/spec/replicas", "value": 0}])
        LOG.info("amphora %s: suspended (replicas 0)", amphora_id)

    def resume(self, amphora_id: str) -> None:
        workload = self._workload(amphora_id, "resume")
        not_suspended = NotSuspendedError(f"amphora {amphora_id} is not suspended")
        if workload["spec"].get("replicas", 1) != 0:
            raise not_suspended
        # The test op makes check-and-set atomic: of two concurrent resumes, one is refused.
        patch = [
            {"op": "test", "path": "/spec/replicas", "value": 0},
            {"op": "replace", "path": "/spec/replicas", "value": 1},
        ]
        try:
            self._scale(workload, patch)
        except AmphoraComputeError as e:
            if e.reason == Reason.INVALID_INPUT:  # 422: the test op failed
                raise not_suspended from e
            raise
        LOG.info("amphora %s: resumed (replicas 1)", amphora_id)

    def _scale(self, workload: Mapping[str, Any], patch: list[dict[str, Any]]) -> None:
        """Apply a JSON patch to ``spec.replicas`` (status updates do not make it conflict)."""
        name = workload["metadata"]["name"]
        with _translated(f"scale StatefulSet {self.namespace}/{name}", AmphoraComputeError):
            self._call(
                self._apps.patch_namespaced_stateful_set,
                name,
                self.namespace,
                patch,
                field_manager=FIELD_MANAGER,
                _content_type="application/json-patch+json",
            )

    def delete(self, amphora_id: str) -> None:
        if not _LABEL_VALUE.match(amphora_id):
            return  # no object can carry such an id: already gone
        selector = _selector({LABEL_MANAGED_BY: MANAGED_BY, LABEL_ID: amphora_id})
        with _translated(f"delete amphora {amphora_id}", DeleteFailed):
            workloads = self._call(
                self._apps.list_namespaced_stateful_set, self.namespace, label_selector=selector
            )["items"]
            for workload in workloads:
                if workload["metadata"].get("deletionTimestamp"):
                    continue
                try:
                    self._call(
                        self._apps.delete_namespaced_stateful_set,
                        workload["metadata"]["name"],
                        self.namespace,
                        propagation_policy="Foreground",
                    )
                except ApiException as e:
                    if e.status != 404:
                        raise
            self._call(
                self._core.delete_collection_namespaced_secret,
                self.namespace,
                label_selector=selector,
            )
            self._call(
                self._networking.delete_collection_namespaced_network_policy,
                self.namespace,
                label_selector=selector,
            )
        LOG.info("amphora %s: deletion requested", amphora_id)


def _default_client() -> k8s.ApiClient:
    """In-cluster configuration when running in a Pod, else the default kubeconfig."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        try:
            k8s_config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except (k8s_config.ConfigException, OSError) as e:
            raise AmphoraComputeError(
                f"no Kubernetes configuration: not in a cluster and no kubeconfig ({e}); "
                "pass api_client",
                reason=Reason.BACKEND_UNAVAILABLE,
                retryable=False,
            ) from e
    return k8s.ApiClient(configuration)
