"""Helpers of the installation tests: rendering, applying and removing manifests, and RBAC checks.

The manifests are tested the way an admin uses them: ``kubectl kustomize`` renders them and
``kubectl apply`` sends them, first with ``--dry-run=server`` (every admission step, nothing
stored), then for real.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from amphora_devtools.control_plane import free_port
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

T = TypeVar("T")
Doc = dict[str, Any]


def wait_until(
    probe: Callable[[], T], until: Callable[[T], bool], *, timeout: float, what: str
) -> T:
    """Poll ``probe`` until ``until`` holds; fail with the last value after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if until(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached within {timeout:.0f} s; last: {value!r}")
        time.sleep(0.25)


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


@dataclass
class OperatorRun:
    """``amphora-operator run`` as a subprocess that knows only the ServiceAccount's kubeconfig.

    KUBECONFIG and HOME point at the work directory as well as ``--kubeconfig``: the container
    driver builds its own client from the *default* kubeconfig (KUBECONFIG as it was when the
    kubernetes package was imported, else ~/.kube/config), so an admin KUBECONFIG inherited
    from the test's environment would otherwise act for it. In a Pod both use in-cluster
    credentials, so the Deployment is not affected.
    """

    workdir: Path
    kubeconfig: Path
    config: Doc
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    health_port: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / "operator.log"

    def start(self) -> None:
        config_path = self.workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(self.config))
        self.health_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env.update(KUBECONFIG=str(self.kubeconfig), HOME=str(self.workdir))
        command = [
            sys.executable, "-m", "amphora_operator.cli", "run",
            "--config", str(config_path), "--kubeconfig", str(self.kubeconfig),
            "--metrics-port", "0", "--health-port", str(self.health_port),
            "--log-format", "plain", *self.args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_until(self._healthy, bool, timeout=TIMEOUT, what="operator /healthz answers")

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"the operator exited {self.process.returncode}:\n{self.logs()}")
        url = f"http://127.0.0.1:{self.health_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL after 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def logs(self, tail: int = 12000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-tail:]


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
