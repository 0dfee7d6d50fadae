"""Octavia's own code driving the plugin: run by the Octavia venv's Python, never by pytest.

    python octavia_flow.py --config-file octavia.conf

reads one JSON request a line on stdin (``{"command": "build|delete|validate", "args": {...},
"overrides": {"<section>": {"<option>": value}}}``) and answers each with one JSON line on
stdout (``{"result": ...}`` or ``{"exception": "<traceback>"}``), so one process (Octavia's
imports take a while) serves a whole test. Each command loads ``[controller_worker]
compute_driver`` through stevedore (as Octavia's tasks do) and runs Octavia's taskflow tasks
from ``octavia.controller.worker.v2.tasks.compute_tasks`` in a taskflow engine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import uuid
from typing import Any

from octavia.common import config as octavia_config
from octavia.common import constants, exceptions, rpc, utils
from octavia.controller.worker.v2.flows.amphora_flows import AmphoraFlows
from octavia.controller.worker.v2.tasks import compute_tasks
from oslo_config import cfg
from stevedore import driver as stevedore_driver
from taskflow import engines
from taskflow.patterns import linear_flow

CONF = cfg.CONF


def compute_driver() -> Any:
    """The configured compute driver, loaded exactly as BaseComputeTask loads it."""
    return stevedore_driver.DriverManager(
        namespace="octavia.compute.drivers",
        name=CONF.controller_worker.compute_driver,
        invoke_on_load=True,
    ).driver


def build(args: dict[str, Any]) -> dict[str, Any]:
    """NovaServerGroupCreate (optional) → CertComputeCreate → Octavia's ComputeWait subflow."""
    amphora_id = str(uuid.uuid4())
    flow = linear_flow.Flow("amphora-k8s-build")
    store: dict[str, Any] = {
        constants.AMPHORA_ID: amphora_id,
        constants.LOADBALANCER_ID: str(uuid.uuid4()),
        constants.BUILD_TYPE_PRIORITY: constants.LB_CREATE_NORMAL_PRIORITY,
        constants.FLAVOR: args.get("flavor"),
        constants.AVAILABILITY_ZONE: args.get("availability_zone"),
        # What GenerateServerPEMTask hands over: the server certificate, Fernet-encrypted.
        constants.SERVER_PEM: utils.get_server_certs_key_passphrases_fernet()
        .encrypt(args["server_pem"].encode())
        .decode(),
    }
    if args.get("server_group"):
        flow.add(
            compute_tasks.NovaServerGroupCreate(
                requires=constants.LOADBALANCER_ID, provides=constants.SERVER_GROUP_ID
            )
        )
    else:
        store[constants.SERVER_GROUP_ID] = None
    flow.add(
        compute_tasks.CertComputeCreate(
            requires=(
                constants.AMPHORA_ID,
                constants.SERVER_PEM,
                constants.BUILD_TYPE_PRIORITY,
                constants.SERVER_GROUP_ID,
                constants.FLAVOR,
                constants.AVAILABILITY_ZONE,
            ),
            provides=constants.COMPUTE_ID,
        )
    )
    # Octavia's own "wait for ACTIVE" subflow: ComputeWait under ComputeRetry.
    flow.add(AmphoraFlows()._retry_compute_wait_flow("amphora-k8s"))
    started = time.monotonic()
    engine = engines.load(flow, store=store)
    try:
        engine.run()
    except Exception as e:
        if not args.get("expect_failure"):
            raise
        # What Octavia's controller worker would log and mark the amphora ERROR with.
        return {"error": f"{type(e).__name__}: {e}", "amphora_id": amphora_id}
    seconds = time.monotonic() - started
    compute_id = engine.storage.fetch(constants.COMPUTE_ID)
    driver = compute_driver()
    try:
        driver.attach_network_or_port(compute_id, network_id=str(uuid.uuid4()))
        attach = "attached"
    except NotImplementedError as e:
        attach = f"NotImplementedError: {e}"
    return {
        "amphora_id": amphora_id,
        "compute_id": compute_id,
        "compute_obj": engine.storage.fetch(constants.COMPUTE_OBJ),
        "server_group_id": engine.storage.fetch(constants.SERVER_GROUP_ID),
        "status": driver.status(compute_id),
        "attach": attach,
        "seconds": round(seconds, 2),
    }


def delete(args: dict[str, Any]) -> dict[str, Any]:
    """ComputeDelete (+ NovaServerGroupDelete), then get_amphora until NotFound."""
    flow = linear_flow.Flow("amphora-k8s-delete")
    flow.add(compute_tasks.ComputeDelete(requires=constants.AMPHORA))
    store: dict[str, Any] = {
        constants.AMPHORA: {
            constants.ID: args["amphora_id"],
            constants.COMPUTE_ID: args["compute_id"],
        }
    }
    if args.get("server_group_id"):
        flow.add(compute_tasks.NovaServerGroupDelete(requires=constants.SERVER_GROUP_ID))
        store[constants.SERVER_GROUP_ID] = args["server_group_id"]
    started = time.monotonic()
    engines.run(flow, store=store)
    delete_seconds = time.monotonic() - started
    driver = compute_driver()
    seen: list[str] = []
    deadline = time.monotonic() + float(args.get("timeout", 120))
    gone = None
    while time.monotonic() < deadline:
        try:
            amphora, _fault = driver.get_amphora(args["compute_id"])
        except exceptions.NotFound as e:
            gone = str(e)
            break
        if not seen or seen[-1] != amphora.status:
            seen.append(amphora.status)
        time.sleep(0.5)
    # A second delete of a gone amphora is success, as with Octavia's Nova driver.
    driver.delete(args["compute_id"])
    return {
        "delete_seconds": round(delete_seconds, 2),
        "gone_seconds": round(time.monotonic() - started, 2),
        "statuses_while_deleting": seen,
        "not_found": gone,
    }


def validate(args: dict[str, Any]) -> dict[str, Any]:
    """The amphora provider driver's flavor and availability-zone validation (Octavia's API
    calls these when an admin creates a flavor profile or an availability-zone profile)."""
    from octavia.api.drivers.amphora_driver.v2.driver import AmphoraProviderDriver

    rpc.init()
    provider = AmphoraProviderDriver()
    out: dict[str, Any] = {"flavors": {}, "zones": {}}
    for flavor in args.get("flavors", []):
        out["flavors"][flavor] = _outcome(
            provider.validate_flavor, {constants.COMPUTE_FLAVOR: flavor}
        )
    for zone in args.get("zones", []):
        out["zones"][zone] = _outcome(
            provider.validate_availability_zone, {constants.COMPUTE_ZONE: zone}
        )
    return out


def _outcome(call: Any, argument: dict[str, Any]) -> str:
    try:
        call(argument)
    except Exception as e:  # the test asserts on the class and message
        return f"{type(e).__name__}: {e}"
    return "ok"


COMMANDS = {"build": build, "delete": delete, "validate": validate}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config-file", required=True)
    ns = parser.parse_args()
    # The answers get stdout to themselves: oslo.log writes to stdout, so does anything else.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    octavia_config.init(["--config-file", ns.config_file])
    octavia_config.setup_logging(CONF)
    print(json.dumps({"ready": True}), file=answers, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        for section, options in request.get("overrides", {}).items():
            for option, value in options.items():
                CONF.set_override(option, value, group=section)
        try:
            answer = {"result": COMMANDS[request["command"]](request.get("args", {}))}
        except Exception:
            answer = {"exception": traceback.format_exc()}
        print(json.dumps(answer, default=str), file=answers, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
