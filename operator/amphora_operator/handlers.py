"""kopf handlers: thin translations of watch events into Controller calls.

Everything that decides lives in :mod:`.controller` and :mod:`.planner`; these functions only
wire kopf's lifecycle (start-up, finalizer, create/update/resume, delete, probes) to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes import client
from kubernetes import config as kube_config

from amphora_operator.backends import BackendPool
from amphora_operator.config import OperatorConfig
from amphora_operator.controller import Controller
from amphora_operator.kube import KubeGateway
from amphora_operator.leader import KubeLeaseApi, LeaseElector
from amphora_operator.metrics import Metrics
from amphora_operator.model import FINALIZER, GROUP, PLURAL, VERSION

__all__ = ["RunOptions", "make_elector", "make_registry", "tasks_alive"]

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """What ``amphora-operator run`` was asked to do."""

    config: OperatorConfig
    kubeconfig: str | None = None
    #: Port of the Prometheus /metrics endpoint; 0 disables it.
    metrics_port: int = 0
    leader_election: bool = False
    #: True when --namespace names exact namespaces (no patterns): kopf need not scan.
    namespaces_exact: bool = False
    lease_namespace: str = "default"
    identity: str = "amphora-operator"


@dataclass
class _Runtime:
    controller: Controller | None = None
    #: Set while this replica may act (at once without leader election).
    leading: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    metrics_server: Any = None


def api_client_for(kubeconfig: str | None, pool_size: int) -> client.ApiClient:
    """A Kubernetes client from ``kubeconfig``, else in-cluster, else the default kubeconfig."""
    configuration = client.Configuration()
    if kubeconfig:
        kube_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    else:
        try:
            kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        except kube_config.ConfigException:
            kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


def make_elector(options: RunOptions, api: client.ApiClient) -> LeaseElector:
    """The Lease elector of this replica, timed by the config's ``leaderElection`` group."""
    settings = options.config.leader_election
    lease_api = KubeLeaseApi(
        api,
        namespace=options.lease_namespace,
        name="amphora-operator",
        request_timeout=settings.request_timeout,
    )
    return LeaseElector(lease_api, identity=options.identity, settings=settings)


def tasks_alive(tasks: list[asyncio.Task[None]]) -> str:
    """Liveness: raise once a background task (the elector and poller) has ended.

    kopf runs probes for /healthz; with ``errors=PERMANENT`` a probe that raises makes it
    answer 500 at once (the default, TEMPORARY, would retry and hang the request).
    """
    for task in tasks:
        if task.done():
            reason = "cancelled" if task.cancelled() else repr(task.exception())
            raise kopf.PermanentError(f"the leader election and polling task ended: {reason}")
    return "running"


def make_registry(options: RunOptions) -> kopf.OperatorRegistry:
    """Register the operator's handlers in a fresh registry (one per operator instance)."""
    registry = kopf.OperatorRegistry()
    runtime = _Runtime()
    metrics = Metrics()
    settings_config = options.config.reconcile

    def controller() -> Controller:
        assert runtime.controller is not None, "start-up has not run"
        return runtime.controller

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if options.kubeconfig:  # an explicit file wins over in-cluster credentials
            return kopf.login_with_kubeconfig(**kwargs)
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(id="startup", registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.execution.max_workers = settings_config.concurrency
        settings.watching.connect_timeout = 10
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.watching.reconnect_backoff = 1.0
        settings.networking.request_timeout = 30
        # kopf waits this long for more events of one object before handling it (default
        # 0.1 s); an Amphora's create passes through ~4 events, so this is latency per apply.
        settings.batching.batch_window = 0.02
        settings.posting.level = logging.WARNING
        if options.namespaces_exact:
            settings.scanning.disabled = True  # nothing to discover; saves a namespace list
        api = api_client_for(options.kubeconfig, settings_config.concurrency + 4)
        if options.metrics_port:
            from prometheus_client import start_http_server

            runtime.metrics_server = start_http_server(
                options.metrics_port, registry=metrics.registry
            )
        elector = make_elector(options, api) if options.leader_election else None
        runtime.controller = Controller(
            config=options.config,
            backends=BackendPool(
                options.config,
                metrics,
                api_client=api,
                fence=elector.may_act if elector is not None else None,
            ),
            kube=KubeGateway(api),
            metrics=metrics,
        )
        # Start-up returns at once so that /healthz answers while a follower waits its turn.
        runtime.tasks.append(asyncio.create_task(lead(runtime.controller, elector)))

    async def lead(controller: Controller, elector: LeaseElector | None) -> None:
        """Act only as the leader: handlers wait on ``leading``; the poller starts with it.

        A replica that loses the Lease exits (crash-only: it restarts as a follower); by then
        the elector's fence already refuses mutating backend calls.
        """
        if elector is not None:
            await elector.acquire()
        runtime.leading.set()
        poller = asyncio.create_task(controller.run_poller())
        try:
            if elector is None:
                await poller
                return
            await elector.keep()
            runtime.leading.clear()
            log.error("lost leadership; exiting so that only one replica acts")
            logging.shutdown()
            os._exit(70)
        finally:
            poller.cancel()

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def cleanup(**_: Any) -> None:
        for task in runtime.tasks:
            task.cancel()
        for task in runtime.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if runtime.controller is not None:
            with contextlib.suppress(TimeoutError):  # what is cut short reruns at next start
                await asyncio.wait_for(runtime.controller.settle(), 10)
            runtime.controller.backends.close()
            runtime.controller.close()
        if runtime.metrics_server is not None:
            runtime.metrics_server[0].shutdown()

    @kopf.on.event(GROUP, VERSION, PLURAL, id="track", registry=registry)
    async def track(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        if event.get("type") == "DELETED":
            if runtime.leading.is_set():  # clean up what a racing deletion skipped
                # The event's own object: its last state, as the apiserver deleted it.
                await controller().vanished(dict(event.get("object") or body))
            else:
                controller().forget(body["metadata"]["uid"])
        else:
            controller().track(dict(body))

    @kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile", registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile", registry=registry)
    @kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile", registry=registry)
    async def reconcile(body: kopf.Body, reason: str, **_: Any) -> None:
        await runtime.leading.wait()
        started = time.perf_counter()
        controller().submit(dict(body), trigger=str(reason))
        metrics.handler_seconds.labels(str(reason)).observe(time.perf_counter() - started)

    @kopf.on.delete(GROUP, VERSION, PLURAL, id="finalize", registry=registry)
    async def delete(body: kopf.Body, **_: Any) -> None:
        await runtime.leading.wait()
        started = time.perf_counter()
        waiting = await controller().finalize(dict(body))
        metrics.handler_seconds.labels("delete").observe(time.perf_counter() - started)
        if waiting is not None:
            raise kopf.TemporaryError(waiting, delay=settings_config.delete_retry)

    @kopf.on.probe(id="alive", registry=registry, errors=kopf.ErrorsMode.PERMANENT)
    def alive(**_: Any) -> str:
        return tasks_alive(runtime.tasks)

    @kopf.on.probe(id="leading", registry=registry)
    def leading(**_: Any) -> bool:
        return runtime.leading.is_set()

    @kopf.on.probe(id="amphorae", registry=registry)
    def tracked(**_: Any) -> int:
        return controller().tracked_count() if runtime.controller is not None else 0

    return registry
