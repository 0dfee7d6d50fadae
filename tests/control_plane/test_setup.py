"""``hack/setup.sh``: set-up steps run in concurrent lanes, and a failed step fails loudly."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "hack" / "setup.sh"


def run_setup(tmp_path: Path, *lanes: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SETUP), *lanes],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "SETUP_LOG_DIR": str(tmp_path / "logs"), **env},
    )  # fmt: skip


def test_a_failed_install_fails_the_run_with_its_log_tail_and_the_other_lanes_finish(
    tmp_path: Path,
) -> None:
    # A fresh cache dir and a Python that does not exist: the Nova venv cannot be made.
    done = run_setup(
        tmp_path, "venv", "nova-venv",
        AMPHORA_CACHE_DIR=str(tmp_path / "cache"), NOVA_BOX_PYTHON="python-that-is-missing",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "nova-venv: FAILED (exit 1)" in done.stderr
    assert "nova-venv| " in done.stderr and "python-that-is-missing is required" in done.stderr
    assert "venv: done" in done.stderr, "the other lane ran to its end"
    assert "set-up FAILED in lane(s): nova-venv" in done.stderr
    assert (tmp_path / "logs" / "nova-venv.log").is_file()


def test_unknown_steps_are_refused_before_anything_runs(tmp_path: Path) -> None:
    done = run_setup(tmp_path, "venv", "control-plane+kubelt")
    assert done.returncode == 2
    assert "unknown step 'kubelt'" in done.stderr
    assert not (tmp_path / "logs" / "venv.log").exists()
