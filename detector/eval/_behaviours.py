"""Packets of the history-revealed behaviours that `netad splice --scenarios` inserts.

Where it stands: a private part of `detector.eval.scenarios` (labelled test traffic, beside
the pipeline). Each function turns one scenario entry into a `PacketTable` of IPv4 packets
(timestamps relative to the behaviour's start, in ns), reusing the synthetic generator's
session expanders (`detector.synth._sessions`): TCP handshakes, data bursts with an ACK
back every second MSS-sized segment, FIN closes, UDP request/response pairs. Timestamps
are those a tap near the home network sees: an external peer answers after a round trip
of tens of ms, a LAN peer after about a ms. Everything random comes from the entry's own
`numpy.random.Generator`, so a list gives the same packets every time.

What each kind looks like on the wire is described in docs/EVALUATION.md, section
"Scenarios of history-revealed behaviour".
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from detector.contracts import PROTO_TCP, TCP_ACK, TCP_RST, TCP_SYN
from detector.synth._frames import PacketTable
from detector.synth._sessions import CLOSE_CLIENT_FIN, Bursts, TcpSessions, tcp_sessions, udp_exchange

MS = 1_000_000
S = 1_000_000_000
EPHEMERAL_PORTS = (32768, 60999)  # Linux's default ip_local_port_range
SYN_RETRY_S = (1.0, 3.0)  # an unanswered SYN is sent again 1 s and 3 s after the first
WINDOW_CLIENT, WINDOW_SERVER = 64240, 65160


@dataclass(frozen=True)
class Hosts:
    """What the assembler knows about the addresses a behaviour uses."""

    is_home: Callable[[int], bool]  # inside the home networks
    ttl_of: Callable[[int], int | None]  # TTL the capture shows for this address's packets, if any


@dataclass
class Behaviour:
    """Packets of one inserted behaviour and who did what (for the truth description)."""

    packets: PacketTable  # ts_ns relative to the behaviour's start
    attackers: list[str]  # who originates the anomalous traffic
    targets: list[str]  # who receives it
    details: dict[str, object]  # kind-specific counts for the description
    session_starts_ns: np.ndarray | None = None  # TCP SYN times of the main sessions (relative)


def ip_int(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def _peer_rtt_ns(hosts: Hosts, peer: int, rng: np.random.Generator) -> int:
    """Round trip from the tap to `peer` and back: tens of ms outside, about a ms inside."""
    return int(rng.uniform(0.3, 2.0) * MS) if hosts.is_home(peer) else int(rng.uniform(15, 80) * MS)


def _ttl(hosts: Hosts, ip: int, rng: np.random.Generator) -> int:
    """The TTL the capture shows for `ip`; for an address it never shows, an initial 64 (or
    128) less the hops it is away (none on the LAN)."""
    seen = hosts.ttl_of(ip)
    if seen is not None:
        return seen
    initial = 64 if rng.random() < 0.7 else 128
    return initial if hosts.is_home(ip) else initial - int(rng.integers(8, 21))


def _ports(rng: np.random.Generator, n: int) -> np.ndarray:
    """n consecutive ephemeral ports from a random start, as a client's stack hands them out."""
    lo, hi = EPHEMERAL_PORTS
    return lo + (int(rng.integers(lo, hi + 1)) - lo + np.arange(n)) % (hi - lo + 1)


def _sessions(
    start_ns: np.ndarray, client: np.ndarray, server: np.ndarray, server_port: np.ndarray | int, hosts: Hosts,
    rng: np.random.Generator, segment_gap_ns: np.ndarray | int = MS,
) -> TcpSessions:
    """TCP sessions with each side's own RTT, TTL and window; closed by the client's FIN."""
    n = start_ns.shape[0]
    rtt = {int(ip): _peer_rtt_ns(hosts, int(ip), rng) for ip in np.unique(np.concatenate([client, server])).tolist()}
    ttl = {int(ip): _ttl(hosts, int(ip), rng) for ip in rtt}
    jitter = rng.uniform(0.9, 1.1, size=(2, n))  # a round trip is never quite the same twice
    return TcpSessions(
        start_ns=start_ns.astype(np.int64),
        client=client.astype(np.uint32),
        server=server.astype(np.uint32),
        client_port=_ports(rng, n),
        server_port=np.broadcast_to(np.asarray(server_port), (n,)).copy(),
        rtt_server_ns=(np.array([rtt[int(s)] for s in server.tolist()]) * jitter[0]).astype(np.int64),
        rtt_client_ns=(np.array([rtt[int(c)] for c in client.tolist()]) * jitter[1]).astype(np.int64),
        segment_gap_ns=np.broadcast_to(np.asarray(segment_gap_ns, dtype=np.int64), (n,)).copy(),
        ttl_client=np.array([ttl[int(c)] for c in client.tolist()]),
        ttl_server=np.array([ttl[int(s)] for s in server.tolist()]),
        window_client=np.full(n, WINDOW_CLIENT),
        window_server=np.full(n, WINDOW_SERVER),
        close=np.full(n, CLOSE_CLIENT_FIN),
        close_gap_ns=(rng.uniform(2, 30, n) * MS).astype(np.int64),
        tag=np.ones(n, dtype=np.uint8),
    )


