"""Application logging: structlog, one event per line, UTC ISO timestamps.

Logs go to stderr, always: stdout is for data (incident lines, window scores, a replay's
summary), so `netad score ... --incidents - | jq -c .` reads only incidents, as `suricata`
or `zeek-cut` users expect of a Unix tool. journald takes stderr as it takes stdout. JSON
when not on a terminal (journald, containers) or with `logging.format: json`, a readable
console renderer on a terminal or with `console`. Log events are snake_case facts in the
past tense with key-value fields; incidents never go here, they go through sinks.
"""

from __future__ import annotations

import logging
import sys

import structlog

from detector import jitcache

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info", fmt: str = "auto", stream=None) -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    if stream is None:
        stream = sys.stderr
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
    if jitcache.REMOVED:  # found as the command line started, before logging was set up
        structlog.get_logger().warning("jit_cache_repaired", removed=list(jitcache.REMOVED),
                                       reason="cache files of compiled kernels that could not be read (an interrupted "
                                              "write, a disk error) were removed; their kernels are compiled again")
        jitcache.REMOVED.clear()
