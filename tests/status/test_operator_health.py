"""The health table of ``test_health_table.py``, produced by a real operator.

Each test starts ``amphora-operator run`` (noop driver, or the real Nova API for the flavor and
image rows), brings an Amphora into one situation the way a user or the backend would, and judges
it as Flux and Argo CD do: kstatus through the real Go library, Argo CD through the shipped Lua
script. Every look is also checked against the rule no pipeline may break: an Amphora never reads
Current (healthy) before the operator has observed its generation. Looks at an Amphora with no
status at all are held to it by the first test alone, which creates one while no operator runs
(so the outcome does not depend on how fast the operator is).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.fixtures.nova_box import NovaBoxInfo
from tests.fixtures.operator import GROUP, PLURAL, VERSION, OperatorProcess, noop_config
from tests.operator.scenario import amphora
from tests.reliability.test_crash_safety import nova_amphora, nova_config
from tests.status.health import Verdict, argo_health, build_kstatus, kstatus

pytestmark = pytest.mark.cluster

Start = Callable[..., OperatorProcess]
#: An image id no image service knows (by id, since the Nova box resolves no image names).
MISSING_IMAGE = "5d2b2c1e-0000-4000-8000-00000000dead"
#: kopf's log line once the operator has logged in and starts watching.
STARTED = "Initial authentication has finished."


@dataclass(frozen=True)
class Look:
    """One reading of an Amphora as the API serves it, and what the tools make of it."""

    kstatus: Verdict
    argo: Verdict
    obj: dict[str, Any]

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.obj.get("status") or {})

    @property
    def observed(self) -> bool:
        return self.status.get("observedGeneration") == self.obj["metadata"].get("generation")

    def __str__(self) -> str:
        return (
            f"kstatus {self.kstatus.status} ({self.kstatus.message}); Argo CD {self.argo.status}"
            f" ({self.argo.message}); generation {self.obj['metadata'].get('generation')}; "
            f"status {json.dumps(self.status)}"
        )


@dataclass
class Judge:
    """Reads Amphorae and judges them; remembers every look that read Current too early."""

    api: k8s.CustomObjectsApi
    namespace: str
    tool: Path
    looks: int = 0
    #: Looks that read Current although a status exists for an older (or no) generation.
    falsely_current: list[str] = field(default_factory=list)

    def look(self, name: str) -> Look:
        obj = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        seen = Look(kstatus(self.tool, json.dumps(obj))[name], argo_health(obj), obj)
        self.looks += 1
        if seen.kstatus.status == "Current" and seen.status and not seen.observed:
            self.falsely_current.append(f"{name}: {seen}")
        return seen

    def until(
        self,
        name: str,
        kstatus: str,
        argo: str,
        *,
        timeout: float = 30,
        also: Callable[[Look], bool] = lambda _: True,
    ) -> Look:
        """Look until kstatus and Argo CD give ``kstatus``/``argo`` (and ``also`` holds)."""
        deadline = time.monotonic() + timeout
        seen = self.look(name)
        while not (seen.kstatus.status == kstatus and seen.argo.status == argo and also(seen)):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{name}: want kstatus {kstatus} / Argo CD {argo} within {timeout} s; "
                    f"last look: {seen}",
                    pytrace=False,
                )
            time.sleep(0.1)
            seen = self.look(name)
        return seen

    def never_falsely_current(self) -> None:
        assert not self.falsely_current, (
            f"{len(self.falsely_current)} of {self.looks} looks read Current before the operator "
            "observed the generation:\n" + "\n".join(self.falsely_current[:5])
        )


@pytest.fixture(scope="module")
def kstatus_tool() -> Path:
    return build_kstatus()


@pytest.fixture
def judge(
    kube_api: ApiClient, namespace: str, kstatus_tool: Path, amphora_crd: dict[str, Any]
) -> Judge:
    return Judge(k8s.CustomObjectsApi(kube_api), namespace, kstatus_tool)


def up(operator: OperatorProcess, timeout: float = 120) -> OperatorProcess:
    """Wait until the operator process has logged in and watches (a loaded machine can take
    tens of seconds to import and start it), so the time limits below measure the operator's
    work and not its start-up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if operator.log_path.exists() and STARTED in operator.log_path.read_text(errors="replace"):
            return operator
        assert operator.process is not None and operator.process.poll() is None, operator.logs()
        time.sleep(0.2)
    pytest.fail(f"the operator did not start within {timeout} s:\n{operator.logs()[-4000:]}")


