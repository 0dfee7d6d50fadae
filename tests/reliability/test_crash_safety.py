"""Crash safety: SIGKILL the operator at seeded random points during builds, replacements and
deletions of many Amphorae, restart it each time, and prove that afterwards every Amphora
converged and the compute side holds exactly one instance per live Amphora: no duplicate, no
orphan. Checked against the noop backend's shared record and against the real Nova API.

The chaos soak at the end does the same at scale (100 kills on noop, 20 on Nova) with operators
forked from a warm zygote, and leaves orphans on purpose (deletions whose finalizer is stripped
while the operator is down) for garbage collection to remove.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from amphora_drivers import AmphoraInstance, AmphoraState
from amphora_drivers.noop import NoopDriver
from amphora_operator.model import AmphoraSpec
from amphora_operator.planner import spec_hash
from amphora_operator.tenancy import NAMESPACE_TAG_PREFIX
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.fixtures.control_plane import Cluster
from tests.fixtures.nova_box import NovaBoxInfo
from tests.fixtures.operator import GROUP, PLURAL, VERSION, OperatorProcess, noop_config, tear_down
from tests.operator.scenario import Steps, amphora
from tests.reliability.conftest import Launch
from tests.reliability.support import (
    Audit,
    Fleet,
    Item,
    Partition,
    audit,
    kubeconfig_through,
    log_records,
    record,
    settled,
    status_of,
    summarize,
)
from tests.reliability.zygote import ForkedOperator, Zygote

SEED = 9


def user_tags(instance: AmphoraInstance) -> list[str]:
    """The instance's tags from its spec: without the namespace tag the operator adds."""
    return [t for t in instance.tags if not t.startswith(NAMESPACE_TAG_PREFIX)]


def noop_tag_mismatches(state_file: Path, items: list[Item]) -> list[str]:
    """Amphorae whose noop instance was not built from their current spec's tags."""
    built = {i.id: user_tags(i) for i in NoopDriver(state_file=state_file).find()}
    return [
        f"{i['metadata']['name']}: spec {i['spec']['tags']}, "
        f"instance {built.get(i['status']['computeId'])}"
        for i in items
        if built.get(i["status"]["computeId"]) != list(i["spec"]["tags"])
    ]


def converged(expected_live: set[str]) -> Callable[[list[Item]], bool]:
    """Exactly ``expected_live`` exist, each settled on a spec hash of its current spec."""

    def done(items: list[Item]) -> bool:
        names = {i["metadata"]["name"] for i in items}
        return names == expected_live and all(
            settled(i)
            and i["status"].get("specHash") == spec_hash(AmphoraSpec.model_validate(i["spec"]))
            for i in items
        )

    return done


def wait_clean(
    fleet: Fleet,
    instances: Callable[[], list[AmphoraInstance]],
    timeout: float,
    only: Callable[[Item], bool] = lambda item: True,
) -> Audit:
    """The audit of the Amphorae ``only`` selects, once clean (deletes take a moment on a real
    backend) or at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = audit([i for i in fleet.items() if only(i)], instances())
        if result.clean or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


class Crasher:
    """Kills and restarts one operator at seeded random delays, counting the kills."""

    def __init__(self, operator: OperatorProcess | ForkedOperator, rng: random.Random) -> None:
        self.operator = operator
        self.rng = rng
        self.kills = 0
        #: Kills that landed while an Amphora had a replacement in flight.
        self.aimed = 0
        #: Kills that landed after the operator had started acting (forked operators).
        self.at_work = 0

    def kill_after(self, low: float, high: float) -> None:
        time.sleep(self.rng.uniform(low, high))
        self.kill_now()

    def kill_now(self) -> None:
        assert self.operator.running(), (
            f"the operator died by itself:\n{self.operator.logs()[-3000:]}"
        )
        self.operator.kill()
        self.kills += 1

    def kill_at_work(self, timeout: float, low: float, high: float) -> None:
        """Once the (forked) operator has started acting, or at ``timeout``, kill it after a
        random delay; counts the kills that hit it at work."""
        assert isinstance(self.operator, ForkedOperator)
        deadline = time.monotonic() + timeout
        while not self.operator.acted() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(self.rng.uniform(low, high))
        self.at_work += self.operator.acted()
        self.kill_now()

    def kill_when(self, fleet: Fleet, seen: Callable[[list[Item]], bool], timeout: float) -> bool:
        """Kill the moment ``seen(items)`` holds (else at ``timeout``); True when it held."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if seen(fleet.items()):
                self.kill_now()
                self.aimed += 1
                return True
            time.sleep(0.05)
        self.kill_now()
        return False

    def restart(self, settle_low: float, settle_high: float) -> None:
        self.operator.start()
        time.sleep(self.rng.uniform(settle_low, settle_high))


