"""A real Kubernetes control plane on 127.0.0.1, built from Go modules, for tests and the demo.

These machines have no Docker, so kind cannot run; the operator's tests still need a real
kube-apiserver (structural schemas, CEL rules, RBAC, garbage collection, watches). This module runs
etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake Nodes whose Pods
"run") as child processes (``amphora_devtools.processes``: real handles, whole process groups,
a pid file that the next ``up()`` reaps after a crash), and keeps keys, tokens, data, logs and
the admin kubeconfig in one state directory the user can inspect.

CLI: ``python -m amphora_devtools.control_plane up|down|status [--state-dir DIR]``
(also ``amphora-dev cluster ...``).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import csv
import functools
import hashlib
import json
import secrets
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from amphora_devtools.net import free_port, http_ok, insecure_context
from amphora_devtools.processes import (
    STOP_GRACE_SECONDS,
    Child,
    PidFile,
    ProcessError,
    ProcessRecord,
    Progress,
    quiet,
    reap_orphans,
    run_script,
    tail,
    this_process,
)

__all__ = [
    "COMPONENTS",
    "ComponentStatus",
    "ControlPlaneError",
    "LocalControlPlane",
    "build_binaries",
    "free_port",
]

BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "control-plane" / "build.sh"
COMPONENTS: tuple[str, ...] = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
)
# Service and Pod ranges must not overlap; neither is routed, kwok only hands out Pod IPs.
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ZONE_LABEL = "topology.kubernetes.io/zone"
ZONES: tuple[str, ...] = ("zone-a", "zone-b")
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
NODE_ALLOCATABLE: dict[str, str] = {"cpu": "32", "memory": "256Gi", "pods": "110"}
# Identities in the static token file. Controller-manager and scheduler use the usernames that
# the bootstrap RBAC policy grants their roles to; kwok plays many kubelets, so it is an admin.
_USERS: dict[str, tuple[str, str]] = {
    "admin": ("amphora-admin", "system:masters"),
    "kube-controller-manager": ("system:kube-controller-manager", ""),
    "kube-scheduler": ("system:kube-scheduler", ""),
    "kwok": ("kwok", "system:masters"),
}
_LOG_TAIL_LINES = 40
_POLL_SECONDS = 0.2
#: Everything one start attempt writes; a failed attempt's copy is moved to ``failed/``.
_ATTEMPT_STATE = ("etcd", "logs", "pki", "kubeconfigs", "kubeconfig", "state.json")

_START_ATTEMPTS = 3


class ControlPlaneError(RuntimeError):
    """A component failed to build, start or become ready; the message carries its log tail."""


@dataclass(frozen=True)
class ComponentStatus:
    """What ``status()`` knows about one process."""

    name: str
    pid: int | None
    port: int | None
    running: bool
    rss_bytes: int


def build_binaries(progress: Progress = quiet, script: Path = BUILD_SCRIPT) -> Path:
    """Run ``build.sh`` (idempotent; seconds when cached) and return the bin dir it prints last.

    A cold build takes minutes: the script's output streams to ``progress``; its last lines go
    into the error if it fails.
    """
    return Path(run_script(script, progress, error=ControlPlaneError, tail_lines=_LOG_TAIL_LINES))


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


#: Planes of this process with children of their own, stopped at interpreter exit.
_OWNED: weakref.WeakSet[LocalControlPlane] = weakref.WeakSet()


@atexit.register
def _stop_owned_planes() -> None:
    """Nothing outlives the Python process that started it (unless started detached)."""
    for plane in list(_OWNED):
        plane.kill()


class LocalControlPlane:
    """etcd + kube-apiserver + controller-manager + scheduler + kwok as supervised children.

    Everything lives in ``state_dir``: ``state.json`` (processes, ports, bin dir),
    ``logs/<name>.log``, ``pki/`` (service-account keys, static tokens, the apiserver's
    self-signed CA), ``etcd/``, the admin ``kubeconfig``, and ``failed/`` (the state of start
    attempts that failed, logs included). A second instance on the same directory (the CLI's
    ``down``) reads ``state.json`` and stops what the first one started.

    ``detached=False`` (tests, bench): the processes die with this Python process, however it
    ends (atexit, the kernel's parent-death signal, and the pid file the next ``up()`` reaps).
    ``detached=True`` (the CLI's ``up``, the demo): they run on until ``down``.
    """

    def __init__(
        self,
        state_dir: Path | str,
        bin_dir: Path | str | None = None,
        nodes: int = 2,
        *,
        detached: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.nodes = nodes
        self.detached = detached
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self._ports: dict[str, int] = {}
        #: Children this object started (real handles).
        self._children: dict[str, Child] = {}
        #: Processes another process started (read from ``state.json``), e.g. the CLI's ``up``.
        self._foreign: dict[str, ProcessRecord] = {}
        self._load_state()
        key = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:16]
        self._pid_file = PidFile(f"control-plane-{key}", None if self.detached else this_process())

    # -- paths and credentials -------------------------------------------------------------

    @property
    def bin_dir(self) -> Path:
        """The Go-built binaries; resolved through ``build.sh`` on first ``up()``."""
        if self._bin_dir is None:
            raise ControlPlaneError("bin dir unknown: call up() or pass bin_dir")
        return self._bin_dir

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def failed_dir(self) -> Path:
        """Where the state of failed start attempts is kept for a post-mortem."""
        return self.state_dir / "failed"

    @property
    def ca_file(self) -> Path:
        """The CA that signed the apiserver's serving certificate (written during ``up()``)."""
        return self._pki / "ca.crt"

    @property
    def server(self) -> str:
        if "kube-apiserver" not in self._ports:
            raise ControlPlaneError(f"no apiserver port recorded in {self._state_file}")
        return f"https://127.0.0.1:{self._ports['kube-apiserver']}"

    @property
    def admin_token(self) -> str:
        return self._tokens()["admin"]

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def log_tail(self, name: str, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of a component's log ("" if it never ran)."""
        return tail(self.log_path(name), lines)

    @property
    def _pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "state.json"

    def _tokens(self) -> dict[str, str]:
        """Component name -> bearer token, read back from the static token file."""
        by_user = {user: component for component, (user, _) in _USERS.items()}
        with (self._pki / "tokens.csv").open(newline="") as tokens:
            return {by_user[row[1]]: row[0] for row in csv.reader(tokens) if row[1] in by_user}

    # -- lifecycle -------------------------------------------------------------------------

    def up(self, progress: Progress = quiet, timeout: float = 120.0) -> None:
        """Start every component and wait until Nodes are Ready and ``default`` SA exists.

        First reaps what crashed runs left behind (their pid files). Reuses a healthy plane
        already running on this state dir. A failed attempt SIGKILLs every process group it
        started, moves its state to ``failed/`` and the next attempt starts on fresh state and
        fresh ports; after the last one, ``ControlPlaneError`` carries the log tail.
        """
        for line in reap_orphans():
            progress(f"reaped what a crashed run left behind: {line}")
        if self._running() == set(COMPONENTS) and self.is_ready():
            progress(f"already running: {self.server}")
            return
        self.down()
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                self._up(progress, timeout)
                return
            except ControlPlaneError as error:
                self.kill()
                kept = self._set_aside(attempt)
                if attempt == _START_ATTEMPTS:
                    raise ControlPlaneError(
                        f"{error}\n(state of each attempt in {kept.parent})"
                    ) from None
                progress(
                    f"attempt {attempt} failed ({str(error).splitlines()[0]}); "
                    f"its state is in {kept}; retrying on fresh state and ports"
                )
            except BaseException:
                self.kill()
                raise

    def _up(self, progress: Progress, timeout: float) -> None:
        if self._bin_dir is None:
            progress("resolving binaries with hack/control-plane/build.sh")
            self._bin_dir = build_binaries(progress)
        missing = [c for c in COMPONENTS if not (self.bin_dir / c).is_file()]
        if missing:
            raise ControlPlaneError(f"missing binaries in {self.bin_dir}: {', '.join(missing)}")
        for directory in (self.logs_dir, self._pki, self.state_dir / "etcd"):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._ensure_credentials()
        self._ports = {name: free_port() for name in (*COMPONENTS, "etcd-peer")}
        self._save_state()

        progress(f"starting etcd on 127.0.0.1:{self._ports['etcd']}")
        self._start("etcd", timeout)
        progress(f"starting kube-apiserver on {self.server}")
        self._start("kube-apiserver", timeout)
        self._write_kubeconfigs()
        # The three need only the apiserver, not each other: start them together, register
        # the Nodes meanwhile (kwok marks them Ready once it runs), then wait for each health.
        clients = ("kube-controller-manager", "kube-scheduler", "kwok")
        for name in clients:
            progress(f"starting {name}")
            self._spawn(name)
        progress(f"registering {self.nodes} kwok node(s)")
        self._register_nodes()
        for name in clients:
            self._wait(name, "health endpoint", functools.partial(self._healthy, name), timeout)
        self._wait("kwok", f"{self.nodes} Ready node(s)", self._nodes_ready, timeout)
        self._wait(
            "kube-controller-manager",
            "ServiceAccount default/default",
            lambda: (
                self._api("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200
            ),
            timeout,
        )

    def down(self) -> None:
        """Stop every process (reverse start order, SIGTERM then SIGKILL of each whole process
        group); data and logs stay on disk."""
        for name in reversed(COMPONENTS):
            self._stop(name)
        self._forget_processes()

    def kill(self) -> None:
        """SIGKILL every process group at once: after a failed start, or at interpreter exit."""
        for name in reversed(COMPONENTS):
            self._stop(name, grace=0)
        self._forget_processes()

    def _forget_processes(self) -> None:
        self._pid_file.remove()
        _OWNED.discard(self)
        if self._state_file.is_file():
            self._save_state()

    def _set_aside(self, attempt: int) -> Path:
        """Move a failed attempt's state to ``failed/<time>-attempt-<n>``: the next attempt
        starts on a fresh state dir, and the logs stay for a post-mortem."""
        kept = self.failed_dir / f"{time.strftime('%H%M%S')}-attempt-{attempt}"
        kept.mkdir(parents=True, exist_ok=True)
        for name in _ATTEMPT_STATE:
            if (self.state_dir / name).exists():
                (self.state_dir / name).replace(kept / name)
        self._ports = {}
        return kept

    def status(self) -> dict[str, ComponentStatus]:
        running = self._running()
        result = {}
        for name in COMPONENTS:
            pid = self._pid(name)
            result[name] = ComponentStatus(
                name=name,
                pid=pid,
                port=self._ports.get(name),
                running=name in running,
                rss_bytes=_rss_bytes(pid) if pid is not None and name in running else 0,
            )
        return result

    def is_ready(self) -> bool:
        """The apiserver answers ``/readyz`` with 200."""
        if "kube-apiserver" not in self._ports or not self.ca_file.is_file():
            return False
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return http_ok(f"{self.server}/readyz", context=context, token=self.admin_token)

    def stop_apiserver(self) -> None:
        self._stop("kube-apiserver")

    def start_apiserver(self, timeout: float = 60.0) -> None:
        """Start kube-apiserver again on its recorded port, with the same certs and tokens."""
        self._start("kube-apiserver", timeout)

    def restart_apiserver(self, timeout: float = 60.0) -> None:
        """Stop and start kube-apiserver; clients keep their kubeconfig (same port and CA)."""
        self.stop_apiserver()
        self.start_apiserver(timeout)

    def stop_etcd(self) -> None:
        self._stop("etcd")

    def start_etcd(self, timeout: float = 60.0) -> None:
        """Start etcd again on its recorded ports and data dir."""
        self._start("etcd", timeout)

    # -- processes -------------------------------------------------------------------------

    def _pid(self, name: str) -> int | None:
        if name in self._children:
            return self._children[name].pid
        record = self._foreign.get(name)
        return record.pid if record is not None else None

    def _running(self) -> set[str]:
        """Components whose process runs: asked of our own handles, or, for processes another
        process started, of the recorded (pid, start time) pairs."""
        mine = {name for name, child in self._children.items() if child.running()}
        return mine | {name for name, record in self._foreign.items() if record.alive()}

    def _start(self, name: str, timeout: float) -> None:
        """Spawn a component and wait for its health."""
        self._spawn(name)
        self._wait(name, "health endpoint", lambda: self._healthy(name), timeout)

    def _spawn(self, name: str) -> None:
        """Start a component in its own session and record it (pid file, state.json)."""
        if name in self._running():
            raise ControlPlaneError(f"{name} is already running (pid {self._pid(name)})")
        child = Child(
            name,
            [str(self.bin_dir / name), *self._args(name)],
            self.log_path(name),
            die_with_parent=not self.detached,
        )
        try:
            child.start()
        except ProcessError as error:
            raise ControlPlaneError(str(error)) from error
        self._children[name] = child
        if not self.detached:
            _OWNED.add(self)
        self._record_processes()

    def _stop(self, name: str, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM the component's process group, SIGKILL it after ``grace`` s (at once with
        0), and wait until no process of the group is left; then forget it."""
        child, record = self._children.pop(name, None), self._foreign.pop(name, None)
        try:
            if child is not None:
                child.stop(grace)
            if record is not None:
                record.terminate_group(grace)
        except ProcessError as error:
            raise ControlPlaneError(str(error)) from error
        if child is not None or record is not None:
            self._record_processes()

    def _record_processes(self) -> None:
        """Write state.json and the pid file that a later ``up()`` reaps if we crash."""
        records = []
        for child in self._children.values():
            try:
                records.append(child.record())
            except ProcessError:
                continue  # exited meanwhile: nothing left to reap
        records += self._foreign.values()
        if records and not self.detached:
            self._pid_file.write(records, state_dir=str(self.state_dir))
        else:
            self._pid_file.remove()
        self._save_state(records)

    def _wait(self, name: str, what: str, check: Callable[[], bool], timeout: float) -> None:
        """Poll ``check`` until true; fail fast with ``name``'s log tail if it exits or we time
        out."""
        deadline = time.monotonic() + timeout
        child = self._children.get(name)
        while not check():
            if child is not None and not child.running():
                raise ControlPlaneError(
                    f"{name} exited with status {child.returncode} while waiting for {what}; "
                    f"tail of {self.log_path(name)}:\n{self.log_tail(name)}"
                )
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"timed out after {timeout:.0f}s waiting for {what} ({name}); "
                    f"tail of {self.log_path(name)}:\n{self.log_tail(name)}"
                )
            time.sleep(_POLL_SECONDS)

    def _healthy(self, name: str) -> bool:
        port = self._ports[name]
        if name == "etcd":
            return http_ok(f"http://127.0.0.1:{port}/health")
        if name == "kube-apiserver":
            serving_cert = self._pki / "serving" / "apiserver.crt"
            if not serving_cert.is_file():
                return False
            context = ssl.create_default_context(cafile=str(serving_cert))
            return http_ok(f"{self.server}/readyz", context=context, token=self.admin_token)
        if name == "kwok":
            return http_ok(f"http://127.0.0.1:{port}/healthz")
        return http_ok(f"https://127.0.0.1:{port}/healthz", context=insecure_context())

    def _args(self, name: str) -> list[str]:
        """Command-line flags of each component (kept minimal; checked against v1.36 --help)."""
        ports, pki, configs = self._ports, self._pki, self.state_dir / "kubeconfigs"
        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
        if name == "etcd":
            return [
                "--name=default",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync",
            ]
        if name == "kube-apiserver":
            return [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['kube-apiserver']}",
                f"--cert-dir={pki / 'serving'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                # The default reconciler would publish 127.0.0.1 as the `kubernetes` Service
                # endpoint, which Endpoint validation rejects (loopback) on every resync.
                "--endpoint-reconciler-type=none",
                # Close open watches on SIGTERM; otherwise shutdown waits out --request-timeout
                # (60 s) for them, which makes restart_apiserver() slow.
                "--shutdown-watch-termination-grace-period=2s",
            ]
        if name == "kube-controller-manager":
            return [
                f"--kubeconfig={configs / 'kube-controller-manager.yaml'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['kube-controller-manager']}",
                "--leader-elect=false",
                # All on-by-default controllers: GC, namespace, serviceaccount(-token),
                # deployment, replicaset, node-lifecycle, ... as in a real cluster.
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--root-ca-file={self.ca_file}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
            ]
        if name == "kube-scheduler":
            return [
                f"--config={configs / 'kube-scheduler-config.yaml'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports['kube-scheduler']}",
            ]
        if name == "kwok":
            stages = sorted((self.bin_dir.parent / "kwok-stages").glob("*/*.yaml"))
            return [
                f"--kubeconfig={configs / 'kwok.yaml'}",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                # Lease renewals keep node-lifecycle-controller from tainting the fake Nodes.
                "--node-lease-duration-seconds=40",
                f"--cidr={POD_CIDR}",
                f"--server-address=127.0.0.1:{ports['kwok']}",
                *(f"--config={stage}" for stage in stages),
            ]
        raise ValueError(f"unknown component {name!r}")

    # -- files -----------------------------------------------------------------------------

    def _load_state(self) -> None:
        if not self._state_file.is_file():
            return
        state = json.loads(self._state_file.read_text())
        self._ports = {k: int(v) for k, v in state.get("ports", {}).items()}
        self._foreign = {
            p["name"]: ProcessRecord(**p) for p in state.get("processes", []) if p["name"]
        }
        # A plane started detached stays detached, whoever restarts one of its components.
        self.detached = self.detached or bool(state.get("detached"))
        if self._bin_dir is None and state.get("bin_dir"):
            self._bin_dir = Path(state["bin_dir"])

    def _save_state(self, processes: Sequence[ProcessRecord] = ()) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "bin_dir": str(self._bin_dir) if self._bin_dir else None,
            "server": self.server if "kube-apiserver" in self._ports else None,
            "kubeconfig": str(self.kubeconfig),
            "detached": self.detached,
            "ports": self._ports,
            "processes": [asdict(p) for p in processes],
        }
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self._state_file)

    def _ensure_credentials(self) -> None:
        """Service-account key pair and static tokens, generated once per state dir.

        Kept across restarts so tokens already issued (and stored kubeconfigs) stay valid.
        """
        key, pub = self._pki / "sa.key", self._pki / "sa.pub"
        if not key.is_file() or not pub.is_file():
            for cmd in (
                ["openssl", "genrsa", "-out", str(key), "2048"],
                ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)],
            ):
                result = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if result.returncode != 0:
                    raise ControlPlaneError(f"{' '.join(cmd)} failed:\n{result.stderr}")
        tokens = self._pki / "tokens.csv"
        if not tokens.is_file():
            with tokens.open("w", newline="") as out:
                writer = csv.writer(out)
                for user, groups in _USERS.values():
                    row = [secrets.token_hex(24), user, user]
                    writer.writerow([*row, groups] if groups else row)
            tokens.chmod(0o600)

    def _write_kubeconfigs(self) -> None:
        """Extract the apiserver's self-signed CA and write admin and component kubeconfigs."""
        # The cert-dir bundle holds the serving cert followed by the CA that signed it.
        bundle = (self._pki / "serving" / "apiserver.crt").read_text()
        marker = "-----BEGIN CERTIFICATE-----"
        self.ca_file.write_text(marker + bundle.rsplit(marker, 1)[1])
        tokens = self._tokens()
        configs = self.state_dir / "kubeconfigs"
        configs.mkdir(exist_ok=True)
        self._write_kubeconfig(self.kubeconfig, tokens["admin"])
        for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
            self._write_kubeconfig(configs / f"{name}.yaml", tokens[name])
        scheduler_config = {
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(configs / "kube-scheduler.yaml")},
            "leaderElection": {"leaderElect": False},
        }
        (configs / "kube-scheduler-config.yaml").write_text(yaml.safe_dump(scheduler_config))

    def _write_kubeconfig(self, path: Path, token: str) -> None:
        ca_data = base64.b64encode(self.ca_file.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "amphora-local",
                    "cluster": {"server": self.server, "certificate-authority-data": ca_data},
                }
            ],
            "users": [{"name": "amphora-local", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "amphora-local",
                    "context": {"cluster": "amphora-local", "user": "amphora-local"},
                }
            ],
            "current-context": "amphora-local",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)

    # -- API -------------------------------------------------------------------------------

    def _api(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """A minimal admin request (stdlib only); returns (HTTP status, decoded JSON or None)."""
        request = urllib.request.Request(
            self.server + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={
                "Authorization": f"Bearer {self.admin_token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")
        except (urllib.error.URLError, OSError):
            return 0, None

    def node_names(self) -> list[str]:
        return [f"kwok-node-{i}" for i in range(self.nodes)]

    def _register_nodes(self) -> None:
        """Create the fake Nodes (idempotent); kwok then marks them Ready and runs their Pods."""
        for i, name in enumerate(self.node_names()):
            node = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {
                        KWOK_NODE_ANNOTATION: "fake",
                        "node.alpha.kubernetes.io/ttl": "0",
                    },
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "type": "kwok",
                        ZONE_LABEL: ZONES[i % len(ZONES)],
                    },
                },
                "status": {
                    "allocatable": NODE_ALLOCATABLE,
                    "capacity": NODE_ALLOCATABLE,
                    "phase": "Running",
                },
            }
            code, reply = self._api("POST", "/api/v1/nodes", node)
            if code not in (201, 409):
                raise ControlPlaneError(f"creating Node {name} failed with HTTP {code}: {reply}")

    def _nodes_ready(self) -> bool:
        code, reply = self._api("GET", "/api/v1/nodes")
        if code != 200:
            return False
        ready = {
            item["metadata"]["name"]
            for item in reply["items"]
            for condition in item.get("status", {}).get("conditions", [])
            if condition["type"] == "Ready" and condition["status"] == "True"
        }
        return set(self.node_names()) <= ready