def _bursts(per_session: list[list[tuple[bool, int, int]]]) -> Bursts:
    """Bursts from a list per session of (from_server, payload bytes, gap ns before it)."""
    rows = [(k, fs, b, g) for k, bursts in enumerate(per_session) for fs, b, g in bursts]
    return Bursts(
        session=np.array([r[0] for r in rows], dtype=np.int64),
        from_server=np.array([r[1] for r in rows], dtype=bool),
        payload_bytes=np.array([r[2] for r in rows], dtype=np.int64),
        gap_ns=np.array([r[3] for r in rows], dtype=np.int64),
    )


def _refused_or_unanswered(t_ns: np.ndarray, client: int, server: np.ndarray, port: np.ndarray, refused: np.ndarray,
                           hosts: Hosts, rng: np.random.Generator) -> PacketTable:
    """Connection attempts that get a RST back (refused) or nothing (SYN sent three times)."""
    n = t_ns.shape[0]
    if n == 0:
        return PacketTable.build(0)
    sport = _ports(rng, n)
    isn = rng.integers(0, 1 << 32, n, dtype=np.int64)
    ttl_c = _ttl(hosts, client, rng)
    rtt = np.array([_peer_rtt_ns(hosts, int(s), rng) for s in server.tolist()])
    tables = []
    for retry_s in (0.0, *SYN_RETRY_S):
        k = np.arange(n) if retry_s == 0.0 else np.flatnonzero(~refused)  # a refused attempt is not retried
        tables.append(PacketTable.build(k.size, ts_ns=t_ns[k] + int(retry_s * S), src=client, dst=server[k], proto=PROTO_TCP,
                                        sport=sport[k], dport=port[k], flags=TCP_SYN, seq=isn[k], ttl=ttl_c, window=WINDOW_CLIENT,
                                        tag=1))
    k = np.flatnonzero(refused)
    ttl_s = np.array([_ttl(hosts, int(s), rng) for s in server[k].tolist()], dtype=np.int64)
    tables.append(PacketTable.build(k.size, ts_ns=t_ns[k] + rtt[k], src=server[k], dst=client, proto=PROTO_TCP, sport=port[k],
                                    dport=sport[k], flags=TCP_RST | TCP_ACK, seq=0, ack=isn[k] + 1, ttl=ttl_s, tag=1))
    return PacketTable.concat(tables)


# --------------------------------------------------------------------------------------
# The kinds
# --------------------------------------------------------------------------------------


