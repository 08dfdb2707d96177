"""The event clock: which records' times netad believes, before any stage keeps time by them.

Where this stands: at the head of the capture stages, between a source (capture file, live
interface, NetFlow/IPFIX collector, Zeek log) and the first stage that keeps time by its
records (the flow table for packets, the window stage for flow records)::

    source --batch--> EventClock.admit --in-bounds records--> FlowTable / windows

Time is an input like any other: one packet dated 1970, or one NetFlow datagram dated ten
years ahead, would otherwise move the watermark, close every window in between and leave
the genuine records behind it late. So a record is OUT OF BOUNDS, counted and dropped
(`ahead`, `behind`) and never moves the clock, when

- live (a `now_ns` is given): it ends more than `max_ahead_s` past the wall clock;
- it is more than `max_jump_s` behind the newest record believed (the watermark);
- replaying: it is more than `max_jump_s` ahead of the watermark, unless the records after
  it agree with it: a capture that really went quiet for a month and then went on is a
  genuine gap, a lone far-off timestamp is not. Such records are HELD (at most
  JUMP_CONFIRM_RECORDS of them, carried into the next batch) until either
  JUMP_CONFIRM_RECORDS consistent ones have come (the jump is believed: they are admitted
  and the watermark moves to them) or one comes back within bounds of the old watermark
  (they were outliers: counted as `ahead`). At the end of the input, held records were not
  confirmed: `finish()` counts them as `ahead`.

The first record ever has no watermark to be judged by: a replay starts at the earliest time
that JUMP_CONFIRM_RECORDS records of the first batch agree on (so a first packet at 0 is
behind it); a live source likewise, among its records not ahead of the wall clock. The
walk over records is one numba loop per batch.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TypeVar

import numba
import numpy as np
import structlog

from detector.contracts import FlowRecordBatch, PacketBatch

log = structlog.get_logger()

JUMP_CONFIRM_RECORDS = 8  # consistent records that make a jump ahead believed (replay)
WALL_STEP_S = 2.0  # a change of the wall clock against the monotonic one that is a step, not drift
SLEW = 0.01  # how fast netad gives back the time it kept after a step back of the wall clock (WallClock)

IN, AHEAD, BEHIND, HELD = 0, 1, 2, 3

Batch = TypeVar("Batch", PacketBatch, FlowRecordBatch)


@numba.njit(cache=True)
def _judge(ts: np.ndarray, watermark: int, now_ns: int, live: bool, ahead_ns: int, jump_ns: int, confirm: int,
           verdict: np.ndarray) -> tuple[int, int]:
    """verdict[i] = IN, AHEAD, BEHIND or HELD per record, in order; returns the watermark
    after them (that of the records admitted) and the jumps ahead it believed."""
    held = np.empty(confirm, np.int64)
    jumps = 0
    n_held = 0
    held_wm = 0
    for i in range(ts.shape[0]):
        t = ts[i]
        if t < watermark - jump_ns:
            verdict[i] = BEHIND
        elif live:
            if t > now_ns + ahead_ns:
                verdict[i] = AHEAD
            else:
                verdict[i] = IN
                watermark = max(watermark, t)
        elif t <= watermark + jump_ns:
            verdict[i] = IN
            watermark = max(watermark, t)
            for j in range(n_held):  # time went on where it was: those were outliers
                verdict[held[j]] = AHEAD
            n_held = 0
        elif n_held and held_wm - jump_ns <= t <= held_wm + jump_ns:
            verdict[i] = HELD
            held[n_held] = i
            n_held += 1
            held_wm = max(held_wm, t)
            if n_held == confirm:  # they agree: a genuine jump
                for j in range(n_held):
                    verdict[held[j]] = IN
                watermark, n_held = held_wm, 0
                jumps += 1
        else:  # the first of a new jump (one that disagrees with the held ones drops them)
            for j in range(n_held):
                verdict[held[j]] = AHEAD
            verdict[i] = HELD
            held[0], n_held, held_wm = i, 1, t
            if confirm == 1:
                verdict[i] = IN
                watermark, n_held = t, 0
                jumps += 1
    return watermark, jumps


class EventClock:
    """`admit(batch, now_ns)` -> the records whose times are believed (see the module's text).
    `ahead` and `behind` count the records refused; `ahead_by`/`behind_by` per origin
    (exporter id for flow records, 0 for packets)."""

    def __init__(self, max_ahead_s: float, max_jump_s: float, confirm: int = JUMP_CONFIRM_RECORDS) -> None:
        self.max_ahead_s = max_ahead_s
        self.max_jump_s = max_jump_s
        self.confirm = confirm
        self._ahead_ns = int(round(max_ahead_s * 1e9))
        self._jump_ns = int(round(max_jump_s * 1e9))
        self.watermark_ns: int | None = None
        self.ahead = 0
        self.behind = 0
        self.jumps = 0  # jumps ahead believed (a replay's quiet gaps)
        self.refused_by: dict[tuple[str, int], int] = {}  # (ahead|behind, origin) -> records
        self.last_refused_ns: dict[tuple[str, int], int] = {}  # (ahead|behind, origin) -> a refused record's time
        self._held: PacketBatch | FlowRecordBatch | None = None

    @staticmethod
    def times(batch: PacketBatch | FlowRecordBatch) -> np.ndarray:
        """The time a record keeps the clock by: a packet's, a flow record's end."""
        return batch.ts_ns if isinstance(batch, PacketBatch) else np.maximum(batch.end_ns, batch.start_ns)

    def admit(self, batch: Batch, now_ns: int | None = None) -> Batch:
        held = self._held
        if held is not None and type(held) is type(batch):
            batch = type(batch).concat([held, batch])  # type: ignore[arg-type]
            self._held = None
        if len(batch) == 0:
            return batch
        ts = self.times(batch)
        live = now_ns is not None
        watermark = self.watermark_ns
        if watermark is None:
            # a live source's first records may be a backlog (an exporter's, a log's): they
            # start its time, as long as they are not ahead of the wall clock
            believable = ts[ts <= int(now_ns) + self._ahead_ns] if live else ts  # type: ignore[arg-type]
            if believable.shape[0] == 0:  # all ahead of the wall clock: refused, and time has not started
                self._count(batch, ts, np.ones(ts.shape[0], bool), "ahead")
                return batch.take(np.zeros(0, np.int64))
            watermark = self._start(believable)
        wm = np.maximum.accumulate(np.maximum(ts, watermark))
        # the usual case, every record within bounds of the records before it: no loop
        prev = np.concatenate([[watermark], wm[:-1]])
        if live:
            fine = (ts >= prev - self._jump_ns) & (ts <= int(now_ns) + self._ahead_ns)  # type: ignore[operator]
        else:
            fine = (ts >= prev - self._jump_ns) & (ts <= prev + self._jump_ns)
        if fine.all():
            self.watermark_ns = int(wm[-1])
            return batch
        verdict = np.empty(ts.shape[0], np.int8)
        watermark, jumps = _judge(ts, watermark, int(now_ns or 0), live, self._ahead_ns, self._jump_ns, self.confirm, verdict)
        self.watermark_ns, self.jumps = int(watermark), self.jumps + int(jumps)
        self._count(batch, ts, verdict == AHEAD, "ahead")
        self._count(batch, ts, verdict == BEHIND, "behind")
        if (verdict == HELD).any():
            self._held = batch.take(np.flatnonzero(verdict == HELD))
        return batch.take(np.flatnonzero(verdict == IN))

    def _start(self, ts: np.ndarray) -> int:
        """Where a replay's time starts: the earliest time that JUMP_CONFIRM_RECORDS records
        of the first batch agree on (lie within max_jump_s after), so that neither a lone
        first record dated 1970 nor a gap inside the batch decides it."""
        s = np.sort(ts)
        agree = np.searchsorted(s, s + self._jump_ns, side="right") - np.arange(s.shape[0])
        enough = np.flatnonzero(agree >= min(self.confirm, s.shape[0]))
        return int(s[enough[0]]) if enough.shape[0] else int(s[0])

    def finish(self) -> None:
        """The input ended: records still held were never confirmed."""
        held, self._held = self._held, None
        if held is not None and len(held):
            self._count(held, self.times(held), np.ones(len(held), bool), "ahead")

    def _count(self, batch: PacketBatch | FlowRecordBatch, ts: np.ndarray, mask: np.ndarray, kind: str) -> None:
        n = int(mask.sum())
        if not n:
            return
        setattr(self, kind, getattr(self, kind) + n)
        origins = batch.exporter[mask] if isinstance(batch, FlowRecordBatch) else np.zeros(n, np.int64)
        for origin, count in zip(*np.unique(origins, return_counts=True), strict=True):
            key = (kind, int(origin))
            self.refused_by[key] = self.refused_by.get(key, 0) + int(count)
            self.last_refused_ns[key] = int(ts[mask][origins == origin][0])

    def stats(self) -> dict[str, int]:
        return {"records_ahead_of_time": self.ahead, "records_behind_time": self.behind, "time_jumps": self.jumps}


class WallClock:
    """The time a live source is judged by, and its windows closed by: the wall clock, with
    its steps said, and a step back absorbed. A live capture's packets are dated by the wall
    clock. Stepped back by S seconds (NTP correcting a clock that ran ahead, an admin's
    `date -s`), its packets would fall S seconds behind windows already closed, and for S
    seconds every one was dropped as late (a 30-minute step: half an hour of the link
    unseen). Instead netad's time keeps going from where it was: now_ns() is the wall clock
    plus `ahead_ns` (S at the step), and date() moves a live capture's packets by as much, so
    no window closes twice and no packet is late. netad gives the step back at SLEW of the
    time that passes (a minute in 100), as NTP slews a clock: windows then hold 1 % more of
    the wire's time, and a 30-minute step is gone in 50 hours, incidents dated by netad's
    time until then. A step ahead first takes back what is still held; the rest of it (or a
    suspend) closes the windows in between, empty. Flow records keep their exporters' time
    (not this clock's): only their judgement against the present (`max_ahead_s`) and the
    closing of a quiet link's windows read netad's time, which is why it must not step back."""

    def __init__(self, time_ns=time.time_ns, monotonic_ns=time.monotonic_ns, on_step_back=None) -> None:
        self._time_ns, self._monotonic_ns = time_ns, monotonic_ns
        self._offset_ns: int | None = None
        self._monotonic_last: int | None = None
        self.ahead_ns = 0  # netad's time minus the wall clock's: what is left of the steps back
        self.steps_back = 0
        self.on_step_back = on_step_back  # called with the step (s, negative) after it is said

    def now_ns(self) -> int:
        wall, monotonic = self._time_ns(), self._monotonic_ns()
        offset = wall - monotonic
        last, self._offset_ns = self._offset_ns, offset
        if self.ahead_ns and self._monotonic_last is not None:
            self.ahead_ns = max(0, self.ahead_ns - int(SLEW * (monotonic - self._monotonic_last)))
        self._monotonic_last = monotonic
        if last is not None and abs(offset - last) > WALL_STEP_S * 1e9:
            step_ns = offset - last
            step_s = round(step_ns / 1e9, 3)
            if step_ns < 0:
                self.steps_back += 1
                self.ahead_ns -= step_ns
                log.warning("wall_clock_stepped_back", step_s=step_s, ahead_s=round(self.ahead_ns / 1e9, 3),
                            reason=f"a live capture is dated by this clock: netad keeps its own time going and dates "
                                   f"the packets {self.ahead_ns / 1e9:.0f} s later, so none is late; it gives that "
                                   f"back at {SLEW:.0%} of the time that passes; scheduled jobs count their "
                                   "intervals from now")
                if self.on_step_back is not None:
                    self.on_step_back(step_s)
            else:
                taken = min(self.ahead_ns, step_ns)
                self.ahead_ns -= taken
                log.info("wall_clock_stepped_ahead", step_s=step_s, ahead_s=round(self.ahead_ns / 1e9, 3),
                         reason="the windows in between close empty" if step_ns > taken
                         else "it takes back time netad kept after a step back")
        return wall + self.ahead_ns

    def date(self, batch: Batch) -> Batch:
        """A live source's batch in netad's time (now_ns() first: it sees the steps). Packets
        move by `ahead_ns`, their DNS answers with them; flow records keep their exporters'."""
        if not self.ahead_ns or not isinstance(batch, PacketBatch) or (not len(batch) and not len(batch.answers)):
            return batch
        answers = dataclasses.replace(batch.answers, ts_ns=batch.answers.ts_ns + self.ahead_ns)
        return dataclasses.replace(batch, ts_ns=batch.ts_ns + self.ahead_ns, answers=answers)
