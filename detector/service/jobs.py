"""Scheduled jobs of the daemon: checkpoint, heartbeat, threshold refresh, retraining.

Where it stands: beside the run loop. APScheduler 3.x keeps the schedule (interval triggers,
UTC, coalesced, one instance at a time), but a job that fires on the scheduler's thread does
nothing but mark itself due: pipeline state (hidden states, open incidents, the model) is
owned by the run loop's thread and is only ever touched there, between two batches. The run
loop takes the due jobs (`take_due`), runs them, and records each outcome (`record`), which
the metrics endpoint shows as the job's last run time and outcome.

Why not let the job run on the scheduler thread under a lock: the pipeline would need a lock
on its hot path, held across a batch of up to 64k packets; a flag costs the hot path
nothing, and the run loop reaches the next gap between batches within POLL_S.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from detector.config import ServiceConfig
from detector.logging import library_logger
from detector.model.scorer import StreamingScorer

log = structlog.get_logger()

CHECKPOINT = "checkpoint"
HEARTBEAT = "heartbeat"
THRESHOLD_REFRESH = "threshold_refresh"
RETRAIN = "retrain"


def job_intervals(service: ServiceConfig) -> dict[str, float]:
    """Job name -> interval in seconds; retraining only when it is switched on."""
    intervals = {
        CHECKPOINT: service.checkpoint_interval_s,
        HEARTBEAT: service.heartbeat_interval_s,
        THRESHOLD_REFRESH: service.threshold_refresh_interval_s,
    }
    if service.retrain_interval_s > 0:
        intervals[RETRAIN] = service.retrain_interval_s
    return intervals


def refresh_thresholds(scorer: StreamingScorer, adapt: bool, target_false_alarm: float) -> dict[str, float]:
    """The threshold refresh job: when `model.adapt_thresholds` is on, refit each class's
    tail on recent non-alerted windows (bounded around the calibrated value, see
    StreamingScorer.refresh_thresholds); returns the thresholds in force. Runs on the run
    loop's thread, between batches."""
    if adapt:
        scorer.refresh_thresholds(target_false_alarm)
    return {cls: round(float(v), 6) for cls, v in scorer.thresholds().items()}


class JobBoard:
    """The schedule (on APScheduler's thread) and the due list (taken by the run loop)."""

    def __init__(self, intervals: dict[str, float]) -> None:
        # its INFO lines ("Running job ...") would drown the log; its warnings (a missed run, a job that raised) are said
        library_logger("apscheduler", "scheduler_warned")
        self._scheduler = BackgroundScheduler(timezone=dt.UTC)
        self._lock = threading.Lock()
        self._due: list[str] = []
        self.last: dict[str, tuple[float, str]] = {}  # job -> (unix time, outcome), run loop only
        self.intervals: dict[str, float] = {}
        self._apply(intervals)

    def start(self) -> None:
        self._scheduler.start()

    def _apply(self, intervals: dict[str, float]) -> None:
        # the new schedule holds before any job is removed: a firing of a removed job that is
        # already on its way (the scheduler hands runs to its executor's thread) finds its
        # name gone and marks nothing, and one already due is not run
        with self._lock:
            before, self.intervals = self.intervals, dict(intervals)
            removed = set(before) - set(intervals)
            self._due = [name for name in self._due if name not in removed]
        for name in removed:
            self._scheduler.remove_job(name)
        for name, seconds in intervals.items():
            if before.get(name) == seconds:
                continue
            # coalesce: runs missed while the machine was suspended collapse into one;
            # max_instances=1 for the record (a job here only sets a flag)
            self._scheduler.add_job(self._fired, IntervalTrigger(seconds=seconds, timezone=dt.UTC),
                                    args=[name], id=name, name=name, replace_existing=True, coalesce=True,
                                    max_instances=1, misfire_grace_time=max(1, int(seconds)))

    def restart_schedule(self, step_s: float) -> None:
        """The wall clock stepped back by -step_s: every job counts its interval from now.
        APScheduler 3 keeps its schedule on the wall clock, so each next run stayed where it
        was, that much further away: a step back of an hour held every checkpoint, heartbeat
        and retraining back by an hour."""
        for name, seconds in self.intervals.items():
            self._scheduler.reschedule_job(name, trigger=IntervalTrigger(seconds=seconds, timezone=dt.UTC))
        log.warning("jobs_rescheduled", step_s=step_s, jobs=sorted(self.intervals),
                    reason="the wall clock stepped back; each job's interval is counted from now")

    def next_runs(self) -> dict[str, dt.datetime]:
        """Each job's next run as APScheduler holds it (tests, diagnostics)."""
        return {job.id: job.next_run_time for job in self._scheduler.get_jobs()}

    def reschedule(self, intervals: dict[str, float]) -> list[str]:
        """Apply new intervals (a config reload); returns the jobs whose schedule changed."""
        changed = sorted(n for n in set(intervals) | set(self.intervals) if intervals.get(n) != self.intervals.get(n))
        self._apply(intervals)
        return changed

    def _fired(self, name: str) -> None:  # the scheduler's thread
        with self._lock:
            if name in self.intervals:  # not a job a reschedule has just removed
                self._mark_due_locked(name)

    def _mark_due_locked(self, name: str) -> None:
        if name not in self._due:  # a job still waiting for the run loop is not queued twice
            self._due.append(name)

    def request(self, name: str) -> None:
        """Make a job due now (from any thread)."""
        with self._lock:
            self._mark_due_locked(name)

    def take_due(self) -> list[str]:
        """The jobs due since the last call, oldest first (the run loop's thread)."""
        with self._lock:
            due, self._due = self._due, []
        return due

    def record(self, name: str, outcome: str) -> None:
        self.last[name] = (time.time(), outcome)

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
