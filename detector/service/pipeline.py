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
import structlog

from detector.alerting.rules import RuleSet
from detector.capture.clock import EventClock, WallClock
from detector.capture.flowrecords.zeeklog import LongConnections, ZeekConnLog
from detector.capture.flows import FlowTable
from detector.capture.packets.pcap import CaptureFile, first_timestamp_ns, read_ahead
from detector.capture.windows import HomeNet, WindowAggregator
from detector.capture.windows.flow import FlowWindowAggregator
from detector.capture.windows.sharded import FlowShards, ShardedWindowAggregator
from detector.config import Config, home_net_change
from detector.contracts import (
    ENTITY_GLOBAL,
    CarriedHistory,
    FeatureSchema,
    FlowRecordBatch,
    IncidentEvent,
    PacketBatch,
    ScoreBatch,
    WindowBatch,
    addr_to_pair,
)
from detector.errors import ModelError
from detector.model.bundle import ModelBundle
from detector.service._timebounds import TimeBounds
from detector.service.heap import HEAP
from detector.service.scoring import IncidentSink, ScoresFile, Scoring, ScoringThread

log = structlog.get_logger()


def _flow_table_kwargs(cfg: Config) -> dict[str, float | int]:
    f = cfg.flows
    return {"tcp_idle_timeout_s": f.tcp_idle_timeout_s, "udp_idle_timeout_s": f.udp_idle_timeout_s,
            "other_idle_timeout_s": f.other_idle_timeout_s, "active_timeout_s": f.active_timeout_s,
            "max_flows": f.max_flows}


def build_flow_table(cfg: Config) -> FlowTable:
    return FlowTable(**_flow_table_kwargs(cfg))  # type: ignore[arg-type]


def _window_kwargs(cfg: Config) -> dict:
    w = cfg.windows
    return {"home_net": cfg.home_net, "bin_s": w.bin_s, "bins": w.bins, "max_entities": w.max_entities,
            "entity_idle_s": w.entity_idle_s, "history_s": w.history_s, "history_warmup_s": w.history_warmup_s}


def build_aggregator(cfg: Config, flow_records: bool = False) -> WindowAggregator | FlowWindowAggregator:
    """The window stage: packet windows, or flow-record windows (FLOW_SCHEMA, with
    `windows.flow_lateness_s`) when the input is flow records (the daemon: as its source
    gives, `cfg.source.flow_records`; offline commands: as their input files are)."""
    common = _window_kwargs(cfg)
    if flow_records:
        return FlowWindowAggregator(lateness_s=cfg.windows.flow_lateness_s, **common)
    return WindowAggregator(lateness_s=cfg.windows.lateness_s, **common)


_TRIM_AFTER_SLOTS = 4096  # entity slots a table must have reached before its shrinking is worth a trim


