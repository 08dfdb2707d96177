"""The Kafka sensor role: capture -> flows -> windows -> one record per entity window on the windows topic.

Where it stands: the capture half of the pipeline (service.pipeline's window stages) with
the Kafka producer where the scorer would be; the scorer role (kafka.scorer) takes it from
there. It runs under the same process lifecycle as the daemon (service.lifecycle): signals,
a second SIGINT's exit, the hard-exit timer, metrics and systemd notify. A sensor has nothing
it can change while running: SIGHUP is answered with `config_reload_ignored`.

What a restart must not forget is checkpointed under `state_dir` as the daemon's is
(service.state; the sensor holds the directory's lock): each entity's peer history, where
a replay stood (the end of the last window published) or where a followed conn.log is read
again from (before the records of the windows not yet published: a stop leaves those open,
and the restart builds them whole), with what was counted of its long connections there. Every `service.checkpoint_interval_s` and
at shutdown. Without it a restarted sensor began again from the model bundle's history
(every peer met since training new again) and read a followed conn.log from its top, or,
with `from_end`, lost what Zeek wrote while it was down.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from detector.capture.clock import WallClock
from detector.config import Config, home_net_change
from detector.contracts import ENTITY_GLOBAL, WindowBatch, ns_to_iso
from detector.errors import ModelError
from detector.model.meta import carried_history, trained_home_net
from detector.service._sources import Source, build_source, exporters_state, reading_point, resumable_checkpoint, resume_windows, watched_from
from detector.service.kafka import check_topics, client_config
from detector.service.lifecycle import Lifecycle
from detector.service.pipeline import WindowStages, build_windowing, observer_of
from detector.service.state import CHECKPOINT_DIR, Checkpoint, CheckpointMeta, save_checkpoint, set_aside
from detector.service.wire import WindowRecord, encode_window

log = structlog.get_logger()

_FAILURE_LOG_S = 60.0  # windows the broker never took: said at most this often, with the count
_QUEUE_WAIT_S = 1.0  # a window's records wait this long at most, in all, for room in librdkafka's full queue
_ACKED_S = 1.0  # a checkpoint waits this long at most for the broker to acknowledge the windows before it


class WindowPublisher:
    """Closed WindowBatches -> one record per entity on the windows topic."""

    def __init__(self, cfg: Config) -> None:
        from confluent_kafka import Producer

        self.cfg = cfg
        self.topic = cfg.kafka.windows_topic
        self.observer = observer_of(cfg)
        self.home_net = tuple(cfg.home_net)  # in every record: a scorer checks it against its model's
        self.producer = Producer(client_config(cfg.kafka, {"linger.ms": 20, "compression.type": "lz4"},
                                               {"enable.idempotence": True, "on_delivery": self._delivered}))
        check_topics(self.producer, cfg.kafka)
        self.published = 0
        self.failed = 0
        self.bytes = 0
        self._failure_said_at = -_FAILURE_LOG_S
        self._failures_said = 0

    def _delivered(self, err: Any, _msg: Any) -> None:
        """librdkafka's report on a record (from poll). A broker away for longer than
        message.timeout.ms fails every window queued meanwhile: said once a minute with the
        count, not once per window (thousands a minute on a large network)."""
        if err is not None:
            self._not_delivered(str(err))

    def _not_delivered(self, error: str) -> None:
        self.failed += 1
        now = time.monotonic()
        if now - self._failure_said_at >= _FAILURE_LOG_S:
            log.error("kafka_windows_not_delivered", windows=self.failed - self._failures_said, total=self.failed,
                      error=error)
            self._failure_said_at, self._failures_said = now, self.failed

    def publish(self, wb: WindowBatch) -> None:
        schema = wb.schema
        deadline = time.monotonic() + _QUEUE_WAIT_S  # for the whole window's records
        for i, entity in enumerate(wb.entities):
            evidence = wb.evidence.get(entity)
            if evidence is not None and not (evidence.top_peers or evidence.top_ports or evidence.top_flows):
                evidence = None
            rec = WindowRecord(self.observer["name"], self.observer["hostname"], self.observer["interface"], entity,
                               wb.entity_classes[i], schema.name, schema.version, wb.window_start_ns, wb.window_end_ns,
                               wb.features[i], evidence, wb.link_hosts if wb.entity_classes[i] == ENTITY_GLOBAL else None,
                               wb.requested_by.get(entity, ""), self.home_net)
            value = encode_window(rec)
            if not self._produce(rec.key, value, deadline):
                deadline = 0.0  # the queue stayed full: the rest of this window is dropped without waiting
                continue
            self.published += 1
            self.bytes += len(value)
        self.producer.poll(0)

    def _produce(self, key: bytes, value: bytes, deadline: float) -> bool:
        """Queue one record. A full local queue (the broker slower than the link, or away for
        long enough that librdkafka's queue filled) is waited on until `deadline` (a window's
        records share _QUEUE_WAIT_S), the broker's acknowledgements served meanwhile; past it
        the record is dropped, counted and said with the others the broker never took. Before,
        the sensor waited for as long as the broker was away: no capture, no heartbeat for
        systemd's watchdog, no SIGTERM."""
        while True:
            try:
                self.producer.produce(self.topic, value, key)
                return True
            except BufferError:
                if time.monotonic() >= deadline:
                    self._not_delivered("the local queue is full (librdkafka's queue.buffering.max.messages)")
                    return False
                self.producer.poll(0.1)

    def flush(self, timeout_s: float) -> int:
        """Wait for the broker's acknowledgements; returns how many are still unacknowledged."""
        return self.producer.flush(timeout_s)


