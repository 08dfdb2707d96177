"""The daemon (`netad run`): startup -> run loop -> bounded shutdown.

Startup builds everything from the config (model, stages, sinks) and fails with a clear
error before reading a packet. The run loop pulls batches from the source and pushes them
through the pipeline; signal handlers only set flags (uvicorn's lesson): SIGTERM/SIGINT stop
the source, then in-flight windows are drained, sinks flushed and a summary printed; a second
SIGINT forces exit. SIGHUP reloads config and rules: the new ones are built completely and
swapped in; on failure the old ones keep running and the reason is logged.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import structlog

from detector.alerting.rules import load_rules
from detector.alerting.sinks import SinkSet, build_sink
from detector.capture.pcap import CaptureFile
from detector.config import Config, SinkConfig, load_config
from detector.contracts import PacketBatch
from detector.errors import CaptureError, ConfigError, NetadError
from detector.model.bundle import ModelBundle
from detector.model.scorer import set_torch_threads
from detector.service.pipeline import Pipeline
from detector.service.systemd import Notifier

log = structlog.get_logger()


def build_sinks(sinks: list[SinkConfig], extra_urls: list[str], spool_dir: Path | None) -> SinkSet:
    built = []
    for i, sc in enumerate(sinks):
        try:
            built.append(build_sink(sc.url, spool_dir=spool_dir, name=sc.name or None))
        except ConfigError as exc:
            raise ConfigError(f"sinks[{i}]: {exc}") from None
    for url in extra_urls:
        built.append(build_sink(url, spool_dir=spool_dir))
    return SinkSet(built)


class ReplaySource:
    """A capture file replayed as batches: as fast as possible (speed 0) or paced at
    `speed` times the original rate, so replay and live follow the same clock rules."""

    def __init__(self, path: Path, speed: float = 0.0, batch_packets: int = 65536) -> None:
        self.path = path
        self.speed = speed
        self.batch_packets = batch_packets
        self.capture = CaptureFile(path, batch_packets=batch_packets)
        self.stop = False

    def __iter__(self) -> Iterator[PacketBatch]:
        if self.speed <= 0:
            for batch in self.capture:
                if self.stop:
                    return
                yield batch
            return
        wall0 = time.monotonic()
        event0: int | None = None
        slice_ns = int(0.2e9 * self.speed)  # about 0.2 s of wall time per slice
        for batch in self.capture:
            if len(batch) == 0:
                yield batch
                continue
            if event0 is None:
                event0 = int(batch.ts_ns[0])
            ts = batch.ts_ns
            edges = (ts - event0) // max(slice_ns, 1)
            cuts = [0, *((edges[1:] != edges[:-1]).nonzero()[0] + 1).tolist(), len(batch)]
            for a, b in zip(cuts[:-1], cuts[1:]):
                due = wall0 + (int(ts[a]) - event0) / 1e9 / self.speed
                while not self.stop and (delay := due - time.monotonic()) > 0:
                    time.sleep(min(delay, 0.2))
                if self.stop:
                    return
                yield batch.take(slice(a, b))


class Daemon:
    def __init__(self, config_path: str | None, cfg: Config, extra_sinks: list[str] | None = None) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.extra_sinks = list(extra_sinks or [])
        self.notifier = Notifier()
        self._stop = False
        self._reload = False
        self._interrupts = 0
        self.source: ReplaySource | None = None

    # ---------------------------------------------------------------- signals
    def _on_stop(self, signum, _frame) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                log.warning("shutdown_forced", signal="SIGINT")
                os._exit(130)
        self._stop = True
        if self.source is not None:
            self.source.stop = True

    def _on_hup(self, _signum, _frame) -> None:
        self._reload = True

    # ---------------------------------------------------------------- lifecycle
    def run(self) -> int:
        cfg = self.cfg
        bundle = ModelBundle.load(cfg.model.path)
        set_torch_threads(cfg.model.threads)
        spool = cfg.state_dir / "spool"
        sinks = build_sinks(cfg.sinks, self.extra_sinks, spool)
        scores_out = None
        if cfg.outputs.scores is not None:
            cfg.outputs.scores.parent.mkdir(parents=True, exist_ok=True)
            scores_out = open(cfg.outputs.scores, "w", encoding="utf-8")
        self.pipeline = Pipeline(cfg, bundle, sinks=[sinks], scores_out=scores_out)
        self.sinks = sinks
        if cfg.source.type == "pcap":
            if cfg.source.path is None:
                raise ConfigError("source.path: required when source.type is pcap")
            self.source = ReplaySource(cfg.source.path, cfg.source.speed, cfg.source.batch_packets)
        else:
            raise CaptureError("source.type interface: live capture is not available in this build")
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        log.info("daemon_started", source=str(cfg.source.path or cfg.source.interface), model=str(cfg.model.path),
                 model_version=bundle.version, sinks=[s.name for s in sinks.sinks], pid=os.getpid())  # fmt: skip
        self.notifier.ready(status="started")
        started = time.monotonic()
        last_status = started
        try:
            for batch in self.source:
                if self._reload:
                    self._do_reload()
                self.pipeline.push(batch)
                now = time.monotonic()
                if now - last_status >= 5.0:
                    self._status(now - started)
                    last_status = now
                if self._stop:
                    break
            self.notifier.stopping()
            self.pipeline.finish()
        finally:
            drained = sinks.flush(timeout_s=10.0)
            sinks.close(timeout_s=5.0)
            if scores_out is not None:
                scores_out.close()
            self.notifier.stopping()
        elapsed = time.monotonic() - started
        stats = self.pipeline.stats()
        log.info("daemon_stopped", reason="signal" if self._stop else "source_ended", seconds=round(elapsed, 2),
                 sinks_drained=drained, **stats)  # fmt: skip
        if cfg.outputs.summary:
            self._print_summary(elapsed, self.source.capture)
        return 0

    def _status(self, elapsed_s: float) -> None:
        st = self.pipeline.stats()
        text = f"{st['packets'] / max(elapsed_s, 1e-9):.0f} pkt/s, {st['entities']} entities, {st['incidents_open']} open incidents"
        self.notifier.status(text)
        self.notifier.watchdog()

    def _do_reload(self) -> None:
        self._reload = False
        self.notifier.reloading()
        try:
            new_cfg = load_config(self.config_path) if self.config_path else self.cfg
            rules = load_rules(new_cfg.incidents.rules)
        except NetadError as exc:
            log.error("config_reload_failed", reason=str(exc))
        else:
            self.pipeline.tracker.rules = rules
            self.cfg = new_cfg
            log.info("config_reloaded", rules=[str(p) for p in new_cfg.incidents.rules])
        self.notifier.ready(status="reloaded")

    def _print_summary(self, elapsed_s: float, capture: CaptureFile) -> None:
        st = self.pipeline.stats()
        out = sys.stdout
        print("", file=out)
        print("netad summary", file=out)
        print(f"  packets      {st['packets']:,} ({st['malformed']:,} malformed, {st['non_ip']:,} non-IP) in {elapsed_s:.1f} s", file=out)
        if capture.damage:
            print(f"  capture      stopped at damage: {capture.damage}", file=out)
        print(f"  flows        {st['flows_created']:,} created, {st['flow_evictions']:,} evicted", file=out)
        print(f"  windows      {st['windows_closed']:,} closed, {st['entity_windows']:,} entity-windows scored, "
              f"{st['anomalous_windows']:,} anomalous", file=out)  # fmt: skip
        print(f"  entities     {st['entities']:,} tracked", file=out)
        print(f"  incidents    {st['incidents_opened']:,} opened, {st['incidents_open']:,} still open", file=out)
        for entity, n in self.pipeline.incidents_by_entity.most_common(20):
            print(f"    {entity:<40} {n}", file=out)
        out.flush()
