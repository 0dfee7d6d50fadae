"""HA: two operator replicas with leader election on one namespace and one backend.

- The leader SIGKILLed mid-way through 20 builds: only one replica ever acts, no Amphora is
  built twice, afterwards every Amphora is Ready with exactly one instance.
- The leader partitioned from the apiserver stops before the follower takes over.
- The leader SIGSTOPped for longer than the Lease: the standby takes over; continued, the old
  leader acts no more (its fence refuses backend calls) and exits.
- One replica's wall clock 30 s ahead (libfaketime): it never takes a Lease renewed on time.
- 503s and connection resets injected into one replica's election (a MOCK fault tier in front
  of the real apiserver, tests/reliability/mock_apiserver_faults.py): it keeps trying and takes
  over when the leader dies; brief renewal errors do not cost it the Lease.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import libfaketime
import pytest
from amphora_drivers.noop import NoopDriver
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.fixtures.control_plane import Cluster
from tests.fixtures.operator import OperatorProcess, noop_config
from tests.operator.scenario import Steps, amphora
from tests.reliability.conftest import Launch
from tests.reliability.mock_apiserver_faults import ApiserverFaultProxy, Fault
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

#: Short Lease timing for the scenarios that wait for expiry (seconds).
FAST_LEASE = {"leaseDuration": 8, "renewDeadline": 5, "retryPeriod": 1}

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
    first_line(a, "acquired leadership", timeout=60)
    b = launch(config, extra_args=election(namespace, "b"), name="b")
    first_line(b, "waiting for leadership", timeout=60)

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
        first_line(a, "acquired leadership", timeout=60)
        b = launch(config, extra_args=election(namespace, "b"), name="b")
        first_line(b, "waiting for leadership", timeout=60)
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


def fast_config(state_file: Path) -> dict[str, object]:
    config = noop_config(state_file)
    config["leaderElection"] = FAST_LEASE
    return config


def builds_per_revision(*operators: OperatorProcess) -> Counter[tuple[str, str]]:
    """Distinct instances built per (Amphora, revision), from every replica's "driver action"
    log lines: more than one means a duplicate build (a retried build that adopted its own
    instance logs the same id, so it counts once)."""
    built = {
        (str(r.get("amphora")), str(r.get("revision")), str(r.get("id")))
        for o in operators
        for r in log_records(o.logs())
        if r.get("message") == "driver action" and r.get("action") == "build" and r.get("id")
    }
    return Counter((amphora, revision) for amphora, revision, _ in built)


def warnings(operator: OperatorProcess, message: str) -> list[dict[str, object]]:
    return [r for r in log_records(operator.logs()) if r.get("message") == message]


def test_a_paused_leader_is_replaced_and_acts_no_more_when_continued(
    launch: Launch,
    steps: Steps,
    fleet: Fleet,
    state_file: Path,
    namespace: str,
    kube_api: ApiClient,
) -> None:
    """SIGSTOP the leader mid-build for longer than the Lease with a standby present."""
    config = fast_config(state_file)
    a = launch(config, extra_args=election(namespace, "a"), name="a")
    first_line(a, "acquired leadership", timeout=60)
    b = launch(config, extra_args=election(namespace, "b"), name="b")
    first_line(b, "waiting for leadership", timeout=60)
    names = [f"pause-{i:02d}" for i in range(12)]
    steps.apply(*(amphora(n, tags=["noop:build-seconds=8"]) for n in names))
    fleet.wait(
        lambda items: sum(1 for i in items if status_of(i).get("computeId")) == len(names),
        timeout=30,
        what="the leader building",
    )
    assert a.process is not None
    # Stop it outside the noop backend's file lock: frozen inside it, the simulated backend
    # would hang for everyone, which no real backend does.
    with open(state_file.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.killpg(a.process.pid, signal.SIGSTOP)
    stopped = datetime.now().astimezone()
    # The leader renews every retryPeriod: its last renewal may be up to one period (more on
    # a busy machine) before the stop, and the follower's wait counts from that renewal.
    leases = k8s.CoordinationV1Api(kube_api)
    renewed = leases.read_namespaced_lease("amphora-operator", namespace).spec.renew_time
    try:
        took_over = stamp(first_line(b, "acquired leadership", timeout=40))
        # The new leader works while the old one is frozen: more Amphorae, one spec change.
        later = [f"pause-late-{i}" for i in range(4)]
        steps.apply(*(amphora(n) for n in later))
        steps.patch_spec(names[0], image="amphora-image-2")
        names += later
        fleet.wait_all(names, settled, timeout=60, what="Ready under the new leader")
        frozen_for = FAST_LEASE["leaseDuration"] * 1.5
        time.sleep(max(0.0, frozen_for - (datetime.now().astimezone() - stopped).total_seconds()))
    finally:
        os.killpg(a.process.pid, signal.SIGCONT)
    continued = datetime.now().astimezone()
    code = a.process.wait(20)
    exited = datetime.now().astimezone()
    fleet.wait_all(names, settled, timeout=30, what="Ready after the old leader was continued")
    result = wait_clean(fleet, lambda: NoopDriver(state_file=state_file).find(), timeout=5)
    builds = builds_per_revision(a, b)
    # A call the fence refused is logged as a failed action; it did nothing.
    after_continue = [
        r
        for r in log_records(a.logs())
        if stamp(r) >= continued and r.get("message") in ACTING and r.get("failed") != "NotLeading"
    ]
    refused = [r for r in log_records(a.logs()) if "NotLeading" in str(r.get("exc_info", ""))]
    test = "ha_sigstop"
    record(test, "seconds from SIGSTOP to takeover", (took_over - stopped).total_seconds())
    record(test, "seconds the leader was stopped", (continued - stopped).total_seconds())
    record(
        test, "seconds from SIGCONT to the old leader's exit", (exited - continued).total_seconds()
    )
    record(test, "old leader's exit code", code)
    record(test, "backend calls refused by the old leader's fence", len(refused))
    record(test, "actions by the old leader after SIGCONT", len(after_continue))
    record(test, "duplicates", len(result.duplicates))
    record(test, "orphans", len(result.orphans))
    assert code == 70, f"the continued old leader did not step down (exit {code})"
    assert after_continue == [], f"the old leader acted after SIGCONT: {after_continue}"
    assert [k for k, c in builds.items() if c > 1] == [], f"built twice: {builds}"
    assert result.clean, result.report()
    assert result.instances == len(names)
    lease = FAST_LEASE["leaseDuration"]
    record(test, "seconds from the last renewal to takeover", (took_over - renewed).total_seconds())
    assert (took_over - renewed).total_seconds() >= lease, "took a Lease that had not expired"
    assert (took_over - stopped).total_seconds() <= lease + 10


def test_api_errors_in_the_election_are_survived_and_the_replica_takes_over_later(
    launch: Launch,
    steps: Steps,
    fleet: Fleet,
    state_file: Path,
    namespace: str,
    control_plane: Cluster,
    tmp_path: Path,
) -> None:
    """One replica's Lease calls get 503s and connection resets (through the fault proxy)
    while another leads; it keeps trying, takes over once the leader dies, and a short burst
    of errors on its renewals does not cost it the Lease."""
    config = fast_config(state_file)
    a = launch(config, extra_args=election(namespace, "a"), name="a")
    first_line(a, "acquired leadership", timeout=60)
    with ApiserverFaultProxy(upstream=control_plane.server, seed=16) as proxy:
        fault = proxy.inject(Fault())
        kubeconfig = proxy.kubeconfig(control_plane.kubeconfig, tmp_path / "kubeconfig-faulty")
        b = launch(config, extra_args=election(namespace, "b"), name="b", kubeconfig=kubeconfig)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # HTTP status per failed attempt: 503, or None for a reset (no answer at all).
            errors = {r.get("status") for r in warnings(b, "lease acquisition failed; retrying")}
            if {503, None} <= errors:
                break
            time.sleep(0.5)
        failed = warnings(b, "lease acquisition failed; retrying")
        assert {503, None} <= errors, (failed, dict(proxy.counts))
        assert b.process is not None and b.process.poll() is None, "an API error ended b"
        fault.active = False
        names = [f"blip-{i}" for i in range(4)]
        steps.apply(*(amphora(n) for n in names))
        fleet.wait_all(names, settled, timeout=30, what="Ready under a")
        a.kill()
        killed = datetime.now().astimezone()
        took_over = stamp(first_line(b, "acquired leadership", timeout=40))

        renewal = proxy.inject(Fault())  # shorter than renewDeadline - retryPeriod
        time.sleep(FAST_LEASE["renewDeadline"] - 2 * FAST_LEASE["retryPeriod"])
        renewal.active = False
        renewal_errors = len(warnings(b, "lease renewal failed; retrying"))
        steps.patch_spec(names[0], image="amphora-image-2")
        more = [f"blip-late-{i}" for i in range(3)]
        steps.apply(*(amphora(n) for n in more))
        fleet.wait_all(names + more, settled, timeout=40, what="Ready under b")
        still_running = b.process.poll() is None
        lost = warnings(b, "lost leadership; exiting so that only one replica acts")
        counts = dict(proxy.counts)
    result = wait_clean(fleet, lambda: NoopDriver(state_file=state_file).find(), timeout=5)
    test = "ha_api_faults"
    record(test, "503s / resets injected", f"{counts.get('503', 0)} / {counts.get('reset', 0)}")
    record(test, "failed election attempts b survived while following", len(failed))
    record(test, "renewal errors b survived", renewal_errors)
    record(test, "seconds from leader kill to takeover", (took_over - killed).total_seconds())
    record(test, "duplicates", len(result.duplicates))
    assert renewal_errors >= 1, "the renewal faults never reached b"
    assert still_running and not lost, "b lost the Lease to a burst shorter than the deadline"
    assert result.clean, result.report()


def test_a_replica_with_a_skewed_wall_clock_never_takes_a_lease_renewed_on_time(
    launch: Launch,
    steps: Steps,
    fleet: Fleet,
    state_file: Path,
    namespace: str,
    kube_api: ApiClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The follower's wall clock runs 30 s ahead (LD_PRELOAD libfaketime; its monotonic clock
    is left alone), so the leader's renewTime always looks 30 s old to it: far past the 8 s
    Lease. Judged on observed changes, the Lease is live; the follower waits."""
    config = fast_config(state_file)
    a = launch(config, extra_args=election(namespace, "a"), name="a")
    first_line(a, "acquired leadership", timeout=60)
    _, faked = libfaketime.get_reload_information()
    with monkeypatch.context() as env:
        for key, value in {
            **faked,
            "FAKETIME": "+30s",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }.items():
            env.setenv(key, value)
        b = launch(config, extra_args=election(namespace, "b"), name="b")
    waiting = first_line(b, "waiting for leadership", timeout=60)
    skew = (stamp(waiting) - datetime.now().astimezone()).total_seconds()
    assert skew > 25, f"libfaketime did not skew b's clock ({skew:.1f} s)"
    names = [f"skew-{i}" for i in range(4)]
    steps.apply(*(amphora(n) for n in names))
    fleet.wait_all(names, settled, timeout=30, what="Ready under a")
    time.sleep(3 * FAST_LEASE["leaseDuration"])
    lease = k8s.CoordinationV1Api(kube_api).read_namespaced_lease("amphora-operator", namespace)
    spec = lease.spec
    assert spec is not None
    b_acts = acting(b)
    test = "ha_clock_skew"
    record(test, "follower's wall clock ahead by (s)", skew)
    record(test, "Lease holder / transitions after 3 Lease durations",
           f"{spec.holder_identity} / {spec.lease_transitions}")  # fmt: skip
    record(test, "actions logged by the skewed follower", len(b_acts))
    assert not warnings(b, "acquired leadership"), "the skewed follower took a live Lease"
    assert spec.holder_identity == "a" and spec.lease_transitions == 0
    assert b_acts == []
    assert a.process is not None and a.process.poll() is None
