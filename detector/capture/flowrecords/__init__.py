"""Flow-record sources: the NetFlow v5/v9/IPFIX collector and the Zeek conn.log reader (with its dns.log) -> FlowRecordBatch."""
