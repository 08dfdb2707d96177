"""`netad bench capture`: how fast the capture stages run, offline, on one core.

Where this stands: a command beside the pipeline, not in it. It generates a capture with
the synthetic generator's "bench" profile (thousands of hosts), then measures in the same
run, as medians of a few repetitions, packets per second for

  (a) reading the file's bytes into memory from the page cache, in CaptureFile's reads: the ceiling;
  (b) parse only: CaptureFile iteration (record walk + frame parse -> PacketBatch);
  (c) parse + flows + windows: FlowTable and WindowAggregator built and wired as
      service.pipeline wires them (`window_stream`), with the time per stage;
  (d) scapy's PcapReader (full dissection) on the first `scapy_packets` packets, scaled;

plus memory: peak RSS of this process, and bytes per tracked flow, both as the flow table's
arrays say (state_bytes / max_flows) and as measured (RSS growth filling a large table).
The process is pinned to one CPU while measuring. The capture is generated in a child
process, so the generator's own memory does not count in the peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

TARGET_PARSE_PPS = 2_500_000
TARGET_PIPELINE_PPS = 1_000_000
TARGET_BYTES_PER_FLOW = 150
_WARMUP_PACKETS = 5_000
_REPO_ROOT = Path(__file__).resolve().parents[2]

Progress = Callable[[str], None]


def generate_capture(path: Path, packets: int, seed: int = 7, span_s: float | None = None) -> dict[str, Any]:
    """Write a "bench" profile capture of `packets` frames in a child process, spread over
    about `span_s` seconds of traffic (default: the profile's 300 s); returns
    {"packets", "home_net", "span_s", "seconds"} (seconds: generation wall time)."""
    code = (
        "import json, sys\nfrom pathlib import Path\nfrom detector.synth.generate import generate\n"
        f"r = generate(Path({str(path)!r}), profile='bench', packets={int(packets)}, seed={int(seed)}, benign_s={span_s!r})\n"
        "print(json.dumps({'packets': r.packets, 'home_net': r.home_net, 'span_s': r.end_epoch_s - r.start_epoch_s}))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")])))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"generating the bench capture failed: {done.stderr.strip()[-2000:]}")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    info["seconds"] = time.perf_counter() - started
    return info


@contextmanager
def pinned_to_one_cpu(cpu: int | None = None) -> Iterator[int]:
    """Run the block on one CPU (the lowest allowed one unless given); restores after."""
    allowed = os.sched_getaffinity(0)
    chosen = min(allowed) if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    try:
        yield chosen
    finally:
        os.sched_setaffinity(0, allowed)


def _rss_bytes() -> int:
    """Resident set size now (not the peak), from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _median_run(repeats: int, run: Callable[[], dict[str, float]]) -> dict[str, Any]:
    """Run `repeats` times; every field's median, and the wall times of all runs."""
    runs = [run() for _ in range(repeats)]
    out: dict[str, Any] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    out["all_seconds"] = [round(r["seconds"], 4) for r in runs]
    return out


# ----------------------------------------------------------------------------- phases
def _read_bytes(path: Path) -> dict[str, float]:
    from detector.capture.packets.pcap import _READ_BYTES  # one read's size: 16 MiB reads ran 1.2-1.3x slower

    buf = bytearray(_READ_BYTES)
    view = memoryview(buf)
    total = 0
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while got := f.readinto(view):
            total += got
    return {"seconds": time.perf_counter() - started, "bytes": float(total)}


def _parse(path: Path) -> dict[str, float]:
    from detector.capture.packets.pcap import CaptureFile

    capture = CaptureFile(path)
    rows = 0
    started = time.perf_counter()
    for batch in capture:
        rows += len(batch)
    return {"seconds": time.perf_counter() - started, "frames": float(capture.packets), "rows": float(rows),
            "non_ip": float(capture.non_ip), "malformed": float(capture.malformed)}


def _pipeline(path: Path, home_net: str) -> dict[str, float]:
    """window_stream's loop (service.pipeline), with a clock around each stage."""
    from detector.capture.packets.pcap import CaptureFile
    from detector.config import Config
    from detector.service.pipeline import build_aggregator, build_flow_table

    cfg = Config(home_net=[home_net])
    flows, windows = build_flow_table(cfg), build_aggregator(cfg)
    flows_s = windows_s = 0.0
    closed = 0
    started = time.perf_counter()
    for batch in CaptureFile(path):
        t0 = time.perf_counter()
        annotations = flows.push(batch)
        t1 = time.perf_counter()
        closed += len(windows.push(batch, annotations))
        windows_s += time.perf_counter() - t1
        flows_s += t1 - t0
    t1 = time.perf_counter()
    closed += len(windows.flush())
    windows_s += time.perf_counter() - t1
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "flows_s": flows_s, "windows_s": windows_s, "parse_s": seconds - flows_s - windows_s,
            "windows_closed": float(closed), "flows_created": float(flows.flows_created),
            "entities": float(windows.entities)}


