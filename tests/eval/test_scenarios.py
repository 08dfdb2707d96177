"""`netad splice --scenarios` (detector.eval.scenarios): behaviours that only a host's history
reveals, generated into a benign capture with exact truth. Checked independently of the
generator: the inserted frames are what the output holds beyond the benign frames; scapy
dissects them and recomputes every checksum; truth rows, counts, periods, RTTs, TTLs and
MACs are measured on those frames. A small `netad synth` capture carries every kind; the
real honeypot capture (../shared/data, skipped without it) carries them too, and the
scenario lists in docs/eval are checked for where they put each kind."""

from __future__ import annotations

import csv
import datetime as dt
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from detector.capture.packets.pcap import read_records
from detector.errors import ConfigError
from detector.eval.evaluate import hosts_of
from detector.eval.scenarios import load_scenario_list
from detector.eval.splice import splice
from detector.synth.generate import generate
from detector.truth import load_truth
from tests.conftest import REPO, shared_file

BEACON = {"kind": "beacon", "offset_s": 30.5, "host": "10.20.1.10", "peer": "198.18.5.10", "period_s": 40, "jitter_s": 4,
          "duration_s": 400, "bytes_out": 350, "bytes_in": 250, "port": 8443}
ONSET = {"kind": "onset", "offset_s": 120, "host": "10.20.1.11", "peers": 12, "peer_net": "198.18.6.0/24", "internal_peers": ["10.20.0.22"],
         "dns": "10.20.0.2", "ntp": ["198.18.7.123"], "duration_s": 180, "ssh_attempts": 2}
UPLOAD = {"kind": "upload", "offset_s": 300, "host": "10.20.1.12", "peer": "198.18.5.20", "bytes_out": 300_000, "duration_s": 30}
ROLE = {"kind": "role_change", "offset_s": 420, "host": "10.20.1.13", "peers": ["10.20.0.5", "10.20.0.22", "10.20.0.1"], "port": 22,
        "sessions": 5, "duration_s": 300, "session_s": 40}
SMB = {"kind": "role_change", "offset_s": 700, "host": "10.20.0.6", "peers": ["10.20.0.5", "10.20.0.22", "10.20.0.1"], "port": 445,
       "sessions": 3, "duration_s": 60, "session_s": 5}
SCENARIOS = [BEACON, ONSET, UPLOAD, ROLE, SMB]


def _write_list(path: Path, scenarios: list[dict], home_net: str, gateway: str, seed: int = 3) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"seed": seed, "home_net": [home_net], "gateway": gateway, "scenarios": scenarios}), encoding="utf-8")
    return path


def _inserted(benign: Path, out: Path) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """(benign frames, output frames, output frames that are not benign), each (ts_ns, bytes)."""
    b, o = read_records(benign), read_records(out)
    benign_frames = [(int(b.ts_ns[i]), b.frame(i)) for i in range(len(b))]
    out_frames = [(int(o.ts_ns[i]), o.frame(i)) for i in range(len(o))]
    left = Counter(benign_frames)
    added = []
    for f in out_frames:
        if left[f]:
            left[f] -= 1
        else:
            added.append(f)
    return benign_frames, out_frames, added


def _by_actor(added: list[tuple[int, bytes]], actors: list[str]) -> dict[str, list[tuple[int, Ether]]]:
    """Inserted frames, dissected, grouped by the scenario actor they involve (exactly one)."""
    groups: dict[str, list[tuple[int, Ether]]] = defaultdict(list)
    for ts, raw in added:
        p = Ether(raw)
        hit = [a for a in actors if a in (p[IP].src, p[IP].dst)]
        assert 1 == len(hit), p.summary()
        groups[hit[0]].append((ts, p))
    return groups


def _payload(p: Ether) -> int:
    """TCP payload bytes by the headers' lengths (scapy counts Ethernet padding in .payload)."""
    return int(p[IP].len - p[IP].ihl * 4 - p[TCP].dataofs * 4)


