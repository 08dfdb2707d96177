"""The feature schemas: what one time bin of one entity is, for packets (PACKET_SCHEMA) and
for flow records (FLOW_SCHEMA), both ending in the entity's long-horizon novelty
(HISTORY_FEATURES, computed by capture.windows._history).

Where this stands: the contract between the window stage (capture.windows, which fills these
features) and the model (a bundle saves the schema it was trained on and is refused on any
other). Kept apart from the window stage, which needs numba, so that what only compares a
bundle with the running code (`netad check-config`) imports no more than this.
"""

from __future__ import annotations

from detector.contracts import FeatureSchema

HISTORY_FEATURES: tuple[tuple[str, str], ...] = (
    # peers not seen in the last history_s, per bin; not an address the DNS answered (a
    # capture's answers, a Zeek dns.log's) for a registered domain the entity talked to
    # within history_s (schema v7)
    ("new_peers", "hosts"),
    # TCP/UDP service ports not seen in their role (used, served, probed) in the last history_s, per bin
    ("new_ports", "ports"),
    # most returns of the outside peers first met within history_s: all of a regular series
    # (held between its contacts), one less for any other; a multicast group or the
    # broadcast address is no peer of this kind (schema v8)
    ("young_peer_returns", "returns"),
)
HISTORY_LEVELS = frozenset({"young_peer_returns"})  # the same in every bin; the others spread over them


# The feature schema: what one time bin of one entity looks like. "out" is traffic the
# entity sends, "in" what it receives; for `global`, "in" is traffic entering the home
# networks from outside and "out" is everything else. Changing this list means a new
# version: bundles trained on another schema are refused.
_PACKET_FEATURES: tuple[tuple[str, str], ...] = (
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
    *HISTORY_FEATURES,  # the entity's long-horizon novelty: capture.windows._history
)
PACKET_SCHEMA = FeatureSchema(
    name="packet",
    version=8,
    features=tuple(n for n, _ in _PACKET_FEATURES),
    units=tuple(u for _, u in _PACKET_FEATURES),
    levels=tuple(sorted(HISTORY_LEVELS)),
)

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
    *HISTORY_FEATURES,  # the entity's long-horizon novelty: capture.windows._history
)
FLOW_SCHEMA = FeatureSchema(
    name="flow",
    version=8,
    features=tuple(n for n, _ in _FLOW_FEATURES),
    units=tuple(u for _, u in _FLOW_FEATURES),
    levels=tuple(sorted(HISTORY_LEVELS)),
)
