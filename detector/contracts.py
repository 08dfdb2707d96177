"""Types that cross stages: packet batches, closed windows, window scores, incident events.

Every stage may import this module; it imports nothing from the stages. The flow of data is
one-directional (capture -> model -> alerting) and these are the only shapes that travel
along it (see DESIGN.md, "Contracts between stages").
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

# --------------------------------------------------------------------------------------
# Addresses: every address is 128 bits held as two uint64 columns (hi, lo). IPv4 addresses
# are stored IPv4-mapped (::ffff:a.b.c.d), so one comparison covers both families.
# --------------------------------------------------------------------------------------

V4_MAPPED_LO_PREFIX = np.uint64(0x0000FFFF00000000)


def addr_to_pair(text: str) -> tuple[int, int]:
    """An address string as its (hi, lo) 64-bit halves (IPv4 is IPv4-mapped)."""
    ip = ipaddress.ip_address(text)
    if ip.version == 4:
        value = 0xFFFF00000000 | int(ip)
    else:
        value = int(ip)
    return value >> 64, value & 0xFFFFFFFFFFFFFFFF


def pair_to_addr(hi: int, lo: int) -> str:
    """The (hi, lo) halves back as a printable address (IPv4-mapped ones as IPv4)."""
    hi, lo = int(hi), int(lo)
    if hi == 0 and (lo >> 32) == 0xFFFF:
        return str(ipaddress.IPv4Address(lo & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address((hi << 64) | lo))


# --------------------------------------------------------------------------------------
# PacketBatch: the capture stage's output. One row per IP packet, columnar.
# --------------------------------------------------------------------------------------

# values of PacketBatch.frag
FRAG_NONE = 0  # not a fragment
FRAG_FIRST = 1  # first fragment: carries the transport header, ports are valid
FRAG_LATER = 2  # a later fragment: no transport header, ports and flags are 0

PACKET_COLUMNS: dict[str, type] = {
    "ts_ns": np.int64,  # capture timestamp, ns since the Unix epoch
    "ip_version": np.uint8,  # 4 or 6
    "src_hi": np.uint64,  # source address, high 64 bits (0 for IPv4-mapped)
    "src_lo": np.uint64,  # source address, low 64 bits
    "dst_hi": np.uint64,
    "dst_lo": np.uint64,
    "sport": np.uint16,  # TCP/UDP source port; ICMP type
    "dport": np.uint16,  # TCP/UDP destination port; ICMP code
    "proto": np.uint8,  # IP protocol number (after IPv6 extension headers)
    "ip_len": np.uint32,  # IP total length from the header, bytes (IPv6: payload + 40)
    "tcp_flags": np.uint8,  # TCP flags byte (FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32 ...)
    "vlan": np.uint16,  # outermost 802.1Q VLAN id, 0 when untagged
    "frag": np.uint8,  # FRAG_NONE / FRAG_FIRST / FRAG_LATER
}

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 = 1, 6, 17, 58


@dataclass(frozen=True)
class DnsAnswers:
    """The DNS answers (A and AAAA) a batch of frames carried, one row each, in capture
    order (capture.packets._dns reads them): when, to which client, which address, and a
    64-bit key of the registered domain of the name the client asked for (0: none). The
    window stage's peer history reads them to tell a new address of a domain the host
    already talks to from a new peer."""

    ts_ns: np.ndarray  # int64
    client_hi: np.ndarray  # uint64 halves of the client's address, as PACKET_COLUMNS' src/dst
    client_lo: np.ndarray
    addr_hi: np.ndarray  # uint64 halves of the answered address
    addr_lo: np.ndarray
    domain: np.ndarray  # uint64
    # each domain key's registered domain as text, for the evidence an analyst reads
    names: Mapping[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])

    @classmethod
    def empty(cls) -> DnsAnswers:
        u = np.zeros(0, np.uint64)
        return cls(np.zeros(0, np.int64), u, u, u, u, u)

    @classmethod
    def concat(cls, parts: list[DnsAnswers]) -> DnsAnswers:
        parts = [p for p in parts if len(p)]
        if len(parts) <= 1:
            return parts[0] if parts else cls.empty()
        names: dict[int, str] = {}
        for p in parts:
            names.update(p.names)
        columns = {name: np.concatenate([getattr(p, name) for p in parts]) for name in _ANSWER_FIELDS}
        return cls(**columns, names=names)

    def as_tuple(self) -> tuple[Any, ...]:
        """The columns, then the names: what DnsAnswers(*t) takes back (a pipe carries it)."""
        return (*(getattr(self, name) for name in _ANSWER_FIELDS), dict(self.names))


_ANSWER_FIELDS = ("ts_ns", "client_hi", "client_lo", "addr_hi", "addr_lo", "domain")
_NO_ANSWERS = DnsAnswers.empty()


@dataclass
class PacketBatch:
    """A batch of parsed packets as numpy columns (PACKET_COLUMNS), in capture order.

    `malformed` counts frames in this batch's span that could not be parsed as IP (bad
    header lengths, truncated headers); `non_ip` counts well-formed frames that are not IP
    (ARP, LLDP, ...). Neither has a row. `answers` are the DNS answers among its frames:
    not rows, they go with the batch whole (a selection of rows keeps them, as it keeps the
    counts).
    """

    ts_ns: np.ndarray
    ip_version: np.ndarray
    src_hi: np.ndarray
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    proto: np.ndarray
    ip_len: np.ndarray
    tcp_flags: np.ndarray
    vlan: np.ndarray
    frag: np.ndarray
    malformed: int = 0
    non_ip: int = 0
    answers: DnsAnswers = _NO_ANSWERS

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])

    @classmethod
    def empty(cls, malformed: int = 0, non_ip: int = 0) -> PacketBatch:
        cols: dict[str, np.ndarray] = {name: np.zeros(0, dtype=dt) for name, dt in PACKET_COLUMNS.items()}
        return cls(**cols, malformed=malformed, non_ip=non_ip, answers=_NO_ANSWERS)

    @classmethod
    def concat(cls, batches: list[PacketBatch]) -> PacketBatch:
        if not batches:
            return cls.empty()
        cols = {name: np.concatenate([getattr(b, name) for b in batches]) for name in PACKET_COLUMNS}
        return cls(
            **cols,
            malformed=sum(b.malformed for b in batches),
            non_ip=sum(b.non_ip for b in batches),
            answers=DnsAnswers.concat([b.answers for b in batches]),
        )

    def take(self, index: np.ndarray | slice) -> PacketBatch:
        """Rows selected by a slice, boolean mask or index array (counts and answers stay with it)."""
        cols = {name: getattr(self, name)[index] for name in PACKET_COLUMNS}
        return PacketBatch(**cols, malformed=self.malformed, non_ip=self.non_ip, answers=self.answers)

    def columns(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in PACKET_COLUMNS}


# --------------------------------------------------------------------------------------
# Windows: the aggregator's output. All entities whose window closed at the same moment.
# --------------------------------------------------------------------------------------

ENTITY_GLOBAL = "global"  # the link-wide entity's name and class
ENTITY_HOST = "host"  # a home host's class, as the window stage names it (model.groups may name another)


@dataclass(frozen=True)
class FeatureSchema:
    """A named, versioned list of per-bin features; saved in every model bundle."""

    name: str
    version: int
    features: tuple[str, ...]
    units: tuple[str, ...]
    # features that are a level the entity carries from window to window (its history), the
    # same in every bin, where the others count what happened in the bin
    levels: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "features": list(self.features),
            "units": list(self.units),
            "levels": list(self.levels),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSchema:
        return cls(
            name=str(data["name"]),
            version=int(data["version"]),
            features=tuple(data["features"]),
            units=tuple(data["units"]),
            levels=tuple(data.get("levels", ())),
        )


@dataclass
class WindowEvidence:
    """What an analyst pivots on: the entity's busiest peers, ports and flows in the window."""

    top_peers: list[dict[str, Any]] = field(default_factory=list)  # {"ip", "packets", "bytes"[, "returns"][, "domain"]}
    top_ports: list[dict[str, Any]] = field(default_factory=list)  # {"port", "proto", "packets"}
    top_flows: list[dict[str, Any]] = field(default_factory=list)  # {"community_id", "src", ...}


