"""Helpers shared by the Container driver tests: fresh names, bounded waits, raw API reads."""

from __future__ import annotations

import uuid
from typing import Any

from amphora_devtools.real_node import NODE_SELECTOR, TOLERATIONS
from amphora_drivers.container import ContainerDriver
from amphora_drivers.testing import wait_for
from amphora_drivers.types import AmphoraInstance, AmphoraState

IMAGE = "registry.example/octavia/amphora-haproxy:2.8"
#: kwok Nodes offer 32 CPUs each (amphora_devtools.control_plane.NODE_ALLOCATABLE).
HUGE_FLAVOR = {"requests": {"cpu": "64", "memory": "1Gi"}, "limits": {"cpu": "64", "memory": "1Gi"}}
TIMEOUT = 30.0
#: Profile options that put the driver's Pods on the real kubelet Node, with its images.
#: The real Node has the machine's 2 CPUs; 20 ``small`` amphorae (250m each) would not fit.
TINY_FLAVOR = {
    "requests": {"cpu": "10m", "memory": "16Mi"},
    "limits": {"cpu": "200m", "memory": "64Mi"},
}
REAL_NODE_OPTIONS: dict[str, Any] = {
    "flavors": {"tiny": TINY_FLAVOR},
    "default_flavor": "tiny",
    "node_selector": NODE_SELECTOR,
    "tolerations": TOLERATIONS,
    "image_pull_policy": "Never",
    "termination_grace_period_seconds": 5,
}
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def fresh(prefix: str = "amp") -> tuple[str, str]:
    """A unique amphora name and owner (a UID, as the operator passes)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}", str(uuid.uuid4())


def wait_state(
    driver: ContainerDriver, amphora_id: str, state: AmphoraState, timeout: float = TIMEOUT
) -> AmphoraInstance:
    """Poll until the amphora is in ``state``; fail with the last observation otherwise."""
    return wait_for(
        lambda: driver.get_amphora(amphora_id=amphora_id),
        lambda amphora: amphora.state is state,
        timeout=timeout,
    )


def items(method: Any, namespace: str, **kwargs: Any) -> list[Any]:
    """``.items`` of a namespaced list call."""
    return list(method(namespace, **kwargs).items)
