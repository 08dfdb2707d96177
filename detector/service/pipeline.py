"""The wiring: source -> FlowTable -> WindowAggregator -> Scoring (scorer, incidents) -> sinks.

Only the service layer knows every stage. The daemon (`netad run`) and the offline commands
(`netad score`, `netad train`, `netad eval`, `netad bench`) all build their stages here, so
replaying a capture gives the same windows, scores and incidents as watching it live.

Flow-record sources (NetFlow/IPFIX, Zeek conn.log) give FlowRecordBatch instead of packets;
for them there is no FlowTable (the exporter already made the flows) and the windows come
from a FlowWindowAggregator under FLOW_SCHEMA; everything after the windows is the same::

    PacketBatch ────► FlowTable ─► WindowAggregator ─────┐
    FlowRecordBatch ─────────────► FlowWindowAggregator ─┴─► Scoring (service.scoring) ─► sinks
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from detector.alerting.rules import RuleSet
from detector.capture.flowrecords.zeeklog import ZeekConnLog
from detector.capture.flows import FlowTable
from detector.capture.packets.pcap import CaptureFile
from detector.capture.windows import HomeNet, WindowAggregator
from detector.capture.windows.flow import FlowWindowAggregator
from detector.config import Config
from detector.contracts import ENTITY_GLOBAL, FeatureSchema, FlowRecordBatch, IncidentEvent, PacketBatch, ScoreBatch, WindowBatch, addr_to_pair
from detector.errors import ModelError
from detector.model.bundle import ModelBundle
from detector.service.scoring import IncidentSink, Scoring


def build_flow_table(cfg: Config) -> FlowTable:
    f = cfg.flows
    return FlowTable(
        tcp_idle_timeout_s=f.tcp_idle_timeout_s,
        udp_idle_timeout_s=f.udp_idle_timeout_s,
        other_idle_timeout_s=f.other_idle_timeout_s,
        active_timeout_s=f.active_timeout_s,
        max_flows=f.max_flows,
    )


def build_aggregator(cfg: Config, flow_records: bool = False) -> WindowAggregator | FlowWindowAggregator:
    """The window stage: packet windows, or flow-record windows (FLOW_SCHEMA, with
    `windows.flow_lateness_s`) when the input is flow records (the daemon: as its source
    gives, `cfg.source.flow_records`; offline commands: as their input files are)."""
    w = cfg.windows
    common = {"home_net": cfg.home_net, "bin_s": w.bin_s, "bins": w.bins, "max_entities": w.max_entities,
              "entity_idle_s": w.entity_idle_s, "history_s": w.history_s, "history_warmup_s": w.history_warmup_s}
    if flow_records:
        return FlowWindowAggregator(lateness_s=w.flow_lateness_s, **common)
    return WindowAggregator(lateness_s=w.lateness_s, **common)


def build_windowing(cfg: Config, flow_records: bool = False) -> tuple[FlowTable | None, WindowAggregator | FlowWindowAggregator]:
    """(flow table, window aggregator); no flow table for flow records (the exporter made the flows)."""
    windows = build_aggregator(cfg, flow_records)
    return (None if isinstance(windows, FlowWindowAggregator) else build_flow_table(cfg)), windows


def close_windows(flows: FlowTable | None, windows: WindowAggregator | FlowWindowAggregator,
                  batch: PacketBatch | FlowRecordBatch) -> list[WindowBatch]:
    """One source batch through the window stages; the windows it closed."""
    if isinstance(windows, FlowWindowAggregator) and isinstance(batch, FlowRecordBatch):
        return windows.push(batch)
    if isinstance(windows, WindowAggregator) and flows is not None and isinstance(batch, PacketBatch):
        return windows.push(batch, flows.push(batch))
    wanted = "flow records" if flows is None else "packets"
    raise TypeError(f"these stages were built for {wanted}, not {type(batch).__name__}")


def window_stream(cfg: Config, batches: Iterable[PacketBatch | FlowRecordBatch],
                  flow_records: bool = False) -> Iterator[WindowBatch]:
    """Source batches -> closed windows (capture -> flows -> windows), flushed at the end."""
    flows, windows = build_windowing(cfg, flow_records)
    for batch in batches:
        yield from close_windows(flows, windows, batch)
    yield from windows.flush()


def capture_batches(paths: Iterable[str | Path], batch_packets: int = 65536) -> Iterator[PacketBatch]:
    for path in paths:
        yield from CaptureFile(path, batch_packets=batch_packets)


def conn_log_batches(paths: Iterable[str | Path], batch_records: int = 65536) -> Iterator[FlowRecordBatch]:
    for path in paths:
        yield from ZeekConnLog(path, batch_records=batch_records)


def input_batches(paths: Iterable[str | Path], flow_records: bool, batch_size: int = 65536) -> Iterator[PacketBatch | FlowRecordBatch]:
    """An offline command's input files: captures (packets) or Zeek conn.logs (flow records)."""
    return conn_log_batches(paths, batch_size) if flow_records else capture_batches(paths, batch_size)


