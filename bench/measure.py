"""The measurement machinery: create Amphorae, watch them turn Ready, read both /metrics.

Baseline and operator runs share everything that could bias a comparison: the same client
(one ``kubernetes`` ApiClient, a fixed pool of creator threads), the same objects, and the
same observer (one watch whose thread stamps the moment each object is first seen with
``status.phase == Ready``). Latency is that stamp minus the moment its create call started.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import amphora_devtools.operator_process as devtools
import urllib3
from amphora_devtools.configs import noop_config as devtools_noop_config
from amphora_devtools.crd import NO_OPERATOR_LABEL, install_crd, install_finalizer_policy
from amphora_devtools.metrics import histogram, metric, parse
from amphora_operator.model import API_VERSION, GROUP, KIND, PLURAL, VERSION
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

__all__ = [
    "Measurement",
    "OperatorProcess",
    "PhaseWatch",
    "api_client",
    "histogram_quantile",
    "install_crd",
    "install_finalizer_policy",
    "noop_config",
    "percentile",
    "run_baseline",
    "run_operator",
]

READY = "Ready"
#: Created and waited for before the clock starts: connections, imports and caches warm up.
WARMUP = "warmup"
#: Resources whose request counts are attributed per Amphora (nothing else touches them).
COUNTED_RESOURCES = ("amphorae", "events")

Spec = Callable[[str], dict[str, Any]]
Bucket = tuple[float, float]  # (upper bound "le", cumulative count)


def api_client(kubeconfig: Path, pool_size: int = 32) -> k8s.ApiClient:
    """An admin client from ``kubeconfig`` with room for every creator thread."""
    configuration = k8s.Configuration()
    k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    return k8s.ApiClient(configuration)


def noop_config(build_seconds: float) -> dict[str, Any]:
    """Operator config: every type on the noop driver, otherwise the shipped defaults."""
    return devtools_noop_config(options={"build_seconds": build_seconds, "call_latency": 0})


def vm_spec(_name: str) -> dict[str, Any]:
    """The spec every benchmark Amphora gets unless a scenario brings its own."""
    return {"type": "VM", "flavor": "bench.small", "image": "amphora-x64-haproxy"}


def percentile(values: Collection[float], q: float) -> float:
    """The ``q``-quantile (0..1) with linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def histogram_quantile(q: float, buckets: list[Bucket]) -> float:
    """Estimate a quantile from cumulative buckets as Prometheus' ``histogram_quantile`` does.

    Linear interpolation inside the bucket holding the rank; a rank in the ``+Inf`` bucket
    returns the highest finite bound (the estimate is then only a lower bound).
    """
    ordered = sorted(buckets)
    total = ordered[-1][1] if ordered else 0.0
    if total <= 0:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass
class Measurement:
    """One timed run: N Amphorae from create to Ready, and what it cost."""

    scenario: str
    n: int
    threads: int
    #: apply→Ready seconds of every Amphora that became Ready, sorted.
    latencies: list[float]
    #: First create call started → last Amphora seen Ready (or the deadline).
    wall_seconds: float
    #: First create call started → last create call returned.
    create_seconds: float
    failed_creates: int = 0
    timed_out: bool = False
    build_seconds: float | None = None
    #: apiserver_request_total deltas ("VERB resource[/subresource]"), WATCH excluded.
    requests: dict[str, int] = field(default_factory=dict)
    #: Of ``requests``, those the benchmark client itself sent (creates, its own status
    #: patches in the baseline, the watch's LISTs).
    own_requests: dict[str, int] = field(default_factory=dict)
    status_writes: int | None = None
    peak_rss_bytes: int | None = None
    #: amphora_handler_seconds bucket deltas per handler label (operator runs only).
    handler_buckets: dict[str, list[Bucket]] = field(default_factory=dict)
    #: Deleting all N afterwards until the last one was gone (None: not within the deadline).
    delete_seconds: float | None = None
    #: CPU seconds (user + system) the operator process used from the first create until the
    #: last Amphora was Ready: what the operator costs, less skewed by a shared machine than
    #: throughput is.
    cpu_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        """Amphorae Ready per second over the whole run."""
        return self.ready / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    def latency(self, q: float) -> float:
        return percentile(self.latencies, q)

    def handler_quantile(self, q: float) -> float:
        """Quantile of all handler calls together (buckets summed over handler labels)."""
        return histogram_quantile(q, _sum_buckets(self.handler_buckets.values()))

    def handler_share_within(self, seconds: float) -> float:
        """Fraction of handler calls that took at most ``seconds`` (exact on a bucket bound)."""
        buckets = dict(_sum_buckets(self.handler_buckets.values()))
        total = buckets.get(float("inf"), 0.0)
        within = max((c for le, c in buckets.items() if le <= seconds), default=0.0)
        return within / total if total else float("nan")

    def handler_calls(self) -> int:
        return int(dict(_sum_buckets(self.handler_buckets.values())).get(float("inf"), 0))


