"""Windows: per-entity feature vectors per time bin, from packets or from flow records.

    PacketBatch + FlowAnnotations ─► packet.WindowAggregator      (PACKET_SCHEMA) ─┐
    FlowRecordBatch ───────────────► flow.FlowWindowAggregator    (FLOW_SCHEMA)   ─┴─► WindowBatch

Both share entity slots, closing, expiry and evidence (_base).
"""

from detector.capture.windows._base import HomeNet
from detector.capture.windows.flow import FLOW_SCHEMA, FlowWindowAggregator
from detector.capture.windows.packet import PACKET_SCHEMA, WindowAggregator

__all__ = ["FLOW_SCHEMA", "PACKET_SCHEMA", "FlowWindowAggregator", "HomeNet", "WindowAggregator"]