def observer_of(cfg: Config) -> dict[str, str]:
    src = cfg.source
    observer = {
        "name": cfg.sensor.id,
        "hostname": cfg.sensor.hostname or platform.node(),
        "interface": src.interface or "",
    }
    if src.type == "netflow":  # the exporters themselves are added per incident (ExporterIndex)
        host = f"[{src.bind_address}]" if ":" in src.bind_address else src.bind_address
        observer["collector"] = f"{host}:{src.port}"
    return observer


# feature schema name -> (what it is computed from, the source types that give it, how to train on it)
_INPUTS = {
    "packet": ("packets", "pcap, interface", "netad train --pcap CAPTURE"),
    "flow": ("flow records", "netflow, zeek", "netad train --conn-log CONN_LOG"),
}


def schema_mismatch(model: FeatureSchema, ours: FeatureSchema) -> str:
    """Why a model cannot score these windows, in words an operator can act on."""
    m, o = _INPUTS.get(model.name), _INPUTS.get(ours.name)
    if model.name != ours.name and m is not None and o is not None:
        return (f"the model was trained on {m[0]} (feature schema {model.name} v{model.version}) and cannot score "
                f"{o[0]} (feature schema {ours.name} v{ours.version}, from sources {o[1]}); "
                f"use a model trained on {o[0]} ({o[2]})")
    return (f"model trained on feature schema {model.name} v{model.version}, "
            f"this netad computes {ours.name} v{ours.version}; retrain")


class ExporterIndex:
    """Which exporters (NetFlow/IPFIX exporter and domain, or Zeek log) reported each home
    host's records, for the `exporter` of an incident's observer: the router or sensor that
    saw the traffic. Per batch a few numpy calls; a Python step only for a (host, exporter)
    pair not seen before. Bounded: past `max_hosts` hosts it starts over."""

    MAX_NAMES = 8
    _K1, _K2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F)

    def __init__(self, home_net: list[str], max_hosts: int) -> None:
        self._home = HomeNet(home_net)
        self.max_hosts = max_hosts
        self.names: dict[int, str] = {}
        self._of_host: dict[tuple[int, int], set[int]] = {}
        self._known = np.zeros(0, dtype=np.uint64)  # sorted keys of the pairs in _of_host

    def note(self, batch: FlowRecordBatch) -> None:
        for eid, exporter in batch.exporters.items():
            self.names[eid] = exporter.name
        if len(self._of_host) > self.max_hosts:
            self._of_host.clear()
            self._known = np.zeros(0, dtype=np.uint64)
        home_s = self._home.contains(batch.src_hi, batch.src_lo)
        home_d = self._home.contains(batch.dst_hi, batch.dst_lo)
        hi = np.concatenate([batch.src_hi[home_s], batch.dst_hi[home_d]])
        lo = np.concatenate([batch.src_lo[home_s], batch.dst_lo[home_d]])
        exp = np.concatenate([batch.exporter[home_s], batch.exporter[home_d]]).astype(np.uint64)
        key = (lo * self._K1) ^ (hi * self._K2) ^ (exp << np.uint64(40))  # wraps: a hash of the pair
        uniq, first = np.unique(key, return_index=True)
        new = ~np.isin(uniq, self._known, assume_unique=True)
        if not new.any():
            return
        rows = first[new]
        for h, low, e in zip(hi[rows].tolist(), lo[rows].tolist(), exp[rows].tolist(), strict=True):
            self._of_host.setdefault((h, low), set()).add(e)
        self._known = np.union1d(self._known, uniq[new])

    def of(self, entity: str) -> str:
        """The exporters of an entity's records ("a,b"); all seen for `global` or a host not known here."""
        pair = None if entity == ENTITY_GLOBAL else _pair_or_none(entity)
        ids = self._of_host.get(pair) if pair is not None else None
        names = sorted({self.names[e] for e in (ids or self.names) if e in self.names})
        more = len(names) - self.MAX_NAMES
        return ",".join(names[: self.MAX_NAMES]) + (f",+{more} more" if more > 0 else "")


