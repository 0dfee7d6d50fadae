"""Fixtures of the reliability suite: operators in named work directories, the fleet view,
and the figures (kills, Amphorae, duplicates, orphans, times to converge) printed at the end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient

from tests.fixtures import add_summary
from tests.fixtures.control_plane import Cluster
from tests.fixtures.operator import OperatorProcess, noop_config, tear_down
from tests.operator.scenario import Steps
from tests.reliability.support import FIGURES, Fleet

Launch = Callable[..., OperatorProcess]


@pytest.fixture
def steps(kube_api: ApiClient, kubectl: Callable[..., Any], namespace: str) -> Steps:
    return Steps(kube_api, kubectl, namespace)


@pytest.fixture
def fleet(kube_api: ApiClient, namespace: str) -> Fleet:
    return Fleet(kube_api, namespace)


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    """The noop backend's shared state file (every operator of a test uses the same one)."""
    return tmp_path / "noop.json"


@pytest.fixture
def launch(
    control_plane: Cluster,
    amphora_crd: dict[str, Any],
    namespace: str,
    tmp_path: Path,
    state_file: Path,
    kube_api: ApiClient,
    request: pytest.FixtureRequest,
) -> Iterator[Launch]:
    """Start ``amphora-operator run`` on the test namespace, in ``tmp_path/<name>``.

    Like ``start_operator``, but several operators (HA) get their own logs and may reach the
    apiserver through their own ``kubeconfig``; all default to the noop backend in
    ``state_file``. Afterwards every Amphora is deleted (with whichever
    operator still runs), the operators are stopped, and leftovers lose their finalizers.
    """
    started: list[OperatorProcess] = []

    def start(
        config: dict[str, Any] | None = None,
        extra_args: list[str] | None = None,
        name: str = "operator",
        kubeconfig: Path | None = None,
    ) -> OperatorProcess:
        workdir = tmp_path / name
        workdir.mkdir(exist_ok=True)
        cluster = control_plane
        if kubeconfig is not None:  # e.g. through a proxy that can cut it off
            cluster = dataclasses.replace(control_plane, kubeconfig=kubeconfig)
        operator = OperatorProcess(
            cluster=cluster,
            namespace=namespace,
            workdir=workdir,
            config=config or noop_config(state_file),
            extra_args=extra_args or [],
        )
        operator.start()
        started.append(operator)
        return operator

    yield start
    tear_down(kube_api, namespace, started, request, wait=20)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if FIGURES:
        lines = (f"{test}: {name} = {value}" for test, name, value in FIGURES)
        add_summary(session.config, "reliability figures", lines)
