"""Control-plane faults: kube-apiserver restarted, and etcd stopped for a few seconds, while
Amphorae are mid-build. The operator's watches recover and nothing is missed: every Amphora
becomes Ready, one created after the faults is reconciled too, and the backend holds exactly
one instance per Amphora.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from amphora_drivers.noop import NoopDriver

from tests.fixtures.control_plane import Cluster
from tests.fixtures.operator import noop_config
from tests.operator.scenario import Steps, amphora
from tests.reliability.conftest import Launch
from tests.reliability.support import Fleet, record, settled, status_of
from tests.reliability.test_crash_safety import wait_clean

TAGS = ["noop:build-seconds=3"]
ETCD_DOWN_SECONDS = 4.0


def building(fleet: Fleet, names: list[str]) -> None:
    fleet.wait_all(
        names,
        lambda i: status_of(i).get("phase") == "Building",
        timeout=20,
        what="mid-build",
    )


def wait_admitted(steps: Steps, since: float, timeout: float = 120) -> float:
    """Seconds from ``since`` until a new Amphora passes admission (a server-side dry run)."""
    deadline = time.monotonic() + timeout
    while (refusal := steps.refusal(amphora("cp-probe"))) is not None:
        if time.monotonic() > deadline:
            pytest.fail(f"a new Amphora still refused after {timeout} s: {refusal}")
        time.sleep(0.5)
    return time.monotonic() - since


def test_apiserver_restart_and_etcd_outage_mid_build(
    launch: Launch, steps: Steps, fleet: Fleet, state_file: Path, control_plane: Cluster
) -> None:
    plane = control_plane.plane
    if plane is None:
        pytest.fail(
            "this test restarts kube-apiserver and etcd: it needs the local control plane "
            "(a kubeconfig with state.json beside it), not a foreign cluster",
            pytrace=False,
        )
    operator = launch(noop_config(state_file))
    test = "control_plane_faults"

    # 1: kube-apiserver restarted while six Amphorae build.
    first = [f"cp-a-{i}" for i in range(6)]
    steps.apply(*(amphora(n, tags=TAGS) for n in first))
    building(fleet, first)
    started = time.monotonic()
    plane.restart_apiserver()
    record(test, "apiserver down (s)", time.monotonic() - started)
    converge = fleet.wait_all(
        first, settled, timeout=60, what="Ready after the apiserver restart",
        tolerate_api_errors=True,
    )  # fmt: skip
    record(test, "seconds to converge after the apiserver restart", converge)
    # A restarted apiserver refuses creates for a while (503 "Resource kind ... not found"): the
    # finalizer's MutatingAdmissionPolicy needs the CRD's schema, which it re-reads from OpenAPI
    # every 5 s. A user or GitOps tool retries; so does this test, before its next apply.
    record(test, "seconds until creates are admitted again", wait_admitted(steps, started))

    # 2: etcd unavailable for a few seconds while six more build.
    second = [f"cp-b-{i}" for i in range(6)]
    steps.apply(*(amphora(n, tags=TAGS) for n in second))
    building(fleet, second)
    plane.stop_etcd()
    try:
        time.sleep(ETCD_DOWN_SECONDS)
    finally:  # whatever happens, the rest of the session needs its etcd
        plane.start_etcd()
    converge = fleet.wait_all(
        second, settled, timeout=60, what="Ready after the etcd outage", tolerate_api_errors=True
    )
    record(test, "etcd down (s)", ETCD_DOWN_SECONDS)
    record(test, "seconds to converge after the etcd outage", converge)

    # 3: the watch recovered: new work after the faults is seen and done.
    started = time.monotonic()
    steps.apply(amphora("cp-after"))
    fleet.wait_all(["cp-after"], settled, timeout=20, what="an Amphora created after the faults")
    record(test, "seconds to Ready for an Amphora created afterwards", time.monotonic() - started)
    steps.patch_spec(first[0], image="amphora-image-2")
    steps.delete(second[0], wait=False)
    live = set(first + second[1:] + ["cp-after"])
    fleet.wait(
        lambda items: (
            {i["metadata"]["name"] for i in items} == live and all(settled(i) for i in items)
        ),
        timeout=30,
        what="a replacement and a deletion after the faults",
    )
    result = wait_clean(fleet, lambda: NoopDriver(state_file=state_file).find(), timeout=5)
    record(test, "amphorae", len(first) + len(second) + 1)
    record(test, "duplicates", len(result.duplicates))
    record(test, "orphans", len(result.orphans))
    assert result.clean, result.report()
    assert operator.process is not None and operator.process.poll() is None
