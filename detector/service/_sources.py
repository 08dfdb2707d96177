"""The daemon's sources: a capture file replayed (optionally paced), a live interface, a
NetFlow v5/v9/IPFIX collector, or a Zeek conn.log (read to its end, or followed).

Where it stands: the head of the flow, for `netad run` only (offline commands read their
files with service.pipeline.input_batches). Every source is an iterator of PacketBatch (pcap,
interface) or FlowRecordBatch (netflow, zeek) with a `stop` attribute that a signal handler
may set, a `kind` ("live" or "replay"), an `identity` and `stats()`. Live ones hand back an
EMPTY batch at least every `poll_s` while they have nothing (a paced replay too, while it
waits), so the run loop keeps its clock: signals, scheduled jobs, watchdog pings and (live)
windows closed on the wall clock never wait for traffic.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog

from detector.capture.flowrecords.netflow import NetflowCollector, NetflowParser
from detector.capture.flowrecords.zeeklog import ZeekConnLog
from detector.capture.packets.bpf import bpf_problem
from detector.capture.packets.pcap import CaptureFile, read_ahead
from detector.capture.windows.flow import FlowWindowAggregator
from detector.config import SourceConfig
from detector.contracts import FlowRecordBatch, PacketBatch
from detector.errors import CheckpointError, ConfigError
from detector.service.state import CHECKPOINT_DIR, Checkpoint, checkpoint_in_use, load_checkpoint, set_aside

log = structlog.get_logger()

POLL_S = 0.2  # the longest the run loop waits for a batch (live idle poll, replay pacing)


class Source(Protocol):
    kind: str  # "replay" or "live"
    rereads: bool  # live, and what it handed on can be read again after a restart (a followed conn.log)
    identity: dict[str, str]  # what a checkpoint records to recognise the same source
    stop: bool

    def __iter__(self) -> Iterator[PacketBatch | FlowRecordBatch]: ...

    def stats(self) -> dict[str, int]: ...


class ReplaySource:
    """A capture file replayed as batches: as fast as possible (speed 0) or paced at `speed`
    times the original rate, so that replay and live follow the same clock rules.

    `resume_from_ns` skips packets older than that (the end of the last window a checkpoint
    covered), so a restarted replay continues where the previous run stopped instead of
    replaying what its restored state has already seen.
    """

    kind = "replay"
    rereads = False

    def __init__(self, path: Path, speed: float = 0.0, batch_packets: int = 65536,
                 resume_from_ns: int | None = None, poll_s: float = POLL_S) -> None:
        self.path = Path(path)
        self.speed = speed
        self.batch_packets = batch_packets
        self.resume_from_ns = resume_from_ns
        self.poll_s = poll_s
        self.capture = CaptureFile(self.path, batch_packets=batch_packets)
        self.identity = {"type": "pcap", "path": str(self.path.resolve())}  # = source_identity()
        self.stop = False
        self.skipped_packets = 0  # before resume_from_ns
        self._wall0: float | None = None  # pacing: wall and event time of the first packet
        self._event0: int | None = None

    def __iter__(self) -> Iterator[PacketBatch]:
        for batch in self._resumed(read_ahead(self.capture)):
            if self.stop:
                return
            if self.speed <= 0 or len(batch) == 0:
                yield batch
                continue
            yield from self._paced(batch)
            if self.stop:
                return
        if self.capture.damage:  # the summary says it too; the journal is where an operator looks
            log.warning("capture_damaged", path=str(self.path), damage=self.capture.damage, packets_read=self.capture.packets)

    def _resumed(self, batches: Iterable[PacketBatch]) -> Iterator[PacketBatch]:
        for batch in batches:
            if self.resume_from_ns is not None and len(batch) and int(batch.ts_ns.min()) < self.resume_from_ns:
                keep = batch.ts_ns >= self.resume_from_ns
                self.skipped_packets += int((~keep).sum())
                batch = batch.take(keep)  # may be empty: still yielded, the loop stays responsive
            yield batch

    def _paced(self, batch: PacketBatch) -> Iterator[PacketBatch]:
        """Slices of about poll_s of wall time each, due at their original (scaled) time;
        an empty batch every poll_s while waiting for one."""
        if self._event0 is None:
            self._event0, self._wall0 = int(batch.ts_ns[0]), time.monotonic()
        assert self._wall0 is not None
        ts = batch.ts_ns
        slice_ns = max(int(self.poll_s * 1e9 * self.speed), 1)
        edges = (ts - self._event0) // slice_ns
        cuts = [0, *(np.flatnonzero(edges[1:] != edges[:-1]) + 1).tolist(), len(batch)]
        for a, b in itertools.pairwise(cuts):
            due = self._wall0 + (int(ts[a]) - self._event0) / 1e9 / self.speed
            while not self.stop and (delay_s := due - time.monotonic()) > 0:
                time.sleep(min(delay_s, self.poll_s))
                if due - time.monotonic() > 0:
                    yield PacketBatch.empty()  # waiting by design: the loop may tick
            if self.stop:
                return
            piece = batch.take(slice(a, b))
            if a > 0:  # the batch's malformed and non-IP frames are counted once, with its first slice
                piece = dataclasses.replace(piece, malformed=0, non_ip=0)
            yield piece

    def stats(self) -> dict[str, int]:
        return {"replay_skipped_packets": self.skipped_packets}


class LiveSource:
    """A live interface through capture.packets.live.LiveCapture (TPACKET_V3 ring via libpcap);
    with `workers` > 1, through that many capture workers on one fanout group
    (capture.packets.fanout.FanoutCapture), each with a ring of `buffer_mb`."""

    kind = "live"
    rereads = False

    def __init__(self, cfg: SourceConfig, poll_s: float = POLL_S) -> None:
        from detector.capture.packets.fanout import FanoutCapture
        from detector.capture.packets.live import LiveCapture  # needs pcapy-ng: only when asked for

        assert cfg.interface is not None
        options = {"snaplen": cfg.snaplen, "buffer_mb": cfg.buffer_mb, "promisc": cfg.promisc, "bpf": cfg.bpf,
                   "batch_packets": cfg.batch_packets, "poll_s": poll_s}
        self.capture: LiveCapture | FanoutCapture = (
            FanoutCapture(cfg.interface, cfg.workers, **options) if cfg.workers > 1 else LiveCapture(cfg.interface, **options))
        self.identity = {"type": "interface", "interface": cfg.interface}

    @property
    def stop(self) -> bool:
        return bool(self.capture.stop)

    @stop.setter
    def stop(self, value: bool) -> None:
        self.capture.stop = value

    def __iter__(self) -> Iterator[PacketBatch]:
        return iter(self.capture)

    def stats(self) -> dict[str, int]:
        st = self.capture.stats()
        return {"kernel_drops": st["kernel_drops"], "interface_drops": st["interface_drops"], "interface_lost": st["interface_lost"]}

    def worker_stats(self) -> list[dict[str, float]]:
        """Per capture worker: frames, kernel and interface drops, busy (CPU) seconds; [] for one."""
        return self.capture.worker_stats() if hasattr(self.capture, "worker_stats") else []


def source_identity(cfg: SourceConfig) -> dict[str, str]:
    """What a checkpoint records to tell whether it was written for the same source."""
    if cfg.type in ("pcap", "zeek"):
        return {"type": cfg.type, "path": str(Path(cfg.path).resolve()) if cfg.path else ""}
    if cfg.type == "netflow":
        return {"type": "netflow", "address": cfg.bind_address, "port": str(cfg.port)}
    return {"type": "interface", "interface": cfg.interface or ""}


def is_live(cfg: SourceConfig) -> bool:
    """Whether the source follows the present (windows also close on the wall clock) rather
    than replaying a finished file."""
    return cfg.type in ("interface", "netflow") or (cfg.type == "zeek" and cfg.follow)


def resumable_checkpoint(state_dir: Path, cfg: SourceConfig) -> Checkpoint | None:
    """The last checkpoint under `state_dir` (the daemon's or a Kafka sensor's), if it was
    written for this source and is worth resuming; one that cannot be read is moved aside
    (the process starts fresh)."""
    directory = state_dir / CHECKPOINT_DIR
    try:
        checkpoint = load_checkpoint(directory)
    except CheckpointError as exc:
        set_aside(checkpoint_in_use(directory), str(exc))
        return None
    if checkpoint is None:
        return None
    meta = checkpoint.meta
    if meta.source != source_identity(cfg):
        log.info("checkpoint_ignored", reason="written for another source", checkpoint_source=meta.source)
        return None
    if meta.replay_complete:
        log.info("checkpoint_ignored", reason="that replay had ended; it starts over")
        return None
    if cfg.type == "zeek" and not cfg.follow:
        # a conn.log is in the order connections ended, not started: no position to resume at
        log.info("checkpoint_ignored", reason="a conn.log read to its end cannot resume midway; it starts over")
        return None
    return checkpoint


def reading_point(source: Source | None, before_ns: int | None = None) -> tuple[dict[str, Any] | None,
                                                                             dict[str, np.ndarray] | None]:
    """What a checkpoint keeps of a followed conn.log's reading (ZeekConnLog.reading_point):
    where a restart picks up, with what was counted there of its long connections still open
    (LongConnections.state_dict); with `before_ns`, the end of the last window the checkpoint
    covers, a point before the records of the windows after it, which a restart builds whole
    again. None, None for any other source."""
    if not isinstance(source, ZeekConnLog):
        return None, None
    return source.reading_point(before_ns)


def exporters_state(source: Source | None) -> dict[str, Any] | None:
    """What a checkpoint keeps of a NetFlow collector's exporters (NetflowParser.state_dict):
    their templates and sampling, so that a restart reads their next datagrams at once. None
    for any other source."""
    return source.parser.state_dict() if isinstance(source, NetflowCollector) else None


def resume_windows(windows: object, cfg: SourceConfig, checkpoint: Checkpoint) -> bool:
    """A followed conn.log is read again from its checkpoint's reading point: its window
    stage is told which windows the run before closed (FlowWindowAggregator.resume_at).
    Returns whether it was (the daemon's and the sensor's restores)."""
    meta = checkpoint.meta
    if not (cfg.type == "zeek" and cfg.follow and meta.position is not None and meta.resume_ns is not None
            and isinstance(windows, FlowWindowAggregator)):
        return False
    windows.resume_at(meta.resume_ns, meta.position.get("read_to_ns"))
    return True


def watched_from(source: Source, now_ns: int) -> int | None:
    """When `source` began watching, for its window stage (EntityWindows.watch_from): a live
    interface's capture, just opened, at `now_ns` (netad's time); a capture resumed from a
    checkpoint at its resume point, the end of the windows the run before scored. None for
    a capture replayed from its start (its first packet says), a followed conn.log (what it
    reads again builds the windows it left open whole: resume_windows) and a NetFlow
    collector (an exporter reports flows it watched before the collector opened: its
    records say from when they are whole, by their sequence numbers,
    FlowRecordBatch.watched_from_ns)."""
    if isinstance(source, LiveSource):
        return now_ns
    return source.resume_from_ns if isinstance(source, ReplaySource) else None


def build_source(cfg: SourceConfig, resume: Checkpoint | None = None) -> Source:
    """The configured source, opened (a live capture or collector is up when this returns).
    Raises ConfigError for an incomplete source section, CaptureError when it cannot be
    opened. Where a checkpoint (`resume`: resumable_checkpoint's) left off: a capture file
    at the end of the last window it covered, a followed conn.log at its position, with what
    was counted of its long connections still open."""
    source: Source
    if cfg.type in ("pcap", "zeek") and cfg.path is None:
        raise ConfigError(f"source.path: required when source.type is {cfg.type}")
    if cfg.type == "pcap":
        return ReplaySource(cfg.path, cfg.speed, cfg.batch_packets, resume_from_ns=resume.meta.resume_ns if resume else None)
    if cfg.type == "zeek":
        source = ZeekConnLog(cfg.path, follow=cfg.follow, from_end=cfg.from_end, poll_s=POLL_S, batch_records=cfg.batch_packets,
                             resume_at=resume.meta.position if resume else None)
        if resume is not None and resume.long_connections is not None:
            _restore_long_connections(source, resume.long_connections)
    elif cfg.type == "netflow":
        parser = NetflowParser(default_sampling_rate=cfg.default_sampling_rate, allowed_exporters=cfg.allowed_exporters,
                               export_window_s=(cfg.max_ahead_s, cfg.max_jump_s))
        if resume is not None and resume.meta.exporters is not None:
            _restore_exporters(parser, resume.meta.exporters)
        source = NetflowCollector(cfg.bind_address, cfg.port, buffer_mb=cfg.buffer_mb, batch_records=cfg.batch_packets,
                                  poll_s=POLL_S, parser=parser)
    elif not cfg.interface:
        raise ConfigError("source.interface: required when source.type is interface")
    else:
        problem = bpf_problem(cfg.bpf, cfg.snaplen)
        if problem:
            raise ConfigError(f"source.bpf: {problem}")
        return LiveSource(cfg)
    source.identity = source_identity(cfg)  # as configured: a port 0 or a relative path still matches
    return source


def _restore_long_connections(source: ZeekConnLog, state: dict[str, np.ndarray]) -> None:
    """What was counted of the connections Zeek logs as they go, back in the conn.log's
    reader: their next lines count from where the counted ones ended, not again from their
    start (the parts before would be late, and counted twice in the windows still open). One
    that cannot be read back is let go: those connections count from their start, as before
    there was a checkpoint of them."""
    try:
        source.ledger.load_state_dict(state)
    except ValueError as exc:
        log.warning("checkpoint_long_connections_discarded", reason=str(exc),
                    consequence="the open long connections' next lines count from their start")
        return
    log.info("long_connections_restored", open=len(source.ledger.open), ended=len(source.ledger.ended))


def _restore_exporters(parser: NetflowParser, state: dict[str, Any]) -> None:
    """The exporters' templates and sampling as the run before knew them, back in the
    collector's parser: their data is read from the first datagram on, not held until each
    sends its templates again. What cannot be read back is let go: the collector learns
    them as a fresh one does."""
    try:
        restored = parser.load_state_dict(state)
    except ValueError as exc:
        log.warning("checkpoint_exporters_discarded", reason=str(exc),
                    consequence="data waits for each exporter to send its templates again")
        return
    log.info("netflow_templates_restored", exporters=len(parser.exporters), templates=restored)
