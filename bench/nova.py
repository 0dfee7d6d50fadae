"""apply→Ready against a real Nova API (the Nova box) versus Nova's own BUILD→ACTIVE time.

The operator talks to the box through a counting HTTP proxy, which counts every Nova API call
it makes and stamps when each ``POST /servers`` was sent and answered; a poller beside it
(straight to the box, not through the proxy) stamps when each server is first ACTIVE. With the
watch's Ready stamp, every Amphora's apply→Ready splits into: the operator until it asks Nova,
Nova's API answering the create, Nova's BUILD→ACTIVE, and the operator noticing ACTIVE.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from amphora_devtools.nova_box import CLOUD, NovaBox, install_venv
from amphora_drivers.nova import MIN_MICROVERSION, connect
from openstack import exceptions

from bench.measure import Measurement, PhaseWatch, percentile, run_operator

__all__ = ["CountingProxy", "run_nova"]

#: Server ids and other UUIDs in paths become ``{id}`` so that calls group by kind.
_ID = re.compile(r"/[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}(?=/|$)")
#: Nova's BUILD→ACTIVE is sampled this often (its resolution).
POLL_SECONDS = 0.2
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class CountingProxy:
    """A plain HTTP reverse proxy to ``target`` that counts requests by method and path shape."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.counts: Counter[str] = Counter()
        #: Server id → (sent, answered) perf_counter stamps of its ``POST /servers``.
        self.creates: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                path = self.path.split("?", 1)[0]
                with proxy._lock:
                    proxy.counts[f"{self.command} {_ID.sub('/{id}', path)}"] += 1
                request = urllib.request.Request(
                    proxy.target + self.path, data=body, method=self.command,
                    headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
                )  # fmt: skip
                sent = time.perf_counter()
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        data = response.read()
                        if self.command == "POST" and path.endswith("/servers"):
                            server = json.loads(data)["server"]["id"]
                            proxy.creates[server] = (sent, time.perf_counter())
                        self._reply(response.status, response.headers.items(), data)
                except urllib.error.HTTPError as e:
                    self._reply(e.code, e.headers.items(), e.read())
                except (urllib.error.URLError, OSError) as e:  # the box hung up or timed out
                    self._reply(502, [("Content-Type", "text/plain")], f"proxy: {e}".encode())

            def _reply(self, code: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(code)
                for key, value in headers:
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the counts are the record."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)


class _NovaPoller:
    """Stamps, per server, when it is first seen ACTIVE."""

    def __init__(self, clouds_yaml: str) -> None:
        self._clouds_yaml = clouds_yaml
        self.active_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nova-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        conn = connect(
            clouds_yaml_content=self._clouds_yaml,
            cloud=CLOUD,
            compute_api_version=MIN_MICROVERSION,
        )
        since = datetime.now(UTC)
        with contextlib.closing(conn):
            while not self._stop.wait(POLL_SECONDS):
                now, polled = time.perf_counter(), datetime.now(UTC)
                # Only servers changed lately (changes-since has 1 s resolution: overlap), so
                # that polling stays cheap for the box, which serves one request at a time.
                changed = (since - timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
                for server in conn.compute.servers(details=True, changes_since=changed):
                    if server.status == "ACTIVE":
                        self.active_at.setdefault(server.id, now)
                since = polled


@contextlib.contextmanager
def _box(workdir: Path) -> Iterator[NovaBox]:
    """A started Nova box whose project has no instance, core or RAM quota.

    The default quota (10 instances) would fail the warm-up plus N=10 with "Quota exceeded".
    """
    venv, _ = install_venv()
    box = NovaBox(venv=venv, state_dir=workdir / "nova-box")
    box.start()
    try:
        conn = connect(
            clouds_yaml_content=yaml.safe_dump(box.clouds()),
            cloud=CLOUD,
            compute_api_version=MIN_MICROVERSION,
        )
        with contextlib.closing(conn):
            response = conn.compute.put(
                f"/os-quota-sets/{box.info['project_id']}",
                json={"quota_set": {"instances": -1, "cores": -1, "ram": -1}},
                microversion=MIN_MICROVERSION,
            )
            exceptions.raise_from_response(response)
        yield box
    finally:
        box.stop()


def run_nova(
    kubeconfig: Path, *, n: int, threads: int, deadline: float, workdir: Path
) -> Measurement:
    """N VM Amphorae on the nova driver through the counting proxy; ``extra`` has Nova's view."""
    with _box(workdir) as box, CountingProxy(f"http://127.0.0.1:{box.port}") as proxy:
        cloud = box.clouds()["clouds"][CLOUD]
        through_proxy = {
            **cloud,
            "compute_endpoint_override": box.endpoint.replace(
                f"127.0.0.1:{box.port}", f"127.0.0.1:{proxy.port}"
            ),
        }
        config = {
            "profiles": {
                "nova": {
                    "driver": "nova",
                    "options": {
                        "clouds_yaml_content": yaml.safe_dump({"clouds": {CLOUD: through_proxy}}),
                        "cloud": CLOUD,
                    },
                }
            },
            "defaults": {"VM": "nova", "BareMetal": "nova", "Container": "nova"},
        }
        spec = {
            "type": "VM",
            "flavor": "1",  # m1.tiny, one of the box's fixture flavors
            "image": box.info["image_id"],
            "networks": [box.info["network_id"]],
        }
        poller = _NovaPoller(yaml.safe_dump(box.clouds()))
        before: Counter[str] = Counter()

        def start_clock() -> None:
            before.update(proxy.snapshot())
            poller.start()

        def inspect(watch: PhaseWatch, latency_by_name: dict[str, float]) -> dict[str, Any]:
            calls = proxy.snapshot() - before
            poller.stop()
            phases: dict[str, list[float]] = {
                "until_post": [], "post": [], "build": [], "until_ready": []
            }  # fmt: skip
            for name, latency in latency_by_name.items():
                server = watch.statuses.get(name, {}).get("computeId")
                if server not in poller.active_at or server not in proxy.creates:
                    continue
                sent, answered = proxy.creates[server]
                applied = watch.ready_at[name] - latency
                phases["until_post"].append(sent - applied)
                phases["post"].append(answered - sent)
                phases["build"].append(poller.active_at[server] - answered)
                phases["until_ready"].append(watch.ready_at[name] - poller.active_at[server])
            return {
                "nova_calls": dict(calls),
                "nova_poll_seconds": POLL_SECONDS,
                # Per Amphora, in the same order in every list; means add up, quantiles don't.
                "phases": {k: [round(x, 4) for x in v] for k, v in phases.items()},
                "build_p50": percentile(phases["build"], 0.5),
                "build_p99": percentile(phases["build"], 0.99),
            }

        try:
            return run_operator(
                kubeconfig, n=n, threads=threads, deadline=deadline, workdir=workdir,
                config=config, scenario="nova", build_seconds=None, spec=lambda _: dict(spec),
                before_timed=start_clock, inspect=inspect,
            )  # fmt: skip
        finally:
            poller.stop()