@dataclass
class WindowStages:
    """The capture stages after a source, wired: the event clock (which records' times are
    believed), the flow table (packets only: the exporter made the flows of flow records)
    and the window aggregator. `push(batch)` hands on the windows it closes."""

    clock: EventClock
    flows: FlowTable | FlowShards | None
    windows: WindowAggregator | FlowWindowAggregator
    slots_high: int = 0  # the most entity slots since memory was last handed back
    reporting_lag_ns: int = 0  # the longest the source took to report a packet (FlowRecordBatch.reporting_lag_ns)
    lag_warned_ns: int = 0  # the reporting lag last warned of, past the lateness (_lag_grew)
    # hand on every window, a capture's partial first and last too (training's window_stream).
    # Scoring lets them go (push, flush); training keeps them: without the honeypot's
    # partial first window, scored cold in calibration, fold A's 6 h models calibrated lower
    # host thresholds in 4 of 4 seeds and opened 6 more benign incidents (EVALUATION xli)
    every_window: bool = False

    def push(self, batch: PacketBatch | FlowRecordBatch, wall: WallClock | None = None) -> Iterator[WindowBatch]:
        """One source batch through the stages, handing on each window it closes as it
        closes (consume it whole: the window stage takes the batch in as it goes); `wall`:
        a live source's clock, whose time (netad's: a step back of the wall clock does not
        move it back) the records are judged by and a live capture's packets dated in. A
        window is scored before the next is built: a batch of a sparse capture can close
        dozens of windows, each holding every entity."""
        now_ns = None
        if wall is not None:
            now_ns = wall.now_ns()
            batch = wall.date(batch)
        windows = self.windows
        if isinstance(windows, FlowWindowAggregator) and isinstance(batch, FlowRecordBatch):
            if batch.watched_from_ns is not None and not self.every_window:
                self._watch_from(batch.watched_from_ns)
            if batch.reporting_lag_ns is not None and batch.reporting_lag_ns > self.reporting_lag_ns:
                self._lag_grew(batch.reporting_lag_ns)
            return windows.stream(self.clock.admit(batch, now_ns))
        if isinstance(windows, WindowAggregator) and self.flows is not None and isinstance(batch, PacketBatch):
            batch = self.clock.admit(batch, now_ns)
            if len(batch) and windows.watched_from_ns is None and not self.every_window:  # a capture from its start
                windows.watch_from(int(batch.ts_ns.min()))
            return windows.stream(batch, self.flows.push(batch))
        wanted = "flow records" if self.flows is None else "packets"
        raise TypeError(f"these stages were built for {wanted}, not {type(batch).__name__}")

    def _lag_grew(self, lag_ns: int) -> None:
        """The exporters report flows later than before. Past the windows' lateness, the
        parts of a flow in windows already closed are dropped as late (`late_packets`): a
        router's default active timeout of 30 minutes against 90 s of lateness loses most
        of every long flow, and only a counter said so. Warned once, and again each time
        the lag reaches twice what was last warned of."""
        lateness_ns = self.windows.lateness_ns
        if lag_ns > lateness_ns and lag_ns >= 2 * self.lag_warned_ns:
            self.lag_warned_ns = lag_ns
            log.warning("flows_reported_past_lateness", reporting_lag_s=round(lag_ns / 1e9, 1),
                        flow_lateness_s=round(lateness_ns / 1e9, 1),
                        reason="the exporters report flows this long after they began (their active timeout): the parts "
                               "of a flow in windows closed by then are dropped as late; set windows.flow_lateness_s to "
                               "at least this, or the exporters' active timeout under it")
        self.reporting_lag_ns = lag_ns

    def _watch_from(self, start_ns: int) -> None:
        """Flow records whole only from `start_ns` (an exporter whose exports before then were
        lost: FlowRecordBatch.watched_from_ns): the windows before it are let go, as a live
        capture's before it opened. Only until the first window is handed on: an exporter met
        later had never been heard, so the windows scored before it came lacked it alike."""
        windows = self.windows
        if windows.windows_closed == 0 and (windows.watched_from_ns is None or start_ns > windows.watched_from_ns):
            windows.watch_from(start_ns)

    def hand_back_memory(self) -> None:
        """After each batch (its windows consumed): when the entity tables shrank back to a
        quarter (a flood's entities expired), collect and hand the freed memory back to the
        system; else as the process's growth asks (HEAP). glibc keeps freed heap for reuse:
        after a flood of spoofed home addresses that was a GiB resident for good."""
        slots = self.windows.slots
        self.slots_high = max(self.slots_high, slots)
        if self.slots_high >= _TRIM_AFTER_SLOTS and 4 * slots <= self.slots_high:
            self.slots_high = slots
            HEAP.release()
        else:
            HEAP.check()

    def flush(self) -> list[WindowBatch]:
        """The input ended: close every open window (records still held as a jump were never
        confirmed). A capture's windows are those it watched, from the bin of its first
        packet (push) to that of its last: a last window it ends in before its last bin is
        let go, as at a live stop, since scored its empty tail reads as the link falling
        silent (the office demo cut 20 or 40 s into a minute scored its link at 30 and 15
        times its threshold there). Flow records' windows are all closed: an exporter
        writes a flow when it ends, so the last records' times do not say what was watched;
        and so are all of training's (every_window)."""
        self.clock.finish()
        return self.windows.flush() if self.flows is None or self.every_window else self.windows.stop()

    def stop(self) -> list[WindowBatch]:
        """A live source stopped: close the windows it was watched through (EntityWindows.stop)
        and reported (a NetFlow exporter's: those that ended more than its reporting lag
        before the stop; what it owes for the others it sends to a collector no longer there)."""
        self.clock.finish()
        return self.windows.stop(self.reporting_lag_ns)

    def stats(self) -> dict[str, int]:
        return {**self.clock.stats(), **(self.flows.stats() if self.flows is not None else {}), **self.windows.stats()}

    def worker_stats(self) -> list[dict[str, float]]:
        """Per capture worker (source.workers > 1): packets, busy seconds, its flow table's
        counters; [] for one process."""
        return self.flows.worker_stats() if isinstance(self.flows, FlowShards) else []

    def close(self) -> None:
        """Stop the capture workers, if any (also done at exit)."""
        if isinstance(self.flows, FlowShards):
            self.flows.close()


