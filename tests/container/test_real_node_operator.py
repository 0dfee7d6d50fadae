"""End to end through the operator: a Container Amphora is Ready in a namespace enforcing the
``restricted`` Pod Security level only once its container serves on the real kubelet Node, and
deleting the Amphora removes the container from containerd."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from amphora_devtools import images
from amphora_devtools.real_node import RealNode
from amphora_drivers.testing import make_ssh_public_key, wait_for
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.container.support import REAL_NODE_OPTIONS, RESTRICTED
from tests.fixtures.control_plane import Kubectl
from tests.fixtures.operator import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    noop_config,
    read_status,
)

pytestmark = [pytest.mark.cluster, pytest.mark.real_node]


def test_container_amphora_is_ready_when_it_serves_under_restricted(
    real_node: RealNode,
    namespace: str,
    kube_api: ApiClient,
    kubectl: Kubectl,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    core = k8s.CoreV1Api(kube_api)
    core.patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})
    config = noop_config(
        tmp_path / "noop.json",
        profiles={"container": {"driver": "container", "options": REAL_NODE_OPTIONS}},
    )
    config["defaults"]["Container"] = "container"
    operator = start_operator(config)
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Amphora",
        "metadata": {"name": "real-a"},
        "spec": {
            "type": "Container",
            "image": images.STANDIN,
            "keys": [make_ssh_public_key("ops")],
            "configDriveFiles": [{"path": "/etc/octavia/agent.conf", "content": "[x]\ny = 1\n"}],
        },
    }
    api = k8s.CustomObjectsApi(kube_api)
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    status = wait_for(
        lambda: read_status(kube_api, namespace, "real-a"),
        lambda s: s.get("phase") == "Ready",
        timeout=90,
    )
    (pod,) = core.list_namespaced_pod(namespace).items
    assert pod.spec.node_name == real_node.name
    assert all(c.ready for c in pod.status.container_statuses), "Ready only when serving"
    assert pod.status.pod_ip in status["addresses"]
    shown = kubectl(
        "exec", "-n", namespace, pod.metadata.name, "--", "cat", "/etc/octavia/agent.conf"
    )
    assert shown.stdout == "[x]\ny = 1\n"

    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "real-a")

    def running() -> list[str]:
        """Processes of the namespace still running (test_real_node.py waits out the GC)."""
        containers = real_node.containers()
        return [
            cid
            for cid, status in real_node.tasks().items()
            if status == "RUNNING"
            and containers.get(cid, {}).get("Labels", {}).get("io.kubernetes.pod.namespace")
            == namespace
        ]

    wait_for(running, lambda left: left == [], timeout=90)
    assert operator.process is not None and operator.process.poll() is None
