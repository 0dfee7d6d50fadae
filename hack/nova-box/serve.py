"""Serve a real Nova API on 127.0.0.1 for the driver tests (runs INSIDE the Nova box venv).

Nova's own functional-test base class (``_IntegratedTestBase``) brings up the real API,
conductor, scheduler, Placement and N fake computes (``nova.virt.fake``) around an in-memory
database; Neutron, Glance and Cinder are nova's in-process stubs. This program starts that,
serves the API over HTTP with a tiny no-auth middleware, prints one JSON line on stdout
(``{"port": ..., "project_id": ..., ...}``) and serves until it is killed.

Why a subprocess: nova's fixtures patch libraries process-wide, and its TestCase does not run
inside pytest directly. Run with ``OS_NOVA_DISABLE_EVENTLET_PATCHING=1`` (native threads).

Identity (no Keystone): every request is an admin of the project named in the URL
(``/v2.1/<hex project id>/...``) or, without one, of nova's fixture project. A second project
therefore needs no set-up: point a client at ``/v2.1/<another hex id>`` (tests use that to set
a low quota without disturbing the others).

Hosts: ``--computes`` VM hosts (``host1``...) with ``MediumFakeDriver`` resources, plus
``--baremetal-nodes`` hosts (``baremetal1``...) that emulate Ironic nodes the way Nova sees
them: each reports exactly one unit of ``CUSTOM_BAREMETAL_AMPHORA`` and no VCPU/RAM/disk, so
only a bare-metal flavor (``resources:CUSTOM_BAREMETAL_AMPHORA=1``, standard classes ``=0``)
lands there and each node takes one instance.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any, TextIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

# nova.tests.functional decides eventlet vs native threads on import: it must come first.
import nova.tests.functional  # noqa: F401

# isort: split
from nova.tests import fixtures as nova_fixtures
from nova.tests.functional import integrated_helpers
from nova.virt import fake

BAREMETAL_RESOURCE_CLASS = "CUSTOM_BAREMETAL_AMPHORA"
_PROJECT_IN_URL = re.compile(r"^/v2(?:\.1)?/([0-9a-f-]+)(?:/|$)")

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class BareMetalNodeDriver(fake.FakeDriver):
    """A fake compute that looks like one Ironic node to the scheduler (one custom unit)."""

    def update_provider_tree(
        self, provider_tree: Any, nodename: str, allocations: Any = None
    ) -> None:
        provider_tree.update_inventory(
            nodename,
            {
                BAREMETAL_RESOURCE_CLASS: {
                    "total": 1,
                    "reserved": 0,
                    "min_unit": 1,
                    "max_unit": 1,
                    "step_size": 1,
                    "allocation_ratio": 1.0,
                }
            },
        )


class NovaBox(integrated_helpers._IntegratedTestBase):
    """Nova's integrated test base with async RPC and several hosts; never run as a test."""

    CAST_AS_CALL = False  # real asynchrony: create returns while the build goes on
    ADMIN_API = True
    computes_wanted = 2
    baremetal_wanted = 0

    def _setup_services(self) -> None:
        # The installed wheel puts api-paste.ini under <venv>/etc, not where nova looks by default.
        self.flags(
            api_paste_config=os.path.join(sys.prefix, "etc", "nova", "api-paste.ini"),
            group="wsgi",
        )
        super()._setup_services()

    def _setup_compute_service(self) -> Any:
        self.flags(compute_driver="fake.MediumFakeDriver")
        first = None
        for index in range(1, self.computes_wanted + 1):
            service = self._start_compute(f"host{index}")
            first = first or service
        if self.baremetal_wanted:
            # Nova loads drivers only from nova.virt: register ours next to the fakes.
            fake.BareMetalNodeDriver = BareMetalNodeDriver  # type: ignore[attr-defined]
            self.flags(compute_driver="fake.BareMetalNodeDriver")
            for index in range(1, self.baremetal_wanted + 1):
                self._start_compute(f"baremetal{index}")
        return first

    def serve(self) -> None:
        """Required by the TestCase machinery as a method name; the box never runs tests."""


def noauth(app: WSGIApp, default_project: str) -> WSGIApp:
    """Make every request an admin of the project in the URL (or the default project)."""

    def middleware(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        match = _PROJECT_IN_URL.match(environ.get("PATH_INFO", ""))
        environ["HTTP_X_AUTH_USER"] = "admin"
        environ["HTTP_X_AUTH_PROJECT_ID"] = match.group(1) if match else default_project
        environ["HTTP_X_ROLES"] = "reader,member,admin"
        return app(environ, start_response)

    return middleware


class QuietHandler(WSGIRequestHandler):
    """Access lines go to the log (stderr), not to stdout, which carries the JSON line."""

    def log_message(self, format: str, *args: Any) -> None:
        logging.getLogger("nova-box.http").info(format, *args)


def exit_with_parent(server: WSGIServer) -> None:
    """Stop serving when the launcher dies (it may be killed before it can stop the box)."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.5)
    server.shutdown()


def main() -> None:
    """Run the box; any failure ends the process at once (nova's threads block a normal exit)."""
    try:
        serve(sys.__stdout__, sys.__stderr__)
    except BaseException:
        traceback.print_exc(file=sys.__stderr__)
        sys.__stderr__.flush()
        os._exit(1)
    sys.__stderr__.flush()
    os._exit(0)  # skip nova's cleanups and thread joins: the process holds nothing durable


def serve(stdout: TextIO, stderr: TextIO) -> None:
    """Start nova, print the JSON line on ``stdout``, log to ``stderr``, serve until signalled."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--computes", type=int, default=2, help="VM hosts (default 2)")
    parser.add_argument("--baremetal-nodes", type=int, default=1, help="emulated Ironic nodes")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    if os.environ.get("OS_NOVA_DISABLE_EVENTLET_PATCHING") != "1":
        parser.error("set OS_NOVA_DISABLE_EVENTLET_PATCHING=1 (nova must use native threads)")

    NovaBox.computes_wanted = args.computes
    NovaBox.baremetal_wanted = args.baremetal_nodes
    box = NovaBox("serve")
    box.setUp()
    # Nova's fixtures swap sys.stdout/sys.stderr and capture logging in memory: the JSON line and
    # the log use the real streams, and INFO and up also go to the real stderr.
    handler = logging.StreamHandler(stderr)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.getLogger().addHandler(handler)

    app = noauth(box.api_fixture.app(), nova_fixtures.PROJECT_ID)
    server: WSGIServer = make_server(args.host, args.port, app, handler_class=QuietHandler)

    def shutdown(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    threading.Thread(target=exit_with_parent, args=(server,), daemon=True).start()
    print(
        json.dumps(
            {
                "port": server.server_port,
                "project_id": nova_fixtures.PROJECT_ID,
                "computes": [f"host{i}" for i in range(1, args.computes + 1)],
                "baremetal_nodes": [f"baremetal{i}" for i in range(1, args.baremetal_nodes + 1)],
                "baremetal_resource_class": BAREMETAL_RESOURCE_CLASS,
                "image_id": nova_fixtures.GlanceFixture.image1["id"],
                "network_id": nova_fixtures.NeutronFixture.network_1["id"],
            }
        ),
        file=stdout,
        flush=True,
    )
    server.serve_forever(poll_interval=0.2)
    server.server_close()


if __name__ == "__main__":
    main()
