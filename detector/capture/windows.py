"""Window aggregator: packets + flow annotations -> per-entity feature vectors per time bin.

The stage after the flow table. Entities are `global` (the whole link) and every host inside
the configured home networks (Suricata's HOME_NET). Time is event time: a window
[start, start + bins * bin_s) closes when the watermark (the newest packet timestamp) passes
its end plus `lateness_s`, or when `advance(now_ns)` is called by a live source on a quiet
link. Every window from the first packet on is emitted, empty ones too, so that an entity's
sequence of windows has no holes in time; a packet for an already closed window is counted
in `late_packets` and dropped.

Per batch the work is vectorised: each packet contributes to up to three entity rows
(global, its source host, its destination host); sums are bincounts, distinct counts are
hashed (entity, bin, kind, value) keys deduplicated with np.unique, and evidence (top peers,
ports, flows) is reduced the same way and only turned into strings when somebody asks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from detector.capture.flows import FlowAnnotations, community_id_of_pairs
from detector.contracts import (
    ENTITY_GLOBAL,
    FRAG_LATER,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    FeatureSchema,
    PacketBatch,
    WindowBatch,
    WindowEvidence,
    addr_to_pair,
    pair_to_addr,
)

# The feature schema: what one time bin of one entity looks like. "out" is traffic the
# entity sends, "in" what it receives; for `global`, "in" is traffic entering the home
# networks from outside and "out" is everything else. Changing this list means a new
# version: bundles trained on another schema are refused.
_FEATURES: tuple[tuple[str, str], ...] = (
    ("pkts_out", "packets"),
    ("pkts_in", "packets"),
    ("bytes_out", "bytes"),
    ("bytes_in", "bytes"),
    ("flows_out", "flows"),  # new flows the entity initiated
    ("flows_in", "flows"),  # new flows initiated towards the entity
    ("peers_out", "hosts"),  # distinct destinations the entity sent to
    ("peers_in", "hosts"),  # distinct sources the entity received from
    ("ports_out", "ports"),  # distinct destination ports the entity sent to (TCP/UDP)
    ("ports_in", "ports"),  # distinct local ports that received traffic (TCP/UDP)
    ("syn_out", "packets"),  # TCP SYN without ACK sent
    ("syn_in", "packets"),  # TCP SYN without ACK received
    ("rst_out", "packets"),
    ("rst_in", "packets"),
    ("icmp_err", "packets"),  # ICMP/ICMPv6 unreachable, time exceeded, parameter problem
    ("mean_pkt_bytes", "bytes"),  # mean IP length over both directions
)
PACKET_SCHEMA = FeatureSchema(
    name="packet",
    version=1,
    features=tuple(n for n, _ in _FEATURES),
    units=tuple(u for _, u in _FEATURES),
)
_F = {name: i for i, name in enumerate(PACKET_SCHEMA.features)}
_SUMS = ("pkts_out", "pkts_in", "bytes_out", "bytes_in", "flows_out", "flows_in", "syn_out", "syn_in", "rst_out", "rst_in", "icmp_err")
_DISTINCT = ("peers_out", "peers_in", "ports_out", "ports_in")

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised: a 64-bit hash good enough for distinct counting."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


class HomeNet:
    """Membership in the configured home networks, vectorised over (hi, lo) address columns."""

    def __init__(self, networks: list[str]) -> None:
        self.networks = list(networks)
        self._nets: list[tuple[np.uint64, np.uint64, np.uint64, np.uint64]] = []
        for text in networks:
            net = ipaddress.ip_network(text, strict=False)
            plen = net.prefixlen + (96 if net.version == 4 else 0)
            hi, lo = addr_to_pair(str(net.network_address))
            mask = ((1 << 128) - 1) ^ ((1 << (128 - plen)) - 1)
            mhi, mlo = mask >> 64, mask & 0xFFFFFFFFFFFFFFFF
            self._nets.append((np.uint64(hi & mhi), np.uint64(lo & mlo), np.uint64(mhi), np.uint64(mlo)))

    def contains(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        inside = np.zeros(hi.shape[0], dtype=bool)
        for nhi, nlo, mhi, mlo in self._nets:
            inside |= ((hi & mhi) == nhi) & ((lo & mlo) == nlo)
        return inside


@dataclass
class _WindowAcc:
    """Partial aggregates of one open window."""

    sums: np.ndarray  # float64 (slots, bins, len(_SUMS))
    distinct_keys: list[np.ndarray] = field(default_factory=list)  # uint64 hashed keys
    distinct_groups: list[np.ndarray] = field(default_factory=list)  # int64 (slot*bins+bin)*4+kind
    peers: list[tuple[np.ndarray, ...]] = field(default_factory=list)  # slot, hi, lo, pkts, bytes
    ports: list[tuple[np.ndarray, ...]] = field(default_factory=list)  # slot, proto, port, pkts
    flows: list[tuple[np.ndarray, ...]] = field(default_factory=list)  # slot, flow_id, 5-tuple, pkts


class _EntityWindows:
    """What both aggregators share: entity slots, open windows, closing and expiry.
    Subclasses set SCHEMA, SUMS and DISTINCT (the summed and distinct-counted features)
    and fill `_open` windows from their own input (packets or flow records)."""

    SCHEMA: FeatureSchema
    SUMS: tuple[str, ...]
    DISTINCT: tuple[str, ...]

    @property
    def entities(self) -> int:
        return 1 + len(self._slot_of)

    def _new_slot(self, addr: tuple[int, int], ts_ns: int) -> int:
        if len(self._slot_of) >= self.max_entities:
            return -1
        if self._free:
            slot = self._free.pop()
            self._slot_addr[slot] = addr
            self._slot_first_ns[slot] = ts_ns
            self._slot_last_ns[slot] = ts_ns
        else:
            slot = len(self._slot_addr)
            self._slot_addr.append(addr)
            self._slot_first_ns.append(ts_ns)
            grown = np.zeros(max(16, 2 * self._slot_last_ns.shape[0]), dtype=np.int64)
            if slot >= self._slot_last_ns.shape[0]:
                grown[: self._slot_last_ns.shape[0]] = self._slot_last_ns
                self._slot_last_ns = grown
            self._slot_last_ns[slot] = ts_ns
        self._slot_of[addr] = slot
        return slot

    def advance(self, now_ns: int) -> list[WindowBatch]:
        """Close windows by the clock (a quiet link or exporter): time `now_ns` has passed."""
        if self._next_close is None:
            return []
        self.watermark_ns = now_ns if self.watermark_ns is None else max(self.watermark_ns, now_ns)
        return self._close_until(self.watermark_ns - self._lateness_ns)

    def flush(self) -> list[WindowBatch]:
        """Close every open window (the end of a replay)."""
        if not self._open:
            return []
        last = max(self._open)
        return self._close_until((last + 1) * self._window_ns)

    def _acc(self, w: int) -> _WindowAcc:
        n_slots = len(self._slot_addr)
        acc = self._open.get(w)
        if acc is None:
            acc = _WindowAcc(sums=np.zeros((max(n_slots, 16), self.bins, len(self.SUMS))))
            self._open[w] = acc
        elif acc.sums.shape[0] < n_slots:
            grown = np.zeros((max(n_slots, 2 * acc.sums.shape[0]), self.bins, len(self.SUMS)))
            grown[: acc.sums.shape[0]] = acc.sums
            acc.sums = grown
        return acc

    def _close_until(self, limit_ns: int | None) -> list[WindowBatch]:
        out: list[WindowBatch] = []
        if limit_ns is None or self._next_close is None:
            return out
        while (self._next_close + 1) * self._window_ns <= limit_ns:
            out.append(self._close(self._next_close))
            self._next_close += 1
        return out

    def _close(self, w: int) -> WindowBatch:
        start_ns = w * self._window_ns
        end_ns = start_ns + self._window_ns
        self._expire_entities(end_ns)
        acc = self._open.pop(w, None)
        alive = [0] + sorted(
            s for s, a in enumerate(self._slot_addr) if s and a is not None and self._slot_first_ns[s] < end_ns
        )
        alive_arr = np.array(alive, dtype=np.int64)
        fidx = {name: i for i, name in enumerate(self.SCHEMA.features)}
        feats = np.zeros((len(alive), self.bins, len(self.SCHEMA.features)), dtype=np.float32)
        if acc is not None:
            sums = acc.sums[np.minimum(alive_arr, acc.sums.shape[0] - 1)]
            sums[alive_arr >= acc.sums.shape[0]] = 0
            for k, name in enumerate(self.SUMS):
                feats[:, :, fidx[name]] = sums[:, :, k]
            if acc.distinct_keys:
                keys = np.concatenate(acc.distinct_keys)
                groups = np.concatenate(acc.distinct_groups)
                _, first = np.unique(keys, return_index=True)
                counts = np.bincount(groups[first], minlength=len(self._slot_addr) * self.bins * 4)
                counts = counts[: len(self._slot_addr) * self.bins * 4].reshape(-1, self.bins, 4)
                for kind, name in enumerate(self.DISTINCT):
                    feats[:, :, fidx[name]] = counts[alive_arr, :, kind]
            pk = feats[:, :, fidx["pkts_out"]] + feats[:, :, fidx["pkts_in"]]
            by = feats[:, :, fidx["bytes_out"]] + feats[:, :, fidx["bytes_in"]]
            feats[:, :, fidx["mean_pkt_bytes"]] = np.divide(by, pk, out=np.zeros_like(by), where=pk > 0)
        names = [ENTITY_GLOBAL] + [pair_to_addr(*self._slot_addr[s]) for s in alive[1:]]  # type: ignore[misc]
        classes = ["global"] + ["host"] * (len(alive) - 1)
        self.windows_closed += 1
        evidence = _LazyEvidence(acc, dict(zip(names, alive)), self.evidence_top_k) if acc is not None else {}
        return WindowBatch(start_ns, end_ns, names, classes, feats, self.SCHEMA, evidence)  # type: ignore[arg-type]

    def _expire_entities(self, now_ns: int) -> None:
        n = len(self._slot_addr)
        idle = np.flatnonzero(self._slot_last_ns[:n] < now_ns - self._idle_ns)
        for s in idle.tolist():
            addr = self._slot_addr[s]
            if s == 0 or addr is None:
                continue
            # slots with traffic in a still-open window stay until that window closes
            if any(acc.sums.shape[0] > s and acc.sums[s].any() for acc in self._open.values()):
                continue
            del self._slot_of[addr]
            self._slot_addr[s] = None
            self._free.append(s)
            self.entities_expired += 1


class WindowAggregator(_EntityWindows):
    """Turns packets into closed WindowBatches: `push(batch, flows)` returns those closed."""

    SCHEMA = PACKET_SCHEMA
    SUMS = _SUMS
    DISTINCT = _DISTINCT

    def __init__(
        self,
        home_net: list[str],
        bin_s: float = 10.0,
        bins: int = 6,
        lateness_s: float = 2.0,
        max_entities: int = 50_000,
        entity_idle_s: float = 3600.0,
        evidence_top_k: int = 5,
    ) -> None:
        self.home_net = list(home_net)
        self.bin_s = bin_s
        self.bins = bins
        self.lateness_s = lateness_s
        self.max_entities = max_entities
        self.entity_idle_s = max(entity_idle_s, bin_s * bins)
        self.evidence_top_k = evidence_top_k
        self.schema = PACKET_SCHEMA
        self._home = HomeNet(home_net)
        self._bin_ns = int(round(bin_s * 1e9))
        self._window_ns = self._bin_ns * bins
        self._lateness_ns = int(round(lateness_s * 1e9))
        self._idle_ns = int(round(self.entity_idle_s * 1e9))
        # entity slots: 0 is global; hosts get the others; freed slots are reused
        self._slot_of: dict[tuple[int, int], int] = {}
        self._slot_addr: list[tuple[int, int] | None] = [None]
        self._slot_first_ns: list[int] = [0]
        self._slot_last_ns = np.zeros(1, dtype=np.int64)
        self._free: list[int] = []
        self._open: dict[int, _WindowAcc] = {}
        self._next_close: int | None = None  # index of the oldest window not yet emitted
        self.watermark_ns: int | None = None
        self.late_packets = 0
        self.entity_overflow = 0  # packets of hosts that found no free entity slot
        self.entities_expired = 0
        self.windows_closed = 0

    # ---------------------------------------------------------------- entity slots
    def _slots_for(self, hi: np.ndarray, lo: np.ndarray, ts_ns: np.ndarray) -> np.ndarray:
        """Entity slot of each (home) address; -1 where the entity table is full."""
        if hi.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        key = _mix(hi ^ _mix(lo))
        uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        # earliest packet of each address in this batch: a host seen first as a receiver
        # and later as a sender must get windows from its first packet, whichever it was
        earliest = np.full(uniq.shape[0], np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(earliest, inverse, ts_ns)
        slots = np.empty(uniq.shape[0], dtype=np.int64)
        for j, i in enumerate(first.tolist()):
            addr = (int(hi[i]), int(lo[i]))
            slot = self._slot_of.get(addr)
            t_first = int(earliest[j])
            if slot is None:
                slot = self._new_slot(addr, t_first)
            elif t_first < self._slot_first_ns[slot]:
                self._slot_first_ns[slot] = t_first
            slots[j] = slot
        out = slots[inverse]
        valid = out >= 0
        if valid.any():
            np.maximum.at(self._slot_last_ns, out[valid], ts_ns[valid])
        return out

    # ---------------------------------------------------------------- ingest
    def push(self, batch: PacketBatch, flows: FlowAnnotations) -> list[WindowBatch]:
        n = len(batch)
        if n == 0:
            return []
        ts = batch.ts_ns
        abs_bin = ts // self._bin_ns
        win = abs_bin // self.bins
        if self._next_close is None:
            self._next_close = int(win.min())
        keep = win >= self._next_close
        if not keep.all():
            self.late_packets += int((~keep).sum())
            idx = np.flatnonzero(keep)
            batch = batch.take(idx)
            flows = FlowAnnotations(flows.flow_id[idx], flows.new_flow[idx], flows.from_initiator[idx])
            abs_bin, win = abs_bin[idx], win[idx]
        if len(batch):
            self._accumulate(batch, flows, abs_bin, win)
            newest = int(batch.ts_ns.max())
            self.watermark_ns = newest if self.watermark_ns is None else max(self.watermark_ns, newest)
        return self._close_until(self.watermark_ns - self._lateness_ns if self.watermark_ns is not None else None)

    def _accumulate(self, b: PacketBatch, fl: FlowAnnotations, abs_bin: np.ndarray, win: np.ndarray) -> None:
        n = len(b)
        src_home = self._home.contains(b.src_hi, b.src_lo)
        dst_home = self._home.contains(b.dst_hi, b.dst_lo)
        src_rows = np.flatnonzero(src_home)
        dst_rows = np.flatnonzero(dst_home)
        src_slot = self._slots_for(b.src_hi[src_rows], b.src_lo[src_rows], b.ts_ns[src_rows])
        dst_slot = self._slots_for(b.dst_hi[dst_rows], b.dst_lo[dst_rows], b.ts_ns[dst_rows])
        self.entity_overflow += int((src_slot < 0).sum() + (dst_slot < 0).sum())
        all_rows = np.arange(n)
        # contributions: (packet row, entity slot, direction 0=out 1=in)
        g_dir = (dst_home & ~src_home).astype(np.int8)
        pkt = np.concatenate([all_rows, src_rows[src_slot >= 0], dst_rows[dst_slot >= 0]])
        slot = np.concatenate([np.zeros(n, dtype=np.int64), src_slot[src_slot >= 0], dst_slot[dst_slot >= 0]])
        direction = np.concatenate(
            [g_dir, np.zeros(int((src_slot >= 0).sum()), np.int8), np.ones(int((dst_slot >= 0).sum()), np.int8)]
        )
        is_in = direction == 1
        proto = b.proto[pkt]
        flags = b.tcp_flags[pkt]
        ip_len = b.ip_len[pkt].astype(np.float64)
        tcp = proto == PROTO_TCP
        syn = tcp & ((flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)
        rst = tcp & ((flags & TCP_RST) != 0)
        icmp_type = b.sport[pkt]
        icmp_err = ((proto == PROTO_ICMP) & np.isin(icmp_type, (3, 11, 12))) | (
            (proto == PROTO_ICMPV6) & np.isin(icmp_type, (1, 2, 3, 4))
        )
        new_flow = fl.new_flow[pkt]
        # a flow is "out" for the entity that initiated it: the opening packet's sender
        cols = {
            "pkts_out": ~is_in,
            "pkts_in": is_in,
            "bytes_out": np.where(is_in, 0.0, ip_len),
            "bytes_in": np.where(is_in, ip_len, 0.0),
            "flows_out": new_flow & ~is_in,
            "flows_in": new_flow & is_in,
            "syn_out": syn & ~is_in,
            "syn_in": syn & is_in,
            "rst_out": rst & ~is_in,
            "rst_in": rst & is_in,
            "icmp_err": icmp_err,
        }
        peer_hi = np.where(is_in, b.src_hi[pkt], b.dst_hi[pkt])
        peer_lo = np.where(is_in, b.src_lo[pkt], b.dst_lo[pkt])
        ported = ((proto == PROTO_TCP) | (proto == PROTO_UDP)) & (b.frag[pkt] != FRAG_LATER)
        port = b.dport[pkt]
        p_win = win[pkt]
        p_bin = (abs_bin[pkt] % self.bins).astype(np.int64)
        for w in np.unique(p_win).tolist():
            sel = p_win == w
            acc = self._acc(int(w))
            s, bn = slot[sel], p_bin[sel]
            n_slots = acc.sums.shape[0]
            flat = s * self.bins + bn
            size = n_slots * self.bins
            for k, name in enumerate(_SUMS):
                acc.sums[:, :, k] += np.bincount(flat, weights=cols[name][sel], minlength=size).reshape(n_slots, self.bins)
            # distinct peers/ports per (slot, bin)
            group = flat * 4
            d_in = is_in[sel]
            p_hash = _mix(peer_hi[sel] ^ _mix(peer_lo[sel]))
            kinds = [
                (~d_in, 0, p_hash),
                (d_in, 1, p_hash),
                (~d_in & ported[sel], 2, port[sel].astype(np.uint64)),
                (d_in & ported[sel], 3, port[sel].astype(np.uint64)),
            ]
            for mask, kind, value in kinds:
                g = group[mask] + kind
                key = _mix(g.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ value[mask])
                key, first = np.unique(key, return_index=True)
                acc.distinct_keys.append(key)
                acc.distinct_groups.append(g[first])
            self._reduce_evidence(acc, b, fl, pkt[sel], s, peer_hi[sel], peer_lo[sel], proto[sel], port[sel], ip_len[sel], ported[sel])

    def _reduce_evidence(self, acc, b, fl, rows, slot, peer_hi, peer_lo, proto, port, ip_len, ported) -> None:
        key = _mix(slot.astype(np.uint64) ^ _mix(peer_hi ^ _mix(peer_lo)))
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        acc.peers.append(
            (slot[first], peer_hi[first], peer_lo[first], np.bincount(inv).astype(np.float64), np.bincount(inv, weights=ip_len))
        )
        pslot, pproto, pport = slot[ported], proto[ported], port[ported]
        key = (pslot.astype(np.uint64) << np.uint64(24)) | (pproto.astype(np.uint64) << np.uint64(16)) | pport.astype(np.uint64)
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        acc.ports.append((pslot[first], pproto[first], pport[first], np.bincount(inv).astype(np.float64)))
        fid = fl.flow_id[rows]
        key = _mix(slot.astype(np.uint64) ^ _mix(fid))
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        r = rows[first]
        acc.flows.append(
            (slot[first], fid[first], b.proto[r], b.src_hi[r], b.src_lo[r], b.dst_hi[r], b.dst_lo[r], b.sport[r], b.dport[r], np.bincount(inv).astype(np.float64))
        )

    # ---------------------------------------------------------------- closing
    def stats(self) -> dict[str, int]:
        return {
            "entities": self.entities,
            "entities_expired": self.entities_expired,
            "entity_overflow_packets": self.entity_overflow,
            "late_packets": self.late_packets,
            "windows_closed": self.windows_closed,
        }


class _LazyEvidence(Mapping):
    """entity -> WindowEvidence, reduced from a window's partials only when asked."""

    def __init__(self, acc: _WindowAcc, slots: dict[str, int], top_k: int) -> None:
        self._acc = acc
        self._slots = slots
        self._top_k = top_k
        self._cache: dict[str, WindowEvidence] = {}
        self._reduced: dict[str, tuple[np.ndarray, ...]] | None = None

    def __getitem__(self, entity: str) -> WindowEvidence:
        if entity not in self._slots:
            raise KeyError(entity)
        if entity not in self._cache:
            self._cache[entity] = self._build(self._slots[entity])
        return self._cache[entity]

    def __iter__(self) -> Iterator[str]:
        return iter(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    def _reduce(self) -> dict[str, tuple[np.ndarray, ...]]:
        if self._reduced is None:
            acc = self._acc
            out = {}
            for name, parts, key_cols, sum_cols in (
                ("peers", acc.peers, (0, 1, 2), (3, 4)),
                ("ports", acc.ports, (0, 1, 2), (3,)),
                ("flows", acc.flows, (0, 1), (9,)),
            ):
                if not parts:
                    out[name] = tuple(np.zeros(0) for _ in range(len(parts[0]) if parts else 10))
                    continue
                cols = [np.concatenate([p[c] for p in parts]) for c in range(len(parts[0]))]
                key = np.zeros(cols[0].shape[0], dtype=np.uint64)
                for c in key_cols:
                    key = _mix(key ^ cols[c].astype(np.uint64))
                _, first, inv = np.unique(key, return_index=True, return_inverse=True)
                reduced = [c[first] for c in cols]
                for c in sum_cols:
                    reduced[c] = np.bincount(inv, weights=cols[c])
                out[name] = tuple(reduced)
            self._reduced = out
        return self._reduced

    def _top(self, cols: tuple[np.ndarray, ...], slot: int, weight_col: int) -> tuple[np.ndarray, np.ndarray]:
        if cols[0].shape[0] == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        rows = np.flatnonzero(cols[0] == slot)
        order = rows[np.argsort(-cols[weight_col][rows], kind="stable")][: self._top_k]
        return order, cols[weight_col][order]

    def _build(self, slot: int) -> WindowEvidence:
        red = self._reduce()
        ev = WindowEvidence()
        peers = red["peers"]
        rows, _ = self._top(peers, slot, 3)
        for r in rows.tolist():
            ev.top_peers.append(
                {"ip": pair_to_addr(peers[1][r], peers[2][r]), "packets": int(peers[3][r]), "bytes": int(peers[4][r])}
            )
        ports = red["ports"]
        rows, _ = self._top(ports, slot, 3)
        for r in rows.tolist():
            ev.top_ports.append({"port": int(ports[2][r]), "proto": _proto_name(int(ports[1][r])), "packets": int(ports[3][r])})
        flows = red["flows"]
        rows, _ = self._top(flows, slot, 9)
        for r in rows.tolist():
            proto = int(flows[2][r])
            sport, dport = int(flows[7][r]), int(flows[8][r])
            ev.top_flows.append(
                {
                    "community_id": community_id_of_pairs(
                        proto, flows[3][r], flows[4][r], flows[5][r], flows[6][r], sport, dport
                    ),
                    "src": pair_to_addr(flows[3][r], flows[4][r]),
                    "dst": pair_to_addr(flows[5][r], flows[6][r]),
                    "sport": sport,
                    "dport": dport,
                    "proto": _proto_name(proto),
                    "packets": int(flows[9][r]),
                }
            )
        return ev


def _proto_name(proto: int) -> str:
    return {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}.get(proto, str(proto))
