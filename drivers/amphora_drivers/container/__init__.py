"""The Container driver: each amphora a one-replica StatefulSet (docs/drivers/container.md).

One module per job: :mod:`.manifests` (request → objects, pure), :mod:`.observe` (objects → state,
pure), :mod:`.errors` (API failures → the interface's exceptions), :mod:`.driver` (the API calls).
"""

from amphora_drivers.container.driver import ContainerDriver
from amphora_drivers.container.manifests import (
    BUILTIN_FLAVORS,
    DEFAULT_AUTHORIZED_KEYS_PATH,
    DEFAULT_USER_DATA_PATH,
    FILE_MODE,
    KEYS_MODE,
    LABEL_ID,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_OWNER,
    LABEL_SERVER_GROUP,
    MANAGED_BY,
    MAX_WORKLOAD_NAME,
    SECGROUP_LABEL_PREFIX,
    USER_DATA_ENV,
    Flavor,
    HealthProbe,
    PodOptions,
    PodSecurity,
    workload_name,
)
from amphora_drivers.container.observe import Observation, observe_pod, observe_workload

__all__ = [
    "BUILTIN_FLAVORS",
    "DEFAULT_AUTHORIZED_KEYS_PATH",
    "DEFAULT_USER_DATA_PATH",
    "FILE_MODE",
    "KEYS_MODE",
    "LABEL_ID",
    "LABEL_INSTANCE",
    "LABEL_MANAGED_BY",
    "LABEL_OWNER",
    "LABEL_SERVER_GROUP",
    "MANAGED_BY",
    "MAX_WORKLOAD_NAME",
    "SECGROUP_LABEL_PREFIX",
    "USER_DATA_ENV",
    "ContainerDriver",
    "Flavor",
    "HealthProbe",
    "Observation",
    "PodOptions",
    "PodSecurity",
    "observe_pod",
    "observe_workload",
    "workload_name",
]
