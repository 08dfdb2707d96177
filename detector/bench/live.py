"""`netad bench live`: the highest packet rate the live source takes without drops.

Where this stands: a command beside the pipeline. It generates a "bench" profile capture,
builds a private network namespace with a veth pair (`_netns`), starts the live source on
one end in its own process (`_capture_worker`: LiveCapture, and with stages "pipeline" the
flow table and window aggregator as the daemon runs them), and replays the capture with
tcpreplay on the other end at increasing `--pps` steps, then at `--topspeed`. Per step it
reports the offered rate (tcpreplay's own measure), the frames received and the kernel and
interface drops. Each step sends for at most `step_s` seconds (tcpreplay `--duration`).

The capture process and tcpreplay are pinned to different CPUs when there are two or more;
on a small machine the sender itself may top out below the receiver's limit, which is why
the offered rate is measured, not assumed.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from detector.bench._capture_worker import CaptureWorker
from detector.bench._netns import VethNamespace, missing_requirements
from detector.bench.capture import Progress, generate_capture

DEFAULT_PPS_STEPS = (25_000, 50_000, 100_000, 200_000, 400_000, 800_000)
_ACTUAL = re.compile(r"Actual: (\d+) packets \((\d+) bytes\) sent in ([\d.]+) seconds")
_RATED = re.compile(r"Rated: [\d.]+ Bps, ([\d.]+) Mbps, ([\d.]+) pps")
_FAILED = re.compile(r"Failed packets:\s+(\d+)")


class LiveBenchUnavailable(RuntimeError):
    """This machine cannot run the live bench (not root, no tcpreplay/iproute2/pcapy-ng).
    `needs_root` tells a missing privilege from a missing tool."""

    def __init__(self, message: str, needs_root: bool) -> None:
        super().__init__(message)
        self.needs_root = needs_root


def live_bench_unavailable() -> str | None:
    """Why `run_live_bench` cannot run here, or None."""
    reason = missing_requirements(("ip", "tcpreplay"))
    if reason:
        return reason
    try:
        import pcapy  # noqa: F401
    except ImportError:
        return "needs pcapy-ng (pip install pcapy-ng)"
    return None


def _cpus() -> tuple[int | None, int | None]:
    """(CPU for the capture process, CPU for tcpreplay); None where there is only one."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return allowed[0], allowed[1]


def _tcpreplay(ns: VethNamespace, pcap: Path, file_packets: int, pps: int | None, step_s: float,
               cpu: int | None) -> dict[str, Any]:
    """One replay step: at `pps` (None: --topspeed) for at most `step_s` seconds."""
    if pps is None:
        rate = ["--topspeed"]
        limit = file_packets * 4
    else:
        rate = ["--pps", str(pps)]
        limit = max(1, int(pps * step_s))
    loops = max(1, math.ceil(limit / file_packets))
    argv = ns.exec_argv(["tcpreplay", "-i", ns.send_iface, "--preload-pcap", "--no-flow-stats", *rate,
                         "--limit", str(limit), "--loop", str(loops), "--duration", str(max(1, int(step_s))), str(pcap)])
    preexec = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    done = subprocess.run(argv, capture_output=True, text=True, timeout=step_s + 120, preexec_fn=preexec)
    actual, rated, failed = _ACTUAL.search(done.stdout), _RATED.search(done.stdout), _FAILED.search(done.stdout)
    if done.returncode != 0 or actual is None:
        raise RuntimeError(f"tcpreplay failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-1000:]}")
    return {
        "requested_pps": pps,
        "sent": int(actual.group(1)),
        "sent_bytes": int(actual.group(2)),
        "send_s": float(actual.group(3)),
        "offered_pps": float(rated.group(2)) if rated else int(actual.group(1)) / max(float(actual.group(3)), 1e-9),
        "offered_mbps": float(rated.group(1)) if rated else 0.0,
        "send_failed": int(failed.group(1)) if failed else 0,
    }


