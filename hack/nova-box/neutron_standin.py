"""A Neutron API stand-in over HTTP, from the data of nova's in-process ``NeutronFixture``.

Why a stand-in: the real ``neutron-server`` was tried and does not start here (see
``hack/README.md``). Nova itself keeps using its in-process fixture (ports, bindings); this
serves the same networks and security groups over HTTP the way Neutron's API does, for the
clients that resolve names and ids through the catalog: list with filters (``name``, ``id``,
``project_id``/``tenant_id``, repeated values), show by id, and for unknown ids Neutron's own
404 body (``{"NeutronError": {"type": "NetworkNotFound", ...}}``), never a 500. Read-only:
anything else answers like Neutron does for an unknown path or method.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import parse_qs

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

_COLLECTIONS = {
    "networks": ("network", "NetworkNotFound", "Network {id} could not be found."),
    "security-groups": (
        "security_group",
        "SecurityGroupNotFound",
        "Security group {id} does not exist",
    ),
}
_PATH = re.compile(r"^/v2\.0/(?P<collection>[a-z-]+?)(?:\.json)?(?:/(?P<id>[^/]+?))?(?:\.json)?/?$")


class NeutronStandIn:
    """WSGI app over live dicts of resources by id (nova's NeutronFixture keeps them)."""

    def __init__(
        self,
        resources: Mapping[str, Mapping[str, dict[str, Any]]],
        lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        self.resources = resources
        self.lock = lock or contextlib.nullcontext()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        host = environ.get("HTTP_HOST", "127.0.0.1")
        if path in ("", "/"):
            links = [{"href": f"http://{host}/v2.0/", "rel": "self"}]
            return _answer(
                start_response,
                200,
                {"versions": [{"id": "v2.0", "status": "CURRENT", "links": links}]},
            )
        if path.rstrip("/") == "/v2.0/extensions":
            return _answer(start_response, 200, {"extensions": []})
        match = _PATH.match(path)
        if match is None or match["collection"] not in _COLLECTIONS:
            return _error(start_response, 404, "HTTPNotFound", "The resource could not be found.")
        if method != "GET":
            return _error(
                start_response, 405, "HTTPMethodNotAllowed", "The method is not allowed here."
            )
        singular, not_found, message = _COLLECTIONS[match["collection"]]
        items = self.resources[match["collection"]]
        if match["id"] is not None:
            with self.lock:  # the fixture's threads change these dicts
                item = copy.deepcopy(items.get(match["id"]))
            if item is None:
                return _error(start_response, 404, not_found, message.format(id=match["id"]))
            return _answer(start_response, 200, {singular: item})
        query = parse_qs(environ.get("QUERY_STRING", ""))
        fields = query.pop("fields", [])
        with self.lock:
            found = [copy.deepcopy(item) for item in items.values() if _matches(item, query)]
        if fields:
            found = [{k: v for k, v in item.items() if k in fields} for item in found]
        return _answer(start_response, 200, {f"{singular}s": found})


def _matches(item: Mapping[str, Any], query: Mapping[str, list[str]]) -> bool:
    """Neutron's filters: each key must equal one of its values (booleans as text)."""
    for key, values in query.items():
        value = item.get(key)
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if text not in values:
            return False
    return True


def _answer(start_response: StartResponse, status: int, body: Any) -> Iterable[bytes]:
    data = json.dumps(body).encode()
    reasons = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}
    start_response(
        f"{status} {reasons[status]}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
    )
    return [data]


def _error(start_response: StartResponse, status: int, kind: str, message: str) -> Iterable[bytes]:
    return _answer(
        start_response, status, {"NeutronError": {"type": kind, "message": message, "detail": ""}}
    )
