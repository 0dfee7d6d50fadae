"""Operator configurations the harness runs with."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Reconcile settings for tests: poll and retry fast so that a scenario takes seconds.
FAST_RECONCILE: dict[str, float] = {
    "pollInterval": 0.3,
    "resyncInterval": 2,
    "retryBase": 1,
    "retryMax": 4,
    "driverCallTimeout": 5,
    "deleteRetry": 0.5,
}


def noop_config(
    state_file: Path | None = None,
    *,
    options: Mapping[str, Any] | None = None,
    breaker: Mapping[str, Any] | None = None,
    reconcile: Mapping[str, Any] | None = None,
    profiles: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Every Amphora type on one noop driver profile ``noop``.

    ``state_file``: where the noop driver keeps its instances (shared with a test's own view
    of the backend); ``options``/``breaker``/``reconcile``: that section, else the shipped
    defaults; ``profiles``: more profiles beside ``noop``.
    """
    profile: dict[str, Any] = {"driver": "noop", "options": dict(options or {})}
    if state_file is not None:
        profile["options"] = {"state_file": str(state_file), **profile["options"]}
    if breaker is not None:
        profile["breaker"] = dict(breaker)
    config: dict[str, Any] = {
        "profiles": {"noop": profile, **(profiles or {})},
        "defaults": {"VM": "noop", "BareMetal": "noop", "Container": "noop"},
    }
    if reconcile is not None:
        config["reconcile"] = dict(reconcile)
    return config
