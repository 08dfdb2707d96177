"""Scheduled jobs: APScheduler's threads only mark jobs due; the run loop takes them, each
once however often it fired meanwhile, and records the outcome for the metrics."""

from __future__ import annotations

import os
import socket
import time

from detector.config import ServiceConfig
from detector.service.jobs import CHECKPOINT, HEARTBEAT, RETRAIN, THRESHOLD_REFRESH, JobBoard, job_intervals
from detector.service.systemd import Notifier


def _wait_due(board: JobBoard, want: set[str], timeout_s: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    while time.monotonic() < deadline and not want <= set(seen):
        time.sleep(0.05)
        seen += board.take_due()
    return seen


def test_retraining_is_scheduled_only_when_switched_on():
    assert {CHECKPOINT, HEARTBEAT, THRESHOLD_REFRESH} == set(job_intervals(ServiceConfig()))
    assert 30.0 == job_intervals(ServiceConfig(retrain_interval_s=30))[RETRAIN]


def test_a_job_fired_many_times_while_the_loop_was_busy_is_due_once():
    board = JobBoard({CHECKPOINT: 0.05, HEARTBEAT: 3600})
    board.start()
    try:
        time.sleep(0.5)  # the loop is "busy": about ten firings
        assert [CHECKPOINT] == board.take_due()
        assert CHECKPOINT in _wait_due(board, {CHECKPOINT})
        board.record(CHECKPOINT, "ok")
        ts, outcome = board.last[CHECKPOINT]
        assert "ok" == outcome and abs(time.time() - ts) < 5
    finally:
        board.shutdown()


def test_reschedule_adds_changes_and_removes_jobs():
    board = JobBoard({CHECKPOINT: 3600, HEARTBEAT: 3600})
    board.start()
    try:
        changed = board.reschedule({CHECKPOINT: 3600, HEARTBEAT: 0.05, RETRAIN: 0.05})
        assert [HEARTBEAT, RETRAIN] == changed
        assert {HEARTBEAT, RETRAIN} <= set(_wait_due(board, {HEARTBEAT, RETRAIN}))
        board._fired(RETRAIN)  # due, not yet taken by the run loop
        assert [RETRAIN] == board.reschedule({CHECKPOINT: 3600, HEARTBEAT: 0.05})
        assert RETRAIN not in board.take_due()  # a removed job is not run
        board._fired(RETRAIN)  # a firing already handed to the executor when the job was removed
        time.sleep(0.3)
        assert RETRAIN not in board.take_due()
        board.request(RETRAIN)  # asked for explicitly, it is still due
        assert RETRAIN in board.take_due()
    finally:
        board.shutdown()


def test_notifier_watchdog_only_for_this_process(tmp_path):
    """WATCHDOG_USEC applies to the process WATCHDOG_PID names (sd_watchdog_enabled's rule):
    a child that inherited the environment does not ping."""
    assert 1.0 == Notifier(address="", environ={"WATCHDOG_USEC": "2000000"}).watchdog_interval_s
    assert 1.0 == Notifier(address="", environ={"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s
    assert Notifier(address="", environ={"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        n = Notifier(address=str(path), environ={})
        n.reloading()
        fields = dict(line.split("=", 1) for line in server.recv(1024).decode().splitlines())
        n.close()
    assert "1" == fields["RELOADING"] and int(fields["MONOTONIC_USEC"]) > 0


def test_a_step_back_of_the_wall_clock_counts_every_job_s_interval_from_now():
    """APScheduler 3 keeps its schedule on the wall clock: after the clock steps back an
    hour, each job's next run is an hour further away (here set so, as the step leaves it;
    the machine's clock is not stepped in a test). The daemon's WallClock sees the step and
    the schedule starts again from now: the next checkpoint in a minute, not in an hour."""
    import datetime as dt

    import structlog

    from detector.capture.clock import WallClock

    board = JobBoard({CHECKPOINT: 60, HEARTBEAT: 30})
    board.start()
    try:
        now = dt.datetime.now(dt.UTC)
        for name in (CHECKPOINT, HEARTBEAT):
            board._scheduler.modify_job(name, next_run_time=now + dt.timedelta(hours=1))
        wall, mono = [5_000 * 10**9], [10**9]
        clock = WallClock(time_ns=lambda: wall[0], monotonic_ns=lambda: mono[0], on_step_back=board.restart_schedule)
        clock.now_ns()
        wall[0] -= 3600 * 10**9
        with structlog.testing.capture_logs() as logs:
            clock.now_ns()
        runs = board.next_runs()
        assert runs[CHECKPOINT] - now <= dt.timedelta(seconds=61) and runs[HEARTBEAT] - now <= dt.timedelta(seconds=31)
        assert ["wall_clock_stepped_back", "jobs_rescheduled"] == [e["event"] for e in logs]
        assert -3600.0 == logs[1]["step_s"]
    finally:
        board.shutdown()