def _checksums_ok(p: Ether) -> bool:
    ip = p[IP]
    fresh = ip.copy()
    del fresh.chksum
    ok = IP(bytes(fresh)).chksum == ip.chksum
    for layer in (TCP, UDP):
        if layer in ip:
            again = ip.copy()
            del again[layer].chksum
            ok &= IP(bytes(again))[layer].chksum == ip[layer].chksum
    return bool(ok)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("scenarios")
    generate(d / "benign.pcap", benign_s=900, attack_s=0, hosts=4, seed=11)
    scenario_list = load_scenario_list(_write_list(d / "list.yaml", SCENARIOS, "10.20.0.0/16", "10.20.0.1"))
    res = splice(d / "benign.pcap", [], d / "out.pcap", d / "truth.csv", scenarios=scenario_list)
    benign, out, added = _inserted(d / "benign.pcap", d / "out.pcap")
    return {"dir": d, "res": res, "benign": benign, "out": out, "added": added,
            "groups": _by_actor(added, [s["host"] for s in SCENARIOS]), "truth": load_truth(d / "truth.csv")}


def test_every_kind_is_inserted_with_an_exact_truth_row(small):
    """One truth row per scenario, in list order: [first packet, last packet + 1 us) of its
    frames, as offsets and epoch; its frame count; attacker and target for netad eval."""
    t0 = small["benign"][0][0]
    rows = list(csv.DictReader((small["dir"] / "truth.csv").read_text(encoding="utf-8").splitlines()))
    assert [s["kind"] for s in SCENARIOS] == [r["description"].split("kind=")[1].split()[0] for r in rows]

    def text(ns: int) -> str:
        return f"{ns // 10**9}.{ns % 10**9 // 1000:06d}"

    for spec, row in zip(SCENARIOS, rows, strict=True):
        ts = [t for t, _ in small["groups"][spec["host"]]]
        assert t0 + int(spec["offset_s"] * 1e9) == min(ts)
        expected = [text(min(ts) - t0), text(max(ts) + 1000 - t0), text(min(ts)), text(max(ts) + 1000)]
        assert expected == [row["start_offset_s"], row["end_offset_s"], row["start_epoch_pcap"], row["end_epoch_pcap"]]
        assert f"packets={len(ts)}" in row["description"]
        attackers, targets = hosts_of(row["description"])
        assert spec["host"] in (targets if spec["kind"] == "role_change" else attackers)
        assert 1 == int(row["is_attack_or_fault"])
    assert len(small["added"]) == sum(b.packets for b in small["res"].behaviours)


def test_benign_frames_are_untouched_and_the_output_is_in_time_order(small):
    """Every benign frame is in the output, byte for byte, in its order; timestamps never go back."""
    added = Counter(small["added"])
    kept = []
    for f in small["out"]:
        if added[f]:
            added[f] -= 1
        else:
            kept.append(f)
    assert small["benign"] == kept
    ts = np.array([t for t, _ in small["out"]])
    assert bool(np.all(np.diff(ts) >= 0))


def test_every_inserted_packet_has_valid_checksums(small):
    """scapy recomputes the IPv4 header and TCP/UDP checksums of every inserted packet and
    finds them equal to those written; IP total length matches the frame."""
    bad = [p.summary() for group in small["groups"].values() for _, p in group if not _checksums_ok(p)]
    assert [] == bad
    lengths = {len(p) - 14 >= p[IP].len for group in small["groups"].values() for _, p in group}
    assert {True} == lengths


