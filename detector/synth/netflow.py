"""The exporter side of NetFlow v5/v9 and IPFIX, for tests and `netad bench flows`.

Not used by the daemon: it builds export datagrams (templates, options templates, data sets
packed from numpy columns) so the collector can be tested on exact, hand-made input beside
the real exporter (softflowd) and benchmarked on pre-built datagrams.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

Field = tuple[int, int] | tuple[int, int, int]  # (IE, length) or (IE, length, enterprise number)

# softflowd's IPv4 template (v9 and IPFIX), with absolute millisecond times for IPFIX
V9_FIELDS: tuple[Field, ...] = ((8, 4), (12, 4), (22, 4), (21, 4), (1, 4), (2, 4), (10, 4), (14, 4), (61, 1),
                                (136, 1), (7, 2), (11, 2), (4, 1), (6, 1), (60, 1), (5, 1))
IPFIX_FIELDS: tuple[Field, ...] = ((8, 4), (12, 4), (152, 8), (153, 8), (1, 8), (2, 8), (10, 4), (14, 4),
                                   (7, 2), (11, 2), (4, 1), (6, 2), (60, 1), (5, 1))


def _pad4(body: bytes) -> bytes:
    return body + b"\0" * (-len(body) % 4)


def template_set(template_id: int, fields: Sequence[Field], ipfix: bool) -> bytes:
    """A template set (v9 flow set id 0, IPFIX set id 2) holding one template."""
    body = struct.pack("!HH", template_id, len(fields))
    for f in fields:
        if len(f) == 3 and f[2]:  # type: ignore[misc]
            body += struct.pack("!HHI", f[0] | 0x8000, f[1], f[2])  # type: ignore[misc]
        else:
            body += struct.pack("!HH", f[0], f[1])
    return struct.pack("!HH", 2 if ipfix else 0, 4 + len(body)) + body


def options_template_set(template_id: int, scope: Sequence[Field], options: Sequence[Field], ipfix: bool) -> bytes:
    """An options template set (v9 flow set id 1, IPFIX set id 3)."""
    if ipfix:
        body = struct.pack("!HHH", template_id, len(scope) + len(options), len(scope))
    else:
        body = struct.pack("!HHH", template_id, 4 * len(scope), 4 * len(options))
    for f in (*scope, *options):
        body += struct.pack("!HH", f[0], f[1])
    body = _pad4(body)
    return struct.pack("!HH", 3 if ipfix else 1, 4 + len(body)) + body


def withdrawal_set(template_id: int) -> bytes:
    """An IPFIX template withdrawal."""
    return struct.pack("!HHHH", 2, 8, template_id, 0)


def data_set(template_id: int, records: bytes) -> bytes:
    body = _pad4(records)
    return struct.pack("!HH", template_id, 4 + len(body)) + body


def pack_records(fields: Sequence[Field], columns: dict[int, np.ndarray], n: int) -> bytes:
    """n records laid out as `fields`, big-endian, from columns keyed by IE (absent: 0;
    16-byte fields take a (n, 2) uint64 hi/lo array)."""
    names, formats, offsets, pos = [], [], [], 0
    for i, f in enumerate(fields):
        ln = f[1]
        names.append(f"f{i}")
        formats.append(("u1", (ln,)) if ln not in (1, 2, 4, 8, 16) else (">u8", (2,)) if ln == 16 else f">u{ln}")
        offsets.append(pos)
        pos += ln
    arr = np.zeros(n, dtype=np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": pos}))
    for i, f in enumerate(fields):
        reverse = len(f) == 3 and f[2]  # type: ignore[misc]
        key = -f[0] if reverse else f[0]
        if key in columns:
            arr[f"f{i}"] = columns[key]
    return arr.tobytes()


def v9_datagram(sets: Sequence[bytes], unix_s: int, uptime_ms: int, sequence: int, source_id: int = 0, count: int = 0) -> bytes:
    return struct.pack("!HHIIII", 9, count, uptime_ms, unix_s, sequence, source_id) + b"".join(sets)


def ipfix_message(sets: Sequence[bytes], export_s: int, sequence: int, domain: int = 0) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), export_s, sequence, domain) + body


V5_DTYPE = np.dtype([
    ("src", ">u4"), ("dst", ">u4"), ("nexthop", ">u4"), ("input", ">u2"), ("output", ">u2"), ("packets", ">u4"),
    ("bytes", ">u4"), ("first", ">u4"), ("last", ">u4"), ("sport", ">u2"), ("dport", ">u2"), ("pad1", "u1"),
    ("flags", "u1"), ("proto", "u1"), ("tos", "u1"), ("src_as", ">u2"), ("dst_as", ">u2"), ("src_mask", "u1"),
    ("dst_mask", "u1"), ("pad2", ">u2"),
])


def v5_datagram(records: np.ndarray, unix_s: int, unix_ns: int, uptime_ms: int, sequence: int,
                sampling_interval: int = 0, engine: tuple[int, int] = (0, 0)) -> bytes:
    """A v5 datagram from a V5_DTYPE array (at most 30 records by the protocol)."""
    header = struct.pack("!HHIIIIBBH", 5, records.shape[0], uptime_ms, unix_s, unix_ns, sequence, engine[0], engine[1],
                         sampling_interval)
    return header + records.astype(V5_DTYPE).tobytes()


def synthetic_columns(n: int, start_ms: int, seed: int = 7, hosts: int = 4096) -> dict[int, np.ndarray]:
    """n plausible IPv4 flow records (columns keyed by IE) over ten minutes from start_ms."""
    rng = np.random.default_rng(seed)
    inside = (0x0A000000 + rng.integers(1, hosts, n)).astype(np.uint64)  # 10.0.x.y
    outside = rng.integers(0x01000000, 0xDF000000, n).astype(np.uint64)
    out = rng.random(n) < 0.5
    first = start_ms + np.sort(rng.integers(0, 600_000, n)).astype(np.uint64)
    dur = rng.exponential(2_000, n).astype(np.uint64)
    packets = (1 + rng.geometric(0.2, n)).astype(np.uint64)
    return {
        8: np.where(out, inside, outside),
        12: np.where(out, outside, inside),
        7: rng.integers(1024, 65535, n).astype(np.uint64),
        11: rng.choice(np.array([53, 80, 123, 443, 22, 8080], np.uint64), n),
        4: rng.choice(np.array([6, 6, 6, 17], np.uint64), n),
        6: rng.choice(np.array([0x1B, 0x02, 0x12, 0x14], np.uint64), n),
        2: packets,
        1: packets * rng.integers(40, 1500, n).astype(np.uint64),
        152: first,
        153: first + dur,
    }
