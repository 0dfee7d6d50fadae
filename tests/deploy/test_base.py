"""The kustomize base installed on the real control plane, and the operator running as its account.

Order matters within this module (pytest keeps file order): the base is installed once, then its
RBAC is checked with SubjectAccessReviews, then ``amphora-operator run`` is started with a
kubeconfig that holds only the ServiceAccount's token and reconciles Amphorae end to end.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.deploy.support import (
    DEPLOY,
    EXAMPLES,
    GROUP,
    OPERATOR_NAMESPACE,
    PLURAL,
    TIMEOUT,
    VERSION,
    Doc,
    Installer,
    OperatorRun,
    amphora,
    assert_access,
    delete_amphorae,
    find,
    force_release,
    install,
    kustomize,
    load_docs,
    phase,
    service_account_kubeconfig,
    wait_until,
)
from tests.fixtures.control_plane import Cluster, Kubectl

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def base(installer: Installer, kubectl: Kubectl, kube_api: ApiClient) -> list[Doc]:
    """deploy/base, server dry-run then applied, with the CRD established."""
    docs = kustomize(kubectl, DEPLOY / "base")
    install(installer, docs)
    kubectl(
        "wait", "--for=condition=Established", f"--timeout={TIMEOUT:.0f}s",
        f"customresourcedefinition/{PLURAL}.{GROUP}",
    )  # fmt: skip
    return docs


def _namespace(installer: Installer, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    installer.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])
    return name


@pytest.fixture(scope="module")
def tenant(installer: Installer, base: list[Doc]) -> str:
    """A namespace that hosts Amphorae, with examples/tenant-rbac.yaml applied."""
    name = _namespace(installer, "deploy-tenant")
    installer.apply(load_docs(EXAMPLES / "tenant-rbac.yaml"), namespace=name)
    return name


@pytest.fixture(scope="module")
def stranger(installer: Installer, base: list[Doc]) -> str:
    """A namespace without the tenant RoleBindings."""
    return _namespace(installer, "deploy-stranger")


def operator_config(kubectl: Kubectl) -> Doc:
    """The dev-noop overlay's configuration, plus a ``container`` profile that Amphorae can
    pick with ``spec.driver: container`` (to prove the container driver's role suffices)."""
    rendered = kustomize(kubectl, DEPLOY / "overlays" / "dev-noop")
    config_map = next(d for d in rendered if d["kind"] == "ConfigMap")
    config: Doc = yaml.safe_load(config_map["data"]["config.yaml"])
    config["profiles"]["container"] = {"driver": "container"}
    return config


@pytest.fixture(scope="module")
def operator(
    control_plane: Cluster,
    base: list[Doc],
    kubectl: Kubectl,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorRun]:
    """``amphora-operator run`` cluster-wide with leader election, as the ServiceAccount."""
    workdir = tmp_path_factory.mktemp("operator-as-service-account")
    deployment = find(base, "Deployment", "amphora-operator")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--leader-election" in args
    run = OperatorRun(
        workdir=workdir,
        kubeconfig=service_account_kubeconfig(control_plane, workdir / "kubeconfig"),
        config=operator_config(kubectl),
        args=[
            "--leader-election",
            "--lease-namespace", OPERATOR_NAMESPACE,
            "--identity", f"deploy-test-{uuid.uuid4().hex[:6]}",
        ],
    )  # fmt: skip
    run.start()
    yield run
    run.stop()


@pytest.fixture
def operator_log_on_failure(
    request: pytest.FixtureRequest, operator: OperatorRun
) -> Iterator[OperatorRun]:
    """Print the operator's log after a failed test (pytest shows it with the failure)."""
    yield operator
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        print(f"--- operator log ({operator.log_path})\n{operator.logs()}")


def _create(kube_api: ApiClient, namespace: str, body: Doc) -> None:
    k8s.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body
    )


def _wait_ready(kube_api: ApiClient, namespace: str, names: list[str]) -> None:
    wait_until(
        lambda: {n: phase(kube_api, namespace, n) for n in names},
        lambda got: all(p == "Ready" for p in got.values()),
        timeout=TIMEOUT,
        what=f"Amphorae {names} in {namespace} Ready",
    )