def test_beacon_sessions_come_every_period_plus_minus_jitter(small):
    """One TCP session per beacon, SYN to SYN within period +- jitter, all within duration;
    each carries bytes_out up and bytes_in down, then a FIN from the host."""
    packets = small["groups"][BEACON["host"]]
    syns = [t for t, p in packets if p[TCP].flags == "S"]
    gaps_s = np.diff(syns) / 1e9
    assert bool(np.all((gaps_s >= BEACON["period_s"] - BEACON["jitter_s"] - 1e-6) & (gaps_s <= BEACON["period_s"] + BEACON["jitter_s"] + 1e-6)))
    assert (syns[-1] - syns[0]) / 1e9 <= BEACON["duration_s"]
    assert (syns[-1] - syns[0]) / 1e9 > BEACON["duration_s"] - BEACON["period_s"] - BEACON["jitter_s"]
    up = sum(_payload(p) for _, p in packets if p[IP].src == BEACON["host"])
    down = sum(_payload(p) for _, p in packets if p[IP].dst == BEACON["host"])
    fins = sum(1 for _, p in packets if p[IP].src == BEACON["host"] and "F" in p[TCP].flags)
    assert (len(syns) * BEACON["bytes_out"], len(syns) * BEACON["bytes_in"], len(syns)) == (up, down, fins)
    assert {BEACON["peer"]} == {p[IP].dst for _, p in packets if p[IP].src == BEACON["host"]}
    assert {BEACON["port"]} == {p[TCP].dport for _, p in packets if p[IP].src == BEACON["host"]}


def test_handshakes_take_milliseconds_and_carry_the_mss(small):
    """SYN -> SYN/ACK takes 10-100 ms to an outside peer and under 3 ms on the LAN; every
    SYN carries MSS 1460; no two packets of one connection share a timestamp."""
    for spec, lo_ms, hi_ms in ((BEACON, 10, 100), (ROLE, 0.05, 3)):
        by_conn = defaultdict(list)
        for t, p in small["groups"][spec["host"]]:
            by_conn[frozenset([(p[IP].src, p[TCP].sport), (p[IP].dst, p[TCP].dport)])].append((t, p))
        for conn in by_conn.values():
            syn = next(t for t, p in conn if p[TCP].flags == "S")
            synack = next(t for t, p in conn if p[TCP].flags == "SA")
            assert lo_ms <= (synack - syn) / 1e6 <= hi_ms
            assert [("MSS", 1460)] == next(p for _, p in conn if p[TCP].flags == "S")[TCP].options
            assert len(conn) == len({t for t, _ in conn})


def test_onset_talks_to_many_new_peers_on_many_ports_without_scanning_volume(small):
    """The onset host looks up names, asks NTP, opens one connection to each of `peers`
    outside peers on assorted ports and fails SSH logins against its internal peer: tens
    of sessions within duration_s (plus the last SYN retries), not thousands."""
    packets = small["groups"][ONSET["host"]]
    syn_dst = [(p[IP].dst, p[TCP].dport) for _, p in packets if TCP in p and p[TCP].flags == "S"]
    outside = {d for d, _ in syn_dst if d.startswith("198.18.6.")}
    ssh = {(d, port) for d, port in syn_dst if d == "10.20.0.22"}
    assert (ONSET["peers"], {("10.20.0.22", 22)}) == (len(outside), ssh)
    assert len({port for d, port in syn_dst if d in outside}) >= 4
    assert any(UDP in p and p[UDP].dport == 53 and p[IP].dst == ONSET["dns"] for _, p in packets)
    assert any(UDP in p and p[UDP].dport == 123 and p[IP].dst == ONSET["ntp"][0] for _, p in packets)
    span_s = (packets[-1][0] - packets[0][0]) / 1e9
    assert span_s <= ONSET["duration_s"] + 15
    assert len(packets) < 1000


