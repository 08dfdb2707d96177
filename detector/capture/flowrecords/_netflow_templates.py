"""NetFlow v9 / IPFIX templates: parsed from template sets, compiled into numpy record
layouts (for capture.flowrecords.netflow).

A data set's records all have the template's fixed length, so a run of them is one numpy
structured array (`np.frombuffer` with a dtype whose fields sit at the template's offsets,
big-endian): reading any number of records costs a few numpy calls, not a Python step per
record or per field. This module knows the information elements (IEs) netad reads and turns
a template's field list into such a dtype plus a map from what we need (addresses, ports,
counters, times, sampling) to the dtype's field names. Variable-length fields (IPFIX length
65535) make records of different lengths; `fixed_records` copies such records into the fixed
layout first (a Python step per record: rare in flow exports, none in softflowd's).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

VARLEN = 65535
PEN_REVERSE = 29305  # RFC 5103: IPFIX biflow reverse information elements

# What netad reads, by IANA IPFIX information element id (the v9 field types share these
# numbers). Alternatives are listed in order of preference.
SEMANTICS: dict[str, tuple[int, ...]] = {
    "src4": (8,),  # sourceIPv4Address
    "dst4": (12,),  # destinationIPv4Address
    "src6": (27,),  # sourceIPv6Address
    "dst6": (28,),  # destinationIPv6Address
    "sport": (7,),  # sourceTransportPort
    "dport": (11,),  # destinationTransportPort
    "proto": (4,),  # protocolIdentifier
    "flags": (6,),  # tcpControlBits (1 byte in v9, 2 in IPFIX: the low 8 bits are the flags)
    "bytes": (1, 85, 23),  # octetDeltaCount, octetTotalCount, postOctetDeltaCount
    "packets": (2, 86, 24),  # packetDeltaCount, packetTotalCount, postPacketDeltaCount
    "icmp": (32, 139),  # icmpTypeCodeIPv4 / IPv6: type * 256 + code
    "icmp_type": (176, 178),
    "icmp_code": (177, 179),
    "end_up": (21,),  # flowEndSysUpTime, ms (v9 LAST_SWITCHED)
    "start_up": (22,),  # flowStartSysUpTime, ms (v9 FIRST_SWITCHED)
    "start_s": (150,),
    "end_s": (151,),
    "start_ms": (152,),
    "end_ms": (153,),
    "start_us": (154,),  # dateTimeMicroseconds: NTP format
    "end_us": (155,),
    "start_ns": (156,),  # dateTimeNanoseconds: NTP format
    "end_ns": (157,),
    "start_delta_us": (158,),  # flowStartDeltaMicroseconds: before the export time
    "end_delta_us": (159,),
    "sysinit_ms": (160,),  # systemInitTimeMilliseconds: what *SysUpTime counts from
    # sampling, in data records or (usually) in options records
    "samp_interval": (34,),  # samplingInterval / v9 SAMPLING_INTERVAL: 1 out of N
    "samp_random": (50,),  # samplerRandomInterval / v9 FLOW_SAMPLER_RANDOM_INTERVAL
    "samp_pkt_interval": (305,),  # samplingPacketInterval: packets selected ...
    "samp_pkt_space": (306,),  # samplingPacketSpace: ... then this many skipped
    "samp_size": (309,),  # samplingSize: n ...
    "samp_population": (310,),  # samplingPopulation: ... out of N
    "sampler_id": (48, 302),  # v9 FLOW_SAMPLER_ID, selectorId
}
REVERSE_SEMANTICS: dict[str, tuple[int, ...]] = {
    "rev_bytes": (1, 85),
    "rev_packets": (2, 86),
    "rev_flags": (6,),
}

_NTP_EPOCH_OFFSET_S = 2_208_988_800  # 1900-01-01 to 1970-01-01


@dataclass(frozen=True)
class TemplateField:
    ie: int
    length: int
    enterprise: int = 0
    scope: bool = False  # an options template's scope field


@dataclass
class Compiled:
    """A template as a numpy layout: `dtype` reads its fixed-length records; `names` maps
    a semantic key (SEMANTICS) to the dtype field(s) holding it."""

    fields: tuple[TemplateField, ...]
    options: bool
    record_len: int | None  # None: the template has variable-length fields
    fixed_len: int  # bytes of its fixed-length fields: the record length in `dtype`
    dtype: np.dtype
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    odd: dict[str, int] = field(default_factory=dict)  # key -> byte length, for 3/5/6/7-byte fields

    def has(self, key: str) -> bool:
        return key in self.names


def compile_template(fields: tuple[TemplateField, ...], options: bool, v9_scope: bool) -> Compiled:
    """Compile a field list. `v9_scope`: the scope fields are v9 scope types (1 System,
    2 Interface, ...), not IEs, and must not be read as counters."""
    varlen = any(f.length == VARLEN for f in fields)
    # offsets in the fixed projection: variable-length fields left out (see fixed_records)
    fixed_offsets, p = [], 0
    for f in fields:
        fixed_offsets.append(p)
        if f.length != VARLEN:
            p += f.length
    itemsize = p
    record_len = None if varlen else p
    names: list[str] = []
    formats: list = []
    offs: list[int] = []
    out_names: dict[str, tuple[str, ...]] = {}
    odd: dict[str, int] = {}
    for key, ies in list(SEMANTICS.items()) + list(REVERSE_SEMANTICS.items()):
        reverse = key in REVERSE_SEMANTICS
        want_pen = PEN_REVERSE if reverse else 0
        for ie in ies:
            idx = next((i for i, f in enumerate(fields)
                        if f.ie == ie and f.enterprise == want_pen and f.length not in (0, VARLEN)
                        and not (f.scope and v9_scope)), None)
            if idx is None:
                continue
            f, off = fields[idx], fixed_offsets[idx]
            if key in ("src6", "dst6"):
                if f.length != 16:
                    break
                names += [f"{key}_hi", f"{key}_lo"]
                formats += [">u8", ">u8"]
                offs += [off, off + 8]
                out_names[key] = (f"{key}_hi", f"{key}_lo")
            elif f.length in (1, 2, 4, 8):
                names.append(key)
                formats.append(f">u{f.length}")
                offs.append(off)
                out_names[key] = (key,)
            elif f.length < 8:
                names.append(key)
                formats.append(("u1", (f.length,)))
                offs.append(off)
                out_names[key] = (key,)
                odd[key] = f.length
            else:  # longer than 8 bytes for a number: its low 8 bytes
                names.append(key)
                formats.append(">u8")
                offs.append(off + f.length - 8)
                out_names[key] = (key,)
            break
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offs, "itemsize": max(itemsize, 1)})
    return Compiled(fields=fields, options=options, record_len=record_len, fixed_len=itemsize, dtype=dtype,
                    names=out_names, odd=odd)


def template_records(body: memoryview, version: int, options: bool) -> tuple[list[tuple[int, tuple[TemplateField, ...] | None]], bool]:
    """The template records of a v9 (flow set 0/1) or IPFIX (set 2/3) template set, as
    (template id, fields); fields None is an IPFIX withdrawal. The bool is False when the
    set is damaged: the records before the damage are returned."""
    out: list[tuple[int, tuple[TemplateField, ...] | None]] = []
    pos, end = 0, len(body)
    while pos + 4 <= end:
        tid, count = struct.unpack_from("!HH", body, pos)
        if tid == 0 and count == 0:
            return out, True  # padding
        if version == 9 and options:
            if pos + 6 > end:
                return out, False
            scope_len, option_len = count, struct.unpack_from("!H", body, pos + 4)[0]
            pos += 6
            if scope_len % 4 or option_len % 4 or scope_len + option_len == 0 or pos + scope_len + option_len > end:
                return out, False
            raw = [struct.unpack_from("!HH", body, pos + 4 * i) for i in range((scope_len + option_len) // 4)]
            fields = tuple(TemplateField(ie, ln, 0, i < scope_len // 4) for i, (ie, ln) in enumerate(raw))
            pos += scope_len + option_len
        elif version == 9:
            pos += 4
            if count == 0 or pos + 4 * count > end:
                return out, False
            fields = tuple(TemplateField(*struct.unpack_from("!HH", body, pos + 4 * i)) for i in range(count))
            pos += 4 * count
        else:
            pos += 4
            if count == 0:  # withdrawal (template id 2 or 3: all of this exporter's)
                out.append((tid, None))
                continue
            scope = 0
            if options:
                if pos + 2 > end:
                    return out, False
                scope = struct.unpack_from("!H", body, pos)[0]
                pos += 2
                if scope == 0 or scope > count:
                    return out, False
            parsed = []
            for i in range(count):
                if pos + 4 > end:
                    return out, False
                ie, ln = struct.unpack_from("!HH", body, pos)
                pos += 4
                pen = 0
                if ie & 0x8000:  # enterprise-specific: a 4-byte enterprise number follows
                    if pos + 4 > end:
                        return out, False
                    pen = struct.unpack_from("!I", body, pos)[0]
                    ie &= 0x7FFF
                    pos += 4
                parsed.append(TemplateField(ie, ln, pen, i < scope))
            fields = tuple(parsed)
        if tid < 256 or any(f.length == 0 for f in fields):
            return out, False
        out.append((tid, fields))
    return out, True


def column(arr: np.ndarray, c: Compiled, key: str) -> np.ndarray | None:
    """A semantic column as uint64 (None when the template lacks it)."""
    names = c.names.get(key)
    if names is None:
        return None
    raw = arr[names[0]]
    if key in c.odd:
        out = np.zeros(raw.shape[0], dtype=np.uint64)
        for k in range(c.odd[key]):
            out = (out << np.uint64(8)) | raw[:, k].astype(np.uint64)
        return out
    return raw.astype(np.uint64)


def address6(arr: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
    return arr[f"{key}_hi"].astype(np.uint64), arr[f"{key}_lo"].astype(np.uint64)


def ntp_to_ns(value: np.ndarray) -> np.ndarray:
    """64-bit NTP timestamps (seconds since 1900 . 2^-32 fractions) as Unix ns."""
    secs = (value >> np.uint64(32)).astype(np.int64) - _NTP_EPOCH_OFFSET_S
    frac = value & np.uint64(0xFFFFFFFF)
    return secs * 1_000_000_000 + ((frac * np.uint64(1_000_000_000)) >> np.uint64(32)).astype(np.int64)


def fixed_records(c: Compiled, body: memoryview) -> tuple[bytes, int]:
    """Records of a template with variable-length fields, copied into the fixed layout
    (their variable fields dropped); returns (bytes, records). Stops at the first record
    that does not fit (the rest is padding or damage)."""
    out = bytearray()
    n = 0
    pos = 0
    end = len(body)
    while pos < end:
        rec = bytearray()
        p = pos
        ok = True
        for f in c.fields:
            if f.length == VARLEN:
                if p >= end:
                    ok = False
                    break
                ln = body[p]
                p += 1
                if ln == 255:
                    if p + 2 > end:
                        ok = False
                        break
                    ln = (body[p] << 8) | body[p + 1]
                    p += 2
                p += ln
            else:
                rec += body[p : p + f.length]
                p += f.length
            if p > end:
                ok = False
                break
        if not ok or p == pos:
            break
        out += rec
        n += 1
        pos = p
    return bytes(out), n
