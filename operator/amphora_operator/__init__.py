"""amphora-operator: reconciles Amphora resources through compute drivers, with kopf.

Layers (enforced by import-linter): ``handlers`` (kopf) → ``controller`` (runtime) →
``planner`` (pure decisions) and ``backends`` (drivers via the entry-point registry only).
"""

from amphora_operator.config import OperatorConfig, load_config
from amphora_operator.model import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    AmphoraSpec,
    AmphoraStatus,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "AmphoraSpec",
    "AmphoraStatus",
    "OperatorConfig",
    "load_config",
]
