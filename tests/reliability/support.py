"""Shared checks of the reliability suite: the fleet as the API shows it, the compute side as
the backend shows it, the audit comparing both, metrics scraping and the figures report.

Every check reads the whole namespace in one list call, so waiting on 20 Amphorae costs the
same as waiting on one.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from amphora_devtools.net import free_port as free_port  # re-exported for the suite
from amphora_devtools.wait import WaitTimeout, wait_until
from amphora_drivers import AmphoraInstance, AmphoraState
from amphora_operator.planner import owner_key
from kubernetes import client as k8s
from kubernetes.client import ApiClient
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.operator import GROUP, PLURAL, VERSION

Item = dict[str, Any]


def status_of(item: Item) -> dict[str, Any]:
    return dict(item.get("status") or {})


def condition_of(item: Item, type_: str) -> dict[str, Any] | None:
    for c in status_of(item).get("conditions", []):
        if c.get("type") == type_:
            return dict(c)
    return None


def settled(item: Item) -> bool:
    """Ready (or Suspended, as its spec asks) on the current generation, nothing being replaced
    or retired."""
    s = status_of(item)
    wanted = "Suspended" if (item.get("spec") or {}).get("suspended") else "Ready"
    return (
        s.get("phase") == wanted
        and bool(s.get("computeId"))
        and not s.get("retired")
        and not s.get("replacement")
        and s.get("observedGeneration") == item["metadata"].get("generation")
    )


class Fleet:
    """The Amphorae of one namespace, read with one list call."""

    def __init__(self, kube_api: ApiClient, namespace: str) -> None:
        self.api = k8s.CustomObjectsApi(kube_api)
        self.namespace = namespace

    def items(self) -> list[Item]:
        result = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        return list(result["items"])

    def by_name(self) -> dict[str, Item]:
        return {i["metadata"]["name"]: i for i in self.items()}

    def wait(
        self,
        until: Callable[[list[Item]], bool],
        *,
        timeout: float,
        what: str,
        tolerate_api_errors: bool = False,
    ) -> float:
        """Poll until ``until(items)``; return the seconds it took. Fails with a summary."""
        started = time.monotonic()
        seen: dict[str, Any] = {"items": [], "error": None}

        def probe() -> list[Item] | None:
            try:
                seen["items"], seen["error"] = self.items(), None
            except Exception as e:  # the apiserver may be down on purpose
                if not tolerate_api_errors:
                    raise
                seen["error"] = e
                return None
            return list(seen["items"])

        try:
            wait_until(probe, lambda items: items is not None and until(items),
                       timeout=timeout, what=what, interval=0.3)  # fmt: skip
        except WaitTimeout:
            pytest.fail(
                f"{what}: not reached within {timeout:.0f} s (last API error: {seen['error']})\n"
                + summarize(seen["items"]),
                pytrace=False,
            )
        return time.monotonic() - started

    def wait_all(self, names: Iterable[str], predicate: Callable[[Item], bool], **kw: Any) -> float:
        wanted = set(names)

        def done(items: list[Item]) -> bool:
            present = {i["metadata"]["name"]: i for i in items}
            return all(n in present and predicate(present[n]) for n in wanted)

        return self.wait(done, **kw)

    def wait_empty(self, *, timeout: float, what: str = "every Amphora gone") -> float:
        return self.wait(lambda items: not items, timeout=timeout, what=what)


def summarize(items: list[Item], limit: int = 40) -> str:
    lines = []
    for item in items[:limit]:
        s = status_of(item)
        ready = condition_of(item, "Ready") or {}
        lines.append(
            f"  {item['metadata']['name']}: phase={s.get('phase')} id={s.get('computeId')} "
            f"rev={s.get('revision')} gen={item['metadata'].get('generation')}/"
            f"{s.get('observedGeneration')} retired={s.get('retired')} "
            f"replacement={bool(s.get('replacement'))} deleting="
            f"{bool(item['metadata'].get('deletionTimestamp'))} ready={ready.get('message')}"
        )
    return "\n".join(lines) or "  (no Amphora)"


@dataclass
class Audit:
    """Compute side versus API side: what must be empty after convergence."""

    live: int
    instances: int
    #: Amphorae with more than one instance carrying their UID.
    duplicates: dict[str, list[str]] = field(default_factory=dict)
    #: Instances no live Amphora owns under its current key (leaked builds, stale revisions).
    orphans: list[str] = field(default_factory=list)
    #: Live Amphorae without an instance, or whose status names another id.
    missing: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.duplicates or self.orphans or self.missing)

    def report(self) -> str:
        return (
            f"{self.live} live Amphorae, {self.instances} instances; duplicates="
            f"{self.duplicates}; orphans={self.orphans}; missing={self.missing}"
        )


def audit(items: list[Item], instances: list[AmphoraInstance]) -> Audit:
    """Exactly one instance per live Amphora, owned under its current key, and nothing else."""
    live = [i for i in items if not i["metadata"].get("deletionTimestamp")]
    by_uid = {i["metadata"]["uid"].replace("-", ""): i for i in live}
    present = [i for i in instances if i.state is not AmphoraState.DELETED]
    result = Audit(live=len(live), instances=len(present))
    per_uid: dict[str, list[str]] = {}
    for instance in present:
        uid_hex = (instance.owner or "").rsplit("-", 1)[0]
        per_uid.setdefault(uid_hex, []).append(instance.id)
        item = by_uid.get(uid_hex)
        if item is None:
            result.orphans.append(f"{instance.id} (owner {instance.owner}, {instance.state})")
            continue
        s = status_of(item)
        current = owner_key(item["metadata"]["uid"], int(s.get("revision", 0)))
        if instance.owner != current or instance.id != s.get("computeId"):
            result.orphans.append(
                f"{instance.id} (owner {instance.owner}, {instance.state}) of "
                f"{item['metadata']['name']} whose current is {s.get('computeId')}/{current}"
            )
    for uid_hex, ids in per_uid.items():
        if len(ids) > 1 and uid_hex in by_uid:
            result.duplicates[by_uid[uid_hex]["metadata"]["name"]] = ids
    for uid_hex, item in by_uid.items():
        ids = per_uid.get(uid_hex, [])
        if status_of(item).get("computeId") not in ids:
            result.missing.append(item["metadata"]["name"])
    return result


# -- metrics -----------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The operator's /metrics as {sample name: [(labels, value)]}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        value
        for sample_labels, value in samples.get(name, [])
        if all(sample_labels.get(k) == v for k, v in labels.items())
    )


def wait_for_metrics(port: int, timeout: float = 20) -> None:
    def answers() -> bool:
        try:
            scrape(port)
        except OSError:
            return False
        return True

    wait_until(answers, timeout=timeout, what=f"/metrics on port {port}")


# -- logs --------------------------------------------------------------------------------------


def log_records(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def handler_crashes(text: str) -> list[str]:
    """Log lines saying a handler or the poller raised something unexpected."""
    bad = []
    for record in log_records(text):
        message = str(record.get("message", ""))
        if (
            "failed with an exception" in message
            or "poll round failed" in message
            or "Traceback" in str(record.get("exc_info", ""))
        ):
            bad.append(message[:300])
    return bad


# -- figures -----------------------------------------------------------------------------------

#: Figures the suite reports at the end of the run (the issue's "closing note" numbers).
FIGURES: list[tuple[str, str, Any]] = []


def record(test: str, name: str, value: Any) -> None:
    FIGURES.append((test, name, round(value, 2) if isinstance(value, float) else value))


# -- a network partition ------------------------------------------------------------------------


class Partition:
    """A TCP relay to ``upstream`` that can be frozen: bytes stop flowing both ways and new
    connections hang, without any reset (like dropped packets, the worst case for a client
    without timeouts). Use as a context manager; ``port`` is where clients connect."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.frozen = threading.Event()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.port = int(self._listener.getsockname()[1])

    def __enter__(self) -> Partition:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()
        for sock in self._sockets:
            sock.close()

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._sockets.append(client)
            while self.frozen.is_set() and not self._stop.is_set():
                time.sleep(0.1)  # a new connection hangs during the partition
            if self._stop.is_set():
                return
            upstream = socket.create_connection(self.upstream, timeout=5)
            self._sockets.append(upstream)
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(0.2)
        while not self._stop.is_set():
            if self.frozen.is_set():
                time.sleep(0.1)
                continue
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            try:
                sink.sendall(data)
            except OSError:
                return


def kubeconfig_through(kubeconfig: Path, partition: Partition, path: Path) -> Path:
    """A copy of ``kubeconfig`` whose server is reached through ``partition``."""
    data = yaml.safe_load(kubeconfig.read_text())
    for entry in data["clusters"]:
        entry["cluster"]["server"] = f"https://127.0.0.1:{partition.port}"
    path.write_text(yaml.safe_dump(data))
    return path