def test_upload_sends_bytes_out_in_mss_segments_acked_back_over_duration(small):
    """The upload: bytes_out (plus a small TLS-like preamble) from host to peer in 1460-byte
    segments at a steady rate over duration_s, about one ACK back per two segments."""
    packets = small["groups"][UPLOAD["host"]]
    up = [p for _, p in packets if p[IP].src == UPLOAD["host"] and _payload(p)]
    acks = [p for _, p in packets if p[IP].dst == UPLOAD["host"] and not _payload(p)]
    sent = sum(_payload(p) for p in up)
    assert UPLOAD["bytes_out"] <= sent <= UPLOAD["bytes_out"] + 1000
    assert 1460 == max(_payload(p) for p in up)
    assert abs(len(acks) - len(up) / 2) < 10
    span_s = (packets[-1][0] - packets[0][0]) / 1e9
    assert UPLOAD["duration_s"] <= span_s <= UPLOAD["duration_s"] + 2


def test_role_change_host_accepts_sessions_from_its_peers(small):
    """The role-change host receives `sessions` SYNs on its port, round robin from its
    peers, answers each, and opens none itself."""
    for spec in (ROLE, SMB):
        packets = [p for _, p in small["groups"][spec["host"]]]
        syns = [p for p in packets if p[TCP].flags == "S"]
        assert (spec["sessions"], {spec["host"]}, {spec["port"]}) == (len(syns), {p[IP].dst for p in syns}, {p[TCP].dport for p in syns})
        assert set(spec["peers"]) == {p[IP].src for p in syns}
        assert spec["sessions"] == sum(1 for p in packets if p[TCP].flags == "SA" and p[IP].src == spec["host"])
        assert sum(_payload(p) for p in packets if p[IP].src == spec["host"]) > 1000 * spec["sessions"]


def test_frames_use_the_hosts_own_mac_and_ttl(small):
    """A host's inserted frames carry the MAC and TTL its benign frames carry; frames to an
    outside peer go to the router's MAC (the gateway's, as the benign capture shows it)."""
    benign = [Ether(raw) for _, raw in small["benign"][:5000]]
    mac = {p[IP].src: p.src for p in benign if IP in p and p[IP].src == BEACON["host"]}
    ttl = Counter(p[IP].ttl for p in benign if IP in p and p[IP].src == BEACON["host"] and not p[IP].dst.startswith(("224.", "239.", "255.")))
    router = Counter(p.dst for p in benign if IP in p and p[IP].src == BEACON["host"] and not p[IP].dst.startswith(("10.", "224.", "239.", "255.")))
    sent = [p for _, p in small["groups"][BEACON["host"]] if p[IP].src == BEACON["host"]]
    assert {mac[BEACON["host"]]} == {p.src for p in sent}
    assert {ttl.most_common(1)[0][0]} == {p[IP].ttl for p in sent}
    assert {router.most_common(1)[0][0]} == {p.dst for p in sent}


def test_generation_is_deterministic(small, tmp_path):
    """The same list spliced twice gives the same bytes; another seed other packets."""
    res = splice(small["dir"] / "benign.pcap", [], tmp_path / "again.pcap", tmp_path / "again.csv",
                 scenarios=load_scenario_list(small["dir"] / "list.yaml"))
    assert (small["dir"] / "out.pcap").read_bytes() == (tmp_path / "again.pcap").read_bytes()
    assert (small["dir"] / "truth.csv").read_text() == (tmp_path / "again.csv").read_text()
    other = load_scenario_list(_write_list(tmp_path / "other.yaml", SCENARIOS[:1], "10.20.0.0/16", "10.20.0.1", seed=4))
    res = splice(small["dir"] / "benign.pcap", [], tmp_path / "other.pcap", tmp_path / "other.csv", scenarios=other)
    assert res.behaviours[0].end_ns != small["res"].behaviours[0].end_ns


