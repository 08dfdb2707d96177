"""Benign user traffic for the synthetic generator, and the helpers every traffic model uses.

Where it stands: a private part of `detector.synth.generate` (test and demo traffic, not on
the daemon's path). Each traffic function draws one kind of traffic for all hosts at once
and has `_synth_sessions` expand it into packets. Here: what users do, at rates that follow
each workstation's `Activity` (so hosts differ and vary over time):

- browse external web sites over HTTPS (most sessions after A and AAAA lookups), the
  popular ones far more often;
- use the intranet web server and the SMB file server;
- make DNS lookups of their own; the office DNS server answers from its cache or asks an
  upstream resolver first.

The periodic backbone (monitoring, check-ins, NTP, backups, ARP, mDNS) is in
`_synth_services`, SSH in `_synth_ssh`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.synth._frames import PacketTable
from detector.synth._network import (
    NS_PER_S,
    TTL_LINUX,
    TTL_WINDOWS,
    Activity,
    Network,
    ephemeral_ports,
    lognormal_int,
    poisson_arrivals,
)
from detector.synth._sessions import Bursts, TcpSessions, tcp_sessions, udp_exchange

MS = 1_000_000
US = 1_000
# close-kind probabilities, in the order of _synth_sessions.CLOSE_* (client FIN, server FIN,
# client RST, server RST, none)
CLOSE_WEB = (0.55, 0.28, 0.12, 0.02, 0.03)
CLOSE_CLIENT = (0.85, 0.05, 0.08, 0.0, 0.02)
CLOSE_NEVER = (0.0, 0.0, 0.0, 0.0, 1.0)
TCP_WINDOWS = (64240, 65535, 29200, 502, 1026, 2053)  # raw window fields of common stacks


@dataclass
class Span:
    """The stretch of time being drawn: sessions may start from `begin_ns`, before the
    capture's `start_ns` (traffic already under way when it began), and are cut at `end_ns`."""

    begin_ns: int
    start_ns: int
    end_ns: int


# ---- helpers shared by the traffic models ------------------------------------------------


def tcp_table(
    rng: np.random.Generator,
    t_ns: np.ndarray,
    client: np.ndarray,
    server: np.ndarray | int,
    server_port: np.ndarray | int,
    *,
    rtt_server_ns: np.ndarray,
    rtt_client_ns: np.ndarray | None = None,
    segment_gap_ns: np.ndarray | None = None,
    ttl_client: np.ndarray | int = TTL_WINDOWS,
    ttl_server: np.ndarray | int = TTL_LINUX,
    close_p: tuple[float, ...] = CLOSE_WEB,
    close_gap_ns: np.ndarray | None = None,
    tag: int = 0,
) -> TcpSessions:
    """TcpSessions with the usual defaults: a LAN client 100-400 µs from the tap, a gigabit
    LAN (12-40 µs per full segment), windows from common stacks, an ephemeral client port,
    a close some seconds after the last data."""
    n = t_ns.shape[0]

    def col(value: np.ndarray | int, dtype: type) -> np.ndarray:
        return np.broadcast_to(np.asarray(value, dtype=dtype), (n,)).copy()

    windows = np.array(TCP_WINDOWS, dtype=np.uint16)
    if rtt_client_ns is None:
        rtt_client_ns = rng.integers(100 * US, 400 * US, n)
    if segment_gap_ns is None:
        segment_gap_ns = rng.integers(12 * US, 40 * US, n)
    if close_gap_ns is None:
        close_gap_ns = (rng.exponential(4.0, n) * NS_PER_S).astype(np.int64)
    return TcpSessions(
        start_ns=t_ns.astype(np.int64),
        client=col(client, np.uint32),
        server=col(server, np.uint32),
        client_port=_sequential_ports(rng, t_ns, col(client, np.uint32)),
        server_port=col(server_port, np.uint16),
        rtt_server_ns=col(rtt_server_ns, np.int64),
        rtt_client_ns=col(rtt_client_ns, np.int64),
        segment_gap_ns=col(segment_gap_ns, np.int64),
        ttl_client=col(ttl_client, np.uint8),
        ttl_server=col(ttl_server, np.uint8),
        window_client=rng.choice(windows, n),
        window_server=rng.choice(windows, n),
        close=rng.choice(len(close_p), size=n, p=np.array(close_p) / sum(close_p)).astype(np.uint8),
        close_gap_ns=col(close_gap_ns, np.int64),
        tag=col(tag, np.uint8),
    )


