"""The window aggregator: entities, features per bin, event-time closing."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

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
            for i in range(100)]
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


@pytest.mark.parametrize("last_s", [25.0, 55.0])
def test_a_live_stop_lets_go_a_last_window_it_came_into_before_its_last_bin(last_s):
    """stop() (a live link's): the window the link was watched through to its last bin is
    scored, one it stopped inside earlier is let go and counted; the aggregator's flush()
    closes both (the flow records' end; a capture's stages stop: WindowStages.flush)."""
    rows = [{"ts_s": t, "src": "10.0.0.5", "dst": "10.0.0.9", "sport": 40000, "dport": 80, "flags": SYN}
            for t in (1.0, 30.0, 61.0, 61.0 + last_s - 1.0)]
    for end in ("stop", "flush"):
        agg = WindowAggregator(home_net=["10.0.0.0/24"], bin_s=10, bins=6, lateness_s=0)
        b = make_batch(rows)
        out = agg.push(b, FlowTable().push(b))
        out += getattr(agg, end)()
        kept = end == "flush" or last_s - 1.0 >= 50.0
        assert [60, 120][: 1 + kept] == [w.window_end_ns // 10**9 for w in out]
        assert agg.windows_partial == (0 if kept else 1)


def _stages(**windows):
    from detector.config import Config
    from detector.service.pipeline import build_windowing

    return build_windowing(Config(home_net=["10.0.0.0/24"], windows={"bin_s": 10, "bins": 6, "lateness_s": 0, **windows}))


def _contacts(times, peer="198.51.100.7"):
    return [{"ts_s": t, "src": "10.0.0.5", "dst": peer, "sport": 40000, "dport": 443, "flags": SYN} for t in times]


@pytest.mark.parametrize(("times", "handed", "partial"), [
    ((5.0, 70.0, 119.0), [0, 60], 0),  # from the first bin of a window to the last bin of another
    ((25.0, 70.0, 130.0, 205.0), [60, 120], 2),  # begun 25 s into a window, ended 25 s into one
    ((9.5, 70.0, 170.0), [0, 60, 120], 0),  # the first packet in the first bin; the last on the last bin's start
    ((10.0, 70.0, 169.5), [60], 2),  # the first on the second bin's start; the last in the bin before the last
])
def test_a_capture_hands_on_the_windows_it_watched_from_their_first_bin_to_their_last(times, handed, partial):
    """A scored capture's stages (WindowStages: the daemon's replay, `netad score`, eval's
    scoring) hand on the windows the capture watched whole, from the bin of its first packet
    to that of its last. A window it begins or ends inside, past the first bin or before the
    last, is let go and counted: its bins outside the capture are empty because nothing was
    watched. Training's (window_stream) keep every window (WindowStages.every_window)."""
    stages = _stages()
    b = make_batch(_contacts(times))
    out = list(stages.push(b)) + stages.flush()
    assert handed == [w.window_start_ns // 10**9 for w in out]
    assert partial == stages.windows.windows_partial
    assert len(handed) == stages.windows.windows_closed
    # training's windows (window_stream): every one, the partial ones too
    from detector.config import Config
    from detector.service.pipeline import window_stream

    cfg = Config(home_net=["10.0.0.0/24"], windows={"bin_s": 10, "bins": 6, "lateness_s": 0})
    every = [w.window_start_ns // 10**9 for w in window_stream(cfg, [make_batch(_contacts(times))])]
    assert list(range(int(times[0]) // 60 * 60, int(times[-1]) // 60 * 60 + 60, 60)) == every


def test_a_window_let_go_at_the_start_still_feeds_the_history():
    """The first window, let go, is built all the same: a peer the host met in it is no new
    peer in the next window (as it is when the capture holds nothing of that first window)."""
    new_peers = PACKET_SCHEMA.features.index("new_peers")
    seen = []
    for times in ((25.0, 65.0, 119.0), (65.0, 119.0)):
        stages = _stages(history_warmup_s=0)
        b = make_batch(_contacts(times))
        out = list(stages.push(b)) + stages.flush()
        assert [60] == [w.window_start_ns // 10**9 for w in out]
        seen.append(float(out[0].features[out[0].entities.index("10.0.0.5")][:, new_peers].sum()))
    assert seen[0] == 0.0 and seen[1] > 0.0


@pytest.mark.parametrize(("started_s", "handed"), [(5.0, [0, 60]), (15.0, [60])])
def test_a_live_link_s_first_window_is_handed_on_only_if_it_was_watched_from_its_first_bin(started_s, handed):
    """A live link watched from `started_s` (watch_from: the daemon's and the sensor's, as the
    capture opens) whose first packet comes 25 s into the window: watched from its first bin,
    the window is whole, its quiet start the link's own; begun later, it is let go (on a
    restart, whose restored entities are past their warm-up, it alerted)."""
    stages = _stages()
    stages.windows.watch_from(int(started_s * 1e9))
    b = make_batch(_contacts((25.0, 70.0, 119.0)))
    out = list(stages.push(b)) + stages.stop()
    assert handed == [w.window_start_ns // 10**9 for w in out]
    assert (1 if len(handed) == 1 else 0) == stages.windows.windows_partial


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
            for i in range(20)]
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


# ------------------------------------------------------------------------------------------
# The numba aggregator against the definitions, on random traffic
# ------------------------------------------------------------------------------------------

HOME = "10.0.0.0/24"


def _random_rows(seed: int, n: int = 3000) -> list[dict]:
    """Random traffic over ~4 windows of 60 s: home and outside hosts (IPv4 and IPv6), TCP
    with mixed flags, UDP, ICMP/ICMPv6 errors and others, later fragments, other protocols;
    half the packets continue a recent flow, most of those as its reply; enough flows and
    peers that the window tallies must grow."""
    rng = np.random.default_rng(seed)
    v4 = [f"10.0.0.{i}" for i in range(1, 40)] + [f"198.51.100.{i}" for i in range(1, 200)]
    v6 = ["2001:db8::1", "2001:db8::2", "2001:db8:1::7"]
    rows: list[dict] = []
    for ts in np.sort(rng.uniform(1.0, 235.0, n)):
        if rows and rng.random() < 0.5:  # a packet of an earlier flow, often the reply
            r = rows[int(rng.integers(max(0, len(rows) - 50), len(rows)))]
            src, dst, proto, sport, dport = r["src"], r["dst"], r["proto"], r["sport"], r["dport"]
            if rng.random() < 0.6 and proto in (6, 17):
                src, dst, sport, dport = dst, src, dport, sport
        else:
            family = v6 if rng.random() < 0.05 else v4
            src, dst = rng.choice(family, 2)
            proto = int(rng.choice([6, 6, 6, 17, 17, 1, 58, 47]))
            sport, dport = int(rng.integers(1024, 1100)), int(rng.choice([22, 53, 80, 443, int(rng.integers(1, 2000))]))
            if proto == 1:
                sport, dport = int(rng.choice([0, 3, 8, 11, 12])), 0
            elif proto == 58:
                sport, dport = int(rng.choice([1, 2, 3, 4, 128, 129])), 0
            elif proto == 47:
                sport = dport = 0
        rows.append({"ts_s": float(ts), "src": str(src), "dst": str(dst), "proto": proto, "sport": sport, "dport": dport,
                     "flags": int(rng.choice([0x02, 0x12, 0x10, 0x18, 0x04, 0x14, 0x01, 0x11])),
                     "ip_len": int(rng.integers(40, 1500)), "frag": int(rng.choice([0, 0, 0, 0, 1, 2]))})
    return rows


def _reference(batch, flows, bin_s: int, bins: int) -> dict:
    """Per window start: {entity: (features, peers, ports, flows)} from the definitions, one
    packet at a time. Evidence is {key: packets} (peers also bytes); a flow's 5-tuple is that
    of its first contribution in the aggregator's order (every packet for `global`, then each
    packet for its sender, then for its receiver), turned round when that was a reply."""
    from detector.capture.windows import HomeNet

    home = HomeNet([HOME])
    src_home = home.contains(batch.src_hi, batch.src_lo)
    dst_home = home.contains(batch.dst_hi, batch.dst_lo)
    out: dict = {}
    entity_first: dict = {}
    n = len(batch)
    for part in range(3):
        for i in range(n):
            s, d = (int(batch.src_hi[i]), int(batch.src_lo[i])), (int(batch.dst_hi[i]), int(batch.dst_lo[i]))
            if part == 0:
                entity, inbound = "global", bool(dst_home[i] and not src_home[i])
            elif part == 1 and src_home[i]:
                entity, inbound = s, False
            elif part == 2 and dst_home[i]:
                entity, inbound = d, True
            else:
                continue
            ts = int(batch.ts_ns[i])
            entity_first[entity] = min(entity_first.get(entity, ts), ts)
            w, b = ts // int(bin_s * 1e9 * bins), ts // int(bin_s * 1e9) % bins
            fresh = {"f": np.zeros((bins, len(F))), "sets": {}, "peers": {}, "ports": {}, "flows": {}}
            e = out.setdefault(w, {}).setdefault(entity, fresh)
            x, dr = e["f"][b], ("in" if inbound else "out")
            proto, flags, icmp = int(batch.proto[i]), int(batch.tcp_flags[i]), int(batch.sport[i])
            x[F[f"pkts_{dr}"]] += 1
            x[F[f"bytes_{dr}"]] += int(batch.ip_len[i])
            x[F[f"flows_{dr}"]] += bool(flows.new_flow[i])
            x[F[f"syn_{dr}"]] += proto == 6 and flags & 0x12 == 0x02
            x[F[f"rst_{dr}"]] += proto == 6 and bool(flags & 0x04)
            x[F["icmp_err"]] += (proto == 1 and icmp in (3, 11, 12)) or (proto == 58 and icmp in (1, 2, 3, 4))
            peer = s if inbound else d
            e["sets"].setdefault((b, f"peers_{dr}"), set()).add(peer)
            p, b_ = e["peers"].get(peer, (0, 0))
            e["peers"][peer] = (p + 1, b_ + int(batch.ip_len[i]))
            if proto in (6, 17) and batch.frag[i] != 2:
                e["sets"].setdefault((b, f"ports_{dr}"), set()).add(int(batch.dport[i]))
                e["ports"][(proto, int(batch.dport[i]))] = e["ports"].get((proto, int(batch.dport[i])), 0) + 1
            fid = int(flows.flow_id[i])
            ends = (s, d, int(batch.sport[i]), int(batch.dport[i]))
            if not flows.from_initiator[i]:  # a reply: the flow as its initiator sent it
                ends = (d, s, int(batch.dport[i]), int(batch.sport[i]))
            five = e["flows"].get(fid, (0, (proto, *ends)))
            e["flows"][fid] = (five[0] + 1, five[1])
    for entities in out.values():
        for e in entities.values():
            for (b, name), values in e.pop("sets").items():
                e["f"][b, F[name]] = len(values)
            pk = e["f"][:, F["pkts_out"]] + e["f"][:, F["pkts_in"]]
            by = e["f"][:, F["bytes_out"]] + e["f"][:, F["bytes_in"]]
            e["f"][:, F["mean_pkt_bytes"]] = np.where(pk > 0, by.astype(np.float32) / np.maximum(pk, 1).astype(np.float32), 0)
    return {"windows": out, "entity_first": entity_first}


def _ranked(tally: dict, slot: int, key_of, top_k: int = 5) -> list:
    """Top entries by packets, ties in the order of the aggregator's key hash."""
    from detector.capture._hash import mix as _mix

    def key(k):
        h = _mix(np.array([slot], dtype=np.uint64))
        for part in key_of(k):
            h = _mix(h ^ np.array([part], dtype=np.uint64))
        return int(h[0])

    return sorted(tally, key=lambda k: (-(tally[k][0] if isinstance(tally[k], tuple) else tally[k]), key(k)))[:top_k]


@pytest.mark.parametrize("seed,bin_s,bins", [(1, 10, 6), (2, 10, 6), (3, 1, 40)])
def test_features_and_evidence_follow_the_definitions_on_random_traffic(seed, bin_s, bins):
    """Every feature of every entity in every window, and the evidence (top peers, ports and
    flows with their counts, ties broken by key hash, a flow's 5-tuple), equal a packet-at-a-
    time computation from the definitions; more than 64 (bin, direction) pairs (bins=40)
    take a second word of seen bits."""
    from detector.capture.flows import community_id_of_pairs
    from detector.contracts import addr_to_pair, pair_to_addr

    rows = _random_rows(seed)
    b = make_batch(rows)
    ft = FlowTable()
    flows = ft.push(b)
    agg = WindowAggregator(home_net=[HOME], bin_s=bin_s, bins=bins, lateness_s=0)
    windows = agg.push(b, flows) + agg.flush()
    ref = _reference(b, flows, bin_s, bins)
    assert sorted(ref["windows"]) == sorted({int(w.window_start_ns) // int(bin_s * 1e9 * bins) for w in windows if w.features.any()})
    # with one batch and no expiry, slots are the last window's entity order
    slot_of = {name: i for i, name in enumerate(windows[-1].entities)}
    checked = 0
    for w in windows:
        assert "global" == w.entities[0]
        expected = ref["windows"].get(w.window_start_ns // int(bin_s * 1e9 * bins), {})
        names = {"global" if e == "global" else pair_to_addr(*e): v for e, v in expected.items()}
        alive = {pair_to_addr(*e) for e, t in ref["entity_first"].items() if e != "global" and t < w.window_end_ns}
        assert alive | {"global"} == set(w.entities)
        for i, entity in enumerate(w.entities):
            e = names.get(entity)
            if e is None:
                assert 0 == w.features[i].sum()
                continue
            np.testing.assert_array_equal(e["f"].astype(np.float32), w.features[i], err_msg=entity)
            ev, slot = w.evidence[entity], slot_of[entity]
            peers = _ranked(e["peers"], slot, lambda k: k)
            assert [{"ip": pair_to_addr(*k), "packets": e["peers"][k][0], "bytes": e["peers"][k][1]} for k in peers] == ev.top_peers
            ports = _ranked(e["ports"], slot, lambda k: k)
            assert [{"port": k[1], "proto": {6: "tcp", 17: "udp"}[k[0]], "packets": e["ports"][k]} for k in ports] == ev.top_ports
            top = _ranked(e["flows"], slot, lambda k: (k,))
            assert [(e["flows"][k][0], e["flows"][k][1][1], e["flows"][k][1][2], e["flows"][k][1][3]) for k in top] == [
                (f["packets"], addr_to_pair(f["src"]), addr_to_pair(f["dst"]), f["sport"]) for f in ev.top_flows
            ]
            assert all(f["community_id"] == community_id_of_pairs(e["flows"][k][1][0], *e["flows"][k][1][1], *e["flows"][k][1][2],
                                                                   e["flows"][k][1][3], e["flows"][k][1][4])
                       for k, f in zip(top, ev.top_flows, strict=True))
            checked += 1
    assert checked > 40


@pytest.mark.parametrize("seed", [4, 5])
def test_windows_do_not_depend_on_how_packets_are_cut_into_batches(seed):
    """Random batch cuts give the same windows, entities and features per entity, and the
    same evidence counts (which of several tied entries is listed follows the entity's slot
    number, and slots are handed out per batch)."""
    b = make_batch(_random_rows(seed))

    def run(cuts):
        agg = WindowAggregator(home_net=[HOME], bin_s=10, bins=6, lateness_s=0)
        ft = FlowTable()
        out = []
        for lo, hi in itertools.pairwise(cuts):
            part = b.take(slice(lo, hi))
            out += agg.push(part, ft.push(part))
        out += agg.flush()
        return [
            {
                name: (
                    w.features[i].tolist(),
                    [p["packets"] for p in w.evidence[name].top_peers],
                    [p["packets"] for p in w.evidence[name].top_ports],
                    [f["packets"] for f in w.evidence[name].top_flows],
                )
                for i, name in enumerate(w.entities)
            }
            for w in out
        ]

    rng = np.random.default_rng(seed)
    whole = run([0, len(b)])
    for n_cuts in (3, 40, 400):
        cuts = [0, *sorted(rng.choice(np.arange(1, len(b)), n_cuts, replace=False).tolist()), len(b)]
        assert whole == run(cuts)


def _windows_of(batches, **kw):
    agg = WindowAggregator(home_net=["10.0.0.0/24"], bin_s=10, bins=6, lateness_s=0, entity_idle_s=3600, **kw)
    ft = FlowTable()
    out = []
    for b in batches:
        out += agg.push(b, ft.push(b))
    return agg, out + agg.flush()


def _sparse_rows():
    """A quiet capture: a host talks, falls silent for 43 h, then another host and it again."""
    day2 = 43 * 3600.0
    return ([{"ts_s": 5.0 + i, "src": "10.0.0.1", "dst": "8.8.8.8", "sport": 1000, "dport": 53, "proto": 17} for i in range(3)]
            + [{"ts_s": day2 + i, "src": "10.0.0.2", "dst": "8.8.8.8", "sport": 1000, "dport": 53, "proto": 17} for i in range(3)]
            + [{"ts_s": day2 + 10, "src": "10.0.0.1", "dst": "8.8.8.8", "sport": 1001, "dport": 53, "proto": 17}])


def test_a_batch_spanning_days_closes_windows_and_expires_hosts_as_its_time_passes():
    """Batches do not decide time: one batch holding both sides of a 43-hour silence gives the
    windows packet by packet batches give, the silent host expires after its idle hour (and
    comes back as a new entity), and the silence costs an idle period of windows, not 2,580."""
    one_batch, together = _windows_of([make_batch(_sparse_rows())])
    _, apart = _windows_of([make_batch([r]) for r in _sparse_rows()])
    assert [(w.window_start_ns, w.entities) for w in apart] == [(w.window_start_ns, w.entities) for w in together]
    assert all(np.array_equal(a.features, b.features) for a, b in zip(apart, together, strict=True))
    assert 1 == one_batch.entities_expired
    assert len(together) <= 62 and one_batch.windows_skipped > 2500
    back = next(w for w in together if "10.0.0.1" in w.entities and w.window_start_ns > 3600 * 10**9)
    assert 43 * 3600 * 10**9 == back.window_start_ns  # its windows start again with its return, no empty ones before


def test_a_batch_hands_on_each_window_before_it_takes_in_the_records_after_it():
    """A batch of a quiet capture closes many windows; each is handed on as it closes, before
    the records after it are taken in (and before the next window is built): what the
    scorer holds at once is one window, however long the batch's span. The windows are
    those of push(), which takes them all at once."""
    rows = [{"ts_s": 1.0 + 60.0 * k, "src": "10.0.0.5", "dst": "8.8.8.8", "sport": 40000 + k, "dport": 53, "proto": 17}
            for k in range(12)]
    agg, ft = WindowAggregator(home_net=["10.0.0.0/24"], bin_s=10, bins=6, lateness_s=0), FlowTable()
    b = make_batch(rows)
    stream = agg.stream(b, ft.push(b))
    first = next(stream)
    assert 0 == first.window_start_ns
    assert 61 * 10**9 == agg.watermark_ns  # the record that closed it; those after it: not taken in yet
    streamed = [first, *stream]
    assert 661 * 10**9 == agg.watermark_ns
    _, at_once = _run(rows)
    every = streamed + agg.flush()
    assert 12 == len(every)
    assert [(w.window_start_ns, w.entities) for w in at_once] == [(w.window_start_ns, w.entities) for w in every]
    for a, b_ in zip(at_once, every, strict=True):
        np.testing.assert_array_equal(a.features, b_.features)


def test_entity_slots_shrink_back_after_a_flood_of_home_addresses():
    """5,000 spoofed home sources for a minute, then an hour later two real hosts: the slot
    table and the kernels' per-slot arrays are back to a few dozen slots."""
    agg = WindowAggregator(home_net=["10.0.0.0/16"], bin_s=10, bins=6, lateness_s=0, entity_idle_s=600)
    ft = FlowTable()
    flood = make_batch([{"ts_s": 100 + i * 0.01, "src": f"10.0.{i // 250}.{i % 250}", "dst": "10.0.200.1", "sport": 1, "dport": 80}
                        for i in range(5000)])
    agg.push(flood, ft.push(flood))
    assert 5002 == agg.entities
    later = make_batch([{"ts_s": 2000 + i, "src": "10.0.200.1", "dst": "10.0.200.2", "sport": 1, "dport": 80} for i in range(120)])
    agg.push(later, ft.push(later))
    assert 3 == agg.entities
    assert len(agg._slot_addr) <= 64 and agg._ent_hi.shape[0] <= 64 and agg._slot_last_ns.shape[0] <= 64
    assert sys.getsizeof(agg._slot_of) < 4096  # the address -> slot dict too (a dict does not shrink as keys go)
