"""Operator configuration, grouped like kopf's settings; every field says its unit and default."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from amphora_operator.model import SpecType

__all__ = [
    "BreakerConfig",
    "GarbageCollectionConfig",
    "ImportConfig",
    "LeaderElectionConfig",
    "OperatorConfig",
    "ProfileConfig",
    "ReconcileConfig",
    "load_config",
]


class _Config(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class BreakerConfig(_Config):
    failure_threshold: Annotated[int, Field(ge=1, description="Consecutive failures to open.")] = 5
    reset_timeout: Annotated[float, Field(gt=0, description="Seconds open before a trial.")] = 30.0


class ImportConfig(_Config):
    """Imports (``spec.importId``) a profile allows beyond the default rule: an Amphora may
    import only an instance this operator built for the same namespace (e.g. one released
    earlier with ``deletionPolicy: Orphan``). See :mod:`amphora_operator.tenancy`."""

    allowed_namespaces: Annotated[
        list[str],
        Field(
            description="Namespaces whose Amphorae may import any instance this profile's "
            "backend shows (trusted, administrators' namespaces only).",
        ),
    ] = []
    required_tag: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=60,
            description="An instance carrying this tag (set by an administrator on the "
            "cloud) may be imported into any namespace; Amphorae may not set it in spec.tags.",
        ),
    ] = None


class ProfileConfig(_Config):
    """One compute profile: a driver (entry point name) and its constructor options."""

    driver: Annotated[str, Field(description="Entry point in amphora.compute_drivers.")]
    options: Annotated[
        dict[str, Any], Field(description="Keyword arguments for the driver's constructor.")
    ] = {}
    breaker: BreakerConfig = BreakerConfig()
    imports: ImportConfig = ImportConfig()


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
    forbidden_release_after: Annotated[
        float,
        Field(
            ge=0,
            description="Seconds a deletion the backend keeps refusing with 403 Forbidden (RBAC "
            "removed, namespace terminating) waits before the finalizer is released anyway; "
            "an Event names the instances that may be left.",
        ),
    ] = 300.0
    stall_after: Annotated[
        int,
        Field(
            ge=1,
            description="Consecutive failed builds after which an Amphora reports Stalled "
            "(kstatus Failed); it is still retried at the capped backoff.",
        ),
    ] = 3


class LeaderElectionConfig(_Config):
    """Timing of the Lease that lets one replica act (``run --leader-election``).

    The defaults are client-go's. ``leaseDuration - renewDeadline`` is the safety margin: the
    leader stops acting that long before any other replica may take over.
    """

    lease_duration: Annotated[
        float,
        Field(
            ge=1,
            description="Seconds a follower waits after it last saw the Lease change before "
            "taking it over.",
        ),
    ] = 15.0
    renew_deadline: Annotated[
        float,
        Field(
            gt=0,
            description="Seconds the leader may act after its last successful renewal was "
            "sent; must be below leaseDuration.",
        ),
    ] = 10.0
    retry_period: Annotated[
        float,
        Field(
            gt=0,
            description="Seconds between attempts to acquire or renew (jittered; API errors "
            "back off from here).",
        ),
    ] = 2.0

    @property
    def request_timeout(self) -> float:
        """Seconds one Lease API call may take: a retry period, at most a third of the renew
        deadline (so a renewal can be retried before the deadline), at least half a second."""
        return max(0.5, min(self.retry_period, self.renew_deadline / 3))

    @model_validator(mode="after")
    def _margins(self) -> LeaderElectionConfig:
        if not self.renew_deadline < self.lease_duration:
            raise ValueError("renewDeadline must be less than leaseDuration")
        if not self.retry_period < self.renew_deadline:
            raise ValueError("retryPeriod must be less than renewDeadline")
        return self


class GarbageCollectionConfig(_Config):
    """Deleting managed instances no Amphora claims (orphans), as the leader, every resync."""

    enabled: Annotated[
        bool,
        Field(
            description="Collect orphans. Turn off when another operator (another cluster) "
            "shares a backend and its managed tag with this one: it would take their "
            "instances for orphans."
        ),
    ] = True
    grace_period: Annotated[
        float,
        Field(
            ge=0,
            description="Seconds an instance must stay unclaimed, seen by consecutive sweeps, "
            "before it is deleted.",
        ),
    ] = 300.0


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
    leader_election: LeaderElectionConfig = LeaderElectionConfig()
    garbage_collection: GarbageCollectionConfig = GarbageCollectionConfig()


def load_config(path: str | Path | None) -> OperatorConfig:
    """Read the YAML config at ``path``; the built-in defaults when ``path`` is None."""
    if path is None:
        return OperatorConfig()
    raw = yaml.safe_load(Path(path).read_text()) or {}
    return OperatorConfig.model_validate(raw)
