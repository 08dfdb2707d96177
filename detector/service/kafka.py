"""Scale-out over Kafka: the `sensor` and `scorer` roles of `netad run` (config key `role`).

    sensor(s)                      Kafka                               scorers (one group)
    capture -> flows -> windows ─► windows topic, keyed sensor/entity ─► scorer -> incidents -> sinks
                                   state topic (compacted)         ◄──► hidden state per entity

Where it stands: the service layer, beside the all-in-one daemon (daemon.py); it wires the
same stages (pipeline.build_flow_table / build_aggregator, StreamingScorer, IncidentTracker,
SinkSet) with Kafka in the middle. Records are encoded by service.wire.

Sensor: publishes every closed entity window to `kafka.windows_topic`, keyed `sensor/entity`,
so one entity's windows land on one partition, in order.

Scorer: a member of consumer group `kafka.group_id`; it scores the entities of the partitions
it owns, one StreamingScorer and IncidentTracker per sensor. One cycle:

1. take up to `kafka.batch_windows` windows; group them by window and score each group in
   event-time order (an entity's windows arrive in order: one partition);
2. write the scores (flushed and fsynced) and hand the incident events to the sinks (durable
   in their spools when publish returns);
3. write the new state of every entity it scored (hidden state, warm-up count, end of the
   last window scored, streak and open incident) to `kafka.state_topic`, into the partition
   number its windows come from, and wait for the broker's acknowledgement;
4. only then commit the consumed offsets.

So state is checkpointed every cycle, not only when a partition is revoked: a scorer that is
SIGKILLed gets no revoke callback, yet its partitions' new owner finds each entity's state
as of the last committed offset. The new owner reads the assigned partitions of the state
topic before it scores them. Windows redelivered after a crash between steps 3 and 4 are
recognised (their end is not after the entity's last window scored) and skipped; windows
redelivered after a crash between steps 2 and 3 are scored again from the same state, so
their scores and incident events repeat with the same ids (at-least-once, duplicates
recognisable). Offsets start at the earliest window for a group that has none.

SIGHUP (systemctl reload): a scorer reloads as the daemon does (service._reload): rules,
incident settings, sinks and logging from the new file, validated before anything is
swapped; a new model path is refused with config_restart_required, since the members of a
group must score with one model (roll them). A sensor has nothing it can change while
running (its capture and windows need a restart): it says so and goes on.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import structlog
import torch

from detector.alerting.incidents import IncidentTracker
from detector.alerting.rules import RuleSet, load_rules
from detector.config import Config, KafkaConfig
from detector.contracts import WindowBatch
from detector.errors import ConfigError, NetadError
from detector.model.bundle import ModelBundle
from detector.model.scorer import StreamingScorer, set_torch_threads
from detector.logging import configure
from detector.service._reload import build_sinks, plan_reload, retire_sinks, wanted_sinks
from detector.service._sources import build_source
from detector.service.metrics import Metrics
from detector.service.pipeline import build_windowing, close_windows, observer_of
from detector.service.state import StateDirBusyError, lock_state_dir
from detector.service.systemd import Notifier
from detector.service.wire import EntityState, WindowRecord, WireError, decode_state, decode_window, encode_state, encode_window, entity_key

log = structlog.get_logger()

POLL_S = 0.2
_RESTORE_TIMEOUT_S = 60.0  # reading one partition of the state topic must finish within this


class KafkaDeliveryError(NetadError):
    """The broker did not acknowledge what must be durable before offsets are committed."""


def client_config(kafka: KafkaConfig, defaults: dict[str, Any] | None = None, forced: dict[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka settings: our defaults, then the config's `kafka.client`, then what this
    role cannot work without."""
    return {**(defaults or {}), "bootstrap.servers": kafka.bootstrap_servers, **kafka.client, **(forced or {})}