def test_sigkill_during_builds_replacements_and_deletions_noop(
    launch: Launch, steps: Steps, fleet: Fleet, state_file: Path
) -> None:
    rng = random.Random(SEED)
    names = [f"crash-{i:02d}" for i in range(20)]
    tags = ["noop:build-seconds=2"]
    operator = launch(noop_config(state_file))
    crasher = Crasher(operator, rng)
    live = set(names)
    deleted: set[str] = set()
    versions: dict[str, int] = dict.fromkeys(names, 1)

    def replace(count: int) -> None:
        """A spec change the backend records (tags), so the audit sees what was built from."""
        for name in rng.sample(sorted(live), count):
            versions[name] += 1
            steps.patch_spec(name, tags=[*tags, f"v{versions[name]}"])

    def delete(count: int) -> None:
        for name in rng.sample(sorted(live), count):
            steps.delete(name, wait=False)
            live.discard(name)
            deleted.add(name)

    time.sleep(rng.uniform(1.5, 3.0))
    # 1: mass build, killed mid-way.
    steps.apply(*(amphora(n, tags=[*tags, "v1"]) for n in names[:10]))
    crasher.kill_after(0.3, 2.5)
    # 2: more builds while the first ones are still building.
    crasher.restart(1.0, 3.0)
    steps.apply(*(amphora(n, tags=[*tags, "v1"]) for n in names[10:]))
    crasher.kill_after(0.3, 2.5)
    # 3: replacements (image change: new instance first, then the old one retired).
    crasher.restart(2.0, 4.0)
    replace(6)
    crasher.kill_after(0.5, 3.0)
    # While it is down, a user keeps working: one more replacement, one deletion.
    replace(1)
    delete(1)
    # 4: replacements and deletions together.
    crasher.restart(1.0, 3.0)
    replace(5)
    delete(3)
    crasher.kill_after(0.3, 2.5)
    # 5: deletions of some that may be mid-replacement, and second replacements.
    crasher.restart(1.0, 3.0)
    delete(3)
    replace(4)
    crasher.kill_after(0.3, 2.5)
    # 6: killed during start-up (resume of everything in flight).
    crasher.restart(0.0, 0.0)
    replace(3)
    delete(2)
    crasher.kill_after(0.5, 2.0)

    crasher.restart(0.0, 0.0)
    converge = fleet.wait(
        converged(live), timeout=90, what="every live Amphora Ready on its current spec"
    )
    result = wait_clean(fleet, lambda: NoopDriver(state_file=state_file).find(), timeout=10)
    stale = noop_tag_mismatches(state_file, fleet.items())
    test = "crash_safety_noop"
    record(test, "kills", crasher.kills)
    record(test, "amphorae", len(names))
    record(test, "spec changes (replacements)", sum(v - 1 for v in versions.values()))
    record(test, "deleted", len(deleted))
    record(test, "live at end", result.live)
    record(test, "instances at end", result.instances)
    record(test, "duplicates", len(result.duplicates))
    record(test, "orphans", len(result.orphans))
    record(test, "seconds to converge after the last restart", converge)
    record(test, "instances built from an outdated spec", len(stale))
    assert crasher.kills == 6
    assert result.clean, result.report() + "\n" + summarize(fleet.items())
    assert result.live == len(live) == result.instances
    assert stale == [], f"Ready on a spec the instance was not built from: {stale}"
    assert operator.process is not None and operator.process.poll() is None


