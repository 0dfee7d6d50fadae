"""kopf handlers: watch events into the runtime, plus start-up, liveness and leadership.

kopf is the framework for watching, login, lifecycle and probes. No kopf change-handlers are
registered (create/update/resume/delete): those would cost a finalizer PATCH and per-object
diffbase/progress annotations on every Amphora. The one ``on.event`` handler files each event
into :class:`~.runtime.Runtime` in O(1); its workers and poller do the rest, as the leader only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes import client
from kubernetes import config as kube_config

from amphora_operator.backends import BackendPool
from amphora_operator.config import OperatorConfig
from amphora_operator.kube import KubeGateway, ThreadedGateway
from amphora_operator.leader import KubeLeaseApi, LeaseElector
from amphora_operator.metrics import Metrics
from amphora_operator.model import GROUP, PLURAL, VERSION
from amphora_operator.runtime import Runtime

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
class _State:
    runtime: Runtime | None = None
    gateway: ThreadedGateway | None = None
    #: Set while this replica may act (at once without leader election).
    leading: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    metrics_server: Any = None


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's diff base for change-handlers, of which there are none: kopf would otherwise
    deep-copy every watched body to build one (a tenth of the event loop's time at N=1,000)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


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
    state = _State()
    metrics = Metrics()
    settings_config = options.config.reconcile

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if options.kubeconfig:  # an explicit file wins over in-cluster credentials
            return kopf.login_with_kubeconfig(**kwargs)
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(id="startup", registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        # No change-handlers are registered, so kopf writes no finalizer and no annotations.
        settings.execution.max_workers = settings_config.concurrency
        settings.watching.connect_timeout = 10
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.watching.reconnect_backoff = 1.0
        settings.networking.request_timeout = 30
        # kopf keeps one task per object while its events flow; after a burst of N creates
        # those would hold memory for 5 s each (its default). The runtime's queue coalesces.
        settings.queueing.idle_timeout = 0.5
        settings.posting.level = logging.WARNING
        settings.persistence.diffbase_storage = NoDiffBase()
        if options.namespaces_exact:
            settings.scanning.disabled = True  # nothing to discover; saves a namespace list
        api = api_client_for(options.kubeconfig, settings_config.concurrency * 2 + 4)
        if options.metrics_port:
            from prometheus_client import start_http_server

            state.metrics_server = start_http_server(
                options.metrics_port, registry=metrics.registry
            )
        elector = make_elector(options, api) if options.leader_election else None
        # Fence: mutating driver calls and Kubernetes writes only while this replica leads
        # and, with leader election, only while the Lease was renewed recently enough.
        may_act = (
            (lambda: state.leading.is_set() and elector.may_act())
            if elector is not None
            else state.leading.is_set
        )
        state.gateway = ThreadedGateway(KubeGateway(api), settings_config.concurrency, may_act)
        state.runtime = Runtime(
            config=options.config,
            backends=BackendPool(options.config, metrics, api_client=api, may_act=may_act),
            gateway=state.gateway,
            metrics=metrics,
            home_namespace=options.lease_namespace,
        )
        # Start-up returns at once so that /healthz answers while a follower waits its turn.
        state.tasks.append(asyncio.create_task(lead(state.runtime, elector)))

    async def lead(runtime: Runtime, elector: LeaseElector | None) -> None:
        """Act only as the leader: workers and poller start once the lease is held.

        A replica that loses the Lease exits (crash-only: it restarts as a follower); by then
        the elector's fence already refuses mutating backend calls.
        """
        if elector is not None:
            await elector.acquire()
        state.leading.set()
        runtime.start()
        try:
            if elector is None:
                await asyncio.Event().wait()
                return
            await elector.keep()
            state.leading.clear()
            log.error("lost leadership; exiting so that only one replica acts")
            logging.shutdown()
            os._exit(70)
        finally:
            state.leading.clear()
            await runtime.stop()

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def cleanup(**_: Any) -> None:
        for task in state.tasks:
            task.cancel()
        for task in state.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if state.runtime is not None:
            state.runtime.backends.close()
        if state.gateway is not None:
            state.gateway.close()
        if state.metrics_server is not None:
            state.metrics_server[0].shutdown()

    @kopf.on.event(GROUP, VERSION, PLURAL, id="track", registry=registry)
    async def track(event: kopf.RawEvent, **_: Any) -> None:
        """O(1) on the event loop: file the event, mark the Amphora dirty if needed."""
        runtime = state.runtime
        if runtime is None:
            return
        runtime.observe(
            str(event.get("type")),
            dict(event.get("object") or {}),
            leading=state.leading.is_set(),
        )

    @kopf.on.probe(id="alive", registry=registry, errors=kopf.ErrorsMode.PERMANENT)
    def alive(**_: Any) -> str:
        return tasks_alive(state.tasks)

    @kopf.on.probe(id="leading", registry=registry)
    def leading(**_: Any) -> bool:
        return state.leading.is_set()

    @kopf.on.probe(id="amphorae", registry=registry)
    def tracked(**_: Any) -> int:
        return len(state.runtime) if state.runtime is not None else 0

    return registry
