"""The wiring: source -> FlowTable -> WindowAggregator -> StreamingScorer -> incidents -> sinks.

Only the service layer knows every stage. The daemon (`netad run`) and the offline commands
(`netad score`, `netad train`, `netad eval`, `netad bench`) all build their stages here, so
replaying a capture gives the same windows, scores and incidents as watching it live.
"""

from __future__ import annotations

import json
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from detector.alerting.incidents import IncidentTracker
from detector.alerting.rules import RuleSet, load_rules
from detector.capture.flows import FlowTable
from detector.capture.pcap import CaptureFile
from detector.capture.windows import WindowAggregator
from detector.config import Config
from detector.contracts import IncidentEvent, PacketBatch, ScoreBatch, WindowBatch
from detector.errors import ModelError
from detector.model.bundle import ModelBundle
from detector.model.scorer import StreamingScorer


class IncidentSink(Protocol):
    def publish(self, event: IncidentEvent) -> None: ...


def build_flow_table(cfg: Config) -> FlowTable:
    f = cfg.flows
    return FlowTable(
        tcp_idle_timeout_s=f.tcp_idle_timeout_s,
        udp_idle_timeout_s=f.udp_idle_timeout_s,
        other_idle_timeout_s=f.other_idle_timeout_s,
        active_timeout_s=f.active_timeout_s,
        max_flows=f.max_flows,
    )


def build_aggregator(cfg: Config) -> WindowAggregator:
    w = cfg.windows
    return WindowAggregator(
        home_net=cfg.home_net,
        bin_s=w.bin_s,
        bins=w.bins,
        lateness_s=w.lateness_s,
        max_entities=w.max_entities,
        entity_idle_s=w.entity_idle_s,
    )


def window_stream(cfg: Config, batches: Iterable[PacketBatch]) -> Iterator[WindowBatch]:
    """Packets -> closed windows (capture -> flows -> windows), flushed at the end."""
    flows = build_flow_table(cfg)
    windows = build_aggregator(cfg)
    for batch in batches:
        yield from windows.push(batch, flows.push(batch))
    yield from windows.flush()


def capture_batches(paths: Iterable[str | Path], batch_packets: int = 65536) -> Iterator[PacketBatch]:
    for path in paths:
        yield from CaptureFile(path, batch_packets=batch_packets)


def observer_of(cfg: Config) -> dict[str, str]:
    return {
        "name": cfg.sensor.id,
        "hostname": cfg.sensor.hostname or platform.node(),
        "interface": cfg.source.interface or "",
    }


@dataclass
class Pipeline:
    """The stages after the source, wired. `push(batch)` runs a batch through all of them."""

    cfg: Config
    bundle: ModelBundle
    sinks: list[IncidentSink] = field(default_factory=list)
    scores_out: IO[str] | None = None
    rules: RuleSet | None = None
    # called after each closed window is scored: (window, its scores, seconds the scorer took);
    # the daemon observes latency and keeps recent windows for retraining through it
    on_scored: Callable[[WindowBatch, ScoreBatch, float], None] | None = None

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.flows = build_flow_table(cfg)
        self.windows = build_aggregator(cfg)
        if self.bundle.schema != self.windows.schema:
            raise ModelError(
                f"model trained on feature schema {self.bundle.schema.name} v{self.bundle.schema.version}, "
                f"this netad computes {self.windows.schema.name} v{self.windows.schema.version}; retrain"
            )
        if (self.bundle.bin_s, self.bundle.bins) != (cfg.windows.bin_s, cfg.windows.bins):
            raise ModelError(
                f"model trained on windows of {self.bundle.bins} x {self.bundle.bin_s} s bins, "
                f"config has {cfg.windows.bins} x {cfg.windows.bin_s} s; retrain or fix windows.*"
            )
        self.scorer = StreamingScorer(
            self.bundle,
            device=cfg.model.device,
            warmup_windows=cfg.model.warmup_windows,
            max_entities=cfg.windows.max_entities,
            entity_idle_s=cfg.windows.entity_idle_s,
            precision=cfg.model.precision,
        )
        self.tracker = IncidentTracker(
            rules=self.rules if self.rules is not None else load_rules(cfg.incidents.rules),
            min_windows=cfg.incidents.min_windows,
            resolve_after_windows=cfg.incidents.resolve_after_windows,
            update_every_windows=cfg.incidents.update_every_windows,
            observer=observer_of(cfg),
            model_version=self.bundle.version,
        )
        self.packets = 0
        self.bytes = 0
        self.malformed = 0
        self.non_ip = 0
        self.entity_windows = 0
        self.anomalous_windows = 0
        self.incident_events: Counter[str] = Counter()
        self.incidents_by_entity: Counter[str] = Counter()
        self.last_window_end_ns: int | None = None

    def push(self, batch: PacketBatch) -> list[IncidentEvent]:
        self.packets += len(batch)
        self.bytes += int(batch.ip_len.sum())
        self.malformed += batch.malformed
        self.non_ip += batch.non_ip
        closed = self.windows.push(batch, self.flows.push(batch))
        return self._score(closed)

    def advance(self, now_ns: int) -> list[IncidentEvent]:
        """The clock moved on without packets (a quiet live link): close what is due."""
        return self._score(self.windows.advance(now_ns))

    def finish(self) -> list[IncidentEvent]:
        """The source ended: close every open window."""
        return self._score(self.windows.flush())

    def _score(self, closed: list[WindowBatch]) -> list[IncidentEvent]:
        events: list[IncidentEvent] = []
        for wb in closed:
            started = time.perf_counter()
            scores = self.scorer.score(wb)
            if self.on_scored is not None:
                self.on_scored(wb, scores, time.perf_counter() - started)
            self._record(scores)
            new = self.tracker.push(scores)
            for ev in new:
                self.incident_events[ev.action] += 1
                if ev.action == "opened":
                    self.incidents_by_entity[ev.entity] += 1
                for sink in self.sinks:
                    sink.publish(ev)
            events.extend(new)
            self.last_window_end_ns = wb.window_end_ns
        return events

    def _record(self, scores: ScoreBatch) -> None:
        self.entity_windows += len(scores)
        self.anomalous_windows += int(scores.anomalous.sum())
        if self.scores_out is not None:
            for s in scores:
                self.scores_out.write(json.dumps(s.as_record(), separators=(",", ":")) + "\n")

    def stats(self) -> dict[str, int]:
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "malformed": self.malformed,
            "non_ip": self.non_ip,
            "entity_windows": self.entity_windows,
            "anomalous_windows": self.anomalous_windows,
            "incidents_opened": self.incident_events["opened"],
            "incidents_open": self.tracker.open_incidents,
            **self.flows.stats(),
            **self.windows.stats(),
        }
