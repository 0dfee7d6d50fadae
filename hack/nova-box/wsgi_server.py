"""The HTTP server every box service uses (imported by the serve scripts inside their venvs).

A stdlib ``wsgiref`` server with one thread per request: a slow request (a Nova call that
waits on a compute, a Keystone token validation) never holds up the others, which a
single-threaded server does. Requests are logged to stderr, stdout carries one JSON line.
The process stops when its launcher dies (it may be killed before it can stop the box).
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any, TextIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class StallWatch:
    """Writes every thread's stack to the log when requests are in flight and none has ended
    for ``seconds``, and again every ``seconds`` while that lasts.

    A box that stops answering under load says where it waits without anyone asking. The
    watch is a Python thread that reads the stacks with the GIL held: faulthandler's timer
    reads them from a C thread while the others run, and in a busy Keystone one of its dumps
    ended in the process's death.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._in_flight = 0
        self._last_change = time.monotonic()
        self._thread: threading.Thread | None = None

    def started(self) -> None:
        with self._lock:
            if not self._in_flight:
                self._last_change = time.monotonic()
            self._in_flight += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="stall-watch", daemon=True)
                self._thread.start()

    def ended(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._last_change = time.monotonic()

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.seconds / 3))
            with self._lock:
                stalled = self._in_flight and time.monotonic() - self._last_change >= self.seconds
                if stalled:
                    in_flight = self._in_flight
                    self._last_change = time.monotonic()  # the next dump after another period
            if stalled:
                self._dump(in_flight)

    def _dump(self, in_flight: int) -> None:
        me = threading.get_ident()
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        lines = [f"{when} STALL: {in_flight} requests in flight, none ended for {self.seconds} s"]
        for ident, frame in sys._current_frames().items():
            if ident != me:
                lines.append(f"Thread {names.get(ident, ident)}:")
                lines.extend(line.rstrip() for line in traceback.format_stack(frame))
        print("\n".join(lines), file=sys.__stderr__, flush=True)


#: Requests that take longer than this are rare here (a Nova build answers in well under 2 s).
STALLS = StallWatch(float(os.environ.get("BOX_STALL_SECONDS", "6")))


class ThreadedWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """One daemon thread per request; a long queue of connections waits in the backlog."""

    daemon_threads = True
    request_queue_size = 128

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        STALLS.started()
        try:
            super().process_request_thread(request, client_address)
        finally:
            STALLS.ended()


class QuietHandler(WSGIRequestHandler):
    """Access lines go to the log (stderr), not to stdout, which carries the JSON line."""

    # A client that connects and then says nothing must not hold a thread forever.
    timeout = 60

    def log_message(self, format: str, *args: Any) -> None:
        logging.getLogger("box.http").info(format, *args)


def make(host: str, port: int, app: WSGIApp) -> ThreadedWSGIServer:
    server = make_server(
        host, port, app, server_class=ThreadedWSGIServer, handler_class=QuietHandler
    )
    assert isinstance(server, ThreadedWSGIServer)
    return server


def claim_stdout() -> TextIO:
    """The real stdout for the JSON line; everything else writing to fd 1 goes to stderr.

    Libraries (oslo.log's default handler, subprocesses) print to stdout; only the ready line
    may reach the launcher there.
    """
    sys.stdout.flush()
    private = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return private


def log_to(stream: Any, level: int = logging.INFO) -> None:
    """Send the root logger's records at ``level`` and up to ``stream``."""
    handler = logging.StreamHandler(stream)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.getLogger().addHandler(handler)
    if logging.getLogger().level > level or logging.getLogger().level == logging.NOTSET:
        logging.getLogger().setLevel(level)


def serve(servers: list[ThreadedWSGIServer], ready: dict[str, Any], stdout: Any) -> None:
    """Serve every server until SIGTERM/SIGINT or the parent's death; print ``ready`` first."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    parent = os.getppid()
    for server in servers:
        threading.Thread(target=server.serve_forever, args=(0.2,), daemon=True).start()
    print(json.dumps(ready), file=stdout, flush=True)
    while not stop.wait(0.5):
        if os.getppid() != parent:
            break
    for server in servers:
        server.shutdown()
        server.server_close()


def run(main: Callable[[], None]) -> None:
    """Run ``main``; any failure ends the process at once (library threads block a normal exit).

    SIGUSR1 writes every thread's stack to the log: the launcher sends it to a box that stopped
    answering, before it kills it, so that the log says where it hung.
    """
    faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
    try:
        main()
    except BaseException:
        import traceback

        traceback.print_exc(file=sys.__stderr__)
        sys.__stderr__.flush()
        os._exit(1)
    sys.__stderr__.flush()
    os._exit(0)
