"""`netad bench flows`: how fast the flow-record sources and aggregator run, on one core.

Where this stands: a command beside the pipeline, not in it. It builds its input first
(pre-built NetFlow v9 and IPFIX datagrams from synthetic records, 24 records per datagram as
softflowd and routers send them; a synthetic Zeek conn.log in TSV and in JSON), then
measures in the same run, as medians of a few repetitions, flow records per second for

  (a) the NetFlow parser fed directly: `NetflowParser.parse` on the pre-built datagrams,
      1024 at a time (the collector's own unit of work), v9 and IPFIX;
  (b) the collector over loopback UDP: a sender process blasts the same IPFIX datagrams at
      127.0.0.1 and `NetflowCollector` (receive, parse, batch) runs here; the rate is
      records received per second of receiving, with the datagrams the kernel dropped
      (the sender is faster than any receiver: this finds the ceiling);
  (c) the conn.log reader: `ZeekConnLog` over the TSV and the JSON file (two records per
      answered connection), over the TSV with a dns.log beside it (a look-up for every
      4th connection, two addresses each: the answers are read in step with the records),
      and over the TSV with a conn_long.log beside it (every 10th connection logged twice as
      it went: merged in by time, each line counted as the part since the one before);
  (d) FlowWindowAggregator on the parsed records (10 s bins, 6 per window).

The measuring process is pinned to one CPU (the sender of (b) to another when there is one).
Target: 200,000 flow records per second per source on one core.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

TARGET_RECORDS_PER_S = 200_000
_RECORDS_PER_DATAGRAM = 24
_START_MS = 1_700_000_000_000
_REPO_ROOT = Path(__file__).resolve().parents[2]

Progress = Callable[[str], None]


def build_datagrams(records: int, ipfix: bool, seed: int = 7) -> list[bytes]:
    """Export datagrams holding `records` synthetic records; the template is repeated every
    20 datagrams (a refresh, as exporters do)."""
    from detector.synth import netflow as enc

    cols = enc.synthetic_columns(records, _START_MS, seed=seed)
    export_s = (_START_MS + 700_000) // 1000
    fields = enc.IPFIX_FIELDS if ipfix else enc.V9_FIELDS
    if not ipfix:  # v9: times are ms of uptime; the exporter booted an hour before _START_MS
        boot_ms = _START_MS - 3_600_000
        cols[22], cols[21] = cols.pop(152) - boot_ms, cols.pop(153) - boot_ms
    tmpl = enc.template_set(400, fields, ipfix=ipfix)
    out = []
    for k, i in enumerate(range(0, records, _RECORDS_PER_DATAGRAM)):
        n = min(_RECORDS_PER_DATAGRAM, records - i)
        body = enc.pack_records(fields, {ie: c[i : i + n] for ie, c in cols.items()}, n)
        sets = ([tmpl] if k % 20 == 0 else []) + [enc.data_set(400, body)]
        if ipfix:
            out.append(enc.ipfix_message(sets, export_s, sequence=i))
        else:
            out.append(enc.v9_datagram(sets, export_s, uptime_ms=export_s * 1000 - (_START_MS - 3_600_000), sequence=k))
    return out


def _connection_times(rng: np.random.Generator, connections: int) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic conn.log's connection starts (over 10 minutes) and durations, drawn first."""
    return _START_MS / 1000 + np.sort(rng.random(connections) * 600), rng.exponential(2.0, connections)


def write_conn_log(path: Path, connections: int, as_json: bool, seed: int = 7) -> None:
    """A synthetic conn.log: mostly answered TCP/UDP connections, some unanswered attempts."""
    rng = np.random.default_rng(seed)
    ts, dur = _connection_times(rng, connections)
    proto = rng.choice(np.array(["tcp", "tcp", "udp"]), connections)
    hist = np.where(proto == "tcp", rng.choice(np.array(["ShADadFf", "S", "ShAdDaFf", "Sr"]), connections), "Dd")
    op, rp = rng.integers(1, 20, connections), rng.integers(0, 20, connections)
    rp[np.isin(hist, ["S", "Sr"])] = 0
    fields = ("ts uid id.orig_h id.orig_p id.resp_h id.resp_p proto service duration orig_bytes resp_bytes conn_state "
              "local_orig local_resp missed_bytes history orig_pkts orig_ip_bytes resp_pkts resp_ip_bytes tunnel_parents").split()
    with open(path, "w", encoding="ascii") as f:
        if not as_json:
            f.write("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n")
            f.write("#fields\t" + "\t".join(fields) + "\n")
        for i in range(connections):
            row = (f"{ts[i]:.6f}", f"C{i:017d}", f"10.0.{(i >> 8) & 15}.{i & 255}", str(1024 + i % 60000),
                   f"198.51.{(i * 7) & 255}.{(i * 13) & 255}", str(443 if i % 3 else 53), str(proto[i]), "-",
                   f"{dur[i]:.6f}", "0", "0", "SF", "-", "-", "0", str(hist[i]), str(op[i]), str(op[i] * 60),
                   str(rp[i]), str(rp[i] * 500), "-")
            if as_json:
                obj: dict[str, Any] = dict(zip(fields, row, strict=True))
                for k in ("ts", "duration"):
                    obj[k] = float(obj[k])
                for k in ("id.orig_p", "id.resp_p", "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes"):
                    obj[k] = int(obj[k])
                f.write(json.dumps({k: v for k, v in obj.items() if v != "-"}) + "\n")
            else:
                f.write("\t".join(row) + "\n")


