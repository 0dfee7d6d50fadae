"""Bad input: a corpus of invalid (and hostile but valid) Amphorae.

Each is either refused at admission (``kubectl apply`` fails naming the field), or reported in
status with a clear message naming the field, or (hostile strings the backend can take) built
with the strings kept verbatim and never interpreted. None crashes a handler or the process,
and after deleting them nothing is left: no Amphora stuck in deletion, no instance.
"""

from __future__ import annotations

import base64
import os
import struct
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from amphora_drivers.noop import NoopDriver
from amphora_operator.tenancy import namespace_tag
from kubernetes import client as k8s
from kubernetes.client import ApiClient

from tests.fixtures.operator import noop_config
from tests.operator.scenario import Steps, amphora
from tests.reliability.conftest import Launch
from tests.reliability.support import Fleet, Item, condition_of, handler_crashes, record, status_of

MARK = uuid.uuid4().hex[:8]
PWNED = f"/tmp/amphora-pwned-{MARK}"
#: Hostile strings a tag may hold (tags refuse '/' and ',': those are in ADMISSION below).
INJECTIONS = [
    "'; DROP TABLE amphorae;--",
    "$(reboot)",
    "`id`",
    "{{7*7}}",
    "${jndi:ldap:x}",
    "<img src=x onerror=alert(1)>",
    "\U0001f680 emoji \u2713 \u00e9t\u00e9",
    "\u202eevil-rtl",
    "%s%n%x",
]
SHELL = f"$(touch {PWNED}) `touch {PWNED}`; touch {PWNED}"


def ssh_key(declared: str = "ssh-ed25519", embedded: str = "ssh-ed25519") -> str:
    blob = struct.pack(">I", len(embedded)) + embedded.encode() + struct.pack(">I", 32)
    blob += os.urandom(32)
    return f"{declared} {base64.b64encode(blob).decode()} ops@example"


# (name, spec overrides, the field the refusal must name)
ADMISSION: list[tuple[str, dict[str, Any], str]] = [
    ("networks-not-a-list", {"networks": "net-a"}, "spec.networks"),
    ("suspended-not-a-bool", {"suspended": "yes"}, "spec.suspended"),
    ("tag-not-a-string", {"tags": [42]}, "spec.tags[0]"),
    ("six-files", {"configDriveFiles": [{"path": f"/f{i}", "content": "x"} for i in range(6)]},
     "spec.configDriveFiles"),
    ("file-too-big", {"configDriveFiles": [{"path": "/etc/x", "content": "x" * 10241}]},
     "spec.configDriveFiles[0].content"),
    ("relative-path", {"configDriveFiles": [{"path": "etc/passwd", "content": "x"}]},
     "spec.configDriveFiles[0].path"),
    ("dotdot-path", {"configDriveFiles": [{"path": "/etc/../../root/x", "content": "x"}]},
     "spec.configDriveFiles[0].path"),
    ("bad-key", {"keys": ["ssh-rsa $(rm -rf /)"]}, "spec.keys[0]"),
    ("huge-user-data", {"userData": {"content": "x" * 65537}}, "spec.userData.content"),
    ("tag-with-slash", {"tags": ["a/b"]}, "spec.tags[0]"),
    ("tag-shell", {"tags": ["ok", f"$(touch {PWNED})"]}, "spec.tags[1]"),
    ("tag-jndi", {"tags": ["${jndi:ldap://127.0.0.1/x}"]}, "spec.tags[0]"),
    ("tag-script", {"tags": ["<script>alert(1)</script>"]}, "spec.tags[0]"),
    ("tag-too-long", {"tags": ["t" * 61]}, "spec.tags[0]"),
    ("too-many-tags", {"tags": [f"t{i}" for i in range(49)]}, "spec.tags"),
    ("unknown-type", {"type": "HWLoadBalancer"}, "spec.type"),
    ("unknown-field", {"colour": "blue"}, "colour"),
    ("driver-injection", {"driver": "{{7*7}}"}, "spec.driver"),
    ("group-emoji", {"serverGroup": {"name": "lb-\U0001f680"}}, "spec.serverGroup.name"),
    ("empty-image", {"image": ""}, "spec.image"),
    ("flavor-too-long", {"flavor": "f" * 256}, "spec.flavor"),
    ("image-too-long", {"image": "i" * 300}, "spec.image"),
    ("tag-control-char", {"tags": ["tab\there"]}, "spec.tags[0]"),
]  # fmt: skip
BAD_NAMES = ["amp-\U0001f680", "x'; drop table amphorae;--", "$(rm -rf /)", "{{7*7}}", "A" * 300]


