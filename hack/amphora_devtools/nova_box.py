"""Launch the Nova box: a small OpenStack cloud on 127.0.0.1, each service a real server.

Two modes:

- **cloud** (``cloud_venv`` given; what the tests use): a real Keystone (SQLite, fernet tokens)
  and a real Glance (SQLite, file store) from the cloud venv, and the real Nova API (nova's
  functional fixtures) behind keystonemiddleware, with a Neutron stand-in (nova's own
  ``NeutronFixture`` data served over HTTP with Neutron's answers, also behind Keystone). The
  launcher creates the project, user, application credential, catalog and images through the
  APIs and writes a ``clouds.yaml`` a user would write (``auth_url`` + password).
- **nova** (no ``cloud_venv``): Nova alone with ``auth_type: none`` (the benchmarks' box).

Either way Nova also listens on a second, unauthenticated port (``port``/``endpoint``): the
HTTP fault tier and the benchmark's counting proxy sit in front of it. It serves the same
project as Keystone's ``amphora`` project.

``hack/nova-box/install.sh`` makes the venvs (once per version), the serve scripts in
``hack/nova-box`` run inside them. Each service's log goes to ``<state_dir>/<service>.log``.

CLI: ``python -m amphora_devtools.nova_box up [--state-dir DIR] [--nova-only]`` prints the
JSON description and serves until interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from amphora_devtools import cloud_setup
from amphora_devtools.control_plane import free_port

NOVA_BOX_DIR = Path(__file__).resolve().parent.parent / "nova-box"
INSTALL_SCRIPT = NOVA_BOX_DIR / "install.sh"
SERVE_SCRIPT = NOVA_BOX_DIR / "serve.py"
KEYSTONE_SCRIPT = NOVA_BOX_DIR / "keystone_serve.py"
GLANCE_SCRIPT = NOVA_BOX_DIR / "glance_serve.py"
#: The cloud name in the clouds.yaml the launcher writes (password auth in cloud mode).
CLOUD = "nova-box"
#: The same cloud through the application credential.
APPCRED_CLOUD = "nova-box-appcred"
#: The same project as Keystone's admin (reads user_data, sets quotas, creates flavors).
ADMIN_CLOUD = "nova-box-admin"
#: Nova 34's highest compute microversion (what the box answers to).
MAX_MICROVERSION = "2.104"
#: Keystone's token lifetime in the box: short, so that long runs cross renewals. Above
#: keystoneauth's renewal margin (120 s), else every request would fetch a new token.
TOKEN_EXPIRATION = 135

__all__ = [
    "ADMIN_CLOUD",
    "APPCRED_CLOUD",
    "CLOUD",
    "NovaBox",
    "NovaBoxError",
    "install_cloud_venv",
    "install_venv",
]


class NovaBoxError(RuntimeError):
    """The box could not be installed or started; the message carries the log's tail."""


