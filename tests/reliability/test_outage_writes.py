"""A two-minute backend outage at N=1,000 costs at most 3 status writes per Amphora.

Issue 16's write-storm test: 1,000 settled Amphorae on the noop driver, whose backend is taken
down for 2 minutes (its ``outage_file`` option: every call then fails with BackendUnavailable,
a simulated outage) and brought back. Every Amphora must show BackendAvailable=False during
the outage and True afterwards, and the status writes, counted by the apiserver itself
(``apiserver_request_total`` for PATCH and PUT on ``amphorae/status``), must stay within 3 per
Amphora for the whole outage: the operator writes when what a user reads changes, not every
poll round or breaker trial.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from amphora_devtools.configs import FAST_RECONCILE
from amphora_devtools.configs import noop_config as devtools_noop_config
from kubernetes import client as k8s
from kubernetes.client import ApiClient
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.operator import GROUP, PLURAL, VERSION
from tests.operator.scenario import amphora
from tests.reliability.conftest import Launch
from tests.reliability.support import Fleet, Item, condition_of, record, settled

N = 1000
OUTAGE_SECONDS = 120.0
WRITES_PER_AMPHORA = 3


def status_writes(kube_api: ApiClient) -> int:
    """PATCH and PUT requests on amphorae/status the apiserver has served so far."""
    method, url, headers, body, post = kube_api.param_serialize(
        "GET", "/metrics", auth_settings=["BearerToken"]
    )
    response = kube_api.call_api(method, url, headers, body, post, _request_timeout=30)
    response.read()
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(response.data.decode()):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "apiserver_request_total"
                and labels.get("resource") == "amphorae"
                and labels.get("subresource") == "status"
                and labels.get("verb") in ("PATCH", "UPDATE", "PUT")
            ):
                counts[labels["verb"]] += int(sample.value)
    return sum(counts.values())


def settled_writes(kube_api: ApiClient, quiet: float = 3.0) -> int:
    """The count once it stopped moving for ``quiet`` seconds (writes still in flight)."""
    last = status_writes(kube_api)
    for _ in range(20):
        time.sleep(quiet)
        current = status_writes(kube_api)
        if current == last:
            return current
        last = current
    return last


def available(item: Item) -> str | None:
    return (condition_of(item, "BackendAvailable") or {}).get("status")


@pytest.mark.slow
def test_a_two_minute_outage_costs_at_most_three_status_writes_per_amphora(
    launch: Launch, fleet: Fleet, kube_api: ApiClient, namespace: str, tmp_path: Path
) -> None:
    down = tmp_path / "backend-down"
    config = devtools_noop_config(
        None,  # in memory: the backend itself must not slow down with N
        options={"outage_file": str(down)},
        breaker={"failureThreshold": 5, "resetTimeout": 10},
        reconcile={**FAST_RECONCILE, "retryMax": 30},
    )
    launch(config)
    api = k8s.CustomObjectsApi(kube_api)
    names = [f"a{i:04d}" for i in range(N)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, amphora(n)), names))  # fmt: skip
    fleet.wait(lambda items: len(items) == N and all(settled(i) for i in items), timeout=300,
               what=f"{N} Amphorae Ready")  # fmt: skip
    before = settled_writes(kube_api)

    started = time.monotonic()
    down.touch()
    shown = fleet.wait(
        lambda items: all(available(i) == "False" for i in items),
        timeout=OUTAGE_SECONDS, what="BackendAvailable=False on every Amphora",
    )  # fmt: skip
    messages = {(condition_of(i, "BackendAvailable") or {}).get("message") for i in fleet.items()}
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - started)))
    during = status_writes(kube_api) - before
    still = fleet.items()
    assert all(available(i) == "False" for i in still), "the outage is shown throughout"
    assert all(i["status"]["phase"] == "Ready" for i in still), "instances kept running"
    down.unlink()
    recovered = fleet.wait(
        lambda items: all(available(i) == "True" and settled(i) for i in items),
        timeout=120, what="every Amphora BackendAvailable=True again",
    )  # fmt: skip
    writes = settled_writes(kube_api) - before

    test = "outage_writes"
    record(test, "Amphorae", N)
    record(test, "outage (s)", OUTAGE_SECONDS)
    record(test, "seconds until every Amphora showed BackendAvailable=False", shown)
    record(test, "seconds until every Amphora was available again", recovered)
    record(test, "status writes during the outage (apiserver)", during)
    record(test, "status writes for the whole outage (apiserver)", writes)
    record(test, "status writes per Amphora", writes / N)
    record(test, "distinct BackendAvailable messages", len(messages))
    assert writes <= WRITES_PER_AMPHORA * N, f"{writes} status writes for {N} Amphorae"
    assert writes >= 2 * N, "each Amphora must have shown the outage and its end"
    assert not any("next trial" in (m or "") for m in messages), messages
