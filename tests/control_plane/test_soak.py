"""The control-plane harness is dependable: many cycles, crashes of its owner, no leftovers.

Soak (issue 13, "Done means"): 20 consecutive ``up()``/``down()`` cycles on fresh state dirs
with 0 failed attempts and 0 processes left. Leftovers are looked for by scanning ``/proc`` for
command lines that contain this test's own state dirs (other sessions on the machine run
clusters of their own at the same time, so the binaries' paths alone would find theirs).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from amphora_devtools.control_plane import LocalControlPlane, build_binaries
from amphora_devtools.processes import reap_orphans
from amphora_devtools.wait import wait_until

from tests.control_plane.test_processes import processes_with

pytestmark = pytest.mark.cluster

CYCLES = int(os.environ.get("AMPHORA_SOAK_CYCLES", "20"))


@pytest.fixture(scope="module")
def bin_dir() -> Path:
    return build_binaries()


def _stop_leftovers(root: Path) -> list[int]:
    """Kill (and return) whatever still runs with ``root`` on its command line."""
    left = processes_with(str(root))
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


@pytest.mark.slow
@pytest.mark.soak
def test_up_down_cycles_on_fresh_state_leave_nothing_behind(bin_dir: Path, tmp_path: Path) -> None:
    seconds: list[float] = []
    failed_attempts: dict[int, list[str]] = {}
    leftovers: dict[int, list[int]] = {}
    started = time.monotonic()
    try:
        for cycle in range(CYCLES):
            plane = LocalControlPlane(tmp_path / f"cycle-{cycle:02d}", bin_dir=bin_dir)
            t0 = time.monotonic()
            plane.up()
            assert plane.is_ready(), f"cycle {cycle}: up() returned but /readyz fails"
            plane.down()
            seconds.append(time.monotonic() - t0)
            if plane.failed_dir.exists():
                failed_attempts[cycle] = sorted(p.name for p in plane.failed_dir.iterdir())
            if left := processes_with(str(plane.state_dir)):
                leftovers[cycle] = left
            assert not plane._pid_file.path.exists(), "down() removes the pid file"
            shutil.rmtree(plane.state_dir / "etcd")  # 64 MiB of preallocated WAL per cycle
    finally:
        stray = _stop_leftovers(tmp_path)
    total = time.monotonic() - started
    print(
        f"\nsoak: {len(seconds)}/{CYCLES} cycles, {len(failed_attempts)} with failed attempts, "
        f"{len(leftovers)} with leftovers, {total:.0f} s in total, "
        f"up+down mean {sum(seconds) / len(seconds):.1f} s, max {max(seconds):.1f} s"
    )
    assert failed_attempts == {}, f"start attempts failed (see failed/ dirs): {failed_attempts}"
    assert leftovers == {}
    assert stray == []


_OWNER = textwrap.dedent(
    """
    import os, time
    from amphora_devtools.control_plane import LocalControlPlane
    plane = LocalControlPlane(os.environ["STATE_DIR"], bin_dir=os.environ["BIN_DIR"])
    plane.up()
    print(plane._pid_file.path, flush=True)
    time.sleep(600)
    """
)


def test_a_sigkilled_owner_leaves_nothing_and_the_next_up_works(
    bin_dir: Path, tmp_path: Path
) -> None:
    """What a crashed pytest does to its cluster: SIGKILL the Python process that owns it.

    The kernel's parent-death signal ends every component at once; the pid file it left is
    reaped by the next ``up()``, which then starts cleanly (no flocked etcd, no port in use).
    """
    crashed = tmp_path / "crashed"
    # The state dir goes by environment: only the components have it on their command lines.
    env = {**os.environ, "STATE_DIR": str(crashed), "BIN_DIR": str(bin_dir)}
    with subprocess.Popen(
        [sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True, env=env
    ) as owner:
        try:
            assert owner.stdout is not None
            pid_file = Path(owner.stdout.readline().strip())
            assert pid_file.is_file(), "the owner recorded its children"
            assert len(processes_with(str(crashed))) == 5, "all five components run"
        finally:
            owner.send_signal(signal.SIGKILL)
    try:
        wait_until(
            lambda: processes_with(str(crashed)),
            lambda left: not left,
            timeout=30,
            what="every component of the SIGKILLed owner gone",
        )
        again = LocalControlPlane(tmp_path / "again", bin_dir=bin_dir)
        again.up()
        assert not pid_file.exists(), "up() reaped the crashed owner's pid file"
        assert again.is_ready()
        again.down()
    finally:
        assert _stop_leftovers(tmp_path) == []


def test_a_detached_plane_survives_its_starter_and_stops_from_another_process(
    bin_dir: Path, tmp_path: Path
) -> None:
    """The CLI: ``amphora-dev cluster up`` returns, the cluster runs on; ``down`` (another
    process, holding no handles) stops all of it."""
    state = tmp_path / "cli"
    dev = Path(sys.executable).parent / "amphora-dev"
    try:
        up = subprocess.run(
            [str(dev), "cluster", "up", "--state-dir", str(state)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        assert len(processes_with(str(state))) == 5
        plane = LocalControlPlane(state)
        assert plane.is_ready()
        assert not plane._pid_file.path.exists(), "no pid file: nothing for reapers to take"
        reap_orphans()  # what a later test run does first: it must leave this plane alone
        assert len(processes_with(str(state))) == 5

        down = subprocess.run(
            [str(dev), "cluster", "down", "--state-dir", str(state)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert down.returncode == 0, down.stdout + down.stderr
        assert processes_with(str(state)) == []
    finally:
        assert _stop_leftovers(tmp_path) == []