def _cleanup(kube_api: ApiClient, namespace: str) -> None:
    try:
        delete_amphorae(kube_api, namespace)
    finally:
        force_release(kube_api, namespace)


# -- the manifests ----------------------------------------------------------------------------


def test_base_applies_with_server_dry_run_then_for_real(
    base: list[Doc], kubectl: Kubectl, installer: Installer
) -> None:
    """Every object of the base exists on the server, and a second apply is accepted too."""
    kinds = {d["kind"] for d in base}
    assert {
        "Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole",
        "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap", "Deployment", "Service",
    } <= kinds  # fmt: skip
    names = kubectl("get", "-f", "-", "-o", "name", stdin=yaml.safe_dump_all(base)).stdout
    assert len(names.split()) == len(base)
    installer.apply(base)  # idempotent: GitOps re-applies the same manifests forever


def test_deployment_is_accepted_and_its_pod_scheduled(base: list[Doc], kube_api: ApiClient) -> None:
    """The Pod passes admission, including the namespace's restricted Pod Security level.

    No image exists here (kwok only pretends to run Pods), so running is not asserted.
    """
    core = k8s.CoreV1Api(kube_api)
    selector = "app.kubernetes.io/name=amphora-operator,app.kubernetes.io/component=operator"

    def scheduled() -> list[str]:
        pods = core.list_namespaced_pod(OPERATOR_NAMESPACE, label_selector=selector).items
        return [p.spec.node_name for p in pods if p.spec.node_name]

    nodes = wait_until(scheduled, lambda n: len(n) == 1, timeout=TIMEOUT, what="Pod scheduled")
    assert nodes[0]
    namespace = core.read_namespace(OPERATOR_NAMESPACE)
    assert namespace.metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"


# -- RBAC -------------------------------------------------------------------------------------


def _needs(tenant: str, anywhere: str) -> list[dict[str, Any]]:
    """(SubjectAccessReview attributes) the operator and its drivers use."""
    amphorae = {"group": GROUP, "resource": PLURAL}
    return [
        # kopf: watch and patch (finalizer, progress annotations) Amphorae cluster-wide.
        {"verb": "list", **amphorae},
        {"verb": "watch", **amphorae},
        {"verb": "patch", "namespace": anywhere, **amphorae},
        {"verb": "patch", "namespace": anywhere, "subresource": "status", **amphorae},
        {"verb": "create", "resource": "events", "namespace": anywhere},
        {"verb": "list", "resource": "customresourcedefinitions", "group": "apiextensions.k8s.io"},
        {"verb": "watch", "resource": "customresourcedefinitions", "group": "apiextensions.k8s.io"},
        # Leader election.
        *(
            {"verb": v, "resource": "leases", "group": "coordination.k8s.io",
             "namespace": OPERATOR_NAMESPACE, "name": "amphora-operator"}
            for v in ("get", "update")
        ),
        {"verb": "create", "resource": "leases", "group": "coordination.k8s.io",
         "namespace": OPERATOR_NAMESPACE},
        # The record of pending Orphan releases.
        *({"verb": v, "resource": "configmaps", "namespace": OPERATOR_NAMESPACE,
           "name": "amphora-operator-releases"} for v in ("get", "update")),
        {"verb": "create", "resource": "configmaps", "namespace": OPERATOR_NAMESPACE},
        # secretRefs in a namespace bound by examples/tenant-rbac.yaml.
        {"verb": "get", "resource": "secrets", "namespace": tenant, "name": "any-referenced"},
        # The container driver in that namespace.
        *({"verb": v, "resource": "statefulsets", "group": "apps", "namespace": tenant}
          for v in ("get", "list", "create", "patch", "delete")),
        {"verb": "update", "resource": "statefulsets", "group": "apps", "namespace": tenant,
         "subresource": "finalizers"},
        *({"verb": v, "resource": "secrets", "namespace": tenant}
          for v in ("create", "update", "patch", "deletecollection")),
        *({"verb": v, "resource": "networkpolicies", "group": "networking.k8s.io",
           "namespace": tenant} for v in ("get", "create", "update", "patch", "deletecollection")),
        {"verb": "list", "resource": "pods", "namespace": tenant},
        {"verb": "list", "resource": "events", "namespace": tenant},
    ]  # fmt: skip