def write_long_log(path: Path, connections: int, seed: int = 7) -> int:
    """A synthetic conn_long.log beside that conn.log (Zeek's long-connections package): every
    10th connection also logged twice as it went, at a third and two thirds of its duration,
    with those shares of its totals; returns how many lines it holds."""
    ts, dur = _connection_times(np.random.default_rng(seed), connections)
    fields = ("ts uid id.orig_h id.orig_p id.resp_h id.resp_p proto service duration orig_bytes resp_bytes conn_state "
              "local_orig local_resp missed_bytes history orig_pkts orig_ip_bytes resp_pkts resp_ip_bytes tunnel_parents").split()
    lines = []
    for i in range(0, connections, 10):
        for part in (1, 2):
            lines.append((ts[i] + dur[i] * part / 3, "\t".join((
                f"{ts[i]:.6f}", f"C{i:017d}", f"10.0.{(i >> 8) & 15}.{i & 255}", str(1024 + i % 60000),
                f"198.51.{(i * 7) & 255}.{(i * 13) & 255}", str(443 if i % 3 else 53), "tcp", "-", f"{dur[i] * part / 3:.6f}",
                "0", "0", "S1", "-", "-", "0", "ShADad", str(part * 4), str(part * 240), str(part * 3), str(part * 1500), "-"))))
    lines.sort(key=lambda line: line[0])
    with open(path, "w", encoding="ascii") as f:
        f.write("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn_long\n")
        f.write("#fields\t" + "\t".join(fields) + "\n")
        f.writelines(text + "\n" for _, text in lines)
    return len(lines)


def write_dns_log(path: Path, connections: int, seed: int = 7) -> int:
    """A synthetic dns.log beside that conn.log: a look-up for every 4th connection, over the
    same 10 minutes, each answered by a CNAME and two addresses as CDNs answer; returns how
    many addresses it holds."""
    rng = np.random.default_rng(seed + 1)
    n = connections // 4
    ts = _START_MS / 1000 + np.sort(rng.random(n) * 600)
    fields = ("ts uid id.orig_h id.orig_p id.resp_h id.resp_p proto trans_id rtt query qclass qclass_name qtype "
              "qtype_name rcode rcode_name AA TC RD RA Z answers TTLs rejected").split()
    with open(path, "w", encoding="ascii") as f:
        f.write("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tdns\n")
        f.write("#fields\t" + "\t".join(fields) + "\n")
        for i in range(n):
            name = f"api{i % 5000}.service{i % 700}.example.com"
            answers = f"edge{i % 300}.cdn.example.net,198.51.{(i * 7) & 255}.{(i * 13) & 255},203.0.113.{i & 255}"
            f.write("\t".join((f"{ts[i]:.6f}", f"D{i:017d}", f"10.0.{(i >> 8) & 15}.{i & 255}", str(1024 + i % 60000),
                               "10.0.0.53", "53", "udp", str(i & 0xFFFF), "0.004", name, "1", "C_INTERNET", "1", "A", "0",
                               "NOERROR", "F", "F", "T", "T", "0", answers, "60.0,60.0,60.0", "F")) + "\n")
    return 2 * n


def _median_rate(run: Callable[[], tuple[int, float]], repeats: int) -> dict[str, float]:
    rates, counts = [], []
    for _ in range(repeats):
        n, seconds = run()
        rates.append(n / seconds)
        counts.append(n)
    return {"records_per_s": statistics.median(rates), "records": statistics.median(counts), "runs": len(rates)}


def _parse_all(datagrams: list[bytes]) -> tuple[int, float]:
    from detector.capture.flowrecords.netflow import NetflowParser

    parser = NetflowParser()
    senders = ["192.0.2.1"] * 1024
    started = time.perf_counter()
    n = 0
    for i in range(0, len(datagrams), 1024):
        n += len(parser.parse(datagrams[i : i + 1024], senders))
    return n, time.perf_counter() - started


