"""The Go-built control plane is a real Kubernetes, not a mock (issue 4, "Done means").

Scheduling onto kwok Nodes, structural-schema and CEL validation, garbage collection, namespace
finalization, RBAC, and durability across apiserver and etcd restarts.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from amphora_devtools.control_plane import LocalControlPlane
from kubernetes import client as k8s
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from tests.fixtures.control_plane import Cluster, Kubectl

pytestmark = pytest.mark.cluster

TIMEOUT = 90.0
T = TypeVar("T")

GROUP = "cp-test.amphora.dev"
WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"widgets.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.minReplicas <= self.replicas",
                                        "message": "minReplicas must not exceed replicas",
                                        "fieldPath": ".minReplicas",
                                    }
                                ],
                                "properties": {
                                    "size": {"type": "string", "enum": ["small", "large"]},
                                    "replicas": {
                                        "type": "integer",
                                        "minimum": 0,
                                        "maximum": 10,
                                        "default": 1,
                                    },
                                    "minReplicas": {"type": "integer", "minimum": 0, "default": 0},
                                },
                            }
                        },
                    }
                },
            }
        ],
    },
}


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = TIMEOUT) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.25)


def status_of(call: Callable[[], object]) -> int:
    """HTTP status of an API call: 200 on success, else the ApiException's status."""
    try:
        call()
    except ApiException as error:
        return int(error.status)
    return 200


def _local_plane(control_plane: Cluster) -> LocalControlPlane:
    if control_plane.plane is None:
        pytest.skip("needs the Go-built control plane (kwok Nodes, restarts), not kind")
    return control_plane.plane


@pytest.fixture
def namespace(kube_api: ApiClient) -> Iterator[str]:
    name = f"cp-test-{uuid.uuid4().hex[:8]}"
    k8s.CoreV1Api(kube_api).create_namespace({"metadata": {"name": name}})
    yield name
    k8s.CoreV1Api(kube_api).delete_namespace(name)


@pytest.fixture(scope="module")
def widget_crd(kube_api: ApiClient) -> Iterator[str]:
    """Install the Widget CRD, wait until it is Established, remove it afterwards."""
    extensions = k8s.ApiextensionsV1Api(kube_api)
    name = WIDGET_CRD["metadata"]["name"]
    extensions.create_custom_resource_definition(WIDGET_CRD)

    def established() -> bool:
        conditions = extensions.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(f"CRD {name} Established", established)
    yield name
    extensions.delete_custom_resource_definition(name)


def test_deployment_pod_is_scheduled_onto_a_kwok_node_and_runs(
    kube_api: ApiClient, namespace: str, control_plane: Cluster
) -> None:
    apps, core = k8s.AppsV1Api(kube_api), k8s.CoreV1Api(kube_api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [{"name": "web", "image": "registry.k8s.io/pause:3.10"}]
                    },
                },
            },
        },
    )

    def running_pod() -> k8s.V1Pod | None:
        pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
        return next((p for p in pods if p.status.phase == "Running"), None)

    pod = wait_for("a Running pod of deployment web", running_pod)
    assert pod.spec.node_name, "scheduled"
    assert pod.status.pod_ip
    if control_plane.plane is not None:
        node = core.read_node(pod.spec.node_name)
        assert node.metadata.annotations["kwok.x-k8s.io/node"] == "fake"
        assert node.metadata.labels["topology.kubernetes.io/zone"] in {"zone-a", "zone-b"}
    wait_for(
        "deployment web to report 1 available replica",
        lambda: apps.read_namespaced_deployment("web", namespace).status.available_replicas == 1,
    )


def test_kwok_nodes_are_ready_in_two_zones(kubectl: Kubectl, control_plane: Cluster) -> None:
    _local_plane(control_plane)
    nodes = json.loads(kubectl("get", "nodes", "-l", "type=kwok", "-o", "json").stdout)["items"]
    assert len(nodes) >= 2
    assert {n["metadata"]["labels"]["topology.kubernetes.io/zone"] for n in nodes} >= {
        "zone-a",
        "zone-b",
    }
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", node["metadata"]["name"]


def test_namespace_deletion_is_finalized(kube_api: ApiClient) -> None:
    core = k8s.CoreV1Api(kube_api)
    name = f"cp-test-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_config_map(name, {"metadata": {"name": "content"}})
    core.delete_namespace(name)
    wait_for(
        f"namespace {name} to be gone", lambda: status_of(lambda: core.read_namespace(name)) == 404
    )


