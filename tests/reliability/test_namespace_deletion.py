"""Deleting a namespace that holds Container Amphorae completes within 60 s, with the operator
running and with it stopped.

Every object the Container driver creates for an Amphora (StatefulSet, and through it the Pod;
Secrets, NetworkPolicy) carries an ownerReference to the Amphora, so Kubernetes' garbage
collector deletes them with it; an Amphora whose instances follow it that way holds no
finalizer (deletionPolicy Delete), so the namespace controller never waits for the operator.
Pods run on kwok Nodes.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from tests.fixtures.control_plane import Cluster
from tests.fixtures.operator import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    noop_config,
    strip_finalizers,
)
from tests.operator.scenario import amphora
from tests.reliability.support import Fleet, record, settled

AMPHORAE = 3
LIMIT = 60.0
IMAGE = "registry.example/amphora:1"


def gone(core: k8s.CoreV1Api, name: str) -> bool:
    try:
        core.read_namespace(name)
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


@pytest.mark.cluster
@pytest.mark.parametrize("operator_running", [True, False], ids=["operator", "no-operator"])
def test_namespace_with_container_amphorae_is_deleted_within_60_s(
    control_plane: Cluster,
    kube_api: ApiClient,
    amphora_crd: dict[str, Any],
    tmp_path: Path,
    operator_running: bool,
) -> None:
    namespace = f"nsdel-{uuid.uuid4().hex[:8]}"
    core, apps = k8s.CoreV1Api(kube_api), k8s.AppsV1Api(kube_api)
    core.create_namespace({"metadata": {"name": namespace}})
    config = noop_config(tmp_path / "noop.json", profiles={"container": {"driver": "container"}})
    config["defaults"]["Container"] = "container"
    operator = OperatorProcess(cluster=control_plane, namespace=namespace, workdir=tmp_path,
                               config=config, health=True)  # fmt: skip
    operator.start()
    api = k8s.CustomObjectsApi(kube_api)
    try:
        names = [f"c{i}" for i in range(AMPHORAE)]
        for name in names:
            body = amphora(name, type="Container", flavor="small", image=IMAGE,
                           userData={"content": "#cloud-config\n"})  # a Secret, too  # fmt: skip
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        fleet = Fleet(kube_api, namespace)
        fleet.wait_all(names, lambda i: settled(i) and not i["metadata"].get("finalizers"),
                       timeout=90, what="Container Amphorae Ready, no finalizer held")  # fmt: skip
        uids = {i["metadata"]["uid"] for i in fleet.items()}
        sets = apps.list_namespaced_stateful_set(namespace).items
        secrets = [s for s in core.list_namespaced_secret(namespace).items
                   if s.metadata.name.startswith("amphora-")]  # fmt: skip
        assert len(sets) == AMPHORAE and len(secrets) == AMPHORAE
        for obj in [*sets, *secrets]:
            owners = {ref.uid for ref in obj.metadata.owner_references or []}
            assert owners & uids, f"{obj.metadata.name} has no ownerReference to its Amphora"
        if not operator_running:
            operator.stop()

        started = time.monotonic()
        core.delete_namespace(namespace)
        while not gone(core, namespace):
            elapsed = time.monotonic() - started
            assert elapsed < LIMIT, f"namespace {namespace} still there after {elapsed:.0f} s"
            time.sleep(0.5)
        took = time.monotonic() - started
        how = "with" if operator_running else "without"
        record("namespace_deletion", f"seconds, {how} the operator, {AMPHORAE} Amphorae", took)
    finally:
        operator.stop()
        if not gone(core, namespace):  # a failed run: leave nothing behind for the next test
            strip_finalizers(api, namespace)
            core.delete_namespace(namespace)
