"""`netad bench flood`: does the pipeline come back to its size and speed after a flood of
spoofed home_net sources?

Where this stands: a command beside the pipeline, like `bench soak`. It builds the daemon's
stages (service.pipeline.Pipeline) and replays a benign capture through them as one
continuous stream of passes, each shifted in time past the previous one. BEFORE and AFTER
must be the same workload, so both follow the same history: a PRIME pass, a silence, a
SETTLE pass, then `--passes` passes BEFORE (each `--laps` replays of the capture in a row:
a replay of a short capture takes a tenth of a second, too short to time); as many DURING
which a flood is mixed in (SYNs from `--hosts` random addresses inside the first home
network, each a new entity, to one home host); the same silence, a RECOVERY pass, then as many AFTER. The silence is as long as
the entities' idle time and the peer history (`windows.entity_idle_s`, `windows.history_s`:
the window stage skips it in one step): it empties the peer history and expires every
entity, and the pass after it pays for one idle period of the windows of what expires (the
flood's 40,000 entities for RECOVERY, the capture's few for SETTLE). Without SETTLE, BEFORE
ran on a fresh pipeline and AFTER on one that had been through a silence: not the same work.

Every replay goes through a TWIN pipeline too, in the same process, lap by lap, without
the flood. The twin meets the same machine: on one shared with other work, wall time measured
the neighbours (beside a test suite on 2 cores a pass took up to 4x its CPU time) and even
CPU time drifted by 20 % between phases, both pipelines alike. Per phase it prints the
medians of the passes' packets/s (by CPU time, and by wall time), the twin's, the ratio of
the two, and the resident set size (the twin's few MiB included in both phases) side by
side: its mean over the pass, read after every batch of both pipelines, its peak and its
value at the pass's end. The mean, because the heap's hand-back (service.heap) makes RSS a
sawtooth between trims, a sixteenth of the process high, and one reading at a pass's end
fell anywhere on it: in one probe on the 5 h demo, BEFORE's passes ended at 602-630 MiB and a
trim at their end took them to 427-445. The verdict reads the ratio to the twin, AFTER
against BEFORE, and the mean RSS. What the flood left in the pipeline shows there; what it left in the process (the
allocator's state) slows the twin too, and shows in RSS and in the plain packets/s printed
beside it (with BEFORE's spread, to read it by). A small flood through a throwaway pipeline
first lets numba compile what only a flood's paths use (a one-time cost of the process, not
state the flood left). Bounded state that shrinks back reads within 10 %;
it prints figures and asserts nothing.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from detector._exit import errors_to_exit_codes
from detector.bench.soak import _CountingSink, _span, rss_mib
from detector.contracts import PACKET_COLUMNS, TCP_SYN, PacketBatch, addr_to_pair
from detector.errors import ConfigError

WITHIN = 0.10  # after vs before: what "back to normal" means here


def spoofed_flood(home_net: str, hosts: int, start_ns: int, span_ns: int, target: str, packets_per_host: int = 4,
                  seed: int = 7) -> PacketBatch:
    """SYNs to `target` from `hosts` distinct random addresses of the `home_net` network (a
    spoofed flood that looks like it comes from inside: each source is an entity), spread
    evenly over [start_ns, start_ns + span_ns), in time order."""
    net = ipaddress.ip_network(home_net, strict=False)
    room = net.num_addresses - 2
    if hosts > room:
        raise ConfigError(f"home_net {home_net}: room for {room} flood sources, not {hosts}")
    rng = np.random.default_rng(seed)
    base_hi, base_lo = addr_to_pair(str(net.network_address))
    offsets = rng.choice(room, size=hosts, replace=False).astype(np.uint64) + np.uint64(1)
    n = hosts * packets_per_host
    t_hi, t_lo = addr_to_pair(target)
    cols: dict[str, np.ndarray] = {
        "ts_ns": start_ns + np.arange(n, dtype=np.int64) * max(span_ns // max(n, 1), 1),
        "ip_version": np.full(n, 6 if net.version == 6 else 4),
        "src_hi": np.full(n, base_hi), "src_lo": np.uint64(base_lo) + np.tile(offsets, packets_per_host),
        "dst_hi": np.full(n, t_hi), "dst_lo": np.full(n, t_lo),
        "sport": rng.integers(1024, 65535, n), "dport": np.full(n, 80), "proto": np.full(n, 6),
        "ip_len": np.full(n, 60), "tcp_flags": np.full(n, TCP_SYN), "vlan": np.zeros(n), "frag": np.zeros(n),
    }
    return PacketBatch(**{k: np.asarray(v).astype(dt) for k, v in cols.items() for dt in [PACKET_COLUMNS[k]]})


def run_flood(cfg: Any, pcaps: list[Path], passes: int = 5, hosts: int | None = None, model_dir: str | Path | None = None,
              emit: Callable[[str], None] = print, laps: int = 10) -> dict[str, Any]:
    """PRIME, SETTLE, BEFORE, DURING, RECOVERY and AFTER passes of `pcaps` through a pipeline
    and its twin (see the module's text); returns per phase the passes' figures, and the
    medians of BEFORE, DURING and AFTER."""
    from detector.model.bundle import ModelBundle
    from detector.model.scorer import set_torch_threads
    from detector.service.heap import HEAP
    from detector.service.pipeline import Pipeline, capture_batches

    set_torch_threads(cfg.model.threads)
    bundle = ModelBundle.load(model_dir or cfg.model.path)
    pipeline, twin = (Pipeline(cfg, bundle, sinks=[_CountingSink()]) for _ in range(2))
    hosts = hosts if hosts is not None else min(cfg.windows.max_entities - 1_000, 40_000)
    first_ns, last_ns = _span(pcaps, cfg.source.batch_packets)
    w = cfg.windows
    window_ns = int(round(w.bin_s * 1e9)) * w.bins
    shift_ns = -(-(last_ns - first_ns + window_ns + int(round(w.lateness_s * 1e9))) // window_ns) * window_ns
    silence_ns = -(-int((max(w.entity_idle_s, w.bin_s * w.bins) + w.history_s) * 1e9) // window_ns + 2) * window_ns
    target = ipaddress.ip_network(cfg.home_net[0], strict=False).network_address + 1
    _warm_up(Pipeline(cfg, bundle, sinks=[_CountingSink()]), cfg, first_ns, silence_ns, str(target))

    resident: list[float] = []  # RSS after each batch of the pass (MiB)

    def replay(pipe: Any, offset_ns: int, flood: PacketBatch | None = None) -> tuple[int, float, float]:
        """One replay of the capture (the flood mixed in): packets, CPU and wall seconds."""
        packets, started, cpu_started = 0, time.perf_counter(), time.process_time()
        for batch in capture_batches(pcaps, cfg.source.batch_packets):
            batch = dataclasses.replace(batch, ts_ns=batch.ts_ns + offset_ns) if offset_ns else batch
            if flood is not None and len(batch):
                due = flood.ts_ns <= batch.ts_ns.max()
                mixed = PacketBatch.concat([batch, flood.take(due)])
                batch, flood = mixed.take(np.argsort(mixed.ts_ns, kind="stable")), flood.take(~due)
            pipe.push(batch)
            resident.append(rss_mib())
            packets += len(batch)
        return packets, time.process_time() - cpu_started, time.perf_counter() - started

    phases: dict[str, list[dict[str, float]]] = {p: [] for p in ("prime", "settle", "before", "during", "recovery", "after")}
    once = {"prime", "settle", "recovery"}
    offset_ns, trims, trim_s = 0, HEAP.trims, HEAP.trim_s
    for phase in phases:
        if phase in ("settle", "recovery"):
            offset_ns += silence_ns
        for _ in range(1 if phase in once else passes):
            totals = np.zeros(5)  # packets, CPU s, wall s; the twin's packets, CPU s
            resident.clear()
            for _ in range(laps if phase in ("before", "after") else 1):
                flood = None
                if phase == "during":
                    flood = spoofed_flood(cfg.home_net[0], hosts, first_ns + offset_ns, last_ns - first_ns, str(target))
                totals[:3] += replay(pipeline, offset_ns, flood)
                totals[3:] += replay(twin, offset_ns)[:2]  # lap by lap, so that both meet the same machine
                offset_ns += shift_ns
            packets, cpu_s, wall_s, twin_packets, twin_cpu_s = totals.tolist()
            st = pipeline.stats()
            row = {"cpu_pkt_s": packets / max(cpu_s, 1e-9), "pkt_s": packets / wall_s,
                   "twin_cpu_pkt_s": twin_packets / max(twin_cpu_s, 1e-9), "rss_mib": statistics.fmean(resident),
                   "rss_peak_mib": max(resident), "rss_end_mib": rss_mib(), "packets": packets,
                   "entities": st["entities"], "slots": pipeline.windows.slots, "flows": st["active_flows"],
                   "heap_trims": HEAP.trims - trims, "trim_s": HEAP.trim_s - trim_s}
            trims, trim_s = HEAP.trims, HEAP.trim_s
            row["vs_twin"] = row["cpu_pkt_s"] / row["twin_cpu_pkt_s"]
            phases[phase].append(row)
            emit(f"{phase:<8} pass {len(phases[phase])}: {row['cpu_pkt_s']:>10,.0f} pkt/CPU-s {row['pkt_s']:>10,.0f} pkt/s  "
                 f"twin {row['twin_cpu_pkt_s']:>10,.0f} pkt/CPU-s  rss {row['rss_mib']:7.1f} MiB "
                 f"(peak {row['rss_peak_mib']:.1f}, end {row['rss_end_mib']:.1f})  "
                 f"entities {row['entities']:>6,d}  slots {row['slots']:>6,d}  flows {row['flows']:>7,d}  "
                 f"heap trims {row['heap_trims']} ({row['trim_s']:.2f} s)")
    pipeline.finish()
    twin.finish()
    keys = ("cpu_pkt_s", "pkt_s", "twin_cpu_pkt_s", "vs_twin", "rss_mib", "rss_peak_mib", "rss_end_mib")
    medians = {p: {k: statistics.median(r[k] for r in phases[p]) for k in keys} for p in ("before", "during", "after")}
    before = [r["cpu_pkt_s"] for r in phases["before"]]
    spread = (max(before) - min(before)) / medians["before"]["cpu_pkt_s"]
    emit("")
    emit(f"{'':<8} {'pkt/CPU-s':>11} {'pkt/s (wall)':>13} {'twin pkt/CPU-s':>15} {'vs twin':>8} {'RSS MiB':>8} "
         f"{'peak':>7} {'at end':>7}   (medians of {passes} passes, {laps} laps each before and after; "
         f"flood: {hosts:,d} spoofed {cfg.home_net[0]} sources; RSS: mean over a pass's batches)")
    for p, m in medians.items():
        emit(f"{p:<8} {m['cpu_pkt_s']:>11,.0f} {m['pkt_s']:>13,.0f} {m['twin_cpu_pkt_s']:>15,.0f} {m['vs_twin']:>8.3f} "
             f"{m['rss_mib']:>8.1f} {m['rss_peak_mib']:>7.1f} {m['rss_end_mib']:>7.1f}")
    speed = medians["after"]["vs_twin"] / medians["before"]["vs_twin"] - 1
    plain = medians["after"]["cpu_pkt_s"] / medians["before"]["cpu_pkt_s"] - 1
    memory = medians["after"]["rss_mib"] / medians["before"]["rss_mib"] - 1
    back = speed >= -WITHIN and memory <= WITHIN  # slower or bigger by more than 10 % is not back
    at_end = medians["after"]["rss_end_mib"] / medians["before"]["rss_end_mib"] - 1
    emit(f"after vs before: pkt/CPU-s against the twin {speed:+.1%}, RSS {memory:+.1%} -> "
         f"{'back within 10 %' if back else 'NOT back within 10 %'}")
    emit(f"(RSS at the passes' ends alone {at_end:+.1%}, one reading each, wherever the sawtooth was)")
    emit(f"(pkt/CPU-s alone {plain:+.1%}: the machine's own drift included; before's passes spread {spread:.0%})")
    return {"phases": phases, "medians": medians,
            "after_vs_before": {"vs_twin": speed, "cpu_pkt_s": plain, "rss": memory, "rss_at_end": at_end},
            "back": back, "before_spread": spread, "flood_hosts": hosts}


def _warm_up(pipeline: Any, cfg: Any, first_ns: int, silence_ns: int, target: str) -> None:
    """A small flood and a silence through a throwaway pipeline first: numba compiles the
    kernels only the flood's paths use (the event clock's walk, a flow-table specialisation)
    once per process, and that memory is not the flood's to answer for."""
    small = spoofed_flood(cfg.home_net[0], 256, first_ns, 10**9, target)
    pipeline.push(small)
    pipeline.push(dataclasses.replace(small, ts_ns=small.ts_ns + silence_ns))
    pipeline.finish()


