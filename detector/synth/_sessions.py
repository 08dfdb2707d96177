"""Session expanders for the synthetic traffic generator: TCP connections, UDP request and
response pairs, ICMP echoes, all vectorised over many sessions at once.

Where it stands: a private part of `detector.synth.generate` (test and demo traffic, not on
the daemon's path). A traffic model describes *sessions* (who, when, how much) and these
functions expand them into packets in a `PacketTable`.

A TCP session is a handshake, a sequence of bursts (a burst = one side sending some bytes,
the other side acknowledging every second segment) and a close. Timestamps are those seen
at a tap near the home network: `rtt_server_ns` is the time from a packet passing the tap
towards the server to the server's answer passing it back, `rtt_client_ns` the same towards
the client. Sequence and acknowledgement numbers follow the bytes sent, so a flow table or
Wireshark sees consistent connections.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.contracts import PROTO_ICMP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN
from detector.synth._frames import ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, TCP_MSS_BYTES, PacketTable

# How a session ends (TcpSessions.close).
CLOSE_CLIENT_FIN = 0
CLOSE_SERVER_FIN = 1
CLOSE_CLIENT_RST = 2
CLOSE_SERVER_RST = 3
CLOSE_NONE = 4  # still open when the capture ends, or abandoned

# A lone segment is acknowledged after the receiver's delayed-ACK timer, not at once.
DELAYED_ACK_NS = 40_000_000


@dataclass
class TcpSessions:
    """One row per TCP connection; arrays of equal length."""

    start_ns: np.ndarray  # int64: the SYN passes the tap
    client: np.ndarray  # uint32
    server: np.ndarray  # uint32
    client_port: np.ndarray
    server_port: np.ndarray
    rtt_server_ns: np.ndarray  # int64
    rtt_client_ns: np.ndarray  # int64
    segment_gap_ns: np.ndarray  # int64: spacing of back-to-back full segments (bandwidth)
    ttl_client: np.ndarray  # TTL of the client's packets as seen at the tap
    ttl_server: np.ndarray
    window_client: np.ndarray
    window_server: np.ndarray
    close: np.ndarray  # CLOSE_*
    close_gap_ns: np.ndarray  # int64: idle time between the last data and the close
    tag: np.ndarray

    def __len__(self) -> int:
        return int(self.start_ns.shape[0])


@dataclass
class Bursts:
    """One row per burst, grouped by session (ascending) and in order within a session."""

    session: np.ndarray  # int64 index into TcpSessions
    from_server: np.ndarray  # bool
    payload_bytes: np.ndarray  # int64, > 0
    gap_ns: np.ndarray  # int64: after the previous burst's last segment (or the handshake)

    def __len__(self) -> int:
        return int(self.session.shape[0])


def _exclusive_cumsum(values: np.ndarray) -> np.ndarray:
    return np.cumsum(values) - values


def _group_exclusive_cumsum(values: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum of earlier values in the same group; rows grouped contiguously, groups ascending."""
    running = _exclusive_cumsum(values)
    first = np.searchsorted(group, np.arange(n_groups))
    return running - running[first[group]] if values.size else running


