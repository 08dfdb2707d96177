"""Evidence ranked by cause: the flows, peers and ports that drive an incident's top features.

Where it stands: in the Scoring stage (service.scoring), after the incident tracker and before
the sinks. The window stage ranks evidence by volume (capture.windows._base.LazyEvidence: an
entity's busiest flows), and the incident tracker and its classifier read that; but the
busiest flows of a scanning workstation are its ordinary HTTPS and SMB sessions, not the scan.
Here every flow of an anomalous entity's window is scored by how much of the window's top
features it explains, each feature weighted by its share of the anomaly:

    cause(flow) = sum over the top features f of  share_f * counts_f(flow) * pattern_f(flow)

- counts_f: whether the flow counts in f at all, from the entity's side. syn_out, flows_out
  and rst_in are about connections the entity opened (it sends the SYNs, receives the
  RSTs); syn_in, flows_in and rst_out about connections made to it; icmp_err about ICMP. For
  SYN and RST features a short TCP flow (at most 3 packets: an unanswered or refused attempt)
  counts 1, a longer one 1/4 (it began with a SYN too, but was answered).
- pattern_f: how much of f the flow's pattern makes. Counts (SYNs, resets, flows): the share
  of the counted flows that share its peer, its service port, and its peer and client port,
  averaged (a scan's flows share a target, and a tool's fixed source port; a sweep's or a
  flood's a service port; a brute force's a peer and a port; one HTTPS session none, and the
  scanner's own SMB session with its target only the target). Distinct peers (peers_*,
  new_peers, young_peer_returns): the share of the distinct peers reached on its service port.
  Distinct ports (ports_*, new_ports): the share of the distinct ports reached at its peer.
  Volume (packets, bytes, packet size): its share of the packets.

The link (`global`) has no side: its flows cluster by client (a scan, a sweep, a brute
force), by server and port (a flood), and by client and client port, and distinct peers or
ports are counted within those clusters. Volume breaks ties only; then the window stage's own
row order. Peers and ports are ranked by their flows' mean cause, then by its sum. Each flow
says which feature it explains most (`cause`).

What the window stage gives today, and so what this can know: per flow its 5-tuple and its
packets in the window; per peer its packets and bytes. A packet flow's 5-tuple is as its
initiator sent it (src opened the flow); a flow record's is as the exporter reported one
direction of it, so there the side on the lower port is taken as the server (as the window
stage's novelty features do). Whether a peer or port is new to the entity is not kept, so
novelty features are explained by their pattern (new peers reached on one port).
The whole tally is read from the window's evidence mapping (`WindowRows`); where only a
WindowEvidence is at hand (a Kafka scorer's window, an incident restored from a checkpoint),
its few flows are ranked the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector.capture._hash import mix
from detector.capture.flows import community_id_of_pairs
from detector.contracts import ENTITY_GLOBAL, IncidentEvent, ScoreBatch, WindowBatch, WindowEvidence, addr_to_pair, pair_to_addr

TOP_K = 5  # flows, peers and ports an incident event carries (as the window stage's evidence)
KEEP = 20  # flows ranked per window for the incident page
SHORT_PACKETS = 3  # a TCP flow this short is an attempt that was not answered, or refused
ANSWERED_WEIGHT = 0.25  # what a longer TCP flow counts for in a SYN or RST feature

PROTO_NUMBER = {"icmp": 1, "tcp": 6, "udp": 17, "ipv6-icmp": 58, "sctp": 132}
PROTO_NAME = {number: name for name, number in PROTO_NUMBER.items()}

# feature -> (what it counts, the entity's side of the flows it counts):
#   syn: SYNs or RSTs (short TCP attempts count most), count: flows, icmp: ICMP flows,
#   peers: distinct peers, ports: distinct ports, volume: packets and bytes;
#   client: connections the entity opened, server: made to it, any: both
CAUSES: dict[str, tuple[str, str]] = {
    "syn_out": ("syn", "client"), "syn_only_out": ("syn", "client"), "rst_in": ("syn", "client"),
    "syn_in": ("syn", "server"), "syn_only_in": ("syn", "server"), "rst_out": ("syn", "server"),
    "flows_out": ("count", "client"), "flows_in": ("count", "server"),
    "icmp_err": ("icmp", "any"),
    "peers_out": ("peers", "client"), "peers_in": ("peers", "server"),
    "new_peers": ("peers", "any"), "young_peer_returns": ("peers", "any"),
    "ports_out": ("ports", "client"), "ports_in": ("ports", "server"), "new_ports": ("ports", "any"),
    "pkts_out": ("volume", "any"), "pkts_in": ("volume", "any"), "bytes_out": ("volume", "any"),
    "bytes_in": ("volume", "any"), "mean_pkt_bytes": ("volume", "any"),
}
_PORTED = (6, 17, 132)
_SALT = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class FlowRows:
    """Flows of one entity's window, columnar: protocol, addresses as (hi, lo) halves, ports,
    packets in the window."""

    proto: np.ndarray  # int64
    src_hi: np.ndarray  # uint64
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    sport: np.ndarray  # int64
    dport: np.ndarray
    packets: np.ndarray  # float64

    def __len__(self) -> int:
        return int(self.proto.shape[0])

    @classmethod
    def of(cls, proto: Any, src_hi: Any, src_lo: Any, dst_hi: Any, dst_lo: Any, sport: Any, dport: Any, packets: Any) -> FlowRows:
        u64 = np.uint64
        return cls(np.asarray(proto).astype(np.int64), np.asarray(src_hi).astype(u64), np.asarray(src_lo).astype(u64),
                   np.asarray(dst_hi).astype(u64), np.asarray(dst_lo).astype(u64), np.asarray(sport).astype(np.int64),
                   np.asarray(dport).astype(np.int64), np.asarray(packets).astype(np.float64))

    @classmethod
    def empty(cls) -> FlowRows:
        return cls.of(*([np.zeros(0)] * 8))


@dataclass
class PeerRows:
    """Peers of one entity's window: address halves, packets and bytes exchanged."""

    hi: np.ndarray
    lo: np.ndarray
    packets: np.ndarray
    bytes: np.ndarray

    @classmethod
    def of(cls, hi: Any, lo: Any, packets: Any, nbytes: Any) -> PeerRows:
        return cls(np.asarray(hi).astype(np.uint64), np.asarray(lo).astype(np.uint64),
                   np.asarray(packets).astype(np.float64), np.asarray(nbytes).astype(np.float64))

    @classmethod
    def empty(cls) -> PeerRows:
        return cls.of(*([np.zeros(0)] * 4))


