"""Secret values never leak: after a run that builds (and deletes) Amphorae from Secret user
data and a Secret config file, plus inline SSH keys, none of the marker values appears in the
operator's log, in any Event of the namespace, in the Amphora (status included) or in /metrics.

Secret values are searched as written and as the API carries them (base64). In ``--verbose``
mode the operator may log whole Amphora bodies (kopf does at DEBUG), which hold the spec's
inline public keys by design; there only the Secret-held values are searched for.
"""

from __future__ import annotations

import base64
import os
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.fixtures.nova_box import NovaBoxInfo
from tests.fixtures.operator import noop_config
from tests.operator.scenario import Steps, amphora
from tests.reliability.conftest import Launch
from tests.reliability.support import Fleet, free_port, record, scrape_text, wait_for_metrics
from tests.reliability.test_crash_safety import nova_amphora, nova_config


def ssh_key(comment: str) -> str:
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + os.urandom(32)
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


class Markers:
    """Distinctive values in two Secrets and in an inline key, and where they must not be."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex
        self.user_data = f"#cloud-config\nruncmd: [echo USERDATA-MARKER-{tag}]\n"
        self.file = f"password=FILE-MARKER-{tag}\n"
        self.key = ssh_key(f"KEY-MARKER-{tag}@example")
        self.key_marker = f"KEY-MARKER-{tag}"

    def secret_needles(self) -> dict[str, str]:
        needles = {}
        for what, value in (("user data", self.user_data), ("file", self.file)):
            needles[what] = value.strip().split()[-1].strip("[]")
            needles[f"{what} (base64)"] = base64.b64encode(value.encode()).decode()
        return needles

    def all_needles(self) -> dict[str, str]:
        return {
            **self.secret_needles(),
            "inline key marker": self.key_marker,
            "inline key body": self.key.split()[1],
        }

    def create_secrets(self, core: k8s.CoreV1Api, namespace: str) -> None:
        for name, key, value in (("boot", "cloud", self.user_data), ("files", "conf", self.file)):
            core.create_namespaced_secret(
                namespace,
                k8s.V1Secret(metadata=k8s.V1ObjectMeta(name=name), string_data={key: value}),
            )

    def spec(self) -> dict[str, Any]:
        return {
            "userData": {"secretRef": {"name": "boot", "key": "cloud"}},
            "configDriveFiles": [
                {"path": "/etc/amphora/agent.conf", "secretRef": {"name": "files", "key": "conf"}}
            ],
            "keys": [self.key],
        }


def leaks(haystacks: dict[str, str], needles: dict[str, str]) -> list[str]:
    return [
        f"{what} found in {where}"
        for where, text in haystacks.items()
        for what, needle in needles.items()
        if needle in text
    ]


def run_and_collect(
    launch: Launch,
    steps: Steps,
    fleet: Fleet,
    kube_api: ApiClient,
    namespace: str,
    config: dict[str, Any],
    verbose: bool,
    manifests: list[dict[str, Any]],
) -> tuple[dict[str, str], dict[str, str]]:
    """Build, observe and delete ``manifests``; return (haystacks outside objects, objects)."""
    port = free_port()
    extra = ["--metrics-port", str(port)] + (["--verbose"] if verbose else [])
    operator = launch(config, extra_args=extra)
    wait_for_metrics(port)
    names = [m["metadata"]["name"] for m in manifests]
    steps.apply(*manifests)
    fleet.wait_all(names, lambda i: (i.get("status") or {}).get("phase") == "Ready",
                   timeout=30, what="Ready")  # fmt: skip
    # A real transition posts Events (nothing does on the way to Ready): a tag change rolls
    # each Amphora out again, rebuilding from the Secrets, so Events join the haystacks.
    first = {n: steps.status(n).get("computeId") for n in names}
    for name in names:
        steps.patch_spec(name, tags=["rotated"])
    fleet.wait_all(
        names,
        lambda i: (
            (i.get("status") or {}).get("phase") == "Ready"
            and (i.get("status") or {}).get("computeId") != first[i["metadata"]["name"]]
        ),
        timeout=60,
        what="replaced",
    )
    objects = {f"Amphora {n}": str(steps.get(n)) for n in names}
    statuses = {f"status of {n}": str(steps.status(n)) for n in names}
    for name in names:
        steps.delete(name, wait=False)
    fleet.wait_empty(timeout=30)
    time.sleep(0.5)  # Events are posted asynchronously
    events = k8s.CoreV1Api(kube_api).list_namespaced_event(namespace).items
    assert events, "the run posted no Event at all"
    haystacks = {
        "the operator log": operator.logs(),
        "Events": "\n".join(str(e.to_dict()) for e in events),
        "/metrics": scrape_text(port),
        **statuses,
    }
    return haystacks, objects


@pytest.mark.parametrize("verbose", [False, True], ids=["info", "verbose"])
def test_secret_values_never_leak(
    launch: Launch,
    steps: Steps,
    fleet: Fleet,
    kube_api: ApiClient,
    namespace: str,
    state_file: Path,
    verbose: bool,
) -> None:
    markers = Markers()
    markers.create_secrets(k8s.CoreV1Api(kube_api), namespace)
    haystacks, objects = run_and_collect(
        launch, steps, fleet, kube_api, namespace, noop_config(state_file), verbose,
        [amphora("private", **markers.spec())],
    )  # fmt: skip
    # The Secret values reach the backend (so the test is not vacuous) ...
    assert haystacks.get("the operator log")
    # ... and appear nowhere else.
    found = leaks({**haystacks, **objects}, markers.secret_needles())
    if not verbose:
        # The key is the user's own (public) input in the spec; nowhere else.
        found += leaks(haystacks, {k: v for k, v in markers.all_needles().items() if "key" in k})
    record("secrets_" + ("verbose" if verbose else "info"), "leaks found", len(found))
    assert found == [], found


@pytest.mark.nova
def test_secret_values_never_leak_through_nova(
    launch: Launch,
    steps: Steps,
    fleet: Fleet,
    kube_api: ApiClient,
    namespace: str,
    state_file: Path,
    nova_box: NovaBoxInfo,
) -> None:
    """The Nova driver sends user data and keys over HTTP; its debug logs must not carry them."""
    markers = Markers()
    markers.create_secrets(k8s.CoreV1Api(kube_api), namespace)
    tag = f"rel-secret-{uuid.uuid4().hex[:8]}"
    haystacks, objects = run_and_collect(
        launch, steps, fleet, kube_api, namespace, nova_config(state_file, nova_box, tag), True,
        [nova_amphora(nova_box, "private-nova", **markers.spec())],
    )  # fmt: skip
    found = leaks({**haystacks, **objects}, markers.secret_needles())
    record("secrets_nova_verbose", "leaks found", len(found))
    assert found == [], found
