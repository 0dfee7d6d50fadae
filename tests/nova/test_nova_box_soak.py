"""Soak of the Nova box harness: started, hammered with concurrent requests, stopped, 5 times.

The box once hung mid-suite (a lock cycle in nova's test fixtures under concurrent requests,
see ``hack/nova-box/serve.py``). Each cycle starts Nova on fresh state, sends concurrent
creates, reads and deletes, requires every request answered and every server settled within
bounded time, and requires the process group gone after stop(). Nova alone (no Keystone):
the hang was in Nova, and five full cloud starts would cost minutes.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from amphora_devtools.nova_box import NovaBox, install_venv
from amphora_drivers.testing import wait_for

pytestmark = pytest.mark.nova
CYCLES = 5
CONCURRENT = 12


def call(box: NovaBox, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"{box.endpoint}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "X-OpenStack-Nova-API-Version": "2.64"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
    return json.loads(text) if text else None


def hammer(box: NovaBox) -> None:
    """CONCURRENT creates at once, reads during the builds, deletes at once; all answered."""
    project = box.info["project_id"]
    call(box, "PUT", f"/os-quota-sets/{project}", {"quota_set": {"instances": -1}})

    def create(index: int) -> str:
        server = {
            "name": f"soak-{index}",
            "flavorRef": "1",
            "imageRef": box.info["image_id"],
            "networks": [{"uuid": box.info["network_id"]}],
        }
        return str(call(box, "POST", "/servers", {"server": server})["server"]["id"])

    with ThreadPoolExecutor(CONCURRENT) as pool:
        ids = list(pool.map(create, range(CONCURRENT)))

        def statuses() -> list[str]:
            return list(
                pool.map(lambda i: call(box, "GET", f"/servers/{i}")["server"]["status"], ids)
            )

        settled = wait_for(statuses, lambda s: "BUILD" not in s, timeout=120, interval=0.5)
        assert set(settled) <= {"ACTIVE", "ERROR"}

        def status_or_gone(server_id: str) -> str:
            try:
                return str(call(box, "GET", f"/servers/{server_id}")["server"]["status"])
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    return "GONE"
                raise

        # Reads while the computes tear ports down (a 500 here once: nova's Neutron fixture
        # listed ports while another thread deleted them).
        list(pool.map(lambda i: call(box, "DELETE", f"/servers/{i}"), ids))
        wait_for(
            lambda: list(pool.map(status_or_gone, ids)),
            lambda s: set(s) == {"GONE"},
            timeout=60,
            interval=0.2,
        )
    wait_for(lambda: call(box, "GET", "/servers")["servers"], lambda s: not s, timeout=60)


@pytest.mark.slow
def test_start_hammer_stop_five_times_without_a_hang(tmp_path: Path) -> None:
    venv, _ = install_venv()
    for cycle in range(CYCLES):
        box = NovaBox(venv=venv, state_dir=tmp_path / f"cycle-{cycle}")
        box.start()
        process = box.process
        assert process is not None
        try:
            hammer(box)
            assert box.problem(timeout=10) is None, box.log_tail()
        finally:
            box.stop()
        assert process.poll() is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(process.pid, 0)  # the whole process group is gone