def check_topics(client: Any, kafka: KafkaConfig) -> int:
    """Both topics exist with the same partition count (an entity's state lives in the
    partition number of its windows); returns it. ConfigError otherwise."""
    from confluent_kafka import KafkaException

    try:
        topics = client.list_topics(timeout=15).topics
    except KafkaException as exc:
        raise ConfigError(f"kafka.bootstrap_servers: cannot reach {kafka.bootstrap_servers}: {exc}") from None
    counts = {}
    for key, name in (("windows_topic", kafka.windows_topic), ("state_topic", kafka.state_topic)):
        meta = topics.get(name)
        if meta is None or meta.error is not None:
            raise ConfigError(f"kafka.{key}: topic {name!r} does not exist on {kafka.bootstrap_servers} (create it: README, scaling out)")
        counts[key] = len(meta.partitions)
    if counts["windows_topic"] != counts["state_topic"]:
        raise ConfigError(f"kafka.state_topic: {kafka.state_topic!r} has {counts['state_topic']} partitions, "
                          f"{kafka.windows_topic!r} has {counts['windows_topic']}; they must have the same count")  # fmt: skip
    return counts["windows_topic"]


class _Signals:
    """SIGTERM/SIGINT set a flag (and stop the source), SIGHUP another (without a handler it
    would end the process); the loops look at them between batches."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False
        self.source: Any = None
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_reload(self, _signum: int, _frame: object) -> None:
        self.reload = True

    def _on_stop(self, _signum: int, _frame: object) -> None:
        self.stop = True
        if self.source is not None:
            self.source.stop = True


# ====================================================================================== sensor


class WindowPublisher:
    """Closed WindowBatches -> one record per entity on the windows topic."""

    def __init__(self, cfg: Config) -> None:
        from confluent_kafka import Producer

        self.cfg = cfg
        self.topic = cfg.kafka.windows_topic
        self.observer = observer_of(cfg)
        self.producer = Producer(client_config(cfg.kafka, {"linger.ms": 20, "compression.type": "lz4"},
                                               {"enable.idempotence": True, "on_delivery": self._delivered}))  # fmt: skip
        check_topics(self.producer, cfg.kafka)
        self.published = 0
        self.failed = 0
        self.bytes = 0

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failed += 1
            log.error("kafka_window_not_delivered", error=str(err))

    def publish(self, wb: WindowBatch) -> None:
        schema = wb.schema
        for i, entity in enumerate(wb.entities):
            evidence = wb.evidence.get(entity)
            if evidence is not None and not (evidence.top_peers or evidence.top_ports or evidence.top_flows):
                evidence = None
            rec = WindowRecord(self.observer["name"], self.observer["hostname"], self.observer["interface"], entity,
                               wb.entity_classes[i], schema.name, schema.version, wb.window_start_ns, wb.window_end_ns,
                               wb.features[i], evidence)  # fmt: skip
            value = encode_window(rec)
            while True:
                try:
                    self.producer.produce(self.topic, value, rec.key)
                    break
                except BufferError:  # the local queue is full: the broker is the bottleneck, wait for it
                    self.producer.poll(0.1)
            self.published += 1
            self.bytes += len(value)
        self.producer.poll(0)

    def flush(self, timeout_s: float) -> int:
        """Wait for the broker's acknowledgements; returns how many are still unacknowledged."""
        return self.producer.flush(timeout_s)


def run_sensor(cfg: Config) -> int:
    signals = _Signals()
    notifier = Notifier()
    publisher = WindowPublisher(cfg)
    flows, windows = build_windowing(cfg, cfg.source.flow_records)
    source = signals.source = build_source(cfg.source)
    live = source.kind == "live"
    metrics = RoleMetrics(cfg)
    started, items, last_ping = time.monotonic(), 0, 0.0

    def stats() -> dict:
        counters = {**windows.stats(), **(flows.stats() if flows is not None else {}), **source.stats(),
                    "windows_published": publisher.published, "bytes_published": publisher.bytes, "publish_failures": publisher.failed}  # fmt: skip
        if flows is not None:
            counters["packets"] = items
        return {"pipeline": counters}

    notifier.ready(status=f"sensor: {source.kind} -> {cfg.kafka.windows_topic}")
    metrics.ready()
    log.info("sensor_started", source=source.identity, topic=cfg.kafka.windows_topic, bootstrap=cfg.kafka.bootstrap_servers)
    for batch in source:
        items += len(batch)
        for wb in close_windows(flows, windows, batch):
            publisher.publish(wb)
        if len(batch) == 0 and live:
            for wb in windows.advance(time.time_ns()):  # a quiet link: windows close on the wall clock
                publisher.publish(wb)
        metrics.update(stats)
        if signals.reload:
            signals.reload = False
            log.info("config_reload_ignored", reason="a sensor's capture and windows change only with a restart")
        now = time.monotonic()
        if notifier.watchdog_interval_s is not None and now - last_ping >= notifier.watchdog_interval_s:
            notifier.watchdog()
            last_ping = now
        if signals.stop:
            break
    notifier.stopping(status="stopping")
    if not signals.stop or live:
        for wb in windows.flush():
            publisher.publish(wb)
    left = publisher.flush(cfg.service.shutdown_timeout_s)
    log.info("sensor_stopped", reason="signal" if signals.stop else "source_ended",
             **({"packets": items} if flows is not None else {}),  # flow records: counted by the aggregator
             windows_published=publisher.published, bytes_published=publisher.bytes, not_delivered=publisher.failed + left,
             seconds=round(time.monotonic() - started, 2), **windows.stats())  # fmt: skip
    metrics.close()
    notifier.close()
    return 0 if publisher.failed + left == 0 else 1


