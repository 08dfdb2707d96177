"""The daemon (`netad run`): startup -> run loop -> bounded shutdown, for months on end.

Startup builds everything from the config (model, stages, sinks, source) and fails with a
clear error before reading a packet; it restores the last checkpoint (hidden states, open
incidents; for a replay, where it stopped), serves metrics, starts the schedule, and only
then tells systemd READY=1.

The run loop pulls batches from the source and pushes them through the pipeline. Everything
else happens in the gaps between two batches, on this one thread: config reloads, scheduled
jobs (jobs.py: their threads only mark them due), the retraining child's result, systemd
STATUS= and WATCHDOG=1, the metrics snapshot. Sources hand back an empty batch at least every
POLL_S while idle, so the gaps come at least that often. WATCHDOG=1 is sent only while the
pipeline makes progress: batches arrive, a paced replay is waiting for its next packet's
time, or a quiet live link's windows keep closing on the wall clock.

Signal handlers only set flags (uvicorn's lesson). SIGHUP: reload (_reload.py: build, then
swap). SIGTERM/SIGINT: the source stops, in-flight windows are drained, a checkpoint is
written, sinks deliver what they can before `service.shutdown_timeout_s` (the rest stays in
their durable spools), exit 0. A second SIGINT forces an immediate exit; a shutdown that
overruns its deadline by _HARD_EXIT_GRACE_S is cut short the same way.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import structlog
from safetensors import SafetensorError

from detector.alerting.sinks import SinkSet
from detector.capture.flowrecords.zeeklog import ZeekConnLog
from detector.config import Config
from detector.contracts import IncidentEvent, ScoreBatch, WindowBatch, ns_to_iso
from detector.errors import ConfigError, ModelError, NetadError
from detector.logging import configure
from detector.model.bundle import ModelBundle
from detector.model.scorer import StreamingScorer, set_torch_threads
from detector.service import jobs as J
from detector.service._reload import ReloadPlan, build_sinks, plan_reload, retire_sinks, wanted_sinks
from detector.service._sources import ReplaySource, Source, build_source, is_live, source_identity
from detector.service.metrics import Metrics
from detector.service.pipeline import Pipeline
from detector.service.retrain import Retrainer, RetrainResult, WindowRing, verdict
from detector.service.state import StateDirBusyError, load_checkpoint, lock_state_dir, save_checkpoint
from detector.service.systemd import Notifier
from detector.service.training import training_params

log = structlog.get_logger()

CHECKPOINT_DIR = "checkpoint"
_HARD_EXIT_GRACE_S = 5.0  # past shutdown_timeout_s, a shutdown that still hangs is cut short
_SNAPSHOT_INTERVAL_S = 1.0  # how stale the metrics endpoint's view of the counters may be


class _Publisher:
    """Between the pipeline and the sinks: counts events by (action, severity) for metrics,
    and is the one place a reload swaps the SinkSet."""

    def __init__(self, sinks: SinkSet) -> None:
        self.sinks = sinks
        self.counts: Counter[tuple[str, str]] = Counter()

    def publish(self, event: IncidentEvent) -> None:
        self.counts[(event.action, event.severity)] += 1
        self.sinks.publish(event)


def build_scorer(cfg: Config, bundle: ModelBundle) -> StreamingScorer:
    """A scorer as Pipeline builds one (for a model swapped in while running)."""
    return StreamingScorer(bundle, device=cfg.model.device, warmup_windows=cfg.model.warmup_windows,
                           max_entities=cfg.windows.max_entities, entity_idle_s=cfg.windows.entity_idle_s,
                           precision=cfg.model.precision)  # fmt: skip


class Daemon:
    def __init__(self, config_path: str | None, cfg: Config, extra_sinks: list[str] | None = None) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.extra_sinks = list(extra_sinks or [])
        self.notifier = Notifier()
        self.source: Source | None = None
        self.metrics: Metrics | None = None
        self.reloads = {"success": 0, "failure": 0}
        self._stop = False
        self._stop_signal = ""
        self._reload = False
        self._interrupts = 0
        self._snapshot: dict[str, Any] = {}
        self._snapshot_lock = threading.Lock()

    # ---------------------------------------------------------------- signals: flags only
    def _on_stop(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                os.write(2, b"netad: second interrupt, exiting now\n")
                os._exit(130)
        self._stop = True
        self._stop_signal = signal.Signals(signum).name
        if self.source is not None:
            self.source.stop = True

    def _on_hup(self, _signum: int, _frame: object) -> None:
        self._reload = True

    # ---------------------------------------------------------------- lifecycle
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        self._startup()
        try:
            reason = self._loop()
        except BaseException:
            log.exception("daemon_crashed")
            self._abort()
            raise
        return self._shutdown(reason)

    def _startup(self) -> None:
        cfg = self.cfg
        self.started_s = time.monotonic()
        try:
            self._state_lock_fd = lock_state_dir(cfg.state_dir)
        except StateDirBusyError as exc:
            raise ConfigError(f"state_dir: {exc}; give each daemon its own") from None
        checkpoint = self._read_checkpoint()
        base = ModelBundle.load(cfg.model.path)
        self.base_version = base.version
        bundle, self.model_path = self._choose_model(base, checkpoint[2] if checkpoint else {})
        self.previous_model_path: Path | None = None
        set_torch_threads(cfg.model.threads)
        self.jobs = J.JobBoard(J.job_intervals(cfg.service))
        self.retrainer = Retrainer(cfg.state_dir)
        self.publisher = _Publisher(build_sinks(wanted_sinks(cfg, self.extra_sinks), cfg.state_dir / "spool"))
        try:
            self._build(cfg, bundle, checkpoint)
        except BaseException:
            self.publisher.sinks.close(timeout_s=1.0)  # releases the spools' locks
            if self.metrics is not None:
                self.metrics.close()
            raise
        self.jobs.start()
        now = time.monotonic()
        self._last_progress_s = self._last_ping_s = self._last_snapshot_s = now
        self._last_status_s, self._last_status_packets, self._stalled = now, 0, False
        self._refresh_snapshot()
        self.notifier.ready(status=f"{self.source.kind} started, model {bundle.version}")  # type: ignore[union-attr]
        if self.metrics is not None:
            self.metrics.ready = True
        log.info("daemon_started", source=self.source.identity, model=str(self.model_path),  # type: ignore[union-attr]
                 model_version=bundle.version, sinks=[s.name for s in self.publisher.sinks], pid=os.getpid(),
                 jobs=self.jobs.intervals, watchdog_interval_s=self.notifier.watchdog_interval_s)  # fmt: skip

    def _build(self, cfg: Config, bundle: ModelBundle, checkpoint: tuple | None) -> None:
        self.scores_out = None
        if cfg.outputs.scores is not None:
            cfg.outputs.scores.parent.mkdir(parents=True, exist_ok=True)
            # a replay started over rewrites its scores; one resumed, or a live link, adds to them
            resuming = checkpoint is not None or is_live(cfg.source)
            self.scores_out = open(cfg.outputs.scores, "a" if resuming else "w", encoding="utf-8")
        svc = cfg.service
        self.ring = WindowRing(svc.retrain_buffer_windows, int(svc.retrain_buffer_mb * 2**20))
        self.pipeline = Pipeline(cfg, bundle, sinks=[self.publisher], scores_out=self.scores_out, on_scored=self._on_scored,
                                 flow_records=cfg.source.flow_records)  # fmt: skip
        resume_ns = self._restore(checkpoint) if checkpoint else None
        resume_at = checkpoint[2].get("position") if checkpoint and cfg.source.type == "zeek" else None
        self.source = build_source(cfg.source, resume_from_ns=resume_ns, resume_at=resume_at)
        if self._stop:  # a signal while starting: the source did not exist to be told
            self.source.stop = True
        if svc.metrics_address:
            self.metrics = Metrics(self._metrics_stats, stall_after_s=svc.stall_after_s)
            try:
                host, port = self.metrics.serve(svc.metrics_address)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"service.metrics_address: cannot serve on {svc.metrics_address!r}: {exc}") from None
            log.info("metrics_started", address=f"{host}:{port}")

    def _loop(self) -> str:
        """Batches until the source ends or a signal stops it; returns why it ended."""
        assert self.source is not None
        for batch in self.source:
            self.pipeline.push(batch)
            now = time.monotonic()
            if len(batch):
                self._progressed(now)
            else:
                self._idle(now)
            self._between_batches(now)
            if self._stop:
                break
        return f"signal:{self._stop_signal}" if self._stop else "source_ended"

    def _between_batches(self, now: float) -> None:
        if self._reload:
            self._do_reload()
        for name in self.jobs.take_due():
            self._run_job(name)
        result = self.retrainer.poll()
        if result is not None:
            self._on_retrain_result(result)
        if now - self._last_snapshot_s >= _SNAPSHOT_INTERVAL_S:
            self._refresh_snapshot()
            if self.scores_out is not None:
                self.scores_out.flush()  # window scores of a live source show within a second, not per 8 KiB
        if now - self._last_status_s >= self.cfg.service.status_interval_s:
            self._status(now)
        self._watchdog(now)

    def _shutdown(self, reason: str) -> int:
        svc = self.cfg.service
        deadline = time.monotonic() + svc.shutdown_timeout_s
        self.notifier.stopping(status=f"stopping ({reason})")
        hard_stop = threading.Timer(svc.shutdown_timeout_s + _HARD_EXIT_GRACE_S, self._hard_exit)
        hard_stop.daemon = True
        hard_stop.start()
        if self.metrics is not None:
            self.metrics.ready = False
        self.jobs.shutdown()
        self.retrainer.stop()
        windows = self._drain(reason)
        # the checkpoint before the sinks' flush: it is quick and what a restart needs most,
        # while an unreachable sink may use up the whole deadline (its events are spooled)
        try:
            self._checkpoint("shutdown", replay_complete=reason == "source_ended")
        except (OSError, ValueError) as exc:
            log.error("checkpoint_save_failed", reason=str(exc))
        sinks = self.publisher.sinks
        delivered = sinks.flush(timeout_s=max(0.0, deadline - time.monotonic()))
        left = {name: s["backlog"] for name, s in sinks.stats().items() if s["backlog"]}
        sinks.close(timeout_s=max(0.0, deadline - time.monotonic()))
        if self.scores_out is not None:
            self.scores_out.close()
        if self.metrics is not None:
            self.metrics.close()
        hard_stop.cancel()
        elapsed_s = time.monotonic() - self.started_s
        log.info("daemon_stopped", reason=reason, seconds=round(elapsed_s, 2), windows_drained=windows,
                 sinks_drained=delivered, left_in_spool=left, rule_drops=dict(self.pipeline.tracker.dropped),
                 **self.pipeline.stats())  # fmt: skip
        if self.source is not None and self.source.kind == "replay" and self.cfg.outputs.summary:
            self._print_summary(elapsed_s, self.source)
        self.notifier.close()
        return 0

    def _drain(self, reason: str) -> int:
        """Close the windows in flight; returns how many. A live source (or a replay that
        ended) closes them all, the last partial one too. A replay stopped midway closes
        only the windows its watermark has passed: a restart resumes it at the partial
        window's start and so sees that window whole."""
        before = self.pipeline.windows.windows_closed
        watermark_ns = self.pipeline.windows.watermark_ns
        if reason == "source_ended" or (self.source is not None and self.source.kind == "live"):
            self.pipeline.finish()
        elif watermark_ns is not None:
            self.pipeline.advance(watermark_ns + int(round(self.pipeline.windows.lateness_s * 1e9)))
        return self.pipeline.windows.windows_closed - before

    def _hard_exit(self) -> None:  # a timer thread: the run loop is stuck somewhere
        log.error("shutdown_timed_out", timeout_s=self.cfg.service.shutdown_timeout_s)
        os._exit(1)

    def _abort(self) -> None:
        """After a crash: no checkpoint (the state may be half-updated; the last periodic
        one is whole), sinks get a moment, spools keep the rest."""
        self.notifier.stopping(status="crashed")
        self.jobs.shutdown()
        self.retrainer.stop()
        self.publisher.sinks.close(timeout_s=2.0)

    # ---------------------------------------------------------------- progress and systemd
    def _progressed(self, now: float) -> None:
        self._last_progress_s = now
        if self.metrics is not None:
            self.metrics.progressed()
        if self._stalled:
            self._stalled = False
            log.info("pipeline_recovered")

    def _idle(self, now: float) -> None:
        """An empty batch: the source is alive but had nothing. A live link's windows close
        on the wall clock; that they do is the progress. A paced replay is waiting by design."""
        if self.source is None or self.source.kind != "live":
            self._progressed(now)
            return
        wall_ns = time.time_ns()
        self.pipeline.advance(wall_ns)
        window_ns = int(round(self.cfg.windows.bin_s * 1e9)) * self.cfg.windows.bins
        due_end_ns = (wall_ns - int(round(self.pipeline.windows.lateness_s * 1e9))) // window_ns * window_ns
        last = self.pipeline.last_window_end_ns
        if self.pipeline.windows.watermark_ns is None or last is None or last >= due_end_ns:
            self._progressed(now)

    def _watchdog(self, now: float) -> None:
        healthy = now - self._last_progress_s < self.cfg.service.stall_after_s
        if not healthy and not self._stalled:
            self._stalled = True
            log.warning("pipeline_stalled", seconds_without_progress=round(now - self._last_progress_s, 1))
        interval_s = self.notifier.watchdog_interval_s
        if healthy and interval_s is not None and now - self._last_ping_s >= interval_s:
            self.notifier.watchdog()
            self._last_ping_s = now

    def _status(self, now: float) -> None:
        st = self.pipeline.stats()
        pps = (st["packets"] - self._last_status_packets) / max(now - self._last_status_s, 1e-9)
        self._last_status_s, self._last_status_packets = now, st["packets"]
        text = f"{pps:,.0f} pkt/s, {st['entities']:,} entities, {st['incidents_open']:,} open incidents"
        self.notifier.status(text + (" (stalled)" if self._stalled else ""))

    # ---------------------------------------------------------------- metrics
    def _on_scored(self, window: WindowBatch, scores: ScoreBatch, latency_s: float) -> None:
        if self.metrics is not None:
            self.metrics.scoring_latency.observe(latency_s)
        if self.cfg.service.retrain_interval_s > 0:
            self.ring.add(window, scores)

    def _refresh_snapshot(self) -> None:
        """Counters for the metrics endpoint, copied on this thread: the HTTP thread never
        reads pipeline state that the run loop is changing."""
        st: dict[str, int] = dict(self.pipeline.stats())
        if self.source is not None:
            st.update(self.source.stats())
        snap = {
            "pipeline": st,
            "incident_events": dict(self.publisher.counts),
            "reloads": dict(self.reloads),
            "jobs": dict(self.jobs.last),
            "model_version": self.pipeline.bundle.version,
            "rule_drops": dict(self.pipeline.tracker.dropped),
        }
        with self._snapshot_lock:
            self._snapshot = snap
        self._last_snapshot_s = time.monotonic()

    def _metrics_stats(self) -> dict[str, Any]:  # the HTTP thread
        with self._snapshot_lock:
            snap = dict(self._snapshot)
        snap["sinks"] = self.publisher.sinks.stats()  # thread-safe by itself
        return snap

    # ---------------------------------------------------------------- scheduled jobs
    def _run_job(self, name: str) -> None:
        handlers = {J.CHECKPOINT: lambda: self._checkpoint("scheduled"), J.HEARTBEAT: self._heartbeat,
                    J.THRESHOLD_REFRESH: self._refresh_thresholds, J.RETRAIN: self._start_retrain}  # fmt: skip
        try:
            outcome = handlers[name]()
        except Exception as exc:  # a failing job (disk full, a bug) must not stop the capture; it shows in metrics
            log.error("job_failed", job=name, error=repr(exc), exc_info=True)
            outcome = "failed"
        self.jobs.record(name, outcome)
        self._refresh_snapshot()

    def _checkpoint(self, why: str, replay_complete: bool = False) -> str:
        started = time.perf_counter()
        scorer_state = self.pipeline.scorer.state_dict()
        tracker_state = self.pipeline.tracker.state_dict()
        meta = {
            "source": self.source.identity if self.source is not None else {},
            "resume_ns": self.pipeline.last_window_end_ns,
            # a followed conn.log: the file and offset after the last line read (a restart reads on from there)
            "position": self.source.position() if isinstance(self.source, ZeekConnLog) else None,
            "replay_complete": replay_complete,
            "model": {"path": str(self.model_path), "version": self.pipeline.bundle.version, "base_version": self.base_version},
        }
        save_checkpoint(self.cfg.state_dir / CHECKPOINT_DIR, scorer_state, tracker_state, meta)
        log.info("checkpoint_saved", reason=why, entities=sum(len(s["entities"]) for s in scorer_state.values()),
                 open_incidents=sum(1 for e in tracker_state.values() if e["incident"] is not None),
                 window_end=ns_to_iso(meta["resume_ns"]) if meta["resume_ns"] else None,
                 seconds=round(time.perf_counter() - started, 4))  # fmt: skip
        return "ok"

    def _heartbeat(self) -> str:
        sinks = self.publisher.sinks.stats()
        log.info("heartbeat", uptime_s=round(time.monotonic() - self.started_s), model_version=self.pipeline.bundle.version,
                 sink_backlog=sum(int(s["backlog"]) for s in sinks.values()), retrain_buffer_windows=len(self.ring),
                 rule_drops=dict(self.pipeline.tracker.dropped),
                 **{**self.pipeline.stats(), **(self.source.stats() if self.source else {})})  # fmt: skip
        return "ok"

    def _refresh_thresholds(self) -> str:
        thresholds = J.refresh_thresholds(self.pipeline.scorer, self.cfg.model.adapt_thresholds, self.cfg.training.target_false_alarm)
        log.info("thresholds_refreshed", thresholds=thresholds, model_version=self.pipeline.bundle.version)
        return "ok"

    def _start_retrain(self) -> str:
        cfg = self.cfg
        request = {
            "current_model": str(self.model_path),
            "params": asdict(training_params(cfg)),
            "bin_s": cfg.windows.bin_s,
            "bins": cfg.windows.bins,
            "log_level": cfg.logging.level,
            "scorer": {"warmup_windows": cfg.model.warmup_windows, "max_entities": cfg.windows.max_entities,
                       "entity_idle_s": cfg.windows.entity_idle_s},  # fmt: skip
        }
        outcome = self.retrainer.start(self.ring, cfg.service.retrain_min_windows, request)
        if outcome != "started":
            log.info("retrain_skipped", reason=outcome, buffered_windows=len(self.ring))
        return outcome

    def _on_retrain_result(self, result: RetrainResult) -> None:
        if not result.ok:
            log.error("retrain_failed", error=result.error, seconds=result.seconds)
            self.jobs.record(J.RETRAIN, "failed")
            return
        accept, why = verdict(result)
        if accept and result.version == self.pipeline.bundle.version:
            accept, why = False, "the candidate has the running model's weights"
        if accept:
            try:
                bundle = ModelBundle.load(result.path, expected_schema=self.pipeline.windows.schema)
            except ModelError as exc:
                log.error("retrain_failed", error=str(exc))
                self.jobs.record(J.RETRAIN, "failed")
                return
            old, kept = self.pipeline.bundle.version, self._swap_model(bundle, Path(result.path))
            log.info("model_swapped", old_version=old, new_version=bundle.version, states_kept=kept, reason=why, **result.as_log())
            self.retrainer.prune({p for p in (self.model_path, self.previous_model_path) if p is not None})
            self.jobs.record(J.RETRAIN, "swapped")
            self.jobs.request(J.CHECKPOINT)  # a restart must come back with this model
        else:
            log.warning("model_rejected", reason=why, **result.as_log())
            if Path(result.path).resolve() != Path(self.model_path).resolve():
                self.retrainer.discard(result.path)
            self.jobs.record(J.RETRAIN, "rejected")
        self._refresh_snapshot()

    def _swap_model(self, bundle: ModelBundle, path: Path) -> bool:
        """Score with `bundle` from the next window on; True if hidden states were kept
        (same feature schema and state size: the entities' memory carries over)."""
        old = self.pipeline.scorer
        scorer = build_scorer(self.cfg, bundle)
        kept = bundle.schema == old.bundle.schema and bundle.hidden_size == old.bundle.hidden_size
        if kept:
            scorer.load_state_dict(old.state_dict())
        self.pipeline.scorer, self.pipeline.bundle = scorer, bundle
        self.pipeline.tracker.model_version = bundle.version
        self.previous_model_path, self.model_path = self.model_path, Path(path)
        return kept

    # ---------------------------------------------------------------- reload (SIGHUP)
    def _do_reload(self) -> None:
        self._reload = False
        self.notifier.reloading()
        try:
            plan = plan_reload(self.config_path, self.cfg, self.publisher.sinks, self.extra_sinks, self.pipeline.windows.schema)
        except (NetadError, OSError, ValueError) as exc:  # ValueError: e.g. a rule file's odd value
            self.reloads["failure"] += 1
            log.error("config_reload_failed", reason=str(exc), config=self.config_path)
            status = "reload failed, running the previous config"
        else:
            self._apply_reload(plan)
            self.reloads["success"] += 1
            status = "reloaded"
        self.notifier.ready(status=f"{status}; model {self.pipeline.bundle.version}")
        self._refresh_snapshot()

    def _apply_reload(self, plan: ReloadPlan) -> None:
        cfg = plan.cfg
        self.publisher.sinks = plan.sinks
        tracker = self.pipeline.tracker
        tracker.rules = plan.rules
        tracker.min_windows = cfg.incidents.min_windows
        tracker.resolve_after_windows = cfg.incidents.resolve_after_windows
        if plan.bundle is not None:
            self._swap_model(plan.bundle, cfg.model.path)
            self.base_version = plan.bundle.version
        rescheduled = self.jobs.reschedule(J.job_intervals(cfg.service))
        self.ring.resize(cfg.service.retrain_buffer_windows, int(cfg.service.retrain_buffer_mb * 2**20))
        if cfg.service.retrain_interval_s == 0:
            self.ring.clear()  # retraining switched off: its windows are dead weight
        if self.metrics is not None:
            self.metrics.stall_after_s = cfg.service.stall_after_s
        if cfg.logging != self.cfg.logging:
            configure(cfg.logging.level, cfg.logging.format)
        self.cfg = cfg
        retire_sinks(plan.retired)
        last = self.pipeline.last_window_end_ns
        log.info("config_reloaded", config=self.config_path, rules=[str(p) for p in cfg.incidents.rules],
                 sinks=[s.name for s in plan.sinks], jobs_rescheduled=rescheduled, model_version=self.pipeline.bundle.version,
                 restart_required=plan.restart_required, after_window_end=ns_to_iso(last) if last else None,
                 after_window_end_ns=last)  # fmt: skip
        if plan.restart_required:
            log.warning("config_restart_required", keys=plan.restart_required)

    # ---------------------------------------------------------------- checkpoint restore
    def _read_checkpoint(self) -> tuple[dict, dict, dict] | None:
        """The last checkpoint, if it belongs to this source and is worth resuming."""
        directory = self.cfg.state_dir / CHECKPOINT_DIR
        try:
            checkpoint = load_checkpoint(directory)
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
            log.error("checkpoint_load_failed", path=str(directory), reason=repr(exc))
            return None
        if checkpoint is None:
            return None
        meta = checkpoint[2]
        if meta.get("source") != source_identity(self.cfg.source):
            log.info("checkpoint_ignored", reason="written for another source", checkpoint_source=meta.get("source"))
            return None
        if meta.get("replay_complete"):
            log.info("checkpoint_ignored", reason="that replay had ended; it starts over")
            return None
        if self.cfg.source.type == "zeek" and not self.cfg.source.follow:
            # a conn.log is in the order connections ended, not started: no position to resume at
            log.info("checkpoint_ignored", reason="a conn.log read to its end cannot resume midway; it starts over")
            return None
        return checkpoint

    def _choose_model(self, base: ModelBundle, meta: dict) -> tuple[ModelBundle, Path]:
        """The configured model, or the retrained one the checkpoint names, as long as it
        was retrained from the configured one (a newly deployed model.path wins)."""
        m = meta.get("model") or {}
        path = Path(m["path"]) if m.get("path") else None
        models_dir = (self.cfg.state_dir / "models").resolve()
        if path is not None and m.get("base_version") == base.version and path.resolve().parent == models_dir:
            try:
                bundle = ModelBundle.load(path, expected_schema=base.schema)
            except ModelError as exc:
                log.warning("retrained_model_refused", path=str(path), reason=str(exc))
            else:
                log.info("model_restored", path=str(path), version=bundle.version, base_version=base.version)
                return bundle, path
        return base, Path(self.cfg.model.path)

    def _restore(self, checkpoint: tuple[dict, dict, dict]) -> int | None:
        """Hidden states and open incidents back in place; the replay position to resume at."""
        scorer_state, tracker_state, meta = checkpoint
        hidden = self.pipeline.bundle.hidden_size
        if all(entry["h"].shape[-1] == hidden for entry in scorer_state.values()):
            self.pipeline.scorer.load_state_dict(scorer_state)
            entities = sum(len(entry["entities"]) for entry in scorer_state.values())
        else:
            log.warning("checkpoint_states_discarded", reason="another model's state size")
            entities = 0
        self.pipeline.tracker.load_state_dict(tracker_state)
        resume_ns = meta.get("resume_ns") if self.cfg.source.type == "pcap" else None
        if resume_ns is not None:
            self.pipeline.last_window_end_ns = resume_ns
        log.info("checkpoint_restored", entities=entities, open_incidents=self.pipeline.tracker.open_incidents,
                 resume_at=ns_to_iso(resume_ns) if resume_ns else None, written_for_model=(meta.get("model") or {}).get("version"))  # fmt: skip
        return resume_ns

    # ---------------------------------------------------------------- the replay's summary
    def _print_summary(self, elapsed_s: float, source: Source) -> None:
        st = self.pipeline.stats()
        out = sys.stdout
        print("", file=out)
        print("netad summary", file=out)
        if not isinstance(source, ReplaySource):  # flow records (a conn.log)
            print(f"  records      {st['flow_records']:,} flow records ({st['malformed']:,} malformed lines) "
                  f"of {st['packets']:,} packets in {elapsed_s:.1f} s", file=out)  # fmt: skip
            print(f"  late         {st['late_records']:,} records wholly, {st['late_record_starts']:,} in part "
                  f"({st['late_packets']:,} packets) for windows already closed", file=out)  # fmt: skip
        else:
            print(f"  packets      {st['packets']:,} ({st['malformed']:,} malformed, {st['non_ip']:,} non-IP) in {elapsed_s:.1f} s", file=out)
            if source.skipped_packets:
                print(f"  resumed      {source.skipped_packets:,} packets before the checkpoint skipped", file=out)
            if source.capture.damage:
                print(f"  capture      stopped at damage: {source.capture.damage}", file=out)
            print(f"  flows        {st['flows_created']:,} created, {st['flow_evictions']:,} evicted", file=out)
        print(f"  windows      {st['windows_closed']:,} closed, {st['entity_windows']:,} entity-windows scored, "
              f"{st['anomalous_windows']:,} anomalous", file=out)  # fmt: skip
        print(f"  entities     {st['entities']:,} tracked", file=out)
        print(f"  incidents    {st['incidents_opened']:,} opened, {st['incidents_open']:,} still open", file=out)
        for entity, n in self.pipeline.incidents_by_entity.most_common(20):
            print(f"    {entity:<40} {n}", file=out)
        out.flush()
