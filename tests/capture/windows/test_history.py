"""Each entity's peer and port history: the novelty features of a window (capture.windows._history)."""

from __future__ import annotations

import numpy as np
import pytest

from detector.capture._addr import group_address
from detector.capture.flows import FlowTable
from detector.capture.schemas import HISTORY_FEATURES
from detector.capture.windows import WindowAggregator
from detector.capture.windows._history import PeerHistory, entity_key
from detector.capture.windows.flow import FlowWindowAggregator
from detector.contracts import PROTO_TCP, PROTO_UDP, DnsAnswers, addr_to_pair
from tests.conftest import make_batch

S = 1_000_000_000
NEW_PEERS, NEW_PORTS, YOUNG = range(3)


def _keys(n: int) -> np.ndarray:
    """The history keys of entity rows 0..n-1, whose addresses are row + 1000."""
    return entity_key(np.zeros(n, np.uint64), np.arange(n, dtype=np.uint64) + 1000)


def _window(history: PeerHistory, end_s: float, contacts: dict[int, list[tuple[int, ...]]], n: int = 3) -> np.ndarray:
    """One window: contacts[entity row] = [(peer, port[, connection]), ...], each a TCP flow
    from the entity (address row + 1000) to the peer, from source port 40000 + connection (a
    flow the previous window held too is the same connection: give it the same number)."""
    keys = _keys(n)
    rows = np.array([r for r, cs in contacts.items() for _ in cs], np.int64)
    peer = np.array([c[0] for cs in contacts.values() for c in cs], np.uint64)
    port = np.array([c[1] for cs in contacts.values() for c in cs], np.uint64)
    conn = np.array([c[2] if len(c) > 2 else 0 for cs in contacts.values() for c in cs], np.uint64)
    zero = np.zeros(rows.shape[0], np.uint64)
    peers = (rows, zero, peer)
    flows = (rows, np.full(rows.shape[0], PROTO_TCP, np.uint64), zero, rows.astype(np.uint64) + 1000, zero, peer,
             conn + 40000, port)
    return history.observe(keys, peers, flows, int(end_s * S))


def test_nothing_is_new_before_the_entity_is_warm_then_new_peers_and_ports_count():
    h = PeerHistory(history_s=3600, warmup_s=600)
    for t in range(60, 660, 60):  # 10 minutes of the same two peers
        out = _window(h, t, {0: [(10, 443), (11, 53)]})
    assert out[0, NEW_PEERS] == 0 and out[0, NEW_PORTS] == 0
    out = _window(h, 660, {0: [(10, 443)] + [(100 + i, 23) for i in range(20)] + [(200, 2323)]})
    assert out[0, NEW_PEERS] == 21 and out[0, NEW_PORTS] == 2
    assert out[1:].sum() == 0  # silent entities: nothing
    # a fresh entity: all new, not counted until its own history is warm
    out = _window(h, 720, {1: [(300 + i, 80) for i in range(5)]})
    assert out[1, NEW_PEERS] == 0


