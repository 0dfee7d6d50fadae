"""Fixtures of the Container driver tests: one fresh namespace and driver per test module."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from amphora_devtools.real_node import RealNode
from amphora_drivers.container import BUILTIN_FLAVORS, ContainerDriver
from kubernetes import client as k8s
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from tests.container.support import HUGE_FLAVOR, REAL_NODE_OPTIONS, RESTRICTED


@pytest.fixture(scope="module")
def namespace(kube_api: ApiClient) -> Iterator[str]:
    """A namespace of its own, so every list in a test sees only this module's objects."""
    name = f"container-{uuid.uuid4().hex[:8]}"
    core = k8s.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    with contextlib.suppress(ApiException):
        core.delete_namespace(name)


@pytest.fixture(scope="module")
def driver(kube_api: ApiClient, namespace: str) -> Iterator[ContainerDriver]:
    """The driver under test, with the built-in flavors plus one no kwok Node can hold."""
    container = ContainerDriver(
        namespace=namespace,
        api_client=kube_api,
        flavors={**BUILTIN_FLAVORS, "huge": HUGE_FLAVOR},
    )
    yield container
    container.close()


@pytest.fixture(scope="module")
def restricted_namespace(kube_api: ApiClient) -> Iterator[str]:
    """A namespace enforcing the ``restricted`` Pod Security level (admission refuses others)."""
    name = f"real-{uuid.uuid4().hex[:8]}"
    core = k8s.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": name, "labels": RESTRICTED}})
    yield name
    with contextlib.suppress(ApiException):
        core.delete_namespace(name)


@pytest.fixture(scope="module")
def real_driver(
    kube_api: ApiClient, restricted_namespace: str, real_node: RealNode
) -> Iterator[ContainerDriver]:
    """The driver with the profile options that put its Pods on the real Node: its node
    selector and toleration, images never pulled (they were imported), default security."""
    container = ContainerDriver(
        namespace=restricted_namespace, api_client=kube_api, **REAL_NODE_OPTIONS
    )
    yield container
    container.close()