def _sequential_ports(rng: np.random.Generator, t_ns: np.ndarray, client: np.ndarray) -> np.ndarray:
    """Client ports as stacks hand them out: each client counts up through the dynamic range
    from a random point, one port per connection in time order, so that its concurrent
    connections never share a port."""
    hosts, host = np.unique(client, return_inverse=True)
    order = np.lexsort((t_ns, host))
    rank = np.empty(order.shape[0], dtype=np.int64)
    first = np.searchsorted(host[order], np.arange(hosts.shape[0]))
    rank[order] = np.arange(order.shape[0]) - first[host[order]]
    base = rng.integers(0, 16384, hosts.shape[0])
    return (49152 + (base[host] + rank) % 16384).astype(np.uint16)


def exchange_bursts(
    rounds: np.ndarray,
    request_bytes: np.ndarray,
    response_bytes: np.ndarray,
    think_ns: np.ndarray,
    answer_ns: np.ndarray,
) -> Bursts:
    """Request/response rounds as alternating client and server bursts. `rounds` is per
    session; the other arrays are per round, each session's rounds contiguous. `think_ns`
    is the client's pause before a request, `answer_ns` the server's time to answer."""
    session = np.repeat(np.arange(rounds.shape[0]), rounds)
    n = session.shape[0]
    return Bursts(
        session=np.repeat(session, 2),
        from_server=np.tile(np.array([False, True]), n),
        payload_bytes=np.column_stack([request_bytes, response_bytes]).reshape(-1).astype(np.int64),
        gap_ns=np.column_stack([think_ns, answer_ns]).reshape(-1).astype(np.int64),
    )


def round_index(rounds: np.ndarray) -> np.ndarray:
    """For every round of every session, its index within its session."""
    total = int(rounds.sum())
    return np.arange(total) - np.repeat(np.cumsum(rounds) - rounds, rounds)


def periodic_times(
    rng: np.random.Generator, n_hosts: int, span: Span, interval_s: np.ndarray | float, jitter_ns: int
) -> tuple[np.ndarray, np.ndarray]:
    """(host, t_ns) of jobs every `interval_s` per host, at a random phase, with jitter."""
    interval_ns = np.broadcast_to(np.asarray(interval_s, dtype=np.float64) * NS_PER_S, (n_hosts,)).astype(np.int64)
    phase = span.begin_ns + (rng.random(n_hosts) * interval_ns).astype(np.int64)
    count = (span.end_ns - phase) // interval_ns + 1
    host = np.repeat(np.arange(n_hosts), count)
    k = np.arange(host.shape[0]) - np.repeat(np.cumsum(count) - count, count)
    t = phase[host] + k * interval_ns[host] + rng.integers(0, jitter_ns + 1, host.shape[0])
    return host, t