def test_spec_change_while_a_build_is_unrecorded_is_not_lost(
    launch: Launch,
    steps: Steps,
    fleet: Fleet,
    state_file: Path,
    control_plane: Cluster,
    tmp_path: Path,
) -> None:
    """The backend created the instance but the operator died before status named it, and the
    spec changed before it came back. The instance it then finds by owner was built from the
    OLD spec: it must be replaced, not adopted as if it matched the new one."""
    server = urlsplit(control_plane.server)
    assert server.hostname is not None and server.port is not None
    with Partition(server.hostname, server.port) as partition:
        # Every driver call takes 1.5 s, so the moments of the handler are easy to hit.
        config = noop_config(state_file, options={"call_latency": 1.5})
        through = tmp_path / "kubeconfig-through-partition"
        operator = launch(
            config, kubeconfig=kubeconfig_through(control_plane.kubeconfig, partition, through)
        )
        time.sleep(1.5)
        steps.apply(amphora("racy", tags=["v1"]))
        deadline = time.monotonic() + 10
        # Taken: its first status (Pending) is written before any driver call. (The finalizer
        # is no sign any more: admission adds it.)
        while not steps.status("racy").get("phase"):
            assert time.monotonic() < deadline, "the operator never took the Amphora"
            time.sleep(0.05)
        # The reconcile looks up by owner (1.5 s), then builds: lookup + create (3 s). Cut it
        # off from the apiserver in between, so that the build lands but its record does not.
        time.sleep(2.5)
        partition.frozen.set()  # from now on, nothing the operator writes reaches the API
        time.sleep(4.0)
        built_unrecorded = len(NoopDriver(state_file=state_file).find())
        operator.kill()
    steps.patch_spec("racy", tags=["v2"])
    operator.cluster = control_plane  # back, directly this time
    operator.start()
    fleet.wait(converged({"racy"}), timeout=30, what="Ready on the new spec")
    item = fleet.by_name()["racy"]
    instances = {i.id: i for i in NoopDriver(state_file=state_file).find()}
    current = instances.get(item["status"]["computeId"])
    test = "crash_unrecorded_build"
    record(test, "instances built before the kill, unrecorded", built_unrecorded)
    record(test, "instance tags at the end (want ['v2'])", user_tags(current) if current else None)
    assert built_unrecorded == 1, "the scenario did not happen: no build before the kill"
    assert current is not None and user_tags(current) == ["v2"], (
        f"Ready with an instance built from the old spec: {current} ({summarize([item])})"
    )
    result = audit([item], list(instances.values()))
    assert result.clean, result.report()


# -- the same against the real Nova API ----------------------------------------------------------


def nova_servers(nova_box: NovaBoxInfo, managed_tag: str) -> list[AmphoraInstance]:
    """Every server carrying this test's managed tag, read with the admin API (not the driver)."""
    out = []
    with contextlib.closing(nova_box.connection()) as conn:
        for server in conn.compute.servers(tags=managed_tag):
            tags = list(server.tags or [])
            owner = next(
                (t.removeprefix("amphora-owner:") for t in tags if t.startswith("amphora-owner:")),
                None,
            )
            deleting = server.task_state == "deleting" or server.status == "DELETED"
            out.append(
                AmphoraInstance(
                    id=server.id,
                    name=server.name or "",
                    amphora_type="VM",
                    state=AmphoraState.DELETING if deleting else AmphoraState.ACTIVE,
                    raw_state=f"{server.status}/{server.task_state}",
                    owner=owner,
                )
            )
    return out


def nova_flavor_mismatches(nova_box: NovaBoxInfo, items: list[Item]) -> list[str]:
    """Amphorae whose server's flavor is not the one their spec names (a lost spec change)."""
    out = []
    with contextlib.closing(nova_box.connection()) as conn:
        names = {f.id: f.name for f in conn.compute.flavors(is_public="none")}
        for item in items:
            server = conn.compute.get_server(item["status"]["computeId"])
            flavor = (server.flavor or {}).get("original_name") or (server.flavor or {}).get("name")
            wanted = names.get(item["spec"]["flavor"], item["spec"]["flavor"])
            if flavor != wanted:
                out.append(f"{item['metadata']['name']}: server flavor {flavor}, spec {wanted}")
    return out


def nova_config(state_file: Path, nova_box: NovaBoxInfo, managed_tag: str, **options: Any
                ) -> dict[str, Any]:  # fmt: skip
    """Every type on the Nova box, the servers marked with a tag private to the test."""
    config = noop_config(
        state_file,
        profiles={
            "nova": {
                "driver": "nova",
                "options": {
                    "clouds_yaml_content": nova_box.clouds_yaml_content(),
                    "managed_tag": managed_tag,
                    "api_timeout": 10,
                    **options,
                },
                "breaker": {"failureThreshold": 5, "resetTimeout": 5},
            }
        },
        reconcile={"driverCallTimeout": 15},
    )
    config["defaults"] = {"VM": "nova", "BareMetal": "nova", "Container": "nova"}
    return config


