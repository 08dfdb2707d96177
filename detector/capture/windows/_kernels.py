"""Window aggregator, inner loops: packets -> the running aggregates of open windows.

Where this stands in the pipeline::

    PacketBatch + FlowAnnotations --find_slots--> entity slot of each packet's two ends
                                  --accumulate_window--> sums, distinct counts, evidence tallies

capture.windows.packet.WindowAggregator calls these once per batch (and window the batch touches),
never once per packet. Everything a closing window needs is kept up to date while packets
arrive, so that closing it costs O(entities), not O(packets):

- sums per (entity slot, bin, feature) are float64 adds of whole numbers: exact, so the
  same in any order and batching;
- evidence is three tallies per window, open-addressing tables of uint64 rows: peers per
  (slot, address), TCP/UDP ports per (slot, port), flows per (slot, flow id). Rows are keyed
  by the 64-bit hash chains the numpy version deduplicated with np.unique, and ranking
  breaks ties in the order of those keys;
- distinct peers and ports per (slot, bin, direction) ride on the peer and port rows: a bit
  per (bin, direction); setting one for the first time adds one to that count. One table
  probe per contribution serves both the evidence and the distinct count.

A flow's row keeps the 5-tuple of its first contribution, turned round when that was a
reply (the flow table says which packets its initiator sent), so evidence names who opened
each flow; contributions are made in a fixed order: all packets for `global`, then every
packet for its sending host, then every packet for its receiving host.

Tables never fill up inside a kernel: `accumulate_window` stops before a contribution when a
tally is half full and returns where it stopped; the caller grows it (`grown_tally`) and
calls again from there, as FlowTable does when it is full.
"""
from __future__ import annotations

import numba
import numpy as np

from detector.capture._hash import mix_jit as _mix
from detector.contracts import FRAG_LATER, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_RST, TCP_SYN

# A tally is an open-addressing table (linear probing, at most half full) of uint64 rows:
# column KEY is the row's key, PACKETS its packet count, 0 for a free cell. Row layouts:
KEY, PACKETS = 0, 1
# peers of an entity: key hash(slot, address); SEEN.. a bit per (bin, direction) it was seen in
PEER_SLOT, PEER_HI, PEER_LO, PEER_BYTES, PEER_SEEN = 2, 3, 4, 5, 6
# ports of an entity (TCP and UDP): key hash(slot, port); TCP packets (the rest are UDP); seen bits
PORT_SLOT, PORT_PORT, PORT_TCP, PORT_SEEN = 2, 3, 4, 5
# flows of an entity: key hash(slot, flow_id); the flow's 5-tuple as its initiator sent it;
# the packets the entity sent in it that were no TCP reset (an answer; a refusal is none)
FLOW_SLOT, FLOW_SRC_HI, FLOW_SRC_LO, FLOW_DST_HI, FLOW_DST_LO, FLOW_PROTO_PORTS, FLOW_ANSWERS = 2, 3, 4, 5, 6, 7, 8
FLOW_COLUMNS = 9
# Cells of a window's `fill` array: rows in use per tally.
FILL_PEERS, FILL_PORTS, FILL_FLOWS = 0, 1, 2


def seen_words(bins: int) -> int:
    """uint64 words of seen bits a peer or port row needs: one bit per (bin, direction)."""
    return (2 * bins + 63) // 64


# Sums columns, in the order of windows._SUMS.
_PKTS, _BYTES, _FLOWS, _SYN, _RST, _ICMP_ERR = 0, 2, 4, 6, 8, 10


# ---------------------------------------------------------------------------- entity slots
@numba.njit(cache=True, inline="always")
def _address_hash(hi: np.uint64, lo: np.uint64) -> np.uint64:
    return _mix(hi ^ _mix(lo))


@numba.njit(cache=True)
def entity_index(capacity, ent_hi, ent_lo, alive):
    """An open-addressing index (int32 slot, -1 empty) of the alive entity slots' addresses."""
    index = np.full(capacity, -1, dtype=np.int32)
    mask = capacity - 1
    for slot in range(alive.shape[0]):
        if alive[slot]:
            at = np.int64(_address_hash(ent_hi[slot], ent_lo[slot]) & np.uint64(mask))
            while index[at] >= 0:
                at = (at + 1) & mask
            index[at] = slot
    return index


