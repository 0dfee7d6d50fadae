"""Benchmark results are stored compactly and read back exactly (no cluster needed)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

from bench.measure import Measurement
from bench.report import SAMPLES_FILE, SUMMARY_FILE, Environment, load_results, write_raw

REPO = Path(__file__).resolve().parents[2]


def _environment() -> Environment:
    return Environment(
        command="pytest", date="today", nproc=2, cpu_model="cpu", free_g="Mem: 1 0 1",
        python="3", platform="test", commit="abc1234", versions={"etcd": "v3"},
        load_before="0 0 0", notes=["a note"],
    )  # fmt: skip


def _measurement(scenario: str, n: int) -> Measurement:
    return Measurement(
        scenario=scenario, n=n, threads=4, latencies=[round(0.01 * (i + 1), 4) for i in range(n)],
        wall_seconds=1.5, create_seconds=0.5, requests={"POST amphorae": n},
        own_requests={"POST amphorae": n}, status_writes=n, peak_rss_bytes=2**26,
        handler_buckets={"create": [(0.2, 3.0), (math.inf, 4.0)]}, delete_seconds=None,
        extra={"phases": {"post": [0.1]}},
    )  # fmt: skip


def test_raw_latencies_go_to_the_samples_file_and_read_back_exactly(tmp_path: Path) -> None:
    env, runs = _environment(), [_measurement("baseline", 3000), _measurement("operator", 5)]

    write_raw(tmp_path, env, runs)

    summary = (tmp_path / SUMMARY_FILE).read_text()
    assert len(summary.splitlines()) == 5 + len(runs), "environment, then a line per run"
    first = json.loads(summary)["results"][0]
    assert "latencies" not in first
    assert first["latency_summary"] == {
        "count": 3000, "p50": 15.005, "p90": 27.001, "p99": 29.7001, "max": 30.0,
    }  # fmt: skip
    with gzip.open(tmp_path / SAMPLES_FILE, "rt") as samples:
        assert [json.loads(line)["n"] for line in samples] == [3000, 5]
    assert load_results(tmp_path) == (env, runs)


def test_rewriting_the_same_results_changes_no_byte(tmp_path: Path) -> None:
    """A gzip header normally stamps the time; ours does not, so unchanged data is no churn."""
    env, runs = _environment(), [_measurement("operator", 100)]
    write_raw(tmp_path / "a", env, runs)
    write_raw(tmp_path / "b", env, runs)
    for name in (SUMMARY_FILE, SAMPLES_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_the_committed_results_load_and_hold_every_sample() -> None:
    env, runs = load_results(REPO / "bench" / "results")
    assert env.finished
    assert runs and all(len(m.latencies) == m.ready for m in runs)
    assert len((REPO / "bench" / "results" / SUMMARY_FILE).read_text().splitlines()) < 50
