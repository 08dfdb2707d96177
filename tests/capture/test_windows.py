"""The window aggregator: entities, features per bin, event-time closing."""

from __future__ import annotations

import numpy as np

from detector.capture.flows import FlowTable
from detector.capture.windows import PACKET_SCHEMA, WindowAggregator
from tests.conftest import make_batch

F = {n: i for i, n in enumerate(PACKET_SCHEMA.features)}
SYN = 0x02


def _run(rows, **kw):
    agg = WindowAggregator(home_net=["10.0.0.0/24"], bin_s=10, bins=6, lateness_s=0, **kw)
    ft = FlowTable()
    b = make_batch(rows)
    out = agg.push(b, ft.push(b))
    return agg, out + agg.flush()


def test_scan_features_for_the_scanner_and_the_link():
    """A SYN scan of 100 ports: ports_out/syn_out for the scanner host, per bin."""
    rows = [{"ts_s": 1.0 + i * 0.01, "src": "10.0.0.5", "dst": "10.0.0.9", "sport": 40000, "dport": 1 + i, "flags": SYN}
            for i in range(100)]  # fmt: skip
    _, windows = _run(rows)
    assert 1 == len(windows)
    w = windows[0]
    assert ["global", "10.0.0.5", "10.0.0.9"] == w.entities
    assert ["global", "host", "host"] == w.entity_classes
    scanner = w.features[1]
    assert 100 == scanner[0, F["ports_out"]]
    assert 100 == scanner[0, F["syn_out"]]
    assert 100 == scanner[0, F["flows_out"]]
    assert 1 == scanner[0, F["peers_out"]]
    assert 0 == scanner[1:, :].sum()
    target = w.features[2]
    assert 100 == target[0, F["ports_in"]]
    assert 100 == target[0, F["syn_in"]]
    assert 1 == target[0, F["peers_in"]]
    link = w.features[0]
    assert 100 == link[0, F["pkts_out"]]  # internal traffic counts as "out" for the link


def test_bins_and_windows_follow_event_time():
    """Packets land in the bin of their timestamp; every window up to the watermark closes,
    empty ones too, so entity sequences have no holes."""
    rows = [
        {"ts_s": 5, "src": "10.0.0.1", "dst": "8.8.8.8", "sport": 1, "dport": 53, "proto": 17},
        {"ts_s": 25, "src": "10.0.0.1", "dst": "8.8.8.8", "sport": 1, "dport": 53, "proto": 17},
        {"ts_s": 200, "src": "10.0.0.1", "dst": "8.8.8.8", "sport": 1, "dport": 53, "proto": 17},
    ]
    _, windows = _run(rows)
    assert [0, 60, 120, 180] == [int(w.window_start_ns / 1e9) for w in windows]
    first = windows[0].features[windows[0].entities.index("10.0.0.1")]
    assert [1, 0, 1, 0, 0, 0] == first[:, F["pkts_out"]].tolist()
    assert 0 == windows[1].features.sum()
    assert ["global", "10.0.0.1"] == windows[1].entities


def test_inbound_traffic_counts_as_in_for_the_link():
    """Traffic from outside to a home host is 'in' for global and for the host."""
    rows = [{"ts_s": 1, "src": "203.0.113.7", "dst": "10.0.0.3", "sport": 5555, "dport": 443, "ip_len": 100}]
    _, windows = _run(rows)
    w = windows[0]
    assert ["global", "10.0.0.3"] == w.entities
    assert 1 == w.features[0, 0, F["pkts_in"]]
    assert 100 == w.features[1, 0, F["bytes_in"]]
    assert 100 == w.features[1, 0, F["mean_pkt_bytes"]]


def test_late_packets_are_counted_not_merged():
    """A packet for a window that already closed is dropped and counted."""
    agg = WindowAggregator(home_net=["10.0.0.0/24"], bin_s=10, bins=6, lateness_s=0)
    ft = FlowTable()
    b1 = make_batch([{"ts_s": 1, "src": "10.0.0.1", "dst": "1.1.1.1"}, {"ts_s": 130, "src": "10.0.0.1", "dst": "1.1.1.1"}])
    closed = agg.push(b1, ft.push(b1))
    assert 2 == len(closed)
    b2 = make_batch([{"ts_s": 2, "src": "10.0.0.1", "dst": "1.1.1.1"}])
    assert [] == agg.push(b2, ft.push(b2))
    assert 1 == agg.late_packets


def test_entity_table_is_bounded():
    """More home hosts than max_entities: the rest only count link-wide."""
    rows = [{"ts_s": 1, "src": f"10.0.0.{i}", "dst": "1.1.1.1"} for i in range(1, 51)]
    agg, windows = _run(rows, max_entities=10)
    assert 11 == len(windows[0].entities)
    assert 40 == agg.entity_overflow
    assert 50 == windows[0].features[0, 0, F["pkts_out"]]


def test_idle_entities_expire():
    """A host silent for longer than entity_idle_s stops getting windows."""
    rows = [
        {"ts_s": 1, "src": "10.0.0.1", "dst": "1.1.1.1"},
        {"ts_s": 1, "src": "10.0.0.2", "dst": "1.1.1.1"},
        {"ts_s": 400, "src": "10.0.0.2", "dst": "1.1.1.1"},
    ]
    agg, windows = _run(rows, entity_idle_s=120)
    assert "10.0.0.1" in windows[0].entities
    assert "10.0.0.1" not in windows[-1].entities
    assert "10.0.0.2" in windows[-1].entities
    assert 1 <= agg.entities_expired


def test_evidence_names_top_peers_ports_and_flows():
    """Evidence for an entity: its busiest peer, port and flow with a Community ID."""
    rows = [{"ts_s": 1 + i * 0.1, "src": "10.0.0.5", "dst": "198.51.100.1", "sport": 40000, "dport": 22, "flags": 0x18}
            for i in range(20)]  # fmt: skip
    rows.append({"ts_s": 2, "src": "10.0.0.5", "dst": "198.51.100.2", "sport": 40001, "dport": 80, "flags": 0x18})
    _, windows = _run(rows)
    ev = windows[0].evidence["10.0.0.5"]
    assert {"ip": "198.51.100.1", "packets": 20, "bytes": 1200} == ev.top_peers[0]
    assert {"port": 22, "proto": "tcp", "packets": 20} == ev.top_ports[0]
    assert ev.top_flows[0]["community_id"].startswith("1:")
    assert 20 == ev.top_flows[0]["packets"]


def test_ipv6_hosts_are_entities():
    """An IPv6 home network works like an IPv4 one."""
    agg = WindowAggregator(home_net=["2001:db8:1::/64"], bin_s=10, bins=6, lateness_s=0)
    ft = FlowTable()
    b = make_batch([{"ts_s": 1, "src": "2001:db8:1::5", "dst": "2001:db8:2::1", "proto": 17, "sport": 1, "dport": 53}])
    windows = agg.push(b, ft.push(b)) + agg.flush()
    assert ["global", "2001:db8:1::5"] == windows[0].entities
    assert np.isclose(windows[0].features[1, 0, F["ports_out"]], 1)