def test_a_young_peer_that_keeps_coming_back_climbs_a_known_one_or_a_long_session_does_not():
    """Returns are windows with a fresh flow (a new connection, or one back after a silence)
    to a peer first met after the warm-up: a beacon slower than the window climbs one per
    contact, one faster than the window one per window; a known peer and a new peer in one
    long session do not climb."""
    h = PeerHistory(history_s=7200, warmup_s=600)
    for t in range(60, 660, 60):
        _window(h, t, {0: [(10, 443)], 1: [(11, 443)]})
    climbs, fast = [], []
    for k, t in enumerate(range(660, 660 + 12 * 300, 60)):
        contacts = [(10, 443)] + ([(99, 443, k)] if k % 5 == 0 else [])  # a beacon every 5 windows, a new connection each
        contacts += [(50, 443, 7)] if 20 <= k < 40 else []  # a new peer in one 20-window session
        out = _window(h, t, {0: contacts, 1: [(77, 8443, k)]})  # row 1: a new connection every window
        climbs.append(out[0, YOUNG])
        fast.append(out[1, YOUNG])
    assert climbs[0] == 0  # its first contact is a new peer, not a return
    # one return alone is not counted (a site visited twice); at the second the peer is in a
    # regular series, and every return counts: one per contact, held between the contacts
    assert climbs == [0.0] * 10 + [k // 5 for k in range(10, 60)]
    assert fast == [0, 0] + list(range(2, 60))


def test_a_beacon_that_stops_leaves_its_series_after_twice_its_mean_gap():
    """The beacon's level holds through a silence up to twice its mean gap between contacts
    (here 300 s: its last contact at 3,960 s), and is gone past it."""
    h = PeerHistory(history_s=7200, warmup_s=600)
    for t in range(60, 660, 60):
        _window(h, t, {0: [(10, 443)]})
    for k, t in enumerate(range(660, 660 + 12 * 300, 60)):
        _window(h, t, {0: [(10, 443)] + ([(99, 443, k)] if k % 5 == 0 else []) + ([(50, 443, 7)] if 20 <= k < 40 else [])})
    level = {t: _window(h, t, {0: [(10, 443)]})[0, YOUNG] for t in range(4260, 4680, 60)}
    assert level == {4260: 11, 4320: 11, 4380: 11, 4440: 11, 4500: 11, 4560: 11, 4620: 0}
    # a session that pauses and comes back is fresh again: a return, its first (not counted)...
    assert _window(h, 4680, {0: [(50, 443, 7)]})[0, YOUNG] == 0
    # ...and, after another silent window, its second is
    _window(h, 4740, {0: [(10, 443)]})
    assert _window(h, 4800, {0: [(50, 443, 7)]})[0, YOUNG] == 1


def test_only_a_regular_series_holds_its_level_between_contacts():
    """A beacon with jitter (gaps of 4-6 windows) holds its level between contacts; a site
    visited in bursts (gaps of 1 window, then long pauses: about as irregular as random visits)
    counts only in the windows that reach it, once its first burst (three windows in a row: a
    series of one window's pace, held for two) is past. Both were met after 20 minutes of
    history, longer than the site's longest silence (16 windows): neither can be an old peer
    whose last call came before the history began."""
    h = PeerHistory(history_s=7200, warmup_s=600)
    for t in range(60, 1260, 60):
        _window(h, t, {0: [(10, 443)], 1: [(11, 443)]})
    beacon = {0, 5, 9, 15, 20, 24, 30, 35, 40, 44}
    site = {0, 1, 2, 14, 15, 16, 17, 33, 34}
    held, burst = [], []
    for k, t in enumerate(range(1260, 1260 + 46 * 60, 60)):
        out = _window(h, t, {0: [(10, 443)] + ([(99, 443, k)] if k in beacon else []),
                             1: [(11, 443)] + ([(98, 443, k)] if k in site else [])})
        held.append(out[0, YOUNG])
        burst.append(out[1, YOUNG])
    assert all(held[k] > 0 for k in range(9, 46))  # from its second return on, in every window
    assert [k for k, level in enumerate(burst) if level] == [2, 3, 4, 14, 15, 16, 17, 33, 34]


def test_a_series_slower_than_the_history_before_its_first_contact_is_not_young():
    """A peer calling every 70 minutes, first met 63 minutes into the history, may have
    called at that beat all along (its last call just before the history began): its
    returns are not counted. The same beat met after 71 minutes of history climbs, as does a
    10-minute beacon met at 63 minutes. (A device's NTP sync, about every 70 minutes, first
    seen 3 minutes after the warm-up of fold B's 6 h of honeypot training, was such a series.)"""
    h = PeerHistory(history_s=6 * 3600, warmup_s=3600)
    start = 60
    hourly = {start + 3780 + k * 4200 for k in range(4)}  # row 0: met at 63 min, every 70 min
    late = {start + 4260 + k * 4200 for k in range(4)}  # row 1: met at 71 min, every 70 min
    beacon = {start + 3780 + k * 600 for k in range(20)}  # row 2: met at 63 min, every 10 min
    levels = {0: [], 1: [], 2: []}
    for t in range(start, start + 4260 + 3 * 4200 + 60, 60):
        contacts = {r: [(10 + r, 443)] for r in range(3)}
        for r, (times, peer) in enumerate(((hourly, 99), (late, 98), (beacon, 97))):
            if t in times:
                contacts[r].append((peer, 123, t))
        out = _window(h, t, contacts)
        for r in range(3):
            levels[r].append(out[r, YOUNG])
    assert max(levels[0]) == 0
    assert max(levels[1]) == 3 and max(levels[2]) >= 3


def test_a_peer_the_network_has_long_known_is_not_young_to_a_host_that_meets_it_late():
    """Host 1 checks in with an outside service every 5 windows from the start; host 0 starts
    doing the same after its warm-up: a regular series to a peer new to host 0, but not to the
    network (row 2, its key the history's network_key, sees every peer, as `global` does).
    The same calls to a peer new to both climb; without a network entity, youth is the host's."""

    def run(network_key: int | None, beacon: int) -> float:
        h = PeerHistory(history_s=7200, warmup_s=600, network_key=network_key)
        top = 0.0
        for k, t in enumerate(range(60, 60 + 60 * 60, 60)):
            host0 = [(10, 443)] + ([(beacon, 443, k)] if k >= 20 and k % 5 == 0 else [])
            host1 = [(11, 443)] + ([(77, 443, k)] if k % 5 == 0 else [])
            top = max(top, float(_window(h, t, {0: host0, 1: host1, 2: host0 + host1})[0, YOUNG]))
        return top

    network = int(_keys(3)[2])
    assert run(network, beacon=77) == 0  # known to the network since the start
    assert run(network, beacon=88) > 0  # new to the network too
    assert run(None, beacon=77) > 0  # young by the host's own history


def test_a_peer_inside_home_net_is_never_young():
    """A file server's new client, a workstation's first use of a local server: they come back
    all day, and they are not a beacon. The same contacts to a peer outside climb."""
    inside = np.uint64(99)
    h = PeerHistory(history_s=7200, warmup_s=600, is_home=lambda hi, lo: lo == inside)
    for t in range(60, 660, 60):
        _window(h, t, {0: [(10, 443)], 1: [(10, 443)]})
    for k, t in enumerate(range(660, 660 + 10 * 60, 60)):
        out = _window(h, t, {0: [(99, 445, k)], 1: [(98, 443, k)]})
    assert out[0, YOUNG] == 0 and out[1, YOUNG] == 9


def test_a_multicast_group_or_the_broadcast_address_is_never_young():
    """A device's SSDP or mDNS announcements go to a group, not to a party that answers: a
    flow to it that comes back after each silence (as Zeek logs SSDP, a new connection after
    a minute of quiet) is no beacon. The same contacts to a host's address outside climb."""
    ssdp, broadcast = (int(np.uint64(addr_to_pair(a)[1])) for a in ("239.255.255.250", "255.255.255.255"))
    h = PeerHistory(history_s=7200, warmup_s=600)
    for t in range(60, 660, 60):
        _window(h, t, {0: [(10, 443)], 1: [(10, 443)], 2: [(10, 443)]})
    outside = int(np.uint64(addr_to_pair("198.51.100.7")[1]))
    for k, t in enumerate(range(660, 660 + 10 * 60, 60)):
        out = _window(h, t, {0: [(ssdp, 1900, k)], 1: [(broadcast, 67, k)], 2: [(outside, 1900, k)]})
    assert (out[0, YOUNG], out[1, YOUNG], out[2, YOUNG]) == (0, 0, 9)
    pairs = [addr_to_pair(a) for a in ("224.0.0.251", "239.255.255.250", "255.255.255.255", "ff02::fb", "ff05::1:3",
                                       "223.255.255.255", "240.0.0.1", "192.168.1.255", "fe80::1", "2001:db8::ff")]
    hi, lo = (np.array(c, np.uint64) for c in zip(*pairs, strict=True))
    assert group_address(hi, lo).tolist() == [True] * 5 + [False] * 5


def test_forgotten_after_history_s_and_bounded():
    h = PeerHistory(history_s=600, warmup_s=0)
    _window(h, 60, {0: [(10, 443)]})
    assert _window(h, 120, {0: [(10, 443)]})[0, NEW_PEERS] == 0
    assert _window(h, 120 + 601, {0: [(10, 443)]})[0, NEW_PEERS] == 1  # not seen for longer than history_s
    small = PeerHistory(history_s=3600, warmup_s=0, max_rows=50)
    for t in range(1, 20):
        _window(small, 60 * t, {0: [(1000 * t + i, 1000 * t + i) for i in range(40)]})
        assert len(small._peers) <= 50 + 40 and len(small._ports) <= 50 + 40  # trimmed before each window's rows join


def test_the_order_of_rows_and_whose_peer_is_whose_do_not_matter():
    """Features depend on the set of (entity, peer) pairs and flows, not on row order; and
    entity a talking to b is not entity b talking to a (their keys once collided: XOR is
    symmetric)."""
    rng = np.random.default_rng(3)
    a, b = PeerHistory(3600, 0), PeerHistory(3600, 0)
    keys = np.array([11, 22, 33], np.uint64)
    for t in range(1, 30):
        rows = rng.integers(0, 3, 30)
        peers = rng.integers(0, 8, 30).astype(np.uint64)
        ports = rng.integers(0, 5, 30).astype(np.uint64)
        zero = np.zeros(30, np.uint64)
        cols_p = (rows, zero, peers)
        cols_f = (rows, np.full(30, PROTO_UDP, np.uint64), zero, rows.astype(np.uint64), zero, peers, ports + 50000, ports)
        perm = rng.permutation(30)
        out_a = a.observe(keys, cols_p, cols_f, t * 60 * S)
        out_b = b.observe(keys, tuple(c[perm] for c in cols_p), tuple(c[perm] for c in cols_f), t * 60 * S)
        assert np.array_equal(out_a, out_b)
    h = PeerHistory(3600, 0)
    keys = np.array([5, 7], np.uint64)
    no_flows = (np.zeros(0, np.int64),) * 8
    h.observe(keys, (np.array([0]), np.zeros(1, np.uint64), np.array([7], np.uint64)), no_flows, S)
    out = h.observe(keys, (np.array([1]), np.zeros(1, np.uint64), np.array([5], np.uint64)), no_flows, 2 * S)
    assert out[1, NEW_PEERS] == 1


@pytest.mark.parametrize("warmup_s", [0.0, 120.0])
def test_the_window_stage_fills_the_schema_columns(warmup_s):
    """Through the aggregator: a host's window carries the counts spread over its bins, after its warm-up."""
    agg = WindowAggregator(["10.0.0.0/8"], bin_s=10, bins=6, lateness_s=0, history_s=3600, history_warmup_s=warmup_s)
    rows = [{"ts_s": t + 1.0, "src": "10.0.0.5", "dst": "203.0.113.1", "sport": 40000, "dport": 443, "flags": 0x02}
            for t in range(0, 600, 60)]  # one peer, every window
    rows += [{"ts_s": 601.0 + i, "src": "10.0.0.5", "dst": f"198.51.100.{i}", "sport": 40000, "dport": 23 + i, "flags": 0x02}
             for i in range(8)]  # then eight new peers and ports
    batch = make_batch(rows)
    out = agg.push(batch, FlowTable().push(batch)) + agg.flush()
    names = list(out[0].schema.features)
    assert names[-3:] == [n for n, _ in HISTORY_FEATURES]
    last = out[-1]
    host = last.features[last.entities.index("10.0.0.5")]
    new_peers, new_ports = host[:, names.index("new_peers")], host[:, names.index("new_ports")]
    assert np.allclose(new_peers, 8 / 6) and np.allclose(new_ports, 8 / 6)
    first = out[0].features[out[0].entities.index("10.0.0.5")]
    assert first[:, names.index("new_peers")].sum() == (0 if warmup_s else 1)
    # the link's window says which hosts met nothing new (the scorer reads it): the host
    # is known once its history is warm and its first peer is no longer new, and not in
    # the window of its eight new peers, where it is the link's news
    pkts = names.index("pkts_out")
    known = [w.link_hosts.hosts == ["10.0.0.5"] for w in out if "10.0.0.5" in w.entities]
    assert known == [False] * (2 if warmup_s else 1) + [True] * (8 if warmup_s else 9) + [False]
    assert last.link_hosts.news[pkts] == host[:, pkts].mean() + host[:, names.index("pkts_in")].mean() > 0


def _role_change(first_seen: str) -> list[dict]:
    """Two hosts that SSH out every window for 10 minutes; in the first of them a scanner
    outside reaches 10.0.0.5 on port 22 (refused: a reset) and on 23 (never answered); at
    601 s 10.0.0.7 opens an SSH session to 10.0.0.5, which accepts it (the capture saw its
    `first_seen` packet first). Rows: ts_s, src, dst, sport, dport, flags."""
    rows = [{"ts_s": t + 1.0, "src": src, "dst": "10.0.0.9", "sport": 40000 + t, "dport": 22, "flags": 0x02}
            for t in range(0, 600, 60) for src in ("10.0.0.5", "10.0.0.7")]
    rows += [{"ts_s": 2.0, "src": "203.0.113.5", "dst": "10.0.0.5", "sport": 61000, "dport": 22, "flags": 0x02},
             {"ts_s": 2.1, "src": "10.0.0.5", "dst": "203.0.113.5", "sport": 22, "dport": 61000, "flags": 0x14},
             {"ts_s": 3.0, "src": "203.0.113.5", "dst": "10.0.0.5", "sport": 61000, "dport": 23, "flags": 0x02}]
    request = {"ts_s": 601.0, "src": "10.0.0.7", "dst": "10.0.0.5", "sport": 50000, "dport": 22, "flags": 0x02}
    reply = {"ts_s": 601.5, "src": "10.0.0.5", "dst": "10.0.0.7", "sport": 22, "dport": 50000, "flags": 0x12}
    return sorted(rows + ([request, reply] if first_seen == "request" else [reply]), key=lambda r: r["ts_s"])


@pytest.mark.parametrize("path", ["packets", "flow records"])
@pytest.mark.parametrize("first_seen", ["request", "reply"])
def test_a_host_that_starts_serving_a_port_it_only_used_or_was_probed_on_counts_it_new(first_seen, path):
    """A workstation that has opened SSH sessions out all along, and refused a scanner's probe
    of port 22, starts accepting SSH (a role change): 22 is new to it as a port it serves,
    though not as one it used or was probed on, whichever packet of the session the capture
    saw first; the client, which used 22 before, counts nothing, and nor does the link (a
    session inside home_net is no service of the network's). On packets and on flow records
    (a record per packet: the refusal is a record with RST and no SYN)."""
    rows = _role_change(first_seen)
    if path == "packets":
        agg = WindowAggregator(["10.0.0.0/8"], bin_s=10, bins=6, lateness_s=0, history_s=3600, history_warmup_s=0)
        batch = make_batch(rows)
        out = agg.push(batch, FlowTable().push(batch)) + agg.flush()
    else:
        from tests.capture.windows.test_flow import records

        agg = FlowWindowAggregator(["10.0.0.0/8"], bin_s=10, bins=6, lateness_s=0, history_s=3600, history_warmup_s=0)
        out = agg.push(records([{"start_s": r["ts_s"], "proto": 6, **r} for r in rows]))
        out += agg.flush()
    names = list(out[0].schema.features)

    def new_ports(window, entity: str) -> float:
        return float(window.features[window.entities.index(entity)][:, names.index("new_ports")].sum())

    assert new_ports(out[0], "10.0.0.5") == pytest.approx(3.0)  # 22 used, 22 and 23 probed
    assert new_ports(out[-1], "10.0.0.5") == pytest.approx(1.0)  # 22 served: new
    assert new_ports(out[-1], "10.0.0.7") == 0.0 and new_ports(out[-1], "global") == 0.0


def test_a_window_between_a_beacon_s_contacts_names_its_peer_in_the_evidence():
    """A host calls a new outside peer every 5 minutes (a new connection each time), after its
    warm-up, beside its usual traffic; in a window between two calls the evidence names the
    beacon's peer first, with no packets and its returns, and the classifier takes it as the
    counterpart of a beaconing window."""
    from detector.alerting.classify import classify
    from detector.contracts import FeatureContribution, WindowScore

    agg = WindowAggregator(["10.0.0.0/8"], bin_s=10, bins=6, lateness_s=0, history_s=7200, history_warmup_s=600)
    rows = [{"ts_s": t + 1.0, "src": "10.0.0.5", "dst": "192.0.2.80", "sport": 40000, "dport": 443, "flags": 0x18}
            for t in range(0, 3600, 60)]  # a known peer, every window
    rows += [{"ts_s": t + 2.0, "src": "10.0.0.5", "dst": "203.0.113.9", "sport": 41000 + t // 300, "dport": 443, "flags": 0x02}
             for t in range(900, 3600, 300)]  # the beacon, from 15 minutes on
    batch = make_batch(sorted(rows, key=lambda r: r["ts_s"]))
    out = agg.push(batch, FlowTable().push(batch)) + agg.flush()
    between = next(w for w in out if w.window_start_ns == 3060 * S)  # the window after the call at 3,002 s
    peers = between.evidence["10.0.0.5"].top_peers
    assert peers[0] == {"ip": "203.0.113.9", "packets": 0, "bytes": 0, "returns": 7}
    assert peers[1]["ip"] == "192.0.2.80" and "returns" not in peers[1]
    level = between.features[between.entities.index("10.0.0.5"), :, list(between.schema.features).index("young_peer_returns")]
    assert (level == 7).all()
    score = WindowScore(between.window_start_ns, between.window_end_ns, "10.0.0.5", "host", 9.0, 3.0, True, True,
                        top_features=[FeatureContribution("young_peer_returns", "returns", 0.8, 6.0, 0.1)],
                        evidence=between.evidence["10.0.0.5"])
    found = classify(score)
    assert (found.category, found.originator, found.target) == ("beaconing", "10.0.0.5", "203.0.113.9")


def test_state_round_trips_and_bad_state_is_refused():
    """What a checkpoint saves and restores: the restored history counts exactly as the one
    that kept running; unsorted or ragged tables are refused (a damaged checkpoint)."""
    a = PeerHistory(3600, 0)
    for t in range(1, 6):
        _window(a, 60 * t, {0: [(t, 80 + t, t), (100, 443)], 2: [(7, 53, t)]})
    b = PeerHistory(3600, 0)
    b.load_state_dict({k: v.copy() for k, v in a.state_dict().items()})
    assert np.array_equal(_window(a, 360, {0: [(1, 81), (100, 443), (9, 9)]}), _window(b, 360, {0: [(1, 81), (100, 443), (9, 9)]}))
    bad = a.state_dict()
    bad["peers.keys"] = bad["peers.keys"][::-1].copy()
    with pytest.raises(ValueError, match="not sorted"):
        PeerHistory(3600, 0).load_state_dict(bad)
    bad = a.state_dict()
    bad["ports.first"] = bad["ports.first"][:-1]
    with pytest.raises(ValueError, match="unequal length"):
        PeerHistory(3600, 0).load_state_dict(bad)


def test_a_history_carried_in_goes_on_as_if_its_stream_had_continued_and_a_checkpoint_replaces_it():
    """A bundle's history (its training span's) carried into a stream that starts days later:
    the entity is warm from the first window, a peer it knew is not new, one it never used is;
    exactly what the training stream itself would have said of the same window right after its
    end. A checkpoint loaded afterwards is taken as it is (its times are the stream's own)."""
    training = PeerHistory(history_s=3600, warmup_s=600)
    for t in range(60, 1860, 60):
        _window(training, t, {0: [(10, 443, 1), (11, 53, t)]})
    state, ended_ns = training.state_dict(), 1800 * S
    later = 3 * 86400
    carried = PeerHistory(history_s=3600, warmup_s=600)
    carried.carry_in({k: v.copy() for k, v in state.items()}, ended_ns, 60 * S)
    cold = PeerHistory(history_s=3600, warmup_s=600)
    contacts = {0: [(10, 443, 1), (50, 8443, 2)]}
    out = _window(carried, later + 60, contacts)
    assert out[0, NEW_PEERS] == 1 and out[0, NEW_PORTS] == 1  # peer 50 and port 8443; peer 10 known
    assert np.array_equal(out, _window(training, 1860, contacts))
    assert _window(cold, later + 60, contacts)[0].sum() == 0  # a cold start: warming up, nothing counts
    restored = PeerHistory(history_s=3600, warmup_s=600)
    restored.carry_in({k: v.copy() for k, v in state.items()}, ended_ns, 60 * S)
    restored.load_state_dict(training.state_dict())
    assert np.array_equal(_window(restored, 1920, {0: [(60, 25)]}), _window(training, 1920, {0: [(60, 25)]}))


def test_a_peer_carried_in_is_known_never_young():
    """A young peer's series in the training span does not go on as one in a stream the span
    is carried into: when the network met it says nothing there (the synthetic demo, trained
    on its first 4 h and replayed from its start, opened 14 false beacons without this)."""
    training = PeerHistory(history_s=3600, warmup_s=600)
    for k, t in enumerate(range(60, 1860, 60)):
        _window(training, t, {0: [(10, 443, 1)] + ([(99, 443, k)] if t > 660 and k % 2 == 0 else [])})
    state = training.state_dict()
    assert _window(training, 1860, {0: [(10, 443, 1), (99, 443, 77)]})[0, YOUNG] > 0
    carried = PeerHistory(history_s=3600, warmup_s=600)
    carried.carry_in(state, 1800 * S, 60 * S)
    out = _window(carried, 86400 + 60, {0: [(10, 443, 1), (99, 443, 77)]})
    assert out[0, YOUNG] == 0 and out[0, NEW_PEERS] == 0


def test_a_checkpoint_written_before_the_series_loads_its_beacons_count_only_when_they_call():
    """A checkpoint of schema v3 (no gaps, first sighting by the network or address per peer,
    no network table): its rows load; a beacon it knew counts again in the windows that hold
    a contact, not between them, since its gaps are not known; the full state holds it."""
    h = PeerHistory(history_s=7200, warmup_s=600)
    for t in range(60, 660, 60):
        _window(h, t, {0: [(10, 443)]})
    for k, t in enumerate(range(660, 660 + 30 * 60, 60)):
        _window(h, t, {0: [(10, 443)] + ([(99, 443, k)] if k % 5 == 0 else [])})
    new_cols = ("back", "gap_sq", "met", "hi", "lo")
    old = {k: v for k, v in h.state_dict().items() if not k.startswith("network.") and k.split(".")[-1] not in new_cols}
    restored, full = PeerHistory(history_s=7200, warmup_s=600), PeerHistory(history_s=7200, warmup_s=600)
    restored.load_state_dict(old)
    full.load_state_dict(h.state_dict())
    between = 660 + 31 * 60  # six windows after its sixth call (five returns)
    assert _window(restored, between, {0: [(10, 443)]})[0, YOUNG] == 0
    assert _window(full, between, {0: [(10, 443)]})[0, YOUNG] == 5
    assert _window(restored, between + 240, {0: [(10, 443), (99, 443, 77)]})[0, YOUNG] == 5  # a contact: its returns


def test_a_flood_s_rows_go_when_its_entities_expire_a_warm_host_s_stay():
    """Spoofed home sources, one packet each, are entities whose history never got warm: their
    rows go when they expire (not history_s later). A host with a warm history keeps it
    through its own expiry (back after a nap, it still knows its peers)."""
    agg = WindowAggregator(["10.0.0.0/8"], bin_s=10, bins=6, lateness_s=0, entity_idle_s=120, history_s=3600,
                           history_warmup_s=300)
    host = [{"ts_s": t + 1.0, "src": "10.0.0.5", "dst": "203.0.113.1", "sport": 40000, "dport": 443, "flags": 0x02}
            for t in range(0, 600, 60)]
    flood = [{"ts_s": 400.0 + i / 1000, "src": f"10.1.{i // 250}.{i % 250 + 1}", "dst": "203.0.113.9", "sport": 1024 + i,
              "dport": 80, "flags": 0x02} for i in range(300)]
    rows = sorted(host + flood, key=lambda r: r["ts_s"])
    later = [{"ts_s": 3000.0, "src": "10.0.0.6", "dst": "203.0.113.1", "sport": 40000, "dport": 443, "flags": 0x02}]
    flows = FlowTable()
    # the hosts whose rows the tables hold (0 is global's, which never expires)
    owners = lambda: (set(agg.history._peers.owner.tolist()) | set(agg.history._ports.owner.tolist())) - {0}  # noqa: E731
    for k, part in enumerate((rows[:-2], rows[-2:] + later)):  # up to t=481 (the flood's window closed), then t=3000
        batch = make_batch(part)
        agg.push(batch, flows.push(batch))
        if k == 0:
            assert 301 == len(owners()) and 302 == len(agg.history._entities) and 0 == agg.entities_expired
    assert 301 == agg.entities_expired  # the flood and the host (idle since t=541), before history_s is out
    assert {int(agg.history._entities.keys[1])} == owners() and 2 == len(agg.history._entities)  # global's, the host's


def test_a_checkpoint_written_before_owners_loads_its_rows_kept_until_history_s():
    h = PeerHistory(3600, 600)
    _window(h, 60, {0: [(10, 443)]})
    old = {k: v for k, v in h.state_dict().items() if not k.endswith(".owner")}
    b = PeerHistory(3600, 600)
    b.load_state_dict(old)
    assert not b._peers.owner.any()
    b.expire(_keys(1), 120 * S)  # entity 0 expires cold: its own row goes, the unowned ones stay
    assert 0 == len(b._entities) and 1 == len(b._peers) and 1 == len(b._ports)


def _answers(ts_s: float, client_row: int, peers: list[int], domain: int) -> DnsAnswers:
    """DNS answers at ts_s: each peer address (as _window's peers) answered to entity row
    `client_row` (address row + 1000) for a name under registered domain key `domain`."""
    n = len(peers)
    return DnsAnswers(np.full(n, int(ts_s * S), np.int64), np.zeros(n, np.uint64), np.full(n, client_row + 1000, np.uint64),
                      np.zeros(n, np.uint64), np.array(peers, np.uint64), np.full(n, domain, np.uint64),
                      names={domain: f"d{domain}.example"})


def test_a_new_address_of_a_domain_the_host_talks_to_is_no_new_peer():
    """A cloud service answers its name from a new address every few hours: a peer standing
    for a registered domain the entity talked to before (within history_s) is not new. A new
    address of a new domain is, so is one no answer named, and so is one of a domain last
    talked to longer than history_s ago. The network (`global`) is judged by any host's
    answers."""
    h = PeerHistory(history_s=3600, warmup_s=600, network_key=0)
    keys = np.concatenate([np.zeros(1, np.uint64), _keys(3)[1:]])  # row 0: the network

    def window(end_s: float, contacts: dict[int, list[int]]) -> np.ndarray:
        rows = np.array([r for r, ps in contacts.items() for _ in ps], np.int64)
        peer = np.array([p for ps in contacts.values() for p in ps], np.uint64)
        zero = np.zeros(rows.shape[0], np.uint64)
        src = np.where(rows == 0, np.uint64(1001), rows.astype(np.uint64) + 1000)  # the network's flows are host 1's
        flows = (rows, np.full(rows.shape[0], PROTO_TCP, np.uint64), zero, src, zero, peer, np.full(rows.shape[0], 40000, np.uint64),
                 np.full(rows.shape[0], 443, np.uint64))
        return h.observe(keys, (rows, zero, peer), flows, int(end_s * S))

    h.resolve(_answers(30, 1, [10], domain=7))  # host 1 (address 1001) asks for a name under domain 7
    for t in range(60, 660, 60):  # and talks to its address through the warm-up, as the network does
        window(t, {0: [10], 1: [10]})
    h.resolve(_answers(650, 1, [11], domain=7))  # a new address for domain 7
    h.resolve(_answers(655, 1, [12], domain=8))  # an address of a domain never talked to
    h.resolve(_answers(700, 1, [14], domain=7))  # answered only after the next window ends
    out = window(660, {0: [11, 12, 13, 14], 1: [11, 12, 13, 14]})  # 13: no answer named it
    assert (out[0, NEW_PEERS], out[1, NEW_PEERS]) == (3, 3)  # 12, 13 and 14; not 11
    # two hours without domain 8: a new address of it is new again (the name rows are forgotten too)
    for t in range(720, 720 + 7200, 600):
        window(t, {1: [10]})
    h.resolve(_answers(7950, 1, [20], domain=8))
    h.resolve(_answers(7955, 1, [21], domain=7))
    out = window(7980, {1: [20, 21]})
    assert out[1, NEW_PEERS] == 1  # 20; 21 is domain 7's, talked to every window


def test_names_survive_a_checkpoint_and_an_old_one_loads_without_them():
    h = PeerHistory(history_s=3600, warmup_s=0)
    h.resolve(_answers(30, 0, [10], domain=7))
    _window(h, 60, {0: [(10, 443)]})
    state = h.state_dict()
    assert len(state["names.keys"]) == 1 and len(state["domains.keys"]) == 1
    again = PeerHistory(history_s=3600, warmup_s=0)
    again.load_state_dict(state)
    again.resolve(_answers(90, 0, [11], domain=7))
    assert _window(again, 120, {0: [(11, 443)]})[0, NEW_PEERS] == 0
    assert again.domains_of(int(_keys(1)[0]), np.array([0, 0], np.uint64), np.array([10, 12], np.uint64)) == ["d7.example", None]
    broken = {**state, "domain_names.text": np.frombuffer(b"a\nb", np.uint8)}  # two texts for one key
    with pytest.raises(ValueError, match="1 domain keys but 2 texts"):
        PeerHistory(history_s=3600, warmup_s=0).load_state_dict(broken)
    old = {k: v for k, v in state.items() if not k.startswith(("names.", "domains."))}  # written before names
    again.load_state_dict(old)
    assert again.rows == len(old["entities.keys"]) + len(old["peers.keys"]) + len(old["ports.keys"])


def test_answers_before_a_carried_historys_first_window_keep_their_own_times():
    """A stream that starts from a carried history (a bundle's) and gets its first batch's
    answers before its first window closes: those answers are the stream's, not the carried
    span's, and do not move with it (a replay reads a whole small capture as one batch)."""
    trained = PeerHistory(history_s=3600, warmup_s=0)
    trained.resolve(_answers(99_930, 0, [10], domain=7))
    _window(trained, 99_960, {0: [(10, 443)]})
    stream = PeerHistory(history_s=3600, warmup_s=0)
    stream.carry_in(trained.state_dict(), ended_ns=100_000 * S, window_ns=60 * S)
    stream.resolve(_answers(30, 0, [11], domain=7))  # domain 7's new address, before the first window
    assert _window(stream, 60, {0: [(11, 443)]})[0, NEW_PEERS] == 0


def test_the_window_stage_names_the_host_whose_requests_a_host_only_answered():
    """A device asks the home gateway for names every window, and the gateway asks no one:
    once both histories are warm and nothing is new to either, each window names the device
    as the gateway's requester (WindowBatch.requested_by, which the scorer leaves the
    gateway's alarm to); not in the window where the gateway also asks a resolver outside."""
    agg = WindowAggregator(["10.0.0.0/8"], bin_s=10, bins=6, lateness_s=0, history_s=3600, history_warmup_s=120)
    rows = []
    for t in range(0, 600, 60):
        rows += [{"ts_s": t + 1.0, "src": "10.0.0.5", "dst": "10.0.0.1", "sport": 40000 + t, "dport": 53, "proto": 17},
                 {"ts_s": t + 1.1, "src": "10.0.0.1", "dst": "10.0.0.5", "sport": 53, "dport": 40000 + t, "proto": 17}]
    rows += [{"ts_s": 541.05, "src": "10.0.0.1", "dst": "192.0.2.53", "sport": 5353, "dport": 53, "proto": 17}]
    batch = make_batch(rows)
    out = [w for w in agg.push(batch, FlowTable().push(batch)) + agg.flush() if "10.0.0.1" in w.entities]
    asked = [dict(w.requested_by) for w in out]
    # two windows of warm-up, seven answered, and the last, where the gateway asked outside
    assert asked == [{}] * 2 + [{"10.0.0.1": "10.0.0.5"}] * 7 + [{}]
