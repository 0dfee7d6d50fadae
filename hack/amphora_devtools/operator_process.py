"""``amphora-operator run`` as a supervised child: what tests, bench and the demo start.

The operator runs as a real process (so tests can SIGKILL it as a crash) in a session of its
own, through :class:`amphora_devtools.processes.Child`: it dies with the process that started
it, and ``stop()`` leaves nothing of its process group behind.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from amphora_devtools.metrics import Samples, scrape
from amphora_devtools.net import free_port, http_ok
from amphora_devtools.processes import STOP_GRACE_SECONDS, Child, ProcessRecord
from amphora_devtools.wait import wait_until

__all__ = ["OperatorExited", "OperatorProcess"]


class OperatorExited(AssertionError):
    """The operator exited while it was expected to come up; the message has its log tail."""


class OperatorProcess:
    """One ``amphora-operator run`` child with its own config file and log.

    ``metrics``/``health``: serve that endpoint on a free port (else the port flag is 0, off).
    ``env``: the child's whole environment (default: inherited). Each ``start()`` writes a new
    log ``<workdir>/<name>-<n>.log``; ``logs()`` joins them all. ``detached``: it keeps running
    when this Python process ends (the demo's CLI); otherwise it dies with it.
    """

    def __init__(
        self,
        *,
        kubeconfig: Path,
        workdir: Path,
        config: Mapping[str, Any],
        namespace: str | None = None,
        extra_args: Sequence[str] = (),
        log_format: str = "json",
        metrics: bool = False,
        health: bool = False,
        env: Mapping[str, str] | None = None,
        name: str = "operator",
        detached: bool = False,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.config = dict(config)
        self.namespace = namespace
        self.extra_args = list(extra_args)
        self.log_format = log_format
        self.metrics_port = free_port() if metrics else 0
        self.health_port = free_port() if health else 0
        self.env = dict(env) if env is not None else None
        self.name = name
        self.detached = detached
        self.starts = 0
        self._child: Child | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        """The log of the latest start."""
        return self.workdir / f"{self.name}-{self.starts}.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / f"{self.name}.config.yaml"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The ``subprocess.Popen`` of the latest start (None before the first)."""
        return self._child.process if self._child is not None else None

    def command(self) -> list[str]:
        command = [
            sys.executable, "-m", "amphora_operator.cli", "run",
            "--config", str(self.config_path), "--kubeconfig", str(self.kubeconfig),
            "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port),
            "--log-format", self.log_format,
        ]  # fmt: skip
        if self.namespace is not None:
            command += ["--namespace", self.namespace]
        return [*command, *self.extra_args]

    def start(self) -> None:
        """Write the config and spawn the operator; returns at once (see ``wait_ready``)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.starts += 1
        self._child = Child(
            self.name, self.command(), self.log_path, env=self.env, cwd=self.workdir,
            die_with_parent=not self.detached,
        )  # fmt: skip
        self._child.start()

    def running(self) -> bool:
        return self._child is not None and self._child.running()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until its health (else metrics) endpoint answers; fails at once if it exits."""
        port = self.health_port or self.metrics_port
        if not port:
            raise ValueError("wait_ready() needs health=True or metrics=True")
        path = "/healthz" if self.health_port else "/metrics"

        def answers() -> bool:
            if not self.running():
                raise OperatorExited(
                    f"the operator exited with {self.returncode}; {self.log_tail()}"
                )
            return http_ok(f"http://127.0.0.1:{port}{path}")

        try:
            wait_until(answers, timeout=timeout, what=f"operator {path} on port {port}")
        except AssertionError as error:
            self.stop()
            raise OperatorExited(f"{error}; {self.log_tail()}") from None

    @property
    def returncode(self) -> int | None:
        return self._child.returncode if self._child is not None else None

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM its process group (a graceful shutdown), SIGKILL after ``grace`` s."""
        if self._child is not None:
            self._child.stop(grace)

    def kill(self) -> None:
        """SIGKILL: no clean-up, as a crash."""
        if self._child is not None:
            self._child.kill()

    def __enter__(self) -> OperatorProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- what it says ----------------------------------------------------------------------

    def logs(self) -> str:
        """Every start's log, oldest first."""
        return "\n".join(
            path.read_text(errors="replace")
            for path in (self.workdir / f"{self.name}-{i}.log" for i in range(1, self.starts + 1))
            if path.exists()
        )

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"tail of {self.log_path}:\n" + "\n".join(text.splitlines()[-lines:])

    def metrics(self) -> Samples:
        """The operator's ``/metrics`` right now (needs ``metrics=True``)."""
        if not self.metrics_port:
            raise ValueError("this operator serves no metrics (metrics=False)")
        return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def record(self) -> ProcessRecord:
        if self._child is None:
            raise ValueError("the operator was never started")
        return self._child.record()

    def peak_rss_bytes(self) -> int:
        """VmHWM: the highest resident set size the running operator has had."""
        pid = self._child.pid if self._child is not None else None
        if pid is None:
            raise ValueError("the operator was never started")
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc/<pid>/status")


# -- CLI (the demo): a detached operator, stopped later by another process -------------------

_RECORD = "operator.json"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """``amphora-dev operator start|stop``."""
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start a detached operator; wait for /healthz")
    start.add_argument("--workdir", type=Path, required=True, help="config, logs, pid record")
    start.add_argument("--config", type=Path, required=True)
    start.add_argument("--kubeconfig", type=Path, required=True)
    start.add_argument("--timeout", type=float, default=60.0)
    start.set_defaults(handler=_cmd_start)
    stop = commands.add_parser("stop", help="stop the operator started in --workdir")
    stop.add_argument("--workdir", type=Path, required=True)
    stop.set_defaults(handler=_cmd_stop)


def _cmd_start(args: argparse.Namespace) -> int:
    _cmd_stop(args)  # at most one: a restart runs the current code
    operator = OperatorProcess(
        kubeconfig=args.kubeconfig.resolve(),
        workdir=args.workdir.resolve(),
        config=yaml.safe_load(args.config.read_text()),
        log_format="plain",
        metrics=True,
        health=True,
        detached=True,
    )
    operator.start()
    try:
        operator.wait_ready(args.timeout)
    except OperatorExited as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    record = operator.record()
    (args.workdir / _RECORD).write_text(json.dumps(asdict(record)) + "\n")
    print(f"pid {record.pid}, log {operator.log_path}, "
          f"metrics http://127.0.0.1:{operator.metrics_port}/metrics")  # fmt: skip
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    path = args.workdir / _RECORD
    if path.is_file():
        record = ProcessRecord(**json.loads(path.read_text()))
        if record.alive():
            print(f"stopping the operator (pid {record.pid})")
        record.terminate_group()
        path.unlink()
    return 0