def nova_amphora(nova_box: NovaBoxInfo, name: str, **spec: Any) -> dict[str, Any]:
    return amphora(
        name,
        **{
            "flavor": nova_box.flavor_id,
            "image": nova_box.image_id,
            "networks": [nova_box.network_id],
            **spec,
        },
    )


@pytest.mark.nova
def test_sigkill_during_builds_replacements_and_deletions_nova(
    launch: Launch, steps: Steps, fleet: Fleet, state_file: Path, nova_box: NovaBoxInfo
) -> None:
    rng = random.Random(SEED)
    tag = f"rel-crash-{uuid.uuid4().hex[:8]}"
    names = [f"nova-crash-{i}" for i in range(5)]
    operator = launch(nova_config(state_file, nova_box, tag))
    crasher = Crasher(operator, rng)
    live = set(names)
    time.sleep(rng.uniform(1.5, 2.5))
    # 1: builds (BUILD -> ACTIVE takes about a second on the box), killed mid-way.
    steps.apply(*(nova_amphora(nova_box, n) for n in names))
    crasher.kill_after(0.2, 1.2)
    # 2: a replacement (new flavor) and a deletion, killed mid-way.
    crasher.restart(2.0, 3.0)
    replaced = rng.sample(sorted(live), 2)
    for name in replaced:
        steps.patch_spec(name, flavor="2")
    gone = rng.choice(sorted(set(live) - set(replaced)))
    steps.delete(gone, wait=False)
    live.discard(gone)
    crasher.kill_after(0.2, 1.5)

    crasher.restart(0.0, 0.0)
    converge = fleet.wait(
        converged(live), timeout=60, what="every live Amphora Ready on its current spec"
    )
    result = wait_clean(fleet, lambda: nova_servers(nova_box, tag), timeout=20)
    test = "crash_safety_nova"
    record(test, "kills", crasher.kills)
    record(test, "amphorae", len(names))
    record(test, "live at end", result.live)
    record(test, "servers at end", result.instances)
    record(test, "duplicates", len(result.duplicates))
    record(test, "orphans", len(result.orphans))
    record(test, "seconds to converge after the last restart", converge)
    stale = nova_flavor_mismatches(nova_box, fleet.items())
    record(test, "servers built from an outdated spec", len(stale))
    assert result.clean, result.report() + "\n" + summarize(fleet.items())
    assert result.live == len(live) == result.instances
    assert stale == [], f"Ready on a spec the server was not built from: {stale}"


# -- the chaos soak: 100 SIGKILLs on noop, 20 on Nova, then garbage collection -------------------

SOAK_SEED = 16
#: Seconds an instance must be unclaimed before the soak's operators collect it.
SOAK_GRACE = 2.0


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    """One warm process the soak's operators are forked from (see zygote.py); it warms up
    while the control plane starts."""
    started = Zygote()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def forked(
    zygote: Zygote,
    control_plane: Cluster,
    amphora_crd: dict[str, Any],
    namespace: str,
    tmp_path: Path,
    kube_api: ApiClient,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[[dict[str, Any]], ForkedOperator]]:
    """An operator forked from the zygote on the test namespace; torn down like ``launch``."""
    started: list[Any] = []

    def start(config: dict[str, Any]) -> ForkedOperator:
        config = {**config, "garbageCollection": {"gracePeriod": SOAK_GRACE}}
        operator = ForkedOperator(
            zygote, kubeconfig=control_plane.kubeconfig, namespace=namespace,
            workdir=tmp_path / "soak", config=config,
        )  # fmt: skip
        operator.start()
        started.append(operator)
        return operator

    yield start
    tear_down(kube_api, namespace, started, request, wait=30)


