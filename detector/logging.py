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
import threading
import time

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


REPEAT_QUIET_S = 60.0  # a library's line said again within this long is counted, not written


class _ToStructlog(logging.Handler):
    """A library's standard-library log lines (APScheduler's, librdkafka's through
    confluent-kafka's `logger`) as one JSON event each, like every other line on stderr: the
    library's own printing (librdkafka's `%3|1796597883.431|FAIL|rdkafka#producer-1|...`) is
    not JSON and would break `journalctl -o cat | jq`. A line the library repeats (librdkafka
    says each failed reconnection to each broker, every few seconds while a broker is down)
    is written once a minute at most, with how many times it came since (`repeated`)."""

    def __init__(self, event: str, level: int) -> None:
        super().__init__(level=level)
        self.event = event
        self._last: dict[tuple[int, str], tuple[float, int]] = {}  # (level, message) -> (written at, repeats since)
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        key, now = (record.levelno, message), time.monotonic()
        with self._guard:
            written, repeats = self._last.get(key, (None, 0))
            if written is not None and now - written < REPEAT_QUIET_S:
                self._last[key] = (written, repeats + 1)
                return
            self._last[key] = (now, 0)
            if len(self._last) > 1024:  # lines that never come again
                self._last = {k: v for k, v in self._last.items() if now - v[0] < REPEAT_QUIET_S}
        said = structlog.get_logger().error if record.levelno >= logging.ERROR else structlog.get_logger().warning
        said(self.event, logger=record.name, message=message, **({"repeated": repeats} if repeats else {}))


def library_logger(name: str, event: str, level: int = logging.WARNING) -> logging.Logger:
    """The standard-library logger `name`, its lines from `level` up written as `event`
    (structlog, JSON), below it dropped, and not passed on to the root logger."""
    logger = logging.getLogger(name)
    if not any(isinstance(h, _ToStructlog) for h in logger.handlers):
        logger.addHandler(_ToStructlog(event, level))
    logger.setLevel(level)
    logger.propagate = False
    return logger