def _sum_buckets(groups: Collection[list[Bucket]]) -> list[Bucket]:
    total: dict[float, float] = {}
    for buckets in groups:
        for bound, count in buckets:
            total[bound] = total.get(bound, 0.0) + count
    return sorted(total.items())


# -- observing -------------------------------------------------------------------------------


class PhaseWatch:
    """Stamps when each Amphora of a namespace is first seen Ready (one watch, own client).

    A context manager: the initial LIST happens on entry, so nothing created afterwards can
    be missed; an expired watch (410) is recovered by listing again.
    """

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.namespace = namespace
        self.ready_at: dict[str, float] = {}
        #: Latest status of every Amphora seen (e.g. for its computeId).
        self.statuses: dict[str, dict[str, Any]] = {}
        #: LIST requests this watch made (they are subtracted from the request counts).
        self.lists = 0
        self.error: BaseException | None = None
        self._client = api_client(kubeconfig, pool_size=2)
        self._api = k8s.CustomObjectsApi(self._client)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PhaseWatch:
        version = self._list()
        self._thread = threading.Thread(
            target=self._run, args=(version,), name="phase-watch", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._client.close()

    def wait_ready(self, names: Collection[str], deadline: float) -> bool:
        """Block until every name was seen Ready (True) or ``perf_counter()`` passes deadline."""
        pending = set(names)
        while True:
            if self.error is not None:
                raise RuntimeError(f"the watch on {self.namespace} failed") from self.error
            pending = {name for name in pending if name not in self.ready_at}
            if not pending:
                return True
            if time.perf_counter() >= deadline:
                return False
            time.sleep(0.05)

    def _see(self, obj: Mapping[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        self.statuses[name] = status
        if status.get("phase") == READY and name not in self.ready_at:
            self.ready_at[name] = now

    def _list(self) -> str:
        reply = self._api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        self.lists += 1
        now = time.perf_counter()
        for obj in reply["items"]:
            self._see(obj, now)
        version: str = reply["metadata"]["resourceVersion"]
        return version

    def _run(self, version: str) -> None:
        watch = k8s_watch.Watch()
        try:
            while not self._stop.is_set():
                try:
                    for event in watch.stream(
                        self._api.list_namespaced_custom_object,
                        GROUP,
                        VERSION,
                        self.namespace,
                        PLURAL,
                        resource_version=version,
                        allow_watch_bookmarks=True,
                        timeout_seconds=5,
                        deserialize=False,
                    ):
                        now = time.perf_counter()
                        obj = event["object"]
                        version = obj["metadata"]["resourceVersion"]
                        if event["type"] in ("ADDED", "MODIFIED"):
                            self._see(obj, now)
                        if self._stop.is_set():
                            break
                except k8s.ApiException as e:
                    if e.status != 410:
                        raise
                    version = self._list()
        except BaseException as e:  # reported to the waiting thread by wait_ready()
            self.error = e


def apiserver_requests(client: k8s.ApiClient) -> Counter[str]:
    """``apiserver_request_total`` for Amphorae and Events by "VERB resource[/sub]", no WATCH.

    The apiserver counts a WATCH only when it ends, so open watches are left out.
    """
    method, url, headers, body, post = client.param_serialize(
        "GET", "/metrics", auth_settings=["BearerToken"]
    )
    response = client.call_api(method, url, headers, body, post, _request_timeout=30)
    response.read()
    counts: Counter[str] = Counter()
    for labels, value in parse(response.data.decode()).get("apiserver_request_total", []):
        if labels.get("verb") != "WATCH" and labels.get("resource") in COUNTED_RESOURCES:
            sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
            counts[f"{labels['verb']} {labels['resource']}{sub}"] += int(value)
    return counts


def _settled_requests(
    client: k8s.ApiClient, quiet: float = 2.0, limit: float = 60.0
) -> Counter[str]:
    """Request counts once they stopped moving for ``quiet`` seconds (late events, patches)."""
    deadline = time.monotonic() + limit
    last = apiserver_requests(client)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        current = apiserver_requests(client)
        if current == last:
            break
        last = current
    return last


# -- the operator under test -----------------------------------------------------------------


class OperatorProcess(devtools.OperatorProcess):
    """``amphora-operator run`` watching one namespace, serving /metrics on a free port;
    ``start()`` returns once /metrics answers (start-up ran)."""

    def __init__(
        self, kubeconfig: Path, namespace: str, config: Mapping[str, Any], workdir: Path, name: str
    ) -> None:
        super().__init__(
            kubeconfig=kubeconfig, workdir=workdir, config=config, namespace=namespace,
            metrics=True, name=name,
        )  # fmt: skip

    def start(self, timeout: float = 60.0) -> None:
        super().start()
        self.wait_ready(timeout)

    def scrape(self) -> tuple[dict[str, list[Bucket]], float]:
        """(amphora_handler_seconds buckets per handler, amphora_status_writes_total)."""
        samples = self.metrics()
        buckets = histogram(samples, "amphora_handler_seconds", by="handler")
        return buckets, metric(samples, "amphora_status_writes_total")


# -- runs ------------------------------------------------------------------------------------


def _body(name: str, spec: Spec) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "bench"}},
        "spec": spec(name),
    }