def test_crd_accepts_a_valid_object(kube_api: ApiClient, widget_crd: str, namespace: str) -> None:
    objects = k8s.CustomObjectsApi(kube_api)
    body = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Widget",
        "metadata": {"name": "ok"},
        "spec": {"size": "small", "replicas": 3},
    }

    def created() -> dict[str, Any] | None:
        # The new resource is served a moment after the CRD reports Established.
        try:
            result: dict[str, Any] = objects.create_namespaced_custom_object(
                GROUP, "v1", namespace, "widgets", body
            )
        except ApiException as error:
            if error.status != 404:
                raise
            return None
        return result

    widget = wait_for("the widgets resource to be served", created)
    assert widget["spec"] == {"size": "small", "replicas": 3, "minReplicas": 0}, "defaults applied"


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"size": "small", "replicas": 11}, "spec.replicas", "less than or equal to 10"),
        ({"size": "medium"}, "spec.size", 'Unsupported value: "medium"'),
        ({"size": "small", "replicas": "three"}, "spec.replicas", "must be of type integer"),
        ({"replicas": 1}, "spec.size", "Required value"),
        (
            {"size": "small", "replicas": 2, "minReplicas": 5},
            "spec.minReplicas",
            "minReplicas must not exceed replicas",
        ),
    ],
    ids=["maximum", "enum", "type", "required", "cel-rule"],
)
def test_crd_rejects_an_invalid_object_with_the_field_error(
    kube_api: ApiClient,
    widget_crd: str,
    namespace: str,
    spec: dict[str, Any],
    field: str,
    message: str,
) -> None:
    objects = k8s.CustomObjectsApi(kube_api)
    body = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Widget",
        "metadata": {"name": "bad"},
        "spec": spec,
    }
    wait_for(
        "the widgets resource to be served",
        lambda: (
            status_of(
                lambda: objects.list_namespaced_custom_object(GROUP, "v1", namespace, "widgets")
            )
            == 200
        ),
    )
    with pytest.raises(ApiException) as raised:
        objects.create_namespaced_custom_object(GROUP, "v1", namespace, "widgets", body)
    assert raised.value.status == 422
    status = json.loads(raised.value.body)
    assert status["reason"] == "Invalid"
    assert f"{field}:" in status["message"] and message in status["message"], status["message"]
    assert field in {cause.get("field") for cause in status["details"]["causes"]}


def test_deleting_an_owner_garbage_collects_the_owned_object(
    kube_api: ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
    }
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "owned", "ownerReferences": [reference]}}
    )
    core.delete_namespaced_config_map("owner", namespace)
    wait_for(
        "the owned ConfigMap to be garbage-collected",
        lambda: status_of(lambda: core.read_namespaced_config_map("owned", namespace)) == 404,
    )


def test_rbac_refuses_an_unprivileged_service_account(
    kube_api: ApiClient, namespace: str, control_plane: Cluster
) -> None:
    core, rbac = k8s.CoreV1Api(kube_api), k8s.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = control_plane.service_account_token(namespace, "nobody")

    with control_plane.api_client(token) as client:
        review = k8s.AuthenticationV1Api(client).create_self_subject_review({})
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:nobody"
        with pytest.raises(ApiException) as raised:
            k8s.CoreV1Api(client).list_namespaced_secret(namespace)
        assert raised.value.status == 403
        assert 'cannot list resource "secrets"' in json.loads(raised.value.body)["message"]

        # Positive control: the same token may list ConfigMaps once a RoleBinding grants it.
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "read-configmaps"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "nobody-reads-configmaps"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "read-configmaps",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}],
            },
        )
        wait_for(
            "the RoleBinding to take effect",
            lambda: (
                status_of(lambda: k8s.CoreV1Api(client).list_namespaced_config_map(namespace))
                == 200
            ),
        )

    with control_plane.api_client("not-a-token") as client:
        assert status_of(lambda: k8s.CoreV1Api(client).list_namespaced_secret(namespace)) == 401


def test_apiserver_restart_keeps_data(
    kube_api: ApiClient, namespace: str, control_plane: Cluster
) -> None:
    plane = _local_plane(control_plane)
    core = k8s.CoreV1Api(kube_api)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "survivor"}, "data": {"key": "value"}}
    )
    plane.restart_apiserver()
    assert core.read_namespaced_config_map("survivor", namespace).data == {"key": "value"}


def test_etcd_outage_is_survived(
    kube_api: ApiClient, namespace: str, control_plane: Cluster
) -> None:
    plane = _local_plane(control_plane)
    core = k8s.CoreV1Api(kube_api)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "survivor"}, "data": {"key": "value"}}
    )
    plane.stop_etcd()
    wait_for("the apiserver to report not ready", lambda: not plane.is_ready())
    plane.start_etcd()
    wait_for("the apiserver to be ready again", plane.is_ready)
    assert core.read_namespaced_config_map("survivor", namespace).data == {"key": "value"}
