"""Session-wide plugins, and one report hook that the plugins' log dumps rely on."""

from collections.abc import Generator

import pytest

from tests.fixtures import SESSION_FAILED

pytest_plugins = [
    "tests.fixtures.control_plane",
    "tests.fixtures.nova_box",
    "tests.fixtures.operator",
    "tests.fixtures.real_node",
]


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
