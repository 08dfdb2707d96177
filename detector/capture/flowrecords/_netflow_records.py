"""NetFlow v5/v9 and IPFIX data records -> FlowRecordBatch columns (for capture.flowrecords.netflow).

The parser gathers the records of one template from many datagrams into one structured
array (`gather`); here they become the batch's columns in a few numpy operations per
template: addresses (IPv4 as IPv4-mapped), ports (ICMP type and code moved where PacketBatch
keeps them), absolute times from whatever the template carries, and counters multiplied by
the sampling rate that applies to each record. RFC 5103 biflows give a second, reversed
record (`reverse_columns`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.capture.flowrecords._netflow_templates import Compiled, address6, column, ntp_to_ns
from detector.contracts import V4_MAPPED_LO_PREFIX

_U32 = np.int64(1 << 32)
# The latest systemInitTimeMilliseconds whose times (init + up to 2**32 ms of uptime) still
# fit int64 nanoseconds (the year 2262); a later one is no system's start, and is unknown.
MAX_SYSINIT_MS = (2**63 - 1) // 1_000_000 - (1 << 32)


@dataclass
class DatagramFacts:
    """Per datagram of a parse call: what its records' times and rates depend on."""

    version: np.ndarray  # int64: 5, 9 or 10
    export_ns: np.ndarray  # int64: the header's clock
    uptime_ms: np.ndarray  # int64: the header's sysUpTime (v5/v9), 0 for IPFIX
    exporter: np.ndarray  # int64: exporter id
    header_rate: np.ndarray  # float64: v5 header sampling interval, 0 = none
    domain_rate: np.ndarray  # float64: domain-wide rate from options records, 0 = none
    sysinit_ms: np.ndarray  # int64: IPFIX systemInitTimeMilliseconds from options, -1 = unknown