def _install(which: str, timeout: float) -> tuple[Path, float]:
    started = time.monotonic()
    try:
        done = subprocess.run(
            ["bash", str(INSTALL_SCRIPT), which],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise NovaBoxError(f"install.sh {which} did not finish within {timeout} s") from e
    if done.returncode != 0 or not done.stdout.strip():
        tail = "\n".join(done.stderr.splitlines()[-30:])
        raise NovaBoxError(f"install.sh {which} failed (exit {done.returncode}):\n{tail}")
    return Path(done.stdout.strip().splitlines()[-1]), time.monotonic() - started


def install_venv(timeout: float = 900.0) -> tuple[Path, float]:
    """The Nova venv (install.sh nova; a no-op when cached): (venv path, seconds taken)."""
    return _install("nova", timeout)


def install_cloud_venv(timeout: float = 900.0) -> tuple[Path, float]:
    """The Keystone + Glance venv (install.sh cloud): (venv path, seconds taken)."""
    return _install("cloud", timeout)


@dataclass
class _Service:
    """One server process of the box and the JSON line it printed when ready."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class NovaBox:
    """One running box: where its services listen, how to reach them, the data they hold."""

    venv: Path
    state_dir: Path
    computes: int = 2
    baremetal_nodes: int = 1
    #: The Keystone + Glance venv; None runs Nova alone without authentication.
    cloud_venv: Path | None = None
    token_expiration: int = TOKEN_EXPIRATION
    process: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: Seconds from the first spawn to a usable cloud (catalog, users and images in place).
    start_seconds: float = 0.0
    #: Seconds of each start-up step (service starts, identity set-up, image uploads).
    timings: dict[str, float] = field(default_factory=dict)
    identity: cloud_setup.Identity | None = None
    services: dict[str, _Service] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        """Nova's log (every service has ``<state_dir>/<name>.log``)."""
        return self.state_dir / "nova-box.log"

    @property
    def clouds_yaml(self) -> Path:
        return self.state_dir / "clouds.yaml"

    @property
    def port(self) -> int:
        """Nova's unauthenticated port (for proxies of the fault tier and benchmarks)."""
        return int(self.info["port"])

    @property
    def endpoint(self) -> str:
        """Nova's unauthenticated compute endpoint, as the amphora project."""
        return f"http://127.0.0.1:{self.port}/v2.1"

    def project_endpoint(self, project_id: str) -> str:
        """The unauthenticated compute endpoint as another project (hex id)."""
        return f"{self.endpoint}/{project_id}"

    @property
    def auth_url(self) -> str:
        assert self.identity is not None, "the box runs without Keystone"
        return self.identity.auth_url

    # -- start and stop -----------------------------------------------------------------------

    def start(self, timeout: float = 240.0) -> None:
        """Start every service and set the cloud up; NovaBoxError (with logs) on failure."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        deadline = started + timeout
        try:
            if self.cloud_venv is None:
                self._spawn_nova(keystone_url=None)
                self.info = self._wait("nova", deadline)
            else:
                self._start_cloud(self.cloud_venv, deadline, started)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        self.timings["total"] = round(self.start_seconds, 2)
        self.write_clouds_yaml()

    def _start_cloud(self, cloud_venv: Path, deadline: float, started: float) -> None:
        keystone_port = free_port()
        keystone_url = f"http://127.0.0.1:{keystone_port}/v3"
        admin_password = secrets.token_hex(12)  # hex: a leading "-" would read as an option
        python = str(cloud_venv / "bin" / "python")
        self._spawn(
            "keystone",
            [
                python,
                str(KEYSTONE_SCRIPT),
                "--state-dir",
                str(self.state_dir / "keystone"),
                "--port",
                str(keystone_port),
                "--admin-password",
                admin_password,
                "--token-expiration",
                str(self.token_expiration),
            ],
        )
        self._spawn_nova(keystone_url=keystone_url, admin_password=admin_password)
        self._spawn(
            "glance",
            [
                python,
                str(GLANCE_SCRIPT),
                "--state-dir",
                str(self.state_dir / "glance"),
                "--keystone-url",
                keystone_url,
                "--admin-password",
                admin_password,
            ],
        )
        self._wait("keystone", deadline)
        self.timings["keystone"] = round(time.monotonic() - started, 2)
        nova = self._wait("nova", deadline)
        self.timings["nova"] = round(time.monotonic() - started, 2)
        glance = self._wait("glance", deadline)
        self.timings["glance"] = round(time.monotonic() - started, 2)
        step = time.monotonic()
        self.identity = cloud_setup.register(
            keystone_url,
            admin_password,
            secrets.token_hex(12),
            {
                "compute": f"http://127.0.0.1:{nova['keystone_port']}/v2.1",
                "image": f"http://127.0.0.1:{glance['port']}",
                "network": f"http://127.0.0.1:{nova['neutron_port']}",
            },
        )
        # Nova's unauthenticated port serves the same project as Keystone's amphora project.
        (self.state_dir / "default-project").write_text(self.identity.project_id)
        self.timings["identity"] = round(time.monotonic() - step, 2)
        step = time.monotonic()
        images = cloud_setup.upload_images(self.identity)
        self.timings["images"] = round(time.monotonic() - step, 2)
        self.info = {
            **nova,
            "project_id": self.identity.project_id,
            "admin_project_id": self.identity.admin_project_id,
            "keystone_url": keystone_url,
            "glance_port": glance["port"],
            "images": images,
        }

    def _spawn_nova(self, keystone_url: str | None, admin_password: str = "") -> None:
        command = [
            str(self.venv / "bin" / "python"),
            str(SERVE_SCRIPT),
            "--computes",
            str(self.computes),
            "--baremetal-nodes",
            str(self.baremetal_nodes),
        ]
        if keystone_url is not None:
            command += [
                "--keystone-url",
                keystone_url,
                "--admin-password",
                admin_password,
                "--default-project-file",
                str(self.state_dir / "default-project"),
            ]
        self._spawn("nova", command, env={"OS_NOVA_DISABLE_EVENTLET_PATCHING": "1"})
        self.process = self.services["nova"].process

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        environment = {**os.environ, **(env or {})}
        environment.pop("OS_TEST_TIMEOUT", None)  # nova's TestCase would stop the box after it
        log_path = self.log_path if name == "nova" else self.state_dir / f"{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=environment,
                start_new_session=True,
            )
        self.services[name] = _Service(name, process, log_path)

    def _wait(self, name: str, deadline: float) -> dict[str, Any]:
        """Wait (bounded) for the service's JSON line."""
        service = self.services[name]
        out = service.process.stdout
        assert out is not None
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise NovaBoxError(
                    f"{name} exited with {service.process.returncode} before serving\n"
                    f"{self.log_tail(name=name)}"
                )
            ready, _, _ = select.select([out], [], [], 0.2)
            if ready:
                line = out.readline().decode().strip()
                try:
                    service.info = json.loads(line)
                except json.JSONDecodeError as e:
                    raise NovaBoxError(
                        f"{name} printed {line!r}, not JSON\n{self.log_tail(name=name)}"
                    ) from e
                return service.info
        raise NovaBoxError(f"{name} did not report its port in time\n{self.log_tail(name=name)}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every service's process group: SIGTERM, then SIGKILL after ``timeout``."""
        services, self.services, self.process = list(self.services.values()), {}, None
        for service in services:
            if service.process.poll() is None:
                os.killpg(service.process.pid, signal.SIGTERM)
        for service in services:
            try:
                service.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait(timeout)
            if service.process.stdout is not None:
                service.process.stdout.close()

    # -- health -------------------------------------------------------------------------------

    def problem(self, timeout: float = 10.0) -> str | None:
        """Why the box cannot serve right now (a service exited or does not answer), or None.

        Each service must answer a request that touches its database within ``timeout``.
        """
        for service in self.services.values():
            if service.process.poll() is not None:
                return f"{service.name} exited with {service.process.returncode}"
        probes = [("nova", f"{self.endpoint}/flavors")]
        if self.identity is not None:
            probes += [
                ("keystone", f"{self.identity.auth_url}"),
                ("glance", f"http://127.0.0.1:{self.info['glance_port']}/versions"),
                ("neutron", f"http://127.0.0.1:{self.info['neutron_port']}/"),
            ]
        for name, url in probes:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    response.read()
            except urllib.error.HTTPError as e:
                if e.code >= 500:
                    return f"{name} answered {e.code} to GET {url}"
            except OSError as e:
                return f"{name} did not answer GET {url} within {timeout} s: {e}"
        return None

    # -- clouds.yaml --------------------------------------------------------------------------

    def write_clouds_yaml(self) -> None:
        """Write the clouds.yaml (password, application-credential and admin clouds)."""
        self.clouds_yaml.write_text(yaml.safe_dump(self.clouds()))

    def clouds(self, project_id: str | None = None) -> dict[str, Any]:
        """A clouds.yaml document for the box.

        With Keystone: ``nova-box`` (the amphora user's password, scoped to ``project_id`` when
        named, else the amphora project), ``nova-box-appcred`` and ``nova-box-admin``. Without:
        ``nova-box`` with ``auth_type: none`` as ``project_id`` (any hex id) or the default.
        """
        if self.identity is None:
            endpoint = self.project_endpoint(project_id) if project_id else self.endpoint
            return {
                "clouds": {
                    CLOUD: {
                        "auth_type": "none",
                        "compute_endpoint_override": endpoint,
                        "region_name": cloud_setup.REGION,
                    }
                }
            }
        identity = self.identity
        common = {"region_name": cloud_setup.REGION, "interface": "public"}
        return {
            "clouds": {
                CLOUD: {
                    "auth": {
                        "auth_url": identity.auth_url,
                        "username": cloud_setup.USER,
                        "password": identity.user_password,
                        "project_id": project_id or identity.project_id,
                        "user_domain_name": "Default",
                    },
                    **common,
                },
                APPCRED_CLOUD: {
                    "auth_type": "v3applicationcredential",
                    "auth": {
                        "auth_url": identity.auth_url,
                        "application_credential_id": identity.application_credential_id,
                        "application_credential_secret": identity.application_credential_secret,
                    },
                    **common,
                },
                ADMIN_CLOUD: {
                    "auth": {
                        "auth_url": identity.auth_url,
                        "username": "admin",
                        "password": identity.admin_password,
                        "project_id": project_id or identity.project_id,
                        "user_domain_name": "Default",
                    },
                    **common,
                },
            }
        }

    def new_project(self, name: str) -> str:
        """A Keystone project where the amphora user is a member (e.g. for its own quota)."""
        assert self.identity is not None, "projects need Keystone"
        admin = cloud_setup.admin_connection(self.identity.auth_url, self.identity.admin_password)
        try:
            project = admin.identity.create_project(name=name, domain_id="default")
            member = admin.identity.find_role("member")
            admin_role = admin.identity.find_role("admin")
            user = admin.identity.find_user(cloud_setup.USER, domain_id="default")
            admin_user = admin.identity.find_user("admin", domain_id="default")
            admin.identity.assign_project_role_to_user(project, user, member)
            admin.identity.assign_project_role_to_user(project, admin_user, admin_role)
            return str(project.id)
        finally:
            admin.close()

    def log_tail(self, lines: int = 40, name: str = "nova") -> str:
        """The last lines of a service's log, for failure messages."""
        path = self.log_path if name == "nova" else self.state_dir / f"{name}.log"
        if not path.exists():
            return f"(no log at {path})"
        with open(path, errors="replace") as log:
            tail = deque(log, maxlen=lines)
        return f"--- last {len(tail)} lines of {path} ---\n" + "".join(tail)

    def log_tails(self, lines: int = 40) -> str:
        """The tail of every service's log."""
        names = ["nova"] + (["keystone", "glance"] if self.cloud_venv is not None else [])
        return "\n".join(self.log_tail(lines, name) for name in names)


def _interrupt() -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Nova box until interrupted.")
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--state-dir", type=Path, default=Path(".local/nova-box"))
    parser.add_argument("--computes", type=int, default=2)
    parser.add_argument("--baremetal-nodes", type=int, default=1)
    parser.add_argument("--nova-only", action="store_true", help="no Keystone/Glance, no auth")
    args = parser.parse_args(argv)
    venv, install_seconds = install_venv()
    cloud_venv = None
    if not args.nova_only:
        cloud_venv, cloud_seconds = install_cloud_venv()
        install_seconds += cloud_seconds
    box = NovaBox(
        venv=venv,
        state_dir=args.state_dir.resolve(),
        computes=args.computes,
        baremetal_nodes=args.baremetal_nodes,
        cloud_venv=cloud_venv,
    )
    box.start()
    # SIGTERM (e.g. from timeout or a CI runner) stops the box like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: _interrupt())
    print(
        json.dumps(
            {
                **{k: v for k, v in box.info.items() if k != "images"},
                "clouds_yaml": str(box.clouds_yaml),
                "cloud": CLOUD,
                "install_seconds": round(install_seconds, 1),
                "start_seconds": box.timings,
            }
        ),
        flush=True,
    )
    try:
        while box.problem(timeout=30) is None:
            time.sleep(2)
    except KeyboardInterrupt:
        pass
    finally:
        box.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
