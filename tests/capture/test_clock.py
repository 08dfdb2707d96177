"""The event clock: records dated too far ahead or behind are refused and counted and never
move the watermark; a genuine jump (a quiet capture's gap) is believed once 8 records agree;
a live source's records are judged by the wall clock too."""

from __future__ import annotations

import numpy as np
import pytest
import structlog

from detector.capture.clock import JUMP_CONFIRM_RECORDS, SLEW, WALL_STEP_S, EventClock, WallClock
from detector.contracts import FlowRecordBatch
from tests.conftest import make_batch

T0 = 1_700_000_000.0
DAY = 86400.0


def _packets(times_s: list[float]):
    return make_batch([{"ts_s": t, "src": "10.0.0.1", "dst": "10.0.0.2", "sport": 1000 + i, "dport": 80}
                       for i, t in enumerate(times_s)])


def _seconds(batch) -> list[float]:
    return (batch.ts_ns / 1e9).tolist()


def _clock() -> EventClock:
    return EventClock(max_ahead_s=300, max_jump_s=3600)


def test_a_lone_far_off_timestamp_is_refused_and_does_not_move_the_clock():
    clock = _clock()
    times = [T0 + i for i in range(20)]
    times[10] = T0 + 30 * DAY
    times[15] = 0.0
    admitted = clock.admit(_packets(times))
    assert [t for i, t in enumerate(times) if i not in (10, 15)] == _seconds(admitted)
    assert (1, 1) == (clock.ahead, clock.behind)
    assert int((T0 + 19) * 1e9) == clock.watermark_ns
    assert {("ahead", 0): 1, ("behind", 0): 1} == clock.refused_by


def test_a_first_record_at_zero_does_not_decide_where_time_starts():
    clock = _clock()
    admitted = clock.admit(_packets([0.0] + [T0 + i for i in range(10)]))
    assert 10 == len(admitted) and 1 == clock.behind


def test_a_genuine_gap_is_believed_once_enough_records_agree_even_across_batches():
    """A month of silence, then the capture goes on: the held records arrive in two batches
    and are all admitted, in order, with the watermark moved to them."""
    clock = _clock()
    before = [T0 + i for i in range(10)]
    after = [T0 + 30 * DAY + i for i in range(12)]
    first = clock.admit(_packets(before + after[:3]))
    assert before == _seconds(first)  # three agreeing records are not enough yet: held
    second = clock.admit(_packets(after[3:]))
    assert after == _seconds(second)
    assert (0, 0, 1) == (clock.ahead, clock.behind, clock.jumps)
    assert int(after[-1] * 1e9) == clock.watermark_ns


def test_held_records_are_refused_when_time_goes_on_where_it_was():
    clock = _clock()
    far = [T0 + 3650 * DAY + i for i in range(JUMP_CONFIRM_RECORDS - 1)]
    assert 5 == len(clock.admit(_packets([T0 + i for i in range(5)] + far)))
    back = clock.admit(_packets([T0 + 10.0]))
    assert [T0 + 10.0] == _seconds(back)
    assert (JUMP_CONFIRM_RECORDS - 1, 0) == (clock.ahead, clock.jumps)


def test_records_still_held_at_the_end_are_counted_as_ahead():
    clock = _clock()
    clock.admit(_packets([T0, T0 + 1, T0 + 30 * DAY]))
    clock.finish()
    assert 1 == clock.ahead


def test_live_records_ahead_of_the_wall_clock_are_refused_per_exporter():
    """A forged NetFlow datagram dated +30 days (exporter 2) is refused whatever came before;
    the genuine exporter's records are admitted."""
    clock = _clock()
    now_ns = int(T0 * 1e9)
    ends = np.array([now_ns - 10**9, now_ns + 30 * int(DAY) * 10**9, now_ns + 3650 * int(DAY) * 10**9, now_ns], np.int64)
    batch = FlowRecordBatch.from_columns({"start_ns": ends - 10**9, "end_ns": ends, "src_hi": [0] * 4, "src_lo": [1] * 4,
                                          "dst_hi": [0] * 4, "dst_lo": [2] * 4, "sport": [1] * 4, "dport": [2] * 4,
                                          "proto": [6] * 4, "packets": [1] * 4, "bytes": [60] * 4,
                                          "exporter": [1, 2, 2, 1]})
    admitted = clock.admit(batch, now_ns=now_ns)
    assert [1, 1] == admitted.exporter.tolist() and now_ns == clock.watermark_ns
    assert {("ahead", 2): 2} == clock.refused_by
    assert 0 == len(clock.admit(_packets([T0 - 2 * 3600.0]), now_ns=now_ns))  # behind the watermark by more than max_jump_s
    assert 1 == clock.behind