def web_like_rounds(
    rng: np.random.Generator,
    n_sessions: int,
    *,
    tls: np.ndarray,
    app_rounds_p: float,
    response_median: float,
    response_sigma: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rounds per session, request bytes, response bytes, think ns) for HTTP(S)-like
    sessions: a TLS handshake (two short rounds) where `tls`, then a geometric number of
    application rounds with lognormal sizes, now and then an upload, and think times with
    occasional long pauses (the user reading)."""
    rounds = rng.geometric(app_rounds_p, n_sessions) + 2 * tls
    k = round_index(rounds)
    session = np.repeat(np.arange(n_sessions), rounds)
    n = k.shape[0]
    hello = tls[session] & (k == 0)
    finished = tls[session] & (k == 1)
    upload = rng.random(n) < 0.04
    request = np.where(
        upload, lognormal_int(rng, 60_000, 1.2, 2_000, 5_000_000, n), lognormal_int(rng, 450, 0.7, 60, 16_000, n)
    )
    request = np.where(hello, rng.integers(220, 600, n), np.where(finished, rng.integers(64, 160, n), request))
    response = lognormal_int(rng, response_median, response_sigma, 40, 4_000_000, n)
    certificates = lognormal_int(rng, 4_000, 0.35, 1_200, 12_000, n)
    response = np.where(hello, certificates, np.where(finished, rng.integers(50, 300, n), response))
    think = np.where(rng.random(n) < 0.15, rng.exponential(10.0, n), rng.exponential(0.8, n)) * NS_PER_S
    think = np.where(finished, rng.integers(1 * MS, 5 * MS, n), think)
    think = np.where(k == 0, rng.integers(200 * US, 3 * MS, n), think)
    return rounds, request, response, think.astype(np.int64)


# ---- what users do -----------------------------------------------------------------------


def dns_exchange(
    net: Network, rng: np.random.Generator, t_ns: np.ndarray, client: np.ndarray, hit_p: float
) -> tuple[PacketTable, np.ndarray]:
    """Queries to the office DNS server and its answers; a cache miss is forwarded to an
    upstream resolver first. Returns the packets and when each answer reaches the client."""
    n = t_ns.shape[0]
    query_bytes = rng.integers(28, 70, n)
    answer_bytes = query_bytes + lognormal_int(rng, 60, 0.6, 16, 400, n)
    miss = rng.random(n) >= hit_p
    upstream = rng.choice(net.upstream_dns, n)
    forward_at = t_ns + rng.integers(30 * US, 150 * US, n)
    upstream_answer_ns = rng.integers(12 * MS, 40 * MS, n) + lognormal_int(rng, 8 * MS, 1.0, 100 * US, 800 * MS, n)
    answer_ns = np.where(
        miss,
        forward_at - t_ns + upstream_answer_ns + rng.integers(20 * US, 80 * US, n),
        rng.integers(100 * US, 900 * US, n),
    )
    local = udp_exchange(
        t_ns, client, np.full(n, net.dns, np.uint32), ephemeral_ports(rng, n), 53, query_bytes, answer_bytes, answer_ns,
        ttl_client=TTL_WINDOWS, ttl_server=TTL_LINUX,
    )
    m = np.flatnonzero(miss)
    forwarded = udp_exchange(
        forward_at[m], np.full(m.size, net.dns, np.uint32), upstream[m], ephemeral_ports(rng, m.size), 53,
        query_bytes[m] + 11, answer_bytes[m] + 11, upstream_answer_ns[m], ttl_client=TTL_LINUX, ttl_server=54,
    )
    return PacketTable.concat([local, forwarded]), t_ns + answer_ns


def browsing(net: Network, act: Activity, rng: np.random.Generator, rate_per_min: float) -> PacketTable:
    """External web sessions, most after A and AAAA lookups; popular sites are visited far
    more often (Zipf), each has its own distance and TTL; some connections idle a while
    (keep-alive) before they close."""
    host, t = poisson_arrivals(rng, act, rate_per_min)
    n = host.shape[0]
    client = net.workstations[host]
    peer = (rng.zipf(1.25, n) - 1) % net.external.shape[0]
    lk = np.flatnonzero(rng.random(n) < 0.6)
    query_at = np.repeat(t[lk], 2) + np.tile([0, 150 * US], lk.size)
    dns_packets, answered_at = dns_exchange(net, rng, query_at, np.repeat(client[lk], 2), hit_p=0.7)
    start = t.copy()
    start[lk] = np.maximum(answered_at[0::2], answered_at[1::2]) + rng.integers(200 * US, 2 * MS, lk.size)
    tls = rng.random(n) < 0.92
    rounds, request, response, think = web_like_rounds(
        rng, n, tls=tls, app_rounds_p=0.35, response_median=5_000, response_sigma=1.6
    )
    rtt = net.external_rtt_ns[peer]
    answer = np.repeat(rtt, rounds) + lognormal_int(rng, 5 * MS, 1.0, 200 * US, 2 * NS_PER_S, int(rounds.sum()))
    idle_s = np.where(rng.random(n) < 0.3, rng.exponential(40.0, n), rng.exponential(4.0, n))
    sessions = tcp_table(
        rng, start, client, net.external[peer], np.where(tls, 443, 80), rtt_server_ns=rtt,
        segment_gap_ns=lognormal_int(rng, 300 * US, 0.6, 60 * US, 2 * MS, n), ttl_server=net.external_ttl[peer],
        close_gap_ns=(idle_s * NS_PER_S).astype(np.int64),
    )
    bursts = exchange_bursts(rounds, request, response, think, answer)
    return PacketTable.concat([dns_packets, tcp_sessions(sessions, bursts, rng)])


def intranet(net: Network, act: Activity, rng: np.random.Generator, rate_per_min: float) -> PacketTable:
    """HTTPS to the intranet web server: LAN round trips, smaller pages."""
    host, t = poisson_arrivals(rng, act, rate_per_min)
    n = host.shape[0]
    rounds, request, response, think = web_like_rounds(
        rng, n, tls=np.ones(n, dtype=bool), app_rounds_p=0.3, response_median=3_000, response_sigma=1.3
    )
    rtt = rng.integers(200 * US, 600 * US, n)
    answer = np.repeat(rtt, rounds) + lognormal_int(rng, 3 * MS, 0.8, 100 * US, 500 * MS, int(rounds.sum()))
    sessions = tcp_table(rng, t, net.workstations[host], net.web_server, 443, rtt_server_ns=rtt)
    return tcp_sessions(sessions, exchange_bursts(rounds, request, response, think, answer), rng)


def file_shares(net: Network, act: Activity, rng: np.random.Generator, rate_per_min: float) -> PacketTable:
    """SMB sessions to the file server: many small request/response rounds, file reads of
    heavy-tailed sizes, some writes (large request, small answer), long idle before close."""
    host, t = poisson_arrivals(rng, act, rate_per_min)
    n = host.shape[0]
    rounds = rng.geometric(0.12, n)
    total = int(rounds.sum())
    write = rng.random(total) < 0.15
    request = np.where(
        write, lognormal_int(rng, 60_000, 1.5, 1_000, 20_000_000, total), lognormal_int(rng, 180, 0.5, 70, 1_500, total)
    )
    response = np.where(write, rng.integers(80, 160, total), lognormal_int(rng, 1_200, 1.8, 80, 8_000_000, total))
    think = (rng.exponential(0.5, total) * NS_PER_S).astype(np.int64)
    rtt = rng.integers(150 * US, 500 * US, n)
    answer = np.repeat(rtt, rounds) + lognormal_int(rng, 400 * US, 1.0, 30 * US, 200 * MS, total)
    sessions = tcp_table(
        rng, t, net.workstations[host], net.file_server, 445, rtt_server_ns=rtt, close_p=CLOSE_CLIENT,
        close_gap_ns=(rng.exponential(60.0, n) * NS_PER_S).astype(np.int64),
    )
    return tcp_sessions(sessions, exchange_bursts(rounds, request, response, think, answer), rng)


def background_dns(net: Network, act: Activity, rng: np.random.Generator, rate_per_min: float) -> PacketTable:
    """Lookups that lead to no session of ours (telemetry, prefetching, mail clients)."""
    host, t = poisson_arrivals(rng, act, rate_per_min)
    packets, _ = dns_exchange(net, rng, t, net.workstations[host], hit_p=0.6)
    return packets
