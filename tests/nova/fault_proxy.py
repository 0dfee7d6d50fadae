"""A MOCK of faults a real Nova cannot produce on demand: a tiny reverse proxy on 127.0.0.1.

Everything passes through to the real Nova box unchanged, except requests matching a fault
rule, which get a canned status (500/503/429...), a delay past the client's timeout, or a
rewritten response body (e.g. a status Nova only shows with soft-delete configured). The
proxy also counts the requests it forwards, which measures API calls per driver operation.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Fault", "FaultProxy"]


@dataclass
class Fault:
    """Answer requests matching ``method`` and ``path`` (a regex) this way, ``times`` times."""

    method: str
    path: str
    status: int | None = None
    message: str = "injected fault"
    delay: float = 0.0
    rewrite: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    times: int = 1_000_000
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and method == self.method and re.search(self.path, path) is not None


@dataclass
class FaultProxy:
    """A reverse proxy to ``upstream_port`` with programmable faults and a request log."""

    upstream_port: int
    faults: list[Fault] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2.1"

    def clouds(self) -> dict[str, Any]:
        return {
            "clouds": {"faulty": {"auth_type": "none", "compute_endpoint_override": self.endpoint}}
        }

    @contextmanager
    def running(self) -> Iterator[FaultProxy]:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join(5)

    def inject(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
        return fault

    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def since(self, start: int) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.requests[start:])

    def _take(self, method: str, path: str) -> Fault | None:
        with self.lock:
            self.requests.append((method, path))
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    fault.hits += 1
                    return fault
            return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the request list is the log."""

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                path = urlsplit(self.path).path
                fault = proxy._take(self.command, path)
                if fault is not None and fault.delay:
                    time.sleep(fault.delay)
                if fault is not None and fault.status is not None:
                    error = {"computeFault": {"message": fault.message, "code": fault.status}}
                    self._send(fault.status, error)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    if fault is not None and fault.rewrite is not None and data:
                        data = json.dumps(fault.rewrite(json.loads(data))).encode()
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    upstream.close()

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "1")
                self.end_headers()
                self.wfile.write(data)

            def _guarded(self) -> None:
                # The client may have given up (a timeout test): nothing left to answer.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._relay()

            do_GET = do_POST = do_PUT = do_DELETE = _guarded

        return Handler