class RoleMetrics:
    """`service.metrics_address` for a Kafka role: the daemon's /metrics, /healthz and
    /readyz (service.metrics), over a snapshot of the role's counters that the role's own
    loop refreshes (twice a second at most): the HTTP thread never reads live state. Off
    without an address."""

    def __init__(self, cfg: Config) -> None:
        self.metrics: Metrics | None = None
        self.snapshot: dict = {}
        self._next_s = 0.0
        address = cfg.service.metrics_address
        if address:
            self.metrics = Metrics(lambda: self.snapshot, stall_after_s=cfg.service.stall_after_s)
            try:
                host, port = self.metrics.serve(address)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"service.metrics_address: cannot serve on {address!r}: {exc}") from None
            log.info("metrics_started", address=f"{host}:{port}")

    def ready(self) -> None:
        if self.metrics is not None:
            self.metrics.ready = True

    def update(self, stats: Callable[[], dict]) -> None:
        """The loop went round (health), and the counters if they are due."""
        if self.metrics is None:
            return
        self.metrics.progressed()
        now = time.monotonic()
        if now >= self._next_s:
            self.snapshot = stats()
            self._next_s = now + 0.5

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()


# ====================================================================================== scorer


@dataclass
class _SensorScoring:
    """The scoring state of one sensor's entities on this scorer."""

    scorer: StreamingScorer
    tracker: IncidentTracker


_SCORER_COUNTERS = ("windows_scored", "anomalous_windows", "duplicates_skipped", "malformed_records", "schema_mismatch",
                    "consume_errors", "commit_failures", "states_saved", "states_restored", "states_discarded", "malformed_states")


