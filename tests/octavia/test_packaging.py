"""The plugin stays installable into Octavia's venv alone: it imports nothing of the operator."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[2] / "integrations" / "octavia"
#: What Octavia's own environment provides, plus the plugin's one addition (kubernetes).
ALLOWED = {"amphora_octavia", "kubernetes", "novaclient", "octavia", "oslo_config", "oslo_log",
           "tenacity", "urllib3"}  # fmt: skip


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_plugin_imports_only_octavia_its_libraries_and_the_kubernetes_client() -> None:
    third_party = set()
    for module in (PLUGIN / "amphora_octavia").glob("*.py"):
        third_party |= _imported_roots(module) - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party <= ALLOWED, third_party - ALLOWED
    assert {"kopf", "amphora_operator", "amphora_drivers", "pydantic"}.isdisjoint(third_party)


def test_the_distribution_registers_the_driver_and_its_options() -> None:
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["octavia.compute.drivers"] == {
        "compute_amphora_k8s_driver": "amphora_octavia.driver:AmphoraK8sComputeDriver"
    }
    assert project["entry-points"]["oslo.config.opts"] == {
        "amphora_octavia": "amphora_octavia.config:list_opts"
    }
    assert not [d for d in project["dependencies"] if d.startswith(("kopf", "amphora"))]
