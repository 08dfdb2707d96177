"""The periodic backbone of the synthetic office's traffic: machines talking on schedules.

Where it stands: a private part of `detector.synth.generate` (test and demo traffic, not on
the daemon's path). Users' traffic (`_synth_benign`) is bursty and follows their activity;
this traffic runs on timers, as it does on real networks, and gives the detector periodic
structure to learn:

- the monitoring box pings every host each minute and scrapes the servers' metrics every
  30 s over long-lived connections;
- each workstation's management agent checks in with its cloud service every 5 minutes;
- workstations poll the office NTP server every 128 or 256 s, which polls upstream;
- the file server uploads a backup off-site every 30 minutes;
- hosts ARP for the gateway, workstations send IPv6 mDNS (the capture's non-IPv4 frames).
"""

from __future__ import annotations

import numpy as np

from detector.synth._benign import (
    CLOSE_CLIENT,
    CLOSE_NEVER,
    MS,
    US,
    Span,
    exchange_bursts,
    periodic_times,
    round_index,
    tcp_table,
)
from detector.synth._frames import TCP_MSS_BYTES, PacketTable
from detector.synth._network import NS_PER_S, TTL_LINUX, TTL_WINDOWS, Activity, Network, lognormal_int
from detector.synth._sessions import icmp_echo, tcp_sessions, udp_exchange

PING_INTERVAL_S = 60
SCRAPE_INTERVAL_S = 30
CHECKIN_INTERVAL_S = 300
BACKUP_INTERVAL_S = 1800
ARP_INTERVAL_S = 300  # mean, per host: how often its ARP entry for the gateway expires
MDNS_INTERVAL_S = 120  # mean, per workstation


