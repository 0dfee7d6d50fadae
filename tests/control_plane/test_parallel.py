"""How ``make test`` splits the suite across pytest-xdist workers (``tests/conftest.py``).

A small suite is run in a subprocess with two workers and this project's conftest: every test
that uses the machine-wide real Node must land on one worker, a module stays on one worker, the
groups that hold a ``slow`` test are handed out first, and what a worker adds to the end-of-run
summary (component logs, reliability figures) reaches the controller's terminal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]

_CONFTEST = """
from tests.conftest import *  # noqa: F403  (the hooks under test)
from tests.conftest import pytest_plugins  # noqa: F401
"""

_RECORD = """
import json, os, pathlib, time
import pytest

from tests.fixtures import add_summary

LOG = pathlib.Path({log!r})


@pytest.fixture
def real_node():  # stands in for the session's real Node: only its name matters here
    return "node"


def record(name):
    with LOG.open("a") as out:
        out.write(json.dumps([name, os.environ.get("PYTEST_XDIST_WORKER"), time.time()]) + "\\n")
"""


def _write_suite(root: Path, log: Path) -> None:
    """Two real-Node modules in tests/container/, a plain module, and a slow one."""
    (root / "conftest.py").write_text(_CONFTEST)
    header = _RECORD.format(log=str(log))
    files = {
        "tests/container/test_node_a.py": """
def test_node_one(real_node):
    record("node_one")
""",
        "tests/container/test_node_b.py": """
def test_node_two(real_node):
    record("node_two")
    time.sleep(0.5)
""",
        "tests/plain/test_module.py": """
def test_c_one(request):
    record("c_one")
    add_summary(request.config, "figures from c", ["c = 1"])
    time.sleep(0.3)

def test_c_two():
    record("c_two")
""",
        "tests/plain/test_other.py": """
def test_d():
    record("d")
""",
        "tests/plain/test_z_slow.py": """
@pytest.mark.slow
def test_z_slow():
    record("z_slow")
""",
    }
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + body)


def _run_suite(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *options: str
) -> pytest.RunResult:
    """Run the small suite in a subprocess with this project's settings and conftest."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the suite (and any worker) imports tests.*
    return pytester.run(
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        f"--rootdir={pytester.path}",
        "-c",
        str(ROOT / "pyproject.toml"),
        *options,
        str(pytester.path),
        timeout=120,
    )


def test_two_workers_keep_the_real_node_and_modules_together_and_report_summaries(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "ran.jsonl"
    _write_suite(pytester.path, log)
    result = _run_suite(
        pytester, monkeypatch, "-n", "2", "--dist", "loadscope", "--no-loadscope-reorder"
    )
    output = result.stdout.str()
    assert result.ret == 0, output + result.stderr.str()
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    worker = {name: gw for name, gw, _ in runs}
    assert set(worker) == {"node_one", "node_two", "c_one", "c_two", "d", "z_slow"}
    assert all(gw and gw.startswith("gw") for gw in worker.values()), worker
    assert worker["node_one"] == worker["node_two"], "the real Node's users on one worker"
    assert worker["c_one"] == worker["c_two"], "a module on one worker"
    started = {name: at for name, _, at in runs}
    first_on_its_worker = min((at for name, gw, at in runs if gw == worker["z_slow"]), default=None)
    assert started["z_slow"] == first_on_its_worker, "the slow scope is handed out first"
    assert "figures from c [gw" in output, output
    assert "c = 1" in output


def test_a_real_node_user_outside_its_directory_is_refused_at_collection(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "ran.jsonl"
    _write_suite(pytester.path, log)
    stray = pytester.path / "tests" / "plain" / "test_stray.py"
    stray.write_text(_RECORD.format(log=str(log)) + "\ndef test_stray(real_node):\n    pass\n")
    result = _run_suite(pytester, monkeypatch)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert "tests that use real_node must live in tests/container/" in result.stderr.str()
    assert "tests/plain/test_stray.py::test_stray" in result.stderr.str()
    assert not log.exists(), "no test ran"
