"""`netad bench soak`: does memory stay flat when the daemon's pipeline runs for hours?

Where this stands: a command beside the pipeline, not in it. It builds the daemon's stages
(service.pipeline.Pipeline: flows, windows, the streaming scorer, the incident lifecycle)
and replays captures through them in a loop for `--minutes`, each pass shifted in time by a
whole number of windows past the previous one, so the stages see one long, continuous
stream: flows time out, idle entities expire, incidents open and resolve, hidden states are
carried, exactly as months of live traffic would exercise them, only faster.

Every `--report-s` it prints one line with the resident set size and the counters; at the
end, the growth of RSS from the end of the first pass (by then every table has reached its
working size) to the end. Bounded state means that growth stays near zero; a leak shows as
a steady climb. It prints figures; it asserts nothing (the verdict line is advice).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from detector._exit import errors_to_exit_codes
from detector.errors import CaptureError, ConfigError
from detector.service.heap import resident_bytes

FLAT_TOLERANCE_MIB = 16.0  # allocator noise: growth below this (or 2 %) reads as flat


def rss_mib() -> float:
    """Resident set size of this process now (MiB): what the heap's hand-back reads."""
    return resident_bytes() / 2**20


class _CountingSink:
    """Stands in for the sinks: the soak measures the pipeline, not delivery."""

    def __init__(self) -> None:
        self.events = 0

    def publish(self, _event: object) -> None:
        self.events += 1


def run_soak(cfg: Any, pcaps: list[Path], duration_s: float, report_every_s: float = 10.0,
             model_dir: str | Path | None = None, emit: Callable[[str], None] = print) -> dict[str, Any]:
    """Replay `pcaps` in a loop through the daemon's stages for `duration_s`; one RSS line per
    `report_every_s` through `emit`. Returns the samples and the RSS growth."""
    from detector.model.bundle import ModelBundle
    from detector.model.scorer import set_torch_threads
    from detector.service.pipeline import Pipeline, capture_batches

    set_torch_threads(cfg.model.threads)
    bundle = ModelBundle.load(model_dir or cfg.model.path)
    sink = _CountingSink()
    pipeline = Pipeline(cfg, bundle, sinks=[sink])
    first_ns, last_ns = _span(pcaps, cfg.source.batch_packets)
    shift_ns = pass_shift_ns(cfg, first_ns, last_ns)
    started = time.monotonic()
    next_report = started + report_every_s
    samples: list[dict[str, float]] = []
    first_pass_rss: float | None = None
    passes = 0

    def sample(now: float) -> None:
        st = pipeline.stats()
        row = {"t_s": now - started, "rss_mib": rss_mib(), "packets": st["packets"], "windows": st["windows_closed"],
               "entities": st["entities"], "flows": st["active_flows"], "open_incidents": st["incidents_open"],
               "events": sink.events, "pass": passes}
        samples.append(row)
        emit(f"t={row['t_s']:7.1f} s  rss_mib={row['rss_mib']:8.1f}  pass={passes:<4d} packets={st['packets']:<12,d} "
             f"windows={st['windows_closed']:<7,d} entities={st['entities']:<6,d} flows={st['active_flows']:<8,d} "
             f"open_incidents={st['incidents_open']:<4d} events={sink.events:,d}")

    sample(started)
    done = False
    while not done:
        offset_ns = passes * shift_ns
        for batch in capture_batches(pcaps, cfg.source.batch_packets):
            pipeline.push(dataclasses.replace(batch, ts_ns=batch.ts_ns + offset_ns) if offset_ns else batch)
            now = time.monotonic()
            if now >= next_report:
                sample(now)
                next_report = now + report_every_s
            if now - started >= duration_s:
                done = True
                break
        if done:  # a pass cut short is not a pass: its tables may still be filling
            break
        passes += 1
        if first_pass_rss is None:
            first_pass_rss = rss_mib()
    pipeline.finish()
    sample(time.monotonic())
    verdict, growth, flat = soak_verdict(samples, first_pass_rss, passes)
    emit(verdict)
    return {"samples": samples, "passes": passes, "rss_growth_mib": growth, "flat": flat}