class Chaos:
    """A seeded user working on a fleet through the API while the operator is killed: builds,
    spec changes (replacements), suspend/resume, deletions, and deletions whose finalizer is
    stripped while the operator is down (their instances can only be garbage collected)."""

    def __init__(
        self, api: ApiClient, namespace: str, rng: random.Random,
        body: Callable[[str], dict[str, Any]], replace: Callable[[dict[str, Any]], dict[str, Any]],
        size: int,
    ) -> None:  # fmt: skip
        self.api = k8s.CustomObjectsApi(api)
        self.namespace = namespace
        self.rng = rng
        self.body = body
        self.replace_patch = replace
        self.size = size
        self.live: set[str] = set()
        self.created = 0
        self.counts = dict.fromkeys(("build", "replace", "suspend", "resume", "delete", "strip"), 0)

    def _patch(self, name: str, patch: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, patch)

    def _spec(self, name: str) -> dict[str, Any]:
        item = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        return dict(item["spec"])

    def build(self) -> None:
        name = f"soak-{self.created:03d}"
        self.created += 1
        self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                 self.body(name))  # fmt: skip
        self.live.add(name)
        self.counts["build"] += 1

    def replace(self) -> str:
        name = self.rng.choice(sorted(self.live))
        self._patch(name, {"spec": self.replace_patch(self._spec(name))})
        self.counts["replace"] += 1
        return name

    def toggle_suspend(self) -> None:
        name = self.rng.choice(sorted(self.live))
        suspended = not self._spec(name).get("suspended", False)
        self._patch(name, {"spec": {"suspended": suspended}})
        self.counts["suspend" if suspended else "resume"] += 1

    def delete(self, strip: bool = False) -> None:
        name = self.rng.choice(sorted(self.live))
        self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        if strip:  # "kubectl patch --type merge -p '{"metadata":{"finalizers":null}}'"
            with contextlib.suppress(k8s.ApiException):
                self._patch(name, {"metadata": {"finalizers": None}})
        self.live.discard(name)
        self.counts["strip" if strip else "delete"] += 1

    def act(self) -> None:
        """One random step, keeping the fleet near ``size``."""
        if len(self.live) < self.size // 2:
            return self.build()
        step = self.rng.choices(["build", "replace", "suspend", "delete"], weights=[3, 4, 2, 2])[0]
        if step == "build" and len(self.live) < self.size:
            return self.build()
        if step == "delete":
            return self.delete()
        if step == "suspend":
            return self.toggle_suspend()
        self.replace()
        return None


def replacing(items: list[Item]) -> bool:
    """Some Amphora has its replacement slot in use (built or being built)."""
    return any(status_of(i).get("replacement") for i in items)


def soak(chaos: Chaos, crasher: Crasher, fleet: Fleet, kills: int, delay: tuple[float, float],
         at_work_within: float = 6.0) -> None:  # fmt: skip
    """Until ``kills`` SIGKILLs: restart, a few user steps, then a kill (a third of them aimed
    at the replacement slot); now and then, with the operator down, a stripped deletion."""
    while crasher.kills < kills:
        if crasher.kills:
            crasher.operator.start()
        for _ in range(crasher.rng.randint(1, 3)):
            chaos.act()
        if crasher.rng.random() < 0.35 and chaos.live:
            chaos.replace()
            if crasher.kill_when(fleet, replacing, timeout=at_work_within):
                crasher.at_work += 1
        else:
            crasher.kill_at_work(at_work_within, *delay)
        if crasher.rng.random() < 0.1 and len(chaos.live) > 1:
            chaos.delete(strip=True)


def collected_orphans(logs: str) -> list[dict[str, Any]]:
    return [r for r in log_records(logs) if r.get("message") == "orphan deleted"]


