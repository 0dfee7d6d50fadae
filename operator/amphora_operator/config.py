"""Operator configuration, grouped like kopf's settings; every field says its unit and default."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from amphora_operator.model import SpecType

__all__ = ["BreakerConfig", "OperatorConfig", "ProfileConfig", "ReconcileConfig", "load_config"]


class _Config(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class BreakerConfig(_Config):
    failure_threshold: Annotated[int, Field(ge=1, description="Consecutive failures to open.")] = 5
    reset_timeout: Annotated[float, Field(gt=0, description="Seconds open before a trial.")] = 30.0


class ProfileConfig(_Config):
    """One compute profile: a driver (entry point name) and its constructor options."""

    driver: Annotated[str, Field(description="Entry point in amphora.compute_drivers.")]
    options: Annotated[
        dict[str, Any], Field(description="Keyword arguments for the driver's constructor.")
    ] = {}
    breaker: BreakerConfig = BreakerConfig()


class ReconcileConfig(_Config):
    poll_interval: Annotated[
        float, Field(gt=0, description="Seconds between backend polls while any amphora moves.")
    ] = 0.5
    resync_interval: Annotated[
        float, Field(gt=0, description="Seconds between drift checks when all are stable.")
    ] = 30.0
    retry_base: Annotated[
        float, Field(gt=0, description="Seconds before the first rebuild of a failed instance.")
    ] = 10.0
    retry_max: Annotated[
        float, Field(gt=0, description="Longest wait between rebuilds, in seconds.")
    ] = 300.0
    driver_call_timeout: Annotated[
        float, Field(gt=0, description="Seconds before a driver call is abandoned.")
    ] = 30.0
    concurrency: Annotated[
        int, Field(ge=1, description="Driver and API calls running at once (threads).")
    ] = 16
    delete_retry: Annotated[
        float,
        Field(
            gt=0,
            description="Longest wait between checks that a deleted instance is gone (seconds; "
            "checks start at once and back off from poll_interval).",
        ),
    ] = 2.0
    stall_after: Annotated[
        int,
        Field(
            ge=1,
            description="Consecutive failed builds after which an Amphora reports Stalled "
            "(kstatus Failed); it is still retried at the capped backoff.",
        ),
    ] = 3


def _default_profiles() -> dict[str, ProfileConfig]:
    return {
        "nova": ProfileConfig(driver="nova"),
        "container": ProfileConfig(driver="container"),
        "noop": ProfileConfig(driver="noop"),
    }


class OperatorConfig(_Config):
    """Everything the operator reads at start-up (a YAML file, usually from a ConfigMap)."""

    profiles: Annotated[
        dict[str, ProfileConfig], Field(description="Compute profiles by name.")
    ] = Field(default_factory=_default_profiles)
    defaults: Annotated[
        dict[SpecType, str],
        Field(description="Profile used per amphora type when spec.driver is unset."),
    ] = {SpecType.VM: "nova", SpecType.BARE_METAL: "nova", SpecType.CONTAINER: "container"}
    reconcile: ReconcileConfig = ReconcileConfig()


def load_config(path: str | Path | None) -> OperatorConfig:
    """Read the YAML config at ``path``; the built-in defaults when ``path`` is None."""
    if path is None:
        return OperatorConfig()
    raw = yaml.safe_load(Path(path).read_text()) or {}
    return OperatorConfig.model_validate(raw)
