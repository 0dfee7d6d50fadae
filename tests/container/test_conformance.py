"""The Container driver passes the shared conformance suite on the real control plane."""

from __future__ import annotations

import pytest
from amphora_drivers.container import ContainerDriver
from amphora_drivers.testing import ConformanceTarget, DriverConformance

from tests.container.support import IMAGE, TIMEOUT

pytestmark = pytest.mark.cluster


class TestContainerConformance(DriverConformance):
    @pytest.fixture
    def conformance_target(self, driver: ContainerDriver) -> ConformanceTarget:
        return ConformanceTarget(
            driver=driver,
            build_kwargs={"amphora_type": "Container", "image_id": IMAGE},
            timeout=TIMEOUT,
        )
