"""Session-wide plugins, the end-of-run summary, and how the suite is split across workers.

``make test`` runs the suite on pytest-xdist workers (``--dist loadscope``, with the scopes
below). Each worker is a pytest session of its own, with its own control plane and Nova box.
The one real kubelet Node is machine-wide, so every test under ``tests/container/`` (where all
of the Node's users live) runs on one worker; any other test stays with its module, so a
module's fixtures are set up once. Scopes that hold a ``slow`` test are handed out first.
"""

from collections.abc import Generator
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

from tests.fixtures import SESSION_FAILED, SUMMARY

pytest_plugins = [
    "tests.fixtures.control_plane",
    "tests.fixtures.nova_box",
    "tests.fixtures.operator",
    "tests.fixtures.real_node",
]

#: Every test that uses the machine-wide real Node lives here; they share one worker.
REAL_NODE_DIR = "tests/container/"


def scope_of(nodeid: str) -> str:
    """The work unit a test belongs to: the real Node's directory, or else its module."""
    if nodeid.startswith(REAL_NODE_DIR):
        return REAL_NODE_DIR
    return nodeid.split("::")[0]


class _Scopes(LoadScopeScheduling):
    """xdist's loadscope, with :func:`scope_of` as the scope (rather than the module)."""

    def _split_scope(self, nodeid: str) -> str:
        return scope_of(nodeid)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadScopeScheduling | None:
    if config.getoption("dist") == "loadscope":
        return _Scopes(config, log)
    return None  # another --dist mode: xdist's own scheduler


def pytest_configure(config: pytest.Config) -> None:
    workeroutput: dict[str, Any] | None = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: xdist sends this dict once it finishes
        workeroutput["summary"] = config.stash.setdefault(SUMMARY, [])
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_WorkerSummaries(config), "amphora-worker-summaries")


class _WorkerSummaries:
    """On the xdist controller: collect each finished worker's summary sections."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        output = getattr(node, "workeroutput", None) or {}
        worker = node.gateway.id
        for title, lines in output.get("summary", []):
            self.config.stash.setdefault(SUMMARY, []).append((f"{title} [{worker}]", lines))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a real-Node user outside :data:`REAL_NODE_DIR` (it would share the Node with
    another worker); on an xdist worker, put the scopes that hold a ``slow`` test first (the
    controller keeps the workers' order), so no worker starts a several-minute test while the
    others have run out of work."""
    strays = [
        item.nodeid
        for item in items
        if "real_node" in getattr(item, "fixturenames", ())
        and not item.nodeid.startswith(REAL_NODE_DIR)
    ]
    if strays:
        raise pytest.UsageError(f"tests that use real_node must live in {REAL_NODE_DIR}: {strays}")
    if hasattr(config, "workerinput"):
        slow = {scope_of(item.nodeid) for item in items if item.get_closest_marker("slow")}
        items.sort(key=lambda item: scope_of(item.nodeid) not in slow)  # stable: slow first


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep the call-phase report on the item (fixtures print logs when it failed) and note
    any failure for the end-of-session log dumps."""
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    if report.failed:
        item.config.stash[SESSION_FAILED] = True
    return report


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    for title, lines in config.stash.get(SUMMARY, []):
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)