@dataclass(frozen=True)
class LinkHosts:
    """What the link's (`global`) window holds of its home hosts: enough for the scorer to
    tell whether one host's doing, and nothing new to it, is what made the link rise
    (model.scorer leaves such a link alarm to that host). Made by the window stage, which
    sees every host of the window; travels with the link's window, over Kafka too
    (service.wire), so that every scorer that scores the link decides alike.

    A host's value of a feature is its window mean in both directions added (`x_out` plus
    `x_in`: the link's "out" holds its hosts' conversations with each other), or of the
    feature itself where it has no other direction; NaN for a ratio (the mean packet size),
    which is explained by what explains the sums it is the ratio of. A host is *known* in a
    window when its history is past its warm-up and it met nothing new in the window (no
    peer or port its history did not know, no young peer coming back)."""

    hosts: list[str]  # known hosts: for each feature, the known host with the most of it (each once)
    known: np.ndarray  # float32 (len(hosts), features): their values
    news: np.ndarray  # float32 (features,): the values of the home hosts not known in the window, summed


@dataclass
class WindowBatch:
    """Closed windows [start, end) of several entities, each a sequence of time bins.

    features[i, t, f] is feature f of entity i in bin t, in the schema's real units.
    """

    window_start_ns: int
    window_end_ns: int
    entities: list[str]
    entity_classes: list[str]
    features: np.ndarray  # float32 (n_entities, n_bins, n_features)
    schema: FeatureSchema
    evidence: Mapping[str, WindowEvidence] = field(default_factory=dict)
    # what the link's window holds of its home hosts (the window stage's; the scorer reads
    # it when the link alarms); None: not known (a window stage that saw no host, windows
    # read back from a retraining store)
    link_hosts: LinkHosts | None = None
    # host -> the one other home host that started every flow the host had in the window,
    # where the host started none and both are known (their histories past the warm-up,
    # nothing new to either): a host that only answered another's requests (the window
    # stage's; model.scorer leaves such a host's alarm to the requester)
    requested_by: Mapping[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entities)


