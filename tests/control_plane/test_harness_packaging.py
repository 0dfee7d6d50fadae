"""The dev harness (``amphora_devtools``) is a distribution of its own, never in the product.

The production wheel (and so the image, which installs only that wheel) must not carry it;
import-linter keeps the product from importing it (tests/test_architecture.py).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_product_wheel_holds_no_harness(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps",
         "--wheel-dir", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("amphora_operator-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("amphora_operator/") for n in names)
    assert any(n.startswith("amphora_drivers/") for n in names)
    assert not [n for n in names if "amphora_devtools" in n or n.startswith("hack/")]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "amphora-dev" not in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_image_copies_no_harness() -> None:
    copies = [
        line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("COPY")
    ]
    assert copies and not [line for line in copies if "hack" in line], copies


def test_the_harness_is_its_own_distribution_with_the_dev_command() -> None:
    harness = tomllib.loads((REPO / "hack" / "pyproject.toml").read_text())
    assert harness["project"]["name"] == "amphora-devtools"
    assert harness["project"]["scripts"]["amphora-dev"] == "amphora_devtools.cli:main"
    product = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "amphora_devtools" not in product["tool"]["setuptools"]["packages"]
    assert "amphora_devtools" in product["tool"]["mypy"]["packages"], "checked like the product"