@pytest.mark.slow
def test_chaos_soak_noop(
    forked: Callable[[dict[str, Any]], ForkedOperator], kube_api: ApiClient, namespace: str,
    fleet: Fleet, state_file: Path,
) -> None:  # fmt: skip
    """100 SIGKILLs across builds, replacements, suspends and deletions; then the fleet
    converges, garbage collection removes what stripped deletions left, and the audit is
    clean: no duplicate, no orphan, nothing stuck, every instance built from its spec."""
    started = time.monotonic()
    rng = random.Random(SOAK_SEED)
    operator = forked(noop_config(state_file))
    crasher = Crasher(operator, rng)
    versions = itertools.count(2)
    chaos = Chaos(
        kube_api, namespace, rng,
        body=lambda name: amphora(name, tags=["noop:build-seconds=0.5", "v1"]),
        replace=lambda spec: {"tags": ["noop:build-seconds=0.5", f"v{next(versions)}"]},
        size=16,
    )  # fmt: skip
    time.sleep(1.0)
    soak(chaos, crasher, fleet, kills=100, delay=(0.0, 1.0))
    operator.start()
    converge = fleet.wait(converged(chaos.live), timeout=120,
                          what="every live Amphora Ready on its current spec")  # fmt: skip
    result = wait_clean(fleet, lambda: NoopDriver(state_file=state_file).find(), timeout=30)
    stale = noop_tag_mismatches(state_file, fleet.items())
    collected = collected_orphans(operator.logs())
    test = "chaos_soak_noop"
    record(test, "kills", crasher.kills)
    record(test, "kills aimed at the replacement slot", crasher.aimed)
    record(test, "kills after the operator had started acting", crasher.at_work)
    record(test, "user steps", dict(chaos.counts))
    record(test, "live at end", result.live)
    record(test, "instances at end", result.instances)
    record(test, "duplicates", len(result.duplicates))
    record(test, "orphans left after GC", len(result.orphans))
    record(test, "orphans collected", len(collected))
    record(test, "instances built from an outdated spec", len(stale))
    record(test, "seconds to converge after the last restart", converge)
    record(test, "seconds in all", time.monotonic() - started)
    assert crasher.kills >= 100 and crasher.aimed >= 10 and crasher.at_work >= 50
    assert result.clean, result.report() + "\n" + summarize(fleet.items())
    assert result.live == len(chaos.live) == result.instances
    assert stale == [], f"Ready on a spec the instance was not built from: {stale}"
    assert chaos.counts["strip"] >= 3 and len(collected) >= 1, (
        f"stripped deletions {chaos.counts['strip']} left nothing to collect: {collected}"
    )
    assert {r.get("reason") for r in collected} <= {"OwnerGone", "Unclaimed"}


@pytest.mark.slow
@pytest.mark.nova
def test_chaos_soak_nova(
    forked: Callable[[dict[str, Any]], ForkedOperator], kube_api: ApiClient, namespace: str,
    fleet: Fleet, state_file: Path, nova_box: NovaBoxInfo,
) -> None:  # fmt: skip
    """20 SIGKILLs against the real Nova API (its functional fixtures over HTTP)."""
    started = time.monotonic()
    rng = random.Random(SOAK_SEED)
    tag = f"rel-soak-{uuid.uuid4().hex[:8]}"
    operator = forked(nova_config(state_file, nova_box, tag))
    crasher = Crasher(operator, rng)
    flavors = [nova_box.flavor_id, "2"]
    chaos = Chaos(
        kube_api, namespace, rng,
        body=lambda name: nova_amphora(nova_box, name),
        replace=lambda spec: {"flavor": flavors[1 - flavors.index(spec["flavor"])]},
        size=5,
    )  # fmt: skip
    time.sleep(1.0)
    # Nova calls take seconds on a loaded box: wait longer for the operator to be at work.
    soak(chaos, crasher, fleet, kills=20, delay=(0.0, 1.5), at_work_within=12.0)
    operator.start()
    converge = fleet.wait(converged(chaos.live), timeout=120,
                          what="every live Amphora Ready on its current spec")  # fmt: skip
    result = wait_clean(fleet, lambda: nova_servers(nova_box, tag), timeout=40)
    stale = nova_flavor_mismatches(nova_box, fleet.items())
    collected = collected_orphans(operator.logs())
    test = "chaos_soak_nova"
    record(test, "kills", crasher.kills)
    record(test, "kills aimed at the replacement slot", crasher.aimed)
    record(test, "kills after the operator had started acting", crasher.at_work)
    record(test, "user steps", dict(chaos.counts))
    record(test, "live at end", result.live)
    record(test, "servers at end", result.instances)
    record(test, "duplicates", len(result.duplicates))
    record(test, "orphans left after GC", len(result.orphans))
    record(test, "orphans collected", len(collected))
    record(test, "servers built from an outdated spec", len(stale))
    record(test, "seconds to converge after the last restart", converge)
    record(test, "seconds in all", time.monotonic() - started)
    assert crasher.kills >= 20
    assert result.clean, result.report() + "\n" + summarize(fleet.items())
    assert result.live == len(chaos.live) == result.instances
    assert stale == [], f"Ready on a spec the server was not built from: {stale}"