@dataclass(frozen=True)
class CarriedHistory:
    """The entities' peer history a window stream ended with (the window stage's
    PeerHistory.state_dict: named 1-D arrays) and the end of its last window: what a model
    bundle keeps of its training span, so that the streams it scores start from it."""

    state: dict[str, np.ndarray]
    ended_ns: int

    def rows(self, table: str) -> int:
        """Rows of one of its tables (entities, peers, ports)."""
        keys = self.state.get(f"{table}.keys")
        return 0 if keys is None else int(keys.shape[0])


# --------------------------------------------------------------------------------------
# Scores: the model's output, one per entity per window.
# --------------------------------------------------------------------------------------


@dataclass
class FeatureContribution:
    name: str
    unit: str
    # this feature's share of what was counted: in top_features, of the window's score (each
    # feature's error divided by its error scale); in deviations, of the undivided error; 0..1
    share: float
    observed: float  # mean per bin over the window, real units
    expected: float  # the model's reconstruction of it, real units


@dataclass
class WindowScore:
    window_start_ns: int
    window_end_ns: int
    entity: str
    entity_class: str
    score: float
    threshold: float
    anomalous: bool
    ready: bool  # False while the entity is warming up: never alerted on
    top_features: list[FeatureContribution]  # what the score counted most: the explanation
    evidence: WindowEvidence | None = None
    # the score plus what the entity's previous window carried in (model.scorer): what is
    # compared with the threshold; None: the score itself
    accumulated: float | None = None
    # what this window carries into its entity's next one, in thresholds (model.scorer): a
    # run still adding up; 0 after an alarm or when nothing is above the allowance
    carried: float = 0.0
    # the features furthest from what was expected, in scaled units, however rare each one's
    # errors are: which way the traffic moved, what the categories and rules read (a rare
    # feature leads the score's ranking more often than it says what happened); None: top_features
    deviations: list[FeatureContribution] | None = None
    # a window over its threshold that another home host's doing explains, left to that
    # host's own score (model.scorer): the host; None: not left
    left_to: str | None = None

    @property
    def moved(self) -> list[FeatureContribution]:
        """The features furthest from what was expected (deviations, else top_features)."""
        return self.top_features if self.deviations is None else self.deviations