def monitoring(net: Network, act: Activity, rng: np.random.Generator, span: Span) -> PacketTable:
    """Every minute the monitoring box pings the gateway, the servers and every workstation
    in turn (2 ms apart, fping-style); powered-off workstations do not answer. The sweeps
    start exactly at the capture's start, so its first frame is the first echo request."""
    others = [s for s in net.servers.tolist() if s != net.monitor]
    targets = np.concatenate([np.array([net.gateway] + others, dtype=np.uint32), net.workstations])
    n_fixed = 1 + len(others)
    n_targets = targets.shape[0]
    interval_ns = PING_INTERVAL_S * NS_PER_S
    first = -((span.start_ns - span.begin_ns) // interval_ns)
    n_sweeps = (span.end_ns - span.start_ns) // interval_ns + 1 - first
    sweep = np.repeat(np.arange(first, first + n_sweeps), n_targets)
    target = np.tile(np.arange(n_targets), n_sweeps)
    jitter = np.where(target == 0, 0, rng.integers(0, 300 * US, sweep.shape[0]))
    t = span.start_ns + sweep * interval_ns + target * 2 * MS + jitter
    workstation = np.maximum(target - n_fixed, 0)
    answered = (target < n_fixed) | act.is_up(workstation, t)
    ttl = np.where(target == 0, 255, np.where(target < n_fixed, TTL_LINUX, TTL_WINDOWS))
    return icmp_echo(
        t, np.full(t.shape[0], net.monitor, np.uint32), targets[target], 0x4E41, sweep * n_targets + target,
        rng.integers(120 * US, 600 * US, t.shape[0]), ttl_src=TTL_LINUX, ttl_dst=ttl, answered=answered,
    )


def metrics_scrapes(net: Network, rng: np.random.Generator, span: Span) -> PacketTable:
    """The monitoring box scrapes each server's metrics endpoint (port 9100) every 30 s over
    one keep-alive connection per server, opened before the capture began."""
    targets = np.array([s for s in net.servers.tolist() if s != net.monitor], dtype=np.uint32)
    n_sessions = targets.shape[0]
    interval_ns = SCRAPE_INTERVAL_S * NS_PER_S
    rounds = np.full(n_sessions, (span.end_ns - span.begin_ns) // interval_ns + 2)
    total = int(rounds.sum())
    session = np.repeat(np.arange(n_sessions), rounds)
    k = round_index(rounds)
    rtt = rng.integers(150 * US, 400 * US, n_sessions)
    rtt_monitor = 300 * US
    segment_gap = rng.integers(12 * US, 30 * US, n_sessions)
    opened = span.begin_ns - rng.integers(1, 20, n_sessions) * NS_PER_S
    phase = rng.integers(0, interval_ns, n_sessions)
    due = span.begin_ns + phase[session] + k * interval_ns + rng.integers(0, 5 * MS, total)
    response = lognormal_int(rng, 28_000, 0.05, 20_000, 40_000, total)
    response += np.repeat(rng.integers(0, 8_000, n_sessions), rounds)  # each server its own size
    answer = rtt[session] + lognormal_int(rng, 8 * MS, 0.3, 1 * MS, 100 * MS, total)
    response_duration = (-(-response // TCP_MSS_BYTES) - 1) * segment_gap[session]
    # a request goes out when due, so its gap is counted from the end of the previous answer
    previous_end = np.concatenate([[0], (due + answer + response_duration)[:-1]])
    established = opened + rtt + rtt_monitor
    think = np.where(k == 0, due - established[session], due - previous_end)
    sessions = tcp_table(
        rng, opened, np.full(n_sessions, net.monitor, np.uint32), targets, 9100, rtt_server_ns=rtt,
        rtt_client_ns=np.full(n_sessions, rtt_monitor), segment_gap_ns=segment_gap, ttl_client=TTL_LINUX,
        close_p=CLOSE_NEVER,
    )
    return tcp_sessions(sessions, exchange_bursts(rounds, np.full(total, 180), response, think, answer), rng)


def _tls_upload_rounds(k: np.ndarray, payload_bytes: np.ndarray, answer_bytes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Three rounds per session: TLS hello, TLS finished, then one upload and its answer."""
    request = np.where(k == 0, 517, np.where(k == 1, 126, payload_bytes))
    response = np.where(k == 0, 4_100, np.where(k == 1, 258, answer_bytes))
    return request, response, np.where(k == 0, 1 * MS, 2 * MS)


def checkins(net: Network, act: Activity, rng: np.random.Generator, span: Span) -> PacketTable:
    """Each workstation's management agent checks in with its cloud service every 5 minutes
    (while the workstation is up): a short HTTPS exchange."""
    host, t = periodic_times(rng, net.workstations.shape[0], span, CHECKIN_INTERVAL_S, 3 * NS_PER_S)
    keep = act.is_up(host, t)
    host, t = host[keep], t[keep]
    n = host.shape[0]
    rounds = np.full(n, 3)
    total = 3 * n
    request, response, think = _tls_upload_rounds(
        round_index(rounds), rng.integers(700, 1_100, total), rng.integers(300, 600, total)
    )
    rtt_ns = 25 * MS
    sessions = tcp_table(
        rng, t, net.workstations[host], net.cloud_agent, 443, rtt_server_ns=np.full(n, rtt_ns),
        segment_gap_ns=np.full(n, 250 * US), ttl_server=52, close_p=CLOSE_CLIENT,
    )
    answer = rtt_ns + rng.integers(2 * MS, 20 * MS, total)
    return tcp_sessions(sessions, exchange_bursts(rounds, request, response, think, answer), rng)


def backups(net: Network, rng: np.random.Generator, span: Span) -> PacketTable:
    """The file server uploads an incremental backup (a few MB) off-site every 30 minutes."""
    _, t = periodic_times(rng, 1, span, float(BACKUP_INTERVAL_S), 2 * NS_PER_S)
    n = t.shape[0]
    rounds = np.full(n, 3)
    total = 3 * n
    upload_bytes = lognormal_int(rng, 3_000_000, 0.4, 500_000, 12_000_000, total)
    request, response, think = _tls_upload_rounds(round_index(rounds), upload_bytes, rng.integers(200, 400, total))
    rtt_ns = 18 * MS
    sessions = tcp_table(
        rng, t, np.full(n, net.file_server, np.uint32), net.backup_peer, 443, rtt_server_ns=np.full(n, rtt_ns),
        segment_gap_ns=np.full(n, 240 * US), ttl_client=TTL_LINUX, ttl_server=57, close_p=CLOSE_CLIENT,
    )
    answer = rtt_ns + rng.integers(1 * MS, 30 * MS, total)
    return tcp_sessions(sessions, exchange_bursts(rounds, request, response, think, answer), rng)


def time_sync(net: Network, act: Activity, rng: np.random.Generator, span: Span) -> PacketTable:
    """NTP: workstations poll the office server (the DNS box) every 128 or 256 s; it polls
    its upstream server every 64 s."""
    n_hosts = net.workstations.shape[0]
    poll_s = rng.choice([128.0, 256.0], n_hosts, p=[0.6, 0.4])
    host, t = periodic_times(rng, n_hosts, span, poll_s, 50 * MS)
    keep = act.is_up(host, t)
    host, t = host[keep], t[keep]
    n = host.shape[0]
    ntp = np.full(n, 48)
    local = udp_exchange(
        t, net.workstations[host], np.full(n, net.dns, np.uint32), np.full(n, 123, np.uint16), 123, ntp, ntp,
        rng.integers(100 * US, 300 * US, n), ttl_client=TTL_WINDOWS, ttl_server=TTL_LINUX,
    )
    _, t_up = periodic_times(rng, 1, span, 64.0, 20 * MS)
    m = t_up.shape[0]
    ntp = np.full(m, 48)
    upstream = udp_exchange(
        t_up, np.full(m, net.dns, np.uint32), np.full(m, net.upstream_ntp, np.uint32), np.full(m, 123, np.uint16), 123,
        ntp, ntp, rng.integers(18 * MS, 24 * MS, m), ttl_client=TTL_LINUX, ttl_server=50,
    )
    return PacketTable.concat([local, upstream])


def link_local(
    net: Network, act: Activity, rng: np.random.Generator, span: Span
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The non-IPv4 frames, as columns for `_synth_frames.arp_rows` and `mdns6_rows`: every
    host ARPs for the gateway now and then (request and the gateway's reply), and
    workstations send IPv6 mDNS queries and announcements."""
    hosts = np.concatenate([net.workstations, net.servers])
    n_ws = net.workstations.shape[0]
    duration_ns = span.end_ns - span.begin_ns
    counts = rng.poisson(duration_ns / NS_PER_S / ARP_INTERVAL_S, hosts.shape[0])
    who = np.repeat(np.arange(hosts.shape[0]), counts)
    t = span.begin_ns + (rng.random(who.shape[0]) * duration_ns).astype(np.int64)
    keep = (who >= n_ws) | act.is_up(np.minimum(who, n_ws - 1), t)
    who, t = who[keep], t[keep]
    asker = hosts[who]
    gateway = np.full(asker.shape[0], net.gateway, np.uint32)
    arp = {
        "ts_ns": np.concatenate([t, t + rng.integers(100 * US, 500 * US, t.shape[0])]),
        "sender": np.concatenate([asker, gateway]),
        "target": np.concatenate([gateway, asker]),
        "is_reply": np.concatenate([np.zeros(t.shape[0], bool), np.ones(t.shape[0], bool)]),
    }
    counts = rng.poisson(duration_ns / NS_PER_S / MDNS_INTERVAL_S, n_ws)
    who = np.repeat(np.arange(n_ws), counts)
    t = span.begin_ns + (rng.random(who.shape[0]) * duration_ns).astype(np.int64)
    keep = act.is_up(who, t)
    mdns = {
        "ts_ns": t[keep],
        "src": net.workstations[who[keep]],
        "payload_bytes": rng.integers(60, 300, int(keep.sum())),
    }
    return arp, mdns
