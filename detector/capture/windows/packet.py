"""Window aggregator: packets + flow annotations -> per-entity feature vectors per time bin.

The stage after the flow table. Entities are `global` (the whole link) and every host inside
the configured home networks (Suricata's HOME_NET). Time is event time: a window
[start, start + bins * bin_s) closes when the watermark (the newest packet timestamp) passes
its end plus `lateness_s`, or when `advance(now_ns)` is called by a live source on a quiet
link. Every window from the first packet on is emitted, empty ones too, so that an entity's
sequence of windows has no holes in time; a packet for an already closed window is counted
in `late_packets` and dropped.

Each packet contributes to up to three entity rows (global, its source host, its destination
host). The packet path runs in numba kernels (capture.windows._kernels), one call per batch
and window touched, never per packet: entity slots are found through an open-addressing
index of the home addresses, and every open window keeps its aggregates up to date as
packets arrive (sums; per entity, tallies of peers, ports and flows for the evidence, whose
peer and port rows also carry a seen bit per bin and direction for the distinct counts).
Closing a window therefore costs O(entities), whatever its packet count; evidence is ranked
and turned into strings only when somebody asks. The flow-record aggregator
(capture.windows.flow) shares the entity slots, closing, expiry and evidence here; it keeps
numpy partials per batch (flow._WindowAcc), deduplicated with np.unique when its window closes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from detector.capture._hash import mix as _mix
from detector.capture.flows import FlowAnnotations
from detector.capture.schemas import PACKET_SCHEMA
from detector.capture.windows import _kernels as kernels
from detector.capture.windows._base import EntityWindows, emptied, grown
from detector.contracts import (
    PROTO_TCP,
    PROTO_UDP,
    PacketBatch,
    WindowBatch,
)

_F = {name: i for i, name in enumerate(PACKET_SCHEMA.features)}
_SUMS = ("pkts_out", "pkts_in", "bytes_out", "bytes_in", "flows_out", "flows_in", "syn_out", "syn_in", "rst_out", "rst_in", "icmp_err")
_DISTINCT = ("peers_out", "peers_in", "ports_out", "ports_in")



class _PacketWindowAcc:
    """Running aggregates of one open window of the packet path, updated in place by
    kernels.accumulate_window: everything closing the window and its evidence need."""

    def __init__(self, n_slots: int, bins: int, rows: np.ndarray | None = None) -> None:
        slots, words = max(n_slots, 16), kernels.seen_words(bins)
        self.sums = np.zeros((slots, bins, len(_SUMS)))  # float64
        self.distinct = np.zeros((slots, bins, len(_DISTINCT)), dtype=np.int64)
        # evidence tallies (kernels: row layouts): room for `rows` (per tally) without
        # growing, at least 512 cells; each growth rehashes every row
        cells = [max(512, 1 << int(2 * r).bit_length()) for r in (rows if rows is not None else (0, 0, 0))]
        self.peers = np.zeros((cells[kernels.FILL_PEERS], kernels.PEER_SEEN + words), dtype=np.uint64)
        self.ports = np.zeros((cells[kernels.FILL_PORTS], kernels.PORT_SEEN + words), dtype=np.uint64)
        self.flows = np.zeros((cells[kernels.FILL_FLOWS], kernels.FLOW_COLUMNS), dtype=np.uint64)
        self.fill = np.zeros(3, dtype=np.int64)  # rows in use per tally (kernels.FILL_*)

    def fit(self, n_slots: int) -> None:
        """Room for `n_slots` entity slots."""
        self.sums = grown(self.sums, n_slots)
        self.distinct = grown(self.distinct, n_slots)

    def add(self, w: int, bins: int, win: np.ndarray, abs_bin: np.ndarray, b: PacketBatch, fl: FlowAnnotations,
            src_home: np.ndarray, dst_home: np.ndarray, src_slot: np.ndarray, dst_slot: np.ndarray) -> None:
        """The rows of window `w` (entity slots already found) into these aggregates: the
        kernel, called again after each growth of a tally it filled."""
        part, row = 0, 0
        while True:
            part, row = kernels.accumulate_window(
                w, bins, part, row, win, abs_bin, b.src_hi, b.src_lo, b.dst_hi, b.dst_lo, b.sport, b.dport,
                b.proto, b.ip_len, b.tcp_flags, b.frag, fl.flow_id, fl.new_flow, fl.from_initiator, src_home, dst_home,
                src_slot, dst_slot, self.sums, self.distinct, self.peers, self.ports, self.flows, self.fill,
            )
            if part == 3:
                return
            self.make_room()

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
        self.sums, self.distinct = emptied(self.sums), emptied(self.distinct)
        self.peers, self.ports, self.flows = (t[t[:, kernels.PACKETS] != 0] for t in (self.peers, self.ports, self.flows))

    def evidence_columns(self) -> dict[str, tuple[np.ndarray, ...]]:
        """The tallies in flow._WindowAcc.evidence_columns' layout and row order."""
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
                      flows[:, k.PACKETS].astype(as_packets), flows[:, k.FLOW_ANSWERS].astype(as_packets)),
        }


def tally_rows(open_accs: Iterable[_PacketWindowAcc]) -> np.ndarray | None:
    """Rows per tally a new window's aggregates start with room for: as many as the fullest
    open window holds (the window before it, usually: traffic changes little from one to
    the next), not 512 cells doubled a dozen times while it fills."""
    fills = [acc.fill for acc in open_accs]
    return np.max(fills, axis=0) if fills else None


def windows_of(win: np.ndarray) -> list[int]:
    """The windows that rows fall in (most batches' parts fall in one: no np.unique then)."""
    first, last = int(win.min()), int(win.max())
    return [first] if first == last else np.unique(win).tolist()


