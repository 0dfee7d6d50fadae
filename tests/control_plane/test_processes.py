"""Process supervision of the harness (``amphora_devtools.processes``): nothing is lost.

Real processes throughout: a shell that forks a grandchild stands in for a component, because
what must not survive is exactly such a forked process. Each test checks the kernel's view
(``/proc``) for the processes it started, by their unique marker on the command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from amphora_devtools.processes import (
    Child,
    PidFile,
    ProcessError,
    ProcessRecord,
    group_members,
    reap_orphans,
    run_script,
    start_time,
)
from amphora_devtools.wait import wait_until


def processes_with(marker: str) -> list[int]:
    """Pids of running (non-zombie) processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def forking_shell(marker: str) -> list[str]:
    """A leader shell that forks a sleeper (the grandchild) and waits for it."""
    return ["sh", "-c", f"sleep {marker} & wait"]


@pytest.fixture
def marker() -> Iterator[str]:
    """A sleep duration no other process on the machine has on its command line; whatever
    still carries it after a failed test is killed, so no test leaves processes behind."""
    value = str(7_000_000_000 + uuid.uuid4().int % 1_000_000_000)
    yield value
    for pid in processes_with(value):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_stop_ends_the_whole_process_group(tmp_path: Path, marker: str) -> None:
    child = Child("shell", forking_shell(marker), tmp_path / "shell.log")
    child.start()
    assert child.pid is not None
    wait_until(lambda: len(group_members(child.pid or 0)), lambda n: n == 2, timeout=10,
               what="leader and forked grandchild running")  # fmt: skip
    assert child.running()

    code = child.stop(grace=5)

    assert code == -signal.SIGTERM
    assert not child.running()
    assert group_members(child.pid) == []
    assert processes_with(marker) == []


def test_a_leader_that_exited_by_itself_still_has_its_group_killed(
    tmp_path: Path, marker: str
) -> None:
    """The grandchild outlives its parent; ``stop`` must still end it (no leftover)."""
    child = Child("shell", ["sh", "-c", f"sleep {marker} & exit 3"], tmp_path / "s.log")
    child.start()
    wait_until(child.running, lambda running: not running, timeout=10, what="leader exited")
    assert len(processes_with(marker)) == 1, "the forked sleeper still runs"

    assert child.stop() == 3
    assert processes_with(marker) == []


def test_running_is_the_kernels_answer_for_our_handle(tmp_path: Path) -> None:
    """A healthy child is never judged exited, however often it is asked (the old false
    "exited" came from re-deriving liveness from /proc by pid and name)."""
    child = Child("sleeper", ["sleep", "30"], tmp_path / "s.log")
    child.start()
    try:
        assert all(child.running() for _ in range(2000))
        assert child.returncode is None
    finally:
        child.kill()
    assert child.returncode == -signal.SIGKILL


def test_a_record_survives_pid_reuse_checks(tmp_path: Path) -> None:
    """A (pid, start time) record stops matching once its process is gone."""
    child = Child("sleeper", ["sleep", "30"], tmp_path / "s.log")
    child.start()
    record = child.record()
    assert record.alive()
    assert record.start_time == start_time(record.pid)
    child.kill()
    assert not record.alive()
    assert not ProcessRecord("fake", record.pid, record.start_time + 1).alive()


_OWNER = textwrap.dedent(
    """
    import os, time
    from pathlib import Path
    from amphora_devtools.processes import Child, PidFile, this_process
    run_dir, marker = Path(os.environ["RUN_DIR"]), os.environ["MARKER"]
    die_with_parent = os.environ["DIE_WITH_PARENT"] == "1"
    child = Child("shell", ["sh", "-c", f"sleep {marker} & wait"], run_dir / "shell.log",
                  die_with_parent=die_with_parent)
    child.start()
    PidFile("owner-test", this_process(), run_dir).write([child.record()])
    print("started", flush=True)
    time.sleep(300)
    """
)


