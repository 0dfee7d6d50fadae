"""A MOCK fault tier in front of the real kube-apiserver: faults it cannot produce on demand.

Clients talk plain HTTP to a reverse proxy on 127.0.0.1 that forwards every request (watches
stream through unchanged) to the real apiserver over TLS, except requests matching an active
:class:`Fault`: those get a 503 Status like an overloaded apiserver's, or a TCP reset (RST, no
response at all). Everything else is the real apiserver's answer.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
import ssl
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

__all__ = ["ApiserverFaultProxy", "Fault"]

#: Headers that belong to one hop, not to the request or response being relayed.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "host",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
}

LEASES = r"^/apis/coordination\.k8s\.io/"


@dataclass
class Fault:
    """While active, answer requests whose path matches ``path`` with one of ``kinds``
    ("503" or "reset", picked at random per request)."""

    path: str = LEASES
    kinds: tuple[str, ...] = ("503", "reset")
    active: bool = True


@dataclass
class ApiserverFaultProxy:
    """Reverse proxy to ``upstream`` (https URL) with switchable faults; counts what it did."""

    upstream: str
    seed: int = 0
    faults: list[Fault] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()

    # -- control ------------------------------------------------------------------------------

    def inject(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            for fault in self.faults:
                fault.active = False

    def kubeconfig(self, original: Path, path: Path) -> Path:
        """A copy of ``original`` (token auth) whose server is this proxy, over plain HTTP."""
        data = yaml.safe_load(original.read_text())
        for entry in data["clusters"]:
            cluster = entry["cluster"]
            cluster["server"] = f"http://127.0.0.1:{self.port}"
            cluster.pop("certificate-authority-data", None)
            cluster.pop("certificate-authority", None)
        path.write_text(yaml.safe_dump(data))
        return path

    def __enter__(self) -> ApiserverFaultProxy:
        started = threading.Event()
        self._loop = asyncio.new_event_loop()

        def serve() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="apiserver-fault-proxy", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the apiserver fault proxy did not start within 10 s")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # -- serving -----------------------------------------------------------------------------

    async def _start(self) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # loopback to the test's own apiserver
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=0),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(listener.getsockname()[1])
        await web.SockSite(self._runner, listener).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _fault_for(self, path: str) -> str | None:
        with self._lock:
            for fault in self.faults:
                if fault.active and re.search(fault.path, path):
                    return self._random.choice(fault.kinds)
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind = self._fault_for(request.path)
        if kind is not None:
            self.counts[kind] += 1
            if kind == "reset":
                return self._reset(request)
            return web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "message": "injected fault: the apiserver is overloaded",
                    "reason": "ServiceUnavailable",
                    "code": 503,
                },
                status=503,
            )
        self.counts["forwarded"] += 1
        return await self._forward(request)

    def _reset(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        if sock is not None:  # close with RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return web.Response(status=500)  # never reaches the client: the socket is gone

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
            # The kubernetes client sends PUT bodies without a Content-Type (the apiserver
            # reads JSON); aiohttp would add application/octet-stream, which it refuses (415).
            skip_auto_headers=("Content-Type",),
        ) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionError, aiohttp.ClientError):
                pass  # either side went away (a watch ended, a client was killed)
            return response
