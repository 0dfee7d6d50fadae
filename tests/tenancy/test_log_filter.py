"""The CLI's guard against client loggers that write response bodies at DEBUG."""

from __future__ import annotations

import logging

import pytest
from amphora_operator.cli import _never_log_bodies


def test_response_bodies_are_dropped_even_with_the_logger_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rest = logging.getLogger("kubernetes.client.rest")
    before = list(rest.filters)
    try:
        _never_log_bodies()
        _never_log_bodies()  # idempotent: one filter
        assert len(rest.filters) == len(before) + 1
        with caplog.at_level(logging.DEBUG):
            rest.setLevel(logging.DEBUG)
            rest.debug("response body: %s", '{"data": {"password": "c2VjcmV0"}}')
            rest.info("kept")
            logging.getLogger("urllib3.connectionpool").debug("GET /api HTTP/1.1 200")
        messages = [r.getMessage() for r in caplog.records]
        assert messages == ["kept", "GET /api HTTP/1.1 200"]
    finally:
        rest.filters[:] = before
        rest.setLevel(logging.NOTSET)