# -- CLI -----------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``up``/``down``/``status`` to ``parser``; shared by ``python -m`` and ``amphora-dev``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".local/cluster"),
        help="where pids, logs, keys, etcd data and the kubeconfig live (default: %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser(
        "up", parents=[common], help="start the control plane (reuses a running one)"
    )
    up.add_argument("--nodes", type=int, default=2, help="kwok Nodes to register")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds per readiness wait")
    up.set_defaults(handler=_cmd_up)
    down = commands.add_parser("down", parents=[common], help="stop every process")
    down.set_defaults(handler=_cmd_down)
    status = commands.add_parser(
        "status", parents=[common], help="show processes; exit 1 unless all run"
    )
    status.set_defaults(handler=_cmd_status)


def _cmd_up(args: argparse.Namespace) -> int:
    plane = LocalControlPlane(args.state_dir, nodes=args.nodes, detached=True)
    started = time.monotonic()
    try:
        plane.up(progress=lambda line: print(line, flush=True), timeout=args.timeout)
    except ControlPlaneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"control plane ready in {time.monotonic() - started:.1f}s; logs in {plane.logs_dir}")
    print(f"export KUBECONFIG={plane.kubeconfig}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    LocalControlPlane(args.state_dir).down()
    print(f"stopped; state kept in {args.state_dir.resolve()}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    plane = LocalControlPlane(args.state_dir)
    statuses = plane.status().values()
    for s in statuses:
        state = "running" if s.running else "stopped"
        print(
            f"{s.name:<24} {state:<8} pid={s.pid or '-':<8} port={s.port or '-':<6} "
            f"rss={s.rss_bytes // 2**20}MiB"
        )
    total = sum(s.rss_bytes for s in statuses) // 2**20
    ready = plane.is_ready()
    print(f"apiserver ready: {ready}; total rss {total}MiB")
    if ready:
        print(f"export KUBECONFIG={plane.kubeconfig}")
    return 0 if all(s.running for s in statuses) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m amphora_devtools.control_plane", description=__doc__.splitlines()[0]
    )
    configure_parser(parser)
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
