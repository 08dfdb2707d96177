"""Splice real attack captures into a benign capture, with exact ground truth.

Where it stands: beside the pipeline, before it. `netad splice` makes labelled test traffic
for `netad eval` out of real captures: each attack capture is shifted in time to an offset
inside the benign capture, its attacker and victim optionally rewritten into the benign
network's addresses, re-encapsulated when its link type differs, and merged in time order.
The inserted span is the ground truth, written in the CSV format `detector.truth` reads
(one row per inserted attack; `description` says `attacker=... target=...`).

`netad splice --scenarios LIST.yaml` adds generated behaviours that only a host's history
reveals (beacons, a bot's onset, bulk uploads, role changes): `detector.eval.scenarios`.

All byte handling is vectorised numpy over the raw records (`read_records`), written with
`write_pcap`: never a Python call (nor a scapy object) per packet.

What the rewriting does, exactly:

- The *victim* is the address that receives the most opening packets (TCP SYN without ACK;
  when the capture has none, any packet). The *attackers* are the sources of opening packets
  towards the victim; the dominant attacker is the most frequent of them. When no attacker
  sends half of them (a spoofed flood), the attack is `spoofed` and its description says so.
- `rewrite-dst=IP` replaces the victim's address wherever it appears (source or
  destination); `rewrite-src=IP` replaces every attacker address (all spoofed sources of a
  flood collapse into IP). IPv4 only: an IPv6 attack with a rewrite is refused.
- The IPv4 header checksum of every rewritten packet is recomputed; TCP and UDP checksums are
  updated incrementally for the pseudo-header change (RFC 1624), so a checksum that was valid
  stays valid and a UDP checksum of 0 (none) stays 0. Later fragments carry no transport
  header and need nothing. Addresses quoted inside ICMP error messages are not rewritten.
- `slow=FACTOR` stretches the attack in time: every packet's offset from the attack's first
  packet is multiplied by FACTOR (> 1), so a 10 s masscan becomes a low-and-slow scan of
  10 x FACTOR s with the same packets in the same order. Replies stretch with the probes
  (a 1 ms round trip becomes FACTOR ms), which is what a slower, farther scanner looks like.
- Link types: frames are kept byte for byte when the attack's link type is the benign one.
  Otherwise the IP packet is cut out and wrapped in the benign capture's link layer
  (Ethernet gets locally administered dummy MACs 02:00:00:00:00:01 -> 02:00:00:00:00:02);
  frames that cannot be carried (non-IP into a raw-IP capture) are dropped and counted.
"""

from __future__ import annotations

import csv
import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detector.capture.packets.pcap import RawRecords, read_records
from detector.capture.packets.pcapwriter import write_pcap
from detector.contracts import PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN, pair_to_addr
from detector.errors import CaptureError, ConfigError
from detector.files import naming
from detector.truth import COLUMNS, load_truth

if TYPE_CHECKING:
    from detector.eval.scenarios import InsertedBehaviour, ScenarioList

# link types (https://www.tcpdump.org/linktypes.html)
_NULL, _ETHERNET, _RAW12, _RAW14, _RAW, _LOOP, _SLL, _IPV4, _IPV6, _SLL2 = 0, 1, 12, 14, 101, 108, 113, 228, 229, 276
_RAW_TYPES = (_RAW12, _RAW14, _RAW)
_VLAN_ETHERTYPES = (0x8100, 0x88A8, 0x9100)
_MAX_VLAN_TAGS = 4
_DUMMY_SRC_MAC = bytes.fromhex("020000000001")
_DUMMY_DST_MAC = bytes.fromhex("020000000002")
_SPOOFED_SHARE = 0.5  # the dominant source sends less than this share of opening packets: spoofed
_OPTIONS = ("rewrite-src", "rewrite-dst", "event", "slow")


