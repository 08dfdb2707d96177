"""Packet tables and frame assembly for the synthetic traffic generator.

Where it stands: a private part of `detector.synth.generate` (a source of test and demo
traffic, not on the daemon's path). Traffic models describe packets as columns of a
`PacketTable` (one row per IPv4 packet); this module turns the columns into frame header
bytes with numpy: Ethernet + IPv4 + TCP/UDP/ICMP headers with correct IPv4 and transport
checksums. Payloads are all zero bytes, which is what lets the transport checksum be
computed from header fields alone. A few IPv6 (mDNS) and ARP frames come from their own
small builders. Every builder returns rows of a (n, FRAME_ROW_BYTES) uint8 matrix holding
each frame's leading bytes, zero past its headers, plus the frame's length on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from detector.contracts import PROTO_ICMP, PROTO_TCP, PROTO_UDP, TCP_SYN

# Leading bytes kept per frame: the longest header stack built here (Ethernet + IPv6 + UDP).
FRAME_ROW_BYTES = 64
ETH_MIN_FRAME_BYTES = 60  # shorter frames are padded on the wire; a tap sees the padding
ETH_HEADER_BYTES = 14
TCP_MSS_BYTES = 1460
TCP_MSS_OPTION = (0x02, 0x04, TCP_MSS_BYTES >> 8, TCP_MSS_BYTES & 0xFF)
IP_DONT_FRAGMENT = 0x4000
ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8


@dataclass
class PacketTable:
    """IPv4 packets as columns. For ICMP, `sport` holds the type, `dport` the code and `seq`
    the echo identifier (high 16 bits) and sequence number (low 16 bits). `tag` names the
    traffic's origin: 0 benign, otherwise the index of an injected event plus one."""

    ts_ns: np.ndarray  # int64
    src: np.ndarray  # uint32 IPv4 address
    dst: np.ndarray  # uint32
    proto: np.ndarray  # uint8
    sport: np.ndarray  # uint16
    dport: np.ndarray  # uint16
    flags: np.ndarray  # uint8 TCP flags
    seq: np.ndarray  # uint32
    ack: np.ndarray  # uint32
    payload_bytes: np.ndarray  # uint16 transport payload length
    ttl: np.ndarray  # uint8
    window: np.ndarray  # uint16 TCP window
    tag: np.ndarray  # uint8

    DTYPES = {
        "ts_ns": np.int64,
        "src": np.uint32,
        "dst": np.uint32,
        "proto": np.uint8,
        "sport": np.uint16,
        "dport": np.uint16,
        "flags": np.uint8,
        "seq": np.uint32,
        "ack": np.uint32,
        "payload_bytes": np.uint16,
        "ttl": np.uint8,
        "window": np.uint16,
        "tag": np.uint8,
    }

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])

    @classmethod
    def build(cls, n: int, **columns: object) -> PacketTable:
        """A table of n rows; each column is an array or a scalar broadcast to n (unnamed
        columns are zeros). Integer values wrap to the column's width, as on the wire."""
        out = {}
        for name, dtype in cls.DTYPES.items():
            value = columns.pop(name, 0)
            arr = np.asarray(value)
            if arr.dtype != dtype:
                arr = arr.astype(np.int64).astype(dtype) if arr.dtype.kind in "iub" else arr.astype(dtype)
            out[name] = np.broadcast_to(arr, (n,)).copy() if arr.shape != (n,) else arr
        if columns:
            raise TypeError(f"unknown columns: {sorted(columns)}")
        return cls(**out)

    @classmethod
    def concat(cls, tables: list[PacketTable]) -> PacketTable:
        tables = [t for t in tables if len(t)]
        if not tables:
            return cls.build(0)
        return cls(**{f.name: np.concatenate([getattr(t, f.name) for t in tables]) for f in fields(cls)})

    def take(self, index: np.ndarray) -> PacketTable:
        return PacketTable(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def mac_bytes(ip: np.ndarray) -> np.ndarray:
    """(n, 6) locally administered MACs 02:00:a.b.c.d, one per IPv4 address."""
    out = np.zeros((ip.shape[0], 6), dtype=np.uint8)
    out[:, 0] = 0x02
    out[:, 2:6] = ip.astype(">u4").view(np.uint8).reshape(-1, 4)
    return out


def _put(rows: np.ndarray, at: int, values: np.ndarray, dtype: str) -> None:
    """Write big-endian fields of one width into column `at` of every row."""
    width = np.dtype(dtype).itemsize
    rows[:, at : at + width] = np.ascontiguousarray(values, dtype=dtype).view(np.uint8).reshape(-1, width)


def _fold(total: np.ndarray) -> np.ndarray:
    """Ones' complement checksum of a sum of 16-bit words."""
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def _words32(value: np.ndarray) -> np.ndarray:
    v = value.astype(np.int64)
    return (v >> 16) + (v & 0xFFFF)


def ipv4_rows(
    table: PacketTable, home_net: int, home_mask: int, gateway: int, ip_id: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Frame header rows and wire lengths for the IPv4 packets of `table`.

    MACs: a home-network address has its own MAC; any other address is behind the gateway,
    so frames from or to it carry the gateway's MAC, as on a LAN tap.
    """
    n = len(table)
    rows = np.zeros((n, FRAME_ROW_BYTES), dtype=np.uint8)
    proto = table.proto
    is_tcp = proto == PROTO_TCP
    is_udp = proto == PROTO_UDP
    is_icmp = proto == PROTO_ICMP
    has_mss = is_tcp & ((table.flags & TCP_SYN) != 0)
    l4_header = np.where(is_tcp, np.where(has_mss, 24, 20), 8).astype(np.int64)
    l4_len = l4_header + table.payload_bytes.astype(np.int64)
    ip_len = 20 + l4_len

    def hop_mac(ip: np.ndarray) -> np.ndarray:
        inside = (ip.astype(np.int64) & home_mask) == home_net
        return mac_bytes(np.where(inside, ip, np.uint32(gateway)).astype(np.uint32))

    rows[:, 0:6] = hop_mac(table.dst)
    rows[:, 6:12] = hop_mac(table.src)
    rows[:, 12] = 0x08  # EtherType IPv4

    frag = np.where(is_tcp, IP_DONT_FRAGMENT, 0).astype(np.int64)
    rows[:, 14] = 0x45
    _put(rows, 16, ip_len, ">u2")
    _put(rows, 18, ip_id, ">u2")
    _put(rows, 20, frag, ">u2")
    rows[:, 22] = table.ttl
    rows[:, 23] = proto
    _put(rows, 26, table.src, ">u4")
    _put(rows, 30, table.dst, ">u4")
    ip_sum = (
        0x4500 + ip_len + ip_id.astype(np.int64) + frag + (table.ttl.astype(np.int64) << 8) + proto
        + _words32(table.src) + _words32(table.dst)
    )
    _put(rows, 24, _fold(ip_sum), ">u2")

    sport = table.sport.astype(np.int64)
    dport = table.dport.astype(np.int64)
    pseudo = _words32(table.src) + _words32(table.dst) + proto + l4_len

    # TCP: ports, seq, ack, data offset and flags, window; the MSS option on SYNs.
    offset_flags = (l4_header // 4 << 12) | table.flags
    kind_len, mss_hi, mss_lo = TCP_MSS_OPTION[0] << 8 | TCP_MSS_OPTION[1], TCP_MSS_OPTION[2], TCP_MSS_OPTION[3]
    mss_words = np.where(has_mss, kind_len + (mss_hi << 8 | mss_lo), 0)
    tcp_sum = _fold(
        pseudo + sport + dport + _words32(table.seq) + _words32(table.ack) + offset_flags + table.window + mss_words
    )
    # UDP: ports, length; a computed 0 is sent as 0xFFFF (0 means "no checksum").
    udp_sum = _fold(pseudo + sport + dport + l4_len + 0)
    udp_sum = np.where(udp_sum == 0, 0xFFFF, udp_sum)
    # ICMP: type/code, identifier, sequence; no pseudo-header.
    icmp_sum = _fold((sport << 8 | dport) + _words32(table.seq))

    # The first four transport bytes: ports, or ICMP type, code and checksum.
    _put(rows, 34, np.where(is_icmp, sport << 8 | dport, sport), ">u2")
    _put(rows, 36, np.where(is_icmp, icmp_sum, dport), ">u2")
    tcp_rows = np.flatnonzero(is_tcp)
    udp_rows = np.flatnonzero(is_udp)
    icmp_rows = np.flatnonzero(is_icmp)
    if icmp_rows.size:
        block = np.zeros((icmp_rows.size, 4), dtype=np.uint8)
        block[:, 0:4] = table.seq[icmp_rows].astype(">u4").view(np.uint8).reshape(-1, 4)
        rows[icmp_rows, 38:42] = block
    if udp_rows.size:
        block = np.zeros((udp_rows.size, 4), dtype=np.uint8)
        _put(block, 0, l4_len[udp_rows], ">u2")
        _put(block, 2, udp_sum[udp_rows], ">u2")
        rows[udp_rows, 38:42] = block
    if tcp_rows.size:
        block = np.zeros((tcp_rows.size, 20), dtype=np.uint8)
        _put(block, 0, table.seq[tcp_rows], ">u4")
        _put(block, 4, table.ack[tcp_rows], ">u4")
        _put(block, 8, offset_flags[tcp_rows], ">u2")
        _put(block, 10, table.window[tcp_rows], ">u2")
        _put(block, 12, tcp_sum[tcp_rows], ">u2")
        block[:, 16:20] = np.where(has_mss[tcp_rows, None], np.array(TCP_MSS_OPTION, dtype=np.uint8), 0)
        rows[tcp_rows, 38:58] = block

    wire = np.maximum(ETH_HEADER_BYTES + ip_len, ETH_MIN_FRAME_BYTES)
    return rows, wire


def mdns6_rows(ts_ns: np.ndarray, src_ip4: np.ndarray, payload_bytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IPv6 mDNS announcements (UDP 5353 to ff02::fb) from hosts' link-local addresses,
    derived from their MACs (modified EUI-64), with a correct UDP checksum."""
    n = ts_ns.shape[0]
    rows = np.zeros((n, FRAME_ROW_BYTES), dtype=np.uint8)
    mac = mac_bytes(src_ip4)
    rows[:, 0:6] = np.array([0x33, 0x33, 0, 0, 0, 0xFB], dtype=np.uint8)
    rows[:, 6:12] = mac
    rows[:, 12:14] = (0x86, 0xDD)
    udp_len = 8 + payload_bytes.astype(np.int64)
    rows[:, 14] = 0x60
    _put(rows, 18, udp_len, ">u2")
    rows[:, 20] = PROTO_UDP
    rows[:, 21] = 255  # mDNS is link-local: hop limit 255
    src = np.zeros((n, 16), dtype=np.uint8)
    src[:, 0:2] = (0xFE, 0x80)
    src[:, 8:11] = mac[:, 0:3]
    src[:, 8] ^= 0x02  # EUI-64 flips the universal/local bit
    src[:, 11:13] = (0xFF, 0xFE)
    src[:, 13:16] = mac[:, 3:6]
    dst = np.zeros(16, dtype=np.uint8)
    dst[0:2] = (0xFF, 0x02)
    dst[15] = 0xFB
    rows[:, 22:38] = src
    rows[:, 38:54] = dst
    _put(rows, 54, np.full(n, 5353), ">u2")
    _put(rows, 56, np.full(n, 5353), ">u2")
    _put(rows, 58, udp_len, ">u2")
    src_words = src.view(">u2").astype(np.int64).sum(axis=1)
    dst_words = int(dst.view(">u2").astype(np.int64).sum())
    total = src_words + dst_words + udp_len + PROTO_UDP + 5353 + 5353 + udp_len
    checksum = _fold(total)
    _put(rows, 60, np.where(checksum == 0, 0xFFFF, checksum), ">u2")
    wire = np.maximum(ETH_HEADER_BYTES + 40 + udp_len, ETH_MIN_FRAME_BYTES)
    return rows, wire


def arp_rows(sender_ip: np.ndarray, target_ip: np.ndarray, is_reply: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ARP requests (broadcast) and replies (unicast to the asker)."""
    n = sender_ip.shape[0]
    rows = np.zeros((n, FRAME_ROW_BYTES), dtype=np.uint8)
    sender_mac = mac_bytes(sender_ip)
    target_mac = mac_bytes(target_ip)
    rows[:, 0:6] = np.where(is_reply[:, None], target_mac, np.uint8(0xFF))
    rows[:, 6:12] = sender_mac
    rows[:, 12:14] = (0x08, 0x06)
    rows[:, 14:22] = (0, 1, 0x08, 0, 6, 4, 0, 1)
    rows[:, 21] = np.where(is_reply, 2, 1)
    rows[:, 22:28] = sender_mac
    _put(rows, 28, sender_ip, ">u4")
    rows[:, 32:38] = np.where(is_reply[:, None], target_mac, np.uint8(0))
    _put(rows, 38, target_ip, ">u4")
    return rows, np.full(n, ETH_MIN_FRAME_BYTES, dtype=np.int64)
