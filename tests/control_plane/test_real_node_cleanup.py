"""The real Node's cgroup clean-up, on a stand-in cgroup tree (no root, no kubelet needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from amphora_devtools import real_node
from amphora_devtools.real_node import RealNode


def test_kubepods_cgroups_are_removed_deepest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for controller in ("cpu", "memory"):
        (tmp_path / controller / "kubepods" / "besteffort" / "pod-a" / "ctr").mkdir(parents=True)
        (tmp_path / controller / "other").mkdir()
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "kubepods").symlink_to(tmp_path / "cpu" / "other")
    monkeypatch.setattr(real_node, "CGROUP_ROOT", tmp_path)
    RealNode._remove_cgroups(timeout=1.0)
    assert not (tmp_path / "cpu" / "kubepods").exists()
    assert not (tmp_path / "memory" / "kubepods").exists()
    assert (tmp_path / "cpu" / "other").is_dir(), "only kubepods is the node's"
    assert (tmp_path / "unified" / "kubepods").is_symlink(), "links are not followed"


def test_a_cgroup_that_cannot_be_emptied_is_given_up_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = tmp_path / "cpu" / "kubepods" / "pod-b"
    busy.mkdir(parents=True)
    (busy / "cgroup.procs").write_text("")  # a file keeps the stand-in dir from rmdir
    monkeypatch.setattr(real_node, "CGROUP_ROOT", tmp_path)
    RealNode._remove_cgroups(timeout=0.5)
    assert busy.is_dir()