def beacon(host: str, peer: str, port: int, period_s: float, jitter_s: float, duration_s: float, bytes_out: int, bytes_in: int,
           hosts: Hosts, rng: np.random.Generator) -> Behaviour:
    """A small TCP session from `host` to `peer` every period_s +- jitter_s (each gap drawn
    on its own, uniformly) for duration_s: handshake, bytes_out up, bytes_in down, FIN."""
    gaps_ns = ((period_s + rng.uniform(-jitter_s, jitter_s, int(duration_s // max(period_s - jitter_s, 1e-3)) + 2)) * S).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(gaps_ns)])
    starts = starts[starts <= int(duration_s * S)]
    n = starts.shape[0]
    s = _sessions(starts, np.full(n, ip_int(host)), np.full(n, ip_int(peer)), port, hosts, rng)
    ask = (rng.uniform(1, 20, n) * MS).astype(np.int64)  # the client's think time after the handshake
    answer = (rng.uniform(1, 10, n) * MS).astype(np.int64)  # the server's processing time
    b = _bursts([[(False, bytes_out, int(ask[k])), (True, bytes_in, int(answer[k]))] for k in range(n)])
    return Behaviour(tcp_sessions(s, b, rng), [host], [peer], {"sessions": n, "period_s": period_s, "jitter_s": jitter_s}, starts)


def onset(host: str, peers: int, peer_net: str, ports: list[int], internal_peers: list[str], dns: str | None, ntp: list[str],
          duration_s: float, ssh_attempts: int, hosts: Hosts, rng: np.random.Generator) -> Behaviour:
    """A bot's first minutes: DNS look-ups, NTP, one connection to each of `peers` new
    external peers on assorted ports (most answered with a little data, some refused, some
    unanswered), and `ssh_attempts` SSH logins that fail against each internal peer."""
    h = ip_int(host)
    net = ipaddress.IPv4Network(peer_net)
    pool = np.array([int(a) for a in net.hosts()], dtype=np.int64)
    ext = rng.choice(pool, size=min(peers, pool.size), replace=False)
    n_ext = ext.shape[0]
    t_ext = np.sort(rng.uniform(0, duration_s, n_ext) * S).astype(np.int64)
    port = rng.choice(np.asarray(ports, dtype=np.int64), n_ext)
    outcome = rng.choice(3, n_ext, p=[0.6, 0.2, 0.2])  # 0 answered, 1 refused, 2 unanswered
    tables = []
    if dns is not None:  # a look-up just before each connection
        lookups = t_ext - (rng.uniform(5, 60, n_ext) * MS).astype(np.int64)
        tables.append(udp_exchange(lookups, np.full(n_ext, h), np.full(n_ext, ip_int(dns)), _ports(rng, n_ext), 53,
                                   rng.integers(28, 48, n_ext), rng.integers(44, 160, n_ext), (rng.uniform(2, 40, n_ext) * MS).astype(np.int64),
                                   ttl_client=_ttl(hosts, h, rng), ttl_server=_ttl(hosts, ip_int(dns), rng), tag=1))
    if ntp:
        t_ntp = np.sort(rng.uniform(0, duration_s, len(ntp)) * S).astype(np.int64)
        servers = np.array([ip_int(a) for a in ntp], dtype=np.int64)
        rtt = np.array([_peer_rtt_ns(hosts, int(a), rng) for a in servers.tolist()])
        ttl_s = np.array([_ttl(hosts, int(a), rng) for a in servers.tolist()])
        tables.append(udp_exchange(t_ntp, np.full(len(ntp), h), servers, _ports(rng, len(ntp)), 123, np.full(len(ntp), 48),
                                   np.full(len(ntp), 48), rtt, ttl_client=_ttl(hosts, h, rng), ttl_server=ttl_s, tag=1))
    ok = np.flatnonzero(outcome == 0)
    s = _sessions(t_ext[ok], np.full(ok.size, h), ext[ok], port[ok], hosts, rng)
    b = _bursts([[(False, int(rng.integers(80, 600)), int(rng.uniform(1, 30) * MS)),
                  (True, int(rng.integers(150, 4000)), int(rng.uniform(5, 80) * MS))] for _ in range(ok.size)])
    tables.append(tcp_sessions(s, b, rng))
    failed = np.flatnonzero(outcome != 0)
    tables.append(_refused_or_unanswered(t_ext[failed], h, ext[failed], port[failed], outcome[failed] == 1, hosts, rng))
    n_ssh = ssh_attempts * len(internal_peers)
    if n_ssh:
        victims = np.repeat([ip_int(a) for a in internal_peers], ssh_attempts)
        t_ssh = np.sort(rng.uniform(0, duration_s, n_ssh) * S).astype(np.int64)
        s = _sessions(t_ssh, np.full(n_ssh, h), victims, 22, hosts, rng)
        tables.append(tcp_sessions(s, _bursts([_ssh_failed_login(rng) for _ in range(n_ssh)]), rng))
    sessions = int(ok.size + failed.size + n_ssh)
    details = {"peers": n_ext, "ports": int(np.unique(port).size), "sessions": sessions, "ssh_attempts": n_ssh}
    return Behaviour(PacketTable.concat(tables), [host], list(internal_peers), details)


def _ssh_handshake(rng: np.random.Generator) -> list[tuple[bool, int, int]]:
    """SSH up to the user-auth request: banners, key exchange, new keys."""
    return [
        (True, int(rng.integers(21, 42)), 2 * MS),  # the server's banner comes first
        (False, int(rng.integers(21, 42)), int(rng.uniform(1, 5) * MS)),
        (False, int(rng.integers(1200, 1600)), MS),  # KEXINIT
        (True, int(rng.integers(900, 1100)), MS),
        (False, 48, int(rng.uniform(1, 5) * MS)),  # ECDH init
        (True, int(rng.integers(500, 700)), int(rng.uniform(2, 10) * MS)),  # ECDH reply, host key, NEWKEYS
        (False, 16, MS),
        (False, 52, MS),  # service request
        (True, 52, MS),
    ]


def _ssh_failed_login(rng: np.random.Generator) -> list[tuple[bool, int, int]]:
    return _ssh_handshake(rng) + [(False, int(rng.integers(80, 140)), int(rng.uniform(20, 200) * MS)), (True, 52, int(rng.uniform(1, 3) * S))]


def upload(host: str, peer: str, port: int, bytes_out: int, duration_s: float, hosts: Hosts, rng: np.random.Generator) -> Behaviour:
    """One TLS-like session from `host` to `peer` that uploads bytes_out at a steady rate for
    duration_s: MSS-sized segments, an ACK back every second one, a short reply, FIN."""
    n_segments = -(-bytes_out // 1460)
    gap_ns = int(duration_s * S / max(n_segments, 1))
    s = _sessions(np.zeros(1, dtype=np.int64), np.array([ip_int(host)]), np.array([ip_int(peer)]), port, hosts, rng, segment_gap_ns=gap_ns)
    b = _bursts([[(False, 517, 2 * MS), (True, 1400, 5 * MS), (False, 126, 2 * MS), (True, 51, MS), (False, bytes_out, 3 * MS),
                  (True, int(rng.integers(40, 400)), 20 * MS)]])
    return Behaviour(tcp_sessions(s, b, rng), [host], [peer], {"bytes_out": bytes_out, "duration_s": duration_s})


def role_change(host: str, peers: list[str], port: int, sessions: int, duration_s: float, session_s: float, hosts: Hosts,
                rng: np.random.Generator) -> Behaviour:
    """`host` starts accepting TCP sessions on `port` from internal `peers` (round robin,
    start times uniform over duration_s): interactive SSH (keystrokes and their echo) on 22,
    SMB file reads (small requests, up to 64 KiB answers) on 445, else request/response."""
    client = np.array([ip_int(peers[k % len(peers)]) for k in range(sessions)], dtype=np.int64)
    starts = np.sort(rng.uniform(0, max(duration_s - session_s, 1.0), sessions) * S).astype(np.int64)
    s = _sessions(starts, client, np.full(sessions, ip_int(host)), port, hosts, rng)
    per_session = []
    for _ in range(sessions):
        length_ns = rng.uniform(0.5, 1.5) * session_s * S
        if port == 22:
            head, think_s, ask, answer = _ssh_handshake(rng) + [(False, 100, 200 * MS), (True, 28, MS)], 1.5, (36, 120), (36, 1400)
        elif port == 445:
            # negotiate, session setup (two legs), tree connect
            head = [(False, 194, MS), (True, 306, MS), (False, 220, MS), (True, 318, MS),
                    (False, 310, MS), (True, 126, MS), (False, 100, MS), (True, 80, MS)]
            think_s, ask, answer = 0.8, (100, 180), (4096, 65536)
        else:
            head, think_s, ask, answer = [], 1.0, (40, 400), (40, 4000)
        bursts, t = list(head), 0.0
        while t < length_ns and len(bursts) < 400:
            think = rng.exponential(think_s) * S
            bursts += [(False, int(rng.integers(*ask)), int(think)), (True, int(rng.integers(*answer)), int(rng.uniform(1, 20) * MS))]
            t += think
        per_session.append(bursts)
    packets = tcp_sessions(s, _bursts(per_session), rng)
    return Behaviour(packets, list(dict.fromkeys(peers)), [host], {"port": port, "sessions": sessions}, starts)
