"""Prometheus metrics; label values are profile names, methods, reasons and phases only."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """One set of collectors per operator (a registry each, so tests can run several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconcile_seconds = Histogram(
            "amphora_reconcile_seconds",
            "Time to reconcile one Amphora (plan, act, write status).",
            ["trigger"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.handler_seconds = Histogram(
            "amphora_handler_seconds",
            "Time a kopf handler took before returning to the event loop.",
            ["handler"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.driver_call_seconds = Histogram(
            "amphora_driver_call_seconds",
            "Time of one compute driver call.",
            ["profile", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.driver_errors = Counter(
            "amphora_driver_errors_total",
            "Failed compute driver calls by reason.",
            ["profile", "method", "reason"],
            registry=self.registry,
        )
        self.breaker_open = Gauge(
            "amphora_breaker_open",
            "1 while the circuit breaker of a compute profile is open or half-open.",
            ["profile"],
            registry=self.registry,
        )
        self.amphorae = Gauge(
            "amphora_amphorae",
            "Amphorae known to this operator by phase.",
            ["phase"],
            registry=self.registry,
        )
        self.orphans_collected = Counter(
            "amphora_orphans_collected_total",
            "Managed instances no Amphora claims, deleted by garbage collection.",
            ["profile", "reason"],
            registry=self.registry,
        )
        self.orphans_pending = Gauge(
            "amphora_orphans_pending",
            "Unclaimed instances waiting out their grace period before collection.",
            ["profile"],
            registry=self.registry,
        )
        self.status_writes = Counter(
            "amphora_status_writes_total",
            "Status patches sent to the Kubernetes API.",
            registry=self.registry,
        )