def soak_verdict(samples: list[dict[str, float]], first_pass_rss: float | None, passes: int) -> tuple[str, float, bool | None]:
    """(the verdict line, RSS growth in MiB, flat?). Growth is from the end of the first
    pass (every table at its working size) to the median of the last three samples (one
    sample is allocator noise), and `flat` is None when the first pass never ended: the
    tables were still filling, and calling that GROWING would blame a warm-up."""
    end = statistics.median(s["rss_mib"] for s in samples[-3:])
    if first_pass_rss is None or passes < 2:
        growth = end - samples[0]["rss_mib"]
        return (f"rss at the start {samples[0]['rss_mib']:.1f} MiB, at the end {end:.1f} MiB: growth {growth:+.1f} MiB "
                f"over {passes} pass(es) -> too short to judge (run at least two passes)"), growth, None
    growth = end - first_pass_rss
    flat = growth <= max(FLAT_TOLERANCE_MIB, 0.02 * first_pass_rss)
    return (f"rss after the first pass {first_pass_rss:.1f} MiB, at the end {end:.1f} MiB: "
            f"growth {growth:+.1f} MiB over {passes} pass(es) -> {'flat' if flat else 'GROWING'}"), growth, flat


def pass_shift_ns(cfg: Any, first_ns: int, last_ns: int) -> int:
    """How far to shift a replay pass of records at first_ns..last_ns in time: whole windows,
    past the previous pass's last window and its lateness, so that the stream stays in order
    and the window grid stays aligned (also bench.workers' timed pass)."""
    window_ns = int(round(cfg.windows.bin_s * 1e9)) * cfg.windows.bins
    lead_ns = window_ns + int(round(cfg.windows.lateness_s * 1e9))
    return -(-(last_ns - first_ns + lead_ns) // window_ns) * window_ns


def _span(pcaps: list[Path], batch_packets: int) -> tuple[int, int]:
    """First and last packet timestamps over the captures (ns)."""
    from detector.service.pipeline import capture_batches

    first = last = None
    for batch in capture_batches(pcaps, batch_packets):
        if len(batch):
            lo, hi = int(batch.ts_ns.min()), int(batch.ts_ns.max())
            first = lo if first is None else min(first, lo)
            last = hi if last is None else max(last, hi)
    if first is None or last is None:
        raise CaptureError(f"{', '.join(map(str, pcaps))}: no IP packets to replay")
    return first, last


@click.command("soak")
@click.option("-c", "--config", type=click.Path(dir_okay=False), default=None, help="YAML config (stages, model path).")
@click.option("--pcap", "pcaps", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Capture to replay in a loop (repeatable; default: source.path of the config).")
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None, help="Model bundle (default: model.path).")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True, help="How long to run.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=None, help="How long to run, in seconds (overrides --minutes).")
@click.option("--report-s", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="Seconds between RSS lines.")
@errors_to_exit_codes
def soak(config: str | None, pcaps: tuple[str, ...], model_dir: str | None, minutes: float, seconds: float | None,
         report_s: float) -> None:
    """Replay captures in a loop (shifted in time) through the pipeline; print RSS over time."""
    from detector.config import load_config
    from detector.logging import configure

    cfg = load_config(config)
    configure("warning", "auto")  # the RSS lines are the output; stage logs would bury them
    paths = [Path(p) for p in pcaps] or ([cfg.source.path] if cfg.source.path else [])
    if not paths:
        raise ConfigError("no capture: give --pcap or source.path in the config")
    run_soak(cfg, paths, seconds if seconds is not None else minutes * 60.0, report_s, model_dir,
             emit=lambda line: click.echo(line))

if __name__ == "__main__":
    soak()