def build_clock(cfg: Config, flow_records: bool = False) -> EventClock:
    """The event clock of a source: `source.max_ahead_s`, `source.max_jump_s` (at least the
    window stage's lateness: a record it would still take is never out of bounds)."""
    lateness_s = cfg.windows.flow_lateness_s if flow_records else cfg.windows.lateness_s
    return EventClock(max_ahead_s=cfg.source.max_ahead_s, max_jump_s=max(cfg.source.max_jump_s, lateness_s))


def build_windowing(cfg: Config, flow_records: bool = False, workers: int | None = None,
                    carried: CarriedHistory | None = None, every_window: bool = False) -> WindowStages:
    """The clock, flow table (none for flow records) and window aggregator of a source.
    Packets with `source.workers` (or `workers`) > 1: the flow table and the per-bin
    accumulators in that many capture worker processes (capture.windows.sharded), merged
    per window: the same windows as one process. The peer history starts from `carried`
    (the model bundle's: what its training span ended with), if given. `every_window`:
    WindowStages.every_window (training's)."""
    workers = cfg.source.workers if workers is None else workers
    if workers > 1 and not flow_records:
        shards = FlowShards(workers, _flow_table_kwargs(cfg), cfg.windows.bins, cfg.windows.bin_s)
        windows: WindowAggregator | FlowWindowAggregator = ShardedWindowAggregator(
            shards, lateness_s=cfg.windows.lateness_s, **_window_kwargs(cfg))
        flows: FlowTable | FlowShards | None = shards
    else:
        windows = build_aggregator(cfg, flow_records)
        flows = None if isinstance(windows, FlowWindowAggregator) else build_flow_table(cfg)
    stages = WindowStages(build_clock(cfg, flow_records), flows, windows, every_window=every_window)
    if carried is not None:
        try:
            windows.carry_in(carried)
        except (KeyError, ValueError) as exc:  # a bundle whose hashes match but whose history does not load
            stages.close()
            raise ModelError(f"the model bundle's peer history: {exc}") from None
    return stages


def window_stream(cfg: Config, batches: Iterable[PacketBatch | FlowRecordBatch], flow_records: bool = False,
                  carried: CarriedHistory | None = None,
                  ended: Callable[[CarriedHistory], None] | None = None) -> Iterator[WindowBatch]:
    """Source batches -> closed windows (capture -> flows -> windows), flushed at the end;
    the peer history starts from `carried` (a model bundle's), and `ended` is given the one
    the stream ended with (training keeps it in the bundle). Every window, a capture's
    partial first and last too (WindowStages.every_window): what training learns from, and
    the baselines' features in eval (a superset of the windows scored)."""
    stages = build_windowing(cfg, flow_records, carried=carried, every_window=True)
    end_ns = None
    try:
        for batch in batches:
            for wb in stages.push(batch):
                end_ns = wb.window_end_ns
                yield wb
        for wb in stages.flush():
            end_ns = wb.window_end_ns
            yield wb
        if ended is not None and end_ns is not None:
            ended(CarriedHistory(stages.windows.history.state_dict(), end_ns))
    finally:
        stages.close()


def capture_batches(paths: Iterable[str | Path], batch_packets: int = 65536,
                    damage: dict[str, str] | None = None) -> Iterator[PacketBatch]:
    """The packets of capture files, one after the other. A file cut mid-record (or
    corrupt) is read up to the damage, which is logged (`capture_damaged`) and, when
    `damage` is given, put there (path -> what and where): offline commands report it in
    their summary and exit status."""
    before_ns: int | None = None  # the last packet of the captures read so far
    before: str | Path | None = None
    for path in _in_time_order(list(paths)):
        capture = CaptureFile(path, batch_packets=batch_packets)
        first = True
        for batch in read_ahead(capture):
            if len(batch):
                if first and before_ns is not None and int(batch.ts_ns.min()) < before_ns:
                    log.warning("captures_overlap", path=str(path), previous=str(before),
                                overlap_s=round((before_ns - int(batch.ts_ns.min())) / 1e9, 3),
                                reason="its packets dated before the last one of the captures before it arrive late and "
                                       "are dropped (late_packets): merge captures that overlap into one first (mergecap -w)")
                first = False
                before_ns = max(before_ns or 0, int(batch.ts_ns.max()))
            yield batch
        before = path
        if capture.damage:
            log.warning("capture_damaged", path=str(path), damage=capture.damage, packets_read=capture.packets)
            if damage is not None:
                damage[str(path)] = capture.damage