@numba.njit(cache=True)
def find_slots(hi, lo, ts_ns, home, index, ent_hi, ent_lo, first_ns, last_ns, out, retry):
    """Entity slot of each row's address into `out`: -1 where the address is not home, -2
    where it is home but has no slot yet (on a retry, after new slots were made: -1). Found
    slots get their first/last packet times widened. Returns (rows without a slot, slots
    whose first time moved earlier)."""
    mask = index.shape[0] - 1
    missing = 0
    earlier = 0
    for i in range(hi.shape[0]):
        if retry:
            if out[i] != -2:
                continue
        elif not home[i]:
            out[i] = -1
            continue
        h, low = hi[i], lo[i]
        at = np.int64(_address_hash(h, low) & np.uint64(mask))
        slot = -1
        while index[at] >= 0:
            cand = index[at]
            if ent_hi[cand] == h and ent_lo[cand] == low:
                slot = cand
                break
            at = (at + 1) & mask
        if slot < 0:
            out[i] = -1 if retry else -2
            missing += 1
            continue
        out[i] = slot
        t = ts_ns[i]
        if t < first_ns[slot]:
            first_ns[slot] = t
            earlier += 1
        if t > last_ns[slot]:
            last_ns[slot] = t
    return missing, earlier


# ---------------------------------------------------------------------------- tallies
@numba.njit(cache=True)
def grown_tally(table):
    """The tally with twice the cells, its rows placed again by their keys."""
    out = np.zeros((2 * table.shape[0], table.shape[1]), dtype=np.uint64)
    mask = out.shape[0] - 1
    for r in range(table.shape[0]):
        if table[r, PACKETS] != 0:
            at = np.int64(table[r, KEY] & np.uint64(mask))
            while out[at, PACKETS] != 0:
                at = (at + 1) & mask
            out[at] = table[r]
    return out


@numba.njit(cache=True, inline="always")
def _row(table, fill, which, key):
    """Cell of `key` in a tally; a free cell (packets 0) if the key is new, then claimed."""
    mask = table.shape[0] - 1
    at = np.int64(key & np.uint64(mask))
    while table[at, PACKETS] != 0 and table[at, KEY] != key:
        at = (at + 1) & mask
    if table[at, PACKETS] == 0:
        table[at, KEY] = key
        fill[which] += 1
    return at


@numba.njit(cache=True, inline="always")
def _first_in_bin(table, r, first_word, bit) -> bool:
    """Set the row's seen bit for (bin, direction); True if it was not set."""
    col = first_word + (bit >> 6)
    flag = np.uint64(1) << np.uint64(bit & 63)
    if table[r, col] & flag:
        return False
    table[r, col] |= flag
    return True


