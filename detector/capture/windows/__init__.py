"""Windows: per-entity feature vectors per time bin, from packets or from flow records.

    PacketBatch + FlowAnnotations ─► packet.WindowAggregator      (PACKET_SCHEMA) ─┐
    FlowRecordBatch ───────────────► flow.FlowWindowAggregator    (FLOW_SCHEMA)   ─┴─► WindowBatch

Both share entity slots, closing, expiry and evidence (_base), and each entity's peer and port
history, whose novelty features end both schemas (_history).
"""

from detector.capture.schemas import FLOW_SCHEMA, HISTORY_FEATURES, PACKET_SCHEMA
from detector.capture.windows._base import HomeNet
from detector.capture.windows.flow import FlowWindowAggregator
from detector.capture.windows.packet import WindowAggregator

HISTORY_FEATURE_NAMES = frozenset(name for name, _ in HISTORY_FEATURES)

__all__ = ["FLOW_SCHEMA", "HISTORY_FEATURE_NAMES", "PACKET_SCHEMA", "FlowWindowAggregator", "HomeNet", "WindowAggregator"]