class ScorerRole:
    def __init__(self, cfg: Config, extra_sinks: list[str] | None = None, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.extra_sinks = list(extra_sinks or [])
        self.reloads = {"success": 0, "failure": 0}
        self.sensors: dict[str, _SensorScoring] = {}
        self.owner: dict[tuple[str, str], tuple[int, str]] = {}  # (sensor, entity) -> (partition, class)
        # every counter from 0, so that /metrics shows each from the start
        self.counts: dict[str, int] = defaultdict(int, dict.fromkeys(_SCORER_COUNTERS, 0))
        self.incident_events: Counter[tuple[str, str]] = Counter()  # (action, severity)
        self.assigned: set[int] = set()
        self.commit_pending = False  # the last offset commit failed: retried when the topic is quiet
        self.lag: int | None = None  # windows behind, summed over the assigned partitions (librdkafka statistics)
        self.scores_out: IO[str] | None = None

    # ---------------------------------------------------------------- lifecycle
    def run(self) -> int:
        from confluent_kafka import Consumer, Producer

        cfg, kafka = self.cfg, self.cfg.kafka
        signals = _Signals()
        notifier = self.notifier = Notifier()
        try:
            self._lock = lock_state_dir(cfg.state_dir)
        except StateDirBusyError as exc:
            raise ConfigError(f"state_dir: {exc}; give each scorer its own") from None
        set_torch_threads(cfg.model.threads)
        self.bundle = ModelBundle.load(cfg.model.path)
        self.rules: RuleSet = load_rules(cfg.incidents.rules)
        self.sinks = build_sinks(wanted_sinks(cfg, self.extra_sinks), cfg.state_dir / "spool")
        self.metrics = RoleMetrics(cfg)
        if cfg.outputs.scores is not None:
            cfg.outputs.scores.parent.mkdir(parents=True, exist_ok=True)
            self.scores_out = open(cfg.outputs.scores, "a", encoding="utf-8")
        self.state_producer = Producer(client_config(kafka, {"linger.ms": 5}, {"enable.idempotence": True}))
        self.partitions = check_topics(self.state_producer, kafka)
        self.state_reader = Consumer(client_config(kafka, {}, {"group.id": f"{kafka.group_id}.state-restore",
                                                               "enable.auto.commit": False, "enable.partition.eof": True}))  # fmt: skip
        statistics = {"statistics.interval.ms": 5000, "stats_cb": self._on_statistics} if self.metrics.metrics is not None else {}
        self.consumer = Consumer(client_config(kafka, {"auto.offset.reset": "earliest", "partition.assignment.strategy": "cooperative-sticky",
                                                       **statistics}, {"group.id": kafka.group_id, "enable.auto.commit": False}))  # fmt: skip
        self.consumer.subscribe([kafka.windows_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke)
        notifier.ready(status=f"scorer in group {kafka.group_id}, model {self.bundle.version}")
        self.metrics.ready()
        log.info("scorer_started", group=kafka.group_id, topic=kafka.windows_topic, partitions=self.partitions,
                 model_version=self.bundle.version, sinks=[s.name for s in self.sinks], pid=os.getpid())  # fmt: skip
        started, last_ping, last_status = time.monotonic(), 0.0, time.monotonic()
        try:
            while not signals.stop:
                self._cycle()
                if signals.reload:
                    signals.reload = False
                    self._reload()
                self.metrics.update(self._stats)
                now = time.monotonic()
                if notifier.watchdog_interval_s is not None and now - last_ping >= notifier.watchdog_interval_s:
                    notifier.watchdog()
                    last_ping = now
                if now - last_status >= cfg.service.status_interval_s:
                    notifier.status(f"{self.counts['windows_scored']:,} entity windows scored, {len(self.owner):,} entities")
                    last_status = now
        finally:
            notifier.stopping(status="stopping")
            cfg = self.cfg  # as reloaded
            self.consumer.close()  # leaves the group: its partitions move now, not after the session timeout
            self.sinks.flush(timeout_s=cfg.service.shutdown_timeout_s)
            self.sinks.close(timeout_s=1.0)
            if self.scores_out is not None:
                self.scores_out.close()
            self.state_reader.close()
            self.metrics.close()
            log.info("scorer_stopped", seconds=round(time.monotonic() - started, 2), **self.counts)
            notifier.close()
        return 0

    def _stats(self) -> dict:
        """What /metrics shows (RoleMetrics): the scorer's counters, the sinks', the lag."""
        counters: dict[str, int] = {**self.counts, "entity_windows": self.counts["windows_scored"], "entities": len(self.owner),
                                    "incidents_open": sum(ctx.tracker.open_incidents for ctx in self.sensors.values()),
                                    "partitions_assigned": len(self.assigned)}  # fmt: skip
        if self.lag is not None:
            counters["consumer_lag"] = self.lag
        return {"pipeline": counters, "sinks": self.sinks.stats(), "incident_events": dict(self.incident_events),
                "reloads": dict(self.reloads), "model_version": self.bundle.version}  # fmt: skip

    def _reload(self) -> None:
        """SIGHUP, between two cycles: everything the new config needs is built and validated
        (plan_reload) before anything is swapped; on any error the scorer goes on as it was."""
        self.notifier.reloading()
        try:
            plan = plan_reload(self.config_path, self.cfg, self.sinks, self.extra_sinks, self.bundle.schema)
        except (NetadError, OSError, ValueError) as exc:
            self.reloads["failure"] += 1
            log.error("config_reload_failed", reason=str(exc), config=self.config_path)
            self.notifier.ready(status=f"reload failed, running the previous config; model {self.bundle.version}")
            return
        cfg, restart = plan.cfg, list(plan.restart_required)
        if plan.bundle is not None:  # one group, one model: a new one is rolled out by restarting the members
            restart.append("model.path")
            cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": self.cfg.model.path})})
        self.sinks = plan.sinks
        for ctx in self.sensors.values():
            ctx.tracker.rules = plan.rules
            ctx.tracker.min_windows = cfg.incidents.min_windows
            ctx.tracker.resolve_after_windows = cfg.incidents.resolve_after_windows
            ctx.tracker.update_every_windows = cfg.incidents.update_every_windows
        self.rules = plan.rules
        if self.metrics.metrics is not None:
            self.metrics.metrics.stall_after_s = cfg.service.stall_after_s
        if cfg.logging != self.cfg.logging:
            configure(cfg.logging.level, cfg.logging.format)
        self.cfg = cfg
        retire_sinks(plan.retired)
        self.reloads["success"] += 1
        log.info("config_reloaded", config=self.config_path, rules=[str(p) for p in cfg.incidents.rules],
                 sinks=[s.name for s in self.sinks], restart_required=restart)  # fmt: skip
        if restart:
            log.warning("config_restart_required", keys=restart)
        self.notifier.ready(status=f"reloaded; model {self.bundle.version}")

    def _on_statistics(self, text: str) -> None:
        """librdkafka's statistics (on the consumer's poll, this thread): the consumer lag of
        the partitions this scorer owns, summed over those whose lag librdkafka knows (-1: not
        yet)."""
        try:
            partitions = json.loads(text)["topics"][self.cfg.kafka.windows_topic]["partitions"]
        except (ValueError, KeyError, TypeError):
            return
        known = [p["consumer_lag"] for key, p in partitions.items()
                 if key.isdigit() and int(key) in self.assigned and isinstance(p.get("consumer_lag"), int) and p["consumer_lag"] >= 0]  # fmt: skip
        self.lag = sum(known) if known else None

    # ---------------------------------------------------------------- one cycle
    def _cycle(self) -> None:
        messages = self.consumer.consume(num_messages=self.cfg.kafka.batch_windows, timeout=POLL_S)
        if not messages:
            if self.commit_pending:  # the last commit failed and nothing newer came to carry it
                self._commit()
            return
        records: list[tuple[int, WindowRecord]] = []
        for msg in messages:
            if msg.error() is not None:
                self.counts["consume_errors"] += 1
                log.warning("kafka_consume_error", error=str(msg.error()))
                continue
            try:
                records.append((msg.partition(), decode_window(msg.value())))
            except WireError as exc:
                self.counts["malformed_records"] += 1
                log.warning("kafka_window_malformed", partition=msg.partition(), offset=msg.offset(), reason=str(exc))
        touched = self._score(records)
        if self.scores_out is not None:
            self.scores_out.flush()
            os.fsync(self.scores_out.fileno())
        self._save_states(touched)
        self._commit()

    def _commit(self) -> None:
        """Commit the positions of the partitions this scorer owns: everything consumed up to
        them is scored and its states saved. A failed commit is retried on the next idle cycle,
        so that a quiet topic does not leave the group's offsets (and the lag) behind."""
        from confluent_kafka import KafkaError, KafkaException

        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else exc
            if isinstance(error, KafkaError) and error.code() == KafkaError._NO_OFFSET:  # nothing consumed since the last commit
                self.commit_pending = False
                return
            # a rebalance got in between (the group moved on to a new generation): the next
            # owner of these partitions is redelivered these windows and, from the states
            # saved above, recognises them as scored
            self.counts["commit_failures"] += 1
            if not self.commit_pending:
                log.warning("kafka_commit_failed", reason=str(error))
            self.commit_pending = True
        else:
            if self.commit_pending:
                log.info("kafka_commit_recovered")
            self.commit_pending = False

    def _context(self, rec: WindowRecord | str) -> _SensorScoring:
        sensor = rec if isinstance(rec, str) else rec.sensor
        ctx = self.sensors.get(sensor)
        if ctx is None:
            cfg = self.cfg
            scorer = StreamingScorer(self.bundle, device=cfg.model.device, warmup_windows=cfg.model.warmup_windows,
                                     max_entities=cfg.windows.max_entities, entity_idle_s=cfg.windows.entity_idle_s,
                                     precision=cfg.model.precision)  # fmt: skip
            tracker = IncidentTracker(rules=self.rules, min_windows=cfg.incidents.min_windows,
                                      resolve_after_windows=cfg.incidents.resolve_after_windows,
                                      update_every_windows=cfg.incidents.update_every_windows,
                                      observer={"name": sensor}, model_version=self.bundle.version)  # fmt: skip
            ctx = self.sensors[sensor] = _SensorScoring(scorer, tracker)
        if not isinstance(rec, str):
            ctx.tracker.observer = rec.observer
        return ctx

    def _score(self, records: list[tuple[int, WindowRecord]]) -> dict[tuple[str, str], int]:
        """Score the records, window by window in event-time order; returns the entities
        scored, with their partitions."""
        schema = self.bundle.schema
        groups: dict[tuple[int, str, int], list[tuple[int, WindowRecord]]] = defaultdict(list)
        for part, rec in records:
            if (rec.schema_name, rec.schema_version) != (schema.name, schema.version) or rec.features.shape != (self.bundle.bins, len(schema.features)):
                self.counts["schema_mismatch"] += 1
                if self.counts["schema_mismatch"] == 1 or self.counts["schema_mismatch"] % 10_000 == 0:
                    log.error("kafka_window_schema_mismatch", sensor=rec.sensor, window_schema=f"{rec.schema_name} v{rec.schema_version}",
                              model_schema=f"{schema.name} v{schema.version}", bins=rec.features.shape[0], count=self.counts["schema_mismatch"])  # fmt: skip
                continue
            groups[(rec.window_end_ns, rec.sensor, rec.window_start_ns)].append((part, rec))
        touched: dict[tuple[str, str], int] = {}
        for (end_ns, sensor, start_ns), items in sorted(groups.items()):
            ctx = self._context(items[0][1])
            items = self._not_yet_scored(ctx, items, end_ns)
            if not items:
                continue
            wb = WindowBatch(start_ns, end_ns, [r.entity for _, r in items], [r.entity_class for _, r in items],
                             np.stack([r.features for _, r in items]), schema,
                             {r.entity: r.evidence for _, r in items if r.evidence is not None})  # fmt: skip
            scores = ctx.scorer.score(wb)
            if self.scores_out is not None:
                self.scores_out.write(scores.jsonl(sensor=sensor))
            for event in ctx.tracker.push(scores):
                self.counts[f"incidents_{event.action}"] += 1
                self.incident_events[(event.action, event.severity)] += 1
                self.sinks.publish(event)
            for part, r in items:
                self.owner[(sensor, r.entity)] = (part, r.entity_class)
                touched[(sensor, r.entity)] = part
            self.counts["windows_scored"] += len(items)
            self.counts["anomalous_windows"] += int(np.count_nonzero(scores.anomalous))
        return touched

    def _not_yet_scored(self, ctx: _SensorScoring, items: list, end_ns: int) -> list:
        """Drop windows this scorer (or the state it restored) has already scored: a
        redelivery after a crash between saving states and committing offsets."""
        by_class: dict[str, list[int]] = defaultdict(list)
        for i, (_, r) in enumerate(items):
            by_class[r.entity_class].append(i)
        keep = np.ones(len(items), bool)
        for cls, rows in by_class.items():
            last = ctx.scorer.last_scored_ns(cls, [items[i][1].entity for i in rows])
            keep[np.asarray(rows)[last >= end_ns]] = False
        self.counts["duplicates_skipped"] += int((~keep).sum())
        return [it for it, k in zip(items, keep) if k]

    # ---------------------------------------------------------------- state topic
    def _save_states(self, touched: dict[tuple[str, str], int]) -> None:
        if not touched:
            return
        failed: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failed.append(str(err))

        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for sensor, entity in touched:
            groups[(sensor, self.owner[(sensor, entity)][1])].append(entity)
        topic = self.cfg.kafka.state_topic
        for (sensor, cls), entities in groups.items():
            ctx = self.sensors[sensor]
            states = ctx.scorer.states_of(cls, entities)
            trackers = ctx.tracker.states_of(states["entities"])
            for i, entity in enumerate(states["entities"]):
                value = encode_state(EntityState(cls, states["h"][i], states["c"][i], states["seen"][i], states["last_ns"][i],
                                                 trackers.get(entity), self.bundle.version))  # fmt: skip
                key = entity_key(sensor, entity)
                while True:
                    try:
                        self.state_producer.produce(topic, value, key, partition=touched[(sensor, entity)], on_delivery=delivered)
                        break
                    except BufferError:
                        self.state_producer.poll(0.1)
        left = self.state_producer.flush(self.cfg.service.shutdown_timeout_s)
        if failed or left:
            # offsets stay uncommitted: a restart (or the partition's next owner) scores these again
            raise KafkaDeliveryError(f"the state topic did not take {len(failed) + left} entity states: {failed[:1]}")
        self.counts["states_saved"] += len(touched)

    def _on_assign(self, _consumer: Any, partitions: list) -> None:
        started = time.monotonic()
        restored = sum(self._restore_partition(tp.partition) for tp in partitions)
        self.assigned |= {tp.partition for tp in partitions}
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in partitions), entities_restored=restored,
                 seconds=round(time.monotonic() - started, 3))  # fmt: skip

    def _on_revoke(self, _consumer: Any, partitions: list) -> None:
        gone = {tp.partition for tp in partitions}
        self._forget(gone)
        self.assigned -= gone
        log.info("partitions_revoked", partitions=sorted(gone))

    def _forget(self, partitions: set[int]) -> None:
        """Let go of the entities of partitions this scorer no longer owns: their next
        owner has them from the state topic, and stale copies must not be scored on."""
        drop: dict[tuple[str, str], list[str]] = defaultdict(list)
        for (sensor, entity), (part, cls) in list(self.owner.items()):
            if part in partitions:
                drop[(sensor, cls)].append(entity)
                del self.owner[(sensor, entity)]
        for (sensor, cls), entities in drop.items():
            self.sensors[sensor].scorer.forget(cls, entities)
            self.sensors[sensor].tracker.forget(entities)

    def _restore_partition(self, partition: int) -> int:
        """Read one partition of the state topic to its end; the newest state per entity
        goes back into the scorers. Returns the number of entities restored."""
        from confluent_kafka import KafkaError, TopicPartition

        self._forget({partition})
        topic = self.cfg.kafka.state_topic
        low, high = self.state_reader.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
        if high <= low:
            return 0
        latest: dict[bytes, bytes | None] = {}
        self.state_reader.assign([TopicPartition(topic, partition, low)])
        deadline, offset, at_end = time.monotonic() + _RESTORE_TIMEOUT_S, low - 1, False
        while offset < high - 1 and not at_end:
            if time.monotonic() > deadline:
                raise KafkaDeliveryError(f"reading {topic} partition {partition} to offset {high} took over {_RESTORE_TIMEOUT_S:.0f} s")
            for msg in self.state_reader.consume(num_messages=10_000, timeout=0.1):
                if msg.error() is not None:
                    at_end = at_end or msg.error().code() == KafkaError._PARTITION_EOF
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("kafka_state_read_error", error=str(msg.error()))
                    continue
                latest[msg.key()] = msg.value()
                offset = msg.offset()
        self.state_reader.unassign()
        return self._load_states(partition, latest)

    def _load_states(self, partition: int, latest: dict[bytes, bytes | None]) -> int:
        hidden = self.bundle.hidden_size
        grouped: dict[tuple[str, str], list[tuple[str, EntityState]]] = defaultdict(list)
        for key, value in latest.items():
            if not value:
                continue  # a tombstone
            try:
                sensor, entity = key.decode().split("/", 1)
                state = decode_state(value)
            except (ValueError, UnicodeDecodeError) as exc:  # WireError is a ValueError
                self.counts["malformed_states"] += 1
                log.warning("kafka_state_malformed", partition=partition, reason=str(exc))
                continue
            if state.h.shape[-1] != hidden:
                self.counts["states_discarded"] += 1
                continue  # another model's state size: the entity starts afresh
            grouped[(sensor, state.entity_class)].append((entity, state))
        n = 0
        for (sensor, cls), entries in grouped.items():
            ctx = self._context(sensor)
            names = [e for e, _ in entries]
            ctx.scorer.load_state_dict({cls: {"entities": names, "h": torch.stack([s.h for _, s in entries]),
                                              "c": torch.stack([s.c for _, s in entries]), "seen": [s.seen for _, s in entries],
                                              "last_ns": [s.last_ns for _, s in entries]}})  # fmt: skip
            ctx.tracker.load_state_dict({e: s.tracker for e, s in entries if s.tracker is not None}, merge=True)
            for entity in names:
                self.owner[(sensor, entity)] = (partition, cls)
            n += len(entries)
        self.counts["states_restored"] += n
        return n


def run_role(cfg: Config, extra_sinks: list[str] | None = None, config_path: str | None = None) -> int:
    if cfg.role == "sensor":
        return run_sensor(cfg)
    return ScorerRole(cfg, extra_sinks, config_path).run()

