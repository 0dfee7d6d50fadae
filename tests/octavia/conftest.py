"""Fixtures of the Octavia plugin tests: Octavia 19 in its own venv, the plugin pip-installed
into it from the working tree, and Octavia's code run as subprocesses against the real
control plane as the plugin's own ServiceAccount (integrations/octavia/rbac.yaml)."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.fixtures.control_plane import Cluster

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / "hack" / "octavia" / "install.sh"
PLUGIN = REPO / "integrations" / "octavia"
RBAC = PLUGIN / "rbac.yaml"
FLOW = Path(__file__).with_name("octavia_flow.py")
SERVICE_ACCOUNT = "octavia-amphora"
#: A key Octavia's amp_ssh_key_name names; the plugin reads it from ssh_public_keys_dir.
KEY_NAME = "octavia-ssh-key"
PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINivA37oPmgNbaGSCv5kWMQKrXe3G//lfqngHWlQrggu octavia@test"
)
#: Stand-in certificates: CertComputeCreate decrypts the first and reads the second from a file.
SERVER_PEM = "-----BEGIN CERTIFICATE-----\nc2VydmVyLXBlbQ==\n-----END CERTIFICATE-----\n"
CLIENT_CA = "-----BEGIN CERTIFICATE-----\nY2xpZW50LWNh\n-----END CERTIFICATE-----\n"


@dataclass(frozen=True)
class OctaviaVenv:
    python: Path
    install_seconds: float
    plugin_site: Path
    plugin_install_seconds: float


@pytest.fixture(scope="session")
def octavia_venv(tmp_path_factory: pytest.TempPathFactory) -> OctaviaVenv:
    """Octavia 19's venv (cached, flock-protected) with the plugin pip-installed from the tree.

    The plugin goes into a per-session ``--target`` directory on PYTHONPATH, not into the
    cached venv, so the cache never holds a stale copy of the plugin.
    """
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=1200, check=False
    )
    if done.returncode != 0 or not done.stdout.strip():
        pytest.fail(
            f"hack/octavia/install.sh failed (exit {done.returncode}):\n{done.stderr[-3000:]}",
            pytrace=False,
        )
    venv = Path(done.stdout.strip().splitlines()[-1])
    install_seconds = time.monotonic() - started
    site = tmp_path_factory.mktemp("octavia-plugin")
    started = time.monotonic()
    # A copy: setuptools writes build/ and *.egg-info next to the sources it builds.
    source = tmp_path_factory.mktemp("octavia-plugin-src") / "octavia"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip = subprocess.run(
        [
            str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
            "--no-build-isolation", "--disable-pip-version-check", "--target", str(site),
            str(source),
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if pip.returncode != 0:
        pytest.fail(f"pip install of integrations/octavia failed:\n{pip.stderr[-3000:]}",
                    pytrace=False)  # fmt: skip
    return OctaviaVenv(
        python=venv / "bin" / "python",
        install_seconds=install_seconds,
        plugin_site=site,
        plugin_install_seconds=time.monotonic() - started,
    )


def service_account_kubeconfig(
    cluster: Cluster, kube_api: ApiClient, namespace: str, path: Path
) -> Path:
    """Apply rbac.yaml in ``namespace`` and write a kubeconfig with its ServiceAccount's token."""
    rbac = k8s.RbacAuthorizationV1Api(kube_api)
    core = k8s.CoreV1Api(kube_api)
    for doc in yaml.safe_load_all(RBAC.read_text()):
        doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects", []):
            subject["namespace"] = namespace
        kind = doc["kind"]
        if kind == "ServiceAccount":
            core.create_namespaced_service_account(namespace, doc)
        elif kind == "Role":
            rbac.create_namespaced_role(namespace, doc)
        elif kind == "RoleBinding":
            rbac.create_namespaced_role_binding(namespace, doc)
        else:
            raise AssertionError(f"unexpected kind {kind} in {RBAC}")
    token = cluster.service_account_token(namespace, SERVICE_ACCOUNT)
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    for user in kubeconfig["users"]:
        user["user"] = {"token": token}
    path.write_text(yaml.safe_dump(kubeconfig))
    return path


