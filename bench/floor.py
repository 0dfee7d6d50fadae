"""The floor for a controller: watch Amphorae, patch each one Ready once, nothing else.

The baseline (the creating client patching status itself) is the apiserver's floor; this is a
fairer one for an operator: a separate process with the same client library that learns about
each Amphora from a watch and answers with one status PATCH, from 16 threads like the
operator's default concurrency. No backend, no finalizer, no checks: what is left is the cost
of being a controller at all. ``run_floor`` measures it exactly as ``run_operator`` is measured.

``python -m bench.floor --kubeconfig K --namespace NS`` runs the controller alone.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from amphora_operator.model import GROUP, PLURAL, VERSION
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch

from bench.measure import (
    READY,
    WARMUP,
    Measurement,
    PhaseWatch,
    _create_all,
    _delete_all,
    _latencies,
    _namespace,
    _ready_status,
    _timed,
    api_client,
    vm_spec,
)

__all__ = ["run_floor"]


def serve(kubeconfig: Path, namespace: str, threads: int = 16) -> None:
    """Watch ``namespace`` and patch every Amphora not yet Ready, once (until killed)."""
    client = api_client(kubeconfig, pool_size=threads + 2)
    api = k8s.CustomObjectsApi(client)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="floor")
    done: set[str] = set()
    lock = threading.Lock()

    def patch(name: str) -> None:
        api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, _ready_status(name)
        )

    def see(obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if (obj.get("status") or {}).get("phase") == READY:
            return
        with lock:
            if name in done:
                return
            done.add(name)
        pool.submit(patch, name)

    listing = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    for obj in listing["items"]:
        see(obj)
    version = listing["metadata"]["resourceVersion"]
    print("watching", flush=True)
    while True:
        try:
            for event in k8s_watch.Watch().stream(
                api.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                resource_version=version, timeout_seconds=60, deserialize=False,
            ):  # fmt: skip
                obj = event["object"]
                version = obj["metadata"]["resourceVersion"]
                if event["type"] in ("ADDED", "MODIFIED"):
                    see(obj)
        except k8s.ApiException as e:
            if e.status != 410:
                raise
            version = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)[
                "metadata"
            ]["resourceVersion"]


class FloorProcess:
    """``python -m bench.floor`` as a child in its own session."""

    def __init__(self, kubeconfig: Path, namespace: str, log_path: Path) -> None:
        self.kubeconfig, self.namespace, self.log_path = kubeconfig, namespace, log_path
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> FloorProcess:
        command = [sys.executable, "-m", "bench.floor", "--kubeconfig", str(self.kubeconfig),
                   "--namespace", self.namespace]  # fmt: skip
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "watching":
            self.__exit__()
            raise RuntimeError(f"the floor controller did not start: {self.log_path.read_text()}")
        return self

    def __exit__(self, *_: object) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(15)

    def peak_rss_bytes(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/<pid>/status")


def run_floor(
    kubeconfig: Path, *, n: int, threads: int, deadline: float, workdir: Path
) -> Measurement:
    """N Amphorae created by the client and made Ready by the minimal controller."""
    with (
        api_client(kubeconfig) as client,
        _namespace(client, f"bench-floor-{n}", operated=False) as ns,
    ):
        with (
            FloorProcess(kubeconfig, ns, workdir / f"floor-{n}.log") as floor,
            PhaseWatch(kubeconfig, ns) as watch,
        ):
            _create_all(client, ns, [WARMUP], 1, vm_spec)
            if not watch.wait_ready([WARMUP], time.perf_counter() + 60):
                raise RuntimeError("the floor's warm-up Amphora never showed Ready")
            created, names, wall, timed_out, requests, own = _timed(
                client, watch, ns, n=n, threads=threads, deadline=deadline, spec=vm_spec,
                then=None,
            )  # fmt: skip
            latencies = _latencies(watch, created, names)
            peak_rss = floor.peak_rss_bytes()
        return Measurement(
            scenario="floor",
            n=n,
            threads=threads,
            latencies=latencies,
            wall_seconds=wall,
            create_seconds=created.seconds,
            failed_creates=len(created.failures),
            timed_out=timed_out,
            requests=dict(requests),
            own_requests=dict(own),
            status_writes=requests.get("PATCH amphorae/status", 0),
            peak_rss_bytes=peak_rss,
            delete_seconds=_delete_all(client, ns, deadline),
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args(argv)
    serve(args.kubeconfig, args.namespace, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
