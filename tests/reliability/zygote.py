"""A zygote for the chaos soak: one process imports the operator once, then forks a fresh
``amphora-operator run`` per start, which the soak SIGKILLs.

Why: on a loaded 2-core machine a cold ``python -m amphora_operator.cli run`` spends up to
20 s importing kopf, kubernetes and openstacksdk, so a kill a second or two after a cold start
lands in the imports and tests nothing. A forked child starts where the imports end (the
fork-server idea of multiprocessing's ``forkserver``): it logs in, lists and acts within a
second, so 100 kills cost minutes and each one can hit the operator at work. The child is the
real CLI in a session of its own (``setsid``) that dies with the zygote (``PR_SET_PDEATHSIG``);
the zygote has no threads and no event loop when it forks.

Protocol (JSON lines on stdin/stdout): the zygote says ``{"ready": true}`` once imported; each
``{"argv": [...], "log": path, "cwd": path}`` forks one operator and answers ``{"pid": n}``.
Closing stdin kills every child and ends the zygote.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import pkgutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any

import yaml
from amphora_devtools.processes import start_time

REPO = Path(__file__).resolve().parents[2]
_PR_SET_PDEATHSIG = 1


def serve(requests: IO[str], answers: IO[str]) -> None:
    """The zygote's loop (``python -m tests.reliability.zygote``)."""
    # Everything a run imports, once: the CLI, kopf, the Kubernetes client, the drivers.
    import amphora_drivers.nova.driver  # noqa: F401
    import amphora_operator.handlers  # noqa: F401
    import kopf  # noqa: F401
    from amphora_drivers import driver_class
    from amphora_operator import cli

    for name in ("noop", "nova"):
        driver_class(name)
    # The Kubernetes client imports its API and model modules lazily, on first use: 7 s of a
    # start on a loaded machine. Import them all once here.
    import kubernetes.client.api
    import kubernetes.client.models
    import pydantic.validate_call_decorator  # noqa: F401

    for package in (kubernetes.client.api, kubernetes.client.models):
        for module in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
            importlib.import_module(module.name)
    libc = ctypes.CDLL(None, use_errno=True)
    children: list[int] = []
    answers.write(json.dumps({"ready": True}) + "\n")
    answers.flush()
    for line in requests:
        _reap(children)
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        # The pid is answered only once the child leads its own session: a kill right after
        # a start (killpg of that pid) must find the group, not ESRCH.
        in_session, said_in_session = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(in_session)
                os.setsid()
                libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
                os.close(said_in_session)
                log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.close(log)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.chdir(request["cwd"])
                code = cli.main(request["argv"])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        os.close(said_in_session)
        os.read(in_session, 1)  # EOF once the child has closed its end, after setsid
        os.close(in_session)
        children.append(pid)
        answers.write(json.dumps({"pid": pid}) + "\n")
        answers.flush()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    _reap(children, block=True)


def _reap(children: list[int], block: bool = False) -> None:
    for pid in list(children):
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
            if done == 0:
                continue
        children.remove(pid)


class Zygote:
    """The zygote as seen from the test: start it once, fork operators from it."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO,
            text=True,
            start_new_session=True,
        )

        self.ready = False

    def wait_ready(self) -> None:
        """Until it has imported everything (it warms up meanwhile: start it early)."""
        if self.ready:
            return
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if json.loads(line or "{}").get("ready") is not True:
            raise RuntimeError(f"the zygote did not start (exit {self.process.poll()})")
        self.ready = True

    def fork(self, argv: list[str], log: Path, cwd: Path) -> int:
        self.wait_ready()
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"argv": argv, "log": str(log), "cwd": str(cwd)}))
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        return int(json.loads(self.process.stdout.readline())["pid"])

    def close(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class ForkedOperator:
    """One operator (restartable) forked from a :class:`Zygote`; the parts of
    ``OperatorProcess`` the soak and the ``launch`` tear-down use."""

    def __init__(
        self, zygote: Zygote, *, kubeconfig: Path, namespace: str, workdir: Path,
        config: dict[str, Any],
    ) -> None:  # fmt: skip
        self.zygote = zygote
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.workdir = workdir
        self.config = config
        self.starts = 0
        self._pid: int | None = None
        self._started_at: int | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "operator.config.yaml"
        config_path.write_text(yaml.safe_dump(self.config))
        self.starts += 1
        argv = [
            "run", "--config", str(config_path), "--kubeconfig", str(self.kubeconfig),
            "--metrics-port", "0", "--health-port", "0", "--log-format", "json",
            "--namespace", self.namespace,
        ]  # fmt: skip
        self._pid = self.zygote.fork(
            argv, self.workdir / f"operator-{self.starts}.log", self.workdir
        )
        self._started_at = start_time(self._pid)

    def running(self) -> bool:
        if self._pid is None:
            return False
        try:
            stat = Path(f"/proc/{self._pid}/stat").read_text()
        except OSError:
            return False
        state = stat.rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X") and start_time(self._pid) == self._started_at

    def kill(self) -> None:
        """SIGKILL its whole session, as a crash."""
        if self._pid is not None and self.running():
            # It may end on its own between the look and the kill.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.01)

    def stop(self, grace: float = 10.0) -> None:
        if self._pid is None or not self.running():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.kill()

    def acted(self) -> bool:
        """Whether the latest start has acted yet (a status write, a driver call, a GC)."""
        path = self.workdir / f"operator-{self.starts}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return any(m in text for m in ('"status written"', '"driver action"', '"orphan'))

    def logs(self) -> str:
        return "\n".join(
            path.read_text(errors="replace")
            for path in (self.workdir / f"operator-{i}.log" for i in range(1, self.starts + 1))
            if path.exists()
        )


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)