@dataclass
class RankedEvidence:
    """One window's evidence of an entity, ranked by cause: flows (each with its Community ID,
    packets, the feature it explains most, `cause`, and its cause weight), peers and ports."""

    flows: list[dict[str, Any]] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)  # cause weight of each flow, aligned with `flows`
    peers: list[dict[str, Any]] = field(default_factory=list)
    ports: list[dict[str, Any]] = field(default_factory=list)

    def window_evidence(self, k: int = TOP_K) -> WindowEvidence:
        """The first `k` of each, as an incident event carries them."""
        return WindowEvidence(top_peers=[dict(p) for p in self.peers[:k]], top_ports=[dict(p) for p in self.ports[:k]],
                              top_flows=[dict(f) for f in self.flows[:k]])


# --------------------------------------------------------------------------------------------- ranking

def _key_pair(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    return mix(mix(hi) ^ lo)


def _group_share(key: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """Per row: the share of the counted rows with its key (0 for rows not counted)."""
    out = np.zeros(key.shape[0])
    total = int(counted.sum())
    if total:
        _, inverse, counts = np.unique(key[counted], return_inverse=True, return_counts=True)
        out[counted] = counts[inverse] / total
    return out


def _distinct_share(group: np.ndarray, value: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """Per row: the distinct values among the counted rows of its group, as a share of the
    distinct values among all counted rows."""
    out = np.zeros(group.shape[0])
    if not counted.any():
        return out
    g, v = group[counted], value[counted]
    distinct = np.unique(v).shape[0]
    pairs = np.unique(np.stack([g, v], axis=1), axis=0)
    groups, per_group = np.unique(pairs[:, 0], return_counts=True)
    out[counted] = per_group[np.searchsorted(groups, g)] / distinct
    return out


def cause_weights(flows: FlowRows, entity: tuple[int, int] | None, drivers: Sequence[tuple[str, float]],
                  initiator_first: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(cause weight of each flow, index into `drivers` of the feature it explains most; -1
    for none). `entity` is the entity's address halves, None for the link (`global`), whose
    flows count from either side. `initiator_first`: each flow's src opened it (packet flows);
    else the side on the lower port serves (flow records)."""
    n = len(flows)
    weight, best = np.zeros(n), np.zeros(n)
    cause = np.full(n, -1, np.int64)
    if n == 0:
        return weight, cause
    tcp = flows.proto == 6
    icmp = np.isin(flows.proto, (1, 58))
    ported = np.isin(flows.proto, _PORTED)
    src_client = np.ones(n, bool) if initiator_first else ~ported | (flows.sport >= flows.dport)
    service = np.where(ported, np.where(src_client, flows.dport, flows.sport), 0)
    port = (flows.proto.astype(np.uint64) << np.uint64(16)) | service.astype(np.uint64)
    everyone = np.ones(n, bool)
    if entity is None:  # the link: clusters of flows by their client, by server and port, by client and client port
        client = server = everyone
        cli = _key_pair(np.where(src_client, flows.src_hi, flows.dst_hi), np.where(src_client, flows.src_lo, flows.dst_lo))
        srv = _key_pair(np.where(src_client, flows.dst_hi, flows.src_hi), np.where(src_client, flows.dst_lo, flows.src_lo))
        srv_port, cli_port = mix(srv ^ port), mix(cli ^ port)
        cli_sport = mix(cli ^ _SALT ^ np.where(src_client, flows.sport, flows.dport).astype(np.uint64))
        counts_by = [cli, srv_port, cli_sport]  # a scan, sweep or brute force shares a client; a flood a server and port
        peers_by = [(srv_port, cli), (cli_port, srv)]  # many clients of one service; many servers of one client
        ports_by = [(mix(cli ^ _SALT) ^ srv, port)]  # many ports between one pair
    else:
        e_src = (flows.src_hi == np.uint64(entity[0])) & (flows.src_lo == np.uint64(entity[1]))
        client = np.where(e_src, src_client, ~src_client)
        server = ~client
        peer = _key_pair(np.where(e_src, flows.dst_hi, flows.src_hi), np.where(e_src, flows.dst_lo, flows.src_lo))
        client_port = np.where(src_client, flows.sport, flows.dport).astype(np.uint64)
        counts_by = [peer, port, mix(peer ^ _SALT ^ client_port)]
        peers_by = [(port, peer)]
        ports_by = [(peer, port)]
    short = tcp & (flows.packets <= SHORT_PACKETS)
    sides = {"client": client, "server": server, "any": everyone}
    for k, (name, share) in enumerate(drivers):
        share = float(share) if math.isfinite(float(share)) and float(share) > 0 else 0.0
        if share == 0.0:
            continue
        kind, side = CAUSES.get(name, ("volume", "any"))
        mask = sides[side]
        if kind == "syn":
            counts = np.where(short, 1.0, ANSWERED_WEIGHT) * (tcp & mask)
        elif kind == "icmp":
            counts = (icmp & mask).astype(np.float64)
        else:
            counts = mask.astype(np.float64)
        counted = counts > 0
        if not counted.any():
            continue
        if kind in ("syn", "count", "icmp"):
            pattern = np.mean([_group_share(key, counted) for key in counts_by], axis=0)
        elif kind in ("peers", "ports"):
            pattern = np.max([_distinct_share(group, value, counted) for group, value in (peers_by if kind == "peers" else ports_by)], axis=0)
        else:
            total = float(flows.packets[counted].sum())
            pattern = flows.packets / total if total > 0 else counted / float(counted.sum())
        part = share * counts * pattern
        weight += part
        better = part > best
        cause[better] = k
        best[better] = part[better]
    return weight, cause


def rank(flows: FlowRows, peers: PeerRows, entity: str, drivers: Sequence[tuple[str, float]], keep: int = KEEP,
         initiator_first: bool = True) -> RankedEvidence:
    """The entity's flows, peers and ports of one window ranked by cause (the module's text):
    the first `keep` of each, strings made only for those."""
    pair = None if entity == ENTITY_GLOBAL else _pair(entity)
    weight, cause = cause_weights(flows, pair, drivers, initiator_first)
    n = len(flows)
    out = RankedEvidence()
    if n == 0:
        return out
    order = np.lexsort((np.arange(n), -flows.packets, -weight))
    names = [name for name, _ in drivers]
    for r in order[:keep].tolist():
        proto, sport, dport = int(flows.proto[r]), int(flows.sport[r]), int(flows.dport[r])
        out.flows.append({
            "community_id": community_id_of_pairs(proto, int(flows.src_hi[r]), int(flows.src_lo[r]), int(flows.dst_hi[r]),
                                                  int(flows.dst_lo[r]), sport, dport),
            "src": pair_to_addr(flows.src_hi[r], flows.src_lo[r]),
            "dst": pair_to_addr(flows.dst_hi[r], flows.dst_lo[r]),
            "sport": sport,
            "dport": dport,
            "proto": PROTO_NAME.get(proto, str(proto)),
            "packets": int(flows.packets[r]),
            "cause": names[cause[r]] if cause[r] >= 0 else "",
        })
        out.weights.append(round(float(weight[r]), 6))
    out.peers = _rank_peers(flows, peers, pair, weight, keep)
    out.ports = _rank_ports(flows, weight, keep, initiator_first)
    return out


def _rank_peers(flows: FlowRows, peers: PeerRows, entity: tuple[int, int] | None, weight: np.ndarray, keep: int) -> list[dict[str, Any]]:
    """Addresses by the cause of their flows (the entity's peers; for the link, both ends of
    its flows), then packets; bytes from the window's peer tally where it has them."""
    if entity is None:
        hi = np.concatenate([flows.src_hi, flows.dst_hi])
        lo = np.concatenate([flows.src_lo, flows.dst_lo])
        w, p = np.concatenate([weight, weight]), np.concatenate([flows.packets, flows.packets])
    else:
        e_src = (flows.src_hi == np.uint64(entity[0])) & (flows.src_lo == np.uint64(entity[1]))
        hi, lo = np.where(e_src, flows.dst_hi, flows.src_hi), np.where(e_src, flows.dst_lo, flows.src_lo)
        w, p = weight, flows.packets
    pairs, first, inverse = np.unique(np.stack([hi, lo], axis=1), axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    top, score = _mean_and_sum(inverse, w, pairs.shape[0])
    packets = np.bincount(inverse, weights=p, minlength=pairs.shape[0])
    tally = {(int(h), int(low)): (pk, by) for h, low, pk, by in zip(peers.hi.tolist(), peers.lo.tolist(), peers.packets.tolist(),
                                                                      peers.bytes.tolist(), strict=True)}
    out = []
    for g in np.lexsort((first, -packets, -score, -top))[:keep].tolist():
        key = (int(pairs[g, 0]), int(pairs[g, 1]))
        row: dict[str, Any] = {"ip": pair_to_addr(*key), "packets": int(packets[g])}
        if key in tally:
            row["packets"], row["bytes"] = int(tally[key][0]), int(tally[key][1])
        out.append(row)
    return out


def _rank_ports(flows: FlowRows, weight: np.ndarray, keep: int, initiator_first: bool = True) -> list[dict[str, Any]]:
    """Service ports (TCP, UDP, SCTP) by the cause of their flows, then packets."""
    ported = np.isin(flows.proto, _PORTED)
    if not ported.any():
        return []
    proto = flows.proto[ported]
    src_client = np.ones(int(ported.sum()), bool) if initiator_first else flows.sport[ported] >= flows.dport[ported]
    port = np.where(src_client, flows.dport[ported], flows.sport[ported])
    keys, first, inverse = np.unique(proto * 65536 + port, return_index=True, return_inverse=True)
    top, score = _mean_and_sum(inverse, weight[ported], keys.shape[0])
    packets = np.bincount(inverse, weights=flows.packets[ported], minlength=keys.shape[0])
    return [{"port": int(keys[g] % 65536), "proto": PROTO_NAME.get(int(keys[g] // 65536), str(int(keys[g] // 65536))),
             "packets": int(packets[g])} for g in np.lexsort((first, -packets, -score, -top))[:keep].tolist()]


def _mean_and_sum(inverse: np.ndarray, weight: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group: its flows' mean cause weight (a peer is as telling as its flows are: one
    spoofed SYN says more than three answered sessions, and a scanner's own HTTPS sessions
    do not make port 443 part of its scan) and their sum."""
    total = np.bincount(inverse, weights=weight, minlength=groups)
    return total / np.maximum(np.bincount(inverse, minlength=groups), 1), total


def _pair(address: str) -> tuple[int, int] | None:
    try:
        return addr_to_pair(address)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------- inputs

def listed_rows(evidence: WindowEvidence) -> tuple[FlowRows, PeerRows]:
    """A WindowEvidence's flows and peers as rows (those whose fields make sense)."""
    cols: list[list[Any]] = [[] for _ in range(8)]
    for f in evidence.top_flows:
        if not isinstance(f, dict):
            continue
        src, dst = _pair(str(f.get("src", ""))), _pair(str(f.get("dst", "")))
        proto = f.get("proto")
        number = PROTO_NUMBER.get(str(proto).lower()) if not isinstance(proto, int) else proto
        try:
            sport, dport, packets = int(f.get("sport", 0)), int(f.get("dport", 0)), float(f.get("packets", 0))
        except (TypeError, ValueError):
            continue
        if src is None or dst is None or number is None or not math.isfinite(packets):
            continue
        for c, v in zip(cols, (number, src[0], src[1], dst[0], dst[1], sport, dport, packets), strict=True):
            c.append(v)
    peer_cols: list[list[Any]] = [[] for _ in range(4)]
    for p in evidence.top_peers:
        pair = _pair(str(p.get("ip", ""))) if isinstance(p, dict) else None
        if pair is None:
            continue
        try:
            values = (pair[0], pair[1], float(p.get("packets", 0)), float(p.get("bytes", 0)))
        except (TypeError, ValueError):
            continue
        for c, v in zip(peer_cols, values, strict=True):
            c.append(v)
    flows = FlowRows.of(*(np.asarray(c, dtype=np.float64 if i == 7 else np.uint64) for i, c in enumerate(cols)))
    return flows, PeerRows.of(*(np.asarray(c, dtype=np.float64 if i >= 2 else np.uint64) for i, c in enumerate(peer_cols)))


class WindowRows:
    """Every flow and peer of one closed window, per entity.

    The window stage's evidence mapping (capture.windows._base.LazyEvidence) holds the window's
    whole tally and ranks it by volume on demand, but has no public accessor for the rows
    themselves yet: its `_columns` (peers: slot, hi, lo, packets, bytes; flows: slot, proto,
    src hi/lo, dst hi/lo, sport, dport, packets) and `_slots` (entity -> slot) are read here,
    in this one place. A mapping without them (a Kafka scorer's windows, a test's dict) gives
    what its WindowEvidence lists."""

    def __init__(self, evidence: Mapping[str, WindowEvidence]) -> None:
        self._evidence = evidence
        columns, slots = getattr(evidence, "_columns", None), getattr(evidence, "_slots", None)
        self._full = isinstance(columns, dict) and isinstance(slots, dict) and "flows" in columns and "peers" in columns
        self._columns: dict[str, tuple[np.ndarray, ...]] = columns if self._full else {}  # type: ignore[assignment]
        self._slots: dict[str, int] = slots if self._full else {}  # type: ignore[assignment]
        self._sorted: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _rows(self, name: str, slot: int) -> np.ndarray:
        if name not in self._sorted:
            slots = np.asarray(self._columns[name][0]).astype(np.int64)
            order = np.argsort(slots, kind="stable")
            self._sorted[name] = (order, slots[order])
        order, slots = self._sorted[name]
        return order[np.searchsorted(slots, slot, "left"): np.searchsorted(slots, slot, "right")]

    def of(self, entity: str) -> tuple[FlowRows, PeerRows]:
        if not self._full:
            evidence = self._evidence.get(entity)
            return listed_rows(evidence) if evidence is not None else (FlowRows.empty(), PeerRows.empty())
        slot = self._slots.get(entity)
        if slot is None:
            return FlowRows.empty(), PeerRows.empty()
        f, p = self._columns["flows"], self._columns["peers"]
        fr, pr = self._rows("flows", slot), self._rows("peers", slot)
        flows = FlowRows.of(*(np.asarray(c)[fr] for c in f[1:9]))
        return flows, PeerRows.of(*(np.asarray(c)[pr] for c in p[1:5]))


# --------------------------------------------------------------------------------------------- per Scoring stage

@dataclass
class _Held:
    """An open incident's evidence: that of its peak window so far."""

    incident_id: str
    peak: float
    ranked: RankedEvidence


class CauseRanker:
    """Per Scoring stage: after each window, gives every incident event the evidence of its
    incident's peak window ranked by cause (instead of by volume), and keeps each open
    incident's so that an update or resolution whose peak came earlier carries it too.
    `ranked(entity)` is the current window's, for the incident page."""

    def __init__(self, top_k: int = TOP_K, keep: int = KEEP) -> None:
        self.top_k = top_k
        self.keep = keep
        self._open: dict[str, _Held] = {}  # entity -> its open incident's
        self._rows: WindowRows | None = None
        self._scores: ScoreBatch | None = None
        self._row_of: dict[str, int] | None = None
        self._ranked: dict[str, RankedEvidence] = {}
        self._initiator_first = True

    def explain(self, window: WindowBatch, scores: ScoreBatch, events: list[IncidentEvent]) -> None:
        """The window was scored and `events` came of it: set their evidence."""
        self._rows, self._scores, self._row_of, self._ranked = WindowRows(window.evidence), scores, None, {}
        self._initiator_first = scores.schema.name == "packet"  # packet flows are kept as their initiator sent them
        for entity, kept in list(self._open.items()):  # a new peak without an event (the tracker sends news only)
            i = self._row(entity)
            if i is not None and bool(scores.anomalous[i]) and float(scores.scores[i]) > kept.peak:
                ranked = self.ranked(entity)
                if ranked is not None:
                    self._open[entity] = _Held(kept.incident_id, float(scores.scores[i]), ranked)
        for event in events:
            held: _Held | None = self._open.get(event.entity)
            if held is None or held.incident_id != event.incident_id:
                held = None
            i = self._row(event.entity)
            if i is not None and bool(scores.anomalous[i]) and float(scores.scores[i]) == event.score:
                ranked = self.ranked(event.entity)  # this window is the incident's peak
                if ranked is not None and (held is None or event.score >= held.peak):
                    held = _Held(event.incident_id, event.score, ranked)
            if held is None:  # its peak window is gone (a restart): what the event lists, ranked
                flows, peers = listed_rows(event.evidence)
                drivers = [(c.name, c.share) for c in event.top_features]
                held = _Held(event.incident_id, event.score, rank(flows, peers, event.entity, drivers, self.keep, self._initiator_first))
            event.evidence = held.ranked.window_evidence(self.top_k)
            if event.action == "resolved":
                self._open.pop(event.entity, None)
            else:
                self._open[event.entity] = held

    def ranked(self, entity: str) -> RankedEvidence | None:
        """The current window's evidence of an anomalous entity, ranked by its top features
        (None if the entity is not anomalous in it)."""
        if entity in self._ranked:
            return self._ranked[entity]
        i = self._row(entity)
        scores = self._scores
        if i is None or scores is None or self._rows is None or not bool(scores.anomalous[i]):
            return None
        row = scores[i]
        flows, peers = self._rows.of(entity)
        ranked = self._ranked[entity] = rank(flows, peers, entity, [(c.name, c.share) for c in row.top_features], self.keep,
                                             self._initiator_first)
        return ranked

    def _row(self, entity: str) -> int | None:
        if self._scores is None:
            return None
        if self._row_of is None:
            self._row_of = {name: i for i, name in enumerate(self._scores.entities)}
        return self._row_of.get(entity)

    def forget(self, entities: list[str]) -> None:
        for entity in entities:
            self._open.pop(entity, None)