@dataclass
class ScoreBatch:
    """The scores of every entity whose window closed at one moment, columnar (the scorer
    builds no Python object per entity on its hot path). `batch[i]` and iteration give
    the per-entity WindowScore view; anomalous rows carry their window's evidence."""

    window_start_ns: int
    window_end_ns: int
    entities: list[str]
    entity_classes: list[str]
    scores: np.ndarray  # float32 (n,)
    thresholds: np.ndarray  # float32 (n,)
    anomalous: np.ndarray  # bool (n,)
    ready: np.ndarray  # bool (n,)
    top_index: np.ndarray  # int (n, k): feature indices by share of the score, largest first
    top_share: np.ndarray  # float32 (n, k)
    top_observed: np.ndarray  # float32 (n, k), real units, mean per bin
    top_expected: np.ndarray  # float32 (n, k)
    schema: FeatureSchema
    evidence: Mapping[str, WindowEvidence] = field(default_factory=dict)
    accumulated: np.ndarray | None = None  # float32 (n,): WindowScore.accumulated; None: the scores
    carried: np.ndarray | None = None  # float32 (n,): WindowScore.carried; None: nothing carried
    # WindowScore.deviations, as the top_* columns (share: of the undivided error); None: none
    deviation_index: np.ndarray | None = None
    deviation_share: np.ndarray | None = None
    deviation_observed: np.ndarray | None = None
    deviation_expected: np.ndarray | None = None
    # row -> the host an alarm was left to (model.scorer._leave_to_hosts): WindowScore.left_to
    left_to: dict[int, str] = field(default_factory=dict)

    @property
    def compared(self) -> np.ndarray:
        """What each row's threshold was compared with: accumulated, or the scores without it."""
        return self.scores if self.accumulated is None else self.accumulated

    def __len__(self) -> int:
        return len(self.entities)

    def __getitem__(self, i: int) -> WindowScore:
        top = self._contributions(self.top_index, self.top_share, self.top_observed, self.top_expected, i)
        deviations = None
        if self.deviation_index is not None:
            deviations = self._contributions(self.deviation_index, self.deviation_share, self.deviation_observed,
                                             self.deviation_expected, i)
        anomalous = bool(self.anomalous[i])
        entity = self.entities[i]
        return WindowScore(
            window_start_ns=self.window_start_ns,
            window_end_ns=self.window_end_ns,
            entity=entity,
            entity_class=self.entity_classes[i],
            score=float(self.scores[i]),
            threshold=float(self.thresholds[i]),
            anomalous=anomalous,
            ready=bool(self.ready[i]),
            top_features=top,
            evidence=self.evidence.get(entity) if anomalous else None,
            accumulated=float(self.compared[i]),
            carried=0.0 if self.carried is None else float(self.carried[i]),
            deviations=deviations,
            left_to=self.left_to.get(i),
        )

    def _contributions(self, index: np.ndarray, share: np.ndarray | None, observed: np.ndarray | None,
                       expected: np.ndarray | None, i: int) -> list[FeatureContribution]:
        names, units = self.schema.features, self.schema.units
        assert share is not None and observed is not None and expected is not None
        return [FeatureContribution(names[k], units[k], float(sh), float(ob), float(ex))
                for k, sh, ob, ex in zip(index[i].tolist(), share[i].tolist(), observed[i].tolist(), expected[i].tolist(),
                                         strict=True)]

    def __iter__(self) -> Iterator[WindowScore]:
        return (self[i] for i in range(len(self)))

    def jsonl(self, **extra: str) -> str:
        """Every row as its window-score JSON line (DESIGN.md: one per entity per window; after
        the `extra` fields), built column by column: the window's times are formatted once per batch.
        Strict JSON: a number that is not finite (a NaN score) is written as null, never as a
        bare NaN or Infinity that JSON parsers refuse."""
        names, units = self.schema.features, self.schema.units
        head = json.dumps({**extra, "window_start": ns_to_iso(self.window_start_ns),
                           "window_end": ns_to_iso(self.window_end_ns)}, separators=(",", ":"))[:-1]
        numbers = (self.scores, self.compared, self.thresholds, self.top_share, self.top_observed, self.top_expected)
        num = _round if all(bool(np.isfinite(a).all()) for a in numbers) else _round_or_null  # the usual case: all finite
        columns = zip(self.entities, self.entity_classes, self.scores.tolist(), self.compared.tolist(), self.thresholds.tolist(),
                      self.anomalous.tolist(), self.ready.tolist(), self.top_index.tolist(), self.top_share.tolist(),
                      self.top_observed.tolist(), self.top_expected.tolist(), strict=True)
        lines = []
        for i, (entity, cls, score, accumulated, threshold, anomalous, ready, index, share, observed, expected) in enumerate(columns):
            top = [{"name": names[k], "unit": units[k], "share": num(sh, 4), "observed": num(ob, 3), "expected": num(ex, 3)}
                   for k, sh, ob, ex in zip(index, share, observed, expected, strict=True)]
            body = {"entity": entity, "entity_class": cls, "score": num(score, 6), "accumulated": num(accumulated, 6),
                    "threshold": num(threshold, 6),
                    "anomalous": anomalous, "ready": ready, "top_features": top}
            if i in self.left_to:
                body["left_to"] = self.left_to[i]
            lines.append(head + "," + json.dumps(body, separators=(",", ":"), allow_nan=False)[1:] + "\n")
        return "".join(lines)