@pytest.mark.parametrize("entry, message", [
    ({"kind": "botnet", "offset_s": 1, "host": "10.0.0.1"}, "unknown kind"),
    ({"kind": "beacon", "offset_s": 1, "host": "10.0.0.1"}, "needs peer"),
    ({**BEACON, "period": 5}, "unknown key"),
    ({**BEACON, "jitter_s": 50}, "jitter_s < period_s"),
    ({**BEACON, "peer": "example.org"}, "not an IPv4 address"),
    ({**ROLE, "peers": []}, "list of IPv4"),
    ({**UPLOAD, "offset_s": -1}, "offset_s"),
])
def test_scenario_list_errors_are_config_errors(tmp_path, entry, message):
    """A bad entry is a ConfigError naming the entry and the problem."""
    with pytest.raises(ConfigError, match=message):
        load_scenario_list(_write_list(tmp_path / "bad.yaml", [entry], "10.20.0.0/16", "10.20.0.1"))


# --------------------------------------------------------------------------------------
# The real honeypot capture, and the lists in docs/eval
# --------------------------------------------------------------------------------------


@pytest.mark.shared_data
@pytest.mark.slow
def test_every_kind_in_the_real_honeypot_capture(tmp_path):
    """Into the real honeypot capture: every kind, valid checksums, exact truth, the
    bridge's own MAC and TTL (64, unicast), benign frames untouched."""
    honeypot = shared_file("iot23-honeypot-4-1/honeypot-4-1.pcap")
    host = "192.168.1.132"
    scenarios = [
        {"kind": "beacon", "offset_s": 1000, "host": host, "peer": "203.0.113.10", "period_s": 300, "jitter_s": 30, "duration_s": 3600},
        {"kind": "onset", "offset_s": 6000, "host": host, "peers": 15, "internal_peers": ["192.168.1.1"], "dns": "192.168.1.1"},
        {"kind": "upload", "offset_s": 8000, "host": host, "peer": "203.0.113.20", "bytes_out": 500_000, "duration_s": 600},
        {"kind": "role_change", "offset_s": 10000, "host": host, "peers": ["192.168.1.1", "192.168.1.20", "192.168.1.21"], "sessions": 4,
         "duration_s": 600, "session_s": 30},
    ]
    res = splice(honeypot, [], tmp_path / "out.pcap", tmp_path / "truth.csv",
                 scenarios=load_scenario_list(_write_list(tmp_path / "l.yaml", scenarios, "192.168.1.0/24", "192.168.1.1")))
    benign, out, added = _inserted(honeypot, tmp_path / "out.pcap")
    assert len(benign) + sum(b.packets for b in res.behaviours) == len(out)
    packets = [(t, Ether(raw)) for t, raw in added]
    assert [] == [p.summary() for _, p in packets if not _checksums_ok(p)]
    assert {"00:17:88:75:b3:82"} == {p.src for _, p in packets if p[IP].src == host}
    assert {64} == {p[IP].ttl for _, p in packets if p[IP].src == host}
    starts = sorted(t for t, _ in packets)
    rows = list(csv.DictReader((tmp_path / "truth.csv").read_text(encoding="utf-8").splitlines()))
    for behaviour, row in zip(res.behaviours, rows, strict=True):
        lo, hi = (int(row[k].replace(".", "")) * 1000 for k in ("start_epoch_pcap", "end_epoch_pcap"))
        inside = [t for t in starts if lo <= t < hi]
        assert (behaviour.packets, inside[0], inside[-1] + 1000) == (len(inside), lo, hi)


