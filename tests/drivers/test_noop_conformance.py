"""The noop driver passes the shared conformance suite, in memory and file-backed."""

from __future__ import annotations

from pathlib import Path

import pytest
from amphora_drivers.noop import NoopDriver
from amphora_drivers.testing import ConformanceTarget, DriverConformance


class TestNoopInMemory(DriverConformance):
    @pytest.fixture
    def conformance_target(self) -> ConformanceTarget:
        return ConformanceTarget(driver=NoopDriver(build_seconds=0.3), timeout=5)


class TestNoopFileBacked(DriverConformance):
    @pytest.fixture
    def conformance_target(self, tmp_path: Path) -> ConformanceTarget:
        driver = NoopDriver(state_file=tmp_path / "noop.json", delete_seconds=0.2)
        return ConformanceTarget(
            driver=driver, build_kwargs={"amphora_type": "Container", "image_id": "img"}, timeout=5
        )