def _in_time_order(paths: list[str | Path]) -> list[str | Path]:
    """Captures in the order of their first packets: given as a shell glob lists rotated
    ones (tcpdump -C: capture.pcap1 ... capture.pcap10) out of order, and each capture after
    a later one was all late (a 1 h demo in three parts, the second given last: 129,948
    packets dropped and other incidents). Said when the order changes (`captures_reordered`);
    the same capture given twice keeps its places."""
    if len(paths) < 2:
        return paths
    firsts = [first_timestamp_ns(p) for p in paths]
    order = sorted(range(len(paths)), key=lambda i: (firsts[i] is None, firsts[i] or 0, i))
    if order != sorted(order):
        log.warning("captures_reordered", given=[str(p) for p in paths], read=[str(paths[i]) for i in order],
                    reason="read in the order of their first packets, as they were captured")
    return [paths[i] for i in order]


def conn_log_batches(paths: Iterable[str | Path], batch_records: int = 65536) -> Iterator[FlowRecordBatch]:
    """The records of conn.logs read one after another (Zeek's hourly logs). A connection
    logged as it went in one hour's conn_long.log and ended in the next hour's conn.log is
    counted once: the logs share what was counted of each (LongConnections)."""
    ledger = LongConnections()
    for path in paths:
        yield from ZeekConnLog(path, batch_records=batch_records, ledger=ledger)


def input_batches(paths: Iterable[str | Path], flow_records: bool, batch_size: int = 65536,
                  damage: dict[str, str] | None = None) -> Iterator[PacketBatch | FlowRecordBatch]:
    """An offline command's input files: captures (packets) or Zeek conn.logs (flow records);
    damaged captures into `damage` (capture_batches)."""
    return conn_log_batches(paths, batch_size) if flow_records else capture_batches(paths, batch_size, damage)


