"""`netad bench`: the benchmark commands (loaded lazily by detector.cli, like soak, flows and
kafka here). They print figures; nothing here asserts on time."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click

from detector._lazy import LazyGroup

EX_UNAVAILABLE = 69  # sysexits.h: a tool the live bench needs is missing
EX_NOPERM = 77  # sysexits.h: the live bench needs root


def _progress(message: str) -> None:
    click.echo(message, err=True)


# Commands in their own modules, imported only when used: (module:attribute, short help).
LAZY_COMMANDS = {
    "flows": ("detector.bench.flows:flows", "Flow-record throughput: NetFlow v9/IPFIX parser and collector, Zeek conn.log reader, aggregator."),
    "flood": ("detector.bench.flood:flood", "RSS and packets/s before, during and after a flood of spoofed home_net sources."),
    "kafka": ("detector.bench.kafka:kafka", "Entity windows/s end to end through Kafka (mock cluster) with 1 and 2 scorer processes."),
    "soak": ("detector.bench.soak:soak", "Replay captures in a loop (shifted in time) through the pipeline; print RSS over time."),
}


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS)
def bench() -> None:
    """Benchmarks: throughput of the capture stages, offline and live."""
    from detector.logging import configure

    # stdout is for the figures (--json must parse); what the stages log goes to stderr
    configure("info", stream=sys.stderr)


@bench.command("capture")
@click.option("--packets", type=click.IntRange(min=1000), default=1_000_000, show_default=True,
              help="Packets in the generated bench capture.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Runs per figure (median).")
@click.option("--scapy-packets", type=click.IntRange(min=100), default=20_000, show_default=True,
              help="scapy reads only this many packets (about 3k pkt/s); its rate is scaled to the file.")
@click.option("--table-flows", type=click.IntRange(min=1000), default=2_000_000, show_default=True,
              help="Flows in the large table whose RSS growth is measured.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Keep the generated capture here (default: a temporary directory, removed).")
@click.option("--workers", "workers", type=str, default=None,
              help="Comma-separated counts of capture workers (e.g. 1,2): measure only parse + flows + windows "
                   "with each, in one run, and the ratios to the first.")
@click.option("--span-s", type=click.FloatRange(min=1.0), default=None,
              help="Seconds of traffic the packets are spread over (default: the profile's 300 s, about 3,600 pkt/s for 1 M packets). "
                   "Windows close once a minute of traffic whatever its rate, so a short span (35 s for 1 M: "
                   "a busy link's rate) measures the per-packet stages with almost no closing.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def capture(packets: int, repeats: int, scapy_packets: int, table_flows: int, workdir: str | None, workers: str | None,
            span_s: float | None, as_json: bool) -> None:
    """Offline capture throughput: bytes read, parse, parse + flows + windows, scapy; memory."""
    from detector.bench.capture import format_capture_bench, generate_capture, run_capture_bench

    if workers is not None:
        from detector.bench.workers import format_workers_bench, run_workers_bench

        try:
            counts = [int(n) for n in workers.split(",")]
        except ValueError:
            raise click.BadParameter(f"{workers!r}: comma-separated whole numbers", param_hint="--workers") from None
        if not counts or min(counts) < 1:
            raise click.BadParameter("counts of workers are 1 or more", param_hint="--workers")
        with tempfile.TemporaryDirectory(prefix="netad-bench-") as tmp:
            path = Path(workdir or tmp) / f"bench-{packets}.pcap"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not as_json:
                _progress(f"generating {packets:,} packets ...")
            gen = generate_capture(path, packets, span_s=span_s)
            if not as_json:
                _progress(f"parse + flows + windows with {workers} workers, {repeats} runs each ...")
            result = run_workers_bench(path, gen["home_net"], counts, repeats)
        result["capture"] = {"packets": gen["packets"], "home_net": gen["home_net"], "span_s": gen["span_s"]}
        click.echo(json.dumps(result, indent=2) if as_json else format_workers_bench(result, result["capture"]))
        return
    with tempfile.TemporaryDirectory(prefix="netad-bench-") as tmp:
        result = run_capture_bench(packets, Path(workdir) if workdir else Path(tmp), repeats=repeats,
                                   scapy_packets=scapy_packets, table_flows=table_flows, span_s=span_s,
                                   progress=None if as_json else _progress)
    click.echo(json.dumps(result, indent=2) if as_json else format_capture_bench(result))


@bench.command("live")
@click.option("--packets", type=click.IntRange(min=1000), default=200_000, show_default=True,
              help="Packets in the generated capture (replayed in a loop for the higher rates).")
@click.option("--pps", "pps_steps", type=str, default="25000,50000,100000,200000,400000,800000", show_default=True,
              help="Comma-separated packet rates to offer, in order.")
@click.option("--topspeed/--no-topspeed", default=True, show_default=True, help="Finish with tcpreplay --topspeed.")
@click.option("--stages", type=click.Choice(["pipeline", "capture"]), default="pipeline", show_default=True,
              help="What the receiver runs: capture + parse + flows + windows, or capture + parse only.")
@click.option("--step-s", type=click.FloatRange(min=1, max=30), default=8.0, show_default=True,
              help="Longest a step sends for.")
@click.option("--workers", "workers", type=str, default="1", show_default=True,
              help="Comma-separated counts of capture workers (fanout group) to run the steps with, in turn.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def live(packets: int, pps_steps: str, topspeed: bool, stages: str, step_s: float, workers: str, as_json: bool) -> None:
    """Live capture: tcpreplay over a veth pair at rising rates; drops per step. Needs root."""
    from detector.bench.live import LiveBenchUnavailable, format_live_bench, run_live_bench

    try:
        steps = tuple(int(s.replace("_", "")) for s in pps_steps.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(f"{pps_steps!r}: expected comma-separated integers", param_hint="--pps") from None
    try:
        counts = tuple(int(n) for n in workers.split(","))
    except ValueError:
        raise click.BadParameter(f"{workers!r}: expected comma-separated integers", param_hint="--workers") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter("counts of workers are 1 or more", param_hint="--workers")
    try:
        result = run_live_bench(packets, pps_steps=steps, topspeed=topspeed, stages=stages, step_s=step_s,
                                workers=counts, progress=None if as_json else _progress)
    except LiveBenchUnavailable as exc:
        click.echo(f"netad: {exc}", err=True)
        sys.exit(EX_NOPERM if exc.needs_root else EX_UNAVAILABLE)
    result.pop("worker_log_tail", None)
    for run in result.get("runs", []):
        run.pop("worker_log_tail", None)
    click.echo(json.dumps(result, indent=2) if as_json else format_live_bench(result))


@bench.command("model")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="torch CPU threads.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--hidden", type=click.IntRange(min=2), default=32, show_default=True, help="LSTM state size.")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Runs per figure (median).")
@click.option("--hosts", type=click.IntRange(min=1), default=2000, show_default=True, help="Hosts for the latency figure.")
@click.option("--members", type=click.IntRange(min=1, max=16), default=1, show_default=True,
              help="Networks per class (training.members).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def model(threads: int, device: str, hidden: int, repeats: int, hosts: int, members: int, as_json: bool) -> None:
    """Scoring throughput with carried state vs re-reading history, latency, training rate."""
    from detector.bench.model import main as model_main

    click.echo(model_main(json_out=as_json, threads=threads, device=device, hidden=hidden, repeats=repeats, hosts=hosts,
                          members=members))
