"""The benchmark machinery end to end at N=5: runs complete and the report holds their numbers.

No timing is asserted (the machine decides those); only that every run finished, counted what
it must have counted, and that results.md, results.json, samples.jsonl.gz and latency.png say so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.measure import Measurement, noop_config, run_baseline, run_operator
from bench.report import (
    Environment,
    load_results,
    operator_requests,
    requests_per_amphora,
    write_results,
)
from tests.fixtures.control_plane import Cluster

pytestmark = pytest.mark.cluster

N = 5
THREADS = 4
DEADLINE = 120.0


@pytest.fixture(scope="module")
def runs(
    control_plane: Cluster, amphora_crd: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> list[Measurement]:
    """A baseline, an operator run and a slow-backend run, as ``python -m bench.run`` does."""
    workdir = tmp_path_factory.mktemp("bench")
    kubeconfig = control_plane.kubeconfig
    common: dict[str, Any] = {"n": N, "threads": THREADS, "deadline": DEADLINE}
    return [
        run_baseline(kubeconfig, **common),
        run_operator(kubeconfig, workdir=workdir, config=noop_config(0.0), **common),
        run_operator(
            kubeconfig, workdir=workdir, config=noop_config(1.0), scenario="slow-backend",
            build_seconds=1.0, **common,
        ),
    ]  # fmt: skip


def _environment() -> Environment:
    return Environment(
        command="pytest tests/bench",
        date="today",
        nproc=1,
        cpu_model="test CPU",
        free_g="Mem: 1 0 1",
        python="3",
        platform="test",
        commit="abc1234",
        versions={"kube-apiserver": "v0"},
        load_before="0 0 0",
        finished=True,
    )


@pytest.mark.slow
def test_every_amphora_is_seen_ready_once_per_run(runs: list[Measurement]) -> None:
    for m in runs:
        assert (m.ready, m.failed_creates, m.timed_out) == (N, 0, False), m.scenario
        assert all(latency > 0 for latency in m.latencies), m.scenario
        assert m.latencies == sorted(m.latencies)
        assert m.wall_seconds > 0
        assert m.create_seconds > 0
        assert m.delete_seconds is not None, f"{m.scenario}: Amphorae were not deleted"


def test_baseline_requests_are_exactly_its_creates_and_status_patches(
    runs: list[Measurement],
) -> None:
    baseline = runs[0]
    assert baseline.requests == {"POST amphorae": N, "PATCH amphorae/status": N}
    assert requests_per_amphora(baseline) == 2.0
    assert not operator_requests(baseline)


def test_operator_runs_count_the_operators_own_requests_and_metrics(
    runs: list[Measurement],
) -> None:
    for m in runs[1:]:
        ops = operator_requests(m)
        assert ops["PATCH amphorae/status"] >= N, ops  # at least the Ready write of each
        assert m.status_writes is not None and m.status_writes >= N
        assert m.peak_rss_bytes is not None and m.peak_rss_bytes > 10 * 2**20
        assert m.handler_calls() >= N
        assert 0 < m.handler_quantile(0.99) <= 30.0  # within the histogram's finite buckets
        assert 0.0 <= m.handler_share_within(0.2) <= 1.0


def test_report_holds_every_run(runs: list[Measurement], tmp_path: Path) -> None:
    write_results(tmp_path, _environment(), runs)

    markdown = (tmp_path / "results.md").read_text()
    assert f"| {N} | baseline (no operator) | {N}/{N} |" in markdown
    assert f"| {N} | operator | {N}/{N} |" in markdown
    assert f"| {N} | *operator vs baseline* |" in markdown
    assert f"| {N} | 1.0 s | " in markdown  # the slow-backend row
    assert "`pytest tests/bench`" in markdown
    assert "did not finish" not in markdown
    raw = json.loads((tmp_path / "results.json").read_text())
    assert [r["scenario"] for r in raw["results"]] == ["baseline", "operator", "slow-backend"]
    assert load_results(tmp_path)[1] == runs, "the raw samples read back as measured"
    assert (tmp_path / "latency.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
