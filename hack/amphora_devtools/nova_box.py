"""Launch the Nova box: a real Nova API on 127.0.0.1 in its own virtualenv and process.

``hack/nova-box/install.sh`` makes the venv (once per nova version), ``hack/nova-box/serve.py``
runs inside it. This module starts that process, reads its JSON line (port, project, fixture
ids), writes a ``clouds.yaml`` for openstacksdk (``auth_type: none`` +
``compute_endpoint_override``) and stops the process by its pid. The box's log (its stderr)
goes to a file so that failures can show its tail.

CLI: ``python -m amphora_devtools.nova_box up [--state-dir DIR]`` prints the JSON description
and serves until interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NOVA_BOX_DIR = Path(__file__).resolve().parent.parent / "nova-box"
INSTALL_SCRIPT = NOVA_BOX_DIR / "install.sh"
SERVE_SCRIPT = NOVA_BOX_DIR / "serve.py"
#: The cloud name in the clouds.yaml the launcher writes.
CLOUD = "nova-box"
#: Nova 34's highest compute microversion (what the box answers to).
MAX_MICROVERSION = "2.104"

__all__ = ["CLOUD", "NovaBox", "NovaBoxError", "install_venv"]


class NovaBoxError(RuntimeError):
    """The box could not be installed or started; the message carries the log's tail."""


def install_venv(timeout: float = 900.0) -> tuple[Path, float]:
    """Run install.sh (a no-op when the venv exists); return (venv path, seconds taken)."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise NovaBoxError(f"install.sh did not finish within {timeout} s") from e
    if done.returncode != 0 or not done.stdout.strip():
        tail = "\n".join(done.stderr.splitlines()[-30:])
        raise NovaBoxError(f"install.sh failed (exit {done.returncode}):\n{tail}")
    return Path(done.stdout.strip().splitlines()[-1]), time.monotonic() - started


@dataclass
class NovaBox:
    """One running box: where it listens, how to reach it, and the fixture data it holds."""

    venv: Path
    state_dir: Path
    computes: int = 2
    baremetal_nodes: int = 1
    process: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: Seconds from spawning serve.py to its JSON line (the API is ready then).
    start_seconds: float = 0.0

    @property
    def log_path(self) -> Path:
        return self.state_dir / "nova-box.log"

    @property
    def clouds_yaml(self) -> Path:
        return self.state_dir / "clouds.yaml"

    @property
    def port(self) -> int:
        return int(self.info["port"])

    @property
    def endpoint(self) -> str:
        """The compute endpoint of the box's default project."""
        return f"http://127.0.0.1:{self.port}/v2.1"

    def project_endpoint(self, project_id: str) -> str:
        """The compute endpoint as seen by another project (hex id), for isolated quotas."""
        return f"{self.endpoint}/{project_id}"

    def start(self, timeout: float = 120.0) -> None:
        """Spawn serve.py and wait (bounded) for its JSON line; NovaBoxError on failure."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OS_NOVA_DISABLE_EVENTLET_PATCHING": "1"}
        env.pop("OS_TEST_TIMEOUT", None)  # nova's TestCase would stop the box after it
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    str(self.venv / "bin" / "python"),
                    str(SERVE_SCRIPT),
                    "--computes",
                    str(self.computes),
                    "--baremetal-nodes",
                    str(self.baremetal_nodes),
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        line = self._read_line(started + timeout)
        try:
            self.info = json.loads(line)
        except json.JSONDecodeError as e:
            self.stop()
            raise NovaBoxError(f"the box printed {line!r}, not JSON\n{self.log_tail()}") from e
        self.start_seconds = time.monotonic() - started
        self.write_clouds_yaml()

    def _read_line(self, deadline: float) -> str:
        assert self.process is not None and self.process.stdout is not None
        out = self.process.stdout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NovaBoxError(
                    f"the box exited with {self.process.returncode} before serving\n"
                    f"{self.log_tail()}"
                )
            ready, _, _ = select.select([out], [], [], 0.2)
            if ready:
                return out.readline().decode().strip()
        self.stop()
        raise NovaBoxError(f"the box did not report its port in time\n{self.log_tail()}")

    def write_clouds_yaml(self) -> None:
        """Write a clouds.yaml with the default project's cloud (``nova-box``)."""
        self.clouds_yaml.write_text(yaml.safe_dump(self.clouds()))

    def clouds(self, project_id: str | None = None) -> dict[str, Any]:
        """A clouds.yaml document for the box (for a given project when named)."""
        endpoint = self.project_endpoint(project_id) if project_id else self.endpoint
        return {
            "clouds": {
                CLOUD: {
                    "auth_type": "none",
                    "compute_endpoint_override": endpoint,
                    "region_name": "RegionOne",
                }
            }
        }

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the box's log, for failure messages."""
        if not self.log_path.exists():
            return "(no log)"
        with open(self.log_path, errors="replace") as log:
            tail = deque(log, maxlen=lines)
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "".join(tail)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the box's process group by pid: SIGTERM, then SIGKILL after ``timeout``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)
        if process.stdout is not None:
            process.stdout.close()


def _interrupt() -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the Nova box until interrupted.")
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--state-dir", type=Path, default=Path(".local/nova-box"))
    parser.add_argument("--computes", type=int, default=2)
    parser.add_argument("--baremetal-nodes", type=int, default=1)
    args = parser.parse_args(argv)
    venv, install_seconds = install_venv()
    box = NovaBox(
        venv=venv,
        state_dir=args.state_dir.resolve(),
        computes=args.computes,
        baremetal_nodes=args.baremetal_nodes,
    )
    box.start()
    # SIGTERM (e.g. from timeout or a CI runner) stops the box like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: _interrupt())
    print(
        json.dumps(
            {
                **box.info,
                "clouds_yaml": str(box.clouds_yaml),
                "cloud": CLOUD,
                "install_seconds": round(install_seconds, 1),
                "start_seconds": round(box.start_seconds, 1),
            }
        ),
        flush=True,
    )
    try:
        while box.process is not None and box.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        box.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
