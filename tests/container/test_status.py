"""The Container driver without a cluster: status mapping, input checks, flavors, API errors.

Pod statuses below have the shape kubelets write (as ``kubectl get pod -o json`` shows them);
kwok cannot produce image-pull failures, so these tests are where ImagePullBackOff is covered.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from amphora_drivers.container import (
    BUILTIN_FLAVORS,
    MAX_WORKLOAD_NAME,
    ContainerDriver,
    Flavor,
    observe_pod,
    observe_workload,
    workload_name,
)
from amphora_drivers.exceptions import AmphoraBuildError, AmphoraComputeError, Reason
from amphora_drivers.testing import make_ssh_public_key
from amphora_drivers.types import AmphoraState, BuildRequest
from kubernetes import client as k8s

from tests.container.support import IMAGE


def pod(
    phase: str = "Running",
    *,
    ready: bool = True,
    waiting: dict[str, str] | None = None,
    last_terminated: dict[str, Any] | None = None,
    conditions: list[dict[str, str]] | None = None,
    annotations: dict[str, str] | None = None,
    deleting: bool = False,
    **status: Any,
) -> dict[str, Any]:
    """A Pod as the API returns it, with one ``amphora`` container."""
    container: dict[str, Any] = {
        "name": "amphora",
        "image": IMAGE,
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "lastState": {"terminated": last_terminated} if last_terminated else {},
        "state": {"waiting": waiting} if waiting else {"running": {"startedAt": "2026-01-01T0:0Z"}},
    }
    metadata: dict[str, Any] = {"name": "amp-0", "annotations": annotations or {}}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": metadata,
        "status": {
            "phase": phase,
            "conditions": conditions
            if conditions is not None
            else [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True" if ready else "False"},
            ],
            "containerStatuses": [container],
            "podIP": "10.244.0.7",
            "podIPs": [{"ip": "10.244.0.7"}, {"ip": "fd00::7"}],
            **status,
        },
    }


def workload(replicas: int = 1, deleting: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "amp", "uid": "u"}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": metadata, "spec": {"replicas": replicas}}


class TestPodStatus:
    def test_running_and_ready_is_active_with_every_pod_ip(self) -> None:
        observed = observe_pod(pod())
        assert (observed.state, observed.raw_state, observed.fault) == (
            AmphoraState.ACTIVE,
            "Running/Ready",
            None,
        )
        assert observed.addresses == ("10.244.0.7", "fd00::7")

    def test_secondary_network_addresses_come_from_multus(self) -> None:
        status = [
            {"name": "default/kindnet", "default": True, "ips": ["10.244.0.7"]},
            {"name": "octavia/lb-mgmt-net", "interface": "net1", "ips": ["172.24.0.5"]},
        ]
        annotated = pod(annotations={"k8s.v1.cni.cncf.io/network-status": json.dumps(status)})
        assert observe_pod(annotated).addresses == ("10.244.0.7", "fd00::7", "172.24.0.5")
        broken = pod(annotations={"k8s.v1.cni.cncf.io/network-status": "{not json"})
        assert observe_pod(broken).addresses == ("10.244.0.7", "fd00::7")

    @pytest.mark.parametrize(
        ("reason", "message", "advice"),
        [
            (
                "ImagePullBackOff",
                f'Back-off pulling image "{IMAGE}"',
                "check image_id and the registry's pull credentials",
            ),
            (
                "ErrImagePull",
                f'failed to pull and unpack image "{IMAGE}": not found',
                "check image_id and the registry's pull credentials",
            ),
            (
                "InvalidImageName",
                f'Failed to apply default image tag "{IMAGE}": invalid reference format',
                "image_id is not a valid image reference",
            ),
            (
                "CreateContainerConfigError",
                'secret "amp-files" not found',
                "the container's configuration cannot be resolved",
            ),
        ],
    )
    def test_pending_container_failures_are_errors_with_advice(
        self, reason: str, message: str, advice: str
    ) -> None:
        observed = observe_pod(
            pod("Pending", ready=False, waiting={"reason": reason, "message": message})
        )
        assert (observed.state, observed.raw_state) == (AmphoraState.ERROR, f"Pending/{reason}")
        assert observed.fault == f"{reason}: {message}; {advice}"

    def test_crash_loop_names_the_last_exit(self) -> None:
        observed = observe_pod(
            pod(
                ready=False,
                waiting={"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting"},
                last_terminated={"exitCode": 137, "reason": "OOMKilled"},
            )
        )
        assert (observed.state, observed.raw_state) == (
            AmphoraState.ERROR,
            "Running/CrashLoopBackOff",
        )
        assert observed.fault is not None
        assert "(last exit code 137, OOMKilled)" in observed.fault

    def test_unschedulable_carries_the_schedulers_message(self) -> None:
        message = "0/2 nodes are available: 2 Insufficient cpu."
        observed = observe_pod(
            pod(
                "Pending",
                ready=False,
                conditions=[
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": message,
                    }
                ],
                containerStatuses=[],
                podIP=None,
                podIPs=[],
            )
        )
        assert (observed.state, observed.raw_state) == (
            AmphoraState.ERROR,
            "Pending/Unschedulable",
        )
        assert observed.fault is not None and observed.fault.startswith(f"Unschedulable: {message}")
        assert observed.addresses == ()

    def test_creating_and_not_ready_are_building(self) -> None:
        creating = pod("Pending", ready=False, waiting={"reason": "ContainerCreating"})
        assert (observe_pod(creating).state, observe_pod(creating).raw_state) == (
            AmphoraState.BUILDING,
            "Pending/ContainerCreating",
        )
        scheduled = pod("Pending", ready=False, containerStatuses=[])
        assert observe_pod(scheduled).raw_state == "Pending/Scheduled"
        assert observe_pod(pod(ready=False)).raw_state == "Running/NotReady"
        assert observe_pod(pod(ready=False)).state is AmphoraState.BUILDING

    def test_evicted_pod_is_an_error_until_replaced(self) -> None:
        evicted = pod(
            "Failed",
            ready=False,
            reason="Evicted",
            message="The node was low on resource: memory.",
        )
        observed = observe_pod(evicted)
        assert (observed.state, observed.raw_state) == (AmphoraState.ERROR, "Failed/Evicted")
        assert observed.fault is not None and "low on resource: memory" in observed.fault

    def test_unknown_phase_is_unknown(self) -> None:
        assert observe_pod(pod("Unknown")).state is AmphoraState.UNKNOWN


class TestWorkloadStatus:
    def test_deleting_wins(self) -> None:
        observed = observe_workload(workload(deleting=True), [pod()])
        assert (observed.state, observed.raw_state) == (AmphoraState.DELETING, "Terminating")

    def test_scaled_to_zero_is_suspended(self) -> None:
        assert observe_workload(workload(0), [pod(deleting=True)]).raw_state == "Suspending"
        suspended = observe_workload(workload(0), [])
        assert (suspended.state, suspended.raw_state) == (AmphoraState.SUSPENDED, "Suspended")

    def test_no_pod_yet_is_building_unless_creation_failed(self) -> None:
        assert observe_workload(workload(), []).state is AmphoraState.BUILDING
        assert observe_workload(workload(), [pod(deleting=True)]).raw_state == "Terminating"
        failed = observe_workload(workload(), [], 'pods "amp-0" is forbidden: exceeded quota')
        assert (failed.state, failed.raw_state) == (AmphoraState.ERROR, "NoPod/FailedCreate")
        assert failed.fault is not None and "exceeded quota" in failed.fault

    def test_a_live_pod_is_what_counts(self) -> None:
        assert observe_workload(workload(), [pod(deleting=True), pod()]).state is (
            AmphoraState.ACTIVE
        )


class TestNamesAndFlavors:
    def test_long_names_are_shortened_deterministically(self) -> None:
        short = "a" * MAX_WORKLOAD_NAME
        assert workload_name(short) == short
        long_a, long_b = "b" * 63, "b" * 62 + "c"
        assert len(workload_name(long_a)) <= MAX_WORKLOAD_NAME
        assert workload_name(long_a) == workload_name(long_a)
        assert workload_name(long_a) != workload_name(long_b)

    def test_builtin_flavors_are_documented_sizes(self) -> None:
        assert set(BUILTIN_FLAVORS) == {"small", "medium", "large"}
        assert BUILTIN_FLAVORS["small"].resources() == {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        }

    @pytest.mark.parametrize(
        ("spec", "complaint"),
        [
            ({"requests": {"cpu": "lots"}}, "not a quantity"),
            ({"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}, "exceeds limit"),
            ({"requests": {}, "limit": {}}, "Extra inputs"),
        ],
    )
    def test_bad_flavors_are_refused_up_front(self, spec: dict[str, Any], complaint: str) -> None:
        with pytest.raises(ValueError, match=complaint):
            Flavor.model_validate(spec)
        with pytest.raises(ValueError, match=complaint):
            ContainerDriver(namespace="x", api_client=k8s.ApiClient(), flavors={"bad": spec})


@pytest.fixture
def offline() -> Iterator[ContainerDriver]:
    """A driver whose API server does not exist; validate() must not need one."""
    configuration = k8s.Configuration()
    configuration.host = f"https://127.0.0.1:{_closed_port()}"
    configuration.retries = 0
    with k8s.ApiClient(configuration) as client:
        yield ContainerDriver(namespace="x", api_client=client, connect_timeout=1, read_timeout=1)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def request(**overrides: Any) -> BuildRequest:
    return BuildRequest(
        **{"name": "amp", "amphora_type": "Container", "image_id": IMAGE, **overrides}
    )


class TestValidation:
    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"network_ids": ["ok", "Not_A_Name"]}, "network_ids[1]"),
            ({"sec_groups": ["has space"]}, "sec_groups[0]"),
            ({"sec_groups": ["x" * 64]}, "sec_groups[0]"),
            ({"availability_zone": "zone a"}, "availability_zone"),
            ({"config_drive_files": {"/etc/a": "x", "/etc/a/b": "y"}}, "config_drive_files"),
            (
                {
                    "keys": [make_ssh_public_key()],
                    "config_drive_files": {"/home/amphora/.ssh": "x"},
                },
                "config_drive_files",
            ),
            (
                {"user_data": "u", "config_drive_files": {"/var/lib/amphora/user-data": "x"}},
                "config_drive_files",
            ),
        ],
    )
    def test_input_kubernetes_cannot_take_is_refused(
        self, offline: ContainerDriver, overrides: dict[str, Any], field: str
    ) -> None:
        with pytest.raises(AmphoraBuildError) as err:
            offline.validate(request(**overrides))
        assert (err.value.reason, err.value.retryable, err.value.field) == (
            Reason.INVALID_INPUT,
            False,
            field,
        )

    def test_what_kubernetes_takes_is_accepted(self, offline: ContainerDriver) -> None:
        offline.validate(
            request(
                network_ids=[
                    "lb-mgmt",
                    "octavia/vip-net@eth1",
                    "0f6c2e4a-8d7b-4e1f-9c3a-1b2d3e4f5a6b",
                ],
                sec_groups=["lb-mgmt-sec-grp", "2b7d3c1e-0000-4000-8000-000000000000"],
                availability_zone="zone-a",
                config_drive_files={"/home/amphora/.ssh/authorized_keys": "x"},  # no keys given
            )
        )

    def test_other_types_are_not_implemented(self, offline: ContainerDriver) -> None:
        with pytest.raises(NotImplementedError, match="Container"):
            offline.build("VM", image_id=IMAGE, name="amp", owner="o")


class TestUnreachableApi:
    def test_refused_connection_is_retryable_backend_unavailable(
        self, offline: ContainerDriver
    ) -> None:
        with pytest.raises(AmphoraComputeError) as err:
            offline.find()
        assert (err.value.reason, err.value.retryable) == (Reason.BACKEND_UNAVAILABLE, True)
        assert "Connection refused" in str(err.value)
        assert err.value.__cause__ is not None

    def test_silent_server_is_a_retryable_timeout(self) -> None:
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(1)  # accepts TCP, never speaks TLS
            configuration = k8s.Configuration()
            configuration.host = f"https://127.0.0.1:{silent.getsockname()[1]}"
            configuration.retries = 0
            with k8s.ApiClient(configuration) as client:
                driver = ContainerDriver(
                    namespace="x", api_client=client, connect_timeout=0.3, read_timeout=0.3
                )
                with pytest.raises(AmphoraComputeError) as err:
                    driver.get_amphora(amphora_id="0f6c2e4a")
        assert (err.value.reason, err.value.retryable) == (Reason.TIMEOUT, True)
