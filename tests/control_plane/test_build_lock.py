"""Concurrent ``build.sh`` runs of one cache key wait for each other instead of both building."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "hack" / "control-plane" / "build.sh"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd", "kwok")


def _key() -> str:
    versions = dict(
        line.split("=", 1)
        for line in (BUILD.parent / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return (
        f"k8s-{versions['K8S_VERSION']}_etcd-{versions['ETCD_VERSION']}"
        f"_kwok-{versions['KWOK_VERSION']}"
    )


def test_a_second_build_waits_for_the_first_and_uses_its_binaries(tmp_path: Path) -> None:
    out = tmp_path / _key()
    out.mkdir()
    # The "first build": holds the key's lock, and produces the binaries after 2 s.
    produce = " && ".join(f"install -D -m 755 /dev/null {out / 'bin' / name}" for name in BINARIES)
    first = subprocess.Popen(
        ["flock", str(out / ".build.lock"), "sh", "-c", f"sleep 2 && {produce}"]
    )
    time.sleep(0.5)  # let it take the lock
    env = {**os.environ, "AMPHORA_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    started = time.monotonic()
    second = subprocess.run(
        ["bash", str(BUILD)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    waited = time.monotonic() - started
    first.wait(10)

    assert second.returncode == 0, second.stderr
    assert "another build of" in second.stderr and "built meanwhile" in second.stderr
    assert second.stdout.strip() == str(out / "bin")
    assert waited >= 1.0, "it returned before the first build finished"
