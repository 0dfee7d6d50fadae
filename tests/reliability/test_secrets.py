"""Secret values never leak: after a run that builds (and deletes) Amphorae from Secret user
data and a Secret config file, plus inline SSH keys, none of the marker values appears in the
operator's log, in any Event of the namespace, in the Amphora (status included) or in /metrics.

Secret values are searched as written and as the API carries them (base64). In ``--verbose``
mode the operator may log whole Amphora bodies (kopf does at DEBUG), which hold the spec's
inline public keys by design; there only the Secret-held values are searched for.
"""

from __future__ import annotations

import base64
import os
import shutil
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from amphora_operator.tenancy import USABLE_LABEL
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.fixtures.control_plane import Cluster
from tests.fixtures.nova_box import NovaBoxInfo
from tests.fixtures.operator import OperatorProcess, noop_config
from tests.operator.scenario import Steps, amphora, condition
from tests.reliability.conftest import Launch
from tests.reliability.support import (
    Fleet,
    free_port,
    log_records,
    record,
    scrape_text,
    wait_for_metrics,
)
from tests.reliability.test_crash_safety import nova_amphora, nova_config


def ssh_key(comment: str) -> str:
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + os.urandom(32)
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


class Markers:
    """Distinctive values in two Secrets and in an inline key, and where they must not be."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex
        self.user_data = f"#cloud-config\nruncmd: [echo USERDATA-MARKER-{tag}]\n"
        self.file = f"password=FILE-MARKER-{tag}\n"
        self.key = ssh_key(f"KEY-MARKER-{tag}@example")
        self.key_marker = f"KEY-MARKER-{tag}"

    def secret_needles(self) -> dict[str, str]:
        needles = {}
        for what, value in (("user data", self.user_data), ("file", self.file)):
            needles[what] = value.strip().split()[-1].strip("[]")
            needles[f"{what} (base64)"] = base64.b64encode(value.encode()).decode()
        return needles

    def all_needles(self) -> dict[str, str]:
        return {
            **self.secret_needles(),
            "inline key marker": self.key_marker,
            "inline key body": self.key.split()[1],
        }

    def create_secrets(self, core: k8s.CoreV1Api, namespace: str) -> None:
        for name, key, value in (("boot", "cloud", self.user_data), ("files", "conf", self.file)):
            core.create_namespaced_secret(
                namespace,
                k8s.V1Secret(
                    metadata=k8s.V1ObjectMeta(name=name, labels={USABLE_LABEL: "true"}),
                    string_data={key: value},
                ),
            )

    def spec(self) -> dict[str, Any]:
        return {
            "userData": {"secretRef": {"name": "boot", "key": "cloud"}},
            "configDriveFiles": [
                {"path": "/etc/amphora/agent.conf", "secretRef": {"name": "files", "key": "conf"}}
            ],
            "keys": [self.key],
        }


def leaks(haystacks: dict[str, str], needles: dict[str, str]) -> list[str]:
    return [
        f"{what} found in {where}"
        for where, text in haystacks.items()
        for what, needle in needles.items()
        if needle in text
    ]


def run_and_collect(
    launch: Launch,
    steps: Steps,
    fleet: Fleet,
    kube_api: ApiClient,
    namespace: str,
    config: dict[str, Any],
    verbose: bool,
    manifests: list[dict[str, Any]],
) -> tuple[dict[str, str], dict[str, str]]:
    """Build, observe and delete ``manifests``; return (haystacks outside objects, objects)."""
    port = free_port()
    extra = ["--metrics-port", str(port)] + (["--verbose"] if verbose else [])
    operator = launch(config, extra_args=extra)
    wait_for_metrics(port)
    names = [m["metadata"]["name"] for m in manifests]
    steps.apply(*manifests)
    fleet.wait_all(names, lambda i: (i.get("status") or {}).get("phase") == "Ready",
                   timeout=30, what="Ready")  # fmt: skip
    # A real transition posts Events (nothing does on the way to Ready): a tag change rolls
    # each Amphora out again, rebuilding from the Secrets, so Events join the haystacks.
    first = {n: steps.status(n).get("computeId") for n in names}
    for name in names:
        steps.patch_spec(name, tags=["rotated"])
    fleet.wait_all(
        names,
        lambda i: (
            (i.get("status") or {}).get("phase") == "Ready"
            and (i.get("status") or {}).get("computeId") != first[i["metadata"]["name"]]
        ),
        timeout=60,
        what="replaced",
    )
    objects = {f"Amphora {n}": str(steps.get(n)) for n in names}
    statuses = {f"status of {n}": str(steps.status(n)) for n in names}
    for name in names:
        steps.delete(name, wait=False)
    fleet.wait_empty(timeout=30)
    time.sleep(0.5)  # Events are posted asynchronously
    events = k8s.CoreV1Api(kube_api).list_namespaced_event(namespace).items
    assert events, "the run posted no Event at all"
    haystacks = {
        "the operator log": operator.logs(),
        "Events": "\n".join(str(e.to_dict()) for e in events),
        "/metrics": scrape_text(port),
        **statuses,
    }
    return haystacks, objects


@pytest.mark.parametrize("verbose", [False, True], ids=["info", "verbose"])
def test_secret_values_never_leak(
    launch: Launch,
    steps: Steps,
    fleet: Fleet,
    kube_api: ApiClient,
    namespace: str,
    state_file: Path,
    verbose: bool,
) -> None:
    markers = Markers()
    markers.create_secrets(k8s.CoreV1Api(kube_api), namespace)
    haystacks, objects = run_and_collect(
        launch, steps, fleet, kube_api, namespace, noop_config(state_file), verbose,
        [amphora("private", **markers.spec())],
    )  # fmt: skip
    # The Secret values reach the backend (so the test is not vacuous) ...
    assert haystacks.get("the operator log")
    # ... and appear nowhere else.
    found = leaks({**haystacks, **objects}, markers.secret_needles())
    if not verbose:
        # The key is the user's own (public) input in the spec; nowhere else.
        found += leaks(haystacks, {k: v for k, v in markers.all_needles().items() if "key" in k})
    record("secrets_" + ("verbose" if verbose else "info"), "leaks found", len(found))
    assert found == [], found


@pytest.mark.nova
def test_secret_values_never_leak_through_nova(
    launch: Launch,
    steps: Steps,
    fleet: Fleet,
    kube_api: ApiClient,
    namespace: str,
    state_file: Path,
    nova_box: NovaBoxInfo,
) -> None:
    """The Nova driver sends user data and keys over HTTP; its debug logs must not carry them."""
    markers = Markers()
    markers.create_secrets(k8s.CoreV1Api(kube_api), namespace)
    tag = f"rel-secret-{uuid.uuid4().hex[:8]}"
    haystacks, objects = run_and_collect(
        launch, steps, fleet, kube_api, namespace, nova_config(state_file, nova_box, tag), True,
        [nova_amphora(nova_box, "private-nova", **markers.spec())],
    )  # fmt: skip
    found = leaks({**haystacks, **objects}, markers.secret_needles())
    record("secrets_nova_verbose", "leaks found", len(found))
    assert found == [], found


# -- every logger at DEBUG, with the oldest and the newest kubernetes client allowed ----------

#: The oldest and the newest release of pyproject.toml's range ``kubernetes>=36.0.3,<38``:
#: the oldest logs every response body at DEBUG (``kubernetes.client.rest``), the newest does
#: not. (Releases before 36 lack the ``_content_type`` argument the finalizer patch needs;
#: with 36.0.0 the apiserver answered the operator's status patches 403.)
KUBERNETES_CLIENTS = ("36.0.3", "37.0.2")
CACHE = Path.home() / ".cache" / "amphora-operator"
#: Runs ``amphora-operator`` with every logger forced to DEBUG, whatever level anyone sets.
DEBUG_EVERYTHING = """
import logging, sys
from amphora_operator.cli import main
_set = logging.Logger.setLevel
logging.Logger.setLevel = lambda self, level: _set(self, logging.DEBUG)
logging.getLogger().setLevel(logging.DEBUG)
raise SystemExit(main(sys.argv[1:]))
"""


def kubernetes_client(version: str) -> Path:
    """A directory holding ``kubernetes==version`` and its dependencies pinned to this venv's
    versions, to put first on the operator's path. Installed once with pip, keyed by version;
    a failed install fails the test (never a skip)."""
    target = CACHE / f"kubernetes-client-{version}"
    if not (target / "kubernetes").is_dir():
        partial = CACHE / f"kubernetes-client-{version}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        # Its dependencies at this venv's versions (those it lacks, e.g. six, at their newest).
        frozen = subprocess.run(
            [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
            check=True, capture_output=True, text=True,
        ).stdout.splitlines()  # fmt: skip
        constraints = partial.with_suffix(".constraints.txt")
        constraints.write_text(
            "\n".join(line for line in frozen if not line.lower().startswith("kubernetes=="))
        )
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(partial),
             "--constraint", str(constraints), f"kubernetes=={version}"],
            check=True, timeout=600,
        )  # fmt: skip
        constraints.unlink()
        try:
            partial.rename(target)
        except OSError:  # another run installed it meanwhile
            shutil.rmtree(partial, ignore_errors=True)
    return target


class DebugEverythingOperator(OperatorProcess):
    """The operator with every logger at DEBUG and ``kubernetes`` from ``client_dir``."""

    def command(self) -> list[str]:
        command = super().command()
        assert command[1:3] == ["-m", "amphora_operator.cli"], command
        return [command[0], "-c", DEBUG_EVERYTHING, *command[3:]]


#: A clouds.yaml that YAML cannot parse, with a password on the line the parser quotes.
BROKEN_CLOUDS = "clouds:\n  broken:\n    auth: {{password: {marker}\n    region_name: [x\n"


@pytest.mark.parametrize("client", KUBERNETES_CLIENTS, ids=lambda v: f"kubernetes-{v}")
def test_debug_everywhere_leaks_no_secret_with_either_client(
    control_plane: Cluster,
    amphora_crd: dict[str, Any],
    steps: Steps,
    fleet: Fleet,
    kube_api: ApiClient,
    namespace: str,
    tmp_path: Path,
    state_file: Path,
    client: str,
) -> None:
    """``--verbose`` plus DEBUG for every logger: no Secret value (plain or base64, of a
    referenced key, of an unreferenced key, of a Secret that does not consent) and no
    password of a malformed inline clouds.yaml in the log, Events, status or /metrics."""
    client_dir = kubernetes_client(client)
    env = {**os.environ, "PYTHONPATH": str(client_dir)}
    seen = subprocess.run(
        [sys.executable, "-c", "import kubernetes; print(kubernetes.__version__)"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert seen == client, f"the operator would run kubernetes {seen}, not {client}"

    markers = Markers()
    core = k8s.CoreV1Api(kube_api)
    markers.create_secrets(core, namespace)
    tag = uuid.uuid4().hex
    unreferenced = f"UNREFERENCED-MARKER-{tag}"
    core.patch_namespaced_secret("boot", namespace, {"stringData": {"other": unreferenced}})
    refused_value = f"NOCONSENT-MARKER-{tag}"
    no_label = k8s.V1ObjectMeta(name="private")
    core.create_namespaced_secret(
        namespace, k8s.V1Secret(metadata=no_label, string_data={"conf": refused_value})
    )
    password = f"CLOUDS-MARKER-{tag}"
    config = noop_config(
        state_file,
        profiles={"broken": {"driver": "nova", "options": {
            "clouds_yaml_content": BROKEN_CLOUDS.format(marker=password)}}},
    )  # fmt: skip
    port = free_port()
    operator = DebugEverythingOperator(
        cluster=control_plane, namespace=namespace, workdir=tmp_path / "operator", config=config,
        extra_args=["--verbose", "--metrics-port", str(port)],
    )  # fmt: skip
    operator.env = env
    operator.start()
    try:
        wait_for_metrics(port)
        steps.apply(
            amphora("private", **markers.spec()),
            amphora("no-consent", configDriveFiles=[
                {"path": "/etc/x.conf", "secretRef": {"name": "private", "key": "conf"}}]),
            # Nothing is built for it, and its backend never starts: Orphan releases it.
            amphora("broken-cloud", driver="broken", deletionPolicy="Orphan"),
        )  # fmt: skip
        steps.wait_phase("private", "Ready", timeout=60)
        refused = steps.wait(
            "no-consent", lambda st: st.get("failureReason") == "SecretNotConsented",
            timeout=60, what="the non-consenting Secret refused",
        )  # fmt: skip
        assert condition(refused, "Stalled")["status"] == "True"
        assert USABLE_LABEL in condition(refused, "Ready")["message"]
        assert "spec.configDriveFiles[/etc/x.conf].secretRef" in refused["fault"]
        broken = steps.wait(
            "broken-cloud",
            lambda st: "not valid YAML" in str(st.get("conditions")),
            timeout=60, what="the malformed clouds.yaml reported",
        )  # fmt: skip
        # Rebuilding from the Secrets posts Events (nothing does on the way to Ready).
        first = steps.status("private")["computeId"]
        steps.patch_spec("private", tags=["rotated"])
        steps.wait("private", lambda st: st.get("phase") == "Ready"
                   and st.get("computeId") != first, timeout=60, what="replaced")  # fmt: skip
        statuses = {n: str(steps.get(n)) for n in ("no-consent", "broken-cloud")}
        statuses["status of private"] = str(steps.status("private"))
        metrics = scrape_text(port)
        for name in ("private", "no-consent", "broken-cloud"):
            steps.delete(name, wait=False)
        fleet.wait_empty(timeout=60)
        time.sleep(0.5)  # Events are posted asynchronously
    finally:
        operator.stop()
    log = operator.logs()
    events = "\n".join(str(e.to_dict()) for e in core.list_namespaced_event(namespace).items)
    # Not vacuous: DEBUG reached third-party loggers, and the Secrets were read and used.
    debug = [str(r.get("message")) for r in log_records(log) if r.get("severity") == "debug"]
    secret_reads = [m for m in debug if "/secrets/boot HTTP/1.1" in m]  # urllib3's DEBUG line
    assert secret_reads, "no DEBUG record of the HTTP client reading the Secret"
    assert "line " in str(broken.get("conditions")), "the parse error keeps its position"
    needles = {
        **markers.secret_needles(),
        "unreferenced key": unreferenced,
        "unreferenced key (base64)": base64.b64encode(unreferenced.encode()).decode(),
        "non-consenting Secret": refused_value,
        "non-consenting Secret (base64)": base64.b64encode(refused_value.encode()).decode(),
        "clouds.yaml password": password,
    }
    haystacks = {"the operator log": log, "Events": events, "/metrics": metrics, **statuses}
    found = leaks(haystacks, needles)
    record(f"secrets_debug_kubernetes_{client}", "leaks found", len(found))
    record(f"secrets_debug_kubernetes_{client}", "log bytes searched", len(log))
    assert found == [], found
    assert not [m for m in debug if m.startswith("response body")], "a response body was logged"
