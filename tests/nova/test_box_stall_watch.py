"""The box's HTTP server writes every thread's stack to its log when it stops finishing
requests (``hack/nova-box/wsgi_server.py``), so a box that hangs under load says where."""

import subprocess
import sys
from pathlib import Path

BOX_DIR = Path(__file__).resolve().parents[2] / "hack" / "nova-box"

SERVE_ONE = """
import sys, threading, time, urllib.request
sys.path.insert(0, sys.argv[1])
import wsgi_server

def app_that_waits(environ, start_response):
    time.sleep(float(environ["PATH_INFO"].strip("/")))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

server = wsgi_server.make("127.0.0.1", 0, app_that_waits)
threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/{sys.argv[2]}").read()
print("answered", flush=True)
sys.stderr.flush()
time.sleep(1.0)  # no request in flight: no dump may follow
"""


def serve_one(request_seconds: float) -> tuple[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", SERVE_ONE, str(BOX_DIR), str(request_seconds)],
        env={"BOX_STALL_SECONDS": "0.3", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout, done.stderr


def test_a_request_that_hangs_leaves_the_stacks_in_the_log() -> None:
    stdout, stderr = serve_one(1.0)
    assert "answered" in stdout
    assert " STALL: 1 requests in flight, none ended for 0.3 s" in stderr
    assert "app_that_waits" in stderr, stderr


def test_requests_that_end_in_time_leave_no_dump() -> None:
    stdout, stderr = serve_one(0.0)
    assert "answered" in stdout
    assert "STALL" not in stderr, stderr
