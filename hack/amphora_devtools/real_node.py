"""One real kubelet + containerd Node beside the kwok Nodes: real processes in real containers.

kwok only pretends; this Node runs what the Container driver builds (config-drive files, probes,
crash loops, suspend). Recipe: ``/work/shared/notes/real-kubelet.md`` (Debian containerd, runc
and CNI plugins from ``hack/real-node/install.sh``, a kubelet built from the control plane's Go
module by ``hack/real-node/build-kubelet.sh``, test images from :mod:`amphora_devtools.images`).

Everything lives in ``state_dir``: containerd's root, state and socket, the CNI config and IPAM
data, the kubelet's root dir, config and logs, and ``pids.json``. The processes run in their own
process groups; a later :meth:`RealNode.up` on the same directory first reaps what a crashed run
left. :meth:`RealNode.down` leaves nothing behind: kubelet stopped, every container task killed
and deleted, sandbox network namespaces unmounted, containerd stopped, mounts under the state
dir unmounted, the node's bridge deleted, the kubelet's cgroups removed.

The Node is labelled ``amphora-operator.dev/real-node=true`` and tainted with the same key
(``NoSchedule``), so only Pods that ask for it (node selector + toleration) land on it and the
kwok Nodes keep every other Pod. Needs root.

CLI: ``python -m amphora_devtools.real_node up|down [--kubeconfig FILE] [--state-dir DIR]``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from amphora_devtools import images
from amphora_devtools.processes import Progress, quiet, run_script

HACK = Path(__file__).resolve().parent.parent / "real-node"
INSTALL_SCRIPT = HACK / "install.sh"
BUILD_SCRIPT = HACK / "build-kubelet.sh"
NODE_LABEL = "amphora-operator.dev/real-node"
#: Pods that should run on the real Node carry these (a profile's node selector/tolerations).
NODE_SELECTOR: dict[str, str] = {NODE_LABEL: "true"}
TOLERATIONS: list[dict[str, str]] = [
    {"key": NODE_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
]
CNI_BIN_DIR = Path("/usr/lib/cni")
REQUIRED = ("containerd", "containerd-shim-runc-v2", "runc", "ctr")
CONTAINER_LOGS = Path("/var/log/containers")
CNI_NETWORK = "amphora-real-node"
#: Names which real Node owns the machine-wide names (bridge, subnet, cgroups, CNI results).
CLAIM = Path("/run/amphora-operator/real-node.json")
#: libcni caches each attachment's result here (not configurable through containerd 1.6).
CNI_RESULTS = Path("/var/lib/cni/results")
#: Directories containerd's shims and runc create outside the state dir; removed when empty.
RUNTIME_DIRS = tuple(
    Path(p)
    for p in (
        "/run/containerd/s",
        "/run/containerd/fifo",
        "/run/containerd/runc/k8s.io",
        "/run/containerd/runc",
        "/run/containerd",
    )
)
CGROUP_ROOT = Path("/sys/fs/cgroup")
K8S_NAMESPACE = "k8s.io"  # containerd's namespace for CRI (kubelet) containers
_POLL = 0.2
_STOP_GRACE = 15.0
_LOG_TAIL = 40


class RealNodeError(RuntimeError):
    """The node cannot start (missing packages, no root, a component died); says why."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (reaping it if it is our zombie child)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class RealNode:
    """containerd + kubelet registering a Node with the apiserver of ``kubeconfig``."""

    def __init__(
        self,
        state_dir: Path | str,
        kubeconfig: Path | str,
        *,
        name: str | None = None,
        kubelet: Path | str | None = None,
        bridge: str = "amph-cni0",
        subnet: str = "10.88.77.0/24",
        gateway: str = "10.88.77.1",
        claim: Path = CLAIM,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.claim = claim
        self.kubeconfig = Path(kubeconfig).resolve()
        #: The Node's name is its address: the apiserver reaches a kubelet by its Hostname
        #: address first, which is the node name, and nothing resolves a made-up one.
        self.name = name or gateway
        self.bridge = bridge
        self.subnet = subnet
        self.gateway = gateway
        self._kubelet = Path(kubelet) if kubelet is not None else None
        self._pids: dict[str, int] = {}
        self._ports: dict[str, int] = {}
        self.started_in: float | None = None

    # -- paths -----------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.state_dir / "containerd" / "containerd.sock"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def kubelet_root(self) -> Path:
        return self.state_dir / "kubelet"

    @property
    def images_archive(self) -> Path:
        return self.state_dir / "images.tar"

    def log_path(self, component: str) -> Path:
        return self.logs_dir / f"{component}.log"

    def log_tail(self, component: str, lines: int = _LOG_TAIL) -> str:
        try:
            text = self.log_path(component).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def _pid_file(self) -> Path:
        return self.state_dir / "pids.json"

    # -- lifecycle -------------------------------------------------------------------------

    def up(self, progress: Progress = quiet, timeout: float = 120.0) -> None:
        """Install/build what is missing, start containerd and the kubelet, wait for Ready.

        Raises :class:`RealNodeError` naming the cause; whatever started is stopped again.
        """
        started = time.monotonic()
        self._preflight(progress)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._check_claim()
        self._reap_previous(progress)
        self.claim.parent.mkdir(parents=True, exist_ok=True)
        self.claim.write_text(json.dumps({"state_dir": str(self.state_dir), "pid": os.getpid()}))
        try:
            self._write_configs()
            self._create_bridge()
            self._start_containerd(timeout)
            progress("importing test images")
            images.write_archive(self.images_archive)
            self.import_images(self.images_archive)
            self.start_kubelet(timeout)
            progress(f"waiting for Node {self.name} to be Ready")
            self.wait_ready(timeout)
        except BaseException:
            self.down()
            raise
        self.started_in = time.monotonic() - started
        progress(f"Node {self.name} Ready in {self.started_in:.1f} s")

    def _preflight(self, progress: Progress) -> None:
        if os.geteuid() != 0:
            raise RealNodeError("the real kubelet Node needs root (containerd, mounts, cgroups)")
        run_script(INSTALL_SCRIPT, progress, error=RealNodeError)
        missing = [tool for tool in REQUIRED if shutil.which(tool) is None]
        missing += [f"{CNI_BIN_DIR}/{p}" for p in ("bridge", "host-local", "loopback")]
        missing = [m for m in missing if "/" not in m or not Path(m).is_file()]
        if missing or not images.BUSYBOX.is_file():
            raise RealNodeError(
                f"missing {', '.join(missing) or images.BUSYBOX}: run hack/real-node/install.sh "
                "as root (Debian packages containerd runc containernetworking-plugins "
                "busybox-static)"
            )
        if self._kubelet is None:
            progress("resolving the kubelet with hack/real-node/build-kubelet.sh")
            self._kubelet = Path(run_script(BUILD_SCRIPT, progress, error=RealNodeError))
        if not self._kubelet.is_file():
            raise RealNodeError(f"no kubelet at {self._kubelet}")

    def down(self) -> None:
        """Stop everything and remove every trace outside the state dir (idempotent)."""
        self._load_pids()
        self._stop("kubelet")
        if self._alive("containerd"):
            self._kill_containers()
        self._stop("containerd")
        self._kill_stray_shims()
        self._unmount_under(self.state_dir)
        self._delete_bridge()
        self._remove_cgroups()
        self._remove_log_links()
        for cached in self._cni_results():
            cached.unlink(missing_ok=True)
        for directory in RUNTIME_DIRS:  # deepest first
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty: another containerd may use them
        with contextlib.suppress(FileNotFoundError):
            self._pid_file.unlink()
        if self._claimant() == self.state_dir:
            self.claim.unlink(missing_ok=True)

    def running(self) -> bool:
        """Whether containerd or the kubelet recorded in this state dir still runs."""
        self._load_pids()
        return self._alive("containerd") or self._alive("kubelet")

    def _claim_record(self) -> tuple[Path, int] | None:
        try:
            record = json.loads(self.claim.read_text())
            return Path(record["state_dir"]), int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _claimant(self) -> Path | None:
        record = self._claim_record()
        return None if record is None else record[0]

    def _check_claim(self) -> None:
        """Fail loudly when another real Node runs on this machine, before touching anything.

        The Node's bridge, subnet, cgroups and CNI results have machine-wide names: a second
        Node's start would tear down the first's (two test runs at once once failed that way,
        with errors far from the cause). A claim whose process and Node are gone (a crash) is
        taken over.
        """
        record = self._claim_record()
        if record is not None and record[0] != self.state_dir:
            other, claimer = record
            node = RealNode(other, self.kubeconfig, bridge=self.bridge, claim=self.claim)
            # The claiming process may still be starting it (no pids recorded yet), or the
            # Node may run on after a CLI that started it exited.
            if (claimer != os.getpid() and _alive(claimer)) or node.running():
                raise RealNodeError(
                    f"another real Node runs on this machine (state dir {other}, named in "
                    f"{self.claim}); it uses the same machine-wide names (bridge {self.bridge}, "
                    "cgroups): run one test suite or demo at a time, or stop it with "
                    f"'python -m amphora_devtools.real_node down --state-dir {other}'"
                )

    @staticmethod
    def _cni_results() -> list[Path]:
        return sorted(CNI_RESULTS.glob(f"{CNI_NETWORK}-*")) if CNI_RESULTS.is_dir() else []

    def _reap_previous(self, progress: Progress) -> None:
        """A crashed run's processes, mounts and bridge go before anything new starts."""
        if self._pid_file.is_file():
            progress(f"stopping what an earlier run left in {self.state_dir}")
        self.down()

    # -- configuration ---------------------------------------------------------------------

    def _write_configs(self) -> None:
        for directory in ("containerd", "cni/net.d", "cni/ipam", "logs", "kubelet", "pki"):
            (self.state_dir / directory).mkdir(parents=True, exist_ok=True)
        self._ports = {"kubelet": _free_port(), "healthz": _free_port()}
        state = self.state_dir
        (state / "containerd" / "config.toml").write_text(
            f"""version = 2
root = "{state}/containerd/root"
state = "{state}/containerd/state"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{state}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{images.PAUSE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{state}/cni/net.d"
"""
        )
        conflist = {
            "cniVersion": "0.4.0",
            "name": CNI_NETWORK,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "forceAddress": False,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet}]],
                        "dataDir": f"{state}/cni/ipam",
                    },
                },
                {"type": "loopback"},
            ],
        }
        (state / "cni" / "net.d" / "10-amphora.conflist").write_text(json.dumps(conflist))
        kubelet_config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.gateway,
            "port": self._ports["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self._ports["healthz"],
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "enforceNodeAllocatable": [],
            "localStorageCapacityIsolation": False,
            "authentication": {
                "anonymous": {"enabled": True},
                "webhook": {"enabled": False},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "registerWithTaints": [{"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}],
            "podLogsDirectory": f"{state}/pod-logs",
            # The imported images cannot be pulled again: never collect them, never evict.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "resolvConf": "",
            "serializeImagePulls": False,
        }
        (state / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config))

    # -- processes -------------------------------------------------------------------------

    def _spawn(self, component: str, args: list[str]) -> None:
        log = self.log_path(component)
        with log.open("ab") as out:
            out.write(f"\n=== {time.strftime('%F %T')} {' '.join(args)}\n".encode())
        self._pids[component] = os.posix_spawn(
            args[0],
            args,
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_APPEND, 0),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )
        self._save_pids()

    def _start_containerd(self, timeout: float) -> None:
        binary = shutil.which("containerd")
        assert binary is not None
        self._spawn(
            "containerd",
            [binary, "--config", str(self.state_dir / "containerd" / "config.toml")],
        )
        self._wait(
            "containerd",
            "its socket",
            lambda: self.ctr("version", check=False).returncode == 0,
            timeout,
        )

    def start_kubelet(self, timeout: float = 60.0) -> None:
        """Start the kubelet (again); it re-registers the Node and takes its Pods back."""
        assert self._kubelet is not None
        self._spawn(
            "kubelet",
            [
                str(self._kubelet),
                f"--config={self.state_dir / 'kubelet.yaml'}",
                f"--kubeconfig={self.kubeconfig}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.gateway}",
                f"--node-labels={NODE_LABEL}=true",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={self.state_dir / 'pki'}",
            ],
        )
        self._wait("kubelet", "healthz", self._kubelet_healthy, timeout)

    def stop_kubelet(self) -> None:
        """Stop only the kubelet: containers keep running, the Node stops reporting."""
        self._stop("kubelet")

    def _kubelet_healthy(self) -> bool:
        url = f"http://127.0.0.1:{self._ports['healthz']}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _wait(self, component: str, what: str, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._alive(component):
                raise RealNodeError(
                    f"{component} exited while waiting for {what}; tail of "
                    f"{self.log_path(component)}:\n{self.log_tail(component)}"
                )
            if check():
                return
            time.sleep(_POLL)
        raise RealNodeError(
            f"{component}: no {what} within {timeout:.0f} s; tail of "
            f"{self.log_path(component)}:\n{self.log_tail(component)}"
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until the apiserver shows the Node Ready."""
        self._wait("kubelet", f"Node {self.name} Ready", self.is_ready, timeout)

    def is_ready(self) -> bool:
        node = self.api_get(f"/api/v1/nodes/{self.name}")
        conditions = (node or {}).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def api_get(self, path: str) -> Any:
        """GET ``path`` from the apiserver as the kubeconfig's user; None unless 200."""
        config = yaml.safe_load(self.kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        user = config["users"][0]["user"]
        context = ssl.create_default_context(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
        request = urllib.request.Request(
            cluster["server"] + path, headers={"Authorization": f"Bearer {user['token']}"}
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def _alive(self, component: str) -> bool:
        pid = self._pids.get(component)
        return pid is not None and _alive(pid)

    def _stop(self, component: str) -> None:
        pid = self._pids.get(component)
        if pid is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, sig)
                deadline = time.monotonic() + _STOP_GRACE
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(_POLL)
                if not _alive(pid):
                    break
            if _alive(pid):
                raise RealNodeError(f"{component} (pid {pid}) survived SIGKILL")
        if self._pids.pop(component, None) is not None:
            self._save_pids()

    def _save_pids(self) -> None:
        self._pid_file.write_text(json.dumps({"pids": self._pids, "ports": self._ports}))

    def _load_pids(self) -> None:
        """Take over the pids a previous run recorded, if they are still ours."""
        try:
            saved = json.loads(self._pid_file.read_text())
        except (OSError, ValueError):
            return
        for component, pid in saved.get("pids", {}).items():
            if component not in self._pids and str(self.state_dir) in _cmdline(pid):
                self._pids[component] = pid
        self._ports = {**saved.get("ports", {}), **self._ports}

    # -- containerd ------------------------------------------------------------------------

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against this node's containerd, in the kubelet's ``k8s.io`` namespace."""
        result = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", K8S_NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            raise RealNodeError(f"ctr {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def import_images(self, archive: Path) -> None:
        self.ctr("images", "import", str(archive))

    def tasks(self) -> dict[str, str]:
        """Container id -> task status (RUNNING, STOPPED...), as containerd sees them."""
        rows = self.ctr("tasks", "ls").stdout.splitlines()[1:]
        return {parts[0]: parts[-1] for row in rows if len(parts := row.split()) >= 3}

    def containers(self) -> dict[str, dict[str, Any]]:
        """Container id -> containerd's record (labels name the Pod and container)."""
        records = {}
        for cid in self.ctr("containers", "ls", "--quiet").stdout.split():
            info = self.ctr("containers", "info", cid, check=False)
            if info.returncode == 0:  # else removed since the listing
                records[cid] = json.loads(info.stdout)
        return records

    def _kill_containers(self) -> None:
        """Kill and delete every task and container; unmount their network namespaces."""
        netns: set[str] = set()
        for record in self.containers().values():
            for namespace in record.get("Spec", {}).get("linux", {}).get("namespaces", []):
                if namespace.get("type") == "network" and namespace.get("path"):
                    netns.add(namespace["path"])
        for cid in self.tasks():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", cid, check=False)
        deadline = time.monotonic() + _STOP_GRACE
        while time.monotonic() < deadline:
            if all(status == "STOPPED" for status in self.tasks().values()):
                break
            time.sleep(_POLL)
        for cid in self.tasks():
            self.ctr("tasks", "delete", "--force", cid, check=False)
        for cid in self.ctr("containers", "ls", "--quiet").stdout.split():
            self.ctr("containers", "delete", cid, check=False)
            # The CRI's loopback attachment is cached apart from ours, per sandbox id.
            (CNI_RESULTS / f"cni-loopback-{cid}-lo").unlink(missing_ok=True)
        for path in netns:
            subprocess.run(["umount", path], capture_output=True, check=False)
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _kill_stray_shims(self) -> None:
        """Shims detach from containerd's process group; kill any that serve our socket."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            cmd = _cmdline(int(entry.name))
            if "containerd-shim" in cmd and str(self.socket) in cmd:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)

    # -- host clean-up ---------------------------------------------------------------------

    def _unmount_under(self, root: Path) -> None:
        """Unmount (deepest first) everything mounted below ``root``: volumes, rootfs, shm."""
        for _ in range(3):
            mounts = [
                line.split()[4]
                for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split()[4].startswith(str(root) + "/") or line.split()[4] == str(root)
            ]
            if not mounts:
                return
            for target in sorted(set(mounts), key=len, reverse=True):
                subprocess.run(["umount", "-l", target], capture_output=True, check=False)

    def _create_bridge(self) -> None:
        """The Pods' bridge, made before the CNI plugin would, because its gateway address is
        also the Node's: the kubelet refuses a loopback node IP, and the apiserver reaches the
        kubelet (exec, logs) at the Node's address, which must not face the network."""
        for command in (
            ["ip", "link", "add", self.bridge, "type", "bridge"],
            [
                "ip",
                "addr",
                "add",
                f"{self.gateway}/{self.subnet.split('/')[1]}",
                "dev",
                self.bridge,
            ],
            ["ip", "link", "set", self.bridge, "up"],
        ):
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RealNodeError(f"{' '.join(command)} failed: {result.stderr.strip()}")

    def _delete_bridge(self) -> None:
        if Path(f"/sys/class/net/{self.bridge}").exists():
            subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True, check=False)

    @staticmethod
    def _remove_cgroups(timeout: float = 10.0) -> None:
        """The kubelet's ``kubepods`` cgroups. A cgroup can be removed only once empty: a
        container process may still be exiting after its shim is gone, so processes left in
        them (this node's containers) are killed and removal is retried until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = [
                d
                for controller in (CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else ())
                if (top := controller / "kubepods").is_dir() and not top.is_symlink()
                for d in sorted(
                    (top, *(d for d in top.rglob("*") if d.is_dir())),
                    key=lambda d: len(d.parts),
                    reverse=True,
                )
            ]
            for directory in left:
                with contextlib.suppress(OSError):
                    directory.rmdir()
            left = [d for d in left if d.is_dir()]
            if not left or time.monotonic() > deadline:
                return
            for directory in left:
                with contextlib.suppress(OSError, ValueError):
                    for pid in (directory / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.2)

    def _remove_log_links(self) -> None:
        """The kubelet's ``/var/log/containers`` links into our pod-logs dir."""
        if not CONTAINER_LOGS.is_dir():
            return
        for link in CONTAINER_LOGS.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(str(self.state_dir)):
                    link.unlink()

    def leftovers(self) -> dict[str, list[str]]:
        """What :meth:`down` must have removed; all lists empty after a clean shutdown."""
        mounts = [
            line.split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(self.state_dir))
        ]
        processes = [
            f"{entry.name}: {cmd}"
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit()
            and int(entry.name) != os.getpid()
            and str(self.state_dir) in (cmd := _cmdline(int(entry.name)))
        ]
        bridges = [self.bridge] if Path(f"/sys/class/net/{self.bridge}").exists() else []
        cgroups = [
            str(c / "kubepods")
            for c in (CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else ())
            if (c / "kubepods").is_dir() and not (c / "kubepods").is_symlink()
        ]
        return {
            "processes": processes,
            "mounts": mounts,
            "bridges": bridges,
            "cgroups": cgroups,
            "cni-results": [str(p) for p in self._cni_results()],
            "claim": [str(self.claim)] if self._claimant() == self.state_dir else [],
        }


# -- CLI -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m amphora_devtools.real_node", description=__doc__.splitlines()[0]
    )
    parser.add_argument("command", choices=("up", "down"))
    parser.add_argument("--kubeconfig", type=Path, help="the apiserver's (needed by up)")
    parser.add_argument("--state-dir", type=Path, default=Path(".local/real-node"))
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.command == "up" and args.kubeconfig is None:
        parser.error("up needs --kubeconfig")
    node = RealNode(args.state_dir, args.kubeconfig or "/dev/null")
    if args.command == "down":
        node.down()
        print(f"real node stopped; state kept in {node.state_dir}")
        return 0
    try:
        node.up(progress=lambda line: print(line, flush=True), timeout=args.timeout)
    except RealNodeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
