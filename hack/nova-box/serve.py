"""Serve a real Nova API on 127.0.0.1 for the driver tests (runs INSIDE the Nova box venv).

Nova's own functional-test base class (``_IntegratedTestBase``) brings up the real API,
conductor, scheduler, Placement and N fake computes (``nova.virt.fake``) around an in-memory
database; Neutron, Glance and Cinder are nova's in-process stubs. This program starts that,
serves the API over HTTP, prints one JSON line on stdout (``{"port": ..., ...}``) and serves
until it is killed. Every port serves one request per thread (``wsgi_server``).

Why a subprocess: nova's fixtures patch libraries process-wide, and its TestCase does not run
inside pytest directly. Run with ``OS_NOVA_DISABLE_EVENTLET_PATCHING=1`` (native threads).

Ports:

- ``keystone_port`` (with ``--keystone-url``): Nova's API behind the real keystonemiddleware
  ``auth_token`` validating every token with Keystone, and Nova's real ``NovaKeystoneContext``
  building the request context from what Keystone said (roles decide policy).
- ``neutron_port`` (with ``--keystone-url``): the Neutron stand-in (``neutron_standin``) over
  the fixture's networks and security groups, behind the same ``auth_token``.
- ``port``: Nova without authentication, for proxies of the HTTP fault tier. Every request is
  an admin of the project named in the URL (``/v2.1/<hex project id>/...``) or, without one,
  of the default project (Keystone's amphora project, read from ``--default-project-file``
  once the launcher has written it; else nova's fixture project).

Hosts: ``--computes`` VM hosts (``host1``...) with ``MediumFakeDriver`` resources, plus
``--baremetal-nodes`` hosts (``baremetal1``...) that emulate Ironic nodes the way Nova sees
them: each reports exactly one unit of ``CUSTOM_BAREMETAL_AMPHORA`` and no VCPU/RAM/disk, so
only a bare-metal flavor (``resources:CUSTOM_BAREMETAL_AMPHORA=1``, standard classes ``=0``)
lands there and each node takes one instance.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

# nova.tests.functional decides eventlet vs native threads on import: it must come first.
import nova.tests.functional  # noqa: F401

# isort: split
import neutron_standin
import wsgi_server
from keystonemiddleware import auth_token
from neutronclient.common import exceptions as neutron_client_exc
from nova.api import auth as nova_auth
from nova.tests import fixtures as nova_fixtures
from nova.tests.functional import integrated_helpers
from nova.virt import fake
from placement import deploy as placement_deploy

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


class ReaderPreferringLock:
    """The cell lock of nova's ``CellDatabases`` fixture, without its deadlock.

    The fixture uses fasteners' writer-preferring ReaderWriterLock: once a thread waits to
    switch cells (write), new readers wait. Nova's ``DatabaseWriteLock`` fixture (one RLock
    per database around writer transactions) then closes a cycle under concurrent requests:
    thread A holds the database RLock and waits for a read lock (blocked by the waiting
    writer W), W waits for reader B to leave, and B (holding its read lock) waits for A's
    database RLock. Seen as a box that stops answering mid-suite right after "Claim
    successful on node host1". Here readers never wait for a *waiting* writer, only for one
    that holds the lock, and a holding writer never waits for anything (it only swaps the
    fixture's current cell), so no cycle can form. Same API and reentrancy as fasteners
    (nested reads, reads inside a write, nested writes; read-to-write upgrade refused).
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._readers: dict[int, int] = {}
        self._writer: int | None = None
        self._writer_depth = 0

    @contextlib.contextmanager
    def read_lock(self) -> Iterator[ReaderPreferringLock]:
        me = threading.get_ident()
        with self._changed:
            while self._writer not in (None, me):
                self._changed.wait()
            self._readers[me] = self._readers.get(me, 0) + 1
        try:
            yield self
        finally:
            with self._changed:
                self._readers[me] -= 1
                if not self._readers[me]:
                    del self._readers[me]
                self._changed.notify_all()

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[ReaderPreferringLock]:
        me = threading.get_ident()
        with self._changed:
            if me in self._readers and self._writer != me:
                raise RuntimeError(f"Reader {me} to writer privilege escalation not allowed")
            while self._writer not in (None, me) or any(t != me for t in self._readers):
                self._changed.wait()
            self._writer = me
            self._writer_depth += 1
        try:
            yield self
        finally:
            with self._changed:
                self._writer_depth -= 1
                if not self._writer_depth:
                    self._writer = None
                self._changed.notify_all()


def one_request_at_a_time(loadapp: Callable[..., WSGIApp]) -> Callable[..., WSGIApp]:
    """Placement's app loader, wrapped so that its app serves one request at a time.

    Placement's fixture keeps its database in one in-memory SQLite whose table locks answer
    "database is locked" at once (a shared cache has no busy wait): two computes deleting
    allocations together failed one with 500, and Nova then left that server in ``deleting``
    for ever (seen as a soak server never gone). Placement never calls back into Nova, so a
    plain lock around each whole request cannot close a cycle.
    """

    def load(*args: Any, **kwargs: Any) -> WSGIApp:
        app = loadapp(*args, **kwargs)
        lock = threading.Lock()

        def serialized(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            with lock:
                return list(app(environ, start_response))

        return serialized

    return load


NEUTRON_LOCK = threading.RLock()


def one_neutron_call_at_a_time(fixture: type) -> None:
    """Make every method of nova's ``NeutronFixture`` hold one lock (re-entrant: they call
    each other).

    The fixture keeps ports and networks in plain dicts and was written for one test thread;
    here API threads list ports while computes create and delete them, and a list iterating a
    dict another thread resized failed with "dictionary changed size during iteration" (a 500
    from ``GET /servers/{id}`` while builds went on). The real Neutron has a database; the lock
    stands in for its transactions.
    """
    for name, member in list(vars(fixture).items()):
        if inspect.isfunction(member):
            setattr(fixture, name, _holding(NEUTRON_LOCK, member))


def _holding(lock: threading.RLock, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return method(*args, **kwargs)

    return locked


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


class DefaultProject:
    """The project of unauthenticated requests: Keystone's amphora project once it is known."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.value = nova_fixtures.PROJECT_ID
        self._adopted = False
        self._lock = threading.Lock()

    def get(self) -> str:
        with self._lock:
            if not self._adopted and self.path is not None and self.path.exists():
                project = self.path.read_text().strip()
                if project:
                    self.value, self._adopted = project, True
                    _adopt_fixture_data(project)
            return self.value


def _adopt_fixture_data(project: str) -> None:
    """Give the fixture's networks, subnets, ports and security group to ``project``.

    Nova lists a server's ports by its project: they must belong to the project that builds.
    """
    fixture = nova_fixtures.NeutronFixture
    owned = [v for v in vars(fixture).values() if isinstance(v, dict) and "tenant_id" in v]
    for item in owned:
        if item["tenant_id"] == nova_fixtures.PROJECT_ID:
            item["tenant_id"] = item["project_id"] = project


def find_resource(
    fixture: Any,
    resource: str,
    name_or_id: str,
    project_id: str | None = None,
    cmd_resource: str | None = None,
    parent_id: str | None = None,
    fields: Any = None,
) -> dict[str, Any]:
    """neutronclient's ``find_resource`` over the fixture's data, which nova's stub lacks.

    Without it Nova answers 500 (AttributeError) to any security group in a create; with it,
    an unknown group is Neutron's 404, which Nova turns into its 400 naming the group.
    """
    items = {"security_group": fixture._security_groups, "network": fixture._networks}[resource]
    if name_or_id in items:
        return dict(items[name_or_id])
    named = [
        item
        for item in items.values()
        if item.get("name") == name_or_id
        and (project_id is None or item.get("tenant_id") == project_id)
    ]
    if len(named) > 1:
        raise neutron_client_exc.NeutronClientNoUniqueMatch(resource=resource, name=name_or_id)
    if not named:
        raise neutron_client_exc.NotFound(
            message=f"Unable to find {resource} with name or id '{name_or_id}'"
        )
    return dict(named[0])


def noauth(app: WSGIApp, project: DefaultProject) -> WSGIApp:
    """Make every request an admin of the project in the URL (or the default project)."""

    def middleware(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        match = _PROJECT_IN_URL.match(environ.get("PATH_INFO", ""))
        environ.pop("HTTP_X_IDENTITY_STATUS", None)  # only auth_token may say "Confirmed"
        environ["HTTP_X_AUTH_USER"] = "admin"
        environ["HTTP_X_AUTH_PROJECT_ID"] = match.group(1) if match else project.get()
        environ["HTTP_X_ROLES"] = "reader,member,admin"
        return app(environ, start_response)

    return middleware


def keystone_context(real: Callable[..., Any], stub: Callable[..., Any]) -> Callable[..., Any]:
    """Nova's real context builder for requests auth_token confirmed; the fixture's otherwise."""

    def create(env: Environ, **kwargs: Any) -> Any:
        if env.get("HTTP_X_IDENTITY_STATUS") == "Confirmed":
            return real(env, **kwargs)
        return stub(env, **kwargs)

    return create


_VERSION_DOCUMENTS = frozenset({"", "/", "/v2", "/v2/", "/v2.1", "/v2.1/", "/v2.0", "/v2.0/"})


def with_keystone(app: WSGIApp, keystone_url: str, admin_password: str) -> WSGIApp:
    """The real keystonemiddleware auth_token in front of ``app`` (the box's admin validates).

    Version documents stay public, as in a real deployment (clients discover versions first).
    """
    protected = auth_token.AuthProtocol(
        app,
        {
            "www_authenticate_uri": keystone_url,
            "auth_type": "password",
            "auth_url": keystone_url,
            "username": "admin",
            "password": admin_password,
            "project_name": "admin",
            "user_domain_name": "Default",
            "project_domain_name": "Default",
            "region_name": "RegionOne",
            "delay_auth_decision": "false",
            # Real deployments cache validations for minutes; seconds here so that a revoked
            # token is refused soon (tests revoke tokens to force re-authentication).
            "token_cache_time": "5",
            "service_token_roles_required": "true",
        },
    )

    def route(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") in _VERSION_DOCUMENTS:
            return app(environ, start_response)
        return protected(environ, start_response)

    return route


def main() -> None:
    """Run the box; any failure ends the process at once (nova's threads block a normal exit)."""
    wsgi_server.run(lambda: serve(wsgi_server.claim_stdout(), sys.__stderr__))


def serve(stdout: TextIO, stderr: TextIO) -> None:
    """Start nova, print the JSON line on ``stdout``, log to ``stderr``, serve until signalled."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--computes", type=int, default=2, help="VM hosts (default 2)")
    parser.add_argument("--baremetal-nodes", type=int, default=1, help="emulated Ironic nodes")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--keystone-url", help="validate tokens with this Keystone (/v3)")
    parser.add_argument("--admin-password", default="", help="Keystone's admin password")
    parser.add_argument("--default-project-file", type=Path, help="holds the default project")
    args = parser.parse_args()
    if os.environ.get("OS_NOVA_DISABLE_EVENTLET_PATCHING") != "1":
        parser.error("set OS_NOVA_DISABLE_EVENTLET_PATCHING=1 (nova must use native threads)")

    nova_fixtures.NeutronFixture.find_resource = find_resource  # type: ignore[attr-defined]
    one_neutron_call_at_a_time(nova_fixtures.NeutronFixture)
    # The package's ``nova`` attribute is the top-level package, not this module: by name.
    sys.modules["nova.tests.fixtures.nova"].ReaderWriterLock = ReaderPreferringLock
    placement_deploy.loadapp = one_request_at_a_time(placement_deploy.loadapp)
    NovaBox.computes_wanted = args.computes
    NovaBox.baremetal_wanted = args.baremetal_nodes
    real_context = nova_auth.NovaKeystoneContext._create_context
    box = NovaBox("serve")
    box.setUp()
    # Nova's fixtures swap sys.stdout/sys.stderr and capture logging in memory: the JSON line and
    # the log use the real streams, and INFO and up also go to the real stderr.
    wsgi_server.log_to(stderr)

    nova_app = box.api_fixture.app()
    project = DefaultProject(args.default_project_file)
    servers = [wsgi_server.make(args.host, args.port, noauth(nova_app, project))]
    ready: dict[str, Any] = {
        "port": servers[0].server_port,
        "project_id": nova_fixtures.PROJECT_ID,
        "computes": [f"host{i}" for i in range(1, args.computes + 1)],
        "baremetal_nodes": [f"baremetal{i}" for i in range(1, args.baremetal_nodes + 1)],
        "baremetal_resource_class": BAREMETAL_RESOURCE_CLASS,
        "image_id": nova_fixtures.GlanceFixture.image1["id"],
        "network_id": nova_fixtures.NeutronFixture.network_1["id"],
    }
    if args.keystone_url:
        stub_context = nova_auth.NovaKeystoneContext._create_context
        nova_auth.NovaKeystoneContext._create_context = staticmethod(  # type: ignore[method-assign]
            keystone_context(real_context, stub_context)
        )
        neutron = neutron_standin.NeutronStandIn(
            {
                "networks": box.neutron._networks,
                "security-groups": box.neutron._security_groups,
            },
            NEUTRON_LOCK,
        )
        keystone_app = with_keystone(nova_app, args.keystone_url, args.admin_password)
        neutron_app = with_keystone(neutron, args.keystone_url, args.admin_password)
        servers.append(wsgi_server.make(args.host, 0, keystone_app))
        servers.append(wsgi_server.make(args.host, 0, neutron_app))
        ready["keystone_port"] = servers[1].server_port
        ready["neutron_port"] = servers[2].server_port
        threading.Thread(target=_wait_for_project, args=(project,), daemon=True).start()
    wsgi_server.serve(servers, ready, stdout)


def _wait_for_project(project: DefaultProject) -> None:
    """Adopt Keystone's project as soon as the launcher names it (before any client comes)."""
    while project.path is not None and not project._adopted:
        project.get()
        time.sleep(0.1)


if __name__ == "__main__":
    main()