def _scapy(path: Path, limit: int) -> dict[str, float]:
    # Register the Ethernet/IP dissectors, or PcapReader hands back undissected Raw packets.
    import scapy.layers.inet  # noqa: F401
    import scapy.layers.inet6  # noqa: F401
    import scapy.layers.l2  # noqa: F401
    from scapy.utils import PcapReader

    n = 0
    started = time.perf_counter()
    with PcapReader(str(path)) as reader:
        for _packet in reader:
            n += 1
            if n >= limit:
                break
    return {"seconds": time.perf_counter() - started, "packets": float(n)}


def _flow_memory_in_child(flows: int, cpu: int) -> dict[str, float]:
    """`_flow_memory` in a fresh process: here, memory freed by the earlier phases would be
    reused by the allocator without growing the RSS, and the growth would read as zero."""
    code = (
        "import json, os\n"
        f"os.sched_setaffinity(0, {{{int(cpu)}}})\n"
        "from detector.bench.capture import _flow_memory\n"
        f"print(json.dumps(_flow_memory({int(flows)})))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"flow-table memory measurement failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _flow_memory(flows: int) -> dict[str, float]:
    """Fill a FlowTable of `flows` slots with as many distinct flows; RSS growth per flow."""
    from detector.capture.flows import FlowTable
    from detector.contracts import PACKET_COLUMNS, PacketBatch, addr_to_pair

    # Inputs first, so that only the table counts in the RSS difference: flow i is
    # 10.x.y.z:(1024 + i % 50000) -> 198.18.0.1:443, all at one instant (no timeouts).
    i = np.arange(flows, dtype=np.uint64)
    _, lo_base = addr_to_pair("10.0.0.0")
    _, dst_lo = addr_to_pair("198.18.0.1")
    cols = {name: np.zeros(flows, dtype=dtype) for name, dtype in PACKET_COLUMNS.items()}
    cols.update(ts_ns=np.full(flows, 1_700_000_000 * 10**9, dtype=np.int64), ip_version=np.full(flows, 4, np.uint8),
                src_lo=np.uint64(lo_base) + i // np.uint64(50_000), dst_lo=np.full(flows, dst_lo, np.uint64),
                sport=(1024 + i % np.uint64(50_000)).astype(np.uint16), dport=np.full(flows, 443, np.uint16),
                proto=np.full(flows, 6, np.uint8), ip_len=np.full(flows, 60, np.uint32),
                tcp_flags=np.full(flows, 2, np.uint8))
    batch = PacketBatch(**cols)
    parts = [batch.take(slice(a, a + 65536)) for a in range(0, flows, 65536)]
    FlowTable(max_flows=16).push(parts[0])  # load the numba kernels (and their memory) first
    before = _rss_bytes()
    table = FlowTable(max_flows=flows)
    for part in parts:
        table.push(part)  # the annotations are dropped at once, as the pipeline does
    grown = _rss_bytes() - before
    assert len(table) == flows and table.evicted == 0
    return {"flows": float(flows), "rss_bytes_per_flow": grown / flows, "state_bytes_per_flow": table.state_bytes / flows}


# ------------------------------------------------------------------------------ driver
def run_capture_bench(
    packets: int,
    workdir: Path,
    *,
    repeats: int = 3,
    scapy_packets: int = 20_000,
    table_flows: int = 2_000_000,
    cpu: int | None = None,
    span_s: float | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Generate a `packets`-frame bench capture in `workdir` and measure (see the module
    docstring). Returns the figures as a dict (see `format_capture_bench`)."""
    say = progress or (lambda _msg: None)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"bench-{packets}.pcap"
    say(f"generating {packets:,} packets ...")
    gen = generate_capture(path, packets, span_s=span_s)
    warm = workdir / "warmup.pcap"
    generate_capture(warm, _WARMUP_PACKETS)

    # Import everything before the baseline: torch (via service.pipeline) and scapy are
    # the bulk of the process's memory, not the capture stages.
    import scapy.layers.l2  # noqa: F401

    import detector.service.pipeline  # noqa: F401
    from detector.capture.flows import FlowTable
    from detector.config import Config

    rss_baseline = _peak_rss_bytes()
    peak_after: dict[str, float] = {}
    with pinned_to_one_cpu(cpu) as pinned:
        _parse(warm), _pipeline(warm, gen["home_net"])  # numba: load or compile the kernels
        say("(a) reading bytes ...")
        read = _median_run(repeats, lambda: _read_bytes(path))
        peak_after["bytes_read"] = _peak_rss_bytes()
        say("(b) parse ...")
        parse = _median_run(repeats, lambda: _parse(path))
        peak_after["parse"] = _peak_rss_bytes()
        say("(c) parse + flows + windows ...")
        pipe = _median_run(repeats, lambda: _pipeline(path, gen["home_net"]))
        peak_after["pipeline"] = _peak_rss_bytes()
        limit = min(scapy_packets, packets)
        say(f"(d) scapy PcapReader, first {limit:,} packets ...")
        scapy = _median_run(repeats, lambda: _scapy(path, limit))
        peak_after["scapy"] = _peak_rss_bytes()
        say(f"flow table memory, {table_flows:,} flows (in a fresh process) ...")
        memory = _flow_memory_in_child(table_flows, pinned)
    default_flows = Config().flows.max_flows
    n = float(gen["packets"])
    read_pps = n / read["seconds"]
    parse_pps = n / parse["seconds"]
    pipe_pps = n / pipe["seconds"]
    scapy_pps = scapy["packets"] / scapy["seconds"]
    state_per_flow = FlowTable(max_flows=default_flows).state_bytes / default_flows
    return {
        "cpu": pinned,
        "repeats": repeats,
        "capture": {"packets": int(n), "bytes": path.stat().st_size, "home_net": gen["home_net"],
                    "span_s": gen["span_s"], "generate_s": round(gen["seconds"], 2),
                    "mean_frame_bytes": round((path.stat().st_size - 24) / n - 16, 1)},
        "bytes_read": {"pps": read_pps, "gb_per_s": read["bytes"] / read["seconds"] / 1e9, "seconds": read["all_seconds"]},
        "parse": {"pps": parse_pps, "seconds": parse["all_seconds"], "rows": int(parse["rows"]),
                  "non_ip": int(parse["non_ip"]), "malformed": int(parse["malformed"])},
        "pipeline": {"pps": pipe_pps, "seconds": pipe["all_seconds"], "parse_s": pipe["parse_s"], "flows_s": pipe["flows_s"],
                     "windows_s": pipe["windows_s"], "windows_closed": int(pipe["windows_closed"]),
                     "flows_created": int(pipe["flows_created"]), "entities": int(pipe["entities"])},
        "scapy": {"pps": scapy_pps, "packets_measured": int(scapy["packets"]), "seconds": scapy["all_seconds"],
                  "scaled_seconds": n / scapy_pps},
        "flow_memory": {"max_flows": default_flows, "state_bytes_per_flow": state_per_flow,
                        "measured_flows": int(memory["flows"]), "measured_state_bytes_per_flow": memory["state_bytes_per_flow"],
                        "rss_bytes_per_flow": memory["rss_bytes_per_flow"]},
        "rss": {"baseline_mb": rss_baseline / 2**20, "peak_mb": _peak_rss_bytes() / 2**20,
                "peak_after_mb": {k: v / 2**20 for k, v in peak_after.items()}},
        "ratios": {"parse_over_bytes_read": parse_pps / read_pps, "parse_over_scapy": parse_pps / scapy_pps,
                   "pipeline_over_scapy": pipe_pps / scapy_pps},
        "targets": {
            "parse_pps": {"target": TARGET_PARSE_PPS, "met": parse_pps >= TARGET_PARSE_PPS},
            "pipeline_pps": {"target": TARGET_PIPELINE_PPS, "met": pipe_pps >= TARGET_PIPELINE_PPS},
            "bytes_per_flow": {"target": TARGET_BYTES_PER_FLOW,
                               "met": max(state_per_flow, memory["rss_bytes_per_flow"]) <= TARGET_BYTES_PER_FLOW},
        },
    }


# ----------------------------------------------------------------------------- report
def _mpps(pps: float) -> str:
    if pps < 100_000:
        return f"{pps / 1e3:6.1f} k pkt/s"
    return f"{pps / 1e6:6.2f} M pkt/s"


def _verdict(met: bool) -> str:
    return "ok" if met else "MISSED"


def format_capture_bench(r: dict[str, Any]) -> str:
    """The figures as text, targets beside them."""
    c, t = r["capture"], r["targets"]
    p, fm, rss = r["pipeline"], r["flow_memory"], r["rss"]
    total = sum(p[k] for k in ("parse_s", "flows_s", "windows_s"))
    lines = [
        f"netad bench capture: {c['packets']:,} packets, {c['bytes'] / 1e6:,.0f} MB (mean frame {c['mean_frame_bytes']:.0f} B), "
        f"{c['span_s']:.0f} s of traffic, home net {c['home_net']}; generated in {c['generate_s']:.1f} s",
        f"pinned to CPU {r['cpu']} (os.sched_setaffinity); medians of {r['repeats']} runs",
        "",
        f"  (a) read bytes (page cache)    {_mpps(r['bytes_read']['pps'])}   {r['bytes_read']['gb_per_s']:.2f} GB/s   the ceiling",
        f"  (b) parse (CaptureFile)        {_mpps(r['parse']['pps'])}   target >= {TARGET_PARSE_PPS / 1e6:.1f} M: {_verdict(t['parse_pps']['met'])}",
        f"  (c) parse + flows + windows    {_mpps(p['pps'])}   target >= {TARGET_PIPELINE_PPS / 1e6:.1f} M: {_verdict(t['pipeline_pps']['met'])}",
        f"        time split: parse {p['parse_s']:.2f} s ({p['parse_s'] / total:.0%}), flows {p['flows_s']:.2f} s "
        f"({p['flows_s'] / total:.0%}), windows {p['windows_s']:.2f} s ({p['windows_s'] / total:.0%})",
        f"        {p['flows_created']:,} flows, {p['entities']:,} entities, {p['windows_closed']} windows closed",
        f"  (d) scapy PcapReader           {_mpps(r['scapy']['pps'])}   first {r['scapy']['packets_measured']:,} packets, "
        f"scaled: {r['scapy']['scaled_seconds']:,.0f} s for the whole file",
        "",
        f"  ratios: parse / bytes read {r['ratios']['parse_over_bytes_read']:.2f}, parse / scapy "
        f"{r['ratios']['parse_over_scapy']:,.0f}x, pipeline / scapy {r['ratios']['pipeline_over_scapy']:,.0f}x",
        f"  flow state: {fm['state_bytes_per_flow']:.1f} B per flow (state_bytes / max_flows, max_flows {fm['max_flows']:,}); "
        f"measured {fm['rss_bytes_per_flow']:.1f} B per flow (RSS growth filling {fm['measured_flows']:,} flows)   "
        f"target <= {TARGET_BYTES_PER_FLOW} B: {_verdict(t['bytes_per_flow']['met'])}",
        f"  peak RSS {rss['peak_mb']:,.0f} MB ({rss['baseline_mb']:,.0f} MB of it before the first phase: interpreter, "
        f"numpy, numba, torch, scapy); peak after "
        + ", ".join(f"{k} {v:,.0f} MB" for k, v in rss["peak_after_mb"].items()),
    ]
    return "\n".join(lines)