def test_invalid_amphorae_are_refused_or_reported_and_leave_nothing(
    launch: Launch,
    steps: Steps,
    fleet: Fleet,
    kubectl: Callable[..., Any],
    kube_api: ApiClient,
    namespace: str,
    state_file: Path,
) -> None:
    operator = launch(noop_config(state_file))
    process = operator.process
    assert process is not None

    # -- refused at admission, naming the field ------------------------------------------------
    refused = 0
    for name, overrides, field in ADMISSION:
        body = amphora(f"bad-{name}", **overrides)
        body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
        result = steps.apply(body, check=False)
        assert result.returncode != 0, f"{name}: the apiserver accepted {overrides}"
        assert field in result.stderr, f"{name}: {field} not named in: {result.stderr}"
        refused += 1
    for bad_name in BAD_NAMES:
        result = steps.apply(amphora(bad_name), check=False)
        assert result.returncode != 0, f"the name {bad_name!r} was accepted"
        assert "metadata.name" in result.stderr or "name" in result.stderr, result.stderr
        refused += 1
    assert fleet.items() == [], "a refused Amphora exists anyway"

    # -- accepted by the apiserver, reported in status by the operator -------------------------
    core = k8s.CoreV1Api(kube_api)
    secrets = {
        "has-other-key": {"other": "x"},
        "big-file": {"conf": "x" * 11000},
        "big-user-data": {"cloud": "#cloud-config\n" + "#" * 70000},
    }
    for secret_name, data in secrets.items():
        core.create_namespaced_secret(
            namespace,
            k8s.V1Secret(
                metadata=k8s.V1ObjectMeta(
                    name=secret_name, labels={"amphora-operator.dev/usable": "true"}
                ),
                string_data=data,
            ),
        )
    # (name, spec overrides, Ready reason, text the message must contain)
    reported: list[tuple[str, dict[str, Any], str, str]] = [
        ("missing-secret", {"userData": {"secretRef": {"name": "nowhere", "key": "cloud"}}},
         "SecretNotFound", "spec.userData.secretRef"),
        ("missing-key", {"configDriveFiles": [
            {"path": "/etc/a.conf", "secretRef": {"name": "has-other-key", "key": "conf"}}]},
         "SecretNotFound", "spec.configDriveFiles[/etc/a.conf].secretRef"),
        ("secret-file-too-big", {"configDriveFiles": [
            {"path": "/etc/a.conf", "secretRef": {"name": "big-file", "key": "conf"}}]},
         "InvalidInput", "spec.configDriveFiles"),
        ("secret-user-data-too-big",
         {"userData": {"secretRef": {"name": "big-user-data", "key": "cloud"}}},
         "InvalidInput", "spec.userData"),
        ("unknown-driver", {"driver": "does-not-exist"}, "UnknownDriver", "does-not-exist"),
        ("key-body-lies", {"keys": [ssh_key("ssh-ed25519", "ssh-rsa")]}, "InvalidInput",
         "spec.keys"),
        ("bad-backend-hint", {"tags": ["noop:build-seconds=soon"]}, "InvalidInput", "spec.tags"),
    ]  # fmt: skip
    steps.apply(*(amphora(f"rep-{name}", **overrides) for name, overrides, _, _ in reported))

    # -- hostile strings the backend can take: built, kept verbatim, never interpreted ---------
    hostile = {
        "hostile-tags": {"tags": INJECTIONS},
        "hostile-fields": {
            "flavor": INJECTIONS[3],
            "image": SHELL,
            "networks": [INJECTIONS[0], INJECTIONS[6]],
            "securityGroups": [INJECTIONS[2]],
            "availabilityZone": INJECTIONS[4],
            "configDriveFiles": [{"path": "/etc/$(id)", "content": INJECTIONS[5]}],
            "userData": {"content": f"#!/bin/sh\n{SHELL}\n"},
        },
    }
    steps.apply(*(amphora(name, **overrides) for name, overrides in hostile.items()))

    def all_answered(items: list[Item]) -> bool:
        by_name = {i["metadata"]["name"]: i for i in items}
        for name, _, reason, _ in reported:
            ready = condition_of(by_name.get(f"rep-{name}", {}), "Ready")
            if status_of(by_name.get(f"rep-{name}", {})).get("phase") != "Failed" or not ready:
                return False
            if ready["reason"] != reason:
                return False
        return all(status_of(by_name.get(n, {})).get("phase") == "Ready" for n in hostile)

    answered = fleet.wait(all_answered, timeout=30, what="every Amphora answered in status")
    by_name = fleet.by_name()
    for name, _, reason, text in reported:
        item = by_name[f"rep-{name}"]
        ready = condition_of(item, "Ready")
        assert ready is not None and ready["status"] == "False", item
        assert ready["reason"] == reason, f"{name}: {ready}"
        assert text in ready["message"], f"{name}: {text!r} not in {ready['message']!r}"
        assert status_of(item).get("fault"), f"{name}: no fault in status"
    instances = {i.id: i for i in NoopDriver(state_file=state_file).find()}
    assert set(instances) == {status_of(by_name[n])["computeId"] for n in hostile}, (
        "only the hostile-but-valid Amphorae may have instances"
    )
    tagged = instances[status_of(by_name["hostile-tags"])["computeId"]]
    # Verbatim, followed by the namespace tag the operator adds (amphora_operator.tenancy).
    assert list(tagged.tags) == [*INJECTIONS, namespace_tag(namespace)], "tags not verbatim"
    assert not Path(PWNED).exists(), "a shell snippet in the spec was executed"
    assert process.poll() is None, f"the operator exited with {process.returncode}"

    # -- and deleting them leaves nothing --------------------------------------------------------
    kubectl("delete", "amphorae", "--all", "-n", namespace, "--wait=false")
    gone = fleet.wait_empty(timeout=30, what="every bad Amphora deleted (none stuck)")
    assert NoopDriver(state_file=state_file).find() == [], "an instance was left behind"
    assert process.poll() is None, f"the operator exited with {process.returncode}"
    crashes = handler_crashes(operator.logs())
    assert crashes == [], f"handlers raised unexpectedly: {crashes}"
    test = "bad_input"
    record(test, "refused at admission", refused)
    record(test, "reported in status", len(reported))
    record(test, "hostile but valid, built verbatim", len(hostile))
    record(test, "seconds until all answered", answered)
    record(test, "seconds until all deleted", gone)