def gather(c: Compiled, runs: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All runs (blob, records, datagram index, first ordinal) of one template as one
    structured array, with each record's datagram index and arrival ordinal."""
    blob = b"".join(r[0] for r in runs)
    n = np.fromiter((r[1] for r in runs), dtype=np.int64, count=len(runs))
    total = int(n.sum())
    arr = np.frombuffer(blob, dtype=c.dtype, count=total)
    meta = np.repeat(np.fromiter((r[2] for r in runs), dtype=np.int64, count=len(runs)), n)
    first = np.fromiter((r[3] for r in runs), dtype=np.int64, count=len(runs))
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
    return arr, meta, np.repeat(first, n) + within


def record_columns(c: Compiled, arr: np.ndarray, meta: np.ndarray, facts: DatagramFacts,
                   sampler_rate: dict[tuple[int, int], float], default_rate: float) -> tuple[dict[str, np.ndarray], int]:
    """The batch columns of one template's records (plus `export_ns` and `rate`, which the
    parser uses and drops), and how many records had no time of their own."""
    n = arr.shape[0]
    exp_ns = facts.export_ns[meta]
    cols: dict[str, np.ndarray] = {"export_ns": exp_ns, "exporter": facts.exporter[meta]}
    for side in ("src", "dst"):
        v4 = column(arr, c, f"{side}4")
        if v4 is not None:
            hi, lo = np.zeros(n, np.uint64), v4 | V4_MAPPED_LO_PREFIX
        elif c.has(f"{side}6"):
            hi, lo = address6(arr, f"{side}6")
        else:
            hi = lo = np.zeros(n, np.uint64)
        cols[f"{side}_hi"], cols[f"{side}_lo"] = hi, lo
    zeros = np.zeros(n, np.uint64)
    proto = _or(column(arr, c, "proto"), zeros)
    sport, dport = _or(column(arr, c, "sport"), zeros), _or(column(arr, c, "dport"), zeros)
    icmp = (proto == 1) | (proto == 58)
    if icmp.any():  # ICMP type and code go where PacketBatch has them: sport, dport
        tc = column(arr, c, "icmp")
        if tc is None and c.has("icmp_type"):
            tc = (column(arr, c, "icmp_type") << np.uint64(8)) | _or(column(arr, c, "icmp_code"), zeros)
        if tc is None:
            tc = dport  # the v5 convention: type * 256 + code in the destination port
        sport = np.where(icmp, tc >> np.uint64(8), sport)
        dport = np.where(icmp, tc & np.uint64(0xFF), dport)
    cols.update(sport=sport, dport=dport, proto=proto, tcp_flags=_or(column(arr, c, "flags"), zeros) & np.uint64(0xFF))
    start, end, unknown = record_times(c, arr, meta, facts)
    cols["start_ns"], cols["end_ns"] = start, np.maximum(end, start)
    # the rate that applies: the record's own, its sampler's, its domain's, the v5 header's
    rate = np.where(facts.domain_rate[meta] > 0, facts.domain_rate[meta], facts.header_rate[meta])
    sampler = column(arr, c, "sampler_id")
    if sampler is not None:
        exps = cols["exporter"]
        found = np.array([sampler_rate.get((int(e), int(s)), 0.0) for e, s in zip(exps, sampler, strict=True)], dtype=np.float64)
        rate = np.where(found > 0, found, rate)
    own = own_rate(c, arr)
    if own is not None:
        rate = np.where(own > 0, own, rate)
    rate = np.where(rate > 0, rate, float(default_rate))
    cols["sampling"] = np.rint(np.minimum(rate, 2.0**31)).astype(np.uint64)
    cols["packets"] = scaled(_or(column(arr, c, "packets"), zeros), rate)
    cols["bytes"] = scaled(_or(column(arr, c, "bytes"), zeros), rate)
    cols["rate"] = rate
    return cols, int(unknown.sum())


def reverse_columns(c: Compiled, arr: np.ndarray, fwd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """RFC 5103 biflows: the reverse counters become a record of their own, dst -> src,
    over the same times; biflows whose reverse direction saw nothing give none."""
    zeros = np.zeros(arr.shape[0], np.uint64)
    rate = fwd["rate"]
    packets = scaled(_or(column(arr, c, "rev_packets"), zeros), rate)
    out = dict(fwd)
    out.update(
        src_hi=fwd["dst_hi"], src_lo=fwd["dst_lo"], dst_hi=fwd["src_hi"], dst_lo=fwd["src_lo"],
        sport=fwd["dport"], dport=fwd["sport"], packets=packets,
        bytes=scaled(_or(column(arr, c, "rev_bytes"), zeros), rate),
        tcp_flags=_or(column(arr, c, "rev_flags"), zeros) & np.uint64(0xFF), order=fwd["order"] + 1,
    )
    keep = packets > 0
    return {k: v[keep] for k, v in out.items()}


def own_rate(c: Compiled, arr: np.ndarray) -> np.ndarray | None:
    """The sampling rate a record states itself (packet interval/space, n-of-N, 1-in-N)."""
    interval = column(arr, c, "samp_pkt_interval")
    if interval is not None:
        space = _or(column(arr, c, "samp_pkt_space"), np.zeros_like(interval))
        return np.where(interval > 0, (interval + space) / np.maximum(interval, 1), 0.0)
    size, population = column(arr, c, "samp_size"), column(arr, c, "samp_population")
    if size is not None and population is not None:
        return np.where(size > 0, population / np.maximum(size, 1), 0.0)
    for key in ("samp_interval", "samp_random"):
        value = column(arr, c, key)
        if value is not None:
            return value.astype(np.float64)
    return None


def scaled(count: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Counters times the sampling rate, kept inside int64 (a damaged counter near 2^64
    must not wrap around)."""
    return np.rint(np.minimum(count.astype(np.float64) * rate, 2.0**62)).astype(np.uint64)


def record_times(c: Compiled, arr: np.ndarray, meta: np.ndarray, facts: DatagramFacts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Absolute start and end (ns) of each record, and where neither was known (the export
    time is used). In order of preference: absolute seconds/ms/us/ns, deltas before the
    export, ms of uptime (v5/v9: before the header's uptime; IPFIX: after the exporter's
    systemInitTimeMilliseconds)."""
    n = arr.shape[0]
    exp_ns = facts.export_ns[meta]
    ends: list[np.ndarray | None] = []
    for side in ("start", "end"):
        t = None
        for key, scale in ((f"{side}_ms", 1_000_000), (f"{side}_s", 1_000_000_000)):
            v = column(arr, c, key)
            if v is not None:
                t = v.astype(np.int64) * scale
                break
        for key in (f"{side}_ns", f"{side}_us"):
            v = column(arr, c, key)
            if t is None and v is not None:
                t = ntp_to_ns(v)
        v = column(arr, c, f"{side}_delta_us")
        if t is None and v is not None:
            t = exp_ns - v.astype(np.int64) * 1000
        v = column(arr, c, f"{side}_up")
        if t is None and v is not None:
            up = v.astype(np.int64)
            # v5/v9: ms of uptime before the header's uptime, modulo 2^32 (it wraps at 49.7 days)
            before = (facts.uptime_ms[meta] - up) % _U32
            before = np.where(before >= _U32 // 2, before - _U32, before)
            relative = exp_ns - before * 1_000_000
            own_init = column(arr, c, "sysinit_ms")
            init = own_init.astype(np.int64) if own_init is not None else facts.sysinit_ms[meta]
            known = (init > 0) & (init <= MAX_SYSINIT_MS)  # (a uint64 of 2**63 or more reads negative)
            absolute = np.where(known, (np.where(known, init, 0) + up) * 1_000_000, -1)
            t = np.where(facts.version[meta] == 10, absolute, relative)
            t = np.where(t < 0, -1, t)
        ends.append(t)
    start, end = ends
    if start is None and end is None:
        return exp_ns.copy(), exp_ns.copy(), np.ones(n, dtype=bool)
    start = end if start is None else start
    end = start if end is None else end
    unknown = (start < 0) & (end < 0)
    start = np.where(start < 0, np.where(end < 0, exp_ns, end), start)
    end = np.where(end < 0, start, end)
    return start, end, unknown


def _or(value: np.ndarray | None, default: np.ndarray) -> np.ndarray:
    return default if value is None else value
