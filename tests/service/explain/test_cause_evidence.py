"""Evidence ranked by cause (service.explain.evidence): the flows behind an incident's top
features come first, volume only breaks ties; events carry their peak window's."""

from __future__ import annotations

import numpy as np

from detector.capture.flows import community_id
from detector.contracts import FeatureContribution, IncidentEvent, ScoreBatch, WindowBatch, WindowEvidence, addr_to_pair
from detector.service.explain.evidence import CauseRanker, FlowRows, PeerRows, WindowRows, listed_rows, rank

SCANNER, TARGET = "10.20.1.25", "10.20.0.5"


def _flows(rows: list[tuple[str, str, int, int, int, int]]) -> FlowRows:
    """(src, dst, sport, dport, proto, packets) rows."""
    cols: list[list[int]] = [[] for _ in range(8)]
    for src, dst, sport, dport, proto, packets in rows:
        s, d = addr_to_pair(src), addr_to_pair(dst)
        for c, v in zip(cols, (proto, s[0], s[1], d[0], d[1], sport, dport, packets), strict=True):
            c.append(v)
    return FlowRows.of(*cols)


def _scan_window() -> FlowRows:
    """A workstation's window: its busy HTTPS and SMB sessions, and a SYN scan of its file
    server (one source port, 2-3 packets per probed port)."""
    rows = [(SCANNER, "198.51.100.147", 53000, 443, 6, 400), (SCANNER, TARGET, 50438, 445, 6, 330),
            (SCANNER, "10.20.0.2", 51000, 53, 17, 4), (SCANNER, TARGET, 50437, 445, 6, 3)]
    rows += [(SCANNER, TARGET, 62319, port, 6, 3 if port in (22, 135) else 2) for port in range(1, 300)]
    return _flows(rows)


def test_a_scanners_first_evidence_flows_are_its_probes_not_its_busiest_sessions():
    """syn_out, rst_in and flows_out drive the window: the scan's probes rank first, the
    3-packet probes of open ports before the 2-packet ones (volume breaks the tie), and the
    HTTPS and SMB sessions that carry most packets come after every probe."""
    drivers = [("rst_in", 0.34), ("syn_out", 0.31), ("flows_out", 0.28)]
    ranked = rank(_scan_window(), PeerRows.empty(), SCANNER, drivers, keep=400)
    first = ranked.flows[:10]
    assert all((f["src"], f["dst"], f["sport"]) == (SCANNER, TARGET, 62319) for f in first)
    assert [22, 135] == sorted(f["dport"] for f in first[:2])
    probes = [i for i, f in enumerate(ranked.flows) if f["sport"] == 62319]
    sessions = [i for i, f in enumerate(ranked.flows) if f["sport"] != 62319]
    assert max(probes) < min(sessions)
    assert {"rst_in"} == {f["cause"] for f in first}
    assert community_id(6, SCANNER, TARGET, 62319, 22) in {f["community_id"] for f in first}
    assert TARGET == ranked.peers[0]["ip"]


def test_the_target_of_a_flood_sees_the_flood_before_its_clients():
    """syn_in and flows_in of a server: spoofed 1-2 packet SYNs to its port 443 rank before its
    real clients' longer sessions on the same port, and before its monitoring."""
    rng = np.random.default_rng(1)
    rows = [(f"198.51.{int(a)}.{int(b)}", TARGET, int(p), 443, 6, int(k))
            for a, b, p, k in zip(rng.integers(0, 255, 500), rng.integers(1, 255, 500), rng.integers(1024, 65535, 500),
                                  rng.integers(1, 3, 500), strict=True)]
    rows += [("10.20.1.10", TARGET, 55000 + i, 443, 6, 80) for i in range(5)] + [("10.20.0.10", TARGET, 64000, 9100, 6, 70)]
    ranked = rank(_flows(rows), PeerRows.empty(), TARGET, [("syn_in", 0.35), ("flows_in", 0.34), ("peers_in", 0.12)], keep=600)
    real = [i for i, f in enumerate(ranked.flows) if f["src"].startswith("10.20.")]
    assert min(real) >= 500
    assert {"port": 443, "proto": "tcp"} == {k: ranked.ports[0][k] for k in ("port", "proto")}


def test_volume_features_rank_by_volume():
    """A bulk transfer's feature (bytes_out) is explained by the biggest flows."""
    rows = [(SCANNER, TARGET, 50000 + i, 445, 6, 10 * (i + 1)) for i in range(5)]
    ranked = rank(_flows(rows), PeerRows.empty(), SCANNER, [("bytes_out", 0.9)])
    assert [50 - 10 * i for i in range(5)] == [f["packets"] for f in ranked.flows]


def test_the_link_sees_a_scan_by_its_client_and_a_flood_by_its_server():
    """`global` has no side: the scanner's probes lead a link-wide scan, and not the
    workstations' sessions to other servers on the same ports."""
    rows = [(SCANNER, TARGET, 62319, port, 6, 2) for port in range(1, 200)]
    rows += [(f"10.20.1.{i}", "203.0.113.9", 50000 + i, 443, 6, 3) for i in range(10, 40)]
    ranked = rank(_flows(rows), PeerRows.empty(), "global", [("rst_out", 0.6), ("syn_out", 0.2), ("ports_out", 0.1)], keep=50)
    assert all(f["src"] == SCANNER for f in ranked.flows[:20])