def _ready_status(name: str) -> dict[str, Any]:
    """A status shaped like the operator's Ready status (what the baseline writes itself)."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "status": {
            "phase": READY,
            "computeId": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
            "driver": "baseline",
            "addresses": ["192.0.2.1"],
            "rawState": "active",
            "observedGeneration": 1,
            "conditions": [
                {
                    "type": READY,
                    "status": "True",
                    "reason": "Active",
                    "message": "written directly by the baseline",
                    "observedGeneration": 1,
                    "lastTransitionTime": stamp,
                }
            ],
        }
    }


@dataclass
class _Created:
    started: dict[str, float]
    failures: list[str]
    seconds: float


def _create_all(
    client: k8s.ApiClient,
    namespace: str,
    names: list[str],
    threads: int,
    spec: Spec,
    then: Callable[[str], None] | None = None,
) -> _Created:
    """Create every name from a pool of ``threads``; ``then(name)`` runs right after each."""
    api = k8s.CustomObjectsApi(client)
    started: dict[str, float] = {}
    failures: list[str] = []

    def one(name: str) -> None:
        started[name] = time.perf_counter()
        try:
            api.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, _body(name, spec)
            )
            if then is not None:
                then(name)
        except (k8s.ApiException, urllib3.exceptions.HTTPError) as e:
            failures.append(f"{name}: {e}")

    first = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="create") as pool:
        list(pool.map(one, names))
    return _Created(started, failures, time.perf_counter() - first)


def _delete_all(client: k8s.ApiClient, namespace: str, timeout: float) -> float | None:
    """Delete every Amphora of the namespace; seconds until none is left, None on timeout.

    A DELETE of the whole collection can outlast the apiserver's 60 s request timeout on a
    busy machine (504); it is idempotent, so it is simply sent again every 30 s.
    """
    api = k8s.CustomObjectsApi(client)
    started = time.perf_counter()
    sent = -math.inf
    while time.perf_counter() - started < timeout:
        if time.perf_counter() - sent > 30:
            sent = time.perf_counter()
            try:
                api.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
            except k8s.ApiException as e:
                if e.status not in (429, 500, 503, 504):
                    raise
        if not api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, limit=1)[
            "items"
        ]:
            return time.perf_counter() - started
        time.sleep(0.5)
    return None


@contextlib.contextmanager
def _namespace(client: k8s.ApiClient, prefix: str, *, operated: bool = True) -> Iterator[str]:
    """A fresh namespace; on exit, leftovers lose their finalizers and the namespace is gone."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core = k8s.CoreV1Api(client)
    labels = {} if operated else {NO_OPERATOR_LABEL: "true"}
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name, labels=labels)))
    try:
        yield name
    finally:
        api = k8s.CustomObjectsApi(client)
        for item in api.list_namespaced_custom_object(GROUP, VERSION, name, PLURAL)["items"]:
            with contextlib.suppress(k8s.ApiException):
                api.patch_namespaced_custom_object(
                    GROUP, VERSION, name, PLURAL, item["metadata"]["name"],
                    {"metadata": {"finalizers": None}},
                )  # fmt: skip
        core.delete_namespace(name)
        # Wait, so that the namespace controller's clean-up does not land in the next count.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                core.read_namespace(name)
            except k8s.ApiException as e:
                if e.status == 404:
                    break
                raise
            time.sleep(0.5)