@click.command("flood")
@click.option("-c", "--config", type=click.Path(dir_okay=False), default=None, help="YAML config (stages, home_net, model path).")
@click.option("--pcap", "pcaps", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Benign capture replayed in every pass (repeatable; default: source.path of the config).")
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None, help="Model bundle (default: model.path).")
@click.option("--passes", type=click.IntRange(min=1), default=5, show_default=True, help="Passes per phase (medians over them).")
@click.option("--laps", type=click.IntRange(min=1), default=10, show_default=True,
              help="Replays of the capture in one BEFORE or AFTER pass (a pass of a short capture is too short to time).")
@click.option("--hosts", type=click.IntRange(min=1), default=None,
              help="Spoofed flood sources (default: windows.max_entities - 1000, at most 40,000).")
@errors_to_exit_codes
def flood(config: str | None, pcaps: tuple[str, ...], model_dir: str | None, passes: int, laps: int, hosts: int | None) -> None:
    """RSS and packets/s before, during and after a flood of spoofed home_net sources."""
    from detector.config import load_config
    from detector.logging import configure

    cfg = load_config(config)
    configure("warning", "auto")  # the figures are the output
    paths = [Path(p) for p in pcaps] or ([cfg.source.path] if cfg.source.path else [])
    if not paths:
        raise ConfigError("no capture: give --pcap or source.path in the config")
    run_flood(cfg, paths, passes, hosts, model_dir, emit=lambda line: click.echo(line), laps=laps)


if __name__ == "__main__":
    flood()