def create(judge: Judge, body: dict[str, Any]) -> Look:
    """Create like ``kubectl apply`` and look at once, before the operator can have acted."""
    judge.api.create_namespaced_custom_object(GROUP, VERSION, judge.namespace, PLURAL, body)
    return judge.look(body["metadata"]["name"])


def patch_spec(judge: Judge, name: str, **spec: Any) -> None:
    judge.api.patch_namespaced_custom_object(
        GROUP, VERSION, judge.namespace, PLURAL, name, {"spec": spec}
    )


def condition(look: Look, type_: str) -> dict[str, Any]:
    return next((c for c in look.status.get("conditions", []) if c["type"] == type_), {})


def test_an_amphora_never_reads_current_before_the_operator_observed_it(
    start_operator: Start, judge: Judge, tmp_path: Path
) -> None:
    """just created (the operator is not running yet, as during an upgrade), first sight,
    building, Ready: a pipeline waiting on it must not pass before it runs."""
    create(judge, amphora("fresh", tags=["noop:build-seconds=4"]))
    unseen = judge.look("fresh")
    up(start_operator(noop_config(tmp_path / "noop.json")))
    building = judge.until(
        "fresh", "InProgress", "Progressing", also=lambda s: s.status.get("phase") == "Building"
    )
    assert condition(building, "Reconciling").get("status") == "True", building
    assert building.observed, building
    judge.until("fresh", "Current", "Healthy", timeout=30)
    assert unseen.kstatus.status != "Current", f"not yet seen by any operator: {unseen}"
    judge.never_falsely_current()


def test_suspend_is_in_progress_then_suspended_reads_current(
    start_operator: Start, judge: Judge, tmp_path: Path
) -> None:
    """suspend in progress (each backend call takes 1.5 s), then suspended as requested."""
    up(
        start_operator(
            noop_config(
                tmp_path / "noop.json",
                options={"call_latency": 1.5},
                reconcile={"driverCallTimeout": 10},
            )
        )
    )
    create(judge, amphora("sleepy"))
    judge.until("sleepy", "Current", "Healthy", timeout=60)
    patch_spec(judge, "sleepy", suspended=True)
    judge.until(
        "sleepy", "InProgress", "Progressing", timeout=10,
        also=lambda s: s.observed and condition(s, "Reconciling").get("status") == "True",
    )  # fmt: skip
    suspended = judge.until("sleepy", "Current", "Suspended", timeout=30)
    assert suspended.status["phase"] == "Suspended", suspended
    judge.never_falsely_current()


def test_a_transient_build_failure_stays_in_progress_with_its_retry_time(
    start_operator: Start, judge: Judge, tmp_path: Path
) -> None:
    """build failing transiently (ERROR "No valid host"); the next try is 60 s away."""
    up(
        start_operator(
            noop_config(tmp_path / "noop.json", reconcile={"retryBase": 60, "retryMax": 120})
        )
    )
    create(judge, amphora("unlucky", tags=["noop:fault=No valid host was found."]))
    failing = judge.until(
        "unlucky", "InProgress", "Progressing", also=lambda s: bool(s.status.get("nextRetryTime"))
    )
    retry_at = datetime.fromisoformat(failing.status["nextRetryTime"].replace("Z", "+00:00"))
    assert retry_at > datetime.now(UTC), failing
    assert condition(failing, "Stalled").get("status") != "True", failing
    assert condition(failing, "Reconciling").get("status") == "True", failing
    judge.never_falsely_current()


def test_a_terminal_driver_error_is_failed_at_once(
    start_operator: Start, judge: Judge, tmp_path: Path
) -> None:
    """a driver error with retryable=False (the noop driver refuses a malformed hint)."""
    up(
        start_operator(
            noop_config(tmp_path / "noop.json", reconcile={"retryBase": 60, "retryMax": 120})
        )
    )
    create(judge, amphora("doomed", tags=["noop:build-seconds=soon"]))
    failed = judge.until("doomed", "Failed", "Degraded", timeout=30)
    assert "tags" in failed.kstatus.message, failed
    assert failed.observed, failed
    judge.never_falsely_current()


def test_an_unknown_driver_is_failed(start_operator: Start, judge: Judge, tmp_path: Path) -> None:
    up(start_operator(noop_config(tmp_path / "noop.json")))
    create(judge, amphora("lost", driver="nosuch"))
    failed = judge.until("lost", "Failed", "Degraded", timeout=30)
    assert "nosuch" in failed.kstatus.message, failed
    assert failed.observed, failed
    judge.never_falsely_current()