def _refused(tenant: str, stranger: str) -> list[dict[str, Any]]:
    """What a compromised operator must still not be able to do."""
    return [
        # No Secret outside the bound namespaces: not in a stranger's namespace, not cluster-wide,
        # not in kube-system, not its own clouds.yaml Secret (the kubelet mounts that one).
        {"verb": "get", "resource": "secrets", "namespace": stranger, "name": "x"},
        {"verb": "get", "resource": "secrets", "namespace": "kube-system", "name": "x"},
        {"verb": "get", "resource": "secrets"},
        {"verb": "list", "resource": "secrets"},
        {"verb": "get", "resource": "secrets", "namespace": OPERATOR_NAMESPACE,
         "name": "openstack-clouds"},
        # Not even in a bound namespace can it enumerate or watch Secrets.
        {"verb": "list", "resource": "secrets", "namespace": tenant},
        {"verb": "watch", "resource": "secrets", "namespace": tenant},
        # No workloads outside the bound namespaces.
        {"verb": "create", "resource": "statefulsets", "group": "apps", "namespace": stranger},
        {"verb": "create", "resource": "pods", "namespace": tenant},
        {"verb": "create", "resource": "pods", "namespace": stranger},
        # Cluster administration.
        {"verb": "delete", "resource": "nodes"},
        {"verb": "create", "resource": "clusterroles", "group": "rbac.authorization.k8s.io"},
        {"verb": "create", "resource": "rolebindings", "group": "rbac.authorization.k8s.io",
         "namespace": tenant},
        {"verb": "escalate", "resource": "clusterroles", "group": "rbac.authorization.k8s.io"},
        {"verb": "impersonate", "resource": "serviceaccounts"},
        {"verb": "delete", "resource": "customresourcedefinitions",
         "group": "apiextensions.k8s.io"},
        # Amphorae belong to their users: the operator neither creates nor deletes them.
        {"verb": "create", "group": GROUP, "resource": PLURAL, "namespace": tenant},
        {"verb": "delete", "group": GROUP, "resource": PLURAL, "namespace": tenant},
        {"verb": "update", "group": GROUP, "resource": PLURAL, "namespace": tenant},
        # Only its own Lease, only in its own namespace.
        {"verb": "update", "resource": "leases", "group": "coordination.k8s.io",
         "namespace": OPERATOR_NAMESPACE, "name": "kube-scheduler"},
        {"verb": "update", "resource": "leases", "group": "coordination.k8s.io",
         "namespace": "kube-system", "name": "amphora-operator"},
        {"verb": "get", "resource": "configmaps", "namespace": tenant, "name": "x"},
        # Only its own ConfigMap of pending releases.
        {"verb": "update", "resource": "configmaps", "namespace": OPERATOR_NAMESPACE,
         "name": "amphora-operator-config"},
        {"verb": "create", "resource": "configmaps", "namespace": tenant},
    ]  # fmt: skip


def test_service_account_may_do_what_the_operator_needs(
    kube_api: ApiClient, tenant: str, stranger: str
) -> None:
    assert_access(kube_api, [(True, a) for a in _needs(tenant, stranger)])


def test_service_account_may_not_do_anything_else(
    kube_api: ApiClient, tenant: str, stranger: str
) -> None:
    assert_access(kube_api, [(False, a) for a in _refused(tenant, stranger)])


# -- the operator as its ServiceAccount -------------------------------------------------------


def test_operator_reconciles_an_amphora_as_its_service_account(
    operator_log_on_failure: OperatorRun, kube_api: ApiClient, stranger: str
) -> None:
    """A VM Amphora without Secret references needs no grant in its namespace."""
    try:
        _create(kube_api, stranger, amphora("plain-vm"))
        _wait_ready(kube_api, stranger, ["plain-vm"])
        # No Events on the way to Ready; a spec change (a real transition) posts some.
        k8s.CustomObjectsApi(kube_api).patch_namespaced_custom_object(
            "amphora-operator.dev", "v1alpha1", stranger, "amphorae", "plain-vm",
            {"spec": {"image": "amphora-image-2"}},
        )  # fmt: skip
        core = k8s.CoreV1Api(kube_api)
        wait_until(  # Events are posted in the background, after the status write
            lambda: {
                e.reason
                for e in core.list_namespaced_event(
                    stranger, field_selector="involvedObject.name=plain-vm"
                ).items
            },
            lambda reasons: {"Replacing", "Replaced"} <= reasons,
            timeout=TIMEOUT,
            what="the operator's Events on the Amphora",
        )
        lease = k8s.CoordinationV1Api(kube_api).read_namespaced_lease(
            "amphora-operator", OPERATOR_NAMESPACE
        )
        assert lease.spec.holder_identity == operator_log_on_failure.args[-1]
    finally:
        _cleanup(kube_api, stranger)
    log = operator_log_on_failure.logs(tail=10**7)
    for refusal in ("Forbidden", "forbidden", "Not enough permissions"):
        assert refusal not in log, f"the operator met a refusal: {refusal!r}"