def time_lines(stats: dict[str, int]) -> list[str]:
    """A run summary's lines on time (none when it held no surprise): records refused by the
    event clock, jumps believed, quiet windows skipped."""
    out = []
    ahead, behind = stats.get("records_ahead_of_time", 0), stats.get("records_behind_time", 0)
    if ahead or behind:
        out.append(f"time         {ahead:,} records dated too far ahead, {behind:,} too far behind: refused")
    if stats.get("time_jumps", 0) or stats.get("windows_skipped", 0):
        out.append(f"gaps         {stats.get('time_jumps', 0):,} jumps ahead believed, "
                   f"{stats.get('windows_skipped', 0):,} windows of silence skipped")
    return out


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
    everything after the windows is the Scoring stage (`self.scoring`). With capture workers
    (`source.workers` > 1, packets) the Scoring stage runs on its own thread (ScoringThread),
    fed the closed windows in order: call `settle()` before reading or changing its state
    (`finish()` settles)."""

    cfg: Config
    bundle: ModelBundle
    sinks: list[IncidentSink] = field(default_factory=list)
    scores_out: IO[str] | ScoresFile | None = None
    rules: RuleSet | None = None
    # called after each closed window is scored: (window, its scores, seconds the scorer took)
    on_scored: Callable[[WindowBatch, ScoreBatch, float], None] | None = None
    # the input is flow records (FlowRecordBatch), not packets (the daemon: cfg.source.flow_records)
    flow_records: bool = False
    # the source follows the present: its records' times are also judged by the wall clock
    live: bool = False
    # what the packets come from (a capture file, an interface), named in records-out-of-time incidents
    origin: str = ""
    # the wall clock a live source is judged by (the daemon's, which its job schedule follows too)
    wall: WallClock = field(default_factory=WallClock)

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.stages = build_windowing(cfg, self.flow_records, carried=self.bundle.history)
        self.flows, self.windows = self.stages.flows, self.stages.windows
        if self.bundle.schema != self.windows.schema:
            raise ModelError(f"model {self.bundle.version}: {schema_mismatch(self.bundle.schema, self.windows.schema)}")
        if (self.bundle.bin_s, self.bundle.bins) != (cfg.windows.bin_s, cfg.windows.bins):
            raise ModelError(
                f"model trained on windows of {self.bundle.bins} x {self.bundle.bin_s} s bins, "
                f"config has {cfg.windows.bins} x {cfg.windows.bin_s} s; retrain or fix windows.*"
            )
        change = home_net_change(self.bundle.training.get("home_net"), cfg.home_net)
        if change:
            raise ModelError(f"model {self.bundle.version}: {change}")
        self.exporters = ExporterIndex(cfg.home_net, 2 * cfg.windows.max_entities) if self.flows is None else None
        self.scoring = Scoring(cfg, self.bundle, observer_of(cfg), rules=self.rules, sinks=self.sinks, scores_out=self.scores_out,
                               on_scored=self.on_scored, annotate=self._add_exporter if self.exporters is not None else None)
        sharded = isinstance(self.windows, ShardedWindowAggregator)
        self.scoring_thread = ScoringThread() if sharded else None
        self.time_bounds = TimeBounds(self.stages.clock, self._origin_name, self._publish,
                                      lambda: self.scoring.observer, lambda: self.scoring.bundle.version)
        self.packets = 0  # for flow records: the packets they report
        self.bytes = 0
        self.malformed = 0
        self.non_ip = 0

    def _origin_name(self, origin: int) -> str:
        """An exporter's name (flow records: origin is its id), else the packets' origin."""
        if self.exporters is not None and origin in self.exporters.names:
            return self.exporters.names[origin]
        return self.origin or self.cfg.source.interface or str(self.cfg.source.path or "") or "input"

    def _add_exporter(self, event: IncidentEvent) -> None:
        if self.exporters is not None and self.exporters.names:
            event.observer["exporter"] = self.exporters.of(event.entity)

    @property
    def last_window_end_ns(self) -> int | None:
        return self.scoring.last_window_end_ns

    def push(self, batch: PacketBatch | FlowRecordBatch) -> None:
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
        self._score(self.stages.push(batch, self.wall if self.live else None))
        self.time_bounds.check()
        self.stages.hand_back_memory()

    def advance(self, now_ns: int) -> None:
        """The clock moved on without packets (a quiet live link): close what is due."""
        self._score(self.windows.advance(now_ns))
        self.stages.hand_back_memory()

    def finish(self) -> None:
        """The source ended: close every open window, and see them scored."""
        self._end(self.stages.flush())

    def stop(self) -> None:
        """A live source stopped: close the windows it was watched through (WindowStages.stop),
        and see them scored."""
        self._end(self.stages.stop())

    def _end(self, closed: Iterable[WindowBatch]) -> None:
        self._score(closed)
        self.time_bounds.finish()
        self.settle()

    def settle(self) -> None:
        """Wait until every window closed so far is scored and its events published (at once
        without a scoring thread); a scoring error raises here."""
        if self.scoring_thread is not None:
            self.scoring_thread.settle()

    def _score(self, closed: Iterable[WindowBatch]) -> None:
        for window in closed:
            self.after_scored(self.scoring.process, window)

    def after_scored(self, fn: Callable[..., object], *args: object) -> None:
        """`fn(*args)` once every window closed so far is scored, on the scoring thread if
        there is one (in order with its work, without waiting for it), else now."""
        if self.scoring_thread is not None:
            self.scoring_thread.submit(fn, *args)
        else:
            fn(*args)

    def _publish(self, event: IncidentEvent) -> None:
        """An event of the event clock's (records out of time), in order with the windows' events."""
        self.after_scored(self.scoring.publish, event)

    def stats(self) -> dict[str, int]:
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "malformed": self.malformed,
            "non_ip": self.non_ip,
            "entity_windows": self.scoring.entity_windows,
            "anomalous_windows": self.scoring.anomalous_windows,
            "alarms_left": self.scoring.alarms_left,
            "incidents_opened": self.scoring.count("opened"),
            "incidents_open": self.scoring.tracker.open_incidents,
            "entity_slots": self.windows.slots,
            **self.stages.stats(),
            **({"wall_clock_steps_back": self.wall.steps_back} if self.live else {}),
        }
