"""The Nova driver (VM and bare-metal amphorae through openstacksdk), one job per module.

``connect`` (clouds.yaml → Connection), ``user_data`` (cloud-init within Nova's limit),
``errors`` (API failures → the spec's exceptions), ``driver`` (the NovaDriver and its lookups).
How spec fields map to Nova, and the status and error tables: ``docs/drivers/nova.md``.
"""

from amphora_drivers.nova.connect import CloudConfigError, connect
from amphora_drivers.nova.driver import (
    MIN_MICROVERSION,
    ImageCandidate,
    ImageLookup,
    NovaDriver,
    is_bare_metal_flavor,
)
from amphora_drivers.nova.user_data import NOVA_USER_DATA_LIMIT, UserDataTooLarge, render_user_data

__all__ = [
    "MIN_MICROVERSION",
    "NOVA_USER_DATA_LIMIT",
    "CloudConfigError",
    "ImageCandidate",
    "ImageLookup",
    "NovaDriver",
    "UserDataTooLarge",
    "connect",
    "is_bare_metal_flavor",
    "render_user_data",
]