def test_examples_apply_and_reach_ready(
    operator_log_on_failure: OperatorRun, installer: Installer, kube_api: ApiClient, tenant: str
) -> None:
    """examples/: the clouds Secret in amphora-system, the rest in a tenant namespace; the
    Secret-referencing example reaches Ready, so the operator read the tenant's Secret."""
    installer.apply(load_docs(EXAMPLES / "clouds-secret.yaml"), namespace=OPERATOR_NAMESPACE)
    files = ["vm-amphora", "baremetal-amphora", "container-amphora", "secret-user-data"]
    docs = load_docs(*(EXAMPLES / f"{f}.yaml" for f in files))
    try:
        installer.apply(docs, namespace=tenant)
        names = [d["metadata"]["name"] for d in docs if d["kind"] == "Amphora"]
        assert len(names) == 4
        _wait_ready(kube_api, tenant, names)
    finally:
        _cleanup(kube_api, tenant)


def test_container_driver_builds_and_deletes_within_its_role(
    operator_log_on_failure: OperatorRun, kube_api: ApiClient, tenant: str
) -> None:
    """The container driver, inside the operator, with only the tenant RoleBinding."""
    apps = k8s.AppsV1Api(kube_api)
    example = load_docs(EXAMPLES / "container-amphora.yaml")[0]
    body = copy.deepcopy(example)
    body["metadata"]["name"] = "in-a-pod"
    body["spec"]["driver"] = "container"
    body["spec"]["userData"] = {"content": "#cloud-config\n"}
    try:
        _create(kube_api, tenant, body)
        _wait_ready(kube_api, tenant, ["in-a-pod"])
        assert len(apps.list_namespaced_stateful_set(tenant).items) == 1
        policies = k8s.NetworkingV1Api(kube_api).list_namespaced_network_policy(tenant).items
        assert len(policies) == 1  # from spec.securityGroups
        delete_amphorae(kube_api, tenant)
        wait_until(
            lambda: apps.list_namespaced_stateful_set(tenant).items,
            lambda left: not left,
            timeout=TIMEOUT,
            what="StatefulSet deleted",
        )
    finally:
        _cleanup(kube_api, tenant)


def test_secret_ref_outside_bound_namespaces_is_refused(
    operator_log_on_failure: OperatorRun, kube_api: ApiClient, stranger: str
) -> None:
    """In a namespace without the tenant RoleBinding the API refuses the Secret read."""
    core = k8s.CoreV1Api(kube_api)
    core.create_namespaced_secret(
        stranger,
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name="boot", labels={"amphora-operator.dev/usable": "true"}),
            string_data={"u": "#cloud-config"},
        ),
    )
    try:
        _create(
            kube_api, stranger, amphora("needs-secret", userData={"secretRef": {"name": "boot",
                                                                                "key": "u"}})
        )  # fmt: skip
        api = k8s.CustomObjectsApi(kube_api)
        status = wait_until(
            lambda: api.get_namespaced_custom_object(
                "amphora-operator.dev", "v1alpha1", stranger, "amphorae", "needs-secret"
            ).get("status", {}),
            lambda st: st.get("failureReason") == "SecretForbidden",
            timeout=TIMEOUT,
            what="the refused Secret read reported in status",
        )
        assert status["phase"] == "Failed"
        assert "spec.userData.secretRef" in status["fault"]
        assert "amphora-operator-secret-refs" in status["fault"]
        assert "Traceback" not in operator_log_on_failure.logs()
    finally:
        _cleanup(kube_api, stranger)
