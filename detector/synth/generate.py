"""Synthetic traffic: a pcap of a small office network with injected attacks, plus its
ground truth, for the demo (`make run`), tests and benchmarks (`netad synth`).

Where it stands: a source of test and demo traffic, not on the daemon's path; nothing in
the pipeline imports it. The daemon reads what it writes like any other capture.

Profiles:
- "demo": the office 10.20.0.0/16 (DNS/NTP 10.20.0.2, SMB file server 10.20.0.5, intranet
  web 10.20.0.6, monitoring 10.20.0.10, SSH jump host 10.20.0.22, workstations from
  10.20.1.10) talking to peers in the TEST-NET ranges. A benign prefix (`benign_s`, default
  4 h), then `attack_s` (default 1 h) in which benign traffic goes on and three attacks are
  injected (port scan, SSH brute force, SYN flood), at least 10 minutes apart and none in
  the first 5 minutes, with two benign-but-unusual events (GOOD-*, labelled 0) in the
  gaps. Benign traffic runs at about 30 packets/s; the default 5 h is about 830k packets,
  a fifth of them the SYN flood's minute. Four hours, because the demo trains on the
  prefix and the peer history (capture.windows._history) counts nothing new in a host's
  first hour: on a 2 h prefix the model saw 1.1 h of it, and the workstations' new outside
  peers coming back in the test hour opened 11 false `beaconing` incidents; on 4 h, none.
- "bench": 4,000 workstations in 10.30.0.0/16 and 20,000 peers in 198.18.0.0/15, benign
  only, exactly `packets` frames (default 1,000,000) over about `benign_s` (default 300 s).

How: the network and its hosts' activity (`_synth_network`) drive traffic models (users in
`_synth_benign`, timers in `_synth_services`, SSH in `_synth_ssh`, injected events in
`_synth_events`) that draw sessions as numpy arrays; `_synth_sessions` expands them into
packet columns; `_synth_frames` turns those into frame headers with correct checksums, and
`pcapwriter` writes them in one go. Payloads are zeros. The same seed gives the same bytes.
The ground truth is read off the packets (each injected packet is tagged), so an interval
always spans exactly its event's packets.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.capture.packets.pcapwriter import write_pcap
from detector.files import naming
from detector.progress import Progress
from detector.synth import _benign as benign
from detector.synth import _events as events
from detector.synth import _services as services
from detector.synth import _ssh as ssh
from detector.synth._frames import PacketTable, arp_rows, ipv4_rows, mdns6_rows
from detector.synth._network import NS_PER_S, Activity, Network, make_activity, make_network, rng_for

PROFILES = ("demo", "bench")
TRUTH_HEADER = (
    "event",
    "is_attack_or_fault",
    "start_offset_s",
    "end_offset_s",
    "start_epoch_pcap",
    "end_epoch_pcap",
    "description",
)
WARMUP_S = 120  # sessions are drawn from this long before the start, so some are under way
BENCH_PACKETS = 1_000_000
DEFAULTS = {
    "demo": {"benign_s": 14400.0, "attack_s": 3600.0, "hosts": 20},
    "bench": {"benign_s": 300.0, "attack_s": 0.0, "hosts": 4000},
}
# Session rates per workstation per minute at activity 1: the users' traffic, which the
# bench profile scales to reach its packet count.
RATES_PER_MIN = {"browsing": 0.5, "intranet": 0.2, "file_shares": 0.1, "background_dns": 0.5}
# Packets per second per workstation that RATES_PER_MIN give: the bench profile's first
# guess, refined by drawing.
VARIABLE_PPS_PER_HOST = 1.0


@dataclass
class AttackInterval:
    """A labelled event: its name (the truth CSV's `event`), first and last packet times,
    who did it to whom ("spoofed" for a spoofed flood), and a description."""

    event: str
    start_epoch_s: float
    end_epoch_s: float
    attacker: str
    target: str
    description: str
    is_attack: bool = True  # False for the benign-but-unusual events (GOOD-*)


@dataclass
class SynthResult:
    pcap: Path
    truth: Path | None
    packets: int  # frames written
    start_epoch_s: float  # the capture's start: its first frame is at this time
    end_epoch_s: float  # the capture's nominal end: every frame is before it
    benign_until_epoch_s: float  # end of the attack-free prefix
    home_net: str
    attacks: list[AttackInterval]  # the attacks (is_attack_or_fault = 1), in time order
    events: list[AttackInterval] = field(default_factory=list)  # every truth row, in time order


def generate(
    out: Path,
    truth: Path | None = None,
    *,
    profile: str = "demo",
    seed: int = 7,
    start_epoch_s: float = 1_700_000_000.0,
    benign_s: float | None = None,
    attack_s: float | None = None,
    hosts: int | None = None,
    packets: int | None = None,
    snaplen: int | None = None,
    progress: bool = False,
) -> SynthResult:
    """Write a synthetic capture to `out` (classic pcap, Ethernet, µs timestamps) and, when
    `truth` is given, its ground-truth CSV (header TRUTH_HEADER; offsets are from
    `start_epoch_s`). `hosts` is the number of workstations; `packets` (bench only) the
    exact number of frames; `snaplen` cuts frames to that many bytes, as tcpdump -s does;
    `progress` shows its steps on stderr (a terminal only)
    (the default keeps whole frames). Raises ValueError for impossible settings."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    defaults = DEFAULTS[profile]
    benign_s = float(defaults["benign_s"] if benign_s is None else benign_s)
    attack_s = float(defaults["attack_s"] if attack_s is None else attack_s)
    n_hosts = int(defaults["hosts"] if hosts is None else hosts)
    if benign_s <= 0 or attack_s < 0:
        raise ValueError("benign_s must be > 0 and attack_s >= 0")
    if profile == "bench" and attack_s > 0:
        raise ValueError("the bench profile has no attack part; leave attack_s unset")
    if profile == "demo" and packets is not None:
        raise ValueError("packets applies to the bench profile; size the demo with benign_s and attack_s")
    if packets is not None and packets < 1:
        raise ValueError("packets must be >= 1")
    if snaplen is not None and snaplen < 64:
        raise ValueError("snaplen must be at least 64 bytes, to keep the headers")

    start_ns = int(round(start_epoch_s * 1_000_000)) * 1000
    end_ns = start_ns + int(round((benign_s + attack_s) * NS_PER_S))
    benign_until_ns = start_ns + int(round(benign_s * NS_PER_S))
    span = benign.Span(begin_ns=start_ns - WARMUP_S * NS_PER_S, start_ns=start_ns, end_ns=end_ns)
    net = make_network(profile, n_hosts, rng_for(seed, "network"))
    act = make_activity(rng_for(seed, "activity"), n_hosts, span.begin_ns, span.end_ns, churn=profile == "demo")

    bar = Progress("synth", total=4, unit="steps", enabled=progress)
    bar.update(1, note="network and activity planned")
    fixed, arp, mdns = _fixed_traffic(net, act, span, seed)
    planned = events.plan_events(rng_for(seed, "schedule"), net, act, benign_until_ns, end_ns) if attack_s > 0 else []
    injected = [p.draw(rng_for(seed, p.name + str(i)), i + 1) for i, p in enumerate(planned)]
    limit = None
    if profile == "bench":
        limit = BENCH_PACKETS if packets is None else packets
        n_fixed = sum(_count_in(span, ts) for ts in (fixed.ts_ns, arp["ts_ns"], mdns["ts_ns"]))
        variable = _scaled_variable_traffic(net, act, span, seed, limit, n_fixed)
    else:
        variable = _variable_traffic(net, act, seed, 1.0)
    ipv4 = PacketTable.concat([fixed, variable, *injected])
    bar.update(1, note=f"{ipv4.ts_ns.shape[0]:,} IPv4 packets made")

    ts, rows, wire, kept = _assemble(net, ipv4, arp, mdns, seed, span, limit)
    bar.update(1, note=f"{ts.shape[0]:,} frames assembled")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    width = rows.shape[1]
    write_pcap(
        out, ts, rows.reshape(-1), np.arange(ts.shape[0], dtype=np.int64) * width, np.minimum(wire, width),
        wire_lengths=wire, snaplen=65535 if snaplen is None else snaplen,
    )
    bar.update(1, note=f"written to {out}")
    bar.close()

    labelled = _intervals(planned, kept)
    if truth is not None:
        truth = Path(truth)
        truth.parent.mkdir(parents=True, exist_ok=True)
        _write_truth(truth, labelled, start_ns)
    intervals = [interval for interval, _, _ in labelled]
    if limit is not None:  # a bench capture ends where its packet count is reached
        end_ns = int(ts[-1]) + 1000
    return SynthResult(
        pcap=out,
        truth=truth,
        packets=int(ts.shape[0]),
        start_epoch_s=start_ns / NS_PER_S,
        end_epoch_s=end_ns / NS_PER_S,
        benign_until_epoch_s=min(benign_until_ns, end_ns) / NS_PER_S,
        home_net=net.home_net,
        attacks=[i for i in intervals if i.is_attack],
        events=intervals,
    )


def _fixed_traffic(net: Network, act: Activity, span: benign.Span, seed: int) -> tuple[PacketTable, dict, dict]:
    """Traffic whose volume is set by the network's size, not by user activity rates."""
    tables = [
        services.checkins(net, act, rng_for(seed, "checkins"), span),
        services.time_sync(net, act, rng_for(seed, "time_sync"), span),
        services.monitoring(net, act, rng_for(seed, "monitoring"), span),
        services.metrics_scrapes(net, rng_for(seed, "metrics_scrapes"), span),
        ssh.admin_ssh(net, act, rng_for(seed, "admin_ssh"), span),
        services.backups(net, rng_for(seed, "backups"), span),
    ]
    arp, mdns = services.link_local(net, act, rng_for(seed, "link_local"), span)
    return PacketTable.concat(tables), arp, mdns


def _variable_traffic(net: Network, act: Activity, seed: int, scale: float) -> PacketTable:
    """Users' sessions, at RATES_PER_MIN times `scale`."""
    return PacketTable.concat(
        [getattr(benign, name)(net, act, rng_for(seed, name), rate * scale) for name, rate in RATES_PER_MIN.items()]
    )


def _count_in(span: benign.Span, ts_ns: np.ndarray) -> int:
    return int(np.count_nonzero((ts_ns >= span.start_ns) & (ts_ns < span.end_ns)))


def _scaled_variable_traffic(
    net: Network, act: Activity, span: benign.Span, seed: int, target: int, n_fixed: int
) -> PacketTable:
    """User traffic scaled so that the capture holds a little more than `target` frames
    (it is then cut to exactly `target`): draw, rescale by what is missing or too much,
    draw again until within 2-25% above."""
    duration_s = (span.end_ns - span.start_ns) / NS_PER_S
    scale = max(target * 1.1 - n_fixed, 1.0) / (VARIABLE_PPS_PER_HOST * net.workstations.shape[0] * duration_s)
    for _ in range(8):
        table = _variable_traffic(net, act, seed, scale)
        n_variable = _count_in(span, table.ts_ns)
        total = n_fixed + n_variable
        if target * 1.02 <= total <= target * 1.25 or n_fixed >= target * 1.02:
            break
        scale *= max(target * 1.1 - n_fixed, 1.0) / max(n_variable, 1)
    return table


def _assemble(
    net: Network, ipv4: PacketTable, arp: dict, mdns: dict, seed: int, span: benign.Span, limit: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, PacketTable]:
    """All frames of the capture in time order (timestamps floored to µs, cut to the
    capture's span and, if `limit`, to its first `limit` frames): (ts_ns, header rows,
    wire lengths, the IPv4 packets kept, in order)."""

    def in_span(ts: np.ndarray) -> np.ndarray:
        return (ts >= span.start_ns) & (ts < span.end_ns)

    def floor_us(ts: np.ndarray) -> np.ndarray:
        return ts - ts % 1000

    keep = in_span(ipv4.ts_ns)
    ipv4 = ipv4.take(np.flatnonzero(keep))
    ipv4.ts_ns = floor_us(ipv4.ts_ns)
    # stable: packets of one session that share a microsecond stay in the order drawn
    ipv4 = ipv4.take(np.argsort(ipv4.ts_ns, kind="stable"))
    a = np.flatnonzero(in_span(arp["ts_ns"]))
    m = np.flatnonzero(in_span(mdns["ts_ns"]))
    ts = np.concatenate([ipv4.ts_ns, floor_us(arp["ts_ns"][a]), floor_us(mdns["ts_ns"][m])])
    order = np.argsort(ts, kind="stable")
    if limit is not None:
        order = order[:limit]
    n4 = len(ipv4)
    ipv4 = ipv4.take(order[order < n4])  # still in time order: `order` is
    ip_id = rng_for(seed, "ip_id").integers(0, 1 << 16, len(ipv4))
    rows4, wire4 = ipv4_rows(ipv4, net.net_addr, net.net_mask, net.gateway, ip_id)
    rows_arp, wire_arp = arp_rows(arp["sender"][a], arp["target"][a], arp["is_reply"][a])
    rows_mdns, wire_mdns = mdns6_rows(mdns["ts_ns"][m], mdns["src"][m], mdns["payload_bytes"][m])
    # rows are laid out as [kept IPv4 in order | all ARP | all mDNS]; map `order` onto that
    position = np.empty(ts.shape[0], dtype=np.int64)
    position[order[order < n4]] = np.arange(len(ipv4))
    position[n4:] = len(ipv4) + np.arange(ts.shape[0] - n4)
    rows = np.concatenate([rows4, rows_arp, rows_mdns])[position[order]]
    wire = np.concatenate([wire4, wire_arp, wire_mdns])[position[order]]
    return ts[order], rows, wire, ipv4


def _intervals(planned: list[events.PlannedEvent], kept: PacketTable) -> list[tuple[AttackInterval, int, int]]:
    """Each event's interval, from its packets' first and last timestamps (tag = index + 1),
    with those timestamps in ns."""
    out = []
    for i, p in enumerate(planned):
        ts = kept.ts_ns[kept.tag == i + 1]
        if ts.size == 0:
            continue
        first, last = int(ts.min()), int(ts.max())
        role = "attacker" if p.is_attack else "source"
        description = f"{p.what} {role}={p.actor} target={p.target}"
        interval = AttackInterval(
            p.name, first / NS_PER_S, last / NS_PER_S, p.actor, p.target, description, is_attack=p.is_attack
        )
        out.append((interval, first, last))
    return out


def _write_truth(path: Path, labelled: list[tuple[AttackInterval, int, int]], start_ns: int) -> None:
    """The westermo-style truth CSV. Offsets (2 decimals) and epochs (3 decimals) are
    rounded outwards, so each interval contains all of its event's packets."""

    def fixed(value_ns: int, decimals: int, up: bool) -> str:
        unit = 10 ** (9 - decimals)
        q = -(-value_ns // unit) if up else value_ns // unit
        return f"{q // 10**decimals}.{q % 10**decimals:0{decimals}d}"

    with naming(path), path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(TRUTH_HEADER)
        for interval, first, last in labelled:
            writer.writerow([
                interval.event, 1 if interval.is_attack else 0,
                fixed(first - start_ns, 2, False), fixed(last - start_ns, 2, True),
                fixed(first, 3, False), fixed(last, 3, True), interval.description,
            ])