_SENDER = """
import os, pickle, socket, sys, time
os.sched_setaffinity(0, {cpu})
datagrams = pickle.load(open(sys.argv[1], "rb"))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
time.sleep(0.3)
for d in datagrams:
    s.sendto(d, ("127.0.0.1", int(sys.argv[2])))
"""


def _udp_collect(datagrams: list[bytes], offered_records: int, workdir: Path, cpu_sender: int | None) -> dict[str, float]:
    """Blast the datagrams over loopback from a child process into a NetflowCollector."""
    import pickle

    from detector.capture.flowrecords.netflow import NetflowCollector

    blob = workdir / "datagrams.pickle"
    blob.write_bytes(pickle.dumps(datagrams))
    expected = offered_records
    with NetflowCollector("127.0.0.1", 0, buffer_mb=64, poll_s=0.05) as coll:
        port = coll.address[1]
        code = _SENDER.format(cpu={cpu_sender} if cpu_sender is not None else "os.sched_getaffinity(0)")
        sender = subprocess.Popen([sys.executable, "-c", code, str(blob), str(port)])
        got, first, last, idle = 0, None, None, 0
        for batch in coll:
            if len(batch):
                now = time.perf_counter()
                first = first if first is not None else now
                last, got, idle = now, got + len(batch), 0
            elif sender.poll() is not None:
                idle += 1
                if idle > 10:
                    break
        sender.wait()
        stats = coll.stats()
    seconds = (last - first) if first is not None and last is not None and last > first else float("nan")
    return {"records": got, "offered": expected, "records_per_s": got / seconds, "kernel_drops": stats["kernel_drops"],
            "lost_records_pct": 100.0 * (1 - got / expected)}


def _read_log(path: Path, answers: list[int] | None = None) -> tuple[int, float]:
    """Records read from a conn.log, and the time; the DNS answers read with them into `answers`."""
    from detector.capture.flowrecords.zeeklog import ZeekConnLog

    started = time.perf_counter()
    n = got = 0
    for b in ZeekConnLog(path):
        n, got = n + len(b), got + len(b.answers)
    seconds = time.perf_counter() - started
    if answers is not None:
        answers.append(got)
    return n, seconds


def _aggregate(batch) -> tuple[int, float]:
    from detector.capture.windows.flow import FlowWindowAggregator

    agg = FlowWindowAggregator(["10.0.0.0/8"], bin_s=10, bins=6, lateness_s=90)
    started = time.perf_counter()
    for i in range(0, len(batch), 65536):
        agg.push(batch.take(slice(i, i + 65536)))
    agg.flush()
    return len(batch), time.perf_counter() - started


def run_flows_bench(records: int, workdir: Path, repeats: int = 3, udp: bool = True,
                    progress: Progress | None = None) -> dict[str, Any]:
    from detector.bench.capture import pinned_to_one_cpu
    from detector.capture.flowrecords.netflow import NetflowParser
    from detector.capture.flowrecords.zeeklog import ZeekConnLog
    from detector.contracts import FlowRecordBatch

    say = progress or (lambda _m: None)
    say(f"building {records:,} records as v9 and IPFIX datagrams ...")
    v9, ipfix = build_datagrams(records, ipfix=False), build_datagrams(records, ipfix=True)
    connections = records // 2
    say(f"writing a conn.log of {connections:,} connections (TSV and JSON) ...")
    tsv, js = workdir / "conn.log", workdir / "conn.json.log"
    write_conn_log(tsv, connections, as_json=False)
    write_conn_log(js, connections, as_json=True)
    named = workdir / "named" / "conn.log"  # the same conn.log, with Zeek's dns.log beside it
    named.parent.mkdir()
    os.link(tsv, named)
    answers = write_dns_log(named.with_name("dns.log"), connections)
    long = workdir / "long" / "conn.log"  # and with a long-connections log beside it
    long.parent.mkdir()
    os.link(tsv, long)
    long_lines = write_long_log(long.with_name("conn_long.log"), connections)
    _parse_all(v9[:2048])  # warm-up: imports, numpy paths
    allowed = sorted(os.sched_getaffinity(0))
    result: dict[str, Any] = {"records": records, "repeats": repeats, "target_records_per_s": TARGET_RECORDS_PER_S,
                              "records_per_datagram": _RECORDS_PER_DATAGRAM}
    with pinned_to_one_cpu() as cpu:
        result["cpu"] = cpu
        say("parser, NetFlow v9 ...")
        result["parse_v9"] = _median_rate(lambda: _parse_all(v9), repeats)
        say("parser, IPFIX ...")
        result["parse_ipfix"] = _median_rate(lambda: _parse_all(ipfix), repeats)
        say("conn.log reader, TSV ...")
        result["zeek_tsv"] = _median_rate(lambda: _read_log(tsv), repeats)
        say("conn.log reader, TSV, with its dns.log ...")
        read: list[int] = []
        result["zeek_tsv_dns"] = {**_median_rate(lambda: _read_log(named, read), repeats), "answers": answers,
                                  "answers_read": min(read)}
        say("conn.log reader, TSV, with its conn_long.log ...")
        result["zeek_tsv_long"] = {**_median_rate(lambda: _read_log(long), repeats), "long_lines": long_lines}
        say("conn.log reader, JSON ...")
        result["zeek_json"] = _median_rate(lambda: _read_log(js), repeats)
        parsed = NetflowParser().parse(ipfix, ["192.0.2.1"] * len(ipfix))
        zeek = FlowRecordBatch.concat(list(ZeekConnLog(tsv)))
        say("flow window aggregator ...")
        result["aggregate_ipfix_records"] = _median_rate(lambda: _aggregate(parsed), repeats)
        result["aggregate_zeek_records"] = _median_rate(lambda: _aggregate(zeek), repeats)
        if udp:
            say("collector over loopback UDP ...")
            others = [c for c in allowed if c != cpu]
            runs = [_udp_collect(ipfix, records, workdir, others[0] if others else None) for _ in range(repeats)]
            result["udp_ipfix"] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            result["udp_ipfix"]["sender_cpu"] = others[0] if others else "shared"
    return result