def test_the_window_stage_tally_is_read_whole_and_a_plain_mapping_gives_what_it_lists():
    """WindowRows reads every flow of an entity from the window stage's evidence; a mapping of
    WindowEvidence (a Kafka scorer's window) gives its listed flows."""
    from detector.capture.windows._base import LazyEvidence

    flows = _scan_window()
    n = len(flows)
    columns = {
        "flows": (np.full(n, 3, np.int64), flows.proto.astype(np.uint64), flows.src_hi, flows.src_lo, flows.dst_hi, flows.dst_lo,
                  flows.sport.astype(np.uint64), flows.dport.astype(np.uint64), flows.packets),
        "peers": (np.array([3], np.int64), np.array([addr_to_pair(TARGET)[0]], np.uint64), np.array([addr_to_pair(TARGET)[1]], np.uint64),
                  np.array([900.0]), np.array([60000.0])),
        "ports": (np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0)),
    }
    lazy = LazyEvidence(columns, {SCANNER: 3}, top_k=5)
    got, peers = WindowRows(lazy).of(SCANNER)
    assert n == len(got) and 1 == peers.hi.shape[0]
    assert 5 == len(lazy[SCANNER].top_flows)  # the window stage's own view: five, by volume
    listed = WindowEvidence(top_flows=[{"src": SCANNER, "dst": TARGET, "sport": 62319, "dport": 22, "proto": "tcp", "packets": 2},
                                       {"src": "<b>", "dst": TARGET, "sport": 1, "dport": 2, "proto": "tcp", "packets": 2}])
    got, _ = WindowRows({SCANNER: listed}).of(SCANNER)
    assert 1 == len(got)  # the flow whose address is not one is left out
    assert 1 == len(listed_rows(listed)[0])


def _event(action: str, score: float, evidence: WindowEvidence, features: list[FeatureContribution]) -> IncidentEvent:
    return IncidentEvent(event_id=f"e-{action}", incident_id="inc-1", action=action, entity=SCANNER, entity_class="host",  # type: ignore[arg-type]
                         first_seen_ns=0, last_seen_ns=60 * 10**9, emitted_ns=60 * 10**9, severity="high", severity_score=75,
                         category="scan", score=score, threshold=2.0, windows=1, top_features=features, evidence=evidence,
                         rule_id="r", rule_name="r")


def _scores(score: float, features: list[FeatureContribution], end_ns: int) -> ScoreBatch:
    names = ("rst_in", "syn_out", "flows_out")
    from detector.contracts import FeatureSchema

    schema = FeatureSchema("packet", 2, names, ("packets", "packets", "flows"))
    return ScoreBatch(end_ns - 60 * 10**9, end_ns, [SCANNER], ["host"], np.array([score], np.float32), np.array([2.0], np.float32),
                      np.array([True]), np.array([True]), np.array([[0, 1, 2]]), np.array([[f.share for f in features]], np.float32),
                      np.array([[f.observed for f in features]], np.float32), np.array([[f.expected for f in features]], np.float32),
                      schema)


def test_events_carry_their_peak_windows_evidence_by_cause():
    """The opening event's evidence is its window's, by cause (probes, not the HTTPS session
    the tracker's volume ranking put first); an update whose peak came earlier carries that
    peak window's; after a restart (no window kept) the event's own flows are ranked."""
    features = [FeatureContribution("rst_in", "packets", 0.34, 50.0, 0.03), FeatureContribution("syn_out", "packets", 0.31, 50.0, 0.2),
                FeatureContribution("flows_out", "flows", 0.28, 50.0, 0.4)]
    flows = _scan_window()
    n = len(flows)
    columns = {
        "flows": (np.zeros(n, np.int64), flows.proto.astype(np.uint64), flows.src_hi, flows.src_lo, flows.dst_hi, flows.dst_lo,
                  flows.sport.astype(np.uint64), flows.dport.astype(np.uint64), flows.packets),
        "peers": (np.zeros(0, np.int64),) + tuple(np.zeros(0, np.uint64) for _ in range(2)) + (np.zeros(0), np.zeros(0)),
        "ports": (np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0)),
    }
    from detector.capture.windows._base import LazyEvidence

    def window(end_ns: int) -> WindowBatch:
        return WindowBatch(end_ns - 60 * 10**9, end_ns, [SCANNER], ["host"], np.zeros((1, 6, 3), np.float32), _scores(1, features, end_ns).schema,
                           LazyEvidence(columns, {SCANNER: 0}, 5))

    busiest = WindowEvidence(top_flows=[{"community_id": "x", "src": SCANNER, "dst": "198.51.100.147", "sport": 53000, "dport": 443,
                                         "proto": "tcp", "packets": 400}])
    ranker = CauseRanker()
    opened = _event("opened", 40.0, busiest, features)
    ranker.explain(window(60 * 10**9), _scores(40.0, features, 60 * 10**9), [opened])
    assert 62319 == opened.evidence.top_flows[0]["sport"] and 5 == len(opened.evidence.top_flows)
    peak = opened.evidence
    updated = _event("updated", 40.0, busiest, features)  # the peak stays the first window
    ranker.explain(window(120 * 10**9), _scores(30.0, features, 120 * 10**9), [updated])
    assert peak.top_flows == updated.evidence.top_flows
    fresh = CauseRanker()  # a restart: the peak window is gone
    resolved = _event("resolved", 40.0, WindowEvidence(top_flows=[dict(busiest.top_flows[0]), dict(peak.top_flows[0])]), features)
    fresh.explain(window(180 * 10**9), _scores(1.0, features, 180 * 10**9), [resolved])
    assert 62319 == resolved.evidence.top_flows[0]["sport"]
