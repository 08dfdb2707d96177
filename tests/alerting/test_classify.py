"""Roles and categories: what an anomalous window says happened, and to whom.

The first cases are windows netad scored on the demo capture (`netad synth`: a SYN scan from
10.20.1.26 of 10.20.0.5, an SSH brute force from 203.0.113.66 on 10.20.0.22, a spoofed SYN
flood on 10.20.0.6), their top features and evidence as the scorer reported them. The rest
are built from what each behaviour drives.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from detector.alerting.classify import CATEGORIES, Classification, classify, lean
from detector.contracts import FeatureContribution, WindowEvidence, WindowScore

T0 = 1_700_010_380_000_000_000
UNITS = {"pkts": "packets", "bytes": "bytes", "flows": "flows", "peers": "hosts", "ports": "ports", "syn": "packets",
         "rst": "packets", "icmp": "packets", "mean": "bytes", "new": "hosts", "young": "windows"}


def _window(entity: str, features: list[tuple[str, float, float, float]], peers: list[tuple[str, int, int]] = (),
            ports: list[tuple[int, str, int]] = (), flows: list[tuple[str, str, int, int, str, int]] = (),
            entity_class: str = "host") -> WindowScore:
    """A scored window: features (name, share, observed, expected), peers (ip, packets, bytes),
    ports (port, proto, packets), flows (src, dst, sport, dport, proto, packets)."""
    evidence = WindowEvidence(
        top_peers=[{"ip": ip, "packets": p, "bytes": b} for ip, p, b in peers],
        top_ports=[{"port": port, "proto": proto, "packets": p} for port, proto, p in ports],
        top_flows=[{"community_id": f"1:{i}", "src": s, "dst": d, "sport": sp, "dport": dp, "proto": pr, "packets": p}
                   for i, (s, d, sp, dp, pr, p) in enumerate(flows)],
    )
    top = [FeatureContribution(n, UNITS.get(n.split("_")[0], "?"), sh, ob, ex) for n, sh, ob, ex in features]
    return WindowScore(T0, T0 + 60_000_000_000, entity, entity_class, 20.0, 2.0, True, True, top, evidence)


DEMO: dict[str, tuple[WindowScore, tuple[str, str, str, str]]] = {
    "scanner": (
        _window("10.20.1.26", [("rst_in", 0.4335, 33.333, 0.003), ("syn_out", 0.2636, 33.833, 0.768),
                               ("flows_out", 0.2157, 34.333, 1.418)],
                peers=[("10.20.0.5", 406, 17056), ("203.0.113.225", 297, 284922), ("10.20.0.2", 6, 627),
                       ("10.20.0.10", 2, 168)],
                ports=[(62319, "tcp", 202), (443, "tcp", 175), (61844, "tcp", 123), (53, "udp", 3)],
                flows=[("10.20.1.26", "203.0.113.225", 61844, 443, "tcp", 297),
                       ("10.20.1.26", "10.20.0.5", 62319, 9100, "tcp", 3), ("10.20.1.26", "10.20.0.5", 62319, 22, "tcp", 3),
                       ("10.20.1.26", "10.20.0.5", 62319, 1023, "tcp", 2)]),
        ("scan", "originator", "10.20.1.26", "10.20.0.5"),
    ),
    "scanner_busy_window": (  # the probes drowned among its own HTTPS flows in the evidence
        _window("10.20.1.26", [("rst_in", 0.4078, 55.667, 0.017), ("syn_out", 0.29, 56.333, 0.93),
                               ("flows_out", 0.2235, 57.0, 2.059)],
                peers=[("10.20.0.5", 674, 28312), ("203.0.113.225", 91, 87592), ("198.51.100.118", 83, 66758),
                       ("10.20.0.6", 58, 41572)],
                ports=[(62319, "tcp", 336), (443, "tcp", 94), (61844, "tcp", 59), (61845, "tcp", 48)],
                flows=[("10.20.1.26", "203.0.113.225", 61844, 443, "tcp", 91),
                       ("10.20.1.26", "198.51.100.118", 61845, 443, "tcp", 83),
                       ("10.20.1.26", "10.20.0.6", 62337, 443, "tcp", 58), ("10.20.1.26", "10.20.0.5", 62319, 135, "tcp", 3)]),
        ("scan", "originator", "10.20.1.26", "10.20.0.5"),
    ),
    "scan_victim": (  # its evidence flows start at the victim: the capture keeps a flow's first packet in the window
        _window("10.20.0.5", [("rst_out", 0.3587, 33.333, 0.036), ("syn_in", 0.2762, 34.0, 0.44),
                              ("flows_in", 0.2504, 34.167, 0.929)],
                peers=[("10.20.1.26", 406, 17056), ("10.20.0.10", 73, 68689), ("10.20.1.28", 24, 10642),
                       ("10.20.1.17", 9, 880)],
                ports=[(62319, "tcp", 202), (63420, "tcp", 46), (9100, "tcp", 27), (445, "tcp", 19)],
                flows=[("10.20.0.5", "10.20.0.10", 9100, 63420, "tcp", 71), ("10.20.0.5", "10.20.1.28", 445, 50342, "tcp", 24),
                       ("10.20.0.5", "10.20.1.17", 445, 65075, "tcp", 9), ("10.20.0.5", "10.20.1.26", 22, 62319, "tcp", 3)]),
        ("scan", "target", "10.20.1.26", "10.20.0.5"),
    ),
    "scan_victim_beside_a_file_copy": (  # a benign SMB copy has as many packets as the scanner
        _window("10.20.0.5", [("syn_in", 0.3, 52.333, 0.4), ("rst_out", 0.3, 51.5, 0.05), ("flows_in", 0.2, 52.5, 0.9)],
                peers=[("10.20.1.29", 746, 711190), ("10.20.1.25", 660, 52163), ("10.20.0.10", 63, 58395),
                       ("10.20.1.27", 19, 15367)],
                flows=[("10.20.0.5", "10.20.1.29", 445, 64007, "tcp", 746), ("10.20.0.5", "10.20.0.10", 9100, 64479, "tcp", 61),
                       ("10.20.0.5", "10.20.1.25", 445, 50438, "tcp", 33), ("10.20.0.5", "10.20.1.27", 445, 63114, "tcp", 19),
                       ("10.20.0.5", "10.20.1.25", 9100, 62319, "tcp", 3)]),
        ("scan", "target", "10.20.1.25", "10.20.0.5"),
    ),
    "ssh_victim": (
        _window("10.20.0.22", [("syn_in", 0.3882, 18.5, 0.864), ("flows_in", 0.2849, 18.667, 1.35),
                               ("rst_in", 0.2048, 4.667, 0.045)],
                peers=[("203.0.113.66", 2499, 557960), ("10.20.0.10", 69, 64562)],
                ports=[(22, "tcp", 1413), (63417, "tcp", 43), (9100, "tcp", 24), (63609, "tcp", 14)],
                flows=[("10.20.0.22", "10.20.0.10", 9100, 63417, "tcp", 67), ("10.20.0.22", "203.0.113.66", 22, 63604, "tcp", 30),
                       ("10.20.0.22", "203.0.113.66", 22, 63583, "tcp", 30), ("10.20.0.22", "203.0.113.66", 22, 63609, "tcp", 30)]),
        ("brute-force", "target", "203.0.113.66", "10.20.0.22"),
    ),
    "synflood_victim": (  # spoofed sources: its busiest peer is a bystander, not the attacker
        _window("10.20.0.6", [("syn_in", 0.3712, 19620.0, 0.557), ("flows_in", 0.292, 19620.166, 2.386),
                              ("peers_in", 0.1219, 19621.334, 3.489)],
                peers=[("10.20.1.26", 136, 128344), ("10.20.1.11", 100, 85419), ("10.20.0.10", 75, 71092),
                       ("10.20.1.21", 69, 55201)],
                ports=[(443, "tcp", 117877), (62354, "tcp", 85), (63419, "tcp", 47), (54579, "tcp", 41)],
                flows=[("10.20.0.6", "10.20.1.26", 443, 62354, "tcp", 136), ("10.20.0.6", "10.20.0.10", 9100, 63419, "tcp", 73),
                       ("10.20.0.6", "10.20.1.11", 443, 56860, "tcp", 71), ("10.20.0.6", "10.20.1.21", 443, 54579, "tcp", 69)]),
        ("flood", "target", "", "10.20.0.6"),
    ),
}


def test_the_categories_read_what_moved_furthest_not_what_the_score_counted_most() -> None:
    """The explanation ranks the features by what the score counted of each (divided by each
    one's error scale), which lifts a rare feature: a brute-forced host's few resets from its
    attacker lead it, and read as the peers' refusals they make the host the originator. The
    categories read the undivided ranking (`deviations`): the sessions it received."""
    victim, expected = DEMO["ssh_victim"]
    counted = [FeatureContribution("rst_in", "packets", 0.55, 4.667, 0.045),
               FeatureContribution("syn_in", "packets", 0.12, 18.5, 0.864),
               FeatureContribution("young_peer_returns", "windows", 0.1, 1.0, 0.0)]
    explained = dataclasses.replace(victim, top_features=counted, deviations=victim.top_features)
    assert expected == _reading(classify(explained))
    assert explained.moved is victim.top_features
    read_as_counted = dataclasses.replace(victim, top_features=counted, deviations=None)
    assert ("brute-force", "originator") == _reading(classify(read_as_counted))[:2]


def _reading(c: Classification) -> tuple[str, str, str, str]:
    return c.category, c.role, c.originator, c.target


@pytest.mark.parametrize("name", sorted(DEMO))
def test_demo_windows(name: str) -> None:
    """The demo's attacks read as what they were, with attacker and victim on their sides."""
    score, expected = DEMO[name]
    assert expected == _reading(classify(score))


ATTACKER, VICTIM = "203.0.113.9", "10.20.0.7"
CASES: dict[str, tuple[WindowScore, tuple[str, str, str, str]]] = {
    "amplification victim: large UDP datagrams from many reflectors": (
        _window(VICTIM, [("bytes_in", 0.6, 4.1e6, 2e3), ("peers_in", 0.2, 300.0, 2.0), ("pkts_in", 0.1, 3000.0, 5.0)],
                peers=[("198.51.100.1", 40, 120_000), ("198.51.100.2", 38, 114_000), ("198.51.100.3", 35, 105_000)],
                ports=[(41000, "udp", 113)]),
        ("amplification", "target", "", VICTIM),
    ),
    "reflector: the home DNS server answers spoofed queries with large responses": (
        _window("10.20.0.2", [("bytes_out", 0.5, 3.0e6, 1e4), ("pkts_out", 0.3, 2100.0, 20.0), ("flows_in", 0.1, 2000.0, 15.0)],
                peers=[(ATTACKER, 12_000, 36_000_000)], ports=[(53, "udp", 12_000), (41000, "udp", 12_000)],
                flows=[("10.20.0.2", ATTACKER, 53, 41000, "udp", 12_000)]),
        ("amplification", "originator", "10.20.0.2", ATTACKER),
    ),
    "beacon: a young peer keeps coming back": (
        _window("10.20.1.12", [("young_peer_returns", 0.7, 9.0, 1.0), ("new_peers", 0.1, 1.0, 0.2)],
                peers=[("198.51.100.23", 12, 1500), ("10.20.0.2", 4, 400)],
                flows=[("10.20.1.12", "198.51.100.23", 51000, 443, "tcp", 12)]),
        ("beaconing", "originator", "10.20.1.12", "198.51.100.23"),
    ),
    "exfiltration-like: bytes out to one peer": (
        _window("10.20.1.19", [("bytes_out", 0.8, 9.0e7, 1e5), ("pkts_out", 0.1, 60_000.0, 100.0)],
                peers=[(ATTACKER, 61_000, 91_000_000)], ports=[(443, "tcp", 61_000)],
                flows=[("10.20.1.19", ATTACKER, 50123, 443, "tcp", 61_000)]),
        ("exfiltration-like", "originator", "10.20.1.19", ATTACKER),
    ),
    "new service: a port the host never served gets sessions": (
        _window("10.20.0.9", [("new_ports", 0.5, 2.0, 0.1), ("flows_in", 0.3, 6.0, 1.0), ("bytes_in", 0.1, 9000.0, 800.0)],
                peers=[("10.20.1.5", 90, 12_000), ("10.20.1.6", 10, 900)],
                flows=[("10.20.1.5", "10.20.0.9", 52000, 4444, "tcp", 45), ("10.20.1.5", "10.20.0.9", 52001, 4444, "tcp", 45)]),
        ("new-service", "target", "10.20.1.5", "10.20.0.9"),
    ),
    "sweep: one port of many hosts (no single target)": (
        _window("10.20.1.40", [("peers_out", 0.6, 200.0, 3.0), ("syn_out", 0.2, 210.0, 2.0), ("ports_out", 0.1, 2.0, 2.0)],
                peers=[("10.20.0.5", 300, 250_000), ("10.20.2.1", 2, 120), ("10.20.2.2", 2, 120)],
                flows=[("10.20.1.40", "10.20.2.1", 40000, 445, "tcp", 2), ("10.20.1.40", "10.20.2.2", 40001, 445, "tcp", 2)]),
        ("sweep", "originator", "10.20.1.40", ""),
    ),
    "sweep told by the probe flows alone": (
        _window("10.20.1.40", [("syn_out", 0.5, 30.0, 2.0), ("rst_in", 0.3, 25.0, 0.1)],
                peers=[("10.20.2.1", 2, 120), ("10.20.2.2", 2, 120), ("10.20.2.3", 2, 120)],
                flows=[("10.20.1.40", f"10.20.2.{i}", 40000 + i, 3389, "tcp", 2) for i in (1, 2, 3)]),
        ("sweep", "originator", "10.20.1.40", ""),
    ),
    "masscan of one host: many ports at a flood's rate is still a scan": (
        _window(VICTIM, [("ports_in", 0.5, 5000.0, 3.0), ("syn_in", 0.3, 5100.0, 1.0), ("rst_out", 0.1, 5000.0, 0.1)],
                peers=[(ATTACKER, 30_000, 1_200_000)]),
        ("scan", "target", ATTACKER, VICTIM),
    ),
    "single-source SYN flood: sessions never get past the handshake": (
        _window(VICTIM, [("syn_in", 0.6, 20_000.0, 1.0), ("flows_in", 0.3, 20_000.0, 2.0)],
                peers=[(ATTACKER, 120_000, 4_800_000)], ports=[(443, "tcp", 120_000)],
                flows=[(ATTACKER, VICTIM, 1000 + i, 443, "tcp", 1) for i in range(5)]),
        ("flood", "target", ATTACKER, VICTIM),
    ),
    "SYN flood sent: the flooder is the originator": (
        _window("10.20.1.66", [("syn_out", 0.6, 20_000.0, 1.0), ("pkts_out", 0.3, 20_000.0, 30.0)],
                peers=[(ATTACKER, 120_000, 4_800_000)],
                flows=[("10.20.1.66", ATTACKER, 1000 + i, 80, "tcp", 1) for i in range(5)]),
        ("flood", "originator", "10.20.1.66", ATTACKER),
    ),
    "brute force sent: repeated logins to one service port": (
        _window("10.20.1.66", [("flows_out", 0.5, 20.0, 1.0), ("syn_out", 0.3, 20.0, 1.0)],
                peers=[(VICTIM, 1800, 400_000)],
                flows=[("10.20.1.66", VICTIM, 50000 + i, 3389, "tcp", 40) for i in range(4)]),
        ("brute-force", "originator", "10.20.1.66", VICTIM),
    ),
    "brute force victim: every new session brings a new client port": (
        _window(VICTIM, [("new_ports", 0.5, 110.0, 2.0), ("flows_in", 0.3, 18.0, 1.0), ("syn_in", 0.1, 18.0, 1.0)],
                peers=[(ATTACKER, 2500, 560_000)],
                flows=[(VICTIM, ATTACKER, 22, 60000 + i, "tcp", 30) for i in range(5)]),
        ("brute-force", "target", ATTACKER, VICTIM),
    ),
    "scan victim: the probed ports are all new": (
        _window(VICTIM, [("new_ports", 0.5, 330.0, 2.0), ("rst_out", 0.3, 33.0, 0.1), ("syn_in", 0.1, 34.0, 1.0)],
                peers=[(ATTACKER, 400, 17_000), ("10.20.0.10", 70, 68_000)]),
        ("scan", "target", ATTACKER, VICTIM),
    ),
    "new peers and ports alone: unusual for this host": (
        _window("10.20.1.15", [("new_peers", 0.5, 12.0, 0.5), ("new_ports", 0.4, 9.0, 0.4)],
                peers=[("198.51.100.7", 50, 20_000), ("198.51.100.8", 45, 18_000), ("198.51.100.9", 40, 16_000)]),
        ("unusual-for-host", "originator", "10.20.1.15", ""),
    ),
    "a big download from one peer: unusual, not a flood": (
        _window(VICTIM, [("bytes_in", 0.7, 5e7, 1e5), ("mean_pkt_bytes", 0.2, 1400.0, 300.0)],
                peers=[("198.51.100.80", 40_000, 56_000_000)], ports=[(50000, "tcp", 40_000)]),
        ("unusual-for-host", "target", "198.51.100.80", VICTIM),
    ),
    "features this netad does not know count by their direction suffix": (
        _window(VICTIM, [("weird_in", 0.6, 5.0, 1.0), ("odd_metric", 0.3, 2.0, 1.0)]),
        ("unusual-for-host", "target", "", VICTIM),
    ),
    "no direction in the features: the flows' service side decides": (
        _window(VICTIM, [("icmp_err", 0.6, 50.0, 1.0), ("mean_pkt_bytes", 0.3, 80.0, 400.0)],
                flows=[(VICTIM, ATTACKER, 22, 60000, "tcp", 10)]),
        ("unusual-for-host", "target", "", VICTIM),
    ),
    "no features, no evidence": (
        _window(VICTIM, []),
        ("unusual-for-host", "originator", VICTIM, ""),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_behaviours(name: str) -> None:
    score, expected = CASES[name]
    assert expected == _reading(classify(score))


def test_link_reads_its_own_features_without_hosts() -> None:
    """The link has no counterpart of its own: the tracker names its hosts (test_incidents)."""
    link = _window("global", [("syn_in", 0.4, 18_000.0, 0.1), ("flows_in", 0.4, 18_000.0, 0.1)], entity_class="global",
                   peers=[("10.20.0.6", 100, 9000)])
    assert ("flood", "target", "", "") == _reading(classify(link))


def test_every_category_has_a_title_and_defensible_techniques() -> None:
    assert {"scan": ("T1046",), "sweep": ("T1018", "T1046"), "brute-force": ("T1110",), "flood": ("T1498", "T1499"),
            "amplification": ("T1498.002",), "beaconing": ("T1071",), "exfiltration-like": ("T1041", "T1048"),
            "new-service": ("T1021",), "unusual-for-host": ()} == {n: c.techniques for n, c in CATEGORIES.items()}
    assert all(c.title for c in CATEGORIES.values())


@pytest.mark.parametrize(("name", "expected"), [
    ("syn_out", ("originator", 1.0)), ("peers_in", ("target", 1.0)), ("rst_in", ("originator", 1.0)),
    ("rst_out", ("target", 1.0)), ("new_ports", ("originator", 0.5)), ("young_peer_returns", ("originator", 0.5)),
    ("mean_pkt_bytes", (None, 0.0)), ("icmp_err", (None, 0.0)), ("login", (None, 0.0)), ("bytes_out", ("originator", 1.0)),
])
def test_feature_leans(name: str, expected: tuple[Any, float]) -> None:
    """Out-features point to the originator, in-features to the target; resets travel back."""
    assert expected == lean(name)


def test_hostile_evidence_is_ignored_not_fatal() -> None:
    """Evidence rows that are not what the capture writes do not raise: they are skipped."""
    score = _window(VICTIM, [("syn_in", 0.9, 10.0, 1.0)])
    assert score.evidence is not None
    score.evidence.top_peers = [{"ip": "not-an-ip", "packets": "x"}, "junk", {"ip": ATTACKER, "packets": float("nan")}]
    score.evidence.top_flows = [{"src": VICTIM, "dst": ATTACKER, "sport": "a", "dport": 1, "proto": "tcp"}, None]
    score.evidence.top_ports = [{"port": 1, "proto": "udp", "packets": None}]
    assert "target" == classify(score).role