class SensorCheckpoint:
    """The sensor's checkpoint (see the module's docstring): the daemon's form, with no
    hidden states or incidents (the scorers keep those)."""

    def __init__(self, cfg: Config, stages: WindowStages) -> None:
        self.directory = cfg.state_dir / CHECKPOINT_DIR
        self.interval_s = cfg.service.checkpoint_interval_s
        self.stages = stages
        self.source_cfg = cfg.source
        self.last_window_end_ns: int | None = None  # of the windows published: where a replay resumes
        self._due = time.monotonic() + self.interval_s

    def published(self, wb: WindowBatch) -> None:
        self.last_window_end_ns = max(self.last_window_end_ns or wb.window_end_ns, wb.window_end_ns)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Where the last one stood (its peer history is in the stages: _windowing; the
        source resumes as build_source opens it; a followed conn.log from a point before the
        windows it left open: those before stay closed, resume_windows)."""
        resume_ns = self.last_window_end_ns = checkpoint.meta.resume_ns
        resume_windows(self.stages.windows, self.source_cfg, checkpoint)
        log.info("checkpoint_restored", history_rows=self.stages.windows.history.rows,
                 resume_at=ns_to_iso(resume_ns) if resume_ns else None, position=checkpoint.meta.position)

    def due(self, now: float) -> bool:
        return now >= self._due

    def save(self, source: Source, publisher: WindowPublisher, why: str, flush_s: float = _ACKED_S,
             replay_complete: bool = False) -> None:
        """Between batches (the reading's position and the windows agree there), once the
        broker has acknowledged every window published (within `flush_s`): a checkpoint past
        a window the broker then lost (a SIGKILL, the broker away) would have the restart skip
        it. When some are not acknowledged, the last checkpoint stays (a restart publishes
        again from there: a scorer skips what it already scored); a replay's too once the
        broker refused or dropped one of its windows (`failed`): a restart publishes it again,
        where a live link's could not be read again. A failure (a full disk) is said, and the
        sensor goes on: the next one may fit."""
        started = time.perf_counter()
        self._due = time.monotonic() + self.interval_s
        waiting = publisher.flush(flush_s)
        lost = publisher.failed if source.kind == "replay" else 0
        if waiting or lost:
            log.warning("checkpoint_deferred", reason=why, windows_not_acknowledged=waiting, windows_not_delivered=lost,
                        consequence="a restart would publish again from the last checkpoint")
            return
        position, long_connections = reading_point(source, self.last_window_end_ns)
        meta = CheckpointMeta(source=source.identity, resume_ns=self.last_window_end_ns, position=position,
                              exporters=exporters_state(source),
                              replay_complete=replay_complete)
        try:
            save_checkpoint(self.directory, Checkpoint({}, {}, meta, history=self.stages.windows.history.state_dict(),
                                                       long_connections=long_connections))
        except (OSError, ValueError) as exc:
            log.error("checkpoint_save_failed", reason=why, error=repr(exc))
            return
        log.info("checkpoint_saved", reason=why, history_rows=self.stages.windows.history.rows,
                 seconds=round(time.perf_counter() - started, 4))


def _windowing(cfg: Config, resume: Checkpoint | None) -> tuple[WindowStages, Checkpoint | None]:
    """The window stages, with the peer history of the last checkpoint (a restart's own), or
    else the model bundle's: the windows the scorers' model would see from the daemon, its
    training span's history carried in. A checkpoint whose history cannot be put back is
    moved aside, and the sensor starts fresh (the checkpoint returned is then None)."""
    if resume is not None and resume.history is not None:
        stages = build_windowing(cfg, cfg.source.flow_records)
        try:
            stages.windows.history.load_state_dict(resume.history)
        except (KeyError, TypeError, ValueError) as exc:
            stages.close()
            set_aside(resume.path, f"cannot be restored: {exc!r}")
            resume = None
        else:
            log.info("sensor_history", carried_from=None, from_checkpoint=True, rows=stages.windows.history.rows)
            return stages, resume
    carried = carried_history(cfg.model.path)
    log.info("sensor_history", carried_from=str(cfg.model.path) if carried is not None else None, from_checkpoint=False,
             peers=carried.rows("peers") if carried is not None else 0)
    return build_windowing(cfg, cfg.source.flow_records, carried=carried), resume


def run_sensor(cfg: Config) -> int:
    change = home_net_change(trained_home_net(cfg.model.path), cfg.home_net)
    if change:  # the scorers' model would read this sensor's windows against other networks
        raise ModelError(f"{cfg.model.path}: {change}")
    lc = Lifecycle(cfg.service, "sensor")
    lc.lock_state_dir(cfg.state_dir)
    lc.install_signals()
    publisher = WindowPublisher(cfg)
    stages, resume = _windowing(cfg, resumable_checkpoint(cfg.state_dir, cfg.source))
    flows, windows = stages.flows, stages.windows
    checkpoint = SensorCheckpoint(cfg, stages)
    if resume is not None:
        checkpoint.restore(resume)
    source = build_source(cfg.source, resume=resume)
    live = source.kind == "live"
    wall = WallClock()  # netad's time for a live source, as the daemon's Pipeline keeps it
    if (start_ns := watched_from(source, wall.now_ns())) is not None:
        windows.watch_from(start_ns)  # not a first window the link was not watched from the start of

    def publish(wb: WindowBatch) -> None:
        publisher.publish(wb)
        checkpoint.published(wb)

    def stop_source() -> None:  # a signal handler
        source.stop = True

    lc.on_stop = stop_source
    if lc.stop:  # a signal while starting
        source.stop = True
    items = 0

    def stats() -> dict:
        counters = {**stages.stats(), **source.stats(),
                    "windows_published": publisher.published, "bytes_published": publisher.bytes, "publish_failures": publisher.failed,
                    **({"wall_clock_steps_back": wall.steps_back} if live else {})}
        if flows is not None:
            counters["packets"] = items
        return {"pipeline": counters}

    def status(_interval_s: float) -> str:
        return f"{publisher.published:,} entity windows published"

    lc.serve_metrics(stats)
    lc.ready(status=f"sensor: {source.kind} -> {cfg.kafka.windows_topic}")
    log.info("sensor_started", source=source.identity, topic=cfg.kafka.windows_topic, bootstrap=cfg.kafka.bootstrap_servers)
    for batch in source:
        items += len(batch)
        for wb in stages.push(batch, wall if live else None):
            publish(wb)
        if len(batch) == 0 and live:
            for wb in windows.advance(wall.now_ns()):  # a quiet link: windows close on netad's time
                publish(wb)
        stages.hand_back_memory()
        now = time.monotonic()
        lc.progressed(now)
        if lc.take_reload():
            log.info("config_reload_ignored", reason="a sensor's capture and windows change only with a restart")
        if checkpoint.due(now):
            checkpoint.save(source, publisher, "scheduled")
        lc.tick(now, status)
        if lc.stop:
            break
    lc.stopping("signal" if lc.stop else "source_ended")
    rereads = source.rereads  # a followed conn.log: a restart builds the windows left open
    if not lc.stop or (live and not rereads):
        for wb in stages.flush() if not lc.stop else stages.stop():  # a live link: not a last window it stopped inside
            publish(wb)
    elif windows.passed_ns is not None and not rereads:  # a replay stopped midway, as the daemon drains it
        for wb in windows.advance(windows.passed_ns):
            publish(wb)
    left = publisher.flush(cfg.service.shutdown_timeout_s)
    checkpoint.save(source, publisher, "shutdown", flush_s=0.0, replay_complete=not lc.stop)
    log.info("sensor_stopped", reason="signal" if lc.stop else "source_ended",
             **({"packets": items} if flows is not None else {}),  # flow records: counted by the aggregator
             windows_published=publisher.published, bytes_published=publisher.bytes, not_delivered=publisher.failed + left,
             seconds=round(lc.uptime_s, 2), **stages.stats())
    lc.close()
    return 0 if publisher.failed + left == 0 else 1
