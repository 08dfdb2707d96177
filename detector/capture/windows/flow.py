"""Flow-record window aggregator: FlowRecordBatch -> per-entity feature vectors per time bin.

Where this stands: the flow-record twin of capture.windows.packet.WindowAggregator, between a flow
source (capture.flowrecords: netflow, zeeklog) and the scorer. It has the same entities (`global`
and every host inside the home networks), bins, windows, closing rule and WindowBatch
output; only the features differ (FLOW_SCHEMA, below), because a record
is not a packet:

- a record's packets and bytes are spread uniformly over its [start, end): each bin gets
  the share of the record's duration that falls in it (a record inside one bin puts
  everything there; a record with start == end is a point in time);
- its flow count (and syn-only count) goes to the bin where it starts, its RST to the bin
  where it ends; a record that continues one reported before (`continued`: a later part
  of a Zeek long connection) counts no flow;
- distinct peers and ports of a bin are those of the records active in that bin.

Time is event time. The watermark is the newest record END seen: records are exported when
they end (or hit the exporter's active timeout), so their ends, not their starts, follow
the clock. A window [start, start + bins * bin_s) closes when the watermark passes its end
plus `lateness_s`; every window is emitted, empty ones too, from the first one that could
still take data when the first record came (the one holding its end minus `lateness_s`). The
part of a record that falls in an already closed window is counted (`late_packets`,
`late_bytes`; `late_records` for records wholly late, `late_starts` for those whose start,
and so flow count, was) and dropped, never silently. Lateness
is judged per record against the watermark of the records BEFORE it, so the result does
not depend on how the records were cut into batches (replay and live agree). Flow records
arrive much later than packets do: set `lateness_s` to the exporter's active timeout plus
its idle timeout and export interval (NetFlow), or to Zeek's longest inactivity timeout
(conn.log is written when a connection is removed); the default, 90 s, fits an exporter
with a 60 s active timeout.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from detector.capture._addr import dns_probe
from detector.capture._hash import mix as _mix
from detector.capture.schemas import FLOW_SCHEMA
from detector.capture.windows._base import EntityWindows, emptied, grown
from detector.contracts import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_RST,
    TCP_SYN,
    FlowRecordBatch,
    WindowBatch,
)

_F = {name: i for i, name in enumerate(FLOW_SCHEMA.features)}
_SUMS = ("pkts_out", "pkts_in", "bytes_out", "bytes_in", "flows_out", "flows_in", "syn_only_out", "syn_only_in",
         "rst_out", "rst_in", "icmp_err")
_DISTINCT = ("peers_out", "peers_in", "ports_out", "ports_in")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class _WindowAcc:
    """Partial aggregates of one open window of the flow-record path (this module):
    numpy partials per batch, reduced when the window closes and when evidence is asked."""

    sums: np.ndarray  # float64 (slots, bins, len(SUMS))
    distinct_keys: list[np.ndarray] = field(default_factory=list)  # uint64 hashed keys
    distinct_groups: list[np.ndarray] = field(default_factory=list)  # int64 (slot*bins+bin)*4+kind
    peers: list[tuple[np.ndarray, ...]] = field(default_factory=list)  # slot, hi, lo, pkts, bytes
    ports: list[tuple[np.ndarray, ...]] = field(default_factory=list)  # slot, proto, port, pkts
    flows: list[tuple[np.ndarray, ...]] = field(default_factory=list)  # slot, flow_id, 5-tuple, pkts, answers, reply, start

    def fit(self, n_slots: int) -> None:
        """Room for `n_slots` entity slots."""
        self.sums = grown(self.sums, n_slots)

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
        self.sums = emptied(self.sums)
        self.distinct_keys, self.distinct_groups = [], []

    def evidence_columns(self) -> dict[str, tuple[np.ndarray, ...]]:
        """Peers (slot, hi, lo, pkts, bytes), ports (slot, proto, port, pkts) and flows (slot,
        proto, src_hi, src_lo, dst_hi, dst_lo, sport, dport, pkts, answers: the packets the
        slot's entity sent in the flow, in records that were no refusal), one row per key (slot and
        address, slot, protocol and port, slot and flow id), rows in the order of the hash of
        their key columns: the tie-break of the ranking."""
        out = {}
        for name, parts, key_cols, sum_cols in (
            ("peers", self.peers, (0, 1, 2), (3, 4)),
            ("ports", self.ports, (0, 1, 2), (3,)),
            ("flows", self.flows, (0, 1), (9, 10)),
        ):
            if not parts:
                out[name] = tuple(np.zeros(0) for _ in range(10))
                continue
            cols = [np.concatenate([p[c] for p in parts]) for c in range(len(parts[0]))]
            key = np.zeros(cols[0].shape[0], dtype=np.uint64)
            for c in key_cols:
                key = _mix(key ^ cols[c].astype(np.uint64))
            if name == "flows":  # a flow is its initiator's (_initiator_first), whichever batch brought which direction
                first, inv = _initiator_first(key, cols[11], cols[12], cols[9])
            else:
                _, first, inv = np.unique(key, return_index=True, return_inverse=True)
            reduced = [c[first] for c in cols]
            for c in sum_cols:
                reduced[c] = np.bincount(inv, weights=cols[c])
            out[name] = tuple(reduced[:1] + reduced[2:11]) if name == "flows" else tuple(reduced)  # no flow_id, reply, start
        return out


def _initiator_first(key: np.ndarray, reply: np.ndarray, start: np.ndarray, packets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each distinct key (an entity's direction-free flow), the row of the record that
    the flow's initiator sent (the flow's src and dst, as the packet path's flow table has
    them), and each row's group, groups in the order of their keys (np.unique's).

    A flow record does not say which side began: a Zeek connection's two records start at
    the same time, a NetFlow reply a round trip later, and the rows of an entity come its
    own records first. So a record is a reply when its source port is the lower of the two
    (a server answers from its service port; for ICMP, the echo reply's type 0 against the
    request's 8; a datagram from port 53 too short to be DNS is no answer, capture._addr's
    dns_probe), and of the rest the earliest is the initiator's, then the first to come; a
    record of no packets comes after those with some (a side that sent nothing began
    nothing: Zeek writes the originator's record whatever it sent, and a connection it
    turned round by its `likely_server_ports`, such as a probe sent from port 53, has the
    originator silent). Before, a host's own record came first, so a host that only
    answered another's requests (a home gateway's DNS) was taken to have started them
    (WindowBatch.requested_by)."""
    if key.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    _, inv = np.unique(key, return_inverse=True)
    inv = inv.ravel()
    groups = int(inv.max()) + 1
    start = np.asarray(start, np.int64)
    silent = np.asarray(packets) <= 0
    rank = (np.asarray(reply, np.int64) << 62) | (silent.astype(np.int64) << 61) | (start - start.min())  # replies last, silent ones before them
    best = np.full(groups, np.iinfo(np.int64).max)
    np.minimum.at(best, inv, rank)
    rows = np.flatnonzero(rank == best[inv])
    first = np.full(groups, key.shape[0], np.int64)
    np.minimum.at(first, inv[rows], rows)  # the first to come among equals
    return first, inv