def _crashing_owner(run_dir: Path, marker: str, die_with_parent: bool) -> None:
    """A Python process that starts a child, writes its pid file, and is then SIGKILLed."""
    env = {
        **os.environ,
        "RUN_DIR": str(run_dir),
        "MARKER": marker,  # not on its command line: only the shell and the sleeper have it
        "DIE_WITH_PARENT": "1" if die_with_parent else "0",
    }
    with subprocess.Popen(
        [sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True, env=env
    ) as owner:
        try:
            assert owner.stdout is not None
            assert owner.stdout.readline().strip() == "started"
            wait_until(lambda: len(processes_with(marker)), lambda n: n == 2, timeout=10,
                       what="the owner's child and grandchild running")  # fmt: skip
        finally:
            owner.send_signal(signal.SIGKILL)


def test_the_next_run_reaps_what_a_sigkilled_owner_left(tmp_path: Path, marker: str) -> None:
    """Without the kernel's help (no parent-death signal), the pid file is what saves us."""
    run_dir = tmp_path / "run"
    _crashing_owner(run_dir, marker, die_with_parent=False)
    assert len(processes_with(marker)) == 2, "orphans run on after the owner's SIGKILL"

    reaped = reap_orphans(run_dir)

    assert len(reaped) == 1 and "owner-test.json" in reaped[0], reaped
    assert processes_with(marker) == []
    assert list(run_dir.glob("*.json")) == []


def test_children_die_with_a_sigkilled_owner(tmp_path: Path, marker: str) -> None:
    """The parent-death signal: the kernel ends the component when its owner dies; only the
    grandchild it forked (not a component of ours) is left for the reaper."""
    run_dir = tmp_path / "run"
    _crashing_owner(run_dir, marker, die_with_parent=True)
    wait_until(lambda: len(processes_with(marker)), lambda n: n <= 1, timeout=10,
               what="the child killed by the kernel")  # fmt: skip
    reap_orphans(run_dir)
    assert processes_with(marker) == []


def test_pid_files_of_live_owners_and_detached_ones_are_left_alone(
    tmp_path: Path, marker: str
) -> None:
    run_dir = tmp_path / "run"
    child = Child("sleeper", ["sleep", marker], tmp_path / "sleeper.log")
    child.start()
    try:
        me = ProcessRecord.of("owner", os.getpid())
        PidFile("live-owner", me, run_dir).write([child.record()])
        PidFile("detached", None, run_dir).write([child.record()])

        assert reap_orphans(run_dir) == []

        assert child.running()
        assert {p.name for p in run_dir.glob("*.json")} == {"live-owner.json", "detached.json"}
        recorded = json.loads((run_dir / "live-owner.json").read_text())
        assert recorded["children"][0]["pid"] == child.pid
    finally:
        child.kill()


def test_a_reused_pid_in_an_orphans_pid_file_is_not_killed(tmp_path: Path) -> None:
    """The recorded pid now belongs to another process (different start time): spared."""
    run_dir = tmp_path / "run"
    bystander = Child("bystander", ["sleep", "60"], tmp_path / "b.log")
    bystander.start()
    try:
        real = bystander.record()
        dead_owner = ProcessRecord("owner", 2**22 + 1, 1)  # beyond pid_max: never alive
        stale = ProcessRecord("component", real.pid, real.start_time - 1)
        PidFile("stale", dead_owner, run_dir).write([stale])

        assert len(reap_orphans(run_dir)) == 1
        time.sleep(0.2)
        assert bystander.running()
    finally:
        bystander.kill()


def test_run_script_streams_its_output_and_returns_the_last_line(tmp_path: Path) -> None:
    script = tmp_path / "step.sh"
    script.write_text("echo 'building' >&2\necho /cache/bin\n")
    seen: list[str] = []
    assert run_script(script, seen.append) == "/cache/bin"
    assert seen == ["building", "/cache/bin"]


def test_a_failed_script_raises_the_callers_error_with_its_log_tail(tmp_path: Path) -> None:
    class StepFailed(RuntimeError):
        pass

    script = tmp_path / "step.sh"
    script.write_text("for i in $(seq 1 100); do echo line-$i >&2; done\nexit 3\n")
    with pytest.raises(StepFailed) as failure:
        run_script(script, error=StepFailed, tail_lines=5)
    message = str(failure.value)
    assert "exited with 3" in message
    assert "line-96" in message and "line-100" in message
    assert "line-95" not in message


def test_a_script_that_prints_no_result_fails(tmp_path: Path) -> None:
    script = tmp_path / "silent.sh"
    script.write_text("true\n")
    with pytest.raises(ProcessError, match="exited with 0"):
        run_script(script)
