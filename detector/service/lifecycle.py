"""The process lifecycle every long-running netad process shares: the all-in-one daemon
(service.daemon) and the Kafka sensor and scorer (service.kafka).

Where it stands: around the pipeline, never in it. The process's run loop does the work;
between two batches it asks this object whether to stop or reload, and tells it when the
pipeline made progress. This object holds what the loop must not do itself:

- signals, uvicorn's way: handlers only set flags. SIGTERM/SIGINT: stop; SIGHUP: reload
  (without a handler it would end the process). A second SIGINT exits at once (130), for an
  operator whose Ctrl-C did not stop a stuck shutdown.
- the hard-exit timer, armed when the shutdown starts: a shutdown that overruns
  `service.shutdown_timeout_s` by _HARD_EXIT_GRACE_S is cut short (exit 1).
- the state directory's lock (one process per state directory).
- the metrics endpoint (service.metrics) over a snapshot of the counters that the run loop
  refreshes: the HTTP thread never reads state the loop is changing; and the pages mounted
  on it (`mount`: the incident page, which locks what it reads), and what must happen when the
  process closes (`on_close`: the incident page's history is saved).
- systemd notify: READY, RELOADING, STOPPING, STATUS every `service.status_interval_s`, and
  WATCHDOG=1 only while the pipeline makes progress (a stall shows as `pipeline_stalled`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from detector.config import ServiceConfig
from detector.errors import ConfigError
from detector.service import _held_reload as held_reload
from detector.service.metrics import Metrics, PageHandler
from detector.service.state import StateDirBusyError, lock_state_dir
from detector.service.systemd import Notifier

log = structlog.get_logger()

_HARD_EXIT_GRACE_S = 5.0  # past shutdown_timeout_s, a shutdown that still hangs is cut short
SNAPSHOT_INTERVAL_S = 0.5  # how stale the metrics endpoint's view of the counters may be
EXIT_INTERRUPTED = 130  # a second SIGINT (128 + SIGINT, as a shell reports it)


class Lifecycle:
    """One per process: `role` names it in messages (daemon, sensor, scorer)."""

    def __init__(self, service: ServiceConfig, role: str) -> None:
        self.service = service
        self.role = role
        self.notifier = Notifier()
        self.metrics: Metrics | None = None
        self.stop = False
        self.stop_signal = ""
        self.reload = False
        self.on_stop: Callable[[], None] | None = None  # e.g. tell the source to stop
        self.started_s = time.monotonic()
        self._interrupts = 0
        self._lock_fd: int | None = None
        self._hard_stop: threading.Timer | None = None
        self._snapshot_of: Callable[[], dict[str, Any]] | None = None
        self._live_of: Callable[[], dict[str, Any]] | None = None
        self._snapshot: dict[str, Any] = {}
        self._snapshot_lock = threading.Lock()
        self._pages: dict[str, PageHandler] = {}
        self.on_close: list[Callable[[], None]] = []  # called once when the process closes (after a shutdown)
        now = time.monotonic()
        self.stalled = False
        self._last_progress_s = self._last_ping_s = self._last_status_s = now
        self._next_snapshot_s = 0.0

    # ---------------------------------------------------------------- signals: flags only
    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        self.reload = self.reload or held_reload.take()  # a SIGHUP while starting: reloaded between the first batches

    def _on_stop(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                os.write(2, b"netad: second interrupt, exiting now\n")
                os._exit(EXIT_INTERRUPTED)
        self.stop = True
        self.stop_signal = signal.Signals(signum).name
        if self.on_stop is not None:
            self.on_stop()

    def _on_reload(self, _signum: int, _frame: object) -> None:
        self.reload = True

    def take_reload(self) -> bool:
        """Whether a SIGHUP came since the last call."""
        wanted, self.reload = self.reload, False
        return wanted

    # ---------------------------------------------------------------- start-up
    def lock_state_dir(self, directory: Path) -> None:
        """Hold the state directory for this process (kept until it exits); ConfigError when another holds it."""
        try:
            self._lock_fd = lock_state_dir(directory)
        except StateDirBusyError as exc:
            raise ConfigError(f"state_dir: {exc}; give each {self.role} its own") from None

    def mount(self, prefix: str, handler: PageHandler) -> None:
        """A page to serve beside the metrics (before serve_metrics)."""
        self._pages[prefix] = handler

    def serve_metrics(self, snapshot: Callable[[], dict[str, Any]], live: Callable[[], dict[str, Any]] | None = None) -> None:
        """/metrics, /healthz, /readyz on `service.metrics_address` (off without one).
        `snapshot` is called on the run loop's thread (refresh); `live` on the HTTP thread,
        for what is thread-safe by itself (the sinks' stats)."""
        self._snapshot_of, self._live_of = snapshot, live
        address = self.service.metrics_address
        if not address:
            return
        self.metrics = Metrics(self._scrape, stall_after_s=self.service.stall_after_s)
        for prefix, handler in self._pages.items():
            self.metrics.mount(prefix, handler)
        try:
            host, port = self.metrics.serve(address)
        except (OSError, ValueError) as exc:
            self.metrics = None
            raise ConfigError(f"service.metrics_address: cannot serve on {address!r}: {exc}") from None
        log.info("metrics_started", address=f"{host}:{port}")

    def ready(self, status: str) -> None:
        self.refresh(force=True)
        self.notifier.ready(status=status)
        if self.metrics is not None:
            self.metrics.ready = True

    # ---------------------------------------------------------------- the run loop's gaps
    def progressed(self, now: float) -> None:
        self._last_progress_s = now
        if self.metrics is not None:
            self.metrics.progressed()
        if self.stalled:
            self.stalled = False
            log.info("pipeline_recovered")

    def tick(self, now: float, status: Callable[[float], str]) -> None:
        """Between two batches: the metrics snapshot, WATCHDOG=1 while healthy, and STATUS=
        every `service.status_interval_s` (`status(seconds since the last one)` gives the text)."""
        self.refresh(now=now)
        healthy = now - self._last_progress_s < self.service.stall_after_s
        if not healthy and not self.stalled:
            self.stalled = True
            log.warning("pipeline_stalled", seconds_without_progress=round(now - self._last_progress_s, 1))
        interval_s = self.notifier.watchdog_interval_s
        if healthy and interval_s is not None and now - self._last_ping_s >= interval_s:
            self.notifier.watchdog()
            self._last_ping_s = now
        if now - self._last_status_s >= self.service.status_interval_s:
            text = status(max(now - self._last_status_s, 1e-9))
            self._last_status_s = now
            self.notifier.status(text + (" (stalled)" if self.stalled else ""))

    def refresh(self, force: bool = False, now: float | None = None) -> bool:
        """Copy the counters for the metrics endpoint, if it is served and they are due; True if copied."""
        if self.metrics is None or self._snapshot_of is None:
            return False
        now = time.monotonic() if now is None else now
        if not force and now < self._next_snapshot_s:
            return False
        snap = self._snapshot_of()
        with self._snapshot_lock:
            self._snapshot = snap
        self._next_snapshot_s = now + SNAPSHOT_INTERVAL_S
        return True

    def _scrape(self) -> dict[str, Any]:  # the HTTP thread
        with self._snapshot_lock:
            snap = dict(self._snapshot)
        if self._live_of is not None:
            snap.update(self._live_of())
        return snap

    def reloading(self) -> None:
        self.notifier.reloading()

    def reconfigure(self, service: ServiceConfig) -> None:
        """A reload's `service.*` (the metrics address needs a restart)."""
        self.service = service
        if self.metrics is not None:
            self.metrics.stall_after_s = service.stall_after_s

    # ---------------------------------------------------------------- shutdown
    def stopping(self, reason: str) -> None:
        """The shutdown starts: systemd and /readyz are told, and the hard-exit timer armed."""
        self.notifier.stopping(status=f"stopping ({reason})")
        if self.metrics is not None:
            self.metrics.ready = False
        self._hard_stop = threading.Timer(self.service.shutdown_timeout_s + _HARD_EXIT_GRACE_S, self._hard_exit)
        self._hard_stop.daemon = True
        self._hard_stop.start()

    def crashed(self) -> None:
        self.notifier.stopping(status="crashed")

    def _hard_exit(self) -> None:  # a timer thread: the run loop is stuck somewhere
        log.error("shutdown_timed_out", timeout_s=self.service.shutdown_timeout_s)
        os._exit(1)

    def close(self) -> None:
        """The shutdown finished: the timer is disarmed, the endpoint and the notify socket closed."""
        if self._hard_stop is not None:
            self._hard_stop.cancel()
        hooks, self.on_close = self.on_close, []
        for call in hooks:
            try:
                call()
            except Exception:  # a failing hook must not keep the rest of the shutdown from happening
                log.exception("close_hook_failed")
        if self.metrics is not None:
            self.metrics.close()
        self.notifier.close()
        if threading.current_thread() is threading.main_thread():
            # nothing is left to reload, and Python's exit gives SIGHUP back its default
            # action, which would end a process that stopped cleanly by a signal
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_s