def format_flows_bench(r: dict[str, Any]) -> str:
    target = r["target_records_per_s"]

    def line(label: str, key: str) -> str:
        v = r[key]["records_per_s"]
        return f"  {label:<44} {v:>13,.0f} rec/s  {v / target:5.1f}x target"

    lines = [
        f"netad bench flows: {r['records']:,} records, median of {r['repeats']} runs, one core (cpu {r['cpu']}); "
        f"target {target:,} records/s",
        line("parser, NetFlow v9 (direct, 1024 datagrams/call)", "parse_v9"),
        line("parser, IPFIX (direct, 1024 datagrams/call)", "parse_ipfix"),
        line("conn.log reader, TSV", "zeek_tsv"),
        line(f"conn.log reader, TSV, with a dns.log ({r['zeek_tsv_dns']['answers']:,} answers)", "zeek_tsv_dns"),
        line(f"conn.log reader, TSV, with a conn_long.log ({r['zeek_tsv_long']['long_lines']:,} lines)", "zeek_tsv_long"),
        line("conn.log reader, JSON", "zeek_json"),
        line("FlowWindowAggregator (IPFIX records)", "aggregate_ipfix_records"),
        line("FlowWindowAggregator (conn.log records)", "aggregate_zeek_records"),
    ]
    if "udp_ipfix" in r:
        u = r["udp_ipfix"]
        how = ("no loss: it kept up with the sender, so this is a lower bound" if u["records"] >= u["offered"]
               else f"{u['lost_records_pct']:.1f}% lost, {u['kernel_drops']:,.0f} datagrams dropped: the sender outran it")
        lines.append(f"  {'collector, IPFIX over loopback UDP':<44} {u['records_per_s']:>13,.0f} rec/s  "
                     f"{u['records_per_s'] / target:5.1f}x target  (received {u['records']:,.0f} of {u['offered']:,}; "
                     f"sender on cpu {u['sender_cpu']}; {how})")
    return "\n".join(lines)


@click.command("flows")
@click.option("--records", type=click.IntRange(min=10_000), default=1_000_000, show_default=True,
              help="Flow records per source (the conn.log has half as many connections).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Runs per figure (median).")
@click.option("--udp/--no-udp", default=True, show_default=True, help="Also measure the collector over loopback UDP.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def flows(records: int, repeats: int, udp: bool, as_json: bool) -> None:
    """Flow-record throughput: NetFlow v9/IPFIX parser and collector, Zeek conn.log reader, aggregator."""
    import structlog

    from detector.logging import configure

    previous = structlog.get_config()
    configure("warning", "console", stream=sys.stderr)  # the sources log each new exporter and template
    try:
        with tempfile.TemporaryDirectory(prefix="netad-bench-flows-") as tmp:
            result = run_flows_bench(records, Path(tmp), repeats=repeats, udp=udp,
                                     progress=None if as_json else lambda m: click.echo(m, err=True))
    finally:
        structlog.configure(**previous)
    click.echo(json.dumps(result, indent=2) if as_json else format_flows_bench(result))
