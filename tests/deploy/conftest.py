"""Fixtures of the installation tests: one Installer per module, removed at the module's end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes.client import ApiClient

from tests.deploy.support import Installer
from tests.fixtures.control_plane import Kubectl


@pytest.fixture(scope="module")
def installer(kubectl: Kubectl, kube_api: ApiClient) -> Iterator[Installer]:
    """Applies manifests; at the module's end deletes them (except the CRD) and waits for it."""
    applied = Installer(kubectl=kubectl, kube_api=kube_api)
    yield applied
    applied.uninstall()
