"""Loopback networking for local components: free ports and plain HTTP probes."""

from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the caller binds it a moment later;
    another process may take it meanwhile, so starters retry on a fresh port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def insecure_context() -> ssl.SSLContext:
    """For probing local components whose serving certificates are self-signed ad hoc."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def http_get(
    url: str,
    *,
    context: ssl.SSLContext | None = None,
    token: str | None = None,
    timeout: float = 5.0,
) -> bytes:
    """The body of a GET that answered 200; raises ``OSError`` (incl. ``URLError``) otherwise."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, context=context, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def http_ok(url: str, *, context: ssl.SSLContext | None = None, token: str | None = None) -> bool:
    """True when ``url`` answers 200; refused connections and errors just mean "not yet"."""
    try:
        http_get(url, context=context, token=token)
    except (urllib.error.URLError, OSError):
        return False
    return True