@dataclass(frozen=True)
class AttackSpec:
    """One `--attack FILE@OFFSET[:rewrite-src=IP,rewrite-dst=IP,event=NAME,slow=FACTOR]` argument."""

    path: Path
    offset_s: float
    rewrite_src: str | None = None
    rewrite_dst: str | None = None
    event: str | None = None
    slow: float = 1.0

    @classmethod
    def parse(cls, text: str) -> AttackSpec:
        at = text.rfind("@")
        if at <= 0:
            raise ConfigError(f"--attack {text!r}: expected FILE@OFFSET[:rewrite-src=IP,rewrite-dst=IP,event=NAME,slow=FACTOR]")
        path, rest = text[:at], text[at + 1 :]
        offset_text, _, options = rest.partition(":")
        try:
            offset_s = float(offset_text)
        except ValueError:
            raise ConfigError(f"--attack {text!r}: offset {offset_text!r} is not a number of seconds") from None
        if offset_s < 0:
            raise ConfigError(f"--attack {text!r}: offset must be >= 0 s")
        values: dict[str, str] = {}
        for item in filter(None, options.split(",")):
            key, eq, value = item.partition("=")
            if not eq or key not in _OPTIONS or not value:
                raise ConfigError(f"--attack {text!r}: unknown option {item!r} (rewrite-src=IP, rewrite-dst=IP, event=NAME, slow=FACTOR)")
            values[key] = value
        for key in ("rewrite-src", "rewrite-dst"):
            if key in values:
                try:
                    ipaddress.ip_address(values[key])
                except ValueError:
                    raise ConfigError(f"--attack {text!r}: {key}={values[key]!r} is not an IP address") from None
        slow = 1.0
        if "slow" in values:
            try:
                slow = float(values["slow"])
            except ValueError:
                slow = float("nan")
            if not 1.0 <= slow <= 1e6:  # also NaN
                raise ConfigError(f"--attack {text!r}: slow={values['slow']!r} is not a factor between 1 and 1e6")
        return cls(Path(path), offset_s, values.get("rewrite-src"), values.get("rewrite-dst"), values.get("event"), slow)


def load_attack_list(path: str | Path) -> list[AttackSpec]:
    """Attack specs from a YAML file: `attacks:` a list of mappings {file, offset_s,
    rewrite_src, rewrite_dst, event, slow} or of `FILE@OFFSET[:opts]` strings. Relative files are
    relative to the working directory, as every path in netad's config is."""
    from detector.config import read_yaml

    data, _ = read_yaml(path)
    items = data.get("attacks")
    if not isinstance(items, list) or not items or set(data) != {"attacks"}:
        raise ConfigError(f"{path}: expected one key, `attacks:`, holding a non-empty list")
    return parse_attack_items(path, items)


def parse_attack_items(path: str | Path, items: list) -> list[AttackSpec]:
    """The entries of an `attacks:` list (also used by scenario lists, `eval.scenarios`)."""
    if not isinstance(items, list):
        raise ConfigError(f"{path}: attacks: expected a list")
    specs = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            specs.append(AttackSpec.parse(item))
            continue
        keys = [k.replace("-", "_") for k in _OPTIONS]
        if not isinstance(item, dict) or not {"file", "offset_s"} <= set(item) or set(item) - {"file", "offset_s", *keys}:
            raise ConfigError(f"{path}: attacks[{i}]: expected file, offset_s and optionally {', '.join(keys)}")
        options = ",".join(f"{k.replace('_', '-')}={item[k]}" for k in keys if item.get(k))
        try:
            specs.append(AttackSpec.parse(f"{item['file']}@{item['offset_s']}" + (f":{options}" if options else "")))
        except ConfigError as exc:
            raise ConfigError(f"{path}: attacks[{i}]: {exc}") from None
    return specs


@dataclass
class InsertedAttack:
    """What one attack became in the output: its truth row and a few counts."""

    event: str
    path: Path
    start_ns: int  # first inserted packet
    end_ns: int  # last inserted packet + one timestamp unit (the interval is [start, end))
    packets: int  # frames inserted
    dropped: int  # frames that the benign link type cannot carry
    attacker: str  # dominant attacker as written (after rewriting), or "spoofed"
    attacker_sources: int  # distinct attacker addresses before rewriting
    target: str  # victim as written (after rewriting)
    rewritten_packets: int
    reencapsulated: bool
    slow: float = 1.0  # the factor its timeline was stretched by


