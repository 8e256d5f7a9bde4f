"""The gateway's logging setup: asyncua's teardown error after a server went away is one warning line."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from gateway.observability import configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    client_logger = logging.getLogger("asyncua.client.client")
    filters = client_logger.filters[:]
    yield
    root.handlers[:], root.level = handlers, level
    client_logger.filters[:] = filters


def test_asyncua_teardown_after_a_lost_server_is_a_warning_without_traceback(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging(level="INFO", log_format="json", stream=out)
    client_logger = logging.getLogger("asyncua.client.client")
    try:
        raise ConnectionError("Connection is closed")
    except ConnectionError:
        client_logger.exception("close_session raised during disconnect; continuing teardown")
        client_logger.exception("something else failed")  # any other error keeps its level and traceback
    teardown, other = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert (teardown["level"], "exception" in teardown) == ("warning", False)
    assert (other["level"], "Traceback" in other["exception"]) == ("error", True)
