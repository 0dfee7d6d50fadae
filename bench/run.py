"""Run every benchmark on a fresh local control plane and write ``bench/results/``.

``python -m bench.run [--sizes 100,1000,5000] [--out bench/results]``: for each N a baseline, a
floor (a minimal watch-then-patch controller, :mod:`bench.floor`) and an operator run (noop
driver, 0 s builds), then handler latency with a slow backend (noop, 5 s builds), a realistic
case (N=1,000 with 5 s builds) and, when the Nova box can be started, N=10 against Nova. Results are
rewritten after every measurement, so an interrupted run still leaves what it measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

from amphora_devtools.control_plane import LocalControlPlane

from bench.floor import run_floor
from bench.measure import (
    Measurement,
    api_client,
    install_crd,
    install_finalizer_policy,
    noop_config,
    run_baseline,
    run_operator,
)
from bench.nova import run_nova
from bench.report import Environment, write_results

REPO = Path(__file__).resolve().parent.parent
VERSIONS_FILE = REPO / "hack" / "control-plane" / "versions.env"


def _sh(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()


def describe_machine(command: str) -> Environment:
    """What results.md must say about where the numbers came from."""
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    versions = {
        key.removesuffix("_VERSION").lower().replace("k8s", "kube-apiserver"): value
        for key, _, value in (
            line.partition("=") for line in VERSIONS_FILE.read_text().splitlines() if "=" in line
        )
    }
    versions["kopf"] = metadata.version("kopf")
    dirty = (
        " with uncommitted changes" if _sh("git", "-C", str(REPO), "status", "--porcelain") else ""
    )
    return Environment(
        command=command,
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        nproc=int(_sh("nproc") or os.cpu_count() or 0),
        cpu_model=cpu_model,
        free_g=_sh("free", "-g"),
        python=platform.python_version(),
        platform=platform.platform(),
        commit=(_sh("git", "-C", str(REPO), "rev-parse", "--short", "HEAD") or "unknown") + dirty,
        versions=versions,
        load_before=_loadavg(),
    )


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"


def _summary(m: Measurement, seconds: float) -> str:
    return (
        f"{m.scenario} N={m.n}: {m.ready}/{m.n} Ready{' (deadline)' if m.timed_out else ''}, "
        f"{m.throughput:.1f}/s, p50 {m.latency(0.5):.3f} s, p99 {m.latency(0.99):.3f} s "
        f"({seconds:.0f} s)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--sizes", default="100,1000,5000", help="N of the noop runs, '' for none (%(default)s)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=REPO / ".local" / "bench",
        help="control plane state and operator logs (default %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=16, help="client threads creating objects")
    parser.add_argument(
        "--deadline",
        type=float,
        default=1200.0,
        help="seconds a run may take to get all N Ready (default %(default)s)",
    )
    parser.add_argument("--slow-n", type=int, default=200, help="N of the slow backend; 0 skips")
    parser.add_argument("--slow-build-seconds", type=float, default=5.0)
    parser.add_argument(
        "--realistic-n", type=int, default=1000, help="N with 5 s noop builds; 0 skips it"
    )
    parser.add_argument("--nova-n", type=int, default=10, help="N against Nova; 0 skips it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    shown = sys.argv[1:] if argv is None else list(argv)
    env = describe_machine(shlex.join(["python", "-m", "bench.run", *shown]))
    work = args.work_dir.resolve()
    results: list[Measurement] = []
    started = time.monotonic()

    def record(label: str, run: Callable[[], Measurement]) -> None:
        """Run one measurement; a failure is noted in the report and the next one goes on."""
        t0 = time.monotonic()
        try:
            m = run()
        except Exception as e:
            traceback.print_exc()
            env.notes.append(
                f"{label} failed after {time.monotonic() - t0:.0f} s: {_first_line(e)}"
            )
        else:
            results.append(m)
            print(_summary(m, time.monotonic() - t0), flush=True)
        env.seconds = time.monotonic() - started
        env.load_after = _loadavg()
        write_results(args.out, env, results)

    plane = LocalControlPlane(work / "cluster")
    plane.down()  # a previous run that was killed may have left its processes
    shutil.rmtree(plane.state_dir, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    try:
        plane.up(progress=lambda line: print(line, flush=True))
        kubeconfig = plane.kubeconfig
        with api_client(kubeconfig) as client:
            install_crd(client)
            install_finalizer_policy(client)
        common: dict[str, Any] = {"threads": args.threads, "deadline": args.deadline}
        for n in sizes:
            record(f"baseline N={n}", partial(run_baseline, kubeconfig, n=n, **common))
            record(f"floor N={n}", partial(run_floor, kubeconfig, n=n, workdir=work, **common))
            record(
                f"operator N={n}",
                partial(
                    run_operator, kubeconfig, n=n, workdir=work, config=noop_config(0.0), **common
                ),
            )
        if args.slow_n:
            record(
                f"slow-backend N={args.slow_n}",
                partial(
                    run_operator, kubeconfig, n=args.slow_n, workdir=work,
                    scenario="slow-backend", config=noop_config(args.slow_build_seconds),
                    build_seconds=args.slow_build_seconds, **common,
                ),
            )  # fmt: skip
        if args.realistic_n:
            record(
                f"realistic N={args.realistic_n}",
                partial(
                    run_operator, kubeconfig, n=args.realistic_n, workdir=work,
                    scenario="realistic", config=noop_config(args.slow_build_seconds),
                    build_seconds=args.slow_build_seconds, **common,
                ),
            )  # fmt: skip
        if args.nova_n:
            record(
                f"Nova N={args.nova_n}",
                partial(run_nova, kubeconfig, n=args.nova_n, workdir=work, **common),
            )
        env.finished = True
    except BaseException as e:
        env.notes.append(f"The run stopped early: {_first_line(e)}")
        raise
    finally:
        env.seconds = time.monotonic() - started
        env.load_after = _loadavg()
        write_results(args.out, env, results)
        plane.down()
        shutil.rmtree(plane.state_dir / "etcd", ignore_errors=True)
    print(f"wrote {args.out}/results.md in {env.seconds / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