@dataclass
class SpliceResult:
    out: Path
    truth: Path
    benign_packets: int
    packets: int
    start_ns: int  # first packet of the benign capture (offsets count from here)
    linktype: int
    attacks: list[InsertedAttack] = field(default_factory=list)
    behaviours: list[InsertedBehaviour] = field(default_factory=list)  # from a scenario list
    # what the output holds that its maker likely did not mean (splice_warnings), one line each
    warnings: list[str] = field(default_factory=list)


def event_name(path: Path) -> str:
    """The default event name of an attack file: ATTACK- and its name's words, without
    dates and the 'pkt' prefix (pkt.TCP.synflood.spoofed.pcap -> ATTACK-TCP-SYNFLOOD-SPOOFED)."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", path.stem) if w and w.lower() != "pkt" and not (w.isdigit() and len(w) >= 6)]
    return "ATTACK-" + "-".join(w.upper() for w in words) if words else "ATTACK"


# --------------------------------------------------------------------------------------
# Link layer: where each frame's IP header starts, and how to wrap an IP packet again.
# --------------------------------------------------------------------------------------


def _be16(data: np.ndarray, at: np.ndarray) -> np.ndarray:
    return (data[at].astype(np.int64) << 8) | data[at + 1].astype(np.int64)


def _network_layer(rec: RawRecords, linktype: int) -> tuple[np.ndarray, np.ndarray]:
    """(offset of the network header in rec.data, EtherType of what is there) per frame;
    offset -1 where the link-layer header is cut short. EtherType 0x0800 / 0x86DD is IP."""
    n = len(rec)
    start, end = rec.offsets, rec.offsets + rec.caplens
    l3 = np.full(n, -1, dtype=np.int64)
    ethertype = np.zeros(n, dtype=np.int64)
    data = rec.data
    if linktype in (_ETHERNET, _SLL, _SLL2):
        type_at, head = {_ETHERNET: (12, 14), _SLL: (14, 16), _SLL2: (0, 20)}[linktype]
        ok = end - start >= head
        idx = np.flatnonzero(ok)
        ethertype[idx] = _be16(data, start[idx] + type_at)
        l3[idx] = start[idx] + head
        for _ in range(_MAX_VLAN_TAGS):  # 802.1Q / QinQ tags: 4 bytes each, inner EtherType last
            tagged = np.flatnonzero((l3 >= 0) & np.isin(ethertype, _VLAN_ETHERTYPES))
            short = tagged[l3[tagged] + 4 > end[tagged]]
            l3[short] = -1
            tagged = tagged[l3[tagged] + 4 <= end[tagged]]
            if tagged.size == 0:
                break
            ethertype[tagged] = _be16(data, l3[tagged] + 2)
            l3[tagged] += 4
    elif linktype in _RAW_TYPES + (_IPV4, _IPV6):
        ok = end > start
        l3[ok] = start[ok]
        version = np.zeros(n, dtype=np.int64)
        version[ok] = data[start[ok]] >> 4
        ethertype = np.where(version == 4, 0x0800, np.where(version == 6, 0x86DD, 0))
    elif linktype in (_NULL, _LOOP):
        ok = np.flatnonzero(end - start >= 4)
        b = data[start[ok, None] + np.arange(4)].astype(np.int64)
        family = np.minimum(
            (b[:, 0] << 24) | (b[:, 1] << 16) | (b[:, 2] << 8) | b[:, 3],
            (b[:, 3] << 24) | (b[:, 2] << 16) | (b[:, 1] << 8) | b[:, 0],
        )
        l3[ok] = start[ok] + 4
        ethertype[ok] = np.where(family == 2, 0x0800, np.where(np.isin(family, (10, 24, 28, 30)), 0x86DD, 0))
    else:
        raise CaptureError(f"link type {linktype} cannot be spliced")
    return l3, ethertype


def _link_header(linktype: int, ethertype: int) -> bytes | None:
    """The link-layer header that carries a network packet of `ethertype` on `linktype`, or
    None when that link type cannot carry it."""
    is_v4, is_v6 = ethertype == 0x0800, ethertype == 0x86DD
    if ethertype == 0:  # a raw frame that is neither IPv4 nor IPv6: nothing to say it is
        return None
    if linktype == _ETHERNET:
        return _DUMMY_DST_MAC + _DUMMY_SRC_MAC + ethertype.to_bytes(2, "big")
    if linktype == _SLL:  # packet type 0 (to us), ARPHRD_ETHER, 6-byte address
        return (0).to_bytes(2, "big") + (1).to_bytes(2, "big") + (6).to_bytes(2, "big") + _DUMMY_SRC_MAC + b"\0\0" + ethertype.to_bytes(2, "big")
    if linktype == _SLL2:
        return ethertype.to_bytes(2, "big") + b"\0\0" + (1).to_bytes(4, "big") + (1).to_bytes(2, "big") + b"\0\x06" + _DUMMY_SRC_MAC + b"\0\0"
    if linktype in _RAW_TYPES:
        return b"" if is_v4 or is_v6 else None
    if linktype == _IPV4:
        return b"" if is_v4 else None
    if linktype == _IPV6:
        return b"" if is_v6 else None
    if linktype in (_NULL, _LOOP):
        if not (is_v4 or is_v6):
            return None
        family = 2 if is_v4 else 24  # AF_INET6 as the BSDs write it, which every reader accepts
        return family.to_bytes(4, "little" if linktype == _NULL else "big")
    raise CaptureError(f"link type {linktype} cannot be written by splice")


def _gather(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate data[starts[k] : starts[k] + lengths[k]]: (bytes, offset of each piece)."""
    before = np.cumsum(lengths) - lengths
    total = int(lengths.sum())
    src = np.arange(total, dtype=np.int64) + np.repeat(starts - before, lengths)
    return data[src], before


