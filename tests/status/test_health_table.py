"""What Flux, kpt, Argo CD and ``kubectl wait`` conclude from each status the operator writes.

Real Amphora objects on the real control plane, no operator: each row writes, through the status
subresource, the status the runtime contract (issue 15) prescribes for one situation. Then
kstatus (the real Go library over ``kubectl get -o json``) and the shipped Argo CD Lua health
script judge the same objects, and both must give the expected result and agree.

Why the CRD defaults ``status.observedGeneration`` to 0: kstatus reads an object with no status
(or without a Ready condition) as Current. With the default, every new Amphora is created with
``status: {observedGeneration: 0}``, which kstatus reads as a generation not yet observed
(InProgress) until the operator's first-sight write (phase Pending, Reconciling=True, before any
driver call); the "just-created" row shows it. So no freshly applied Amphora passes a Flux
``wait`` as healthy, whatever the operator is doing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.fixtures.control_plane import Kubectl
from tests.fixtures.operator import GROUP, PLURAL, VERSION
from tests.operator.scenario import amphora
from tests.status.health import CONSISTENT, Verdict, argo_health, build_kstatus, kstatus

pytestmark = pytest.mark.cluster

HOLD = "amphora-operator.dev/status-test-hold"
NOW = datetime.now(UTC).replace(microsecond=0)
STAMP = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
LATER = (NOW + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
Status = dict[str, Any]


def condition(type_: str, status: bool, reason: str, message: str, generation: int) -> Status:
    return {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": STAMP,
    }


def summary(
    generation: int,
    *,
    phase: str,
    ready: bool,
    reconciling: bool,
    stalled: bool,
    reason: str,
    message: str,
    backend: tuple[bool, str, str] = (True, "Reachable", "the compute backend answers"),
    **fields: Any,
) -> Status:
    """A status as the contract writes it: phase, observedGeneration and the four conditions
    (sorted by type, as the operator keeps them)."""
    stable = not (reconciling or stalled)
    conditions = [
        condition("BackendAvailable", *backend, generation),
        condition("Ready", ready, "Ready" if ready and phase == "Ready" else reason, message,
                  generation),
        condition("Reconciling", reconciling, reason if reconciling else
                  ("Stable" if stable else "Stalled"), message, generation),
        condition("Stalled", stalled, reason if stalled else
                  ("Stable" if stable else "Retrying"), message, generation),
    ]  # fmt: skip
    return {"phase": phase, "observedGeneration": generation, "conditions": conditions, **fields}


def running(generation: int) -> Status:
    return summary(generation, phase="Ready", ready=True, reconciling=False, stalled=False,
                   reason="Ready", message="instance 5f1c is active", driver="noop",
                   computeId="5f1c", addresses=["192.0.2.10"], revision=1)  # fmt: skip


def failed(reason: str, fault: str, *, stalled: bool, retries: int) -> Callable[[int], Status]:
    def status(generation: int) -> Status:
        return summary(generation, phase="Failed", ready=False, reconciling=not stalled,
                       stalled=stalled, reason=reason, message=fault, driver="noop",
                       fault=fault, failureReason=reason, retries=retries,
                       nextRetryTime=LATER)  # fmt: skip

    return status


@dataclass(frozen=True)
class Row:
    """One situation: the object, the status written for it, what happens next, the verdicts."""

    name: str
    kstatus: str
    argo: str
    status: Callable[[int], Status] | None
    spec: dict[str, Any] = field(default_factory=dict)
    then: str = ""  # "change-spec" (a new generation) or "delete" (finalizer holds it)


TABLE = [
    # No status written: the CRD's default observedGeneration 0 keeps it InProgress.
    Row("just-created", "InProgress", "Progressing", None),
    # Only BackendAvailable written (no Ready, no observedGeneration): the default holds too.
    Row("backend-down-no-ready", "InProgress", "Progressing",
        lambda g: {"conditions": [condition("BackendAvailable", False, "BackendUnavailable",
                                            "connection refused", g)]}),
    Row("first-sight", "InProgress", "Progressing",
        lambda g: {"phase": "Pending", "observedGeneration": g, "conditions": [
            condition("Ready", False, "Pending", "waiting to build", g),
            condition("Reconciling", True, "Pending", "waiting to build", g)]}),
    Row("building", "InProgress", "Progressing",
        lambda g: summary(g, phase="Building", ready=False, reconciling=True, stalled=False,
                          reason="Building", message="building revision 1", driver="noop",
                          computeId="5f1c", revision=1)),
    Row("ready", "Current", "Healthy", running),
    Row("suspended", "Current", "Suspended",
        lambda g: summary(g, phase="Suspended", ready=True, reconciling=False, stalled=False,
                          reason="Suspended", message="instance 5f1c is suspended as requested",
                          driver="noop", computeId="5f1c", revision=1),
        spec={"suspended": True}),
    Row("suspending", "InProgress", "Progressing",
        lambda g: summary(g, phase="Updating", ready=False, reconciling=True, stalled=False,
                          reason="Updating", message="suspending", driver="noop",
                          computeId="5f1c", revision=1),
        spec={"suspended": True}),
    Row("build-failing-transiently", "InProgress", "Progressing",
        failed("InstanceError", "No valid host was found.", stalled=False, retries=1)),
    Row("flavor-not-found", "Failed", "Degraded",
        failed("FlavorNotFound", "flavor m1.nosuch not found", stalled=True, retries=1),
        spec={"flavor": "m1.nosuch"}),
    Row("image-not-found", "Failed", "Degraded",
        failed("ImageNotFound", "image nosuch-image not found", stalled=True, retries=1),
        spec={"image": "nosuch-image"}),
    Row("unknown-driver", "Failed", "Degraded",
        lambda g: summary(g, phase="Failed", ready=False, reconciling=False, stalled=True,
                          reason="UnknownDriver", message="no compute profile named 'nosuch'",
                          fault="no compute profile named 'nosuch'",
                          failureReason="UnknownDriver"),
        spec={"driver": "nosuch"}),
    Row("secret-missing-retrying", "InProgress", "Progressing",
        failed("SecretNotFound", "spec.userData.secretRef: Secret boot not found",
               stalled=False, retries=1),
        spec={"userData": {"secretRef": {"name": "boot", "key": "cloud"}}}),
    Row("secret-missing-stalled", "Failed", "Degraded",
        failed("SecretNotFound", "spec.userData.secretRef: Secret boot not found",
               stalled=True, retries=3),
        spec={"userData": {"secretRef": {"name": "boot", "key": "cloud"}}}),
    Row("backend-down-first-reconcile", "InProgress", "Progressing",
        lambda g: summary(g, phase="Pending", ready=False, reconciling=True, stalled=False,
                          reason="BackendUnavailable",
                          message="waiting for the compute backend: connection refused",
                          backend=(False, "BackendUnavailable", "connection refused"))),
    Row("spec-changed-not-observed", "InProgress", "Progressing", running, then="change-spec"),
    Row("deleting", "Terminating", "Progressing", running, then="delete"),
]  # fmt: skip


@pytest.fixture(scope="module")
def kstatus_tool() -> Path:
    return build_kstatus()


def _create(api: k8s.CustomObjectsApi, namespace: str, row: Row) -> None:
    body = amphora(row.name, **row.spec)
    if row.then == "delete":
        body["metadata"]["finalizers"] = [HOLD]
    created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    if row.status is None:
        return
    status = row.status(created["metadata"]["generation"])
    written = api.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, row.name, {"status": status}
    )
    # Nothing the contract writes may be pruned by the CRD schema.
    for key, value in status.items():
        assert written["status"].get(key) == value, (
            f"{row.name}: status.{key} did not survive the CRD schema: wrote {value!r}, "
            f"read back {written['status'].get(key)!r}"
        )


def _then(api: k8s.CustomObjectsApi, kubectl: Kubectl, namespace: str, row: Row) -> None:
    if row.then == "change-spec":
        api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, row.name, {"spec": {"flavor": "m1.large"}}
        )
    elif row.then == "delete":
        kubectl("delete", "amphora", row.name, "-n", namespace, "--wait=false")


def _release(api: k8s.CustomObjectsApi, namespace: str) -> None:
    for item in api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]:
        if item["metadata"].get("finalizers"):
            api.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, item["metadata"]["name"],
                {"metadata": {"finalizers": None}},
            )  # fmt: skip


def render(rows: list[tuple[Row, Verdict, Verdict]]) -> str:
    lines = [f"{'situation':30} {'kstatus':12} {'Argo CD':12} message (kstatus)"]
    for row, ks, argo in rows:
        lines.append(f"{row.name:30} {ks.status:12} {argo.status:12} {ks.message}")
    return "\n".join(lines)


def test_kstatus_and_argo_cd_read_every_situation_as_the_table_says(
    kube_api: ApiClient,
    amphora_crd: dict[str, Any],
    kubectl: Kubectl,
    namespace: str,
    kstatus_tool: Path,
) -> None:
    api = k8s.CustomObjectsApi(kube_api)
    try:
        for row in TABLE:
            _create(api, namespace, row)
        for row in TABLE:
            _then(api, kubectl, namespace, row)
        listing = kubectl("get", "amphorae", "-n", namespace, "-o", "json").stdout
        by_kstatus = kstatus(kstatus_tool, listing)
        objects = {item["metadata"]["name"]: item for item in json.loads(listing)["items"]}
    finally:
        _release(api, namespace)

    results = [(row, by_kstatus[row.name], argo_health(objects[row.name])) for row in TABLE]
    print("\n" + render(results))
    wrong = [
        f"{row.name}: kstatus {ks.status} (want {row.kstatus}), Argo CD {argo.status} "
        f"(want {row.argo})"
        for row, ks, argo in results
        if (ks.status, argo.status) != (row.kstatus, row.argo)
    ]
    assert not wrong, "\n".join(wrong) + "\n\n" + render(results)
    for row, ks, argo in results:
        assert argo.status in CONSISTENT[ks.status], (
            f"{row.name}: kstatus {ks.status}, Argo {argo.status}"
        )


def test_failed_and_in_progress_verdicts_carry_the_operators_words(
    kube_api: ApiClient,
    amphora_crd: dict[str, Any],
    kubectl: Kubectl,
    namespace: str,
    kstatus_tool: Path,
) -> None:
    """A pipeline that stops on an Amphora shows why: the Stalled/Reconciling message, or the
    generation not yet observed."""
    api = k8s.CustomObjectsApi(kube_api)
    shown = {
        "flavor-not-found": "flavor m1.nosuch not found",
        "unknown-driver": "no compute profile named 'nosuch'",
        "build-failing-transiently": "No valid host was found.",
        "spec-changed-not-observed": "generation is 2, but latest observed generation is 1",
        "just-created": "generation is 1, but latest observed generation is 0",
    }
    rows = [row for row in TABLE if row.name in shown]
    try:
        for row in rows:
            _create(api, namespace, row)
        for row in rows:
            _then(api, kubectl, namespace, row)
        listing = kubectl("get", "amphorae", "-n", namespace, "-o", "json").stdout
    finally:
        _release(api, namespace)
    by_kstatus = kstatus(kstatus_tool, listing)
    objects = {item["metadata"]["name"]: item for item in json.loads(listing)["items"]}
    for name, words in shown.items():
        assert words in by_kstatus[name].message, (name, by_kstatus[name])
    for name in ("flavor-not-found", "unknown-driver", "build-failing-transiently"):
        assert shown[name] in argo_health(objects[name]).message


def test_kubectl_wait_on_ready_and_on_suspended(
    kube_api: ApiClient, amphora_crd: dict[str, Any], kubectl: Kubectl, namespace: str
) -> None:
    """What the README tells users to wait on: ``condition=Ready`` for a running Amphora, the
    phase for a suspended one; and neither returns early for an Amphora still on its way."""
    api = k8s.CustomObjectsApi(kube_api)
    rows = {row.name: row for row in TABLE}
    for name in ("ready", "building", "suspended", "suspending", "spec-changed-not-observed"):
        _create(api, namespace, rows[name])
    _then(api, kubectl, namespace, rows["spec-changed-not-observed"])

    def wait(name: str, condition: str, timeout: str) -> int:
        result = kubectl("wait", f"amphora/{name}", "-n", namespace, f"--for={condition}",
                         f"--timeout={timeout}", check=False)  # fmt: skip
        return result.returncode

    assert wait("ready", "condition=Ready", "10s") == 0
    assert wait("suspended", "jsonpath={.status.phase}=Suspended", "10s") == 0
    assert wait("building", "condition=Ready", "2s") != 0
    assert wait("suspending", "jsonpath={.status.phase}=Suspended", "2s") != 0
    # kubectl ignores a Ready=True set for an older generation than the spec it waits on.
    assert wait("spec-changed-not-observed", "condition=Ready", "2s") != 0
