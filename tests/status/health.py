"""How GitOps tools judge an Amphora: kstatus through the real Go library, Argo CD through the
shipped Lua health script, and the agreement expected between the two.

kstatus is what Flux (``wait``, ``healthChecks``), ``kpt live status`` and cli-utils appliers
use; ``hack/kstatus/build.sh`` builds a tiny Go program around it (cached). The Argo CD script is
run by Lua 5.4 through lupa, with the object handed over as Argo CD does: the decoded JSON.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lupa
import pytest

from tests.fixtures.operator import REPO

KSTATUS_BUILD = REPO / "hack" / "kstatus" / "build.sh"
ARGO_SCRIPT = REPO / "deploy" / "argocd" / "amphora-health.lua"
ARGO_PATCH = REPO / "deploy" / "argocd" / "argocd-cm-patch.yaml"
ARGO_KEY = "resource.customizations.health.amphora-operator.dev_Amphora"

#: The Argo CD health each kstatus result must come with for the tools to agree.
CONSISTENT: Mapping[str, frozenset[str]] = {
    "Current": frozenset({"Healthy", "Suspended"}),
    "InProgress": frozenset({"Progressing"}),
    "Failed": frozenset({"Degraded"}),
    "Terminating": frozenset({"Progressing"}),
}


@dataclass(frozen=True)
class Verdict:
    status: str
    message: str


def build_kstatus() -> Path:
    """Build (or find cached) the kstatus tool; fails the test loudly when Go cannot."""
    result = subprocess.run(
        ["bash", str(KSTATUS_BUILD)], capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"building the kstatus tool failed:\n{result.stderr[-4000:]}", pytrace=False)
    return Path(result.stdout.strip().splitlines()[-1])


def kstatus(binary: Path, kubectl_json: str) -> dict[str, Verdict]:
    """kstatus of each object in ``kubectl get -o json`` output, by object name."""
    result = subprocess.run(
        [str(binary)], input=kubectl_json, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, f"kstatus tool failed: {result.stderr}"
    verdicts = {}
    for line in result.stdout.splitlines():
        row = json.loads(line)
        verdicts[row["name"]] = Verdict(row["status"], row["message"])
    return verdicts


def argo_health(obj: Mapping[str, Any]) -> Verdict:
    """Run the shipped Argo CD health script on ``obj``, in a fresh Lua state."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(ARGO_SCRIPT.read_text())
    assert result is not None, "the health script returned nothing"
    return Verdict(str(result["status"]), str(result["message"] or ""))
