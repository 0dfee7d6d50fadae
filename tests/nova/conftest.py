"""Fixtures every Nova test module shares: a driver, an admin connection, built-server clean-up.

A module that needs other defaults (e.g. ``test_nova_faults``: a driver behind the fault
proxy) defines its own fixture of the same name, which takes precedence.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import openstack.connection
import pytest
from amphora_drivers.nova import NovaDriver
from amphora_drivers.testing import wait_for

from tests.fixtures.nova_box import SETTLE_TIMEOUT, NovaBoxInfo, make_driver


@pytest.fixture
def driver(nova_box: NovaBoxInfo) -> Iterator[NovaDriver]:
    """The amphora user's driver (password clouds.yaml, catalog endpoints)."""
    built = make_driver(nova_box)
    yield built
    built.close()


@pytest.fixture
def admin(nova_box: NovaBoxInfo) -> Iterator[openstack.connection.Connection]:
    """Keystone's admin in the amphora project, pinned like the driver (reads user_data)."""
    conn = nova_box.connection()
    yield conn
    conn.close()


@pytest.fixture
def cleanup(driver: NovaDriver) -> Iterator[list[str]]:
    """Ids to delete after the test, and a check that they really go."""
    ids: list[str] = []
    yield ids
    for amphora_id in ids:
        driver.delete(amphora_id)
    for amphora_id in ids:
        gone = partial(driver.find, amphora_id=amphora_id)
        wait_for(gone, lambda found: not found, timeout=SETTLE_TIMEOUT)
