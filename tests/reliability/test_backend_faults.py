"""Backend faults: a hung backend, and Nova answering 5xx, 429 and too slowly (through the
HTTP fault tier). The circuit breaker opens, Amphorae show it (BackendAvailable=False), the
handlers stay responsive (Amphorae on a healthy profile still become Ready meanwhile), calls
to the failing backend stay bounded (no retry storm), and everything recovers with it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.fixtures.nova_box import NovaBoxInfo
from tests.fixtures.operator import noop_config
from tests.nova.fault_proxy import Fault, FaultProxy
from tests.operator.scenario import Steps, amphora
from tests.reliability.conftest import Launch
from tests.reliability.support import (
    Fleet,
    Item,
    condition_of,
    free_port,
    metric,
    record,
    scrape,
    settled,
    wait_for_metrics,
)
from tests.reliability.test_crash_safety import nova_amphora, nova_config, nova_servers, wait_clean

HUNG_SECONDS = 12
RESET = 3.0


def backend_down(item: Item) -> bool:
    available = condition_of(item, "BackendAvailable") or {}
    return available.get("status") == "False"


def test_hung_backend_opens_the_breaker_and_blocks_nothing_else(
    launch: Launch, steps: Steps, fleet: Fleet, state_file: Path, tmp_path: Path
) -> None:
    """20 Amphorae on a backend whose every call hangs; one on a healthy profile beside it."""
    config = noop_config(
        state_file,
        profiles={
            "hung": {
                "driver": "noop",
                "options": {"state_file": str(tmp_path / "hung.json"),
                            "call_latency": HUNG_SECONDS},
                "breaker": {"failureThreshold": 2, "resetTimeout": RESET},
            }
        },
        reconcile={"driverCallTimeout": 0.5},
    )  # fmt: skip
    port = free_port()
    operator = launch(config, extra_args=["--metrics-port", str(port)])
    wait_for_metrics(port)
    hung = [f"hung-{i:02d}" for i in range(20)]
    steps.apply(*(amphora(n, driver="hung") for n in hung))
    try:
        check_hung_backend(steps, fleet, port, hung)
        assert operator.process is not None and operator.process.poll() is None
    finally:  # let them go without asking a hung (or, with the bug, starved) backend
        for item in fleet.items():
            steps.patch_spec(item["metadata"]["name"], deletionPolicy="Orphan")


def check_hung_backend(steps: Steps, fleet: Fleet, port: int, hung: list[str]) -> None:
    shown = fleet.wait_all(
        hung, backend_down, timeout=20, what="BackendAvailable=False on every hung Amphora"
    )
    reasons = {(condition_of(i, "BackendAvailable") or {}).get("reason") for i in fleet.items()}
    assert reasons <= {"Timeout", "CircuitOpen"}, reasons

    # The handlers stay responsive: an Amphora on the healthy profile becomes Ready meanwhile.
    started = time.monotonic()
    steps.apply(amphora("healthy"))
    fleet.wait_all(["healthy"], settled, timeout=10,
                   what="the healthy Amphora Ready while the other backend hangs")  # fmt: skip
    healthy_ready = time.monotonic() - started

    # No retry storm: while the breaker is open, the operator calls the profile about once per
    # poll interval (one listing, refused at once), whatever the number of Amphorae. (What
    # really reaches a failing cloud is counted at the HTTP level in the Nova test below.)
    window = 9.0
    before = scrape(port)
    time.sleep(window)
    after = scrape(port)
    calls = metric(after, "amphora_driver_call_seconds_count", profile="hung") - metric(
        before, "amphora_driver_call_seconds_count", profile="hung"
    )
    reached = metric(after, "amphora_driver_errors_total", profile="hung", reason="Timeout") - (
        metric(before, "amphora_driver_errors_total", profile="hung", reason="Timeout")
    )
    test = "backend_hung"
    record(test, "hung Amphorae", len(hung))
    record(test, "seconds until all showed BackendAvailable=False", shown)
    record(test, "seconds for a healthy-profile Amphora to be Ready", healthy_ready)
    record(test, f"calls to the hung profile in {window:.0f} s (incl. refused)", calls)
    record(test, f"calls that timed out in {window:.0f} s", reached)
    # One listing per poll interval (0.3 s) at most, not one per Amphora.
    assert calls <= window / 0.3 * 1.5 + 5, f"{calls} calls in {window} s: a retry storm"


@pytest.fixture
def proxy(nova_box: NovaBoxInfo) -> Iterator[FaultProxy]:
    with FaultProxy(upstream_port=nova_box.box.port).running() as running:
        yield running


def set_faults(proxy: FaultProxy, *faults: Fault) -> None:
    with proxy.lock:
        proxy.faults[:] = list(faults)


def everything(**kw: object) -> list[Fault]:
    return [Fault(m, r".*", **kw) for m in ("GET", "POST", "PUT", "DELETE")]  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.nova
def test_nova_5xx_429_and_timeouts_open_the_breaker_and_recover(
    launch: Launch,
    steps: Steps,
    fleet: Fleet,
    state_file: Path,
    nova_box: NovaBoxInfo,
    proxy: FaultProxy,
) -> None:
    tag = f"rel-faults-{uuid.uuid4().hex[:8]}"
    # Real Nova answered a create in over 1 s on a loaded machine (ci5: the baseline never got
    # Ready behind a breaker opened by real timeouts): 4 s, and injected delays twice that.
    api_timeout = 4.0
    config = nova_config(state_file, nova_box, tag, api_timeout=api_timeout, delete_attempts=1)
    config["profiles"]["nova"]["options"]["clouds_yaml_content"] = yaml.safe_dump(proxy.clouds())
    config["profiles"]["nova"]["breaker"] = {"failureThreshold": 3, "resetTimeout": RESET}
    config["profiles"]["noop"] = {"driver": "noop", "options": {"state_file": str(state_file)}}
    launch(config)
    first = [f"nova-{i}" for i in range(4)]
    steps.apply(*(nova_amphora(nova_box, n) for n in first))
    # How long real Nova takes to build a few servers on this machine now: the recovery bound.
    baseline = fleet.wait_all(first, settled, timeout=60, what="baseline Ready")

    test = "backend_nova_faults"
    nova_names = list(first)
    phases = [
        ("5xx", everything(status=503, message="injected outage"), "BackendUnavailable"),
        ("429", everything(status=429, message="slow down"), "RateLimited"),
        ("timeout", everything(delay=2 * api_timeout), "Timeout"),
    ]
    for label, faults, reason in phases:
        set_faults(proxy, *faults)
        newcomer = f"during-{label}"
        steps.apply(nova_amphora(nova_box, newcomer))
        nova_names.append(newcomer)
        seen: set[str] = set()

        def shows_fault(items: list[Item], reason: str = reason, seen: set[str] = seen) -> bool:
            nova = [i for i in items if i["metadata"]["name"] in nova_names]
            for item in nova:
                available = condition_of(item, "BackendAvailable") or {}
                seen.add(f"{available.get('reason')}: {available.get('message')}")
            return all(backend_down(i) for i in nova) and any(reason in s for s in seen)

        shown = fleet.wait(shows_fault, timeout=30, what=f"{label}: every Nova Amphora shows it")
        # The handler path is not blocked by the failing cloud.
        healthy = f"healthy-{label}"
        started = time.monotonic()
        steps.apply(amphora(healthy, driver="noop"))
        fleet.wait_all([healthy], settled, timeout=10, what=f"{healthy} Ready during {label}")
        healthy_ready = time.monotonic() - started
        # Bounded calls: about one trial per reset timeout reaches the cloud.
        window = 2 * RESET + 0.5
        start = proxy.count()
        time.sleep(window)
        requests = len(proxy.since(start))
        record(test, f"{label}: seconds until shown", shown)
        record(test, f"{label}: healthy Amphora Ready after (s)", healthy_ready)
        record(test, f"{label}: requests to Nova in {window:.1f} s", requests)
        assert requests <= window / RESET + 3, (
            f"{label}: {requests} requests in {window} s while the breaker is open: "
            f"{proxy.since(start)}"
        )

    set_faults(proxy)
    recovered = fleet.wait_all(
        nova_names,
        lambda i: settled(i) and not backend_down(i),
        timeout=90,
        what="every Nova Amphora Ready again after the cloud recovered",
    )
    record(test, "seconds for the baseline Amphorae to be Ready (same run)", baseline)
    record(test, "seconds to recover after the faults cleared", recovered)
    result = wait_clean(
        fleet,
        lambda: nova_servers(nova_box, tag),
        timeout=15,
        only=lambda i: i["metadata"]["name"] in nova_names,
    )
    record(test, "Nova Amphorae", len(nova_names))
    record(test, "duplicates", len(result.duplicates))
    record(test, "orphans", len(result.orphans))
    assert result.clean, result.report()
    assert result.instances == len(nova_names)
    # A trial sent just before the faults cleared times out first (api_timeout), then the
    # breaker waits a reset timeout before the next; then the newcomers are built, which takes
    # what builds take on this machine now (ci8: 3 builds in 15-20 s, each GET 0.4-1.4 s), so
    # against the baseline of the same run, not a fixed figure.
    assert recovered < api_timeout + 2 * RESET + 2 * baseline + 5
