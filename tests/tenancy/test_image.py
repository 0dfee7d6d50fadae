"""The image is reproducible: its constraints are the tested environment's versions, its base
is pinned by digest, and the dev harness stays out (the Dockerfile is read: no Docker engine)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "deploy" / "image" / "constraints.txt"


def test_constraints_are_the_tested_environment() -> None:
    generated = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "image" / "lock.py")],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert LOCK.read_text() == generated, (
        "deploy/image/constraints.txt differs from this venv: run "
        ".venv/bin/python deploy/image/lock.py > deploy/image/constraints.txt"
    )
    pins = dict(line.split("==") for line in generated.splitlines() if not line.startswith("#"))
    for package in ("kopf", "kubernetes", "openstacksdk", "pydantic", "prometheus-client"):
        assert package in pins, package
    assert not {"pytest", "mypy", "ruff", "amphora-devtools"} & set(pins), "dev tools in image"


def test_dockerfile_builds_with_the_constraints_on_a_digest_pinned_base() -> None:
    text = (REPO / "Dockerfile").read_text()
    [base] = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base), base
    assert "--constraint constraints.txt" in text
    assert "COPY deploy/image/constraints.txt" in text
    assert not re.search(r"^COPY\s+(\S+\s+)*hack", text, re.MULTILINE), "the dev harness"
    assert re.search(r"^USER 65532:65532$", text, re.MULTILINE)
