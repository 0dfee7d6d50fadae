"""Compute profiles: a driver from the entry-point registry, behind a breaker and a timeout.

This is the only place the operator touches drivers: every call runs in a worker thread,
through the profile's circuit breaker, bounded by ``driver_call_timeout``, and is measured.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from amphora_drivers import (
    AmphoraComputeDriver,
    AmphoraComputeError,
    BreakerSettings,
    BreakerState,
    CircuitBreaker,
    Reason,
    driver_class,
)

from amphora_operator.config import OperatorConfig, ProfileConfig
from amphora_operator.metrics import Metrics

__all__ = ["MUTATING", "Backend", "BackendPool", "NotLeading", "UnknownProfileError"]

#: Driver methods that change the backend: refused unless the fence allows them.
MUTATING = frozenset({"build", "build_from", "create", "delete", "suspend", "resume"})

T = TypeVar("T")


class UnknownProfileError(LookupError):
    """spec.driver names no configured profile."""


class NotLeading(RuntimeError):
    """A mutating call was refused: this replica may no longer act (it lost the Lease)."""


class Backend:
    """One driver instance of one profile (per namespace for namespaced drivers)."""

    def __init__(
        self,
        *,
        profile: str,
        driver: AmphoraComputeDriver,
        breaker: CircuitBreaker,
        executor: ThreadPoolExecutor,
        timeout: float,
        metrics: Metrics,
        fence: Callable[[], bool] | None = None,
    ) -> None:
        self.profile = profile
        #: Checked in the worker thread right before each mutating call (see leader.py).
        self.fence = fence
        self.driver = driver
        self.breaker = breaker
        self.executor = executor
        self.timeout = timeout
        self.metrics = metrics

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``driver.<method>`` off the event loop, through the breaker, with a timeout."""
        fn: Callable[..., Any] = getattr(self.driver, method)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            future = loop.run_in_executor(
                self.executor, lambda: self._fenced(method, fn, *args, **kwargs)
            )
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError as e:
            self.breaker.record_failure(Reason.TIMEOUT)
            self.metrics.driver_errors.labels(self.profile, method, Reason.TIMEOUT).inc()
            raise AmphoraComputeError(
                f"{self.profile}.{method} did not answer within {self.timeout:g} s",
                reason=Reason.TIMEOUT,
                retryable=True,
            ) from e
        except AmphoraComputeError as e:
            self.metrics.driver_errors.labels(self.profile, method, e.reason).inc()
            raise
        finally:
            self.metrics.driver_call_seconds.labels(self.profile, method).observe(
                time.perf_counter() - started
            )
            self.metrics.breaker_open.labels(self.profile).set(
                0 if self.breaker.state is BreakerState.CLOSED else 1
            )

    def _fenced(self, method: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.fence is not None and method in MUTATING and not self.fence():
            raise NotLeading(f"{self.profile}.{method} refused: this replica no longer leads")
        return self.breaker.call(fn, *args, **kwargs)


class BackendPool:
    """Creates backends lazily, so a profile that is never used never needs credentials."""

    def __init__(
        self,
        config: OperatorConfig,
        metrics: Metrics,
        *,
        api_client: Any = None,
        fence: Callable[[], bool] | None = None,
    ) -> None:
        """``api_client`` is handed to drivers that take one (the container driver), so they
        act with the operator's own Kubernetes credentials rather than ambient ones.
        ``fence`` (the leader's ``may_act``) must allow each mutating call, else NotLeading."""
        self.fence = fence
        self.config = config
        self.metrics = metrics
        self.api_client = api_client
        # One pool per profile (a bulkhead): a hung backend can only hold its own threads.
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._backends: dict[tuple[str, str | None], Backend] = {}
        #: Per profile: the driver class and whether it follows the Amphora's namespace.
        #: Entry-point lookup scans installed metadata, far too slow for every reconcile.
        self._classes: dict[str, tuple[type[AmphoraComputeDriver], bool]] = {}

    def profile_for(self, spec_type: str, explicit: str | None) -> str:
        name = explicit or self.config.defaults.get(spec_type)  # type: ignore[call-overload]
        if name is None or name not in self.config.profiles:
            known = ", ".join(sorted(self.config.profiles))
            raise UnknownProfileError(
                f"spec.driver: no compute profile {name!r} is configured (profiles: {known})"
            )
        return name

    def get(self, profile: str, namespace: str) -> Backend:
        """The backend for ``profile``; namespaced drivers get one per Amphora namespace."""
        config = self.config.profiles[profile]
        if profile not in self._classes:
            cls = driver_class(config.driver)
            self._classes[profile] = (cls, _is_namespaced(cls, config))
        cls, namespaced = self._classes[profile]
        scope = namespace if namespaced else None
        key = (profile, scope)
        if key not in self._backends:
            options = dict(config.options)
            if scope is not None:
                options["namespace"] = scope
            if self.api_client is not None and _takes(cls, "api_client", config):
                options["api_client"] = self.api_client
            if profile not in self._executors:
                self._executors[profile] = ThreadPoolExecutor(
                    max_workers=self.config.reconcile.concurrency,
                    thread_name_prefix=f"driver-{profile}",
                )
            self._backends[key] = Backend(
                profile=profile,
                driver=cls(**options),
                breaker=CircuitBreaker(
                    BreakerSettings(
                        failure_threshold=config.breaker.failure_threshold,
                        reset_timeout=config.breaker.reset_timeout,
                    ),
                    name=profile,
                ),
                executor=self._executors[profile],
                timeout=self.config.reconcile.driver_call_timeout,
                metrics=self.metrics,
                fence=self.fence,
            )
        return self._backends[key]

    def backends(self) -> list[Backend]:
        return list(self._backends.values())

    def close(self) -> None:
        for backend in self._backends.values():
            backend.driver.close()
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)


def _takes(cls: type[AmphoraComputeDriver], name: str, config: ProfileConfig) -> bool:
    """Whether the driver accepts ``name`` and the profile leaves it to the operator."""
    return name in inspect.signature(cls).parameters and name not in config.options


def _is_namespaced(cls: type[AmphoraComputeDriver], config: ProfileConfig) -> bool:
    """Drivers taking a ``namespace`` argument that the profile leaves open follow the Amphora."""
    return _takes(cls, "namespace", config)
