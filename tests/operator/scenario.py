"""Readable steps for end-to-end scenarios: apply, wait for a phase, read status."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.fixtures.operator import GROUP, PLURAL, VERSION

IMAGE = "amphora-image-1"


def amphora(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"flavor": "m1.amphora", "image": IMAGE, **spec}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Amphora",
        "metadata": {"name": name},
        "spec": body,
    }


class Steps:
    """What a user does with kubectl, and what they look at afterwards."""

    def __init__(self, kube_api: ApiClient, kubectl: Callable[..., Any], namespace: str):
        self.api = k8s.CustomObjectsApi(kube_api)
        self.kubectl = kubectl
        self.namespace = namespace

    def apply(self, *manifests: dict[str, Any], check: bool = True) -> Any:
        return self.kubectl(
            "apply", "-n", self.namespace, "-f", "-",
            stdin=yaml.safe_dump_all(manifests), check=check,
        )  # fmt: skip

    def refusal(self, *manifests: dict[str, Any]) -> str | None:
        """Why the apiserver would not create these now (kubectl's error), or None: a
        server-side dry run through every admission step (schema, CEL rules, admission
        policies) that stores nothing."""
        result = self.kubectl(
            "apply", "--dry-run=server", "-n", self.namespace, "-f", "-",
            stdin=yaml.safe_dump_all(manifests), check=False,
        )  # fmt: skip
        return None if result.returncode == 0 else str(result.stderr).strip()

    def patch_spec(self, name: str, **spec: Any) -> None:
        self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

    def get(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.api.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return result

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def exists(self, name: str) -> bool:
        try:
            self.get(name)
        except k8s.ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def wait(
        self,
        name: str,
        until: Callable[[dict[str, Any]], bool],
        timeout: float = 30,
        what: str = "",
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status(name)
            if until(status):
                return status
            time.sleep(0.2)
        pytest.fail(f"{name}: {what or 'condition'} not reached in {timeout} s; status={status}")

    def wait_phase(self, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
        return self.wait(name, lambda s: s.get("phase") == phase, timeout, f"phase {phase}")

    def wait_gone(self, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.exists(name):
                return
            time.sleep(0.2)
        pytest.fail(f"{name} still exists after {timeout} s; status={self.status(name)}")

    def delete(self, name: str, wait: bool = True) -> None:
        self.kubectl("delete", "amphora", name, "-n", self.namespace, "--wait=false")
        if wait:
            self.wait_gone(name)

    def events(self, name: str) -> list[k8s.CoreV1Event]:
        core = k8s.CoreV1Api(self.api.api_client)
        items = core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        ).items
        return list(items)


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    for item in status.get("conditions", []):
        if item["type"] == type_:
            return dict(item)
    raise AssertionError(f"no {type_} condition in {status}")
