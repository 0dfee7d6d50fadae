"""What the objects of one amphora say about it: a state, a fault a user can act on, addresses.

Pure functions over API JSON, so every mapping is tested without a cluster.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from amphora_drivers.container.manifests import (
    ANNOTATION_TAGS,
    LABEL_ID,
    LABEL_VALUE,
    MULTUS_NETWORK_STATUS,
)
from amphora_drivers.types import AmphoraState

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


_IMAGE_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)


@dataclass(frozen=True)
class Observation:
    """What the objects of one amphora say about it, normalised."""

    state: AmphoraState
    raw_state: str
    fault: str | None = None
    addresses: tuple[str, ...] = ()


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
    if phase == "Running" and _node_lost(conditions):
        node = pod.get("spec", {}).get("nodeName", "?")
        fault = (
            f"the Node {node} stopped reporting: the amphora may still run but nobody can "
            "tell; it recovers when the kubelet returns"
        )
        return Observation(AmphoraState.UNKNOWN, f"{phase}/NodeNotReady", fault, addresses)
    if phase == "Running":
        return Observation(AmphoraState.BUILDING, "Running/NotReady", None, addresses)
    if waiting:
        detail = waiting[0]["state"]["waiting"].get("reason", "Waiting")
    else:
        detail = "Scheduled" if scheduled.get("status") == "True" else "Scheduling"
    return Observation(AmphoraState.BUILDING, f"{phase}/{detail}", None, addresses)


def _node_lost(conditions: Mapping[str, Mapping[str, Any]]) -> bool:
    """The node lifecycle controller marked the Pod not Ready because its kubelet went silent.

    It flips only the Pod's Ready condition (keeping the old reason); ContainersReady, which
    only the kubelet writes, still says True. Readiness gates are the one other way to get
    that pair, and they carry their own reason.
    """
    ready = conditions.get("Ready", {})
    return (
        ready.get("status") == "False"
        and conditions.get("ContainersReady", {}).get("status") == "True"
        and ready.get("reason") != "ReadinessGatesNotReady"
    )


def _waiting_fault(container: Mapping[str, Any], reason: str) -> str:
    message = container["state"]["waiting"].get("message")
    fault = f"{reason}: {message}" if message else reason
    image = container.get("image")
    if reason in _IMAGE_REASONS and image and image not in fault:
        fault += f" (image {image})"
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


def last_change(workload: Mapping[str, Any]) -> datetime | None:
    """When anyone last wrote the StatefulSet outside its status (create, scale, edit)."""
    times = [
        _time(entry.get("time"))
        for entry in workload.get("metadata", {}).get("managedFields", [])
        if entry.get("subresource") != "status"
    ]
    return max((t for t in times if t is not None), default=None)


def event_time(event: Mapping[str, Any]) -> datetime | None:
    return _time(
        event.get("series", {}).get("lastObservedTime")
        or event.get("lastTimestamp")
        or event.get("eventTime")
        or event.get("metadata", {}).get("creationTimestamp")
    )


def probe_failure(
    observed: Observation, pod: Mapping[str, Any], events: Sequence[Mapping[str, Any]]
) -> Observation:
    """Running, not Ready: add the newest readiness-probe failure since the container started.

    ``events`` are the Pod's ``Unhealthy`` Events (the kubelet writes one per failed probe).
    The state stays BUILDING: a probe may pass later; the fault says why it has not yet.
    """
    started = None
    for container in pod.get("status", {}).get("containerStatuses", []):
        running = container.get("state", {}).get("running")
        if running:
            started = _time(running.get("startedAt"))
    failures = [
        (t, e)
        for e in events
        if "Readiness probe failed" in e.get("message", "")
        and (t := event_time(e)) is not None
        and (started is None or t >= started)
    ]
    if not failures:
        return observed
    message = str(max(failures, key=lambda pair: pair[0])[1]["message"]).strip()
    fault = f"not Ready: {message}; the amphora does not answer its health probe"
    return Observation(observed.state, "Running/ProbeFailing", fault, observed.addresses)


def tags(workload: Mapping[str, Any]) -> tuple[str, ...]:
    """The amphora's tags from the StatefulSet's annotation (check :func:`malformed` first)."""
    raw = workload.get("metadata", {}).get("annotations", {}).get(ANNOTATION_TAGS, "[]")
    return tuple(json.loads(raw))


def malformed(workload: Mapping[str, Any]) -> str | None:
    """Why a StatefulSet carrying our managed-by label is not an amphora we can read, if so.

    A tenant can write any object into its namespace, labels included; one such object must
    not break the listing of every other amphora.
    """
    metadata = workload.get("metadata", {})
    amphora_id = metadata.get("labels", {}).get(LABEL_ID, "")
    if not amphora_id or not LABEL_VALUE.match(amphora_id):
        return f"label {LABEL_ID} is missing or not a valid label value"
    raw = metadata.get("annotations", {}).get(ANNOTATION_TAGS, "[]")
    try:
        parsed = json.loads(raw)
    except ValueError:
        return f"annotation {ANNOTATION_TAGS} is not JSON"
    if not isinstance(parsed, list) or not all(isinstance(t, str) for t in parsed):
        return f"annotation {ANNOTATION_TAGS} is not a JSON list of strings"
    if not isinstance(workload.get("spec"), dict):
        return "it has no spec"
    return None
