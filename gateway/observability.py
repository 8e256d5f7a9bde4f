"""Logging setup: structlog events, JSON lines (or a console renderer on a TTY), library loggers included.

Events have fixed fields (``device``, ``endpoint``, ``tag``, ``error``); one event per state change, never
one per sample.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

LogFormat = Literal["auto", "json", "console"]

# Libraries that log a traceback per failed request or per reconnect attempt; we log the state change instead.
_NOISY_LIBRARIES = ("asyncua", "pymodbus", "amqtt", "transitions")


def _teardown_without_traceback(record: logging.LogRecord) -> bool:
    """asyncua's ``disconnect`` logs an error with a traceback when the server has already closed the connection
    (``close_session raised during disconnect; continuing teardown``): the link's loss is already reported by our
    source, so this is one warning line without the traceback."""
    if record.getMessage().endswith("during disconnect; continuing teardown"):
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
    return True


def configure_logging(*, level: str = "INFO", log_format: LogFormat = "auto", stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging through one handler on stdout.

    ``auto`` picks the console renderer when stdout is a terminal and JSON lines otherwise (systemd/journald).
    """
    out = stream if stream is not None else sys.stdout
    use_console = log_format == "console" or (log_format == "auto" and out.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # Tracebacks without the frames' local variables (structlog's default with rich installed shows them): a
    # local can be a password, and no secret goes into a log line (README, "Security").
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        if use_console
        else structlog.processors.JSONRenderer()
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # The console renderer prints exceptions itself; JSON needs them as a string field.
            *([] if use_console else [structlog.processors.format_exc_info]),
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    # asyncua logs a traceback every second while a server is away; our sources log the state change instead.
    logging.getLogger("asyncua.client.ua_client").setLevel(logging.CRITICAL)
    logging.getLogger("asyncua.client.client").addFilter(_teardown_without_traceback)
