"""Capture stage, inner loops: capture-file records and raw frames -> PacketBatch columns.

Where this stands in the pipeline::

    file bytes --walk_pcap / walk_pcapng--> offsets, caplens, ts_ns --parse_frames--> PacketBatch

Everything per packet happens here, in numba-compiled loops: the record walk (sequential by
nature: each record's length says where the next begins) and the frame parse (link layer,
IPv4/IPv6 with extension headers, TCP/UDP/ICMP). Python above this module runs once per
batch, never once per packet (DESIGN.md, "Speed is designed in").

Decisions a reader should know (the parity test in tests/capture/test_pcap.py checks them
against a plain scapy dissection):

- A frame becomes a row when its IP header is intact: IPv4 needs 20 bytes, version 4,
  IHL >= 5 with the options captured, and total length >= header length; IPv6 needs its
  40-byte fixed header and version 6. Otherwise the frame counts as `malformed`.
- A frame whose link layer says "not IP" (ARP, LLDP, STP, ...) counts as `non_ip`. So does a
  frame on an interface whose link type this module does not decode (pcapng files may mix
  interfaces); a frame cut inside its link-layer header is `malformed`.
- Transport fields are read only when the transport's whole fixed header lies inside both
  the captured bytes and the IP packet (TCP 20, UDP 8, ICMP 8, ICMPv6 4 bytes). A packet cut
  short by the snap length still gets its row, with ports and flags 0: the IP header (hosts,
  protocol, length) is what the later stages count, and dropping the row would undercount.
- IPv6 extension headers (0, 43, 44, 60, 51) are walked to the upper-layer protocol; the walk
  stops at ESP (50), no-next-header (59), an unknown header, or an extension header that is
  not captured in full (then `proto` is that header's own number and ports are 0).
- Fragments: offset 0 with more-fragments is FRAG_FIRST (ports parsed); offset > 0 is
  FRAG_LATER (ports and flags 0). An IPv6 fragment header with offset 0 and M=0 (an
  "atomic fragment", RFC 6946) is not a fragment: FRAG_NONE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np

from detector.contracts import PACKET_COLUMNS, PacketBatch
from detector.errors import CaptureError

# --------------------------------------------------------------------------------------
# Link types (https://www.tcpdump.org/linktypes.html)
# --------------------------------------------------------------------------------------

LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in the writer's byte order
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_DLT12 = 12  # DLT_RAW as some writers stored it in files: raw IP
LINKTYPE_RAW_DLT14 = 14  # DLT_RAW on OpenBSD: raw IP
LINKTYPE_RAW = 101  # raw IPv4 or IPv6, told apart by the version nibble
LINKTYPE_LOOP = 108  # OpenBSD loopback: address family in network byte order
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

SUPPORTED_LINKTYPES: frozenset[int] = frozenset(
    {
        LINKTYPE_NULL,
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW_DLT12,
        LINKTYPE_RAW_DLT14,
        LINKTYPE_RAW,
        LINKTYPE_LOOP,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_LINUX_SLL2,
    }
)

# The largest captured length a record may claim: libpcap's MAXIMUM_SNAPLEN. A larger value
# is a corrupt header, not a jumbo packet, and the walk stops there as damage.
MAX_CAPLEN_BYTES = 262_144
# The largest pcapng block the walk accepts (Wireshark uses the same bound).
MAX_BLOCK_BYTES = 16 * 1024 * 1024

# Status of a record walk: why it returned.
WALK_FULL = 0  # max_records records written
WALK_NEED_MORE = 1  # the next record is not wholly in the buffer (or the buffer is used up)
WALK_BLOCK = 2  # pcapng: a section header or interface block, for Python to read
WALK_BAD_CAPLEN = 10  # captured length above MAX_CAPLEN_BYTES, or beyond its block
WALK_BAD_BLOCK_LEN = 11  # pcapng block length < 12, not a multiple of 4, or huge
WALK_BAD_TRAILER = 12  # pcapng trailing block length differs from the leading one
WALK_BAD_INTERFACE = 13  # pcapng packet refers to an interface not defined in its section

_BLOCK_SHB = 0x0A0D0D0A
_BLOCK_IDB = 1
_BLOCK_PB = 2  # obsolete Packet Block
_BLOCK_SPB = 3
_BLOCK_EPB = 6

# Frame kinds from the link layer.
_MALFORMED = -1
_NON_IP = 0
_BY_VERSION = 1  # raw IP: the version nibble decides
_V4 = 4
_V6 = 6


def _jit(func: Callable[..., Any], inline: str = "never") -> Any:
    """numba.njit with an on-disk cache, so only the first run ever pays the compile time.

    numba refuses to decorate at all when it finds no writable cache directory (a hardened
    service with a read-only package and no home); then compile per process instead of
    failing at import. NUMBA_CACHE_DIR (e.g. the service's state directory) restores it.
    """
    try:
        return numba.njit(cache=True, nogil=True, inline=inline)(func)
    except RuntimeError:
        return numba.njit(cache=False, nogil=True, inline=inline)(func)


def _inline(func: Callable[..., Any]) -> Any:
    """_jit for the per-frame helpers, inlined into their callers by numba itself. Compiled
    apart, each stayed a call through a function pointer (a tuple returned through memory,
    numba's error status checked after it): the frame parse took 48 ns a frame even for
    one frame parsed over and over from L1, 15 ns inlined. The price is the first compile,
    once per install (the cache keeps it): 7.1 s instead of 4.3 s for the reader's kernels."""
    return _jit(func, inline="always")


# --------------------------------------------------------------------------------------
# Byte readers. Everything is widened to int64 first: numba would otherwise mix uint8 and
# int64 arithmetic into float64.
# --------------------------------------------------------------------------------------


@_inline
def _be16(data: np.ndarray, i: int) -> int:
    return (np.int64(data[i]) << 8) | np.int64(data[i + 1])


@_inline
def _be32(data: np.ndarray, i: int) -> int:
    return (
        (np.int64(data[i]) << 24)
        | (np.int64(data[i + 1]) << 16)
        | (np.int64(data[i + 2]) << 8)
        | np.int64(data[i + 3])
    )


@_inline
def _be64u(data: np.ndarray, i: int) -> np.uint64:
    return (np.uint64(_be32(data, i)) << np.uint64(32)) | np.uint64(_be32(data, i + 4))


@_inline
def _u16(data: np.ndarray, i: int, big_endian: bool) -> int:
    if big_endian:
        return _be16(data, i)
    return np.int64(data[i]) | (np.int64(data[i + 1]) << 8)


@_inline
def _u32(data: np.ndarray, i: int, big_endian: bool) -> int:
    if big_endian:
        return _be32(data, i)
    return (
        np.int64(data[i])
        | (np.int64(data[i + 1]) << 8)
        | (np.int64(data[i + 2]) << 16)
        | (np.int64(data[i + 3]) << 24)
    )


# --------------------------------------------------------------------------------------
# Frame parsing
# --------------------------------------------------------------------------------------


@_inline
def _ethertype_kind(data: np.ndarray, p: int, end: int, ethertype: int) -> tuple[int, int, int, int]:
    """(kind, offset of the IP header, end of the frame, outermost VLAN id) after an
    EtherType at data[p-2]."""
    vlan = 0
    tagged = False
    # 802.1Q, 802.1ad (QinQ) and the pre-standard 0x9100 all carry TCI + inner EtherType.
    while ethertype == 0x8100 or ethertype == 0x88A8 or ethertype == 0x9100:
        if p + 4 > end:
            return _MALFORMED, p, end, vlan
        if not tagged:
            vlan = _be16(data, p) & 0x0FFF
            tagged = True
        ethertype = _be16(data, p + 2)
        p += 4
    # An 802.3 length field (what follows is LLC, the rest padding); LLC/SNAP with a zero
    # OUI encapsulates an EtherType.
    if ethertype <= 1500:
        end = min(end, p + ethertype)
        if p + 8 <= end and data[p] == 0xAA and data[p + 1] == 0xAA and data[p + 2] == 0x03:
            if data[p + 3] == 0 and data[p + 4] == 0 and data[p + 5] == 0:
                ethertype = _be16(data, p + 6)
                p += 8
    if ethertype == 0x0800:
        return _V4, p, end, vlan
    if ethertype == 0x86DD:
        return _V6, p, end, vlan
    return _NON_IP, p, end, vlan


@_inline
def _link_layer(data: np.ndarray, start: int, end: int, linktype: int) -> tuple[int, int, int, int]:
    """(kind, offset of the IP header, end of the frame, VLAN id) of one frame, by link type."""
    if linktype == LINKTYPE_ETHERNET:
        if end - start < 14:
            return _MALFORMED, start, end, 0
        return _ethertype_kind(data, start + 14, end, _be16(data, start + 12))
    if linktype == LINKTYPE_LINUX_SLL:
        if end - start < 16:
            return _MALFORMED, start, end, 0
        return _ethertype_kind(data, start + 16, end, _be16(data, start + 14))
    if linktype == LINKTYPE_LINUX_SLL2:
        if end - start < 20:
            return _MALFORMED, start, end, 0
        return _ethertype_kind(data, start + 20, end, _be16(data, start))
    if (
        linktype == LINKTYPE_RAW
        or linktype == LINKTYPE_RAW_DLT12
        or linktype == LINKTYPE_RAW_DLT14
    ):
        return _BY_VERSION, start, end, 0
    if linktype == LINKTYPE_IPV4:
        return _V4, start, end, 0
    if linktype == LINKTYPE_IPV6:
        return _V6, start, end, 0
    if linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
        if end - start < 4:
            return _MALFORMED, start, end, 0
        # The family is tiny, so whichever byte order yields a small number is the right one
        # (NULL uses the writer's order, LOOP network order; some writers got LOOP wrong).
        family = min(_u32(data, start, True), _u32(data, start, False))
        if family == 2:
            return _V4, start + 4, end, 0
        if family == 10 or family == 24 or family == 28 or family == 30:  # Linux, BSDs, macOS
            return _V6, start + 4, end, 0
        return _NON_IP, start, end, 0
    return _NON_IP, start, end, 0  # a link type we do not decode: not known to be IP


@_inline
def _transport(data: np.ndarray, l4: int, l4_end: int, proto: int, is_v6: bool) -> tuple[int, int, int]:
    """(sport, dport, tcp_flags) when the transport's fixed header is wholly present."""
    avail = l4_end - l4
    if proto == 6 and avail >= 20:
        return _be16(data, l4), _be16(data, l4 + 2), np.int64(data[l4 + 13])
    if proto == 17 and avail >= 8:
        return _be16(data, l4), _be16(data, l4 + 2), 0
    if (proto == 1 and not is_v6 and avail >= 8) or (proto == 58 and is_v6 and avail >= 4):
        return np.int64(data[l4]), np.int64(data[l4 + 1]), 0  # ICMP type and code
    return 0, 0, 0


@_inline
def _ipv4(data: np.ndarray, p: int, end: int) -> tuple[bool, int, int, int, int, int, int, int]:
    """(ok, src, dst, proto, ip_len, frag, l4 offset or -1, l4 end) of an IPv4 header."""
    if end - p < 20 or (data[p] >> 4) != 4:
        return False, 0, 0, 0, 0, 0, -1, 0
    ihl_bytes = np.int64(data[p] & 0x0F) * 4
    total_len = _be16(data, p + 2)
    if ihl_bytes < 20 or ihl_bytes > end - p or total_len < ihl_bytes:
        return False, 0, 0, 0, 0, 0, -1, 0
    frag_field = _be16(data, p + 6)
    frag = 0
    l4 = p + ihl_bytes
    if frag_field & 0x1FFF:
        frag = 2  # FRAG_LATER: no transport header in this fragment
        l4 = -1
    elif frag_field & 0x2000:
        frag = 1  # FRAG_FIRST
    l4_end = min(end, p + total_len)  # Ethernet padding after the packet is not transport
    return True, _be32(data, p + 12), _be32(data, p + 16), np.int64(data[p + 9]), total_len, frag, l4, l4_end


@_inline
def _ipv6(data: np.ndarray, p: int, end: int) -> tuple[bool, int, int, int, int, int, int]:
    """(ok, proto, ip_len, frag, l4 offset or -1, l4 end) of an IPv6 header and its
    extension-header chain (the addresses are read by the caller)."""
    if end - p < 40 or (data[p] >> 4) != 6:
        return False, 0, 0, 0, -1, 0
    payload_len = _be16(data, p + 4)
    proto = np.int64(data[p + 6])
    # A zero payload length means a jumbogram (RFC 2675): bounded by what was captured.
    q_end = end if payload_len == 0 else min(end, p + 40 + payload_len)
    q = p + 40
    frag = 0
    while proto == 0 or proto == 43 or proto == 44 or proto == 60 or proto == 51:
        if q + 8 > q_end:  # every extension header is at least 8 bytes
            return True, proto, payload_len + 40, frag, -1, q_end
        if proto == 44:
            header_len = 8
        elif proto == 51:  # AH counts its length in 4-byte words, minus 2
            header_len = (np.int64(data[q + 1]) + 2) * 4
        else:  # the others in 8-byte units, not counting the first
            header_len = (np.int64(data[q + 1]) + 1) * 8
        if q + header_len > q_end:  # not captured in full: what follows is unknown
            return True, proto, payload_len + 40, frag, -1, q_end
        next_header = np.int64(data[q])
        if proto == 44:
            offset_field = _be16(data, q + 2)
            if offset_field & 0xFFF8:
                return True, next_header, payload_len + 40, 2, -1, q_end  # FRAG_LATER
            if offset_field & 1:
                frag = 1  # FRAG_FIRST
        proto = next_header
        q += header_len
    return True, proto, payload_len + 40, frag, q, q_end


@_jit
def _parse_kernel(
    data: np.ndarray,
    offsets: np.ndarray,
    caplens: np.ndarray,
    ts_ns: np.ndarray,
    linktypes: np.ndarray,
    per_frame_linktype: bool,
    out_ts: np.ndarray,
    out_ver: np.ndarray,
    out_src_hi: np.ndarray,
    out_src_lo: np.ndarray,
    out_dst_hi: np.ndarray,
    out_dst_lo: np.ndarray,
    out_sport: np.ndarray,
    out_dport: np.ndarray,
    out_proto: np.ndarray,
    out_ip_len: np.ndarray,
    out_flags: np.ndarray,
    out_vlan: np.ndarray,
    out_frag: np.ndarray,
    out_dns: np.ndarray,
) -> tuple[int, int, int, int]:
    """Fill the output columns (PACKET_COLUMNS order), and out_dns with the indices of the
    frames from UDP port 53 (where capture.packets._dns looks for answers); returns (rows,
    malformed, non_ip, dns frames)."""
    size = data.shape[0]
    n_dns = 0
    rows = 0
    malformed = 0
    non_ip = 0
    v4_mapped = np.uint64(0x0000FFFF00000000)
    for i in range(offsets.shape[0]):
        start = offsets[i]
        if start < 0 or caplens[i] < 0 or start > size:
            malformed += 1  # a bad index from the caller is still never a crash
            continue
        end = min(start + caplens[i], size)
        linktype = linktypes[i] if per_frame_linktype else linktypes[0]
        kind, p, end, vlan = _link_layer(data, start, end, linktype)
        if kind == _BY_VERSION:
            kind = _V4 if p < end and (data[p] >> 4) == 4 else _V6
        if kind == _NON_IP:
            non_ip += 1
            continue
        if kind == _MALFORMED:
            malformed += 1
            continue
        if kind == _V4:
            ok, src, dst, proto, ip_len, frag, l4, l4_end = _ipv4(data, p, end)
            if not ok:
                malformed += 1
                continue
            out_src_hi[rows] = 0
            out_src_lo[rows] = v4_mapped | np.uint64(src)
            out_dst_hi[rows] = 0
            out_dst_lo[rows] = v4_mapped | np.uint64(dst)
        else:
            ok, proto, ip_len, frag, l4, l4_end = _ipv6(data, p, end)
            if not ok:
                malformed += 1
                continue
            out_src_hi[rows] = _be64u(data, p + 8)
            out_src_lo[rows] = _be64u(data, p + 16)
            out_dst_hi[rows] = _be64u(data, p + 24)
            out_dst_lo[rows] = _be64u(data, p + 32)
        sport, dport, flags = 0, 0, 0
        if l4 >= 0:
            sport, dport, flags = _transport(data, l4, l4_end, proto, kind == _V6)
        out_ts[rows] = ts_ns[i]
        out_ver[rows] = kind
        out_sport[rows] = sport
        out_dport[rows] = dport
        out_proto[rows] = proto
        out_ip_len[rows] = ip_len
        out_flags[rows] = flags
        out_vlan[rows] = vlan
        out_frag[rows] = frag
        rows += 1
        if proto == 17 and sport == 53:
            out_dns[n_dns] = i
            n_dns += 1
    return rows, malformed, non_ip, n_dns


def parse_frames(
    data: np.ndarray,
    offsets: np.ndarray,
    caplens: np.ndarray,
    ts_ns: np.ndarray,
    linktype: int | np.ndarray,
) -> PacketBatch:
    """Parse raw link-layer frames data[offsets[i] : offsets[i] + caplens[i]] into a PacketBatch.

    data is a uint8 buffer (array, memmap or bytes), offsets and caplens are int64 byte counts,
    ts_ns int64 ns timestamps. linktype is one link type for all frames, or an array with one
    per frame (pcapng files whose interfaces differ); rows keep the frames' order either way.
    Rows exist only for IP packets; non-IP frames count in `non_ip`, unparseable ones in
    `malformed` (see the module docstring); nothing in the bytes can make this raise.
    Raises CaptureError for a single link type this parser does not decode.
    """
    from detector.capture.packets._dns import dns_answers  # it builds on this module's frame parse

    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    columns = new_columns(offsets.shape[0])
    rows, malformed, non_ip, dns_at = parse_into(data, offsets, caplens, ts_ns, linktype, columns)
    return PacketBatch(
        **{name: column[:rows] for name, column in zip(PACKET_COLUMNS, columns, strict=True)},
        malformed=malformed,
        non_ip=non_ip,
        answers=dns_answers(data, offsets, caplens, ts_ns, linktype, at=dns_at),
    )


def new_columns(capacity: int) -> list[np.ndarray]:
    """Empty output columns for parse_into, in PACKET_COLUMNS order, room for `capacity` rows."""
    return [np.empty(capacity, dtype=dtype) for dtype in PACKET_COLUMNS.values()]


def parse_into(
    data: np.ndarray,
    offsets: np.ndarray,
    caplens: np.ndarray,
    ts_ns: np.ndarray,
    linktype: int | np.ndarray,
    columns: list[np.ndarray],
) -> tuple[int, int, int, np.ndarray]:
    """parse_frames, writing the rows into `columns` (PACKET_COLUMNS order, each with room
    for one row per frame) from their index 0; returns (rows, malformed, non_ip, the indices
    of the frames from UDP port 53: dns_answers' `at`, so it need not walk every frame again).

    A reader fills a batch's columns group by group through views (column[rows:]), so no
    group needs arrays, a PacketBatch or a concatenation of its own.
    """
    frames = kernel_frames(data, offsets, caplens, ts_ns, linktype)
    n = frames[1].shape[0]
    if len(columns) != len(PACKET_COLUMNS) or min(c.shape[0] for c in columns) < n:  # the kernel does not bounds-check
        raise ValueError(f"columns must be {len(PACKET_COLUMNS)} arrays (PACKET_COLUMNS) with room for {n} rows")
    # The kernel's output arguments follow PACKET_COLUMNS' order.
    dns_at = np.empty(n, np.int64)
    rows, malformed, non_ip, n_dns = _parse_kernel(*frames, *columns, dns_at)
    return int(rows), int(malformed), int(non_ip), dns_at[:n_dns]


def kernel_frames(data: np.ndarray, offsets: np.ndarray, caplens: np.ndarray, ts_ns: np.ndarray,
                  linktype: int | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """parse_frames' arguments as a frame kernel takes them: (data, offsets, caplens, ts_ns,
    linktypes, per_frame_linktype), contiguous and checked. Raises CaptureError for a single
    link type this parser does not decode."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = np.frombuffer(data, dtype=np.uint8)
    data = np.ascontiguousarray(data, dtype=np.uint8)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    caplens = np.ascontiguousarray(caplens, dtype=np.int64)
    ts_ns = np.ascontiguousarray(ts_ns, dtype=np.int64)
    n = offsets.shape[0]
    if caplens.shape != (n,) or ts_ns.shape != (n,):
        raise ValueError(f"offsets, caplens and ts_ns differ in length: {n}, {caplens.shape}, {ts_ns.shape}")
    if np.ndim(linktype) == 0:
        if int(linktype) not in SUPPORTED_LINKTYPES:
            raise CaptureError(f"unsupported link type {int(linktype)}; supported: {sorted(SUPPORTED_LINKTYPES)}")
        linktypes = np.array([int(linktype)], dtype=np.int64)
        per_frame = False
    else:
        linktypes = np.ascontiguousarray(linktype, dtype=np.int64)
        if linktypes.shape != (n,):
            raise ValueError(f"linktype array has {linktypes.shape} entries for {n} frames")
        per_frame = True
        if n == 0:
            linktypes = np.array([LINKTYPE_ETHERNET], dtype=np.int64)
    return data, offsets, caplens, ts_ns, linktypes, per_frame


# --------------------------------------------------------------------------------------
# Record walks: where each frame lies in a buffer holding part of a capture file
# --------------------------------------------------------------------------------------


@_jit
def walk_pcap(
    buf: np.ndarray,
    pos: int,
    valid: int,
    big_endian: bool,
    frac_ns: int,
    max_records: int,
    out_offsets: np.ndarray,
    out_caplens: np.ndarray,
    out_origlens: np.ndarray,
    out_ts_ns: np.ndarray,
    out_base: int,
) -> tuple[int, int, int, int]:
    """Walk pcap records from buf[pos] up to buf[valid]; fill the outputs from out_base.

    frac_ns is 1000 for microsecond files and 1 for nanosecond files. Returns (records,
    position after the last whole record, WALK_* status, detail: the bad caplen if any).
    """
    n = 0
    while n < max_records:
        if valid - pos < 16:
            return n, pos, WALK_NEED_MORE, 0
        caplen = _u32(buf, pos + 8, big_endian)
        if caplen > MAX_CAPLEN_BYTES:
            return n, pos, WALK_BAD_CAPLEN, caplen
        if pos + 16 + caplen > valid:
            return n, pos, WALK_NEED_MORE, caplen
        seconds = _u32(buf, pos, big_endian)
        out_offsets[out_base + n] = pos + 16
        out_caplens[out_base + n] = caplen
        out_origlens[out_base + n] = _u32(buf, pos + 12, big_endian)
        out_ts_ns[out_base + n] = seconds * 1_000_000_000 + _u32(buf, pos + 4, big_endian) * frac_ns
        pos += 16 + caplen
        n += 1
    return n, pos, WALK_FULL, 0


@_inline
def _units_to_ns(raw: np.uint64, mul: int, div: int, shift: int) -> int:
    """A pcapng timestamp in interface units as ns: raw * mul // div (if_tsresol a power
    of 10) or raw / 2**shift seconds (a power of 2)."""
    if shift < 0:
        return np.int64(raw * np.uint64(mul) // np.uint64(div))
    if shift >= 64:
        return 0
    seconds = raw >> np.uint64(shift)
    fraction = raw & ((np.uint64(1) << np.uint64(shift)) - np.uint64(1))
    fraction_shift = shift
    if shift > 30:  # keep fraction * 1e9 inside 64 bits; what is dropped is below 1 ns
        fraction = fraction >> np.uint64(shift - 30)
        fraction_shift = 30
    nanos = (fraction * np.uint64(1_000_000_000)) >> np.uint64(fraction_shift)
    return np.int64(seconds * np.uint64(1_000_000_000) + nanos)


@_jit
def walk_pcapng(
    buf: np.ndarray,
    pos: int,
    valid: int,
    big_endian: bool,
    if_mul: np.ndarray,
    if_div: np.ndarray,
    if_shift: np.ndarray,
    if_offset_ns: np.ndarray,
    if_snaplen: np.ndarray,
    if_base: int,
    last_ts_ns: int,
    max_records: int,
    out_offsets: np.ndarray,
    out_caplens: np.ndarray,
    out_origlens: np.ndarray,
    out_ts_ns: np.ndarray,
    out_iface: np.ndarray,
    out_base: int,
) -> tuple[int, int, int, int, int]:
    """Walk pcapng blocks of one section from buf[pos]; packets (EPB, SPB, obsolete PB) fill
    the outputs, unknown blocks are skipped, section headers and interface descriptions stop
    the walk (WALK_BLOCK) for Python to read. The if_* arrays describe the section's
    interfaces; out_iface gets if_base + the local interface id.

    A Simple Packet Block has no timestamp: it gets the previous packet's (last_ts_ns), which
    keeps time monotonic. Returns (records, position, status, last_ts_ns, detail).
    """
    n = 0
    n_if = if_mul.shape[0]
    while n < max_records:
        if valid - pos < 8:
            return n, pos, WALK_NEED_MORE, last_ts_ns, 0
        block_type = _u32(buf, pos, big_endian)
        if block_type == _BLOCK_SHB:  # its length is in its own byte order: Python reads it
            return n, pos, WALK_BLOCK, last_ts_ns, 0
        block_len = _u32(buf, pos + 4, big_endian)
        if block_len < 12 or block_len % 4 != 0 or block_len > MAX_BLOCK_BYTES:
            return n, pos, WALK_BAD_BLOCK_LEN, last_ts_ns, block_len
        if pos + block_len > valid:
            return n, pos, WALK_NEED_MORE, last_ts_ns, block_len
        if _u32(buf, pos + block_len - 4, big_endian) != block_len:
            return n, pos, WALK_BAD_TRAILER, last_ts_ns, _u32(buf, pos + block_len - 4, big_endian)
        if block_type == _BLOCK_IDB:
            return n, pos, WALK_BLOCK, last_ts_ns, 0
        if block_type == _BLOCK_EPB or block_type == _BLOCK_PB or block_type == _BLOCK_SPB:
            if block_type == _BLOCK_SPB:
                iface = 0
                header_len = 12
            elif block_type == _BLOCK_EPB:
                iface = _u32(buf, pos + 8, big_endian)
                header_len = 28
            else:  # the obsolete PB has a 16-bit interface id and a 16-bit drop count
                iface = _u16(buf, pos + 8, big_endian)
                header_len = 28
            if block_len < header_len + 4:
                return n, pos, WALK_BAD_BLOCK_LEN, last_ts_ns, block_len
            if iface >= n_if:
                return n, pos, WALK_BAD_INTERFACE, last_ts_ns, iface
            room = block_len - header_len - 4
            if block_type == _BLOCK_SPB:
                origlen = _u32(buf, pos + 8, big_endian)
                caplen = min(origlen, room)
                if if_snaplen[0] > 0:
                    caplen = min(caplen, if_snaplen[0])
                ts = last_ts_ns
            else:
                caplen = _u32(buf, pos + 20, big_endian)
                origlen = _u32(buf, pos + 24, big_endian)
                if caplen > room or caplen > MAX_CAPLEN_BYTES:
                    return n, pos, WALK_BAD_CAPLEN, last_ts_ns, caplen
                raw = (np.uint64(_u32(buf, pos + 12, big_endian)) << np.uint64(32)) | np.uint64(
                    _u32(buf, pos + 16, big_endian)
                )
                ts = _units_to_ns(raw, if_mul[iface], if_div[iface], if_shift[iface]) + if_offset_ns[iface]
                last_ts_ns = ts
            out_offsets[out_base + n] = pos + header_len
            out_caplens[out_base + n] = caplen
            out_origlens[out_base + n] = origlen
            out_ts_ns[out_base + n] = ts
            out_iface[out_base + n] = if_base + iface
            n += 1
        pos += block_len
    return n, pos, WALK_FULL, last_ts_ns, 0


def tsresol_units(tsresol: int) -> tuple[int, int, int]:
    """The (mul, div, shift) that walk_pcapng uses for a pcapng if_tsresol option byte:
    high bit clear = 10**-value seconds, set = 2**-value seconds (value 6, microseconds, is
    the default)."""
    value = tsresol & 0x7F
    if tsresol & 0x80:
        return 1, 1, value
    if value <= 9:
        return 10 ** (9 - value), 1, -1
    # Finer than 1 ns: divide. Beyond 10**-27 no 64-bit count reaches 1 ns; cap the divisor
    # where it still fits an int64.
    return 1, 10 ** min(value - 9, 18), -1