def _reencapsulate(
    rec: RawRecords, linktype: int, l3: np.ndarray, ethertype: np.ndarray
) -> tuple[RawRecords, np.ndarray, np.ndarray, int]:
    """The frames of `rec` carried on `linktype`: (new records, their network-header offsets,
    their EtherTypes, frames dropped because the link type cannot carry them)."""
    headers = {int(t): _link_header(linktype, int(t)) for t in np.unique(ethertype[l3 >= 0]).tolist()}
    carried = (l3 >= 0) & np.isin(ethertype, [t for t, h in headers.items() if h is not None])
    keep = np.flatnonzero(carried)
    head = np.zeros(keep.size, dtype=np.int64)
    for t, h in headers.items():
        if h is not None:
            head[ethertype[keep] == t] = len(h)
    payload = rec.offsets[keep] + rec.caplens[keep] - l3[keep]
    payload_bytes, _ = _gather(rec.data, l3[keep], payload)
    caplens = head + payload
    offsets = np.cumsum(caplens) - caplens
    out = np.zeros(int(caplens.sum()), dtype=np.uint8)
    for t, h in headers.items():
        rows = np.flatnonzero(ethertype[keep] == t)
        if h and rows.size:
            out[(offsets[rows, None] + np.arange(len(h))).reshape(-1)] = np.tile(np.frombuffer(h, np.uint8), rows.size)
    dst = np.arange(payload_bytes.size, dtype=np.int64) + np.repeat(offsets + head - (np.cumsum(payload) - payload), payload)
    out[dst] = payload_bytes
    new = RawRecords(
        data=out,
        offsets=offsets,
        caplens=caplens,
        origlens=rec.origlens[keep] - (l3[keep] - rec.offsets[keep]) + head,
        ts_ns=rec.ts_ns[keep],
        linktype=linktype,
    )
    return new, offsets + head, ethertype[keep], int(len(rec) - keep.size)


