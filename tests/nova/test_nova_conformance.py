"""The Nova driver passes the shared conformance suite against a real Nova API (the box)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from amphora_drivers.nova import NovaDriver
from amphora_drivers.testing import ConformanceTarget, DriverConformance

from tests.fixtures.nova_box import NovaBoxInfo

pytestmark = pytest.mark.nova


class TestNovaConformance(DriverConformance):
    @pytest.fixture
    def conformance_target(self, nova_box: NovaBoxInfo) -> Iterator[ConformanceTarget]:
        # Credentials the way the operator passes them: a clouds.yaml path and a cloud name.
        driver = NovaDriver(clouds_yaml=str(nova_box.clouds_yaml), cloud=nova_box.cloud)
        yield ConformanceTarget(
            driver=driver,
            build_kwargs={
                "amphora_flavor": nova_box.flavor_name,
                "image_id": nova_box.image_id,
                "network_ids": [nova_box.network_id],
            },
            timeout=30,
            poll_interval=0.1,
        )
        driver.close()
