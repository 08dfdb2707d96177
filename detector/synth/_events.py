"""Injected events for the synthetic generator: three attacks and two benign-but-unusual
events, their schedule, and the traffic of each.

Where it stands: a private part of `detector.synth.generate` (test and demo traffic, not on
the daemon's path). `plan_events` places the events in the attack part; each event's
packets are drawn inside its planned slot [start_ns, start_ns + duration_ns) and tagged,
so the ground truth is read off the packets and the spacing of the plan holds for them.

- ATTACK-PORTSCAN: nmap-style SYN scan (one source port, random TTLs, window 1024) of 1000
  ports of the file server from a compromised workstation; closed ports answer RST-ACK,
  open ones SYN-ACK, which the scanner's kernel resets.
- ATTACK-SSH-BRUTEFORCE: an outside address opens 1-3 SSH connections a second to the jump
  host, tries a few passwords on each (each refused after PAM's delay) and is cut off.
- ATTACK-SYNFLOOD: SYNs from random spoofed sources to the intranet web server's port 443 at
  a few thousand per second; the server answers about a third with a SYN-ACK (what its
  backlog admits) and silently drops the rest.
- GOOD-SSH (benign): an admin logs in to the jump host from an outside address never seen
  before, and works for a couple of minutes.
- GOOD-BULK-COPY (benign): a workstation copies a large folder to the file server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from detector.contracts import PROTO_TCP, TCP_ACK, TCP_RST, TCP_SYN
from detector.synth._benign import CLOSE_CLIENT, MS, US, exchange_bursts, tcp_table
from detector.synth._frames import PacketTable
from detector.synth._network import NS_PER_S, TTL_LINUX, TTL_WINDOWS, Activity, Network, ip_str, lognormal_int
from detector.synth._sessions import tcp_sessions
from detector.synth._ssh import ssh_sessions

ATTACK_LEAD_S = 300  # no attack in the attack part's first 5 minutes
ATTACK_GAP_S = 600  # at least 10 minutes between attacks
ATTACK_TAIL_S = 60  # benign traffic after the last attack, so its windows close
MIN_DURATION_SHARE = 0.25  # a short attack part shrinks the attacks, to this share at most
# nominal attack durations (s), in the order the attacks come
NOMINAL_DURATION_S = {"ATTACK-PORTSCAN": (150, 240), "ATTACK-SSH-BRUTEFORCE": (150, 240), "ATTACK-SYNFLOOD": (40, 60)}
SCAN_PORTS = 1000
FILE_SERVER_OPEN_PORTS = (22, 135, 139, 445, 9100)
# Ports a scan of "the top 1000" reaches beyond the well-known range.
_COMMON_HIGH_PORTS = (
    1080, 1194, 1433, 1521, 1723, 1883, 2049, 2082, 2083, 2181, 2375, 2376, 3000, 3128, 3268, 3306,
    3389, 3690, 4443, 4444, 5000, 5060, 5222, 5432, 5601, 5672, 5900, 5985, 5986, 6379, 6443, 6667,
    7001, 8000, 8008, 8080, 8081, 8443, 8888, 9000, 9090, 9100, 9200, 9418, 10000, 11211, 27017,
)
SSH_CONNECTION_MAX_S = 25  # prelude + up to 6 refused passwords + close fit in this
FLOOD_ANSWERED_SHARE = 0.3


@dataclass
class PlannedEvent:
    name: str  # the truth CSV's `event`
    is_attack: bool
    start_ns: int
    duration_ns: int
    actor: str  # attacker (or "spoofed"), or the source of a benign event
    target: str
    what: str  # the description, before "attacker=... target=..."
    draw: Callable[[np.random.Generator, int], PacketTable]  # (rng, tag) -> the event's packets


def min_attack_s() -> float:
    """The shortest attack part that holds the three attacks with their spacing."""
    fixed_s = ATTACK_LEAD_S + (len(NOMINAL_DURATION_S) - 1) * ATTACK_GAP_S + ATTACK_TAIL_S
    return fixed_s + MIN_DURATION_SHARE * sum(hi for _, hi in NOMINAL_DURATION_S.values())


def plan_events(
    rng: np.random.Generator, net: Network, act: Activity, attack_start_ns: int, end_ns: int
) -> list[PlannedEvent]:
    """The three attacks in order, ATTACK_LEAD_S into the attack part, ATTACK_GAP_S apart and
    ATTACK_TAIL_S before its end, the spare time spread at random (a short attack part
    shrinks their durations instead); a benign-but-unusual event in the middle of each gap.
    Raises ValueError when the attack part is too short."""
    attack_s = (end_ns - attack_start_ns) / NS_PER_S
    duration_s = np.array([rng.uniform(lo, hi) for lo, hi in NOMINAL_DURATION_S.values()])
    room_s = attack_s - ATTACK_LEAD_S - (len(duration_s) - 1) * ATTACK_GAP_S - ATTACK_TAIL_S
    if room_s < MIN_DURATION_SHARE * duration_s.sum():
        raise ValueError(
            f"attack_s={attack_s:g} is too short for three attacks 10 minutes apart; use 0 or >= {min_attack_s():.0f}"
        )
    duration_s *= min(1.0, room_s / duration_s.sum())
    spare_s = (room_s - duration_s.sum()) * rng.dirichlet(np.ones(len(duration_s) + 1))
    before_s = np.concatenate([[0], np.cumsum(duration_s[:-1] + ATTACK_GAP_S)])  # earlier attacks and gaps
    offsets_s = ATTACK_LEAD_S + np.cumsum(spare_s[:-1]) + before_s

    def slot(offset_s: float, length_s: float) -> tuple[int, int]:
        return attack_start_ns + int(offset_s * NS_PER_S), int(length_s * NS_PER_S)

    scan, brute, flood = (slot(o, d) for o, d in zip(offsets_s, duration_s, strict=True))
    gap_centres = (offsets_s[:-1] + duration_s[:-1] + offsets_s[1:]) / 2 + rng.uniform(-30, 30, 2)
    login, copy = slot(gap_centres[0] - 75, 150), slot(gap_centres[1] - 60, 120)

    # the scanner and the copier are ordinary workstations that are up all along
    stable = np.flatnonzero((act.up_from_ns <= attack_start_ns) & (act.up_until_ns >= end_ns))
    stable = stable[~np.isin(stable, net.admins)]
    if stable.size < 2:
        stable = np.arange(net.workstations.shape[0])
    scanner, copier = (int(net.workstations[i]) for i in rng.choice(stable, size=2, replace=stable.size < 2))
    ssh_rate = float(rng.uniform(1.0, 3.0))
    flood_pps = float(rng.uniform(2000, 3000))
    file_server, jump, web = ip_str(net.file_server), ip_str(net.ssh_jump), ip_str(net.web_server)
    plan = [
        PlannedEvent(
            "ATTACK-PORTSCAN", True, *scan, ip_str(scanner), file_server,
            f"TCP SYN scan of {SCAN_PORTS} ports from a compromised workstation",
            lambda r, tag: port_scan(r, scanner, net.file_server, FILE_SERVER_OPEN_PORTS, *scan, tag=tag),
        ),
        PlannedEvent(
            "ATTACK-SSH-BRUTEFORCE", True, *brute, ip_str(net.ssh_attacker), jump,
            f"SSH password guessing at about {ssh_rate:.1f} connections/s",
            lambda r, tag: ssh_bruteforce(r, net, *brute, rate_per_s=ssh_rate, tag=tag),
        ),
        PlannedEvent(
            "ATTACK-SYNFLOOD", True, *flood, "spoofed", web,
            f"SYN flood to port 443 from spoofed random sources at about {flood_pps:.0f} packets/s",
            lambda r, tag: syn_flood(r, net, *flood, rate_pps=flood_pps, tag=tag),
        ),
        PlannedEvent(
            "GOOD-SSH", False, *login, ip_str(net.remote_admin), jump, "admin SSH login from a new outside address",
            lambda r, tag: remote_admin_login(r, net, *login, tag=tag),
        ),
        PlannedEvent(
            "GOOD-BULK-COPY", False, *copy, ip_str(copier), file_server,
            "workstation copies a large folder to the file share",
            lambda r, tag: bulk_copy(r, net, copier, *copy, tag=tag),
        ),
    ]
    return sorted(plan, key=lambda p: p.start_ns)


def port_scan(
    rng: np.random.Generator,
    attacker: int,
    target: int,
    open_ports: tuple[int, ...],
    start_ns: int,
    duration_ns: int,
    *,
    tag: int,
    n_ports: int = SCAN_PORTS,
) -> PacketTable:
    """A SYN scan of `n_ports` distinct ports (the open ones among them), probes spread
    evenly over the duration, in random port order."""
    candidates = np.unique(np.concatenate([np.arange(1, 1025), np.array(_COMMON_HIGH_PORTS)]))
    others = candidates[~np.isin(candidates, open_ports)]
    chosen = np.concatenate([np.array(open_ports), rng.choice(others, n_ports - len(open_ports), replace=False)])
    port = rng.permutation(chosen).astype(np.int64)
    n = port.shape[0]
    t = start_ns + np.sort(rng.integers(0, duration_ns - 10 * MS, n))
    seq = rng.integers(0, 1 << 32, n)
    scan_port = int(rng.integers(40000, 65000))
    answer_at = t + rng.integers(150 * US, 500 * US, n)
    is_open = np.isin(port, open_ports)
    probes = PacketTable.build(
        n, ts_ns=t, src=attacker, dst=target, proto=PROTO_TCP, sport=scan_port, dport=port, flags=TCP_SYN,
        seq=seq, ttl=rng.integers(37, 60, n), window=1024, tag=tag,
    )
    answers = PacketTable.build(
        n, ts_ns=answer_at, src=target, dst=attacker, proto=PROTO_TCP, sport=port, dport=scan_port,
        flags=np.where(is_open, TCP_SYN | TCP_ACK, TCP_RST | TCP_ACK),
        seq=np.where(is_open, rng.integers(0, 1 << 32, n), 0), ack=seq + 1, ttl=TTL_LINUX,
        window=np.where(is_open, 64240, 0), tag=tag,
    )
    o = np.flatnonzero(is_open)
    resets = PacketTable.build(
        o.size, ts_ns=answer_at[o] + rng.integers(100 * US, 300 * US, o.size), src=attacker, dst=target,
        proto=PROTO_TCP, sport=scan_port, dport=port[o], flags=TCP_RST, seq=seq[o] + 1, ttl=TTL_WINDOWS, tag=tag,
    )
    return PacketTable.concat([probes, answers, resets])


def ssh_bruteforce(
    rng: np.random.Generator, net: Network, start_ns: int, duration_ns: int, *, rate_per_s: float, tag: int
) -> PacketTable:
    """Password guessing: Poisson connections at `rate_per_s`, 1-6 refused passwords each,
    started early enough to end inside the slot."""
    window_ns = max(duration_ns - SSH_CONNECTION_MAX_S * NS_PER_S, duration_ns // 3)
    n = max(1, int(rng.poisson(rate_per_s * window_ns / NS_PER_S)))
    t = start_ns + np.sort(rng.integers(0, window_ns, n))
    return ssh_sessions(
        rng, t, np.full(n, net.ssh_attacker, np.uint32), net.ssh_jump,
        rtt_server_ns=np.full(n, rng.integers(40 * MS, 60 * MS)), failed_attempts=rng.integers(1, 7, n),
        interactive_rounds=np.zeros(n, dtype=np.int64), ttl_client=47, segment_gap_ns=np.full(n, 200 * US),
        close_p=(0.2, 0.5, 0.3, 0.0, 0.0), tag=tag,
    )


def syn_flood(
    rng: np.random.Generator, net: Network, start_ns: int, duration_ns: int, *, rate_pps: float, tag: int
) -> PacketTable:
    """Spoofed SYNs to the web server's port 443 and the server's SYN-ACKs to the share it
    admits. Sources are random unicast addresses outside private and loopback space."""
    n = max(1, int(rng.poisson(rate_pps * (duration_ns - 2 * MS) / NS_PER_S)))
    t = start_ns + np.sort(rng.integers(0, duration_ns - 2 * MS, n))
    first_octet = rng.integers(1, 224, n)
    first_octet = np.where(np.isin(first_octet, (10, 127, 172, 192)), first_octet + 1, first_octet)
    src = (first_octet << 24) | rng.integers(0, 1 << 24, n)
    sport = rng.integers(1024, 65536, n)
    seq = rng.integers(0, 1 << 32, n)
    syns = PacketTable.build(
        n, ts_ns=t, src=src, dst=net.web_server, proto=PROTO_TCP, sport=sport, dport=443, flags=TCP_SYN, seq=seq,
        ttl=rng.integers(30, 120, n), window=rng.choice(np.array([512, 1024, 5840, 64240]), n), tag=tag,
    )
    a = np.flatnonzero(rng.random(n) < FLOOD_ANSWERED_SHARE)
    replies = PacketTable.build(
        a.size, ts_ns=t[a] + rng.integers(40 * US, 400 * US, a.size), src=net.web_server, dst=src[a], proto=PROTO_TCP,
        sport=443, dport=sport[a], flags=TCP_SYN | TCP_ACK, seq=rng.integers(0, 1 << 32, a.size), ack=seq[a] + 1,
        ttl=TTL_LINUX, window=64240, tag=tag,
    )
    return PacketTable.concat([syns, replies])


def remote_admin_login(
    rng: np.random.Generator, net: Network, start_ns: int, duration_ns: int, *, tag: int
) -> PacketTable:
    """One successful SSH login from outside with about 1-2 minutes of typing."""
    rounds = int(np.clip(duration_ns / NS_PER_S / 2.5, 10, 120))
    return ssh_sessions(
        rng, np.array([start_ns]), np.array([net.remote_admin], dtype=np.uint32), net.ssh_jump,
        rtt_server_ns=np.array([35 * MS]), failed_attempts=np.array([0]), interactive_rounds=np.array([rounds]),
        ttl_client=51, segment_gap_ns=np.array([150 * US]), close_p=(1.0, 0.0, 0.0, 0.0, 0.0), tag=tag,
    )


def bulk_copy(
    rng: np.random.Generator, net: Network, workstation: int, start_ns: int, duration_ns: int, *, tag: int
) -> PacketTable:
    """An SMB session that writes a few hundred files of ~80 kB each over most of the
    duration: a volume spike from a known host to a known server on a known port."""
    rounds = int(np.clip(duration_ns / NS_PER_S * 2.0, 20, 600))
    # pauses between files (the copy walking directories) fill three quarters of the
    # duration exactly, so the session ends inside its slot
    think = rng.exponential(1.0, rounds)
    think = (think / think.sum() * 0.75 * duration_ns).astype(np.int64)
    sessions = tcp_table(
        rng, np.array([start_ns]), np.array([workstation], dtype=np.uint32), net.file_server, 445,
        rtt_server_ns=np.array([300 * US]), close_p=CLOSE_CLIENT, close_gap_ns=np.array([2 * NS_PER_S]), tag=tag,
    )
    bursts = exchange_bursts(
        np.array([rounds]), lognormal_int(rng, 80_000, 0.8, 2_000, 2_000_000, rounds), rng.integers(80, 160, rounds),
        think, 300 * US + rng.integers(100 * US, 2 * MS, rounds),
    )
    return tcp_sessions(sessions, bursts, rng)
