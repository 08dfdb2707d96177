"""The Kafka scorer role: windows topic -> one Scoring stage per sensor -> sinks, state topic, offsets.

Where it stands: the scoring half of the pipeline for windows that sensors (kafka.sensor)
published; the cycle, the state topic and the offsets are described in service.kafka. Scoring
and incidents are the Scoring stage the daemon uses (service.scoring), one per sensor (each
sensor's entities have their own states and incidents); the process lifecycle is the
daemon's too (service.lifecycle), and so is the incident page (service.explain.board), over
the windows this scorer scored. SIGHUP reloads rules, every incident setting, sinks and
logging; a new model path needs a restart (one group, one model).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import structlog
import torch

from detector.alerting.rules import RuleSet, load_rules
from detector.config import Config, home_net_change
from detector.contracts import WindowBatch
from detector.errors import NetadError
from detector.logging import configure
from detector.model.bundle import ModelBundle
from detector.model.scorer import set_torch_threads
from detector.service._reload import build_sinks, plan_reload, retire_sinks, wanted_sinks
from detector.service.explain.board import IncidentBoard
from detector.service.heap import HEAP
from detector.service.kafka import POLL_S, KafkaDeliveryError, check_topics, client_config
from detector.service.lifecycle import Lifecycle
from detector.service.scoring import ScoresFile, Scoring, check_device, close_scores, incident_settings_of, open_scores
from detector.service.state import EntityStates
from detector.service.wire import EntityState, WindowRecord, WireError, decode_state, decode_window, encode_state, entity_key

log = structlog.get_logger()

_RESTORE_TIMEOUT_S = 60.0  # reading one partition of the state topic must finish within this


# a window record dated further ahead of the scorer's clock is refused: clocks of sensors and
# scorers disagree by seconds, not hours, and one far-future window would make every genuine
# later window of its entity look already scored
MAX_FUTURE_S = 3600.0

_SCORER_COUNTERS = ("duplicates_skipped", "malformed_records", "invalid_records", "schema_mismatch", "home_net_mismatch",
                    "consume_errors", "commit_failures", "states_saved", "states_restored", "states_discarded", "malformed_states")


class ScorerRole:
    def __init__(self, cfg: Config, extra_sinks: list[str] | None = None, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.extra_sinks = list(extra_sinks or [])
        self.reloads = {"success": 0, "failure": 0}
        self.lifecycle = Lifecycle(cfg.service, "scorer")
        self.sensors: dict[str, Scoring] = {}  # sensor id -> the Scoring stage of its entities
        self.owner: dict[tuple[str, str], tuple[int, str]] = {}  # (sensor, entity) -> (partition, class)
        # every counter from 0, so that /metrics shows each from the start
        self.counts: dict[str, int] = defaultdict(int, dict.fromkeys(_SCORER_COUNTERS, 0))
        self.assigned: set[int] = set()
        self.home_nets: dict[tuple[str, tuple[str, ...] | None], str | None] = {}  # (sensor, its home_net) -> why not, or None
        self.commit_pending = False  # the last offset commit failed: retried when the topic is quiet
        self.lag: int | None = None  # windows behind, summed over the assigned partitions (librdkafka statistics)
        self.scores_out: ScoresFile | None = None
        self.board: IncidentBoard | None = None  # the incident page's records, of every sensor's entities

    # ---------------------------------------------------------------- lifecycle
    def run(self) -> int:
        from confluent_kafka import Consumer, Producer

        cfg, kafka, lc = self.cfg, self.cfg.kafka, self.lifecycle
        lc.install_signals()
        check_device(cfg.model.device)  # before a sensor's first window builds its Scoring
        lc.lock_state_dir(cfg.state_dir)
        set_torch_threads(cfg.model.threads)
        self.bundle = ModelBundle.load(cfg.model.path)
        self.rules: RuleSet = load_rules(cfg.incidents.rules)
        self.sinks = build_sinks(wanted_sinks(cfg, self.extra_sinks), cfg.state_dir / "spool", cfg.outputs.scores)
        self.board = IncidentBoard.start(cfg, lc, self.bundle.schema, live=True, resume_ns=None, scope="")
        lc.serve_metrics(self._stats)
        self.scores_out = open_scores(cfg, self.config_path, append=True)
        self.state_producer = Producer(client_config(kafka, {"linger.ms": 5}, {"enable.idempotence": True}))
        self.partitions = check_topics(self.state_producer, kafka)
        self.state_reader = Consumer(client_config(kafka, {}, {"group.id": f"{kafka.group_id}.state-restore",
                                                               "enable.auto.commit": False, "enable.partition.eof": True}))
        statistics = {"statistics.interval.ms": 5000, "stats_cb": self._on_statistics} if lc.metrics is not None else {}
        self.consumer = Consumer(client_config(kafka, {"auto.offset.reset": "earliest", "partition.assignment.strategy": "cooperative-sticky",
                                                       **statistics}, {"group.id": kafka.group_id, "enable.auto.commit": False}))
        self.consumer.subscribe([kafka.windows_topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke)
        lc.ready(status=f"scorer in group {kafka.group_id}, model {self.bundle.version}")
        log.info("scorer_started", group=kafka.group_id, topic=kafka.windows_topic, partitions=self.partitions,
                 model_version=self.bundle.version, sinks=[s.name for s in self.sinks], pid=os.getpid())
        started = time.monotonic()
        try:
            while not lc.stop:
                self._cycle()
                HEAP.check()
                if lc.take_reload():
                    self._reload()
                now = time.monotonic()
                lc.progressed(now)
                lc.tick(now, self._status)
        finally:
            lc.stopping("signal" if lc.stop else "error")
            cfg = self.cfg  # as reloaded
            self.consumer.close()  # leaves the group: its partitions move now, not after the session timeout
            self.sinks.flush(timeout_s=cfg.service.shutdown_timeout_s)
            self.sinks.close(timeout_s=1.0)
            close_scores(self.scores_out)
            self.state_reader.close()
            log.info("scorer_stopped", seconds=round(time.monotonic() - started, 2), **self._counters())
            lc.close()
        return 0

    def _counters(self) -> dict[str, int]:
        """The role's own counters and its Scoring stages', summed over the sensors."""
        stages = list(self.sensors.values())
        out = {"windows_scored": sum(s.entity_windows for s in stages), "anomalous_windows": sum(s.anomalous_windows for s in stages),
               **self.counts}
        for (action, _severity), n in self._incident_events().items():
            out[f"incidents_{action}"] = out.get(f"incidents_{action}", 0) + n
        return out

    def _incident_events(self) -> Counter[tuple[str, str]]:
        """(action, severity) -> events emitted, over every sensor's Scoring."""
        total: Counter[tuple[str, str]] = Counter()
        for scoring in self.sensors.values():
            total.update(scoring.events)
        return total

    def _status(self, _interval_s: float) -> str:
        return f"{sum(s.entity_windows for s in self.sensors.values()):,} entity windows scored, {len(self.owner):,} entities"

    def _stats(self) -> dict:
        """What /metrics shows (a Lifecycle snapshot): the scorer's counters, the sinks', the lag."""
        counts = self._counters()
        counters: dict[str, int] = {**counts, "entity_windows": counts["windows_scored"], "entities": len(self.owner),
                                    "incidents_open": sum(s.tracker.open_incidents for s in self.sensors.values()),
                                    "partitions_assigned": len(self.assigned)}
        if self.lag is not None:
            counters["consumer_lag"] = self.lag
        return {"pipeline": counters, "sinks": self.sinks.stats(), "incident_events": dict(self._incident_events()),
                "reloads": dict(self.reloads), "model_version": self.bundle.version}

    def _reload(self) -> None:
        """SIGHUP, between two cycles: everything the new config needs is built and validated
        (plan_reload) before anything is swapped; on any error the scorer goes on as it was."""
        self.lifecycle.reloading()
        try:
            plan = plan_reload(self.config_path, self.cfg, self.sinks, self.extra_sinks, self.bundle.schema)
        except (NetadError, OSError, ValueError) as exc:
            self.reloads["failure"] += 1
            log.error("config_reload_failed", reason=str(exc), config=self.config_path)
            self.lifecycle.ready(status=f"reload failed, running the previous config; model {self.bundle.version}")
            return
        cfg, restart = plan.cfg, list(plan.restart_required)
        if plan.bundle is not None:  # one group, one model: a new one is rolled out by restarting the members
            restart.append("model.path")
            cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": self.cfg.model.path})})
        self.sinks = plan.sinks
        incidents = incident_settings_of(cfg.incidents)  # what a sensor's Scoring built from now on gets
        for scoring in self.sensors.values():
            scoring.sinks = [plan.sinks]
            incidents = scoring.apply(cfg.incidents, plan.rules)
        self.rules = plan.rules
        self.lifecycle.reconfigure(cfg.service)
        if cfg.logging != self.cfg.logging:
            configure(cfg.logging.level, cfg.logging.format)
        self.cfg = cfg
        retire_sinks(plan.retired)
        self.reloads["success"] += 1
        log.info("config_reloaded", config=self.config_path, rules=[str(p) for p in cfg.incidents.rules], incidents=incidents,
                 sinks=[s.name for s in self.sinks], restart_required=restart)
        if restart:
            log.warning("config_restart_required", keys=restart)
        self.lifecycle.ready(status=f"reloaded; model {self.bundle.version}")

    def _on_statistics(self, text: str) -> None:
        """librdkafka's statistics (on the consumer's poll, this thread): the consumer lag of
        the partitions this scorer owns, summed over those whose lag librdkafka knows (-1: not
        yet)."""
        try:
            partitions = json.loads(text)["topics"][self.cfg.kafka.windows_topic]["partitions"]
        except (ValueError, KeyError, TypeError):
            return
        known = [p["consumer_lag"] for key, p in partitions.items()
                 if key.isdigit() and int(key) in self.assigned and isinstance(p.get("consumer_lag"), int) and p["consumer_lag"] >= 0]
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
            self.scores_out.sync()
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

    def _scoring(self, sensor: str) -> Scoring:
        """The Scoring stage of one sensor's entities, built on its first window or state."""
        scoring = self.sensors.get(sensor)
        if scoring is None:
            scoring = self.sensors[sensor] = Scoring(self.cfg, self.bundle, {"name": sensor}, rules=self.rules, sinks=[self.sinks],
                                                     scores_out=self.scores_out, score_fields={"sensor": sensor})
            if self.board is not None:
                self.board.watch(scoring, sensor)
        return scoring

    def _score(self, records: list[tuple[int, WindowRecord]]) -> dict[tuple[str, str], int]:
        """Score the records, window by window in event-time order; returns the entities
        scored, with their partitions."""
        schema = self.bundle.schema
        groups: dict[tuple[int, str, int], list[tuple[int, WindowRecord]]] = defaultdict(list)
        latest_ns = time.time_ns() + int(MAX_FUTURE_S * 1e9)
        for part, rec in records:
            shape = (self.bundle.bins, len(schema.features))
            if (rec.schema_name, rec.schema_version) != (schema.name, schema.version) or rec.features.shape != shape:
                self.counts["schema_mismatch"] += 1
                if self.counts["schema_mismatch"] == 1 or self.counts["schema_mismatch"] % 10_000 == 0:
                    log.error("kafka_window_schema_mismatch", sensor=rec.sensor, window_schema=f"{rec.schema_name} v{rec.schema_version}",
                              model_schema=f"{schema.name} v{schema.version}", bins=rec.features.shape[0], count=self.counts["schema_mismatch"])
                continue
            if rec.home_net is not None and self._home_net_change(rec) is not None:
                continue
            why = self._invalid(rec, latest_ns)
            if why is not None:
                # a record no window stage could have made, or one dated ahead of the clock: scored,
                # it would crash this scorer before the commit (again on every restart), or leave
                # the entity's last-scored time in the future and every genuine window after it
                # a "duplicate"; counted and skipped, its offset committed with the rest
                self.counts["invalid_records"] += 1
                if self.counts["invalid_records"] == 1 or self.counts["invalid_records"] % 10_000 == 0:
                    log.error("kafka_window_invalid", sensor=rec.sensor, entity=rec.entity, partition=part, reason=why,
                              count=self.counts["invalid_records"])
                continue
            groups[(rec.window_end_ns, rec.sensor, rec.window_start_ns)].append((part, rec))
        touched: dict[tuple[str, str], int] = {}
        for (end_ns, sensor, start_ns), items in sorted(groups.items()):
            scoring = self._scoring(sensor)
            scoring.observer = items[0][1].observer
            items = self._not_yet_scored(scoring, items, end_ns)
            if not items:
                continue
            wb = WindowBatch(start_ns, end_ns, [r.entity for _, r in items], [r.entity_class for _, r in items],
                             np.stack([r.features for _, r in items]), schema,
                             {r.entity: r.evidence for _, r in items if r.evidence is not None},
                             next((r.link_hosts for _, r in items if r.link_hosts is not None), None),
                             {r.entity: r.requested_by for _, r in items if r.requested_by})
            scoring.process(wb)
            for part, r in items:
                self.owner[(sensor, r.entity)] = (part, r.entity_class)
                touched[(sensor, r.entity)] = part
        return touched

    def _home_net_change(self, rec: WindowRecord) -> str | None:
        """Why the model cannot read this record's window: its sensor counted it with other
        home_net networks than the model was trained with (config.home_net_change), or None.
        Such a window is counted and skipped, as a sensor with that config is refused at its
        start when its own model.path holds this model; the sensor's model may be another, or
        none. Said at once for each sensor and networks, then every 10,000th window."""
        key = (rec.sensor, rec.home_net)
        if key not in self.home_nets:
            change = home_net_change(self.bundle.training.get("home_net"), list(rec.home_net or ()), f"sensor {rec.sensor!r} has")
            self.home_nets[key] = change
            if change is not None:
                log.error("kafka_sensor_home_net_mismatch", sensor=rec.sensor, reason=change)
        change = self.home_nets[key]
        if change is not None:
            self.counts["home_net_mismatch"] += 1
            if self.counts["home_net_mismatch"] % 10_000 == 0:
                log.error("kafka_sensor_home_net_mismatch", sensor=rec.sensor, reason=change, count=self.counts["home_net_mismatch"])
        return change

    def _invalid(self, rec: WindowRecord, latest_ns: int) -> str | None:
        """Why a decoded window cannot be scored, or None: an entity class the model has no
        network for, a window of another length than the model's, features that are negative
        or not finite, a window ending more than MAX_FUTURE_S past this scorer's clock."""
        window_ns = int(round(self.bundle.bin_s * 1e9)) * self.bundle.bins
        if rec.entity_class not in self.bundle.classes:
            return f"entity class {rec.entity_class!r} (the model has {sorted(self.bundle.classes)})"
        if rec.window_end_ns - rec.window_start_ns != window_ns:
            return f"a window of {(rec.window_end_ns - rec.window_start_ns) / 1e9:g} s (the model's: {window_ns / 1e9:g} s)"
        if not np.isfinite(rec.features).all() or (rec.features < 0).any():
            return "features that are negative or not finite"
        if rec.window_end_ns > latest_ns:
            return f"dated {(rec.window_end_ns - latest_ns) / 1e9 + MAX_FUTURE_S:.0f} s ahead of this scorer's clock"
        return None

    def _not_yet_scored(self, scoring: Scoring, items: list, end_ns: int) -> list:
        """Drop windows this scorer (or the state it restored) has already scored: a
        redelivery after a crash between saving states and committing offsets. And a window
        of the same entity that came twice within what this cycle took (a sensor that
        published it again after a restart from its checkpoint, read in one poll with the
        first): the first is scored, the other skipped as a duplicate. Both were scored before,
        the entity's state carried through its own window twice."""
        by_class: dict[str, list[int]] = defaultdict(list)
        keep = np.ones(len(items), bool)
        seen: set[str] = set()
        for i, (_, r) in enumerate(items):
            if r.entity in seen:
                keep[i] = False
                continue
            seen.add(r.entity)
            by_class[r.entity_class].append(i)
        for cls, rows in by_class.items():
            last = scoring.scorer.last_scored_ns(cls, [items[i][1].entity for i in rows])
            keep[np.asarray(rows)[last >= end_ns]] = False
        self.counts["duplicates_skipped"] += int((~keep).sum())
        return [it for it, k in zip(items, keep, strict=True) if k]

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
            scoring = self.sensors[sensor]
            states = scoring.entity_states_of(cls, entities)
            trackers = scoring.tracker.states_of(states.entities)
            for i, entity in enumerate(states.entities):
                carried = states.carried[i] if states.carried is not None else 0.0
                value = encode_state(EntityState(cls, states.h[i], states.c[i], states.seen[i], states.last_ns[i],
                                                 trackers.get(entity), self.bundle.version, carried))
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
                 seconds=round(time.monotonic() - started, 3))

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
            self.sensors[sensor].forget(cls, entities)

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
        hidden = self.bundle.state_size
        latest_ns = time.time_ns() + int(MAX_FUTURE_S * 1e9)
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
            if state.h.shape[-1] != hidden or state.entity_class not in self.bundle.classes:
                self.counts["states_discarded"] += 1
                continue  # another model's state size or classes: the entity starts afresh
            if state.last_ns > latest_ns:
                # saved after a far-future window (before such windows were refused): restored,
                # every genuine later window of the entity would be skipped as already scored
                self.counts["states_discarded"] += 1
                log.warning("kafka_state_future_dated", partition=partition, entity=entity, last_window_end_ns=state.last_ns)
                continue
            grouped[(sensor, state.entity_class)].append((entity, state))
        n = 0
        for (sensor, cls), entries in grouped.items():
            scoring = self._scoring(sensor)
            names = [e for e, _ in entries]
            scoring.load_entity_states({cls: EntityStates(names, torch.stack([s.h for _, s in entries]), torch.stack([s.c for _, s in entries]),
                                                          [s.seen for _, s in entries], [s.last_ns for _, s in entries],
                                                          [s.carried for _, s in entries])})
            scoring.tracker.load_state_dict({e: s.tracker for e, s in entries if s.tracker is not None}, merge=True)
            for entity in names:
                self.owner[(sensor, entity)] = (partition, cls)
            n += len(entries)
        self.counts["states_restored"] += n
        return n