@dataclass
class Octavia:
    """One octavia.conf for one test, and one process of Octavia's code serving it."""

    venv: OctaviaVenv
    workdir: Path
    options: dict[str, dict[str, Any]]
    runs: list[dict[str, Any]] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None
    start_seconds: float = 0.0

    @property
    def config_file(self) -> Path:
        return self.workdir / "octavia.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "octavia.log"

    def write_config(self) -> None:
        lines = []
        for section, values in self.options.items():
            lines.append(f"[{section}]")
            for key, value in values.items():
                if isinstance(value, dict):
                    value = ",".join(f"{k}:{v}" for k, v in value.items())
                elif isinstance(value, list):
                    value = ",".join(value)
                lines.append(f"{key} = {value}")
        self.config_file.write_text("\n".join(lines) + "\n")

    def _start(self, timeout: float) -> subprocess.Popen[str]:
        self.write_config()
        env = {**os.environ, "PYTHONPATH": str(self.venv.plugin_site)}
        started = time.monotonic()
        with self.log_path.open("w") as log:  # the child keeps its own descriptor
            process = subprocess.Popen(
                [str(self.venv.python), str(FLOW), "--config-file", str(self.config_file)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
            )  # fmt: skip
        self.process = process
        self._answer(timeout, "start")
        self.start_seconds = round(time.monotonic() - started, 2)
        return process

    def _answer(self, timeout: float, what: str) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.stop()
            pytest.fail(
                f"octavia_flow.py gave no answer to {what} within {timeout} s "
                f"(exit {self.process.returncode})\n{self.log_tail()}",
                pytrace=False,
            )
        return dict(json.loads(line))

    def run(self, command: str, arguments: dict[str, Any] | None = None,
            overrides: dict[str, dict[str, Any]] | None = None, timeout: float = 300
            ) -> dict[str, Any]:  # fmt: skip
        """One command of Octavia's code; its result, or the test fails with the traceback."""
        process = self.process or self._start(timeout)
        assert process.stdin is not None
        started = time.monotonic()
        request = {"command": command, "args": arguments or {}, "overrides": overrides or {}}
        process.stdin.write(json.dumps(request) + "\n")
        process.stdin.flush()
        answer = self._answer(timeout, command)
        self.runs.append({"command": command, "seconds": round(time.monotonic() - started, 2)})
        if "exception" in answer:
            pytest.fail(f"Octavia's {command} raised:\n{answer['exception']}", pytrace=False)
        return dict(answer["result"])

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
        self.process = process  # keeps returncode for messages


@pytest.fixture
def octavia(
    request: pytest.FixtureRequest,
    octavia_venv: OctaviaVenv,
    control_plane: Cluster,
    kube_api: ApiClient,
    amphora_crd: dict[str, Any],
    namespace: str,
    tmp_path: Path,
) -> Iterator[Callable[..., Octavia]]:
    """Make an Octavia for ``namespace`` whose plugin authenticates as rbac.yaml's account."""
    kubeconfig = service_account_kubeconfig(
        control_plane, kube_api, namespace, tmp_path / "octavia-kubeconfig"
    )
    keys = tmp_path / "ssh-keys"
    keys.mkdir()
    (keys / f"{KEY_NAME}.pub").write_text(PUBLIC_KEY + "\n")
    client_ca = tmp_path / "client_ca.pem"
    client_ca.write_text(CLIENT_CA)

    def make(controller_worker: dict[str, Any], amphora_k8s: dict[str, Any],
             **sections: dict[str, Any]) -> Octavia:  # fmt: skip
        options: dict[str, dict[str, Any]] = {
            "DEFAULT": {"transport_url": "fake:/", "debug": "true"},
            "controller_worker": {
                "compute_driver": "compute_amphora_k8s_driver",
                "amp_image_tag": "amphora",
                "amp_ssh_key_name": KEY_NAME,
                "client_ca": str(client_ca),
                # Octavia polls 30 x 10 s by default; the same loop, faster.
                "amp_active_wait_sec": 1,
                "amp_active_retries": 120,
                **controller_worker,
            },
            "amphora_k8s": {
                "kubeconfig": str(kubeconfig),
                "namespace": namespace,
                "key_source": "file",
                "ssh_public_keys_dir": str(keys),
                **amphora_k8s,
            },
            "compute": {"max_retries": 3, "retry_interval": 1},
            **sections,
        }
        made.append(Octavia(venv=octavia_venv, workdir=tmp_path, options=options))
        return made[-1]

    made: list[Octavia] = []
    yield make
    failed = getattr(request.node, "rep_call", None)
    for octavia_ in made:
        octavia_.stop()
        if failed is not None and failed.failed:
            print(f"--- Octavia's log ({octavia_.log_path})\n{octavia_.log_tail(200)}")
