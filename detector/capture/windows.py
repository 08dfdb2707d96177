"""Window aggregator: packets + flow annotations -> per-entity feature vectors per time bin.

The stage after the flow table. Entities are `global` (the whole link) and every host inside
the configured home networks (Suricata's HOME_NET). Time is event time: a window
[start, start + bins * bin_s) closes when the watermark (the newest packet timestamp) passes
its end plus `lateness_s`, or when `advance(now_ns)` is called by a live source on a quiet
link. Every window from the first packet on is emitted, empty ones too, so that an entity's
sequence of windows has no holes in time; a packet for an already closed window is counted
in `late_packets` and dropped.

Each packet contributes to up to three entity rows (global, its source host, its destination
host). The packet path runs in numba kernels (capture._windows_kernels), one call per batch
and window touched, never per packet: entity slots are found through an open-addressing
index of the home addresses, and every open window keeps its aggregates up to date as
packets arrive (sums; per entity, tallies of peers, ports and flows for the evidence, whose
peer and port rows also carry a seen bit per bin and direction for the distinct counts).
Closing a window therefore costs O(entities), whatever its packet count; evidence is ranked
and turned into strings only when somebody asks. The flow-record aggregator
(capture.flowwindows) shares the entity slots, closing, expiry and evidence here; it keeps
numpy partials per batch (_WindowAcc), deduplicated with np.unique when its window closes.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from detector.capture import _windows_kernels as kernels
from detector.capture.flows import FlowAnnotations, community_id_of_pairs
from detector.contracts import (
    ENTITY_GLOBAL,
    PROTO_TCP,
    PROTO_UDP,
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


# An entity's name in every window it is in: formatted once while it stays (bounded: spoofed
# addresses come and go)
_entity_name = functools.lru_cache(maxsize=1 << 17)(pair_to_addr)


def _grown(arr: np.ndarray, rows: int) -> np.ndarray:
    """`arr` with at least `rows` rows (doubling, new rows zero); `arr` itself if it has them."""
    if arr.shape[0] >= rows:
        return arr
    out = np.zeros((max(rows, 2 * arr.shape[0]),) + arr.shape[1:], dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out


def _emptied(arr: np.ndarray) -> np.ndarray:
    """An array like `arr` with no rows (a fresh one: a slice would keep arr's memory)."""
    return np.zeros((0,) + arr.shape[1:], dtype=arr.dtype)


def _rows_of(arr: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """arr[slots], zeros for slots past its rows (made after the array last grew)."""
    out = np.zeros((slots.shape[0],) + arr.shape[1:], dtype=arr.dtype)
    inside = slots < arr.shape[0]
    out[inside] = arr[slots[inside]]
    return out


@dataclass
class _WindowAcc:
    """Partial aggregates of one open window of the flow-record path (capture.flowwindows):
    numpy partials per batch, reduced when the window closes and when evidence is asked."""

    sums: np.ndarray  # float64 (slots, bins, len(SUMS))
    distinct_keys: list[np.ndarray] = field(default_factory=list)  # uint64 hashed keys
    distinct_groups: list[np.ndarray] = field(default_factory=list)  # int64 (slot*bins+bin)*4+kind
    peers: list[tuple[np.ndarray, ...]] = field(default_factory=list)  # slot, hi, lo, pkts, bytes
    ports: list[tuple[np.ndarray, ...]] = field(default_factory=list)  # slot, proto, port, pkts
    flows: list[tuple[np.ndarray, ...]] = field(default_factory=list)  # slot, flow_id, 5-tuple, pkts

    def fit(self, n_slots: int) -> None:
        """Room for `n_slots` entity slots."""
        self.sums = _grown(self.sums, n_slots)

    def distinct_counts(self, n_slots: int, bins: int) -> np.ndarray:
        """int64 (slots, bins, 4): distinct peers out/in, ports out/in."""
        if not self.distinct_keys:
            return np.zeros((0, bins, 4), dtype=np.int64)
        keys = np.concatenate(self.distinct_keys)
        groups = np.concatenate(self.distinct_groups)
        _, first = np.unique(keys, return_index=True)
        counts = np.bincount(groups[first], minlength=n_slots * bins * 4)
        return counts[: n_slots * bins * 4].reshape(-1, bins, 4)

    def finish(self) -> None:
        """The window closed: drop what its evidence does not need."""
        self.sums = _emptied(self.sums)
        self.distinct_keys, self.distinct_groups = [], []

    def evidence_columns(self) -> dict[str, tuple[np.ndarray, ...]]:
        """Peers (slot, hi, lo, pkts, bytes), ports (slot, proto, port, pkts) and flows (slot,
        proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport, pkts), one row per key (slot and
        address, slot, protocol and port, slot and flow id), rows in the order of the hash of
        their key columns: the tie-break of the ranking."""
        out = {}
        for name, parts, key_cols, sum_cols in (
            ("peers", self.peers, (0, 1, 2), (3, 4)),
            ("ports", self.ports, (0, 1, 2), (3,)),
            ("flows", self.flows, (0, 1), (9,)),
        ):
            if not parts:
                out[name] = tuple(np.zeros(0) for _ in range(9))
                continue
            cols = [np.concatenate([p[c] for p in parts]) for c in range(len(parts[0]))]
            key = np.zeros(cols[0].shape[0], dtype=np.uint64)
            for c in key_cols:
                key = _mix(key ^ cols[c].astype(np.uint64))
            _, first, inv = np.unique(key, return_index=True, return_inverse=True)
            reduced = [c[first] for c in cols]
            for c in sum_cols:
                reduced[c] = np.bincount(inv, weights=cols[c])
            out[name] = tuple(reduced[:1] + reduced[2:]) if name == "flows" else tuple(reduced)  # no flow_id
        return out


class _PacketWindowAcc:
    """Running aggregates of one open window of the packet path, updated in place by
    kernels.accumulate_window: everything closing the window and its evidence need."""

    def __init__(self, n_slots: int, bins: int) -> None:
        slots, words = max(n_slots, 16), kernels.seen_words(bins)
        self.sums = np.zeros((slots, bins, len(_SUMS)))  # float64
        self.distinct = np.zeros((slots, bins, len(_DISTINCT)), dtype=np.int64)
        # evidence tallies (kernels: row layouts), 512 cells to start with
        self.peers = np.zeros((512, kernels.PEER_SEEN + words), dtype=np.uint64)
        self.ports = np.zeros((512, kernels.PORT_SEEN + words), dtype=np.uint64)
        self.flows = np.zeros((512, kernels.FLOW_COLUMNS), dtype=np.uint64)
        self.fill = np.zeros(3, dtype=np.int64)  # rows in use per tally (kernels.FILL_*)

    def fit(self, n_slots: int) -> None:
        """Room for `n_slots` entity slots."""
        self.sums = _grown(self.sums, n_slots)
        self.distinct = _grown(self.distinct, n_slots)

    def make_room(self) -> None:
        """Grow the tallies the kernel stopped for: those half full."""
        if 2 * self.fill[kernels.FILL_PEERS] >= self.peers.shape[0]:
            self.peers = kernels.grown_tally(self.peers)
        if 2 * self.fill[kernels.FILL_PORTS] >= self.ports.shape[0]:
            self.ports = kernels.grown_tally(self.ports)
        if 2 * self.fill[kernels.FILL_FLOWS] >= self.flows.shape[0]:
            self.flows = kernels.grown_tally(self.flows)

    def distinct_counts(self, n_slots: int, bins: int) -> np.ndarray:
        """int64 (slots, bins, 4): distinct peers out/in, ports out/in, counted as they came."""
        return self.distinct

    def finish(self) -> None:
        """The window closed: keep only the tallies' rows, which its evidence needs."""
        self.sums, self.distinct = _emptied(self.sums), _emptied(self.distinct)
        self.peers, self.ports, self.flows = (t[t[:, kernels.PACKETS] != 0] for t in (self.peers, self.ports, self.flows))

    def evidence_columns(self) -> dict[str, tuple[np.ndarray, ...]]:
        """The tallies in _WindowAcc.evidence_columns' layout and row order."""
        k = kernels
        peers = _key_ordered(self.peers)
        # a port row holds TCP and UDP packets: one evidence row per protocol seen
        ports = self.ports[self.ports[:, k.PACKETS] != 0]
        tcp, udp = ports[:, k.PORT_TCP], ports[:, k.PACKETS] - ports[:, k.PORT_TCP]
        p_rows = np.concatenate([ports[tcp > 0], ports[udp > 0]])
        p_proto = np.repeat(np.array([PROTO_TCP, PROTO_UDP], dtype=np.uint64), [int((tcp > 0).sum()), int((udp > 0).sum())])
        p_packets = np.concatenate([tcp[tcp > 0], udp[udp > 0]])
        p_key = _mix(_mix(_mix(p_rows[:, k.PORT_SLOT]) ^ p_proto) ^ p_rows[:, k.PORT_PORT])
        p_order = np.argsort(p_key)
        p_rows, p_proto, p_packets = p_rows[p_order], p_proto[p_order], p_packets[p_order]
        flows = _key_ordered(self.flows)
        proto_ports = flows[:, k.FLOW_PROTO_PORTS]
        as_slot, as_packets = np.int64, np.float64
        return {
            "peers": (peers[:, k.PEER_SLOT].astype(as_slot), peers[:, k.PEER_HI], peers[:, k.PEER_LO],
                      peers[:, k.PACKETS].astype(as_packets), peers[:, k.PEER_BYTES].astype(as_packets)),
            "ports": (p_rows[:, k.PORT_SLOT].astype(as_slot), p_proto, p_rows[:, k.PORT_PORT], p_packets.astype(as_packets)),
            "flows": (flows[:, k.FLOW_SLOT].astype(as_slot), proto_ports >> np.uint64(32), flows[:, k.FLOW_SRC_HI],
                      flows[:, k.FLOW_SRC_LO], flows[:, k.FLOW_DST_HI], flows[:, k.FLOW_DST_LO],
                      (proto_ports >> np.uint64(16)) & np.uint64(0xFFFF), proto_ports & np.uint64(0xFFFF),
                      flows[:, k.PACKETS].astype(as_packets)),
        }  # fmt: skip


def _key_ordered(tally: np.ndarray) -> np.ndarray:
    """A tally's rows in use, in the order of their keys."""
    rows = tally[tally[:, kernels.PACKETS] != 0]
    return rows[np.argsort(rows[:, kernels.KEY])]


class _EntityWindows:
    """What both aggregators share: entity slots, open windows, closing and expiry.
    Subclasses set SCHEMA, SUMS and DISTINCT (the summed and distinct-counted features)
    and fill `_open` windows from their own input (packets or flow records)."""

    SCHEMA: FeatureSchema
    SUMS: tuple[str, ...]
    DISTINCT: tuple[str, ...]

    def __init__(self, home_net: list[str], bin_s: float, bins: int, lateness_s: float, max_entities: int,
                 entity_idle_s: float, evidence_top_k: int) -> None:  # fmt: skip
        self.home_net = list(home_net)
        self.bin_s = bin_s
        self.bins = bins
        self.lateness_s = lateness_s
        self.max_entities = max_entities
        self.entity_idle_s = max(entity_idle_s, bin_s * bins)
        self.evidence_top_k = evidence_top_k
        self.schema = self.SCHEMA
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
        self._next_close: int | None = None  # index of the oldest window not yet emitted
        self.watermark_ns: int | None = None
        self.entities_expired = 0
        self.windows_closed = 0

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
            self._slot_last_ns = _grown(self._slot_last_ns, max(16, slot + 1))
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

    def _new_acc(self, n_slots: int) -> _WindowAcc | _PacketWindowAcc:
        return _WindowAcc(sums=np.zeros((max(n_slots, 16), self.bins, len(self.SUMS))))

    def _acc(self, w: int) -> _WindowAcc | _PacketWindowAcc:
        n_slots = len(self._slot_addr)
        acc = self._open.get(w)
        if acc is None:
            acc = self._open[w] = self._new_acc(n_slots)
        else:
            acc.fit(n_slots)
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
            sums = _rows_of(acc.sums, alive_arr)
            for k, name in enumerate(self.SUMS):
                feats[:, :, fidx[name]] = sums[:, :, k]
            counts = _rows_of(acc.distinct_counts(len(self._slot_addr), self.bins), alive_arr)
            for kind, name in enumerate(self.DISTINCT):
                feats[:, :, fidx[name]] = counts[:, :, kind]
            pk = feats[:, :, fidx["pkts_out"]] + feats[:, :, fidx["pkts_in"]]
            by = feats[:, :, fidx["bytes_out"]] + feats[:, :, fidx["bytes_in"]]
            feats[:, :, fidx["mean_pkt_bytes"]] = np.divide(by, pk, out=np.zeros_like(by), where=pk > 0)
            acc.finish()
        names = [ENTITY_GLOBAL] + [_entity_name(*self._slot_addr[s]) for s in alive[1:]]  # type: ignore[misc]
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
        super().__init__(home_net, bin_s, bins, lateness_s, max_entities, entity_idle_s, evidence_top_k)
        # the same slots as arrays for the kernels: address, first packet time (kept equal
        # to _slot_first_ns), in use; and an open-addressing index of the addresses in use
        self._ent_hi = np.zeros(16, dtype=np.uint64)
        self._ent_lo = np.zeros(16, dtype=np.uint64)
        self._ent_first_ns = np.zeros(16, dtype=np.int64)
        self._ent_alive = np.zeros(16, dtype=np.bool_)
        self._index = np.full(64, -1, dtype=np.int32)
        self._open: dict[int, _PacketWindowAcc] = {}  # type: ignore[assignment]
        self.late_packets = 0
        self.entity_overflow = 0  # packets of hosts that found no free entity slot

    # ---------------------------------------------------------------- entity slots
    def _new_slot(self, addr: tuple[int, int], ts_ns: int) -> int:
        slot = super()._new_slot(addr, ts_ns)
        if slot >= self._ent_alive.shape[0]:
            self._ent_hi, self._ent_lo, self._ent_first_ns, self._ent_alive = (
                _grown(a, slot + 1) for a in (self._ent_hi, self._ent_lo, self._ent_first_ns, self._ent_alive)
            )
        if slot >= 0:
            self._ent_hi[slot], self._ent_lo[slot] = addr
            self._ent_first_ns[slot] = ts_ns
            self._ent_alive[slot] = True
        return slot

    def _expire_entities(self, now_ns: int) -> None:
        freed = len(self._free)
        super()._expire_entities(now_ns)
        if len(self._free) > freed:
            self._ent_alive[self._free[freed:]] = False
            self._reindex()

    def _reindex(self) -> None:
        """Rebuild the address index of the slots in use, at most half full."""
        n = len(self._slot_addr)
        capacity = 1 << max(6, (2 * n - 1).bit_length())
        self._index = kernels.entity_index(capacity, self._ent_hi, self._ent_lo, self._ent_alive[:n])

    def _slots_for(self, hi: np.ndarray, lo: np.ndarray, ts_ns: np.ndarray, home: np.ndarray) -> np.ndarray:
        """Entity slot of each row's address: -1 where it is not home or the entity table is
        full (those rows are counted in entity_overflow)."""
        out = np.empty(hi.shape[0], dtype=np.int64)
        missing, earlier = kernels.find_slots(hi, lo, ts_ns, home, self._index, self._ent_hi, self._ent_lo,
                                              self._ent_first_ns, self._slot_last_ns, out, False)  # fmt: skip
        if missing:
            rows = np.flatnonzero(out == -2)
            if self._admit(hi, lo, ts_ns, rows):
                missing, more = kernels.find_slots(hi, lo, ts_ns, home, self._index, self._ent_hi, self._ent_lo,
                                                   self._ent_first_ns, self._slot_last_ns, out, True)  # fmt: skip
                earlier += more
            else:
                out[rows] = -1
        if earlier:  # an out-of-order packet moved a host's first time earlier
            n = len(self._slot_addr)
            moved = np.flatnonzero(self._ent_first_ns[:n] < np.array(self._slot_first_ns, dtype=np.int64))
            for s in moved.tolist():
                self._slot_first_ns[s] = int(self._ent_first_ns[s])
        self.entity_overflow += missing
        return out

    def _admit(self, hi: np.ndarray, lo: np.ndarray, ts_ns: np.ndarray, rows: np.ndarray) -> bool:
        """Slots for the new home addresses of `rows`, in the order of their address hash and
        while the entity table has room; each starts at its earliest packet here. False if
        the table was already full."""
        room = self.max_entities - len(self._slot_of)
        if room <= 0:
            return False
        key = _mix(hi[rows] ^ _mix(lo[rows]))
        uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        # a host seen first as a receiver and later as a sender must get windows from its
        # first packet, whichever it was (the receiver side widens it on its own lookup)
        earliest = np.full(uniq.shape[0], np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(earliest, inverse, ts_ns[rows])
        for j, i in enumerate(rows[first[:room]].tolist()):
            self._new_slot((int(hi[i]), int(lo[i])), int(earliest[j]))
        self._reindex()
        return True

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

    def _new_acc(self, n_slots: int) -> _PacketWindowAcc:
        return _PacketWindowAcc(n_slots, self.bins)

    def _accumulate(self, b: PacketBatch, fl: FlowAnnotations, abs_bin: np.ndarray, win: np.ndarray) -> None:
        src_home = self._home.contains(b.src_hi, b.src_lo)
        dst_home = self._home.contains(b.dst_hi, b.dst_lo)
        # senders first: a new host's slot number depends on which side found it first
        src_slot = self._slots_for(b.src_hi, b.src_lo, b.ts_ns, src_home)
        dst_slot = self._slots_for(b.dst_hi, b.dst_lo, b.ts_ns, dst_home)
        first, last = int(win.min()), int(win.max())
        for w in [first] if first == last else np.unique(win).tolist():
            acc = self._acc(w)
            part, row = 0, 0
            while True:
                part, row = kernels.accumulate_window(
                    w, self.bins, part, row, win, abs_bin, b.src_hi, b.src_lo, b.dst_hi, b.dst_lo, b.sport, b.dport,
                    b.proto, b.ip_len, b.tcp_flags, b.frag, fl.flow_id, fl.new_flow, src_home, dst_home,
                    src_slot, dst_slot, acc.sums, acc.distinct, acc.peers, acc.ports, acc.flows, acc.fill,
                )  # fmt: skip
                if part == 3:
                    break
                acc.make_room()

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
    """entity -> WindowEvidence, ranked from a window's aggregates only when asked."""

    def __init__(self, acc: _WindowAcc | _PacketWindowAcc, slots: dict[str, int], top_k: int) -> None:
        self._acc = acc
        self._slots = slots
        self._top_k = top_k
        self._cache: dict[str, WindowEvidence] = {}
        self._ranked: dict[str, tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]] | None = None

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

    def _rank(self) -> dict[str, tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray]]:
        """Per table: its columns, and its rows ordered by slot, then weight (packets)
        descending, ties in key-hash order (lexsort is stable); with the slots in that order."""
        if self._ranked is None:
            columns = self._acc.evidence_columns()
            self._ranked = {}
            for name, weight in (("peers", 3), ("ports", 3), ("flows", 8)):
                cols = columns[name]
                order = np.lexsort((-cols[weight], cols[0]))
                self._ranked[name] = (cols, order, cols[0][order])
        return self._ranked

    def _top(self, name: str, slot: int) -> tuple[tuple[np.ndarray, ...], list[int]]:
        cols, order, slots = self._rank()[name]
        start, stop = np.searchsorted(slots, slot, "left"), np.searchsorted(slots, slot, "right")
        return cols, order[start : min(stop, start + self._top_k)].tolist()

    def _build(self, slot: int) -> WindowEvidence:
        ev = WindowEvidence()
        peers, rows = self._top("peers", slot)
        for r in rows:
            ev.top_peers.append(
                {"ip": pair_to_addr(peers[1][r], peers[2][r]), "packets": int(peers[3][r]), "bytes": int(peers[4][r])}
            )
        ports, rows = self._top("ports", slot)
        for r in rows:
            ev.top_ports.append({"port": int(ports[2][r]), "proto": _proto_name(int(ports[1][r])), "packets": int(ports[3][r])})
        flows, rows = self._top("flows", slot)
        for r in rows:
            proto = int(flows[1][r])
            sport, dport = int(flows[6][r]), int(flows[7][r])
            ev.top_flows.append(
                {
                    "community_id": community_id_of_pairs(
                        proto, flows[2][r], flows[3][r], flows[4][r], flows[5][r], sport, dport
                    ),
                    "src": pair_to_addr(flows[2][r], flows[3][r]),
                    "dst": pair_to_addr(flows[4][r], flows[5][r]),
                    "sport": sport,
                    "dport": dport,
                    "proto": _proto_name(proto),
                    "packets": int(flows[8][r]),
                }
            )
        return ev


def _proto_name(proto: int) -> str:
    return {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}.get(proto, str(proto))
