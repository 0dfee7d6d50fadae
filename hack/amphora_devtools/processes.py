"""Child processes that cannot be lost: real handles, whole process groups, and a pid file.

Every component the harness starts (etcd, kube-apiserver, ..., the operator) runs in a session
of its own, so one ``killpg`` reaches it and anything it forked. Three layers make sure nothing
outlives its owner:

1. A :class:`Child` keeps the ``Popen`` handle. Liveness is asked of the kernel about that
   handle (``waitid`` with ``WNOWAIT``), never re-derived from ``/proc`` by pid and name.
   Stopping SIGTERMs the group, SIGKILLs the group *unconditionally* after a grace period
   (while the leader is still unreaped, its zombie keeps the group id from being reused), then
   reaps the leader and waits until no member of the group is left.
2. Children started with ``die_with_parent`` get ``PR_SET_PDEATHSIG=SIGKILL`` (through
   util-linux ``setpriv``): when the owning process dies, even by SIGKILL, the kernel kills them.
3. An owner records what it started in a pid file under :data:`RUN_DIR` together with its own
   identity; :func:`reap_orphans` (called by every ``LocalControlPlane.up()``) kills the groups
   of pid files whose owner is gone and removes the files.

A pid alone is no identity (pids are reused); a :class:`ProcessRecord` pairs it with the
process's start time (field 22 of ``/proc/<pid>/stat``), which a reused pid cannot match.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

#: Where owners keep their pid files (shared by every checkout of this user on the machine).
RUN_DIR = Path(
    os.environ.get("AMPHORA_RUN_DIR", Path.home() / ".cache" / "amphora-operator" / "run")
)
STOP_GRACE_SECONDS = 15.0
_POLL_SECONDS = 0.05
_SETPRIV = shutil.which("setpriv")


#: Where long-running set-up steps report their output, line by line.
Progress = Callable[[str], None]


def quiet(_: str) -> None:
    """Library default for ``progress``: report nothing (the CLIs pass ``print``)."""


class ProcessError(RuntimeError):
    """A child could not be started or stopped, or a set-up script failed."""


def start_time(pid: int) -> int | None:
    """Clock ticks since boot at which ``pid`` started; None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces and parentheses; the fields after its last ")" do not.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _live_process_group(pid: int) -> int | None:
    """The process group of ``pid``; None when it does not exist or is a zombie (dead)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[2])


def group_members(pgid: int) -> list[int]:
    """Pids of every process of process group ``pgid`` that still runs (zombies are dead)."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _live_process_group(int(entry.name)) == pgid
    ]


