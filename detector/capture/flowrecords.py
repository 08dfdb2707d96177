"""Flow records as a columnar batch, and the feature schema computed from them.

Where this stands: the flow-record twin of PacketBatch. A network that is watched through
flow exports (NetFlow v5/v9 and IPFIX from routers, switches or softflowd; Zeek's conn.log)
has no packets to parse; its sources (`capture.netflow`, `capture.zeeklog`) yield
FlowRecordBatch and `capture.flowwindows.FlowWindowAggregator` turns them into the same
WindowBatch shape the packet path produces, under FLOW_SCHEMA::

    NetFlow/IPFIX collector ─┐
                             ├─► FlowRecordBatch ─► FlowWindowAggregator ─► WindowBatch ─► scorer
    Zeek conn.log reader  ───┘

One row is one UNIDIRECTIONAL flow record: the packets that `src` sent to `dst` between
`start_ns` and `end_ns`. Exporters that report both directions in one record (Zeek's orig/resp
counters, IPFIX biflows per RFC 5103) are split into two rows by their reader, so NetFlow,
IPFIX and Zeek give the same rows for the same traffic (softflowd, like most exporters,
already exports each direction as its own record). Counters are the exporter's estimate of
the real traffic: a sampled exporter's counts are multiplied by the sampling rate, and
`sampling` says by how much.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from detector.contracts import FeatureSchema

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
    into records (a datagram, a flow set or a log line); it has no row."""

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
    malformed: int = 0
    exporters: dict[int, Exporter] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.start_ns.shape[0])

    @classmethod
    def empty(cls, malformed: int = 0) -> FlowRecordBatch:
        cols = {name: np.zeros(0, dtype=dt) for name, dt in FLOW_RECORD_COLUMNS.items()}
        return cls(**cols, malformed=malformed)

    @classmethod
    def from_columns(cls, columns: dict[str, np.ndarray], malformed: int = 0,
                     exporters: dict[int, Exporter] | None = None) -> FlowRecordBatch:  # fmt: skip
        """A batch from arrays of any integer dtype (cast to the column types); a missing
        `sampling` is 1, a missing `exporter` 0."""
        n = int(np.asarray(columns["start_ns"]).shape[0])
        defaults = {"sampling": 1, "exporter": 0, "tcp_flags": 0}
        cols = {}
        for name, dt in FLOW_RECORD_COLUMNS.items():
            if name in columns:
                cols[name] = np.asarray(columns[name]).astype(dt, copy=False)
            elif name in defaults:
                cols[name] = np.full(n, defaults[name], dtype=dt)
            else:
                raise KeyError(f"flow record column {name!r} is missing")
        return cls(**cols, malformed=malformed, exporters=dict(exporters or {}))

    @classmethod
    def concat(cls, batches: list[FlowRecordBatch]) -> FlowRecordBatch:
        if not batches:
            return cls.empty()
        cols = {name: np.concatenate([getattr(b, name) for b in batches]) for name in FLOW_RECORD_COLUMNS}
        exporters: dict[int, Exporter] = {}
        for b in batches:
            exporters.update(b.exporters)
        return cls(**cols, malformed=sum(b.malformed for b in batches), exporters=exporters)

    def take(self, index: np.ndarray | slice) -> FlowRecordBatch:
        """Rows selected by a slice, boolean mask or index array (counts stay with the first)."""
        cols = {name: getattr(self, name)[index] for name in FLOW_RECORD_COLUMNS}
        return FlowRecordBatch(**cols, malformed=self.malformed, exporters=self.exporters)

    def columns(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in FLOW_RECORD_COLUMNS}


# --------------------------------------------------------------------------------------
# FLOW_SCHEMA: what one time bin of one entity looks like when all we have are flow records.
#
# It is deliberately NOT the packet schema: a flow record only says how many packets and
# bytes went one way between two times, and which TCP flags appeared at least once. So:
# - packets and bytes are spread uniformly over the record's [start, end] (an estimate of
#   when they happened, exact when a record fits in one bin);
# - a "flow" is a unidirectional flow record, counted in the bin where it starts: a TCP
#   connection that got an answer is two flows (one each way), an unanswered probe is one;
# - "syn_only" replaces the packet schema's per-packet SYN-without-ACK count: a TCP record
#   whose OR-ed flags have SYN and never ACK is a connection attempt that its sender never
#   completed (SYN scans, SYN floods, connects to dead or filtering hosts): flows, not packets;
# - "rst" is TCP records with a RST among their flags (counted in the bin where they end);
# - ICMP error packets come from the record's ICMP type (its flow key), all of them errors;
# - the mean packet size is the ratio of the bin's bytes to its packets: a ratio of sums is
#   exact from flow totals, while a spread, minimum or maximum of packet sizes is not, so
#   none is here.
# Distinct peers and ports of a bin come from the records active in it. "out" is what the
# entity sends, "in" what it receives; for `global`, "in" enters the home networks from
# outside and "out" is everything else (as in the packet schema).
# A model trained on one schema is refused on the other (bundle loading compares them).
# --------------------------------------------------------------------------------------

_FLOW_FEATURES: tuple[tuple[str, str], ...] = (
    ("pkts_out", "packets"),
    ("pkts_in", "packets"),
    ("bytes_out", "bytes"),
    ("bytes_in", "bytes"),
    ("flows_out", "flows"),  # unidirectional flow records the entity sent, by start bin
    ("flows_in", "flows"),  # ... that the entity received
    ("peers_out", "hosts"),  # distinct destinations of the entity's records active in the bin
    ("peers_in", "hosts"),  # distinct sources of records towards the entity
    ("ports_out", "ports"),  # distinct destination ports the entity sent to (TCP/UDP)
    ("ports_in", "ports"),  # distinct local ports that received traffic (TCP/UDP)
    ("syn_only_out", "flows"),  # TCP records sent with SYN and no ACK ever: failed attempts
    ("syn_only_in", "flows"),  # ... received
    ("rst_out", "flows"),  # TCP records sent with a RST, by end bin
    ("rst_in", "flows"),
    ("icmp_err", "packets"),  # ICMP/ICMPv6 unreachable, time exceeded, parameter problem
    ("mean_pkt_bytes", "bytes"),  # bytes / packets over both directions
)
FLOW_SCHEMA = FeatureSchema(
    name="flow",
    version=1,
    features=tuple(n for n, _ in _FLOW_FEATURES),
    units=tuple(u for _, u in _FLOW_FEATURES),
)
