"""Compute drivers for amphorae: the interface, its exceptions, the noop driver and tools.

The operator imports drivers only through this surface and the ``amphora.compute_drivers``
entry points; nothing here knows about Kubernetes controllers or kopf.
"""

from amphora_drivers.base import AmphoraComputeDriver
from amphora_drivers.breaker import BreakerSettings, BreakerState, CircuitBreaker
from amphora_drivers.exceptions import (
    AmphoraBuildError,
    AmphoraComputeError,
    DeleteFailed,
    InstanceNotFoundError,
    NotSuspendedError,
    Reason,
)
from amphora_drivers.registry import (
    ENTRY_POINT_GROUP,
    UnknownDriverError,
    available_drivers,
    driver_class,
    load_driver,
)
from amphora_drivers.types import (
    AmphoraInstance,
    AmphoraState,
    AmphoraType,
    BuildRequest,
    OwnerResource,
    ServerGroup,
    ServerGroupPolicy,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "AmphoraBuildError",
    "AmphoraComputeDriver",
    "AmphoraComputeError",
    "AmphoraInstance",
    "AmphoraState",
    "AmphoraType",
    "BreakerSettings",
    "BreakerState",
    "BuildRequest",
    "CircuitBreaker",
    "DeleteFailed",
    "InstanceNotFoundError",
    "NotSuspendedError",
    "OwnerResource",
    "Reason",
    "ServerGroup",
    "ServerGroupPolicy",
    "UnknownDriverError",
    "available_drivers",
    "driver_class",
    "load_driver",
]