def _round(value: float, digits: int) -> float:
    return round(value, digits)


def _round_or_null(value: float, digits: int) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


# --------------------------------------------------------------------------------------
# Incident events: the alerting stage's output, what sinks format and deliver.
# --------------------------------------------------------------------------------------

IncidentAction = Literal["opened", "updated", "resolved"]


@dataclass
class IncidentEvent:
    """One lifecycle transition of an incident. `incident_id` is stable over the incident's
    life (and across restarts); `event_id` is unique per transition and is what sinks and
    SIEMs deduplicate on."""

    event_id: str
    incident_id: str
    action: IncidentAction
    entity: str
    entity_class: str
    first_seen_ns: int  # start of the first anomalous window
    last_seen_ns: int  # end of the latest anomalous window
    emitted_ns: int  # event time of this transition (window end that caused it)
    severity: str  # low | medium | high | critical
    severity_score: int  # 0..100, for CEF/ECS numeric severity
    category: str  # scan, sweep, brute-force, flood, ... (alerting.classify.CATEGORIES) or an operator's own
    score: float
    threshold: float
    windows: int  # anomalous windows so far
    top_features: list[FeatureContribution]
    evidence: WindowEvidence
    rule_id: str
    rule_name: str
    observer: dict[str, str] = field(default_factory=dict)  # hostname, sensor id, interface
    model_version: str = ""
    # Who did what to whom: the entity's role in the anomaly ("originator" | "target"; "" in an
    # event from before roles) and the addresses on each side: the originator sends the
    # anomalous traffic (ECS source), the target receives it (ECS destination). One of them is
    # the entity, the other its dominant counterpart, "" when there is no single one; for the
    # link, the dominant hosts.
    role: str = ""
    originator: str = ""
    target: str = ""
    techniques: list[str] = field(default_factory=list)  # MITRE ATT&CK ids, e.g. T1046, T1498.002
    # the peak window's own score, which top_features share out; `score` is what was compared
    # with the threshold: that plus what a run of windows before it carried in (a slow attack
    # or a host's new role adds up over windows that each stay under it). None: not known (an
    # event from before it was kept), read as `score`
    window_score: float | None = None

    @property
    def added_up(self) -> bool:
        """The peak window alone stayed under the threshold: the run of windows before it crossed."""
        return added_up(self.window_score, self.threshold, self.score)


