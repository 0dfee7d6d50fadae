"""Helpers of the installation tests: rendering, applying and removing manifests, and RBAC checks.

The manifests are tested the way an admin uses them: ``kubectl kustomize`` renders them and
``kubectl apply`` sends them, first with ``--dry-run=server`` (every admission step, nothing
stored), then for real.

Polling (``wait_until``) and the operator process come from the harness package
``amphora_devtools``, shared with the other suites, the benchmarks and the demo.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from amphora_devtools.operator_process import OperatorProcess
from amphora_devtools.wait import wait_until
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.fixtures.control_plane import Cluster, Kubectl

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
EXAMPLES = REPO / "examples"
OPERATOR_NAMESPACE = "amphora-system"
SERVICE_ACCOUNT = "amphora-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}"
GROUP, VERSION, PLURAL = "amphora-operator.dev", "v1alpha1", "amphorae"
CRD_NAME = f"{PLURAL}.{GROUP}"
#: Generous bounds for a loaded CI machine; the happy path takes a few seconds.
TIMEOUT = 60.0

Doc = dict[str, Any]


def kustomize(kubectl: Kubectl, directory: Path) -> list[Doc]:
    """The objects ``kubectl kustomize DIR`` renders (what ``kubectl apply -k DIR`` sends)."""
    rendered = kubectl("kustomize", str(directory)).stdout
    return [d for d in yaml.safe_load_all(rendered) if d]


def load_docs(*paths: Path) -> list[Doc]:
    """The objects of plain manifest files."""
    return [d for p in paths for d in yaml.safe_load_all(p.read_text()) if d]


def key(doc: Doc) -> tuple[str, str, str, str]:
    """Identity of an object: (apiVersion group, kind, namespace, name)."""
    meta = doc["metadata"]
    group = doc["apiVersion"].rpartition("/")[0]
    return group, doc["kind"], meta.get("namespace", ""), meta["name"]


def find(docs: Iterable[Doc], kind: str, name: str) -> Doc:
    """The one object of ``kind`` named ``name``."""
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def dump(docs: Iterable[Doc]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False)


@dataclass
class Installer:
    """Applies manifests and remembers them, so that a module can remove what it installed.

    The CRD is never removed: other test modules serve Amphorae with the same definition.
    """

    kubectl: Kubectl
    kube_api: ApiClient
    applied: dict[tuple[str, str, str, str], Doc] = field(default_factory=dict)

    def dry_run(self, docs: list[Doc], namespace: str | None = None) -> str:
        """``kubectl apply --dry-run=server``: the whole admission chain, nothing stored."""
        args = ["apply", "--dry-run=server", "-f", "-"]
        if namespace is not None:
            args += ["-n", namespace]
        return self.kubectl(*args, stdin=dump(docs)).stdout

    def apply(self, docs: list[Doc], namespace: str | None = None) -> str:
        """Server dry-run, then apply for real; remembered for :meth:`uninstall`."""
        self.dry_run(docs, namespace)
        args = ["apply", "-f", "-"]
        if namespace is not None:
            args += ["-n", namespace]
        out = self.kubectl(*args, stdin=dump(docs)).stdout
        for doc in docs:
            if namespace is not None and doc["kind"] not in CLUSTER_SCOPED:
                doc = {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}
            self.applied[key(doc)] = doc
        return out

    def prune_to(self, docs: list[Doc]) -> None:
        """Delete what an earlier apply created and ``docs`` no longer contain (kubectl's prune)."""
        keep = {key(d) for d in docs}
        stale = [
            d
            for k, d in self.applied.items()
            if k not in keep and d["kind"] not in ("Namespace", "CustomResourceDefinition")
        ]
        if stale:
            self.kubectl(
                "delete", "--ignore-not-found", "--wait=true", "-f", "-", stdin=dump(stale)
            )
            for doc in stale:
                self.applied.pop(key(doc))

    def uninstall(self) -> None:
        """Delete everything applied except the CRD; wait until the namespaces are gone."""
        docs = [d for d in self.applied.values() if d["kind"] != "CustomResourceDefinition"]
        namespaces = [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"]
        if docs:
            self.kubectl(
                "delete", "--ignore-not-found", "--wait=false", "-f", "-", stdin=dump(docs),
                check=False,
            )  # fmt: skip
        core = k8s.CoreV1Api(self.kube_api)

        def remaining() -> list[str]:
            names = []
            for name in namespaces:
                try:
                    core.read_namespace(name)
                except k8s.ApiException as e:
                    if e.status == 404:
                        continue
                    raise
                names.append(name)
            return names

        wait_until(remaining, lambda left: not left, timeout=120, what="namespaces deleted")
        self.applied.clear()


CLUSTER_SCOPED = frozenset(
    {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
)


def install(installer: Installer, docs: list[Doc]) -> None:
    """Apply like an admin on an empty cluster: the server dry-run of namespaced objects needs
    their Namespace to exist, so cluster-scoped objects go first (dry-run, then for real)."""
    cluster_scoped = [d for d in docs if d["kind"] in CLUSTER_SCOPED]
    installer.apply(cluster_scoped)
    installer.apply(docs)


def can_i(
    kube_api: ApiClient,
    verb: str,
    resource: str,
    *,
    namespace: str = "",
    group: str = "",
    subresource: str = "",
    name: str = "",
    user: str = OPERATOR_USER,
) -> bool:
    """A SubjectAccessReview for the operator's ServiceAccount (what ``kubectl auth can-i
    --as`` asks), with the ServiceAccount's groups so group bindings count too."""
    review = k8s.V1SubjectAccessReview(
        spec=k8s.V1SubjectAccessReviewSpec(
            user=user,
            groups=[
                "system:serviceaccounts",
                f"system:serviceaccounts:{OPERATOR_NAMESPACE}",
                "system:authenticated",
            ],
            resource_attributes=k8s.V1ResourceAttributes(
                verb=verb,
                resource=resource,
                group=group,
                namespace=namespace or None,
                subresource=subresource or None,
                name=name or None,
            ),
        )
    )
    answer = k8s.AuthorizationV1Api(kube_api).create_subject_access_review(review)
    return bool(answer.status.allowed)


def assert_access(
    kube_api: ApiClient, expected: list[tuple[bool, dict[str, Any]]], timeout: float = 15.0
) -> None:
    """Every (allowed?, attributes) pair holds; waits briefly, as RBAC changes reach the
    authorizer through its informers a moment after they are stored."""

    def wrong() -> list[tuple[bool, dict[str, Any]]]:
        return [(want, a) for want, a in expected if can_i(kube_api, **a) != want]

    wait_until(wrong, lambda w: not w, timeout=timeout, what="(expected, request) pairs that fail")


def service_account_kubeconfig(cluster: Cluster, path: Path) -> Path:
    """A kubeconfig holding only a fresh token of the operator's ServiceAccount (no admin
    credentials), with the server and CA of the admin kubeconfig."""
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    context_name = admin["current-context"]
    context = next(c for c in admin["contexts"] if c["name"] == context_name)["context"]
    server = next(c for c in admin["clusters"] if c["name"] == context["cluster"])["cluster"]
    token = cluster.service_account_token(OPERATOR_NAMESPACE, SERVICE_ACCOUNT)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": server}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [
            {"name": SERVICE_ACCOUNT, "context": {"cluster": "cluster", "user": SERVICE_ACCOUNT}}
        ],
        "current-context": SERVICE_ACCOUNT,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class OperatorRun(OperatorProcess):
    """``amphora-operator run`` as a subprocess that knows only the ServiceAccount's kubeconfig;
    ``start()`` returns once its /healthz answers.

    KUBECONFIG and HOME point at the work directory as well as ``--kubeconfig``: the container
    driver builds its own client from the *default* kubeconfig (KUBECONFIG as it was when the
    kubernetes package was imported, else ~/.kube/config), so an admin KUBECONFIG inherited
    from the test's environment would otherwise act for it. In a Pod both use in-cluster
    credentials, so the Deployment is not affected.
    """

    def __init__(self, workdir: Path, kubeconfig: Path, config: Doc, args: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env.update(KUBECONFIG=str(kubeconfig), HOME=str(workdir))
        super().__init__(
            kubeconfig=kubeconfig, workdir=workdir, config=config, extra_args=args,
            log_format="plain", health=True, env=env,
        )  # fmt: skip

    @property
    def args(self) -> list[str]:
        """The extra command-line arguments it was given."""
        return self.extra_args

    def start(self) -> None:
        super().start()
        self.wait_ready(TIMEOUT)

    def logs(self, tail: int = 12000) -> str:
        return super().logs()[-tail:]


def amphora(name: str, **spec: Any) -> Doc:
    """An Amphora manifest (namespace given at apply/create time)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Amphora",
        "metadata": {"name": name},
        "spec": {"type": "VM", "flavor": "amphora", "image": "tag:amphora", **spec},
    }


def phase(kube_api: ApiClient, namespace: str, name: str) -> str | None:
    obj = k8s.CustomObjectsApi(kube_api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    value = (obj.get("status") or {}).get("phase")
    return str(value) if value is not None else None


def phases(kube_api: ApiClient, namespace: str) -> dict[str, str | None]:
    items = k8s.CustomObjectsApi(kube_api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL
    )["items"]
    return {i["metadata"]["name"]: (i.get("status") or {}).get("phase") for i in items}


def delete_amphorae(kube_api: ApiClient, namespace: str, timeout: float = TIMEOUT) -> None:
    """Delete every Amphora of ``namespace`` and wait until the operator has released them."""
    api = k8s.CustomObjectsApi(kube_api)
    api.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    wait_until(
        lambda: phases(kube_api, namespace),
        lambda left: not left,
        timeout=timeout,
        what=f"Amphorae in {namespace} finalized by the operator",
    )


def force_release(kube_api: ApiClient, namespace: str) -> None:
    """Last resort in teardown: drop finalizers so that namespace deletion cannot hang."""
    api = k8s.CustomObjectsApi(kube_api)
    with contextlib.suppress(k8s.ApiException):
        for item in api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]:
            api.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, item["metadata"]["name"],
                {"metadata": {"finalizers": None}},
            )  # fmt: skip
