"""The real Node's cgroup clean-up, on a stand-in cgroup tree (no root, no kubelet needed)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from amphora_devtools import real_node
from amphora_devtools.real_node import RealNode, RealNodeError


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


def test_a_second_real_node_is_refused_while_the_first_one_is_starting(tmp_path: Path) -> None:
    """The Node's bridge and cgroups are machine-wide: a second one would tear them down."""
    claim = tmp_path / "claim.json"
    first = RealNode(tmp_path / "first", tmp_path / "kubeconfig", claim=claim)
    second = RealNode(tmp_path / "second", tmp_path / "kubeconfig", claim=claim)
    with subprocess.Popen(["sleep", "60"]) as starter:  # the first Node's process, still alive
        claim.write_text(json.dumps({"state_dir": str(first.state_dir), "pid": starter.pid}))
        with pytest.raises(RealNodeError, match="another real Node runs on this machine"):
            second._check_claim()
        first._check_claim()  # its own claim is no obstacle
        starter.kill()
    second._check_claim()  # the claimer is gone and no containerd or kubelet runs: taken over


def test_down_gives_up_only_its_own_claim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    claim = tmp_path / "claim.json"
    node = RealNode(tmp_path / "node", tmp_path / "kubeconfig", claim=claim)
    for step in ("_stop", "_kill_stray_shims", "_unmount_under", "_delete_bridge"):
        monkeypatch.setattr(node, step, lambda *args: None)
    monkeypatch.setattr(RealNode, "_remove_cgroups", staticmethod(lambda *args: None))
    monkeypatch.setattr(RealNode, "_remove_log_links", lambda self: None)
    monkeypatch.setattr(RealNode, "_cni_results", staticmethod(lambda: []))  # a live Node's
    other = {"state_dir": str(tmp_path / "other"), "pid": 1}
    claim.write_text(json.dumps(other))
    node.down()
    assert json.loads(claim.read_text()) == other
    claim.write_text(json.dumps({"state_dir": str(node.state_dir), "pid": 1}))
    assert node.leftovers()["claim"] == [str(claim)]
    node.down()
    assert not claim.exists()