def added_up(window_score: float | None, threshold: float | None, score: float | None) -> bool:
    """A window whose own score stayed at or under its threshold, flagged on what the windows
    before it carried in (`score`, the accumulated one, above it). False where one is unknown."""
    return window_score is not None and threshold is not None and score is not None and window_score <= threshold < score


def ns_to_iso(ns: int) -> str:
    """UTC ISO 8601 with milliseconds and a Z, the form every sink writes."""
    import datetime as _dt

    seconds, rem = divmod(int(ns), 1_000_000_000)
    stamp = _dt.datetime.fromtimestamp(seconds, tz=_dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{rem // 1_000_000:03d}Z"


# --------------------------------------------------------------------------------------
# Flow records: the flow-record twin of PacketBatch. A network watched through flow exports
# (NetFlow v5/v9, IPFIX, Zeek's conn.log) has no packets to parse; its sources
# (capture.flowrecords) yield FlowRecordBatch, and capture.windows.flow turns them into the
# same WindowBatch shape under FLOW_SCHEMA. One row is one UNIDIRECTIONAL flow record: the
# packets that `src` sent to `dst` between `start_ns` and `end_ns`; readers split biflows
# (Zeek orig/resp, IPFIX RFC 5103) into two rows. Counters are the exporter's estimate of the
# real traffic: a sampled exporter's counts are multiplied by its sampling rate.
# --------------------------------------------------------------------------------------

FLOW_RECORD_COLUMNS: dict[str, type] = {
    "start_ns": np.int64,  # first packet of the record, ns since the Unix epoch
    "end_ns": np.int64,  # last packet of the record (>= start_ns)
    "src_hi": np.uint64,  # sender address, high 64 bits (IPv4 is IPv4-mapped, as in PacketBatch)
    "src_lo": np.uint64,
    "dst_hi": np.uint64,
    "dst_lo": np.uint64,
    "sport": np.uint16,  # TCP/UDP source port; ICMP type
    "dport": np.uint16,  # TCP/UDP destination port; ICMP code
    "proto": np.uint8,  # IP protocol number
    "packets": np.uint64,  # packets src sent to dst, scaled by the sampling rate
    "bytes": np.uint64,  # IP bytes (headers included) src sent to dst, scaled likewise
    "tcp_flags": np.uint8,  # OR of the TCP flags of those packets (0 when not TCP or unknown)
    "exporter": np.uint32,  # key into FlowRecordBatch.exporters
    "sampling": np.uint32,  # the sampling rate applied to packets/bytes (1 = unsampled)
    "continued": np.bool_,  # a later part of a connection reported before (Zeek's long connections): it opens no flow
}


@dataclass(frozen=True)
class Exporter:
    """Who reported a record: a NetFlow/IPFIX exporter's address and observation domain
    (v9: source id), or a Zeek log file (address None). For incidents' observer metadata."""

    name: str  # "192.0.2.1" (domain 0), "192.0.2.1/7", or the log's path
    address: str | None
    domain: int = 0


@dataclass
class FlowRecordBatch:
    """A batch of unidirectional flow records as numpy columns (FLOW_RECORD_COLUMNS), in
    arrival order. `malformed` counts input in this batch's span that could not be turned
    into records (a datagram, a flow set or a log line); it has no row. `watched_from_ns`:
    the source's records are whole only from this time on, when it knows they are not
    before it (a NetFlow/IPFIX exporter whose first export the collector heard was not its
    first: what it exported before then was lost; NetflowParser), else None.
    `reporting_lag_ns`: how long after a packet the source has reported it at the most (a
    NetFlow/IPFIX exporter: its records' export time less their start), else None."""

    start_ns: np.ndarray
    end_ns: np.ndarray
    src_hi: np.ndarray
    src_lo: np.ndarray
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    proto: np.ndarray
    packets: np.ndarray
    bytes: np.ndarray
    tcp_flags: np.ndarray
    exporter: np.ndarray
    sampling: np.ndarray
    continued: np.ndarray
    malformed: int = 0
    exporters: dict[int, Exporter] = field(default_factory=dict)
    answers: DnsAnswers = _NO_ANSWERS  # DNS answers beside the records (a Zeek dns.log's), as PacketBatch's
    watched_from_ns: int | None = None
    reporting_lag_ns: int | None = None

    def __len__(self) -> int:
        return int(self.start_ns.shape[0])

    @classmethod
    def empty(cls, malformed: int = 0, watched_from_ns: int | None = None, reporting_lag_ns: int | None = None) -> FlowRecordBatch:
        cols: dict[str, np.ndarray] = {name: np.zeros(0, dtype=dt) for name, dt in FLOW_RECORD_COLUMNS.items()}
        return cls(**cols, malformed=malformed, exporters={}, answers=_NO_ANSWERS, watched_from_ns=watched_from_ns,
                   reporting_lag_ns=reporting_lag_ns)

    @classmethod
    def from_columns(cls, columns: dict[str, np.ndarray], malformed: int = 0,
                     exporters: dict[int, Exporter] | None = None, watched_from_ns: int | None = None,
                     reporting_lag_ns: int | None = None) -> FlowRecordBatch:
        """A batch from arrays of any integer dtype (cast to the column types); a missing
        `sampling` is 1, a missing `exporter` 0, a missing `continued` False."""
        n = int(np.asarray(columns["start_ns"]).shape[0])
        defaults = {"sampling": 1, "exporter": 0, "tcp_flags": 0, "continued": False}
        cols: dict[str, np.ndarray] = {}
        for name, dt in FLOW_RECORD_COLUMNS.items():
            if name in columns:
                cols[name] = np.asarray(columns[name]).astype(dt, copy=False)
            elif name in defaults:
                cols[name] = np.full(n, defaults[name], dtype=dt)
            else:
                raise KeyError(f"flow record column {name!r} is missing")
        return cls(**cols, malformed=malformed, exporters=dict(exporters or {}), answers=_NO_ANSWERS,
                   watched_from_ns=watched_from_ns, reporting_lag_ns=reporting_lag_ns)

    @classmethod
    def concat(cls, batches: list[FlowRecordBatch]) -> FlowRecordBatch:
        if not batches:
            return cls.empty()
        cols = {name: np.concatenate([getattr(b, name) for b in batches]) for name in FLOW_RECORD_COLUMNS}
        exporters: dict[int, Exporter] = {}
        for b in batches:
            exporters.update(b.exporters)
        watched = [b.watched_from_ns for b in batches if b.watched_from_ns is not None]
        lags = [b.reporting_lag_ns for b in batches if b.reporting_lag_ns is not None]
        return cls(**cols, malformed=sum(b.malformed for b in batches), exporters=exporters,
                   answers=DnsAnswers.concat([b.answers for b in batches]), watched_from_ns=max(watched, default=None),
                   reporting_lag_ns=max(lags, default=None))

    def take(self, index: np.ndarray | slice) -> FlowRecordBatch:
        """Rows selected by a slice, boolean mask or index array (counts and answers stay with it)."""
        cols = {name: getattr(self, name)[index] for name in FLOW_RECORD_COLUMNS}
        return FlowRecordBatch(**cols, malformed=self.malformed, exporters=self.exporters, answers=self.answers,
                               watched_from_ns=self.watched_from_ns, reporting_lag_ns=self.reporting_lag_ns)

    def columns(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in FLOW_RECORD_COLUMNS}