def _timed(
    client: k8s.ApiClient,
    watch: PhaseWatch,
    namespace: str,
    *,
    n: int,
    threads: int,
    deadline: float,
    spec: Spec,
    then: Callable[[str], None] | None,
) -> tuple[_Created, list[str], float, bool, Counter[str], Counter[str]]:
    """The timed part shared by both modes; returns what the Measurement is built from."""
    names = [f"amp-{i:05d}" for i in range(n)]
    before = _settled_requests(client)
    lists_before = watch.lists
    created = _create_all(client, namespace, names, threads, spec, then)
    failed = {line.split(":", 1)[0] for line in created.failures}
    expected = [name for name in names if name not in failed]
    first = min(created.started.values())
    done = watch.wait_ready(expected, first + deadline)
    end = max((watch.ready_at[x] for x in expected if x in watch.ready_at), default=first)
    after = _settled_requests(client)
    own: Counter[str] = Counter({"POST amphorae": n, "LIST amphorae": watch.lists - lists_before})
    if then is not None:
        own["PATCH amphorae/status"] = n
    return created, expected, end - first, not done, after - before, own


def _latencies(watch: PhaseWatch, created: _Created, names: list[str]) -> list[float]:
    return sorted(
        round(watch.ready_at[x] - created.started[x], 4) for x in names if x in watch.ready_at
    )


def run_baseline(
    kubeconfig: Path, *, n: int, threads: int, deadline: float, spec: Spec = vm_spec
) -> Measurement:
    """N Amphorae created and patched Ready by the client itself: the apiserver's floor."""
    with (
        api_client(kubeconfig) as client,
        _namespace(client, f"bench-baseline-{n}", operated=False) as ns,
    ):
        api = k8s.CustomObjectsApi(client)

        def write_ready(name: str) -> None:
            api.patch_namespaced_custom_object_status(
                GROUP, VERSION, ns, PLURAL, name, _ready_status(name)
            )

        with PhaseWatch(kubeconfig, ns) as watch:
            _create_all(client, ns, [WARMUP], 1, spec, write_ready)
            if not watch.wait_ready([WARMUP], time.perf_counter() + 60):
                raise RuntimeError("the baseline warm-up Amphora never showed Ready")
            created, names, wall, timed_out, requests, own = _timed(
                client, watch, ns, n=n, threads=threads, deadline=deadline, spec=spec,
                then=write_ready,
            )  # fmt: skip
            latencies = _latencies(watch, created, names)
        return Measurement(
            scenario="baseline",
            n=n,
            threads=threads,
            latencies=latencies,
            wall_seconds=wall,
            create_seconds=created.seconds,
            failed_creates=len(created.failures),
            timed_out=timed_out,
            requests=dict(requests),
            own_requests=dict(own),
            delete_seconds=_delete_all(client, ns, deadline),
        )