def _key_ordered(tally: np.ndarray) -> np.ndarray:
    """A tally's rows in use, in the order of their keys."""
    rows = tally[tally[:, kernels.PACKETS] != 0]
    return rows[np.argsort(rows[:, kernels.KEY])]


class WindowAggregator(EntityWindows):
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
        history_s: float = 21600.0,
        history_warmup_s: float = 3600.0,
    ) -> None:
        super().__init__(home_net, bin_s, bins, lateness_s, max_entities, entity_idle_s, evidence_top_k, history_s,
                         history_warmup_s)
        # the same slots as arrays for the kernels: address, first packet time (kept equal
        # to _slot_first_ns), in use; and an open-addressing index of the addresses in use
        self._ent_hi = np.zeros(16, dtype=np.uint64)
        self._ent_lo = np.zeros(16, dtype=np.uint64)
        self._ent_first_ns = np.zeros(16, dtype=np.int64)
        self._ent_alive = np.zeros(16, dtype=np.bool_)
        self._index = np.full(64, -1, dtype=np.int32)
        self._open: dict[int, _PacketWindowAcc] = {}
        self.late_packets = 0
        self.entity_overflow = 0  # packets of hosts that found no free entity slot

    # ---------------------------------------------------------------- entity slots
    def _new_slot(self, addr: tuple[int, int], ts_ns: int) -> int:
        slot = super()._new_slot(addr, ts_ns)
        if slot >= self._ent_alive.shape[0]:
            self._ent_hi, self._ent_lo, self._ent_first_ns, self._ent_alive = (
                grown(a, slot + 1) for a in (self._ent_hi, self._ent_lo, self._ent_first_ns, self._ent_alive)
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

    def _moved(self, src: int, dst: int) -> None:
        for a in (self._ent_hi, self._ent_lo, self._ent_first_ns, self._ent_alive):
            a[dst] = a[src]
        self._ent_alive[src] = False

    def _resized(self, n_slots: int) -> None:
        self._ent_hi, self._ent_lo, self._ent_first_ns, self._ent_alive = (
            a[: max(16, n_slots)].copy() for a in (self._ent_hi, self._ent_lo, self._ent_first_ns, self._ent_alive)
        )
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
                                              self._ent_first_ns, self._slot_last_ns, out, False)
        if missing:
            rows = np.flatnonzero(out == -2)
            if self._admit(hi, lo, ts_ns, rows):
                missing, more = kernels.find_slots(hi, lo, ts_ns, home, self._index, self._ent_hi, self._ent_lo,
                                                   self._ent_first_ns, self._slot_last_ns, out, True)
                earlier += more
            else:
                out[rows] = -1
        if earlier:  # an out-of-order packet moved a host's first time earlier
            n = len(self._slot_addr)
            moved = np.flatnonzero(self._ent_first_ns[:n] < self._slot_first_ns[:n])
            self._slot_first_ns[moved] = self._ent_first_ns[moved]
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
        """The windows a batch closes, all at once (stream() hands each on as it closes)."""
        return list(self.stream(batch, flows))

    def stream(self, batch: PacketBatch, flows: FlowAnnotations) -> Iterator[WindowBatch]:
        """Take a batch (and its flows) in, handing on each window it closes as it closes:
        consume it whole, the batch is taken in as it is."""
        n = len(batch)

        def part(a: int, b: int) -> Iterator[WindowBatch]:
            if (a, b) == (0, n):
                return self._push_part(batch, flows)
            cut = slice(a, b)
            return self._push_part(batch.take(cut), FlowAnnotations(flows.flow_id[cut], flows.new_flow[cut],
                                                                    flows.from_initiator[cut]))

        if len(batch.answers):  # time-stamped: a window closed later sees only those before its end
            self.history.resolve(batch.answers)
        if n:
            yield from self._ingest(batch.ts_ns, part)

    def _push_part(self, batch: PacketBatch, flows: FlowAnnotations) -> Iterator[WindowBatch]:
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
            self._last_data_ns = max(self._last_data_ns, newest)
            self.watermark_ns = newest if self.watermark_ns is None else max(self.watermark_ns, newest)
        return self._close_until(self.watermark_ns - self._lateness_ns if self.watermark_ns is not None else None, skip_quiet=True)

    def _first_window(self, times: np.ndarray) -> int:
        return int(times.min()) // self._window_ns

    def _new_acc(self, n_slots: int) -> _PacketWindowAcc:
        return _PacketWindowAcc(n_slots, self.bins, tally_rows(self._open.values()))

    def _accumulate(self, b: PacketBatch, fl: FlowAnnotations, abs_bin: np.ndarray, win: np.ndarray) -> None:
        src_home = self._home.contains(b.src_hi, b.src_lo)
        dst_home = self._home.contains(b.dst_hi, b.dst_lo)
        # senders first: a new host's slot number depends on which side found it first
        src_slot = self._slots_for(b.src_hi, b.src_lo, b.ts_ns, src_home)
        dst_slot = self._slots_for(b.dst_hi, b.dst_lo, b.ts_ns, dst_home)
        for w in windows_of(win):
            self._acc(w).add(w, self.bins, win, abs_bin, b, fl, src_home, dst_home, src_slot, dst_slot)

    # ---------------------------------------------------------------- closing
    def stats(self) -> dict[str, int]:
        return {
            "entities": self.entities,
            "entities_expired": self.entities_expired,
            "entity_overflow_packets": self.entity_overflow,
            "late_packets": self.late_packets,
            "windows_closed": self.windows_closed,
            "windows_skipped": self.windows_skipped,
            "windows_partial": self.windows_partial,
        }