def test_a_missing_secret_stalls_after_retries_and_recovers_when_created(
    start_operator: Start, judge: Judge, tmp_path: Path, kube_api: ApiClient, namespace: str
) -> None:
    up(
        start_operator(
            noop_config(tmp_path / "noop.json", reconcile={"retryBase": 0.5, "retryMax": 2})
        )
    )
    create(judge, amphora("needy", userData={"secretRef": {"name": "boot", "key": "cloud"}}))
    stalled = judge.until("needy", "Failed", "Degraded", timeout=30)
    assert "boot" in stalled.kstatus.message, stalled
    k8s.CoreV1Api(kube_api).create_namespaced_secret(
        namespace,
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name="boot", labels={"amphora-operator.dev/usable": "true"}),
            string_data={"cloud": "#cloud"},
        ),
    )
    judge.until("needy", "Current", "Healthy", timeout=30)
    judge.never_falsely_current()


def test_a_backend_down_at_first_reconcile_is_in_progress(
    start_operator: Start, judge: Judge, tmp_path: Path
) -> None:
    """Every call of the only backend hangs past the call timeout from the start."""
    up(
        start_operator(
            noop_config(
                tmp_path / "noop.json",
                options={"call_latency": 20},
                reconcile={"driverCallTimeout": 0.5},
                breaker={"failureThreshold": 2, "resetTimeout": 3},
            )
        )
    )
    create(judge, amphora("stranded", deletionPolicy="Orphan"))
    down = judge.until(
        "stranded", "InProgress", "Progressing", timeout=20,
        also=lambda s: condition(s, "BackendAvailable").get("status") == "False",
    )  # fmt: skip
    assert down.observed, down
    for _ in range(10):  # it stays so: nothing reads it as healthy while the backend is down
        judge.look("stranded")
        time.sleep(0.3)
    judge.never_falsely_current()


def test_a_spec_change_not_yet_observed_is_in_progress(
    start_operator: Start, judge: Judge, tmp_path: Path
) -> None:
    """The operator is stopped while the spec changes, so the new generation stays unobserved."""
    operator = up(start_operator(noop_config(tmp_path / "noop.json")))
    create(judge, amphora("moving"))
    judge.until("moving", "Current", "Healthy")
    operator.stop()
    patch_spec(judge, "moving", flavor="m1.large")
    unobserved = judge.until("moving", "InProgress", "Progressing", timeout=5)
    assert "observed generation" in unobserved.kstatus.message, unobserved
    operator.start()
    up(operator)
    judge.until("moving", "Current", "Healthy", timeout=30)
    judge.never_falsely_current()


def test_a_deleting_amphora_is_terminating(
    start_operator: Start, judge: Judge, tmp_path: Path, kubectl: Callable[..., Any]
) -> None:
    """Its first deletes fail, so the finalizer holds it while we look."""
    up(start_operator(noop_config(tmp_path / "noop.json", reconcile={"deleteRetry": 1})))
    create(judge, amphora("leaving", tags=["noop:delete-failures=3"]))
    judge.until("leaving", "Current", "Healthy")
    kubectl("delete", "amphora", "leaving", "-n", judge.namespace, "--wait=false")
    judge.until("leaving", "Terminating", "Progressing", timeout=5)
    judge.never_falsely_current()


@pytest.mark.nova
@pytest.mark.parametrize(
    ("name", "spec", "words"),
    [
        ("no-such-flavor", {"flavor": "m1.nosuch"}, "m1.nosuch"),
        ("no-such-image", {"image": MISSING_IMAGE}, "requested image"),
    ],
)
def test_an_unknown_flavor_or_image_is_failed(
    start_operator: Start,
    judge: Judge,
    tmp_path: Path,
    nova_box: NovaBoxInfo,
    name: str,
    spec: dict[str, Any],
    words: str,
) -> None:
    """terminal flavor/image error, from the real Nova API."""
    up(start_operator(nova_config(tmp_path / "noop.json", nova_box, f"st-{uuid.uuid4().hex[:8]}")))
    create(judge, nova_amphora(nova_box, name, **spec))
    failed = judge.until(name, "Failed", "Degraded", timeout=60)
    assert words in failed.kstatus.message, failed
    judge.never_falsely_current()