def run_live_bench(
    packets: int = 200_000,
    workdir: Path | None = None,
    *,
    pps_steps: tuple[int, ...] = DEFAULT_PPS_STEPS,
    topspeed: bool = True,
    stages: str = "pipeline",
    step_s: float = 8.0,
    workers: tuple[int, ...] = (1,),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Replay a generated `packets`-frame capture into the live source at each rate of
    `pps_steps` (then at top speed) and count what arrives. Raises LiveBenchUnavailable
    when this machine cannot run it (see `live_bench_unavailable`)."""
    reason = live_bench_unavailable()
    if reason:
        raise LiveBenchUnavailable(f"bench live {reason}", needs_root=os.geteuid() != 0)
    say = progress or (lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="netad-bench-live-") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        pcap = work / f"live-{packets}.pcap"
        say(f"generating {packets:,} packets ...")
        gen = generate_capture(pcap, packets)
        gen["bytes"] = pcap.stat().st_size
        capture_cpu, sender_cpu = _cpus()
        runs = []
        with VethNamespace("netad-bench") as ns:
            for n in workers:
                say(f"{n} worker(s) ...")
                runs.append(_run_steps(ns, pcap, gen, n, stages, pps_steps, topspeed, step_s,
                                       capture_cpu if n == 1 else None, sender_cpu, say))
    first = runs[0]
    return {
        "capture": {"packets": gen["packets"], "home_net": gen["home_net"], "bytes": gen["bytes"]},
        "stages": stages,
        "capture_cpu": capture_cpu,
        "sender_cpu": sender_cpu,
        "step_s": step_s,
        **{k: first[k] for k in ("steps", "best_zero_drop_pps", "best_step", "worker", "worker_log_tail")},
        "runs": runs if len(runs) > 1 or workers != (1,) else [],
    }


def _worker_deltas(now: dict[str, Any], last: dict[str, Any], received: int, cpu_s: float) -> list[dict[str, Any]]:
    """Per worker during one step: what it handled, dropped and how busy it was; `pps_per_busy_s`
    is what it handled per second of work: the rate one such worker could take."""
    out = []
    capture = now.get("capture_workers") or []
    if not capture:  # one process: capture, parse and the stages in it
        return [{"role": "capture+stages", "worker": 0, "packets": received, "busy_s": round(cpu_s, 3),
                 "pps_per_busy_s": round(received / cpu_s) if cpu_s > 0 else None}]
    for role, key in (("capture", "capture_workers"), ("flows", "flow_workers")):
        before = last.get(key) or [{} for _ in now.get(key) or []]
        for k, (w, b) in enumerate(zip(now.get(key) or [], before, strict=False)):
            packets = int(w.get("packets", 0) - b.get("packets", 0))
            busy_key = "cpu_s" if "cpu_s" in w else "busy_s"  # flow workers: CPU seconds too, not wall time on messages
            busy = float(w.get(busy_key, 0.0) - b.get(busy_key, 0.0))
            out.append({"role": role, "worker": k, "packets": packets, "busy_s": round(busy, 3),
                        "kernel_drops": int(w.get("kernel_drops", 0) - b.get("kernel_drops", 0)),
                        "pps_per_busy_s": round(packets / busy) if busy > 0 else None})
    out.append({"role": "parent", "worker": 0, "packets": received, "busy_s": round(cpu_s, 3),
                "pps_per_busy_s": round(received / cpu_s) if cpu_s > 0 else None})
    return out


def _run_steps(ns: VethNamespace, pcap: Path, gen: dict[str, Any], workers: int, stages: str, pps_steps: tuple[int, ...],
               topspeed: bool, step_s: float, capture_cpu: int | None, sender_cpu: int | None,
               say: Progress) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    with CaptureWorker(ns.exec_argv([]), ns.capture_iface, stages=stages, home_net=[gen["home_net"]],
                       idle_s=1.0, cpu=capture_cpu, workers=workers) as worker:
        last = worker.wait_for("ready", timeout_s=120)
        last.update(packets=0, kernel_drops=0, interface_drops=0)
        for pps in [*pps_steps, *([None] if topspeed else [])]:
            say(f"  step {'topspeed' if pps is None else f'{pps:,} pkt/s'} ...")
            started = time.monotonic()
            step = _tcpreplay(ns, pcap, gen["packets"], pps, step_s, sender_cpu)
            now = worker.wait_for("idle", timeout_s=step_s + 120) if step["sent"] else last
            step.update(
                received=now["packets"] - last["packets"],
                kernel_drops=now["kernel_drops"] - last["kernel_drops"],
                interface_drops=now["interface_drops"] - last["interface_drops"],
                stages_s=now.get("stages_s", 0.0),
                longest_stage_ms=now.get("longest_stage_ms", 0.0),
                step_s=round(time.monotonic() - started, 2),
            )
            step["lost"] = step["sent"] - step["received"]
            step["workers"] = _worker_deltas(now, last, step["received"], now.get("cpu_s", 0.0) - last.get("cpu_s", 0.0))
            steps.append(step)
            last = now
        final = worker.finish(timeout_s=60)
        log_tail = worker.stderr_tail()
    clean = [s for s in steps if s["lost"] == 0 and s["kernel_drops"] == 0 and s["interface_drops"] == 0]
    best = max(clean, key=lambda s: s["offered_pps"]) if clean else None
    return {"workers": workers, "steps": steps, "best_zero_drop_pps": best["offered_pps"] if best else None,
            "best_step": best["requested_pps"] if best else None, "worker": final, "worker_log_tail": log_tail}


def _steps_lines(run: dict[str, Any], stages: str) -> list[str]:
    lines = [
        f"  {'step':>10} {'offered pkt/s':>14} {'Mbit/s':>7} {'sent':>10} {'received':>10} {'kernel drops':>13} "
        f"{'if drops':>9} {'lost':>8} {'stages s':>9} {'longest batch':>14}",
    ]
    for s in run["steps"]:
        name = "topspeed" if s["requested_pps"] is None else f"{s['requested_pps']:,}"
        longest = f"{s['longest_stage_ms']:,.0f} ms" if stages == "pipeline" else "-"
        stages_s = f"{s['stages_s']:.2f}" if stages == "pipeline" else "-"
        lines.append(
            f"  {name:>10} {s['offered_pps']:>14,.0f} {s['offered_mbps']:>7,.0f} {s['sent']:>10,} {s['received']:>10,} "
            f"{s['kernel_drops']:>13,} {s['interface_drops']:>9,} {s['lost']:>8,} {stages_s:>9} {longest:>14}"
        )
        for w in s.get("workers", []):
            rate = f"{w['pps_per_busy_s']:,} pkt/s per busy second" if w["pps_per_busy_s"] else "-"
            drops = f", {w['kernel_drops']:,} kernel drops" if "kernel_drops" in w and w["role"] == "capture" else ""
            lines.append(f"  {'':>10}   {w['role']} {w['worker']}: {w['packets']:,} packets, busy {w['busy_s']:.2f} s{drops}; {rate}")
    if run["best_zero_drop_pps"] is None:
        lines.append("  no step without drops")
    else:
        lines.append(f"  highest rate with zero drops: {run['best_zero_drop_pps']:,.0f} pkt/s")
    top = [s for s in run["steps"] if s["requested_pps"] is None]
    if top and top[0]["lost"] == 0 and top[0]["kernel_drops"] == 0:
        lines.append("  (no drops even at tcpreplay's top speed: the sender, not the capture, set the limit here)")
    return lines


def format_live_bench(r: dict[str, Any]) -> str:
    stages = "capture + parse + flows + windows" if r["stages"] == "pipeline" else "capture + parse"
    pinning = (
        f"capture process on CPU {r['capture_cpu']}, tcpreplay on CPU {r['sender_cpu']}"
        if r["capture_cpu"] is not None
        else "one CPU: capture and tcpreplay share it"
    )
    lines = [
        f"netad bench live: {r['capture']['packets']:,}-packet bench capture replayed by tcpreplay over a veth pair "
        f"(private netns) into LiveCapture; receiver runs {stages}",
        f"{pinning} (with more than 1 worker nothing is pinned); each step sends for at most {r['step_s']:.0f} s",
    ]
    for run in r["runs"] or [{**r, "workers": 1}]:
        lines += ["", f"{run['workers']} worker(s):" if r["runs"] else "", *_steps_lines(run, r["stages"])]
    if r["stages"] == "pipeline":
        lines.append("  (stages s: time in flows + windows during the step; longest batch: the longest single push,")
        lines.append("   a stall the kernel ring must absorb; busy: CPU seconds of the worker, or of the one process;")
        lines.append("   per busy second: what one such worker could take)")
    return "\n".join(lines)
