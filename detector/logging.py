"""Application logging: structlog, one event per line, UTC ISO timestamps.

JSON to stdout when not on a terminal (journald, containers), a readable console renderer
on a terminal. Log events are snake_case facts in the past tense with key-value fields;
incidents never go here, they go through sinks.
"""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info", fmt: str = "auto", stream=None) -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    if stream is None:
        # console logs go to stderr so that stdout stays for incidents on a terminal;
        # JSON logs go to stdout, which systemd hands to journald
        stream = sys.stderr if fmt == "console" else sys.stdout
    renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty()) if fmt == "console" else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
