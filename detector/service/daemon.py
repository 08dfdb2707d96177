"""The daemon (`netad run`): startup -> run loop -> bounded shutdown, for months on end.

Startup builds everything from the config (model, stages, sinks, source) and fails with a
clear error before reading a packet (a ConfigError or ModelError: exit 78, never a traceback);
it restores the last checkpoint (hidden states, open incidents; for a replay, where it
stopped), serves metrics, starts the schedule, and only then tells systemd READY=1. A
checkpoint it cannot use is moved aside with a warning and the daemon starts fresh: a
damaged checkpoint must not keep a sensor down.

The run loop pulls batches from the source and pushes them through the pipeline. Everything
else happens in the gaps between two batches, on this one thread: config reloads, scheduled
jobs (jobs.py: their threads only mark them due), the retraining child's result, systemd
STATUS= and WATCHDOG=1, the metrics snapshot. Sources hand back an empty batch at least every
POLL_S while idle, so the gaps come at least that often. WATCHDOG=1 is sent only while the
pipeline makes progress: batches arrive, a paced replay is waiting for its next packet's
time, or a quiet live link's windows keep closing on the wall clock.

Signals, the state directory's lock, metrics and systemd are the process lifecycle the
Kafka roles share (service.lifecycle); scoring and incidents are the Scoring stage they share
(service.scoring, inside service.pipeline.Pipeline). SIGHUP: reload (_reload.py: build, then
swap; a reload that fails, for whatever reason, leaves the running config, rules, sinks and
model in force and logs why). SIGTERM/SIGINT: the source stops, in-flight windows are drained, a checkpoint is
written, sinks deliver what they can before `service.shutdown_timeout_s` (the rest stays in
their durable spools), exit 0. A second SIGINT forces an immediate exit (130); a shutdown that
overruns its deadline is cut short.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import structlog

from detector.capture.clock import WallClock
from detector.config import Config
from detector.contracts import IncidentEvent, ScoreBatch, WindowBatch, ns_to_iso
from detector.errors import CheckpointError, ModelError, NetadError
from detector.logging import configure
from detector.model.bundle import ModelBundle
from detector.model.scorer import set_torch_threads
from detector.service import jobs as J
from detector.service._reload import ReloadPlan, build_sinks, plan_reload, retire_sinks, wanted_sinks
from detector.service._sources import (
    ReplaySource,
    Source,
    build_source,
    exporters_state,
    is_live,
    reading_point,
    resumable_checkpoint,
    resume_windows,
    watched_from,
)
from detector.service.explain.board import attach_board
from detector.service.lifecycle import Lifecycle
from detector.service.pipeline import Pipeline, time_lines
from detector.service.retrain import Retrainer, RetrainResult, WindowRing, verdict
from detector.service.scoring import Scoring, check_device, close_scores, open_scores
from detector.service.state import CHECKPOINT_DIR, Checkpoint, CheckpointMeta, ModelRef, save_checkpoint, set_aside
from detector.service.training import training_params

log = structlog.get_logger()

_SCORES_FLUSH_S = 1.0
_SOURCE_DRAIN_S = 2.0  # after a stop signal, the longest a source may go on handing over batches


class Daemon:
    def __init__(self, config_path: str | None, cfg: Config, extra_sinks: list[str] | None = None) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.extra_sinks = list(extra_sinks or [])
        self.lifecycle = Lifecycle(cfg.service, "daemon")
        self.lifecycle.on_stop = self._stop_source
        self.source: Source | None = None
        self.reloads = {"success": 0, "failure": 0}
        self._last_status_packets = 0
        self._next_flush_s = 0.0

    def _stop_source(self) -> None:  # a signal handler
        if self.source is not None:
            self.source.stop = True

    # ---------------------------------------------------------------- lifecycle
    def run(self) -> int:
        self.lifecycle.install_signals()
        self._startup()
        try:
            reason = self._loop()
        except BaseException:
            log.exception("daemon_crashed")
            self._abort()
            raise
        return self._shutdown(reason)

    def _startup(self) -> None:
        cfg, lc = self.cfg, self.lifecycle
        check_device(cfg.model.device)
        lc.lock_state_dir(cfg.state_dir)
        checkpoint = resumable_checkpoint(cfg.state_dir, cfg.source)
        base = ModelBundle.load(cfg.model.path, classes=cfg.entity_classes)
        self.base_version = base.version
        bundle, self.model_path = self._choose_model(base, checkpoint.meta if checkpoint else CheckpointMeta())
        self.previous_model_path: Path | None = None
        set_torch_threads(cfg.model.threads)
        self.jobs = J.JobBoard(J.job_intervals(cfg.service))
        self.wall = WallClock(on_step_back=self.jobs.restart_schedule)  # read between batches, and for a live source's
        self.retrainer = Retrainer(cfg.state_dir)
        self.sinks = build_sinks(wanted_sinks(cfg, self.extra_sinks), cfg.state_dir / "spool", cfg.outputs.scores)
        try:
            self._build(cfg, bundle, checkpoint)
        except BaseException:
            self.sinks.close(timeout_s=1.0)  # releases the spools' locks
            lc.close()
            raise
        self.jobs.start()
        now = time.monotonic()
        lc.progressed(now)
        source = self.source
        assert source is not None  # _build made it
        lc.ready(status=f"{source.kind} started, model {bundle.version}")
        log.info("daemon_started", source=source.identity, watched_from_ns=self.watched_from_ns, model=str(self.model_path),
                 model_version=bundle.version, sinks=[s.name for s in self.sinks], pid=os.getpid(),
                 jobs=self.jobs.intervals, watchdog_interval_s=lc.notifier.watchdog_interval_s)

    @property
    def scoring(self) -> Scoring:  # the stage inside the pipeline
        return self.pipeline.scoring

    def _build(self, cfg: Config, bundle: ModelBundle, checkpoint: Checkpoint | None) -> None:
        self.scores_out = None
        self._incidents_unsaved = False  # incident events since the last checkpoint
        svc = cfg.service
        self.ring = WindowRing(svc.retrain_buffer_windows, int(svc.retrain_buffer_mb * 2**20))
        self._new_pipeline(cfg, bundle, resuming=checkpoint is not None)
        if checkpoint is not None:
            try:
                self._restore(checkpoint)
            except (CheckpointError, KeyError, TypeError, ValueError, RuntimeError) as exc:
                # half of it may be in place already: the stages are built again, empty
                set_aside(checkpoint.path, f"cannot be restored: {exc!r}")
                checkpoint = None
                self._new_pipeline(cfg, bundle, resuming=False)
        self.source = build_source(cfg.source, resume=checkpoint)
        self.watched_from_ns = watched_from(self.source, self.wall.now_ns())
        if self.watched_from_ns is not None:
            self.pipeline.windows.watch_from(self.watched_from_ns)  # not a first window it was not watched from the start of
        if self.lifecycle.stop:  # a signal while starting: the source did not exist to be told
            self.source.stop = True
        self.board = attach_board(cfg, self.pipeline.scoring, self.lifecycle, live=is_live(cfg.source))  # the incident page's records
        self.lifecycle.serve_metrics(self._snapshot, live=lambda: {"sinks": self.sinks.stats()})  # the sinks' stats are thread-safe

    def _new_pipeline(self, cfg: Config, bundle: ModelBundle, resuming: bool) -> None:
        """The stages after the source, and the window-scores file they write to."""
        close_scores(self.scores_out)
        # a replay started over rewrites its scores; one resumed, or a live link, adds to them
        self.scores_out = open_scores(cfg, self.config_path, append=resuming or is_live(cfg.source))
        self.pipeline = Pipeline(cfg, bundle, sinks=[self.sinks], scores_out=self.scores_out, on_scored=self._on_scored,
                                 flow_records=cfg.source.flow_records, live=is_live(cfg.source), wall=self.wall)
        self.pipeline.scoring.watchers.append(self._on_incident_events)

    def _on_incident_events(self, _window: WindowBatch, _scores: ScoreBatch, events: list[IncidentEvent]) -> None:
        """The scoring thread: a window that told the sinks of an incident asks for a checkpoint
        at once, so that a restart after a crash (SIGKILL, the OOM killer, a power cut) comes
        back with every incident the SIEM has heard of. Until the next periodic checkpoint (a
        minute by default), a live link's restart forgot it: the SIEM kept an incident that
        was never updated or resolved, and the same behaviour opened a second one."""
        if events:
            self._incidents_unsaved = True
            self.jobs.request(J.CHECKPOINT)

    def _loop(self) -> str:
        """Batches until the source ends or a signal stops it; returns why it ended.

        A stopped source ends its iteration within its poll interval (every source honours
        `stop`), handing over what it still holds first: capture workers' last batches (the
        packets of the last 0.2 s or more) would be lost by leaving at once. A source that
        does not end within _SOURCE_DRAIN_S of the signal is left."""
        assert self.source is not None
        stopped_at: float | None = None
        for batch in self.source:
            self.pipeline.push(batch)
            now = time.monotonic()
            if len(batch):
                self._progressed(now)
            else:
                self._idle(now)
            self._between_batches(now)
            if self.lifecycle.stop:
                stopped_at = now if stopped_at is None else stopped_at
                if now - stopped_at > _SOURCE_DRAIN_S:
                    break
        return f"signal:{self.lifecycle.stop_signal}" if self.lifecycle.stop else "source_ended"

    def _between_batches(self, now: float) -> None:
        self.wall.now_ns()  # a step back of the clock reschedules the jobs, whatever the source
        reload, due, result = self.lifecycle.take_reload(), self.jobs.take_due(), self.retrainer.poll()
        if reload or due or result is not None:
            self.pipeline.settle()  # what follows reads or changes the Scoring stage's state
        if reload:
            self._do_reload()
        for name in due:
            self._run_job(name)
        if result is not None:
            self._on_retrain_result(result)
        if self.scores_out is not None and now >= self._next_flush_s:
            # window scores of a live source show within a second, not per 8 KiB
            self.pipeline.after_scored(self.scores_out.flush)
            self._next_flush_s = now + _SCORES_FLUSH_S
        self.lifecycle.tick(now, self._status)

    def _shutdown(self, reason: str) -> int:
        svc = self.cfg.service
        deadline = time.monotonic() + svc.shutdown_timeout_s
        self.lifecycle.stopping(reason)
        self.jobs.shutdown()
        self.retrainer.stop()
        windows = self._drain(reason)
        # the checkpoint before the sinks' flush: it is quick and what a restart needs most,
        # while an unreachable sink may use up the whole deadline (its events are spooled)
        try:
            self._checkpoint("shutdown", replay_complete=reason == "source_ended")
        except (OSError, ValueError) as exc:
            log.error("checkpoint_save_failed", reason=str(exc))
        sinks = self.sinks
        delivered = sinks.flush(timeout_s=max(0.0, deadline - time.monotonic()))
        left = {name: s["backlog"] for name, s in sinks.stats().items() if s["backlog"]}
        sinks.close(timeout_s=max(0.0, deadline - time.monotonic()))
        close_scores(self.scores_out)
        self.scores_out = None
        elapsed_s = self.lifecycle.uptime_s
        log.info("daemon_stopped", reason=reason, seconds=round(elapsed_s, 2), windows_drained=windows,
                 sinks_drained=delivered, left_in_spool=left, rule_drops=dict(self.scoring.tracker.dropped),
                 **self.pipeline.stats())
        if self.source is not None and self.source.kind == "replay" and self.cfg.outputs.summary:
            self._print_summary(elapsed_s, self.source)
        self.lifecycle.close()
        return 0

    def _drain(self, reason: str) -> int:
        """Close the windows in flight; returns how many. A replay that ended closes them all
        (a capture's but a last one it ended inside: WindowStages.flush); a live link those
        it was watched through (a last one it stopped inside is not scored: its empty tail
        would read as the link falling quiet).
        A replay stopped midway closes only the windows its watermark has passed: a restart
        resumes it at the partial window's start and so sees that window whole. A followed
        conn.log closes none: those due closed on the wall clock, and a restart reads the
        records of the others again (from its reading_point) and builds them whole."""
        before = self.pipeline.windows.windows_closed
        passed_ns = self.pipeline.windows.passed_ns
        rereads = self.source is not None and self.source.rereads
        if reason == "source_ended":
            self.pipeline.finish()
        elif self.source is not None and self.source.kind == "live" and not rereads:
            self.pipeline.stop()  # not a last window the link was not watched to the end of
        elif passed_ns is not None and not rereads:
            self.pipeline.advance(passed_ns)
        self.pipeline.settle()
        return self.pipeline.windows.windows_closed - before

    def _abort(self) -> None:
        """After a crash: no checkpoint (the state may be half-updated; the last periodic
        one is whole), sinks get a moment, spools keep the rest."""
        self.lifecycle.crashed()
        self.jobs.shutdown()
        self.retrainer.stop()
        self.sinks.close(timeout_s=2.0)

    # ---------------------------------------------------------------- progress and systemd
    def _progressed(self, now: float) -> None:
        self.lifecycle.progressed(now)

    def _idle(self, now: float) -> None:
        """An empty batch: the source is alive but had nothing. A live link's windows close
        on the wall clock; that they do is the progress. A paced replay is waiting by design."""
        if self.source is None or self.source.kind != "live":
            self._progressed(now)
            return
        wall_ns = self.pipeline.wall.now_ns()
        self.pipeline.advance(wall_ns)
        window_ns = int(round(self.cfg.windows.bin_s * 1e9)) * self.cfg.windows.bins
        due_end_ns = (wall_ns - int(round(self.pipeline.windows.lateness_s * 1e9))) // window_ns * window_ns
        last = self.pipeline.last_window_end_ns
        if self.pipeline.windows.watermark_ns is None or last is None or last >= due_end_ns:
            self._progressed(now)

    def _status(self, interval_s: float) -> str:
        st = self.pipeline.stats()
        pps = (st["packets"] - self._last_status_packets) / interval_s
        self._last_status_packets = st["packets"]
        return f"{pps:,.0f} pkt/s, {st['entities']:,} entities, {st['incidents_open']:,} open incidents"

    # ---------------------------------------------------------------- metrics
    def _on_scored(self, window: WindowBatch, scores: ScoreBatch, latency_s: float) -> None:
        if self.lifecycle.metrics is not None:
            self.lifecycle.metrics.scoring_latency.observe(latency_s)
        if self.cfg.service.retrain_interval_s > 0:
            self.ring.add(window, scores)

    def _snapshot(self) -> dict[str, Any]:
        """Counters for the metrics endpoint, copied on the run loop's thread (Lifecycle.refresh)."""
        st: dict[str, int] = dict(self.pipeline.stats())
        if self.source is not None:
            st.update(self.source.stats())
        return {
            "pipeline": st,
            "workers": {"capture": self.source.worker_stats() if hasattr(self.source, "worker_stats") else [],
                        "flows": self.pipeline.stages.worker_stats()},
            "incident_events": dict(self.scoring.events),
            "reloads": dict(self.reloads),
            "jobs": dict(self.jobs.last),
            "model_version": self.scoring.bundle.version,
            "rule_drops": dict(self.scoring.tracker.dropped),
        }

    # ---------------------------------------------------------------- scheduled jobs
    def _run_job(self, name: str) -> None:
        handlers = {J.CHECKPOINT: lambda: self._checkpoint("incident_events" if self._incidents_unsaved else "scheduled"),
                    J.HEARTBEAT: self._heartbeat,
                    J.THRESHOLD_REFRESH: self._refresh_thresholds, J.RETRAIN: self._start_retrain}
        try:
            outcome = handlers[name]()
        except OSError as exc:  # a full disk, a state directory gone: the operator's to mend, said without a traceback
            log.error("job_failed", job=name, error=repr(exc))
            outcome = "failed"
        except Exception as exc:  # a bug: it must not stop the capture either; it shows in metrics
            log.error("job_failed", job=name, error=repr(exc), exc_info=True)
            outcome = "failed"
        self.jobs.record(name, outcome)
        self.lifecycle.refresh(force=True)

    def _checkpoint(self, why: str, replay_complete: bool = False) -> str:
        started = time.perf_counter()
        self._incidents_unsaved = False  # what follows saves them (or says it could not)
        # a followed conn.log: the point before the records of the windows not yet scored (a
        # restart reads on from there and builds those windows whole)
        position, long_connections = reading_point(self.source, self.pipeline.last_window_end_ns)
        meta = CheckpointMeta(
            source=self.source.identity if self.source is not None else {},
            resume_ns=self.pipeline.last_window_end_ns,
            position=position,
            exporters=exporters_state(self.source),
            replay_complete=replay_complete,
            model=ModelRef(str(self.model_path), self.scoring.bundle.version, self.base_version),
        )
        checkpoint = Checkpoint(self.scoring.entity_states(), self.scoring.tracker.state_dict(), meta,
                                history=self.pipeline.windows.history.state_dict(), long_connections=long_connections)
        save_checkpoint(self.cfg.state_dir / CHECKPOINT_DIR, checkpoint)
        log.info("checkpoint_saved", reason=why, entities=checkpoint.entities, open_incidents=checkpoint.open_incidents,
                 window_end=ns_to_iso(meta.resume_ns) if meta.resume_ns else None,
                 seconds=round(time.perf_counter() - started, 4))
        return "ok"

    def _heartbeat(self) -> str:
        self.sinks.write_held()
        sinks = self.sinks.stats()
        log.info("heartbeat", uptime_s=round(self.lifecycle.uptime_s), model_version=self.scoring.bundle.version,
                 sink_backlog=sum(int(s["backlog"]) for s in sinks.values()), retrain_buffer_windows=len(self.ring),
                 rule_drops=dict(self.scoring.tracker.dropped),
                 **{**self.pipeline.stats(), **(self.source.stats() if self.source else {})})
        return "ok"

    def _refresh_thresholds(self) -> str:
        thresholds = J.refresh_thresholds(self.scoring.scorer, self.cfg.model.adapt_thresholds, self.cfg.training.target_false_alarm)
        log.info("thresholds_refreshed", thresholds=thresholds, model_version=self.scoring.bundle.version)
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
                       "entity_idle_s": cfg.windows.entity_idle_s},
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
        if accept and result.version == self.scoring.bundle.version:
            accept, why = False, "the candidate has the running model's weights"
        if accept:
            try:
                bundle = ModelBundle.load(result.path, expected_schema=self.pipeline.windows.schema, classes=self.cfg.entity_classes)
            except ModelError as exc:
                log.error("retrain_failed", error=str(exc))
                self.jobs.record(J.RETRAIN, "failed")
                return
            old, kept = self.scoring.bundle.version, self._swap_model(bundle, Path(result.path))
            log.info("model_swapped", old_version=old, new_version=bundle.version, states_kept=kept, reason=why, **result.as_log())
            self.retrainer.prune({p for p in (self.model_path, self.previous_model_path) if p is not None})
            self.jobs.record(J.RETRAIN, "swapped")
            self.jobs.request(J.CHECKPOINT)  # a restart must come back with this model
        else:
            log.warning("model_rejected", reason=why, **result.as_log())
            if Path(result.path).resolve() != Path(self.model_path).resolve():
                self.retrainer.discard(result.path)
            self.jobs.record(J.RETRAIN, "rejected")
        self.lifecycle.refresh(force=True)

    def _swap_model(self, bundle: ModelBundle, path: Path) -> bool:
        """Score with `bundle` from the next window on (Scoring.swap_model); True if hidden states were kept."""
        kept = self.scoring.swap_model(bundle)
        self.previous_model_path, self.model_path = self.model_path, Path(path)
        return kept

    # ---------------------------------------------------------------- reload (SIGHUP)
    def _do_reload(self) -> None:
        self.lifecycle.reloading()
        status = "reload failed, running the previous config"
        try:
            plan = plan_reload(self.config_path, self.cfg, self.sinks, self.extra_sinks, self.pipeline.windows.schema)
        except (NetadError, OSError, ValueError) as exc:  # ValueError: e.g. a rule file's odd value
            self._reload_failed(str(exc))
        except Exception as exc:  # a reload must never take the daemon down: it goes on as it ran, and says why
            self._reload_failed(f"unexpected {type(exc).__name__}: {exc}", exc_info=True)
        else:
            try:
                self._apply_reload(plan)
            except NetadError as exc:  # the model swap, the first step: nothing else has changed
                self._discard(plan)
                self._reload_failed(str(exc))
            except Exception as exc:  # a bug past the swap: the daemon goes on, with what was put in force so far
                self._reload_failed(f"unexpected {type(exc).__name__} while applying it: {exc}", exc_info=True)
            else:
                self.reloads["success"] += 1
                status = "reloaded"
        self.lifecycle.ready(status=f"{status}; model {self.scoring.bundle.version}")

    def _reload_failed(self, reason: str, exc_info: bool = False) -> None:
        self.reloads["failure"] += 1
        log.error("config_reload_failed", reason=reason, config=self.config_path, model_version=self.scoring.bundle.version,
                  exc_info=exc_info)

    def _discard(self, plan: ReloadPlan) -> None:
        """A plan that could not be put in force: the sinks it built for it are closed (those
        it kept are the running ones)."""
        running = set(map(id, self.sinks))
        for sink in plan.sinks:
            if id(sink) not in running:
                sink.close(timeout_s=0.0)

    def _apply_reload(self, plan: ReloadPlan) -> None:
        """Put a plan in force. The model goes first: it is the one step that could still
        fail (ModelError), and then nothing else has changed."""
        cfg = plan.cfg
        if plan.bundle is not None:
            try:
                self._swap_model(plan.bundle, cfg.model.path)
            except (RuntimeError, ValueError) as exc:
                raise ModelError(f"{cfg.model.path}: cannot score with it: {exc!r}") from None
            self.base_version = plan.bundle.version
        self.sinks = plan.sinks
        self.scoring.sinks = [plan.sinks]
        incidents = self.scoring.apply(cfg.incidents, plan.rules)
        rescheduled = self.jobs.reschedule(J.job_intervals(cfg.service))
        self.ring.resize(cfg.service.retrain_buffer_windows, int(cfg.service.retrain_buffer_mb * 2**20))
        if cfg.service.retrain_interval_s == 0:
            self.ring.clear()  # retraining switched off: its windows are dead weight
        self.lifecycle.reconfigure(cfg.service)
        if cfg.logging != self.cfg.logging:
            configure(cfg.logging.level, cfg.logging.format)
        self.cfg = cfg
        retire_sinks(plan.retired)
        last = self.pipeline.last_window_end_ns
        log.info("config_reloaded", config=self.config_path, rules=[str(p) for p in cfg.incidents.rules], incidents=incidents,
                 sinks=[s.name for s in plan.sinks], jobs_rescheduled=rescheduled, model_version=self.scoring.bundle.version,
                 restart_required=plan.restart_required, after_window_end=ns_to_iso(last) if last else None,
                 after_window_end_ns=last)
        if plan.restart_required:
            log.warning("config_restart_required", keys=plan.restart_required)

    # ---------------------------------------------------------------- checkpoint restore
    def _choose_model(self, base: ModelBundle, meta: CheckpointMeta) -> tuple[ModelBundle, Path]:
        """The configured model, or the retrained one the checkpoint names, as long as it
        was retrained from the configured one (a newly deployed model.path wins)."""
        path = Path(meta.model.path) if meta.model.path else None
        models_dir = (self.cfg.state_dir / "models").resolve()
        if path is not None and meta.model.base_version == base.version and path.resolve().parent == models_dir:
            try:
                bundle = ModelBundle.load(path, expected_schema=base.schema, classes=self.cfg.entity_classes)
            except ModelError as exc:
                log.warning("retrained_model_refused", path=str(path), reason=str(exc))
            else:
                log.info("model_restored", path=str(path), version=bundle.version, base_version=base.version)
                return bundle, path
        return base, Path(self.cfg.model.path)

    def _restore(self, checkpoint: Checkpoint) -> None:
        """Hidden states, open incidents and the peer history back in place (the source
        resumes from the checkpoint as build_source opens it)."""
        scoring, meta = self.scoring, checkpoint.meta
        sizes = {s.hidden_size for s in checkpoint.states.values()}
        if meta.model.version == scoring.bundle.version and sizes - {scoring.bundle.state_size}:
            raise CheckpointError(f"hidden states of size {sorted(sizes)}, but the model {meta.model.version} "
                                  f"they were written with has {scoring.bundle.state_size}")
        if sizes <= {scoring.bundle.state_size}:
            scoring.load_entity_states(checkpoint.states)
            entities = checkpoint.entities
        else:
            log.warning("checkpoint_states_discarded", reason="another model's state size")
            entities = 0
        scoring.tracker.load_state_dict(checkpoint.incidents)
        history = self.pipeline.windows.history
        if checkpoint.history is not None:
            history.load_state_dict(checkpoint.history)  # what each entity knows of its peers: not 1 h of warm-up again
        rereads = resume_windows(self.pipeline.windows, self.cfg.source, checkpoint)
        resume_ns = meta.resume_ns if self.cfg.source.type == "pcap" or rereads else None
        if resume_ns is not None:
            scoring.last_window_end_ns = resume_ns
        log.info("checkpoint_restored", entities=entities, open_incidents=scoring.tracker.open_incidents, history_rows=history.rows,
                 resume_at=ns_to_iso(resume_ns) if resume_ns else None, written_for_model=meta.model.version)

    # ---------------------------------------------------------------- the replay's summary
    def _print_summary(self, elapsed_s: float, source: Source) -> None:
        st = self.pipeline.stats()
        out = sys.stdout
        print("", file=out)
        print("netad summary", file=out)
        if not isinstance(source, ReplaySource):  # flow records (a conn.log)
            print(f"  records      {st['flow_records']:,} flow records ({st['malformed']:,} malformed lines) "
                  f"of {st['packets']:,} packets in {elapsed_s:.1f} s", file=out)
            print(f"  late         {st['late_records']:,} records wholly, {st['late_record_starts']:,} in part "
                  f"({st['late_packets']:,} packets) for windows already closed", file=out)
        else:
            print(f"  packets      {st['packets']:,} ({st['malformed']:,} malformed, {st['non_ip']:,} non-IP) in {elapsed_s:.1f} s", file=out)
            if source.skipped_packets:
                print(f"  resumed      {source.skipped_packets:,} packets before the checkpoint skipped", file=out)
            if source.capture.damage:
                print(f"  capture      stopped at damage: {source.capture.damage}", file=out)
            print(f"  flows        {st['flows_created']:,} created, {st['flow_evictions']:,} evicted", file=out)
        print(f"  windows      {st['windows_closed']:,} closed, {st['entity_windows']:,} entity-windows scored, "
              f"{st['anomalous_windows']:,} anomalous", file=out)
        for line in time_lines(st):
            print(f"  {line}", file=out)
        print(f"  entities     {st['entities']:,} tracked", file=out)
        print(f"  incidents    {st['incidents_opened']:,} opened, {st['incidents_open']:,} still open", file=out)
        for entity, n in self.scoring.opened_by_entity.most_common(20):
            print(f"    {entity:<40} {n}", file=out)
        out.flush()
