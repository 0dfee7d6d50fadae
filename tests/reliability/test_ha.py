"""HA: two operator replicas with leader election on one namespace and one backend, 20
Amphorae building, the leader SIGKILLed mid-way. Only one replica ever acts (the follower
waits for the Lease, and acts only after the leader is gone), no Amphora is built twice, and
afterwards every Amphora is Ready with exactly one instance.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from amphora_drivers.noop import NoopDriver
from kubernetes.client import ApiClient

from tests.fixtures.control_plane import Cluster
from tests.fixtures.operator import OperatorProcess, noop_config
from tests.operator.scenario import Steps, amphora
from tests.reliability.conftest import Launch
from tests.reliability.support import (
    Fleet,
    Partition,
    kubeconfig_through,
    log_records,
    record,
    settled,
    status_of,
)
from tests.reliability.test_crash_safety import wait_clean

#: Log messages that mean "this replica acted on an Amphora".
#: The operator's log lines for each mutating driver call and each status write.
ACTING = ("driver action", "status written")


def stamp(record_: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(record_["timestamp"]))


def first_line(operator: OperatorProcess, message: str, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_records(operator.logs()):
            if line.get("message") == message:
                return line
        time.sleep(0.2)
    raise AssertionError(f"{operator.workdir.name} never logged {message!r}:\n{operator.logs()}")


def acting(operator: OperatorProcess) -> list[datetime]:
    return [stamp(r) for r in log_records(operator.logs()) if r.get("message") in ACTING]


def election(namespace: str, identity: str) -> list[str]:
    return ["--leader-election", "--lease-namespace", namespace, "--identity", identity]


def test_two_replicas_never_both_build(
    launch: Launch,
    steps: Steps,
    fleet: Fleet,
    state_file: Path,
    namespace: str,
    kube_api: ApiClient,
) -> None:
    config = noop_config(state_file)
    a = launch(config, extra_args=election(namespace, "a"), name="a")
    first_line(a, "acquired leadership", timeout=20)
    b = launch(config, extra_args=election(namespace, "b"), name="b")
    first_line(b, "waiting for leadership", timeout=20)

    names = [f"ha-{i:02d}" for i in range(20)]
    steps.apply(*(amphora(n, tags=["noop:build-seconds=2"]) for n in names))
    fleet.wait(
        lambda items: sum(1 for i in items if status_of(i).get("computeId")) >= 8,
        timeout=30,
        what="the leader building",
    )
    assert b.process is not None and b.process.poll() is None
    a.kill()
    killed = datetime.now().astimezone()
    took_over = stamp(first_line(b, "acquired leadership", timeout=30))
    converge = fleet.wait_all(names, settled, timeout=40, what="every Amphora Ready after failover")
    result = wait_clean(fleet, lambda: NoopDriver(state_file=state_file).find(), timeout=5)

    a_acts, b_acts = acting(a), acting(b)
    # Distinct instances each Amphora got (a build retried after a timeout returns the same).
    built = {
        (str(r.get("amphora")), str(r.get("id")))
        for o in (a, b)
        for r in log_records(o.logs())
        if r.get("message") == "driver action" and r.get("action") == "build" and r.get("id")
    }
    builds = Counter(amphora for amphora, _ in built)
    test = "ha"
    record(test, "amphorae", len(names))
    record(test, "seconds from leader kill to takeover", (took_over - killed).total_seconds())
    record(test, "seconds to converge after the takeover", converge)
    record(test, "actions logged by a / by b", f"{len(a_acts)} / {len(b_acts)}")
    record(test, "Amphorae built more than once", sum(c > 1 for c in builds.values()))
    record(test, "duplicates", len(result.duplicates))
    record(test, "orphans", len(result.orphans))
    assert a_acts and b_acts, "both replicas should have acted, one after the other"
    assert took_over >= killed, "the follower took the Lease while the leader was alive"
    assert max(a_acts) < min(b_acts), (
        f"both acted at once: a until {max(a_acts)}, b from {min(b_acts)}"
    )
    assert all(t >= took_over for t in b_acts), "the follower acted before leading"
    assert [n for n, c in builds.items() if c > 1] == [], f"built twice: {builds}"
    assert result.clean, result.report()
    assert result.instances == len(names)


def test_a_partitioned_leader_stops_acting_before_the_follower_takes_over(
    launch: Launch,
    steps: Steps,
    fleet: Fleet,
    state_file: Path,
    namespace: str,
    control_plane: Cluster,
    tmp_path: Path,
) -> None:
    """The leader loses the apiserver (packets dropped, no reset) but keeps its backend: it must
    stop before the Lease expires, since the follower then takes over and acts."""
    server = urlsplit(control_plane.server)
    assert server.hostname is not None and server.port is not None
    config = noop_config(state_file)
    with Partition(server.hostname, server.port) as partition:
        partitioned = kubeconfig_through(
            control_plane.kubeconfig, partition, tmp_path / "kubeconfig-through-partition"
        )
        a = launch(config, extra_args=election(namespace, "a"), name="a", kubeconfig=partitioned)
        first_line(a, "acquired leadership", timeout=20)
        b = launch(config, extra_args=election(namespace, "b"), name="b")
        first_line(b, "waiting for leadership", timeout=20)
        names = [f"part-{i}" for i in range(4)]
        steps.apply(*(amphora(n) for n in names))
        fleet.wait_all(names, settled, timeout=20, what="Ready under the first leader")
        assert a.process is not None
        partition.frozen.set()
        cut = datetime.now().astimezone()
        try:
            took_over = stamp(first_line(b, "acquired leadership", timeout=40))
            a_alive_at_takeover = a.process.poll() is None
            stepped_down = [
                stamp(r) for r in log_records(a.logs())
                if r.get("message") == "lost leadership; exiting so that only one replica acts"
            ]  # fmt: skip
            test = "ha_partition"
            record(test, "seconds from partition to takeover", (took_over - cut).total_seconds())
            record(test, "leader still running at takeover", a_alive_at_takeover)
            assert not a_alive_at_takeover and stepped_down and stepped_down[0] < took_over, (
                f"the partitioned leader a was still running when b took over at {took_over} "
                f"(partition at {cut}): two replicas could act at once"
            )
            # The new leader works.
            steps.patch_spec(names[0], image="amphora-image-2")
            fleet.wait_all(names, settled, timeout=20, what="Ready under the new leader")
        finally:
            partition.frozen.clear()
            a.kill()