class FlowWindowAggregator(EntityWindows):
    """Turns flow records into closed WindowBatches: `push(batch)` returns those closed."""

    SCHEMA = FLOW_SCHEMA
    SUMS = _SUMS
    DISTINCT = _DISTINCT

    def __init__(
        self,
        home_net: list[str],
        bin_s: float = 10.0,
        bins: int = 6,
        lateness_s: float = 90.0,
        max_entities: int = 50_000,
        entity_idle_s: float = 3600.0,
        evidence_top_k: int = 5,
        history_s: float = 21600.0,
        history_warmup_s: float = 3600.0,
    ) -> None:
        super().__init__(home_net, bin_s, bins, lateness_s, max_entities, entity_idle_s, evidence_top_k, history_s,
                         history_warmup_s)
        self._open: dict[int, _WindowAcc] = {}
        self.records = 0
        self.late_records = 0  # records wholly inside closed windows
        self.late_starts = 0  # records counted in part: their start (and flow count) fell in a closed window
        self.late_packets = 0.0  # packets (and bytes) of the parts of records in closed windows
        self.late_bytes = 0.0
        self.entity_overflow = 0  # record contributions of hosts that found no free entity slot
        self.read_again = 0  # records a restart read again wholly for windows it had closed (resume_at)
        self._closed_before_ns: int | None = None  # resume_at's: windows before it were closed by the run before
        self._read_to_ns = 0  # resume_at's: records ending by then were read by the run before

    def resume_at(self, closed_before_ns: int, read_to_ns: int | None = None) -> None:
        """A restart that reads its records again from a point before the windows it left
        open (a followed conn.log: ZeekConnLog.reading_point): the windows before
        `closed_before_ns` (a window's end) were closed and scored by the run before, so the
        parts in them of the records it had read (those ending by `read_to_ns`, the newest
        record time it had read) are no news and no loss: dropped, not counted late (a record
        wholly in them counts in `read_again`). The parts there of records new to this run
        (a connection that ended later, or that Zeek wrote late) are late, as ever."""
        self._next_close = closed_before_ns // self._window_ns
        self._closed_before_ns = closed_before_ns
        self._read_to_ns = closed_before_ns if read_to_ns is None else read_to_ns

    # ---------------------------------------------------------------- entity slots

    def _first_window(self, times: np.ndarray) -> int:
        return (int(times[0]) - self._lateness_ns) // self._window_ns  # as push() starts: from the first record's cut

    def _new_acc(self, n_slots: int) -> _WindowAcc:
        return _WindowAcc(sums=np.zeros((max(n_slots, 16), self.bins, len(self.SUMS))))

    def _slots_for(self, hi: np.ndarray, lo: np.ndarray, first_ns: np.ndarray, last_ns: np.ndarray) -> np.ndarray:
        """Entity slot of each (home) address; -1 where the entity table is full."""
        if hi.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        key = _mix(hi ^ _mix(lo))
        uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        earliest = np.full(uniq.shape[0], np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(earliest, inverse, first_ns)
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
            np.maximum.at(self._slot_last_ns, out[valid], last_ns[valid])
        return out

    # ---------------------------------------------------------------- ingest
    def push(self, batch: FlowRecordBatch) -> list[WindowBatch]:
        """The windows a batch closes, all at once (stream() hands each on as it closes)."""
        return list(self.stream(batch))

    def stream(self, batch: FlowRecordBatch) -> Iterator[WindowBatch]:
        """Take a batch in, handing on each window it closes as it closes: consume it whole,
        the batch is taken in as it is."""
        n = len(batch)

        def part(a: int, b: int) -> Iterator[WindowBatch]:
            return self._push_part(batch if (a, b) == (0, n) else batch.take(slice(a, b)))

        if len(batch.answers):  # time-stamped: a window closed later sees only those before its end
            self.history.resolve(batch.answers)
        if n:
            yield from self._ingest(np.maximum(batch.end_ns, batch.start_ns), part)

    def _push_part(self, batch: FlowRecordBatch) -> Iterator[WindowBatch]:
        n = len(batch)
        self.records += n
        start = batch.start_ns
        end = np.maximum(batch.end_ns, start)
        # the watermark each record finds: that of the records before it (the first record
        # ever finds its own end, as if the clock had just reached it)
        wm0 = int(end[0]) if self.watermark_ns is None else self.watermark_ns
        before = np.empty(n, dtype=np.int64)
        before[0] = wm0
        np.maximum(np.maximum.accumulate(end)[:-1], wm0, out=before[1:])
        cut = ((before - self._lateness_ns) // self._window_ns) * self._window_ns  # open windows start here
        if self._next_close is None:
            self._next_close = int(cut[0] // self._window_ns)
        cut = np.maximum(cut, self._next_close * self._window_ns)
        point = end == start
        late = np.where(point, start < cut, end <= cut)
        lo = np.maximum(start, cut)
        dur = np.where(point, 1.0, (end - start).astype(np.float64))

        def share_before(t: np.ndarray) -> np.ndarray:  # of each record, the part before t
            return np.where(point, (start < t).astype(np.float64), (np.clip(t, start, end) - start) / dur)

        late_share = share_before(cut)
        lost, started_late = late, start < cut  # what counts as late: the parts of records in closed windows
        closed = self._closed_before_ns
        if closed is not None:  # a restart's records read again: their parts before `closed` were counted
            read = end <= self._read_to_ns
            again_cut = np.where(read, np.minimum(cut, closed), start)
            again = read & np.where(point, start < again_cut, end <= again_cut)
            late_share = late_share - share_before(again_cut)
            self.read_again += int(again.sum())
            lost, started_late = late & ~again, started_late & ~(read & (start < closed))
        pk, by = batch.packets.astype(np.float64), batch.bytes.astype(np.float64)
        self.late_records += int(lost.sum())
        self.late_starts += int((~late & started_late).sum())
        self.late_packets += float((pk * late_share).sum())
        self.late_bytes += float((by * late_share).sum())
        rows = np.flatnonzero(~late)
        if rows.shape[0]:
            self._accumulate(batch, rows, start, end, lo, point)
        newest = int(end.max())
        if rows.shape[0]:
            self._last_data_ns = max(self._last_data_ns, int(end[rows].max()))
        self.watermark_ns = newest if self.watermark_ns is None else max(self.watermark_ns, newest)
        return self._close_until(self.watermark_ns - self._lateness_ns, skip_quiet=True)

    def _accumulate(self, b: FlowRecordBatch, rows: np.ndarray, start, end, lo, point) -> None:
        bin_ns = self._bin_ns
        # the record's in-time part [lo, end) in bins: first and last bin, per record
        b0 = lo // bin_ns
        b1 = np.where(point, b0, (end - 1) // bin_ns)
        nb = b1 - b0 + 1
        src_home = self._home.contains(b.src_hi[rows], b.src_lo[rows])
        dst_home = self._home.contains(b.dst_hi[rows], b.dst_lo[rows])
        src_rows, dst_rows = rows[src_home], rows[dst_home]
        src_slot = self._slots_for(b.src_hi[src_rows], b.src_lo[src_rows], lo[src_rows], end[src_rows])
        dst_slot = self._slots_for(b.dst_hi[dst_rows], b.dst_lo[dst_rows], lo[dst_rows], end[dst_rows])
        self.entity_overflow += int((src_slot < 0).sum() + (dst_slot < 0).sum())
        # contributions: (record, entity slot, direction 0=out 1=in), then one per bin spanned
        g_in = (dst_home & ~src_home).astype(np.int8)
        c_rec = np.concatenate([rows, src_rows[src_slot >= 0], dst_rows[dst_slot >= 0]])
        c_slot = np.concatenate([np.zeros(rows.shape[0], np.int64), src_slot[src_slot >= 0], dst_slot[dst_slot >= 0]])
        c_in = np.concatenate([g_in, np.zeros(int((src_slot >= 0).sum()), np.int8), np.ones(int((dst_slot >= 0).sum()), np.int8)])
        reps = nb[c_rec]
        x = np.repeat(np.arange(c_rec.shape[0]), reps)
        k = np.arange(x.shape[0]) - np.repeat(np.cumsum(reps) - reps, reps)
        r = c_rec[x]
        slot, is_in = c_slot[x], c_in[x] == 1
        abs_bin = b0[r] + k
        s_r, e_r = start[r], end[r]
        overlap = np.minimum((abs_bin + 1) * bin_ns, e_r) - np.maximum(abs_bin * bin_ns, lo[r])
        share = np.where(point[r], 1.0, overlap / np.where(point[r], 1, e_r - s_r).astype(np.float64))
        pk = b.packets[r].astype(np.float64) * share
        by = b.bytes[r].astype(np.float64) * share
        proto, flags = b.proto[r], b.tcp_flags[r]
        opens = (k == 0) & (s_r >= lo[r]) & ~b.continued[r]  # a flow starts in this bin (not before the cut, not a later part)
        closes = k == nb[r] - 1
        tcp = proto == PROTO_TCP
        syn_only = tcp & ((flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)
        rst = tcp & ((flags & TCP_RST) != 0)
        icmp_type = b.sport[r]
        icmp_err = ((proto == PROTO_ICMP) & np.isin(icmp_type, (3, 11, 12))) | (
            (proto == PROTO_ICMPV6) & np.isin(icmp_type, (1, 2, 3, 4))
        )
        out = ~is_in
        # what the entity sent in records that were no refusal (a reset without a SYN: a
        # server that accepts sends a SYN-ACK), as the packet path's kernel counts answers
        answers = np.where(out & ~(rst & ((flags & TCP_SYN) == 0)), pk, 0.0)
        cols = {
            "pkts_out": np.where(out, pk, 0.0),
            "pkts_in": np.where(is_in, pk, 0.0),
            "bytes_out": np.where(out, by, 0.0),
            "bytes_in": np.where(is_in, by, 0.0),
            "flows_out": opens & out,
            "flows_in": opens & is_in,
            "syn_only_out": opens & syn_only & out,
            "syn_only_in": opens & syn_only & is_in,
            "rst_out": closes & rst & out,
            "rst_in": closes & rst & is_in,
            "icmp_err": np.where(icmp_err, pk, 0.0),
        }
        s_hi, s_lo, d_hi, d_lo = b.src_hi[r], b.src_lo[r], b.dst_hi[r], b.dst_lo[r]
        peer_hi, peer_lo = np.where(is_in, s_hi, d_hi), np.where(is_in, s_lo, d_lo)
        ported = (proto == PROTO_TCP) | (proto == PROTO_UDP)
        port = b.dport[r]
        # evidence flows are keyed by the direction-free 5-tuple: both directions of a
        # connection are one flow, as in the packet path's flow table
        a_first = (s_hi < d_hi) | ((s_hi == d_hi) & (s_lo <= d_lo))
        fid = _mix(np.where(a_first, s_hi, d_hi) ^ _mix(np.where(a_first, s_lo, d_lo) ^ _GOLDEN))
        fid = _mix(fid ^ _mix(np.where(a_first, d_hi, s_hi) ^ _mix(np.where(a_first, d_lo, s_lo))))
        ports = np.where(a_first, (b.sport[r].astype(np.uint64) << np.uint64(16)) | port,
                         (port.astype(np.uint64) << np.uint64(16)) | b.sport[r])
        fid = _mix(fid ^ (ports << np.uint64(8)) ^ proto.astype(np.uint64))
        win = abs_bin // self.bins
        p_bin = abs_bin % self.bins
        for w in np.unique(win).tolist():
            sel = win == w
            acc = self._acc(int(w))
            s, bn = slot[sel], p_bin[sel]
            n_slots = acc.sums.shape[0]
            flat = s * self.bins + bn
            size = n_slots * self.bins
            for j, name in enumerate(_SUMS):
                acc.sums[:, :, j] += np.bincount(flat, weights=cols[name][sel], minlength=size).reshape(n_slots, self.bins)
            group = flat * 4
            d_in = is_in[sel]
            p_hash = _mix(peer_hi[sel] ^ _mix(peer_lo[sel]))
            for mask, kind, value in (
                (~d_in, 0, p_hash),
                (d_in, 1, p_hash),
                (~d_in & ported[sel], 2, port[sel].astype(np.uint64)),
                (d_in & ported[sel], 3, port[sel].astype(np.uint64)),
            ):
                g = group[mask] + kind
                key = _mix(g.astype(np.uint64) * _GOLDEN ^ value[mask])
                key, first = np.unique(key, return_index=True)
                acc.distinct_keys.append(key)
                acc.distinct_groups.append(g[first])
            self._evidence(acc, s, peer_hi[sel], peer_lo[sel], proto[sel], port[sel], pk[sel], by[sel], ported[sel],
                           fid[sel], s_hi[sel], s_lo[sel], d_hi[sel], d_lo[sel], b.sport[r][sel], answers[sel], s_r[sel])

    @staticmethod
    def _evidence(acc, slot, peer_hi, peer_lo, proto, port, pk, by, ported, fid, s_hi, s_lo, d_hi, d_lo, sport, answers,
                  start) -> None:
        """Per-window partials of top peers, ports and flows, in the layout LazyEvidence reduces."""
        key = _mix(slot.astype(np.uint64) ^ _mix(peer_hi ^ _mix(peer_lo)))
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        acc.peers.append((slot[first], peer_hi[first], peer_lo[first], np.bincount(inv, weights=pk), np.bincount(inv, weights=by)))
        pslot, pproto, pport = slot[ported], proto[ported], port[ported]
        key = (pslot.astype(np.uint64) << np.uint64(24)) | (pproto.astype(np.uint64) << np.uint64(16)) | pport.astype(np.uint64)
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        acc.ports.append((pslot[first], pproto[first], pport[first], np.bincount(inv, weights=pk[ported])))
        key = _mix(slot.astype(np.uint64) ^ _mix(fid))
        reply = (sport < port) & ~dns_probe(proto, sport, s_hi, s_lo, by, pk)  # see _initiator_first
        first, inv = _initiator_first(key, reply, start, pk)
        acc.flows.append((slot[first], fid[first], proto[first], s_hi[first], s_lo[first], d_hi[first], d_lo[first],
                          sport[first], port[first], np.bincount(inv, weights=pk), np.bincount(inv, weights=answers),
                          reply[first], start[first]))

    # ---------------------------------------------------------------- closing
    def stats(self) -> dict[str, int]:
        return {
            "flow_records": self.records,
            "entities": self.entities,
            "entities_expired": self.entities_expired,
            "entity_overflow_records": self.entity_overflow,
            "late_records": self.late_records,
            "late_record_starts": self.late_starts,
            "late_packets": int(round(self.late_packets)),
            "late_bytes": int(round(self.late_bytes)),
            "records_read_again": self.read_again,
            "windows_closed": self.windows_closed,
            "windows_skipped": self.windows_skipped,
            "windows_partial": self.windows_partial,
        }
