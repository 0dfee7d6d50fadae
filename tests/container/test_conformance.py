"""The Container driver passes the shared conformance suite on the real control plane: once with
kwok Nodes (placement only) and once on the real kubelet Node, where every amphora is a running
container that must answer its health probe before it counts as ACTIVE."""

from __future__ import annotations

import pytest
from amphora_devtools import images
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


@pytest.mark.real_node
class TestContainerConformanceOnRealNode(DriverConformance):
    @pytest.fixture
    def conformance_target(self, real_driver: ContainerDriver) -> ConformanceTarget:
        return ConformanceTarget(
            driver=real_driver,
            build_kwargs={"amphora_type": "Container", "image_id": images.STANDIN},
            timeout=60.0,
        )
