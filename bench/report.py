"""Turn measurements into ``results.md`` (tables), ``results.json`` (every figure but the raw
latencies), ``samples.jsonl.gz`` (the raw latencies) and ``latency.png``.

Stored compactly so that a new run changes a few lines, not thousands: ``results.json`` holds
one line per measurement, and the per-Amphora latencies (thousands of numbers) go to a gzip'd
JSON-lines file written byte-for-byte reproducibly (no timestamp in the gzip header).
``python -m bench.report [DIR]`` renders results.md and latency.png again from those files.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import Measurement

__all__ = [
    "Environment",
    "load_results",
    "operator_requests",
    "plot",
    "render_markdown",
    "requests_per_amphora",
    "write_results",
]

#: The spec's bound on handler latency (docs: a handler returns to the event loop within it).
HANDLER_BOUND_SECONDS = 0.2


@dataclass
class Environment:
    """Where and how the numbers were produced (printed above the tables)."""

    command: str
    date: str
    nproc: int
    cpu_model: str
    free_g: str
    python: str
    platform: str
    commit: str
    versions: dict[str, str]
    load_before: str
    load_after: str = ""
    seconds: float = 0.0
    finished: bool = False
    notes: list[str] = field(default_factory=list)


def operator_requests(m: Measurement) -> Counter[str]:
    """Requests the benchmark client did not send itself: the operator's."""
    own = Counter(m.own_requests)
    return Counter({k: v - own[k] for k, v in m.requests.items() if v - own[k] > 0})


def requests_per_amphora(m: Measurement) -> float:
    """Requests on Amphorae and Events per Amphora, its create included, the watch's LISTs not."""
    total = sum(m.requests.values()) - m.own_requests.get("LIST amphorae", 0)
    return total / m.n if m.n else math.nan


