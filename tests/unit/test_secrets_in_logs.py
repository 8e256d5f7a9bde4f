"""No secret reaches a log line through a traceback: the frames' local variables are never rendered."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
import structlog

from gateway.observability import LogFormat, configure_logging

SECRET = "hunter2-Pw-in-a-local"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


def _connect() -> None:
    password = SECRET  # what a connect function holds while it logs in
    raise OSError(f"refused after {len(password)} characters")


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("log_format", ["console", "json"])
def test_a_logged_traceback_shows_no_local_variable(log_format: LogFormat) -> None:
    out = io.StringIO()
    configure_logging(level="DEBUG", log_format=log_format, stream=out)
    try:
        _connect()
    except OSError:
        structlog.get_logger("test").warning("opcua_session_error", exc_info=True)
    text = out.getvalue()
    assert "opcua_session_error" in text and "OSError: refused after" in text  # the traceback is still there
    assert "_connect" in text
    assert SECRET not in text