def tcp_sessions(s: TcpSessions, b: Bursts, rng: np.random.Generator) -> PacketTable:
    """Expand TCP sessions and their bursts into packets (handshake, data, acks, close)."""
    n_sessions = len(s)
    if n_sessions == 0:
        return PacketTable.build(0)
    isn_c = rng.integers(0, 1 << 32, n_sessions, dtype=np.int64)
    isn_s = rng.integers(0, 1 << 32, n_sessions, dtype=np.int64)
    rtt_s = s.rtt_server_ns.astype(np.int64)
    rtt_c = s.rtt_client_ns.astype(np.int64)
    t_syn = s.start_ns.astype(np.int64)
    t_established = t_syn + rtt_s + rtt_c  # the client's ACK passes the tap

    def side(from_server: np.ndarray, sess: np.ndarray) -> dict[str, np.ndarray]:
        """Addresses, ports, TTL and window of the sender given its side."""
        return {
            "src": np.where(from_server, s.server[sess], s.client[sess]),
            "dst": np.where(from_server, s.client[sess], s.server[sess]),
            "sport": np.where(from_server, s.server_port[sess], s.client_port[sess]),
            "dport": np.where(from_server, s.client_port[sess], s.server_port[sess]),
            "ttl": np.where(from_server, s.ttl_server[sess], s.ttl_client[sess]),
            "window": np.where(from_server, s.window_server[sess], s.window_client[sess]),
            "tag": s.tag[sess],
        }

    every = np.arange(n_sessions)
    no = np.zeros(n_sessions, dtype=bool)
    yes = np.ones(n_sessions, dtype=bool)
    tables = [
        PacketTable.build(n_sessions, ts_ns=t_syn, proto=PROTO_TCP, flags=TCP_SYN, seq=isn_c, **side(no, every)),
        PacketTable.build(
            n_sessions, ts_ns=t_syn + rtt_s, proto=PROTO_TCP, flags=TCP_SYN | TCP_ACK, seq=isn_s, ack=isn_c + 1,
            **side(yes, every),
        ),
        PacketTable.build(
            n_sessions, ts_ns=t_established, proto=PROTO_TCP, flags=TCP_ACK, seq=isn_c + 1, ack=isn_s + 1,
            **side(no, every),
        ),
    ]

    # ---- bursts: when each starts, and how many bytes each side had sent before it ----
    sess = b.session.astype(np.int64)
    from_server = b.from_server.astype(bool)
    nbytes = b.payload_bytes.astype(np.int64)
    n_data = -(-nbytes // TCP_MSS_BYTES)
    gap_per_segment = s.segment_gap_ns.astype(np.int64)[sess]
    duration = (n_data - 1) * gap_per_segment
    first_in_session = np.ones(len(b), dtype=bool)
    first_in_session[1:] = sess[1:] != sess[:-1]
    previous_duration = np.where(first_in_session, 0, np.concatenate([[0], duration[:-1]]))
    # a side answers no sooner than the other side's data can reach it and its answer come
    # back past the tap; this also keeps its ACKs of that data before its own new data
    turn = ~first_in_session & (from_server != np.concatenate([[False], from_server[:-1]]))
    min_gap = np.where(turn, np.where(from_server, rtt_s[sess], rtt_c[sess]) + 10_000, 0)
    gap = np.maximum(b.gap_ns.astype(np.int64), min_gap)
    step = gap + previous_duration
    start = t_established[sess] + _group_exclusive_cumsum(step, sess, n_sessions) + step
    sent_c_before = _group_exclusive_cumsum(np.where(from_server, 0, nbytes), sess, n_sessions)
    sent_s_before = _group_exclusive_cumsum(np.where(from_server, nbytes, 0), sess, n_sessions)

    # ---- expand bursts: data segments, with an ACK back after every second one and, for
    # an odd count, after the last (a lone request segment is acknowledged by the answer) ----
    final_ack = (n_data % 2 == 1) & ((n_data > 1) | from_server)
    # the receiver's delayed ACK of a last odd segment is dropped when the receiver sends
    # data (or the close) first, which carries the ACK instead
    rtt_receiver = np.where(from_server, rtt_c[sess], rtt_s[sess])
    delayed_ack_at = start + duration + rtt_receiver + DELAYED_ACK_NS
    last_in_session = np.ones(len(b), dtype=bool)
    last_in_session[:-1] = sess[:-1] != sess[1:]
    next_start = np.concatenate([start[1:], [0]])
    next_by_receiver = ~last_in_session & (np.concatenate([from_server[1:], [False]]) != from_server)
    last_data = t_established.copy()
    if len(b):
        np.maximum.at(last_data, sess, start + duration)
    # the close comes no sooner than a round trip after the last data, after its ACKs
    t_close = last_data + np.maximum(s.close_gap_ns.astype(np.int64), rtt_s + rtt_c + 10_000)
    closes = last_in_session & (s.close[sess] != CLOSE_NONE)
    final_ack &= ~(next_by_receiver & (next_start <= delayed_ack_at))
    final_ack &= ~(closes & (t_close[sess] <= delayed_ack_at))
    count = n_data + n_data // 2 + final_ack
    burst = np.repeat(np.arange(len(b)), count)
    j = np.arange(int(count.sum())) - np.repeat(_exclusive_cumsum(count), count)
    is_last = j == count[burst] - 1
    is_ack = (j % 3 == 2) | (final_ack[burst] & is_last)
    segment = np.where(is_ack, np.where(j % 3 == 2, (j // 3) * 2 + 1, n_data[burst] - 1), (j // 3) * 2 + j % 3)
    bsess = sess[burst]
    sender_is_server = from_server[burst]
    packet_from_server = sender_is_server ^ is_ack
    isn_sender = np.where(sender_is_server, isn_s[bsess], isn_c[bsess])
    isn_receiver = np.where(sender_is_server, isn_c[bsess], isn_s[bsess])
    before_sender = np.where(sender_is_server, sent_s_before[burst], sent_c_before[burst])
    before_receiver = np.where(sender_is_server, sent_c_before[burst], sent_s_before[burst])
    seg_offset = segment * TCP_MSS_BYTES
    seg_len = np.minimum(TCP_MSS_BYTES, nbytes[burst] - seg_offset)
    sender_seq = isn_sender + 1 + before_sender + seg_offset
    receiver_seq = isn_receiver + 1 + before_receiver
    seg_time = start[burst] + segment * gap_per_segment[burst]
    ack_delay = np.where(sender_is_server, rtt_c[bsess], rtt_s[bsess]) + np.where(j % 3 == 2, 0, DELAYED_ACK_NS)
    last_segment = segment == n_data[burst] - 1
    tables.append(
        PacketTable.build(
            burst.shape[0],
            ts_ns=np.where(is_ack, seg_time + ack_delay, seg_time),
            proto=PROTO_TCP,
            flags=np.where(is_ack, TCP_ACK, np.where(last_segment, TCP_ACK | TCP_PSH, TCP_ACK)),
            seq=np.where(is_ack, receiver_seq, sender_seq),
            ack=np.where(is_ack, sender_seq + seg_len, receiver_seq),
            payload_bytes=np.where(is_ack, 0, seg_len),
            **side(packet_from_server, bsess),
        )
    )

    # ---- close: FIN exchange or a reset, after an idle gap ----
    weights_c = np.where(from_server, 0, nbytes).astype(np.float64)
    weights_s = np.where(from_server, nbytes, 0).astype(np.float64)
    total_c = np.bincount(sess, weights=weights_c, minlength=n_sessions).astype(np.int64)
    total_s = np.bincount(sess, weights=weights_s, minlength=n_sessions).astype(np.int64)
    seq_c = isn_c + 1 + total_c
    seq_s = isn_s + 1 + total_s
    close = s.close
    fin_ack = TCP_FIN | TCP_ACK
    for kind, steps in (
        (CLOSE_CLIENT_FIN, ((False, fin_ack, 0, 0, 0), (True, fin_ack, 0, 1, 1), (False, TCP_ACK, 1, 1, 2))),
        (CLOSE_SERVER_FIN, ((True, fin_ack, 0, 0, 0), (False, fin_ack, 0, 1, 1), (True, TCP_ACK, 1, 1, 2))),
        (CLOSE_CLIENT_RST, ((False, TCP_RST | TCP_ACK, 0, 0, 0),)),
        (CLOSE_SERVER_RST, ((True, TCP_RST | TCP_ACK, 0, 0, 0),)),
    ):
        rows = np.flatnonzero(close == kind)
        if rows.size == 0:
            continue
        closer_is_server = kind in (CLOSE_SERVER_FIN, CLOSE_SERVER_RST)
        # rtt towards the side that answers the closer, then back towards the closer
        rtt_answer = rtt_c[rows] if closer_is_server else rtt_s[rows]
        rtt_back = rtt_s[rows] if closer_is_server else rtt_c[rows]
        for packet_from_server_, flags, seq_bump, ack_bump, step in steps:
            own = seq_s[rows] if packet_from_server_ else seq_c[rows]
            other = seq_c[rows] if packet_from_server_ else seq_s[rows]
            delay = (step >= 1) * rtt_answer + (step >= 2) * rtt_back
            tables.append(
                PacketTable.build(
                    rows.size,
                    ts_ns=t_close[rows] + delay,
                    proto=PROTO_TCP,
                    flags=flags,
                    seq=own + seq_bump,
                    ack=other + ack_bump,
                    **side(np.full(rows.size, packet_from_server_), rows),
                )
            )
    return PacketTable.concat(tables)


def udp_exchange(
    t_ns: np.ndarray,
    client: np.ndarray,
    server: np.ndarray,
    client_port: np.ndarray,
    server_port: np.ndarray | int,
    request_bytes: np.ndarray,
    response_bytes: np.ndarray,
    response_delay_ns: np.ndarray,
    *,
    ttl_client: np.ndarray | int,
    ttl_server: np.ndarray | int,
    tag: np.ndarray | int = 0,
    answered: np.ndarray | None = None,
) -> PacketTable:
    """UDP requests and, where `answered` (default all), their responses."""
    n = t_ns.shape[0]
    request = PacketTable.build(
        n, ts_ns=t_ns, src=client, dst=server, proto=PROTO_UDP, sport=client_port, dport=server_port,
        payload_bytes=request_bytes, ttl=ttl_client, tag=tag,
    )
    keep = np.ones(n, dtype=bool) if answered is None else answered
    k = int(keep.sum())

    def pick(value: np.ndarray | int) -> np.ndarray | int:
        return value[keep] if isinstance(value, np.ndarray) and value.shape == (n,) else value

    response = PacketTable.build(
        k, ts_ns=t_ns[keep] + response_delay_ns[keep], src=pick(server), dst=client[keep], proto=PROTO_UDP,
        sport=pick(server_port), dport=client_port[keep], payload_bytes=response_bytes[keep],
        ttl=pick(ttl_server), tag=pick(tag),
    )
    return PacketTable.concat([request, response])


def icmp_echo(
    t_ns: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    ident: np.ndarray | int,
    seqno: np.ndarray,
    reply_delay_ns: np.ndarray,
    *,
    ttl_src: np.ndarray | int,
    ttl_dst: np.ndarray | int,
    answered: np.ndarray,
    payload_bytes: int = 56,
    tag: int = 0,
) -> PacketTable:
    """ICMP echo requests and, where `answered`, echo replies (same identifier and sequence)."""
    n = t_ns.shape[0]
    id_seq = (np.asarray(ident, dtype=np.int64) << 16) | (seqno.astype(np.int64) & 0xFFFF)
    id_seq = np.broadcast_to(id_seq, (n,))
    ttl_dst_arr = np.broadcast_to(np.asarray(ttl_dst), (n,))
    request = PacketTable.build(
        n, ts_ns=t_ns, src=src, dst=dst, proto=PROTO_ICMP, sport=ICMP_ECHO_REQUEST, seq=id_seq,
        payload_bytes=payload_bytes, ttl=ttl_src, tag=tag,
    )
    k = int(answered.sum())
    reply = PacketTable.build(
        k, ts_ns=t_ns[answered] + reply_delay_ns[answered], src=dst[answered], dst=src[answered], proto=PROTO_ICMP,
        sport=ICMP_ECHO_REPLY, seq=id_seq[answered], payload_bytes=payload_bytes, ttl=ttl_dst_arr[answered], tag=tag,
    )
    return PacketTable.concat([request, reply])
