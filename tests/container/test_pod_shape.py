"""The Pod the driver asks for (security, probe, placement) and what it reads back, without a
cluster: the pure halves of what ``test_real_node.py`` proves on a real kubelet."""

from __future__ import annotations

from typing import Any

import pytest
from amphora_drivers.container import (
    BUILTIN_FLAVORS,
    ContainerDriver,
    HealthProbe,
    PodOptions,
    PodSecurity,
    observe_pod,
)
from amphora_drivers.container.manifests import build_manifests
from amphora_drivers.container.observe import Observation, malformed, probe_failure
from amphora_drivers.types import AmphoraState, BuildRequest
from kubernetes import client as k8s

from tests.container.support import IMAGE


def pod_spec(options: PodOptions) -> dict[str, Any]:
    manifests = build_manifests(
        BuildRequest(name="amp", amphora_type="Container", image_id=IMAGE, user_data=b"x"),
        amphora_id="id-1",
        flavor_name="small",
        flavor=BUILTIN_FLAVORS["small"],
        authorized_keys_path="/home/amphora/.ssh/authorized_keys",
        user_data_path="/var/lib/amphora/user-data",
        options=options,
    )
    spec: dict[str, Any] = manifests.workload["spec"]["template"]["spec"]
    return spec


def test_default_pod_meets_the_restricted_level() -> None:
    spec = pod_spec(PodOptions())
    (container,) = spec["containers"]
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
        "fsGroup": 65532,
    }
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["readinessProbe"] == {
        "httpGet": {"port": 9443, "path": "/1.0/info", "scheme": "HTTP"},
        "periodSeconds": 2,
        "timeoutSeconds": 1,
        "failureThreshold": 3,
    }
    assert "nodeSelector" not in spec and "tolerations" not in spec
    assert "imagePullPolicy" not in container
    assert PodSecurity().restricted


def test_profile_options_shape_the_pod() -> None:
    options = PodOptions(
        node_selector={"pool": "amphorae"},
        tolerations=({"key": "pool", "operator": "Exists", "effect": "NoSchedule"},),
        image_pull_policy="Never",
        health_probe=HealthProbe(type="tcp", port=8443),
        security=PodSecurity(run_as_user=1000, capabilities=("NET_ADMIN", "NET_RAW")),
    )
    spec = pod_spec(options)
    (container,) = spec["containers"]
    assert spec["nodeSelector"] == {"pool": "amphorae"}
    assert spec["tolerations"] == [{"key": "pool", "operator": "Exists", "effect": "NoSchedule"}]
    assert container["imagePullPolicy"] == "Never"
    assert container["readinessProbe"]["tcpSocket"] == {"port": 8443}
    assert spec["securityContext"]["runAsUser"] == 1000
    assert container["securityContext"]["capabilities"] == {
        "drop": ["ALL"],
        "add": ["NET_ADMIN", "NET_RAW"],
    }
    assert not options.security.restricted, "NET_ADMIN leaves the restricted level"
    assert not PodSecurity(run_as_user=0).restricted
    assert PodSecurity(capabilities=("NET_BIND_SERVICE",)).restricted
    assert "readinessProbe" not in pod_spec(PodOptions(health_probe=None))["containers"][0]


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"security": {"capabilities": ["CAP_NET_ADMIN"]}}, "no CAP_"),
        ({"security": {"capabilities": ["net_admin"]}}, "is not a capability name"),
        ({"image_pull_policy": "Sometimes"}, "image_pull_policy"),
        ({"health_probe": {"port": 0}}, "health_probe.port"),
        ({"health_probe": {"path": "1.0/info"}}, "health_probe.path"),
    ],
)
def test_bad_options_are_refused_when_the_driver_is_made(
    options: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match="container driver options") as err:
        ContainerDriver(namespace="x", api_client=k8s.ApiClient(), **options)
    assert complaint in str(err.value)


def _running(containers_ready: bool = False, node: str = "real-node-0") -> dict[str, Any]:
    ready: dict[str, str] = {"type": "Ready", "status": "False"}
    containers = {"type": "ContainersReady", "status": "True" if containers_ready else "False"}
    return {
        "metadata": {"name": "amp-0", "uid": "p"},
        "spec": {"nodeName": node},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "PodScheduled", "status": "True"}, containers, ready],
            "containerStatuses": [
                {
                    "name": "amphora",
                    "image": IMAGE,
                    "ready": False,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:10Z"}},
                }
            ],
            "podIP": "10.88.77.4",
        },
    }


def test_a_silent_kubelet_is_unknown_not_an_error() -> None:
    """What the node lifecycle controller leaves: Ready False, ContainersReady still True."""
    observed = observe_pod(_running(containers_ready=True))
    assert (observed.state, observed.raw_state) == (AmphoraState.UNKNOWN, "Running/NodeNotReady")
    assert observed.fault is not None and "the Node real-node-0 stopped reporting" in observed.fault


def test_a_failing_probe_is_the_reason_for_not_ready() -> None:
    pod = _running()
    observed = observe_pod(pod)
    assert observed == Observation(AmphoraState.BUILDING, "Running/NotReady", None, ("10.88.77.4",))

    def event(message: str, at: str) -> dict[str, Any]:
        return {"reason": "Unhealthy", "message": message, "lastTimestamp": at}

    older = event("Readiness probe failed: old container", "2026-01-01T00:00:05Z")
    assert probe_failure(observed, pod, [older]) == observed, "before the container started"
    newest = event("Readiness probe failed: connection refused", "2026-01-01T00:00:30Z")
    later = probe_failure(
        observed, pod, [older, event("Readiness probe failed: x", "2026-01-01T00:00:20Z"), newest]
    )
    assert (later.state, later.raw_state) == (AmphoraState.BUILDING, "Running/ProbeFailing")
    assert later.fault == (
        "not Ready: Readiness probe failed: connection refused; "
        "the amphora does not answer its health probe"
    )


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"labels": {}}, "label amphora-operator.dev/id is missing"),
        ({"labels": {"amphora-operator.dev/id": "-bad-"}}, "not a valid label value"),
        (
            {
                "labels": {"amphora-operator.dev/id": "a"},
                "annotations": {"amphora-operator.dev/tags": "{"},
            },
            "is not JSON",
        ),
        (
            {
                "labels": {"amphora-operator.dev/id": "a"},
                "annotations": {"amphora-operator.dev/tags": "[1]"},
            },
            "not a JSON list of strings",
        ),
    ],
)
def test_malformed_statefulsets_are_named(metadata: dict[str, Any], problem: str) -> None:
    found = malformed({"metadata": {"name": "x", **metadata}, "spec": {}})
    assert found is not None and problem in found
    good = {
        "labels": {"amphora-operator.dev/id": "a"},
        "annotations": {"amphora-operator.dev/tags": "[]"},
    }
    assert malformed({"metadata": good, "spec": {}}) is None