def _pair_or_none(entity: str) -> tuple[int, int] | None:
    try:
        return addr_to_pair(entity)
    except ValueError:
        return None


@dataclass
class Pipeline:
    """The stages after the source, wired. `push(batch)` runs a batch through all of them;
    everything after the windows is the Scoring stage (`self.scoring`)."""

    cfg: Config
    bundle: ModelBundle
    sinks: list[IncidentSink] = field(default_factory=list)
    scores_out: IO[str] | None = None
    rules: RuleSet | None = None
    # called after each closed window is scored: (window, its scores, seconds the scorer took)
    on_scored: Callable[[WindowBatch, ScoreBatch, float], None] | None = None
    # the input is flow records (FlowRecordBatch), not packets (the daemon: cfg.source.flow_records)
    flow_records: bool = False

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.flows, self.windows = build_windowing(cfg, self.flow_records)
        if self.bundle.schema != self.windows.schema:
            raise ModelError(f"model {self.bundle.version}: {schema_mismatch(self.bundle.schema, self.windows.schema)}")
        if (self.bundle.bin_s, self.bundle.bins) != (cfg.windows.bin_s, cfg.windows.bins):
            raise ModelError(
                f"model trained on windows of {self.bundle.bins} x {self.bundle.bin_s} s bins, "
                f"config has {cfg.windows.bins} x {cfg.windows.bin_s} s; retrain or fix windows.*"
            )
        self.exporters = ExporterIndex(cfg.home_net, 2 * cfg.windows.max_entities) if self.flows is None else None
        self.scoring = Scoring(cfg, self.bundle, observer_of(cfg), rules=self.rules, sinks=self.sinks, scores_out=self.scores_out,
                               on_scored=self.on_scored, annotate=self._add_exporter if self.exporters is not None else None)
        self.packets = 0  # for flow records: the packets they report
        self.bytes = 0
        self.malformed = 0
        self.non_ip = 0

    def _add_exporter(self, event: IncidentEvent) -> None:
        if self.exporters is not None and self.exporters.names:
            event.observer["exporter"] = self.exporters.of(event.entity)

    @property
    def last_window_end_ns(self) -> int | None:
        return self.scoring.last_window_end_ns

    def push(self, batch: PacketBatch | FlowRecordBatch) -> list[IncidentEvent]:
        if isinstance(batch, FlowRecordBatch):
            self.packets += int(batch.packets.sum())
            self.bytes += int(batch.bytes.sum())
            if self.exporters is not None and len(batch):
                self.exporters.note(batch)
        else:
            self.packets += len(batch)
            self.bytes += int(batch.ip_len.sum())
            self.non_ip += batch.non_ip
        self.malformed += batch.malformed
        return self._score(close_windows(self.flows, self.windows, batch))

    def advance(self, now_ns: int) -> list[IncidentEvent]:
        """The clock moved on without packets (a quiet live link): close what is due."""
        return self._score(self.windows.advance(now_ns))

    def finish(self) -> list[IncidentEvent]:
        """The source ended: close every open window."""
        return self._score(self.windows.flush())

    def _score(self, closed: list[WindowBatch]) -> list[IncidentEvent]:
        events: list[IncidentEvent] = []
        for window in closed:
            events.extend(self.scoring.process(window)[1])
        return events

    def stats(self) -> dict[str, int]:
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "malformed": self.malformed,
            "non_ip": self.non_ip,
            "entity_windows": self.scoring.entity_windows,
            "anomalous_windows": self.scoring.anomalous_windows,
            "incidents_opened": self.scoring.count("opened"),
            "incidents_open": self.scoring.tracker.open_incidents,
            **(self.flows.stats() if self.flows is not None else {}),
            **self.windows.stats(),
        }
