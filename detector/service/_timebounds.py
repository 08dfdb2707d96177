"""Records whose time was not believed (capture.clock), reported: one log line and one
incident per burst and origin, not one per record.

Where this stands: beside the Pipeline (service.pipeline), which calls `check` after every
batch and `finish` at the end of the input. A burst is what an origin (an exporter, a capture
file, an interface) sends out of bounds until BURST_QUIET_S of wall time pass without more:
it opens a `future-dated-records` or `clock-jump` incident on the link (alerting.incidents.
time_bounds_event) with a `records_out_of_time_bounds` warning, and resolves it with a
`records_out_of_time_bounds_ended` line that says how many records it held.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from detector.alerting.incidents import time_bounds_event
from detector.capture.clock import EventClock
from detector.contracts import IncidentEvent, ns_to_iso

log = structlog.get_logger()

BURST_QUIET_S = 60.0  # wall time without more records out of bounds that ends a burst


@dataclass
class _Burst:
    first_ns: int  # a refused record's time, at the burst's start
    last_ns: int
    records: int
    quiet_since: float  # monotonic time of its last record


class TimeBounds:
    """Turns the clock's counts of refused records into bursts: logs and incident events."""

    def __init__(self, clock: EventClock, origin_name: Callable[[int], str], publish: Callable[[IncidentEvent], None],
                 observer: Callable[[], dict[str, str]], model_version: Callable[[], str]) -> None:
        self.clock = clock
        self.origin_name = origin_name
        self.publish = publish
        self.observer = observer
        self.model_version = model_version
        self._seen: dict[tuple[str, int], int] = {}
        self._bursts: dict[tuple[str, int], _Burst] = {}

    def check(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for key, total in self.clock.refused_by.items():
            new = total - self._seen.get(key, 0)
            if not new:
                continue
            self._seen[key] = total
            when = self.clock.last_refused_ns[key]
            burst = self._bursts.get(key)
            if burst is None:
                burst = self._bursts[key] = _Burst(when, when, 0, now)
                kind, origin = key[0], self.origin_name(key[1])
                log.warning("records_out_of_time_bounds", kind=kind, origin=origin, records=new, dated=ns_to_iso(when),
                            watermark=ns_to_iso(self.clock.watermark_ns or 0), max_ahead_s=self.clock.max_ahead_s,
                            max_jump_s=self.clock.max_jump_s)
                self._emit("opened", key, burst, new)
            burst.records += new
            burst.last_ns, burst.quiet_since = when, now
        for key in [k for k, b in self._bursts.items() if now - b.quiet_since >= BURST_QUIET_S]:
            self._end(key)

    def finish(self) -> None:
        self.check()
        for key in list(self._bursts):
            self._end(key)

    def _end(self, key: tuple[str, int]) -> None:
        burst = self._bursts.pop(key)
        log.info("records_out_of_time_bounds_ended", kind=key[0], origin=self.origin_name(key[1]), records=burst.records)
        self._emit("resolved", key, burst, burst.records)

    def _emit(self, action: str, key: tuple[str, int], burst: _Burst, records: int) -> None:
        emitted_ns = self.clock.watermark_ns or burst.last_ns
        self.publish(time_bounds_event(action, key[0], self.origin_name(key[1]), records,  # type: ignore[arg-type]
                                       min(burst.first_ns, burst.last_ns), max(burst.first_ns, burst.last_ns), emitted_ns,
                                       self.observer(), self.model_version()))