# --------------------------------------------------------------------------------------
# Roles and address rewriting
# --------------------------------------------------------------------------------------


@dataclass
class _Roles:
    victim: tuple[int, int]
    attackers: list[tuple[int, int]]  # most frequent first
    dominant_share: float

    @property
    def spoofed(self) -> bool:
        return len(self.attackers) > 1 and self.dominant_share < _SPOOFED_SHARE


def _roles(rec: RawRecords, path: Path) -> _Roles:
    """Victim and attackers of an attack capture, from its opening packets."""
    b = rec.parse()
    if len(b) == 0:
        raise CaptureError(f"{path}: no IP packets to splice")
    opening = (b.proto == PROTO_TCP) & ((b.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)
    if not opening.any():
        opening = np.ones(len(b), dtype=bool)
    dst = Counter(zip(b.dst_hi[opening].tolist(), b.dst_lo[opening].tolist(), strict=True))
    victim = dst.most_common(1)[0][0]
    to_victim = opening & (b.dst_hi == np.uint64(victim[0])) & (b.dst_lo == np.uint64(victim[1]))
    src = Counter(zip(b.src_hi[to_victim].tolist(), b.src_lo[to_victim].tolist(), strict=True))
    src.pop(victim, None)
    if not src:
        raise CaptureError(f"{path}: cannot tell the attacker: every opening packet to {pair_to_addr(*victim)} comes from itself")
    ranked = src.most_common()
    return _Roles(victim, [a for a, _ in ranked], ranked[0][1] / sum(n for _, n in ranked))


def _ones_complement_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    s = a + b
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


def _rewrite_ipv4(rec: RawRecords, l3: np.ndarray, ethertype: np.ndarray, mapping: dict[int, int]) -> int:
    """Replace IPv4 addresses (old -> new, as 32-bit ints) in source and destination fields of
    rec.data in place, fixing header and TCP/UDP checksums; returns the packets changed."""
    if not mapping:
        return 0
    data = rec.data
    end = rec.offsets + rec.caplens
    rows = np.flatnonzero((l3 >= 0) & (ethertype == 0x0800) & (l3 + 20 <= end))
    rows = rows[(data[l3[rows]] >> 4) == 4]
    ihl = (data[l3[rows]] & 0x0F).astype(np.int64) * 4
    whole = (ihl >= 20) & (l3[rows] + ihl <= end[rows])  # the whole header is captured
    rows, ihl = rows[whole], ihl[whole]
    base = l3[rows]
    old_keys = np.array(sorted(mapping), dtype=np.int64)
    new_vals = np.array([mapping[k] for k in sorted(mapping)], dtype=np.int64)
    word_old = np.zeros(rows.size, dtype=np.int64)  # one's-complement sums of the address words
    word_new = np.zeros(rows.size, dtype=np.int64)
    changed = np.zeros(rows.size, dtype=bool)
    for field_at in (12, 16):
        at = base[:, None] + field_at + np.arange(4)
        addr = (data[at].astype(np.int64) << np.array([24, 16, 8, 0])).sum(axis=1)
        pos = np.minimum(np.searchsorted(old_keys, addr), old_keys.size - 1)
        hit = old_keys[pos] == addr
        new = np.where(hit, new_vals[pos], addr)
        data[at[hit]] = ((new[hit, None] >> np.array([24, 16, 8, 0])) & 0xFF).astype(np.uint8)
        word_old = _ones_complement_add(word_old, _ones_complement_add(addr >> 16, addr & 0xFFFF))
        word_new = _ones_complement_add(word_new, _ones_complement_add(new >> 16, new & 0xFFFF))
        changed |= hit
    rows, base, ihl, word_old, word_new = rows[changed], base[changed], ihl[changed], word_old[changed], word_new[changed]
    # IPv4 header checksum: recomputed over the (rewritten) header
    data[base + 10] = 0
    data[base + 11] = 0
    words = np.arange(0, 60, 2)
    at = base[:, None] + words
    inside = words[None, :] < ihl[:, None]
    at = np.where(inside, at, base[:, None])
    vals = np.where(inside, _be16(data, at.reshape(-1)).reshape(at.shape), 0).sum(axis=1)
    while (vals >> 16).any():
        vals = (vals & 0xFFFF) + (vals >> 16)
    csum = (~vals) & 0xFFFF
    data[base + 10] = (csum >> 8).astype(np.uint8)
    data[base + 11] = (csum & 0xFF).astype(np.uint8)
    # TCP/UDP checksums: incremental update for the pseudo-header (RFC 1624: HC' = ~(~HC + ~m + m'))
    proto = data[base + 9]
    frag_offset = _be16(data, base + 6) & 0x1FFF
    l4 = base + ihl
    csum_at = np.where(proto == PROTO_TCP, l4 + 16, l4 + 6)
    ok = ((proto == PROTO_TCP) | (proto == PROTO_UDP)) & (frag_offset == 0) & (csum_at + 2 <= end[rows])
    csum_at, word_old, word_new, is_udp = csum_at[ok], word_old[ok], word_new[ok], proto[ok] == PROTO_UDP
    old_csum = _be16(data, csum_at)
    keep_zero = is_udp & (old_csum == 0)  # UDP without a checksum stays without one
    sum_ = _ones_complement_add(_ones_complement_add((~old_csum) & 0xFFFF, (~word_old) & 0xFFFF), word_new)
    new_csum = (~sum_) & 0xFFFF
    new_csum = np.where(is_udp & (new_csum == 0), 0xFFFF, new_csum)
    new_csum = np.where(keep_zero, 0, new_csum)
    data[csum_at] = (new_csum >> 8).astype(np.uint8)
    data[csum_at + 1] = (new_csum & 0xFF).astype(np.uint8)
    return int(rows.size)


def _ipv4_int(pair: tuple[int, int] | str) -> int | None:
    text = pair if isinstance(pair, str) else pair_to_addr(*pair)
    ip = ipaddress.ip_address(text)
    return int(ip) if ip.version == 4 else None


# --------------------------------------------------------------------------------------
# Splice
# --------------------------------------------------------------------------------------


def _prepare(spec: AttackSpec, linktype: int, benign_t0_ns: int, nanosecond: bool) -> tuple[RawRecords, InsertedAttack]:
    """One attack capture, shifted, rewritten and carried on `linktype`."""
    rec = read_records(spec.path)
    if rec.damage:
        raise CaptureError(f"{spec.path}: {rec.damage}")
    if rec.linktypes is not None:
        raise CaptureError(f"{spec.path}: interfaces of different link types; split the capture first")
    if len(rec) == 0:
        raise CaptureError(f"{spec.path}: no packets")
    roles = _roles(rec, spec.path)
    rec.data = rec.data.copy()  # rewritten in place
    l3, ethertype = _network_layer(rec, rec.linktype)
    reencapsulated = rec.linktype != linktype
    dropped = 0
    if reencapsulated:
        rec, l3, ethertype, dropped = _reencapsulate(rec, linktype, l3, ethertype)
    mapping: dict[int, int] = {}
    victim_out, attacker_out = pair_to_addr(*roles.victim), pair_to_addr(*roles.attackers[0])
    if spec.rewrite_src or spec.rewrite_dst:
        if _ipv4_int(roles.victim) is None or any(_ipv4_int(a) is None for a in roles.attackers[:1]):
            raise ConfigError(f"{spec.path}: address rewriting supports IPv4 attacks only")
        for text in (spec.rewrite_src, spec.rewrite_dst):
            if text and ipaddress.ip_address(text).version != 4:
                raise ConfigError(f"{spec.path}: cannot rewrite IPv4 addresses to {text}")
    if spec.rewrite_src:
        for a in roles.attackers:
            v4 = _ipv4_int(a)
            if v4 is not None:
                mapping[v4] = int(ipaddress.ip_address(spec.rewrite_src))
        attacker_out = spec.rewrite_src
    if spec.rewrite_dst:
        mapping[_ipv4_int(roles.victim)] = int(ipaddress.ip_address(spec.rewrite_dst))  # type: ignore[index]
        victim_out = spec.rewrite_dst
    rewritten = _rewrite_ipv4(rec, l3, ethertype, mapping)
    first = int(rec.ts_ns.min())
    ts = benign_t0_ns + int(round(spec.offset_s * 1e9)) + np.round((rec.ts_ns - first) * spec.slow).astype(np.int64)
    if not nanosecond:
        ts = (ts + 500) // 1000 * 1000  # what a microsecond pcap will hold: the truth is exact
    rec.ts_ns = ts
    spoofed = roles.spoofed and not spec.rewrite_src
    info = InsertedAttack(
        event=spec.event or event_name(spec.path),
        path=spec.path,
        start_ns=int(ts.min()),
        end_ns=int(ts.max()) + (1 if nanosecond else 1000),  # [start, end) holds the last packet
        packets=len(rec),
        dropped=dropped,
        attacker="spoofed" if spoofed else attacker_out,
        attacker_sources=len(roles.attackers),
        target=victim_out,
        rewritten_packets=rewritten,
        reencapsulated=reencapsulated,
        slow=spec.slow,
    )
    return rec, info


def _is_nanosecond(path: Path) -> bool:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    return magic not in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4")  # pcapng and ns pcap keep ns


def splice(
    benign: str | Path,
    attacks: list[AttackSpec],
    out: str | Path,
    truth: str | Path,
    benign_truth: str | Path | None = None,
    scenarios: ScenarioList | None = None,
) -> SpliceResult:
    """Write `out` (classic pcap, the benign capture's link type) with every attack inserted,
    and `truth` (ground-truth CSV: the benign truth's rows, if given, then one per attack).
    `scenarios` (eval.scenarios) adds its attacks, then its generated behaviours, each with
    its own truth row after the attacks'."""
    benign, out, truth = Path(benign), Path(out), Path(truth)
    base = read_records(benign)
    if base.damage:
        raise CaptureError(f"{benign}: {base.damage}")
    if base.linktypes is not None:
        raise CaptureError(f"{benign}: interfaces of different link types; split the capture first")
    if len(base) == 0:
        raise CaptureError(f"{benign}: no packets")
    nanosecond = _is_nanosecond(benign)
    t0 = int(base.ts_ns.min())
    parts: list[RawRecords] = [base]
    inserted: list[InsertedAttack] = []
    for spec in [*attacks, *(scenarios.attacks if scenarios else [])]:
        rec, info = _prepare(spec, base.linktype, t0, nanosecond)
        parts.append(rec)
        inserted.append(info)
    behaviours: list[InsertedBehaviour] = []
    if scenarios is not None:
        from detector.eval.scenarios import build_all  # it builds on this module

        for rec, behaviour in build_all(scenarios, base, t0, nanosecond):
            parts.append(rec)
            behaviours.append(behaviour)
    data_base = np.cumsum([0] + [p.data.shape[0] for p in parts[:-1]])
    data = np.concatenate([p.data for p in parts])
    offsets = np.concatenate([p.offsets + b for p, b in zip(parts, data_base.tolist(), strict=True)])
    caplens = np.concatenate([p.caplens for p in parts])
    origlens = np.concatenate([p.origlens for p in parts])
    ts = np.concatenate([p.ts_ns for p in parts])
    order = np.argsort(ts, kind="stable")  # benign first on equal timestamps
    out.parent.mkdir(parents=True, exist_ok=True)
    write_pcap(out, ts[order], data, offsets[order], caplens[order], wire_lengths=np.maximum(origlens, caplens)[order],
               linktype=base.linktype, nanosecond=nanosecond)
    if benign_truth is not None:
        load_truth(benign_truth)  # refuse a malformed file before copying it
    write_truth(truth, inserted, t0, benign_truth, behaviours)
    return SpliceResult(out, truth, len(base), int(ts.shape[0]), t0, base.linktype, inserted, behaviours,
                        splice_warnings(benign, base, inserted, behaviours))


def splice_warnings(benign: Path, base: RawRecords, attacks: list[InsertedAttack], behaviours: list[InsertedBehaviour]) -> list[str]:
    """An attack or behaviour that starts after the benign capture's last packet has no
    benign traffic around it (an offset in minutes given in seconds, or the reverse); an
    attack whose target address the benign capture never holds hits no host of it (its
    victim left as the attack capture had it: rewrite-dst=IP puts it on one)."""
    out: list[str] = []
    t0, last = int(base.ts_ns.min()), int(base.ts_ns.max())
    for event, start_ns in [(a.event, a.start_ns) for a in attacks] + [(b.event, b.start_ns) for b in behaviours]:
        if start_ns > last:
            out.append(f"{event} starts at +{(start_ns - t0) / 1e9:,.0f} s, {(start_ns - last) / 1e9:,.0f} s after the "
                       f"benign capture's last packet (+{(last - t0) / 1e9:,.0f} s): no benign traffic around it")
    seen: np.ndarray | None = None
    for a in attacks:
        try:
            target = ipaddress.ip_address(a.target)
        except ValueError:
            continue
        if target.version != 4:
            continue
        if seen is None:
            seen = _ipv4_addresses(base)
        if not np.isin(int(target), seen):
            out.append(f"{a.event}: its target {a.target} is no address of {benign}, so the attack hits no host of it: "
                       "give rewrite-dst=IP (one of the capture's hosts)")
    return out


def _ipv4_addresses(rec: RawRecords) -> np.ndarray:
    """Every IPv4 address (source or destination) in `rec`'s whole IPv4 headers, unique."""
    l3, ethertype = _network_layer(rec, rec.linktype)
    at = l3[(l3 >= 0) & (ethertype == 0x0800) & (l3 + 20 <= rec.offsets + rec.caplens)]
    words = [_be16(rec.data, at + k) for k in (12, 14, 16, 18)]
    return np.unique(np.concatenate([(words[0] << 16) | words[1], (words[2] << 16) | words[3]]))


def description(a: InsertedAttack) -> str:
    return (f"attacker={a.attacker} target={a.target} sources={a.attacker_sources} packets={a.packets} "
            f"file={a.path.name}" + (f" slow={a.slow:g}" if a.slow != 1 else ""))


def write_truth(path: Path, attacks: list[InsertedAttack], t0_ns: int, benign_truth: str | Path | None = None,
                behaviours: list[InsertedBehaviour] | None = None) -> None:
    """The ground-truth CSV: the benign truth's rows copied verbatim (when given), then one
    row per inserted attack, then one per inserted behaviour, with exact times (offsets from
    the benign capture's first packet, and epoch seconds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with naming(path), open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        if benign_truth is not None:
            with open(benign_truth, newline="", encoding="utf-8") as src:
                reader = csv.DictReader(src)
                for row in reader:
                    w.writerow([row[c] for c in COLUMNS])
        for a in [*attacks, *(behaviours or [])]:
            w.writerow([
                a.event, 1,
                seconds_text(a.start_ns - t0_ns), seconds_text(a.end_ns - t0_ns),
                seconds_text(a.start_ns), seconds_text(a.end_ns),
                description(a) if isinstance(a, InsertedAttack) else a.description,
            ])


def seconds_text(ns: int) -> str:
    """Exact decimal seconds of a non-negative ns count: 6 decimals when it is whole
    microseconds (what a microsecond pcap holds), 9 otherwise. No float rounding."""
    seconds, rem = divmod(int(ns), 1_000_000_000)
    return f"{seconds}.{rem // 1000:06d}" if rem % 1000 == 0 else f"{seconds}.{rem:09d}"