def _wait_group_gone(pgid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() > deadline:
            raise ProcessError(f"process group {pgid} survived SIGKILL: {group_members(pgid)}")
        time.sleep(_POLL_SECONDS)


@dataclass(frozen=True)
class ProcessRecord:
    """A process named by pid *and* start time, so a reused pid is never mistaken for it."""

    name: str
    pid: int
    start_time: int

    @classmethod
    def of(cls, name: str, pid: int) -> ProcessRecord:
        started = start_time(pid)
        if started is None:
            raise ProcessError(f"{name} (pid {pid}) is not running")
        return cls(name, pid, started)

    def alive(self) -> bool:
        """The very process recorded still exists (as a zombie too: it still holds its pid)."""
        return start_time(self.pid) == self.start_time

    def kill_group(self, timeout: float = STOP_GRACE_SECONDS) -> None:
        """SIGKILL the session this process leads (our children are session leaders).

        Safe against pid reuse: while the leader is this very process (a zombie too), the group
        id is ours. Once it is gone, the kernel does not hand its number out again while any
        member of its group lives; so if no process now has that pid, any group by that id is
        the leader's own leftover, and if another process has it, the group must be empty.
        """
        if self.alive() or start_time(self.pid) is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            _wait_group_gone(self.pid, timeout)

    def terminate_group(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM, then SIGKILL after ``grace``: for a process we hold no handle of (CLI)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.alive() and time.monotonic() < deadline:
                time.sleep(_POLL_SECONDS)
        self.kill_group()


class Child:
    """One child process in its own session, owned through its ``Popen`` handle."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        """Spawn the child, appending its stdout and stderr to ``log_path``."""
        if self.running():
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.argv
        if self.die_with_parent and _SETPRIV is not None:
            argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            log.write(f"\n=== {time.strftime('%F %T')} {' '.join(self.argv)}\n".encode())
            log.flush()
            self.process = _popen(argv, log, self.env, self.cwd)

    def running(self) -> bool:
        """True until the child exits; asks the kernel about our own child, reaps nothing."""
        if self.process is None or self.process.returncode is not None:
            return False
        try:
            exited = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # already reaped by someone else's wait(): it exited
            return False
        return exited is None

    @property
    def returncode(self) -> int | None:
        """Exit status once exited (negative: killed by that signal), else None."""
        if self.process is None or self.running():
            return None
        return self.process.wait()

    def record(self) -> ProcessRecord:
        if self.process is None:
            raise ProcessError(f"{self.name} was never started")
        return ProcessRecord.of(self.name, self.process.pid)

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the child's whole process group (while the leader is unreaped)."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> int | None:
        """SIGTERM the group, SIGKILL it after ``grace`` s no matter what, reap; exit status.

        The group is SIGKILLed even when the leader exited by itself, because something it
        forked may still run; the unreaped leader keeps the group id ours until then.
        """
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            if self.running() and grace > 0:
                self.signal(signal.SIGTERM)
                deadline = time.monotonic() + grace
                while self.running() and time.monotonic() < deadline:
                    time.sleep(_POLL_SECONDS)
            self.signal(signal.SIGKILL)
            process.wait()
        elif group_members(process.pid):
            # Reaped elsewhere (``Popen.poll()``), yet something it forked lives on; the
            # kernel keeps the group id reserved while any member does.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        _wait_group_gone(process.pid, STOP_GRACE_SECONDS)
        return process.returncode

    def kill(self) -> int | None:
        """SIGKILL at once, as a crash: no clean-up runs in the child."""
        return self.stop(grace=0)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log ("" if it never ran)."""
        return tail(self.log_path, lines)


def _popen(
    argv: list[str], log: IO[bytes], env: Mapping[str, str] | None, cwd: Path | None
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as error:
        raise ProcessError(f"cannot start {argv[0]}: {error}") from error


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ("" when it does not exist)."""
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 1024 * lines))
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def run_script(
    script: Path,
    progress: Progress = quiet,
    *,
    error: type[Exception] = ProcessError,
    tail_lines: int = 40,
) -> str:
    """Run a set-up script (``hack/**/*.sh``) and return the last line it printed.

    The scripts print their result (a path) last on stdout and their progress on stderr; both
    are streamed to ``progress`` line by line, because a cold build takes minutes. A non-zero
    exit, or no output at all, raises ``error`` with the last ``tail_lines`` lines.
    """
    lines: deque[str] = deque(maxlen=tail_lines)
    with subprocess.Popen(
        ["bash", str(script)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            progress(lines[-1])
    if proc.returncode != 0 or not lines:
        text = "\n".join(lines)
        raise error(f"{script} exited with {proc.returncode}:\n{text}")
    return lines[-1]


# -- pid files -------------------------------------------------------------------------------


def this_process() -> ProcessRecord:
    return ProcessRecord.of("owner", os.getpid())


class PidFile:
    """``RUN_DIR/<key>.json``: what one owner started, for the next run to reap after a crash.

    ``owner`` None means detached (the CLI's ``up``: the processes are meant to outlive it and
    are only stopped by an explicit ``down``); :func:`reap_orphans` leaves such files alone.
    """

    def __init__(self, key: str, owner: ProcessRecord | None, run_dir: Path | None = None) -> None:
        self.path = (run_dir or RUN_DIR) / f"{key}.json"
        self.owner = owner

    def write(self, children: Iterable[ProcessRecord], **extra: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "owner": asdict(self.owner) if self.owner else None,
            "children": [asdict(c) for c in children],
            **extra,
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _records(data: Mapping[str, Any]) -> list[ProcessRecord]:
    return [ProcessRecord(**c) for c in data.get("children", [])]


def reap_orphans(run_dir: Path | None = None) -> list[str]:
    """Kill what crashed owners left behind; returns one line per pid file reaped.

    A pid file is an orphan's when its owner process is gone (a SIGKILLed pytest, say).
    Files of live owners (other sessions on this machine) and detached files are left alone.
    """
    reaped = []
    for path in sorted((run_dir or RUN_DIR).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now, or removed meanwhile
        owner = data.get("owner")
        if owner is None or ProcessRecord(**owner).alive():
            continue
        killed = []
        for record in _records(data):
            if record.alive():
                killed.append(f"{record.name} (pid {record.pid})")
            record.kill_group()
        path.unlink(missing_ok=True)
        reaped.append(f"{path.name}: owner pid {owner['pid']} gone; killed {killed or 'nothing'}")
    return reaped


def read_pid_file(path: Path) -> list[ProcessRecord]:
    """The children recorded in a pid file (none when it does not exist)."""
    try:
        return _records(json.loads(path.read_text()))
    except (OSError, ValueError):
        return []