def _list_intervals(list_path: str, benign: Path, tmp_path: Path) -> tuple[list, int]:
    res = splice(benign, [], tmp_path / "out.pcap", tmp_path / "truth.csv", scenarios=load_scenario_list(REPO / list_path))
    return load_truth(tmp_path / "truth.csv"), res.start_ns


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize("list_path, capture, split_s", [
    ("docs/eval/honeypot-scenarios.yaml", "iot23-honeypot-4-1/honeypot-4-1.pcap", 43200),
    ("docs/eval/westermo-scenarios.yaml", "westermo/right.pcap", 2700),
    ("docs/eval/honeypot-scenarios-heldout.yaml", "iot23-honeypot-4-1/honeypot-4-1.pcap", 43200),
    ("docs/eval/westermo-scenarios-heldout.yaml", "westermo/right.pcap", 2700),
])
def test_docs_lists_put_every_kind_in_both_halves_without_overlap(tmp_path, list_path, capture, split_s):
    """The lists in docs/eval: every kind (and the x100 slow attacks) in both halves of the
    evaluation split, no two instances overlapping, none straddling the split or past the
    capture's end; the honeypot's uploads at night (20:00-04:00 UTC)."""
    benign = shared_file(capture)
    truth, t0 = _list_intervals(list_path, benign, tmp_path)
    end_ns = int(read_records(benign).ts_ns.max())
    split_ns = t0 + split_s * 10**9
    halves: dict[str, set[str]] = {"A": set(), "B": set()}
    for iv in truth:
        kind = iv.description.split("kind=")[1].split()[0] if "kind=" in iv.description else "slow"
        assert iv.end_ns <= split_ns or iv.start_ns >= split_ns, iv.event
        assert iv.end_ns <= end_ns, iv.event
        halves["B" if iv.end_ns <= split_ns else "A"].add(kind)
        if kind == "upload" and "honeypot" in list_path:
            for ns in (iv.start_ns, iv.end_ns):
                hour = dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).hour
                assert hour >= 20 or hour < 4, iv.event
    every = {"beacon", "onset", "upload", "role_change", "slow"}
    assert (every, every) == (halves["A"], halves["B"])
    ordered = sorted(truth, key=lambda iv: iv.start_ns)
    assert all(a.end_ns <= b.start_ns for a, b in zip(ordered, ordered[1:], strict=False))


def test_the_office_list_puts_each_instance_on_its_own_workstation_in_the_test_half_with_peers_the_office_never_uses():
    """docs/eval/office-scenarios.yaml (docs/EVALUATION.md section xlix) is read into a 9 GB
    capture no test builds; what it must hold of the office `netad synth --hosts 200 --seed 3`
    makes is checked here: every actor and internal peer a host of it, one instance per
    workstation, every outside peer outside the ranges it talks to, each instance inside the
    test half of its 12 h (offsets 21,600 to 43,200 s; an x100 slow attack lasts under 25 min)."""
    import ipaddress

    from detector.synth._network import ip_str, make_network, rng_for

    office = load_scenario_list(REPO / "docs/eval/office-scenarios.yaml")
    net = make_network("demo", 200, rng_for(3, "network"))
    workstations = {ip_str(int(a)) for a in net.workstations}
    lan = workstations | {ip_str(int(a)) for a in net.servers} | {ip_str(net.gateway)}
    roles = (net.upstream_ntp, net.cloud_agent, net.backup_peer, net.ssh_attacker, net.remote_admin, *net.upstream_dns.tolist())
    talked_to = [ipaddress.ip_address(ip_str(int(a))) for a in (*net.external.tolist(), *roles)]
    actors = [s.host for s in office.scenarios] + [a.rewrite_dst for a in office.attacks]
    assert len(actors) == len(set(actors)) and set(actors) <= workstations
    outside: list[str] = [str(a.rewrite_src) for a in office.attacks]
    for s in office.scenarios:
        p = s.params
        inside = (p["peers"] if s.kind == "role_change" else []) + p.get("internal_peers", []) + ([p["dns"]] if p.get("dns") else [])
        assert set(inside) <= lan, s
        outside += ([p["peer"]] if "peer" in p else []) + p.get("ntp", [])
        if s.kind == "onset":
            assert not any(a in ipaddress.ip_network(p["peer_net"]) for a in talked_to), s
        assert 21600 <= s.offset_s and s.offset_s + p["duration_s"] <= 43200, s
    assert not {ipaddress.ip_address(a) for a in outside} & set(talked_to) and not set(outside) & lan
    assert all(100 == a.slow and 21600 <= a.offset_s <= 43200 - 25 * 60 for a in office.attacks)