def run_operator(
    kubeconfig: Path,
    *,
    n: int,
    threads: int,
    deadline: float,
    workdir: Path,
    config: Mapping[str, Any],
    scenario: str = "operator",
    build_seconds: float | None = 0.0,
    spec: Spec = vm_spec,
    before_timed: Callable[[], None] | None = None,
    inspect: Callable[[PhaseWatch, dict[str, float]], dict[str, Any]] | None = None,
) -> Measurement:
    """N Amphorae created by the client and made Ready by a fresh operator process.

    Scenario hooks: ``before_timed()`` runs after the warm-up, just before the clock starts;
    ``inspect(watch, latency_by_name)`` returns scenario-specific results (``extra``).
    """
    with api_client(kubeconfig) as client, _namespace(client, f"bench-{scenario}-{n}") as ns:
        with (
            OperatorProcess(
                kubeconfig, ns, config, workdir, f"operator-{scenario}-{n}"
            ) as operator,
            PhaseWatch(kubeconfig, ns) as watch,
        ):
            _create_all(client, ns, [WARMUP], 1, spec)
            if not watch.wait_ready([WARMUP], time.perf_counter() + 120):
                raise RuntimeError(
                    f"the warm-up Amphora never became Ready (status {watch.statuses.get(WARMUP)});"
                    f" {operator.log_tail()}"
                )
            if before_timed is not None:
                before_timed()
            profiler = _profile(operator, workdir)
            cpu_before = _cpu_seconds(operator)
            handler_before, writes_before = operator.scrape()
            created, names, wall, timed_out, requests, own = _timed(
                client, watch, ns, n=n, threads=threads, deadline=deadline, spec=spec, then=None
            )
            cpu = _cpu_seconds(operator) - cpu_before
            handler_after, writes_after = operator.scrape()
            latencies = _latencies(watch, created, names)
            by_name = {
                x: watch.ready_at[x] - created.started[x] for x in names if x in watch.ready_at
            }
            extra = inspect(watch, by_name) if inspect is not None else {}
            peak_rss = operator.peak_rss_bytes()
            delete_seconds = _delete_all(client, ns, deadline)
            if profiler is not None:
                profiler.send_signal(2)  # py-spy writes its samples on SIGINT
                profiler.wait(60)
        return Measurement(
            scenario=scenario,
            n=n,
            threads=threads,
            latencies=latencies,
            wall_seconds=wall,
            create_seconds=created.seconds,
            failed_creates=len(created.failures),
            timed_out=timed_out,
            build_seconds=build_seconds,
            requests=dict(requests),
            own_requests=dict(own),
            status_writes=int(writes_after - writes_before),
            peak_rss_bytes=peak_rss,
            handler_buckets=_bucket_delta(handler_before, handler_after),
            delete_seconds=delete_seconds,
            cpu_seconds=cpu,
            extra=extra,
        )


def _cpu_seconds(operator: OperatorProcess) -> float:
    """User + system CPU seconds the operator process has used so far."""
    process = operator.process
    if process is None:
        raise ValueError("the operator was never started")
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _profile(operator: OperatorProcess, workdir: Path) -> subprocess.Popen[bytes] | None:
    """With ``BENCH_PYSPY=1`` (and py-spy on PATH), sample the operator from the timed part
    through its deletions into ``<workdir>/<name>.pyspy.txt`` (collapsed stacks; for finding
    where the time goes, not a result)."""
    py_spy = shutil.which("py-spy")
    process = operator.process
    if not os.environ.get("BENCH_PYSPY") or py_spy is None or process is None:
        return None
    out = workdir / f"{operator.name}.pyspy.txt"
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(process.pid), "--rate", "50", "--format", "raw",
         "-o", str(out)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def _bucket_delta(
    before: Mapping[str, list[Bucket]], after: Mapping[str, list[Bucket]]
) -> dict[str, list[Bucket]]:
    delta: dict[str, list[Bucket]] = {}
    for handler, buckets in after.items():
        old = dict(before.get(handler, []))
        delta[handler] = [(le, count - old.get(le, 0.0)) for le, count in buckets]
    return delta
