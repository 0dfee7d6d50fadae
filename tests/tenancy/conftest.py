"""Two tenant namespaces, A and B, each with a user bound to examples/tenant-user-rbac.yaml
(Amphorae only, no Secrets), and one operator serving both."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from amphora_operator.model import GROUP, PLURAL, VERSION
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.fixtures.control_plane import Cluster
from tests.fixtures.operator import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
TENANT_ROLE = REPO / "examples" / "tenant-user-rbac.yaml"


@dataclass
class Tenant:
    """A namespace and its user's API client (impersonated: the admin credential acts as it)."""

    namespace: str
    user: str
    api: ApiClient

    @property
    def custom(self) -> k8s.CustomObjectsApi:
        return k8s.CustomObjectsApi(self.api)

    def create(self, name: str, **spec: Any) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Amphora",
                "metadata": {"name": name}, "spec": spec}  # fmt: skip
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def patch(self, name: str, **spec: Any) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def get(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, self.namespace, PLURAL, name
        )


def impersonating(cluster: Cluster, user: str) -> ApiClient:
    api = cluster.api_client()
    api.set_default_header("Impersonate-User", user)
    return api


@pytest.fixture
def tenants(
    control_plane: Cluster, kube_api: ApiClient, amphora_crd: dict[str, Any]
) -> Iterator[tuple[Tenant, Tenant]]:
    core, rbac = k8s.CoreV1Api(kube_api), k8s.RbacAuthorizationV1Api(kube_api)
    role = yaml.safe_load(TENANT_ROLE.read_text())
    try:
        rbac.create_cluster_role(role)
    except k8s.ApiException as e:
        if e.status != 409:
            raise
    made = []
    for label in ("a", "b"):
        namespace, user = f"tenant-{label}-{uuid.uuid4().hex[:8]}", f"{label}-user"
        core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace)))
        rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": "amphora-tenant"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": role["metadata"]["name"]},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        })  # fmt: skip
        made.append(Tenant(namespace, user, impersonating(control_plane, user)))
    yield made[0], made[1]
    for tenant in made:
        tenant.api.close()
        core.delete_namespace(tenant.namespace)


Launch = Callable[[dict[str, Any]], OperatorProcess]


@pytest.fixture
def serve(
    control_plane: Cluster,
    kube_api: ApiClient,
    tenants: tuple[Tenant, Tenant],
    tmp_path: Path,
) -> Iterator[Launch]:
    """Start one operator for both namespaces; afterwards every Amphora of both is deleted
    through it (leftovers lose their finalizers) and it is stopped."""
    started: list[OperatorProcess] = []
    a, b = tenants

    def start(config: dict[str, Any]) -> OperatorProcess:
        operator = OperatorProcess(
            cluster=control_plane, namespace=a.namespace, workdir=tmp_path / "operator",
            config=config, extra_args=["--namespace", b.namespace], health=True,
        )  # fmt: skip
        operator.start()
        operator.wait_ready()
        started.append(operator)
        return operator

    yield start
    custom = k8s.CustomObjectsApi(kube_api)
    for tenant in tenants:
        for item in custom.list_namespaced_custom_object(GROUP, VERSION, tenant.namespace, PLURAL)[
            "items"
        ]:
            custom.delete_namespaced_custom_object(
                GROUP, VERSION, tenant.namespace, PLURAL, item["metadata"]["name"]
            )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(
        custom.list_namespaced_custom_object(GROUP, VERSION, t.namespace, PLURAL)["items"]
        for t in tenants
    ):
        time.sleep(0.5)
    for operator in started:
        operator.stop()
    for tenant in tenants:
        for item in custom.list_namespaced_custom_object(GROUP, VERSION, tenant.namespace, PLURAL)[
            "items"
        ]:
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, tenant.namespace, PLURAL, item["metadata"]["name"],
                {"metadata": {"finalizers": None}},
            )  # fmt: skip