def test_a_step_of_the_wall_clock_is_said_once_with_its_size_and_drift_is_not():
    """A live capture is dated by the wall clock: a step back (NTP correcting a clock that
    ran ahead) is said, and netad's time goes on from where it was, ahead of the clock by
    the step, which it gives back at SLEW of the time that passes; a step ahead takes back
    first what is still held. Drift of the two clocks under WALL_STEP_S is not a step. (The
    machine's own clock cannot be stepped in a test: the clocks are given.)"""
    wall, mono = [1_000 * 10**9], [50 * 10**9]

    def tick(wall_s: float, mono_s: float) -> int:
        wall[0] += int(wall_s * 1e9)
        mono[0] += int(mono_s * 1e9)
        return clock.now_ns()

    clock = WallClock(time_ns=lambda: wall[0], monotonic_ns=lambda: mono[0])
    with structlog.testing.capture_logs() as logs:
        assert 1_000 * 10**9 == clock.now_ns()
        tick(1.0, 1.0)
        before = tick(1.0 + 0.9 * WALL_STEP_S, 1.0)  # drift, or a slow read: not a step
        stepped_at = tick(1.0 - 1800.0, 1.0)
        assert 1800 * 10**9 == clock.ahead_ns
        assert before + 10**9 == stepped_at  # netad's time went on a second, not back half an hour
        assert stepped_at + 10**9 - int(SLEW * 1e9) == tick(1.0, 1.0)  # it gives the step back at SLEW
        tick(600.0, 1.0)  # a step ahead: taken out of what netad still holds, nothing closes empty
        assert (1800 - 599 - 2 * SLEW) * 1e9 == pytest.approx(clock.ahead_ns, abs=1)
        tick(1_200_000.0, 1_200_000.0)  # 1,201 s at SLEW: given back in full
        assert 0 == clock.ahead_ns and wall[0] == clock.now_ns()
        tick(600.0, 1.0)
    said = [(e["event"], e["log_level"], e["step_s"]) for e in logs]
    assert [("wall_clock_stepped_back", "warning", -1800.0), ("wall_clock_stepped_ahead", "info", 599.0),
            ("wall_clock_stepped_ahead", "info", 599.0)] == said
    assert ["it takes back time netad kept after a step back", "the windows in between close empty"] == [
        e["reason"] for e in logs[1:]]
    assert 1 == clock.steps_back


class _ClockAsItIs(WallClock):
    """What netad read before: the wall clock's time as it is, the packets as captured."""

    def now_ns(self) -> int:
        return super().now_ns() - self.ahead_ns

    def date(self, batch):
        return batch


def _live_link(clock: WallClock, wall: list[int], mono: list[int], step_back_s: float) -> tuple[list, dict]:
    """Ten minutes of a live link (a packet each way every second, dated by the wall clock
    as a capture dates them) through the daemon's windowing stages, the wall clock stepped
    back by `step_back_s` after five. Returns the windows closed and the stages' counters."""
    from detector.config import Config
    from detector.service.pipeline import build_windowing

    stages = build_windowing(Config(home_net=["10.20.0.0/16"]))
    closed = []
    for second in range(600):
        if second == 300:
            wall[0] -= int(step_back_s * 1e9)
        wall[0] += 10**9
        mono[0] += 10**9
        now = wall[0] / 1e9
        batch = make_batch([{"ts_s": now - 0.5, "src": "10.20.0.5", "dst": "192.0.2.7", "sport": 40000, "dport": 443},
                            {"ts_s": now - 0.25, "src": "192.0.2.7", "dst": "10.20.0.5", "sport": 443, "dport": 40000}])
        closed += stages.push(batch, clock)
    closed += stages.flush()
    return closed, stages.stats()


def test_a_live_link_loses_no_packet_when_the_wall_clock_steps_back():
    """Stepped back by 30 minutes five minutes in: dated in netad's time, every packet is in
    a window and the windows follow on minute after minute; dated by the clock as it is (as
    netad did), the last five minutes of the link were dropped as late."""
    start = 1_700_000_000 * 10**9
    wall, mono = [start], [10**9]
    clock = WallClock(time_ns=lambda: wall[0], monotonic_ns=lambda: mono[0])
    windows, stats = _live_link(clock, wall, mono, 1800.0)
    assert 0 == stats["late_packets"] and 0 == stats["records_behind_time"]
    starts = sorted({w.window_start_ns for w in windows})
    assert all(b - a == 60 * 10**9 for a, b in zip(starts, starts[1:], strict=False))
    # on after the step, not half an hour back: every window the link was watched through,
    # from 20 s into a minute to 20 s into the tenth (the two partial ones let go)
    assert [start + (40 + 60 * k) * 10**9 for k in range(9)] == starts

    wall, mono = [start], [10**9]
    as_it_is = _ClockAsItIs(time_ns=lambda: wall[0], monotonic_ns=lambda: mono[0])
    _, stats = _live_link(as_it_is, wall, mono, 1800.0)
    assert 599 <= stats["late_packets"] + stats["records_behind_time"] <= 600  # the five minutes after the step