# ---------------------------------------------------------------------------- accumulate
@numba.njit(cache=True)
def accumulate_window(
    w, bins, start_part, start_row,
    win, abs_bin, src_hi, src_lo, dst_hi, dst_lo, sport, dport, proto, ip_len, tcp_flags, frag,
    flow_id, new_flow, from_initiator, src_home, dst_home, src_slot, dst_slot,
    sums, distinct, peers, ports, flows, fill,
):
    """Add the batch rows of window `w` to its aggregates, from contribution (start_part,
    start_row) on; part 0 is `global`, 1 the sending host, 2 the receiving host. Returns
    (3, 0) when done, or where it stopped because a tally must grow first (more than half
    its cells in use)."""
    n = win.shape[0]
    for part in range(start_part, 3):
        for i in range(start_row if part == start_part else 0, n):
            if win[i] != w:
                continue
            if part == 0:
                slot = np.int64(0)
                inbound = dst_home[i] and not src_home[i]
            elif part == 1:
                slot = src_slot[i]
                inbound = False
            else:
                slot = dst_slot[i]
                inbound = True
            if slot < 0:
                continue
            if (
                2 * fill[FILL_PEERS] >= peers.shape[0]
                or 2 * fill[FILL_PORTS] >= ports.shape[0]
                or 2 * fill[FILL_FLOWS] >= flows.shape[0]
            ):
                return part, i
            d = 1 if inbound else 0
            b = abs_bin[i] - w * bins
            p = proto[i]
            flags = tcp_flags[i]
            length = ip_len[i]
            icmp_type = sport[i]
            # sums: "out" columns then "in" columns, as in windows._SUMS
            sums[slot, b, _PKTS + d] += 1.0
            sums[slot, b, _BYTES + d] += np.float64(length)
            if new_flow[i]:
                sums[slot, b, _FLOWS + d] += 1.0
            if p == PROTO_TCP:
                if (flags & (TCP_SYN | TCP_ACK)) == TCP_SYN:
                    sums[slot, b, _SYN + d] += 1.0
                if (flags & TCP_RST) != 0:
                    sums[slot, b, _RST + d] += 1.0
            elif (p == PROTO_ICMP and (icmp_type == 3 or icmp_type == 11 or icmp_type == 12)) or (
                p == PROTO_ICMPV6 and 1 <= icmp_type <= 4
            ):
                sums[slot, b, _ICMP_ERR] += 1.0
            if inbound:
                peer_hi, peer_lo = src_hi[i], src_lo[i]
            else:
                peer_hi, peer_lo = dst_hi[i], dst_lo[i]
            bit = 2 * b + d  # the row's seen bit for this bin and direction
            slot_key = _mix(np.uint64(slot))
            # peers: evidence, and distinct peers per bin and direction
            r = _row(peers, fill, FILL_PEERS, _mix(_mix(slot_key ^ peer_hi) ^ peer_lo))
            if peers[r, PACKETS] == 0:
                peers[r, PEER_SLOT] = np.uint64(slot)
                peers[r, PEER_HI] = peer_hi
                peers[r, PEER_LO] = peer_lo
            peers[r, PACKETS] += np.uint64(1)
            peers[r, PEER_BYTES] += np.uint64(length)
            if _first_in_bin(peers, r, PEER_SEEN, bit):
                distinct[slot, b, d] += 1
            # ports (TCP and UDP, not later fragments): evidence, and distinct ports
            if (p == PROTO_TCP or p == PROTO_UDP) and frag[i] != FRAG_LATER:
                port = np.uint64(dport[i])
                r = _row(ports, fill, FILL_PORTS, _mix(slot_key ^ port))
                if ports[r, PACKETS] == 0:
                    ports[r, PORT_SLOT] = np.uint64(slot)
                    ports[r, PORT_PORT] = port
                ports[r, PACKETS] += np.uint64(1)
                if p == PROTO_TCP:
                    ports[r, PORT_TCP] += np.uint64(1)
                if _first_in_bin(ports, r, PORT_SEEN, bit):
                    distinct[slot, b, 2 + d] += 1
            # flows: evidence; a row keeps the flow's 5-tuple as its initiator sent it (from the
            # first contribution, turned round when that was a reply), so a scan's victim is
            # never the src of the flows it answered
            r = _row(flows, fill, FILL_FLOWS, _mix(slot_key ^ flow_id[i]))
            if flows[r, PACKETS] == 0:
                forward = from_initiator[i]
                flows[r, FLOW_SLOT] = np.uint64(slot)
                flows[r, FLOW_SRC_HI] = src_hi[i] if forward else dst_hi[i]
                flows[r, FLOW_SRC_LO] = src_lo[i] if forward else dst_lo[i]
                flows[r, FLOW_DST_HI] = dst_hi[i] if forward else src_hi[i]
                flows[r, FLOW_DST_LO] = dst_lo[i] if forward else src_lo[i]
                a_port, b_port = (sport[i], dport[i]) if forward else (dport[i], sport[i])
                flows[r, FLOW_PROTO_PORTS] = (
                    (np.uint64(p) << np.uint64(32)) | (np.uint64(a_port) << np.uint64(16)) | np.uint64(b_port)
                )
            flows[r, PACKETS] += np.uint64(1)
            if d == 0 and not (p == PROTO_TCP and (flags & TCP_RST) != 0):
                flows[r, FLOW_ANSWERS] += np.uint64(1)
    return 3, 0


# ---------------------------------------------------------------------------- capture workers' tallies


@numba.njit(cache=True)
def merge_sorted(a, b, added0, added1, seen, words):
    """Two capture workers' rows of one tally (peers or ports), each sorted by KEY with no
    key twice, as one such table: rows of a key both hold become one, `added0` and `added1`
    summed, the seen-bit words OR-ed, the other columns (the key's parts) a's."""
    out = np.empty((a.shape[0] + b.shape[0], a.shape[1]), dtype=np.uint64)
    i = j = n = 0
    while i < a.shape[0] or j < b.shape[0]:
        if j == b.shape[0] or (i < a.shape[0] and a[i, KEY] < b[j, KEY]):
            out[n] = a[i]
            i += 1
        elif i == a.shape[0] or b[j, KEY] < a[i, KEY]:
            out[n] = b[j]
            j += 1
        else:
            out[n] = a[i]
            out[n, added0] += b[j, added0]
            out[n, added1] += b[j, added1]
            for w in range(seen, seen + words):
                out[n, w] |= b[j, w]
            i += 1
            j += 1
        n += 1
    return out[:n]


@numba.njit(cache=True)
def count_seen(distinct, rows, slot_col, seen, first_kind, bins):
    """distinct[slot, bin, first_kind + direction] += the rows of that slot with that seen
    bit: the distinct peers (or ports) of merged tally rows, one row per key."""
    for r in range(rows.shape[0]):
        s = rows[r, slot_col]
        if s >= distinct.shape[0]:
            continue
        for bit in range(2 * bins):
            if (rows[r, seen + (bit >> 6)] >> np.uint64(bit & 63)) & np.uint64(1):
                distinct[s, bit >> 1, first_kind + (bit & 1)] += 1