def _ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def _num(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def _ratio(a: float, b: float) -> str:
    return "-" if not b or math.isnan(a) or math.isnan(b) else f"{a / b:,.1f}x"


def _ready(m: Measurement) -> str:
    text = f"{m.ready:,}/{m.n:,}"
    if m.timed_out:
        text += " (deadline)"
    if m.failed_creates:
        text += f", {m.failed_creates} creates failed"
    return text


def _breakdown(counts: Counter[str], n: int) -> str:
    return ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _pairs(
    results: Sequence[Measurement],
) -> list[tuple[int, Measurement | None, Measurement | None]]:
    sizes = sorted({m.n for m in results if m.scenario in ("baseline", "operator")})
    by_key = {(m.scenario, m.n): m for m in results}
    return [(n, by_key.get(("baseline", n)), by_key.get(("operator", n))) for n in sizes]


def _floor(results: Sequence[Measurement], n: int) -> Measurement | None:
    return next((m for m in results if m.scenario == "floor" and m.n == n), None)


def _throughput_table(results: Sequence[Measurement]) -> list[str]:
    lines = [
        "| N | run | Ready | throughput | p50 | p99 | max | creates took "
        "| first create → last Ready |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, base, op in _pairs(results):
        floor = _floor(results, n)
        runs = (("baseline (no operator)", base), ("floor (watch-then-patch)", floor),
                ("operator", op))  # fmt: skip
        for label, m in runs:
            if m is None:
                continue
            lines.append(
                f"| {n:,} | {label} | {_ready(m)} | {_num(m.throughput)}/s | "
                f"{_ms(m.latency(0.5))} | {_ms(m.latency(0.99))} | {_ms(m.latency(1.0))} | "
                f"{_num(m.create_seconds)} s | {_num(m.wall_seconds)} s |"
            )
        if base is not None and op is not None:
            lines.append(
                f"| {n:,} | *operator vs baseline* | | "
                f"{_ratio(op.throughput, base.throughput)} | "
                f"{_ratio(op.latency(0.5), base.latency(0.5))} | "
                f"{_ratio(op.latency(0.99), base.latency(0.99))} | | | |"
            )
        if floor is not None and op is not None:
            lines.append(
                f"| {n:,} | *operator vs floor* | | "
                f"{_ratio(op.throughput, floor.throughput)} | "
                f"{_ratio(op.latency(0.5), floor.latency(0.5))} | "
                f"{_ratio(op.latency(0.99), floor.latency(0.99))} | | | |"
            )
    return lines


def _cost_table(results: Sequence[Measurement]) -> list[str]:
    lines = [
        "| N | run | API requests per Amphora (incl. its create) "
        "| sent by the operator, per Amphora | status writes per Amphora | operator peak RSS "
        "| operator CPU per Amphora | delete all N |",
        "|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    for n, base, op in _pairs(results):
        if base is not None:
            writes = base.own_requests.get("PATCH amphorae/status", 0) / n
            lines.append(
                f"| {n:,} | baseline | {_num(requests_per_amphora(base), 2)} | - | {writes:.2f} | "
                f"- | - | {_num(base.delete_seconds or math.nan)} s |"
            )
        floor = _floor(results, n)
        if floor is not None:
            writes = (floor.status_writes or 0) / n
            rss = (floor.peak_rss_bytes or 0) / 2**20
            lines.append(
                f"| {n:,} | floor | {_num(requests_per_amphora(floor), 2)} | - | {writes:.2f} | "
                f"{rss:,.0f} MiB (floor) | - | {_num(floor.delete_seconds or math.nan)} s |"
            )
        if op is not None:
            ops = operator_requests(op)
            rss = (op.peak_rss_bytes or 0) / 2**20
            writes = (op.status_writes or 0) / n
            lines.append(
                f"| {n:,} | operator | {_num(requests_per_amphora(op), 2)} | "
                f"{_num(sum(ops.values()) / n, 2)}: {_breakdown(ops, n)} | {writes:.2f} | "
                f"{rss:,.0f} MiB | {_cpu(op)} | "
                + (
                    f"{_num(op.delete_seconds)} s |"
                    if op.delete_seconds is not None
                    else "deadline |"
                )
            )
    return lines


def _cpu(m: Measurement) -> str:
    """Operator CPU time per Amphora, create → Ready (older results did not record it)."""
    return "-" if m.cpu_seconds is None else f"{m.cpu_seconds / m.n * 1000:.1f} ms"


def _handler_table(results: Sequence[Measurement]) -> list[str]:
    lines = [
        "| N | noop build | handler calls | handler p50 (est.) | handler p99 (est.) | "
        "calls ≤ 200 ms | spec bound | apply→Ready p50 | apply→Ready p99 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        if m.scenario != "slow-backend":
            continue
        p99 = m.handler_quantile(0.99)
        verdict = "met" if p99 <= HANDLER_BOUND_SECONDS else "**missed**"
        lines.append(
            f"| {m.n:,} | {_num(m.build_seconds or 0.0)} s | {m.handler_calls():,} | "
            f"{_ms(m.handler_quantile(0.5))} | {_ms(p99)} | "
            f"{m.handler_share_within(HANDLER_BOUND_SECONDS):.1%} | 200 ms ({verdict}) | "
            f"{_ms(m.latency(0.5))} | {_ms(m.latency(0.99))} |"
        )
    return lines


def _realistic_table(results: Sequence[Measurement]) -> list[str]:
    lines = [
        "| N | noop build | Ready | apply→Ready p50 / p99 | API requests per Amphora (incl. "
        "create) | status writes per Amphora | operator requests per Amphora | peak RSS |",
        "|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for m in results:
        if m.scenario != "realistic":
            continue
        ops = operator_requests(m)
        lines.append(
            f"| {m.n:,} | {_num(m.build_seconds or 0.0)} s | {_ready(m)} | "
            f"{_ms(m.latency(0.5))} / {_ms(m.latency(0.99))} | "
            f"{_num(requests_per_amphora(m), 2)} | {(m.status_writes or 0) / m.n:.2f} | "
            f"{_breakdown(ops, m.n)} | {(m.peak_rss_bytes or 0) / 2**20:,.0f} MiB |"
        )
    return lines


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _nova_table(results: Sequence[Measurement]) -> list[str]:
    lines = [
        "| N | Ready | apply→Ready p50 / p99 | Nova BUILD→ACTIVE p50 / p99 | mean apply→Ready ="
        " operator until it calls Nova + Nova answering the create + BUILD→ACTIVE + ACTIVE →"
        " Ready seen | handler p99 (est.) | Nova API calls per Amphora |",
        "|---:|---:|---:|---:|---|---:|---|",
    ]
    for m in results:
        if m.scenario != "nova":
            continue
        x = m.extra
        phases = x.get("phases", {})
        parts = [_mean(phases.get(k, [])) for k in ("until_post", "post", "build", "until_ready")]
        calls = Counter(x.get("nova_calls", {}))
        lines.append(
            f"| {m.n} | {_ready(m)} | {_ms(m.latency(0.5))} / {_ms(m.latency(0.99))} | "
            f"{_ms(x.get('build_p50', math.nan))} / {_ms(x.get('build_p99', math.nan))} | "
            f"{_ms(sum(parts))} = {' + '.join(_ms(p) for p in parts)} | "
            f"{_ms(m.handler_quantile(0.99))} | "
            f"{_num(sum(calls.values()) / m.n, 2)}: {_breakdown(calls, m.n)} |"
        )
    return lines


def render_markdown(env: Environment, results: Sequence[Measurement]) -> str:
    """The whole results.md: provenance, method, one table per measurement, the plot."""
    state = (
        "" if env.finished else "\n**This run did not finish: the tables hold what completed.**\n"
    )
    versions = ", ".join(f"{k} {v}" for k, v in env.versions.items())
    out = [
        "# amphora-operator benchmarks",
        "",
        f"Produced by `{env.command}` on {env.date} (commit {env.commit}), "
        f"{env.seconds / 60:.1f} min in total. Every figure: [results.json](results.json);"
        f" each Amphora's latency: [{SAMPLES_FILE}]({SAMPLES_FILE}).",
        state,
        "## Machine",
        "",
        f"- CPU: {env.nproc} (`nproc`), {env.cpu_model}",
        f"- Python {env.python} on {env.platform}",
        f"- Load average (1/5/15 min) at start {env.load_before}, at end {env.load_after or '-'}",
        f"- {versions}; every component a local process with default flags "
        "(`amphora_devtools.control_plane`, etcd with `--unsafe-no-fsync`), 2 kwok Nodes",
        "- `free -g`:",
        "",
        "```",
        env.free_g.rstrip(),
        "```",
        "",
        "## Method",
        "",
        "- Each measurement gets a fresh namespace; the operator is a fresh `amphora-operator run`"
        " process watching only that namespace with its default settings (`reconcile.concurrency`"
        " 16, poll 0.5 s) and the noop driver. One warm-up Amphora is created and waited for before"
        " the clock starts.",
        f"- Amphorae are created with `create_namespaced_custom_object` (what `kubectl apply` of a"
        f" new object does) from a pool of {results[0].threads if results else '-'} client threads,"
        " identical in all runs. The **baseline** thread then patches the status to Ready itself"
        " (the floor the apiserver allows); the **floor** is a minimal controller process"
        " (`bench/floor.py`: one watch, one status PATCH per Amphora from 16 threads, no"
        " backend, no finalizer); in the **operator** run the operator does it. Targets are"
        " ratios against the floor of the same run. Baseline and floor namespaces are left"
        " out of the finalizer admission policy (no operator would remove the finalizer).",
        "- One watch on the namespace stamps when each Amphora is first seen with"
        " `status.phase: Ready`; latency = that stamp - the start of its create call;"
        " throughput = Ready Amphorae / (first create → last Ready).",
        "- API requests: the delta of kube-apiserver's `apiserver_request_total` (scraped with the"
        " admin token, counts settled) on the resources `amphorae` (incl. `/status`) and `events`;"
        " the metric has no user-agent label, so the benchmark client's own creates, baseline"
        " status patches and watch LISTs are subtracted to get the operator's share. Long-running"
        " WATCH requests are not counted. Nothing else in the cluster touches these resources.",
        "- Operator memory: `VmHWM` (peak resident set) of the operator process after the run.",
        "- Operator CPU: user + system time of the operator process (`/proc/<pid>/stat`) from"
        " the first create until the last Amphora was Ready, divided by N; less skewed by a"
        " shared machine than throughput. `BENCH_PYSPY=1` also samples the operator with"
        " py-spy into the work directory (for profiling; not a result).",
        "- Handler latency: `amphora_handler_seconds` from the operator's `/metrics` (delta over"
        " the run); quantiles are interpolated within histogram buckets like Prometheus'"
        " `histogram_quantile`, the share ≤ 200 ms is exact (200 ms is a bucket bound).",
        "",
        "## 1. apply → Ready with the noop driver (builds take 0 s)",
        "",
        *_throughput_table(results),
        "",
        "## 2. What the operator costs as N grows",
        "",
        *_cost_table(results),
        "",
        "## 3. Handler latency while the backend is slow",
        "",
        *_handler_table(results),
        "",
        "## 4. A realistic case: builds that take 5 s",
        "",
        *(
            _realistic_table(results)
            if any(m.scenario == "realistic" for m in results)
            else ["Not run."]
        ),
        "",
        "## 5. Against the real Nova API (Nova box)",
        "",
        *(_nova_table(results) if any(m.scenario == "nova" for m in results) else ["Not run."]),
        "",
        "The operator reaches the box through a counting proxy in the benchmark process, which"
        " also stamps each `POST /servers` (sent, answered); Nova's BUILD→ACTIVE runs from that"
        " answer until a poller (straight to the box, `changes-since`, every 0.2 s) first sees"
        " the server ACTIVE. The box's project quota is lifted first (its default of 10"
        " instances cannot hold the warm-up plus N=10). The box serves one request at a time.",
        "",
    ]
    if env.notes:
        out += ["## Notes", "", *(f"- {note}" for note in env.notes), ""]
    out += ["## Latency distribution", "", "![apply→Ready latency](latency.png)", ""]
    return "\n".join(out)


def plot(results: Sequence[Measurement], path: Path) -> None:
    """ECDF of apply→Ready latency per run (left) and p50/p99 against N (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, m in enumerate(results):
        if not m.latencies:
            continue
        ys = [(k + 1) / m.n for k in range(len(m.latencies))]
        style = "--" if m.scenario == "baseline" else "-"
        left.step(
            m.latencies, ys, style, where="post", color=colours[i % len(colours)],
            label=f"{m.scenario} N={m.n:,}",
        )  # fmt: skip
    left.set_xscale("log")
    left.set_xlabel("apply → Ready (s, log scale)")
    left.set_ylabel("fraction of Amphorae Ready")
    left.set_title("Latency distribution")
    left.grid(True, which="both", alpha=0.3)
    if left.lines:
        left.legend(fontsize=8)
    for scenario, marker in (("baseline", "o"), ("operator", "s")):
        runs = sorted(
            (m for m in results if m.scenario == scenario and m.latencies), key=lambda m: m.n
        )
        if not runs:
            continue
        sizes = [m.n for m in runs]
        right.plot(sizes, [m.latency(0.5) for m in runs], marker=marker, label=f"{scenario} p50")
        right.plot(
            sizes, [m.latency(0.99) for m in runs], marker=marker, linestyle=":",
            label=f"{scenario} p99",
        )  # fmt: skip
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("N Amphorae created at once")
    right.set_ylabel("apply → Ready (s)")
    right.set_title("Latency against N (noop, 0 s builds)")
    right.grid(True, which="both", alpha=0.3)
    if right.lines:
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SUMMARY_FILE = "results.json"
SAMPLES_FILE = "samples.jsonl.gz"


def _summary(m: Measurement) -> dict[str, Any]:
    """Every field but the raw latencies, which are summarised (and stored separately)."""
    data = asdict(m)
    del data["latencies"]
    data["latency_summary"] = {
        "count": m.ready,
        **{f"p{round(q * 100)}": round(m.latency(q), 4) for q in (0.5, 0.9, 0.99)},
        "max": round(m.latency(1.0), 4),
    }
    data["handler_buckets"] = {
        k: [["+Inf" if math.isinf(le) else le, c] for le, c in v]
        for k, v in m.handler_buckets.items()
    }
    return data


def _json_line(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=True)


def write_raw(out: Path, env: Environment, results: Sequence[Measurement]) -> None:
    """``results.json`` (environment, then one line per measurement) and the samples file."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ",\n  ".join(_json_line(_summary(m)) for m in results)
    (out / SUMMARY_FILE).write_text(
        f'{{\n "environment": {_json_line(asdict(env))},\n "results": [\n  {lines}\n ]\n}}\n'
    )
    samples = "".join(
        _json_line({"scenario": m.scenario, "n": m.n, "latencies": m.latencies}) + "\n"
        for m in results
    )
    with (
        (out / SAMPLES_FILE).open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed,
    ):
        compressed.write(samples.encode())


def load_results(out: Path) -> tuple[Environment, list[Measurement]]:
    """Read back what :func:`write_raw` stored (or an older results.json with inline latencies)."""
    data = json.loads((out / SUMMARY_FILE).read_text())
    samples: dict[tuple[str, int], list[float]] = {}
    if (out / SAMPLES_FILE).is_file():
        with gzip.open(out / SAMPLES_FILE, "rt") as raw:
            for line in raw:
                sample = json.loads(line)
                samples[(sample["scenario"], sample["n"])] = sample["latencies"]
    results = []
    for item in data["results"]:
        item.pop("latency_summary", None)
        latencies = item.pop("latencies", None)
        if latencies is None:
            latencies = samples[(item["scenario"], item["n"])]
        item["handler_buckets"] = {
            k: [(float(le), c) for le, c in v] for k, v in item["handler_buckets"].items()
        }
        results.append(Measurement(latencies=latencies, **item))
    return Environment(**data["environment"]), results


def write_results(out: Path, env: Environment, results: Sequence[Measurement]) -> None:
    """Write results.md, results.json, samples.jsonl.gz and latency.png into ``out``
    (rewritten after each run)."""
    write_raw(out, env, results)
    (out / "results.md").write_text(render_markdown(env, results))
    plot(results, out / "latency.png")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="Render results.md and latency.png again from the stored results.",
    )
    parser.add_argument("out", type=Path, nargs="?", default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    env, results = load_results(args.out)
    write_results(args.out, env, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
