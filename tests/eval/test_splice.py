"""`netad splice` (detector.eval.splice) on the real captures in ../shared/data: real attacks
inserted into the real honeypot capture. Checked independently of the splice code: packet
counts, timestamps, rewritten addresses, checksums (scapy recomputes them), the truth CSV
character for character, and re-encapsulation of a raw-IP attack into Ethernet."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from detector.capture.packets.pcap import read_capture, read_records
from detector.capture.packets.pcapwriter import write_pcap
from detector.contracts import addr_to_pair
from detector.errors import ConfigError
from detector.eval.splice import AttackSpec, event_name, splice
from detector.truth import COLUMNS, load_truth

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
HONEYPOT = SHARED_DATA / "iot23-honeypot-4-1" / "honeypot-4-1.pcap"
SYNFLOOD = SHARED_DATA / "attacks" / "stopddos" / "pkt.TCP.synflood.spoofed.pcap"
MASSCAN_TCP = SHARED_DATA / "attacks" / "esnet" / "tcp_0_1000_20190821.pcap"
SSH_BRUTE = SHARED_DATA / "attacks" / "slips" / "malicious-ssh-bruteforce.pcap"
VICTIM = "192.168.1.132"

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present (fresh clone without the shared captures; CI has them)"),
]

ATTACKS = [
    f"{SYNFLOOD}@3600.25:rewrite-dst={VICTIM},event=ATTACK-SYNFLOOD",
    f"{MASSCAN_TCP}@7200.5:rewrite-src=203.0.113.7,rewrite-dst={VICTIM},event=ATTACK-MASSCAN-TCP",
    f"{SSH_BRUTE}@10800.75:rewrite-src=203.0.113.9,rewrite-dst={VICTIM}",
]


@pytest.fixture(scope="module")
def spliced(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("splice")
    specs = [AttackSpec.parse(a) for a in ATTACKS]
    res = splice(HONEYPOT, specs, d / "out.pcap", d / "truth.csv")
    return {"res": res, "out": read_records(d / "out.pcap"), "truth_path": d / "truth.csv", "dir": d}


def _in(rec, lo_ns: int, hi_ns: int) -> int:
    return int(((rec.ts_ns >= lo_ns) & (rec.ts_ns < hi_ns)).sum())


def test_packet_counts_add_up(spliced):
    """Output frames = benign frames + every attack's frames, none lost or duplicated."""
    expected = len(read_records(HONEYPOT)) + sum(len(read_records(p)) for p in (SYNFLOOD, MASSCAN_TCP, SSH_BRUTE))
    assert expected == len(spliced["out"])
    assert bool(np.all(np.diff(spliced["out"].ts_ns) >= 0)), "output is not in time order"


def test_every_attack_packet_lies_inside_its_declared_interval(spliced):
    """Inside each truth interval the output holds exactly the benign packets there plus all
    of the attack's packets."""
    benign = read_records(HONEYPOT)
    for iv, path in zip(load_truth(spliced["truth_path"]), (SYNFLOOD, MASSCAN_TCP, SSH_BRUTE), strict=True):
        added = _in(spliced["out"], iv.start_ns, iv.end_ns) - _in(benign, iv.start_ns, iv.end_ns)
        assert len(read_records(path)) == added, iv.event


def test_truth_csv_is_exact(spliced):
    """One row per attack: start = benign start + offset, end = start + the attack's span +
    1 us, written from integers (no float rounding), attacker and target in the description."""
    benign_t0 = int(read_records(HONEYPOT).ts_ns.min())

    def text(ns: int) -> str:
        return f"{ns // 10**9}.{ns % 10**9 // 1000:06d}"

    expected = [COLUMNS]
    for path, offset_us, event, attacker in (
        (SYNFLOOD, 3_600_250_000, "ATTACK-SYNFLOOD", "spoofed"),
        (MASSCAN_TCP, 7_200_500_000, "ATTACK-MASSCAN-TCP", "203.0.113.7"),
        (SSH_BRUTE, 10_800_750_000, "ATTACK-MALICIOUS-SSH-BRUTEFORCE", "203.0.113.9"),
    ):
        rec = read_records(path)
        span = int(rec.ts_ns.max() - rec.ts_ns.min())
        start = benign_t0 + offset_us * 1000
        end = start + span + 1000
        sources = {SYNFLOOD: 37623, MASSCAN_TCP: 1, SSH_BRUTE: 1}[path]
        expected.append([event, "1", text(start - benign_t0), text(end - benign_t0), text(start), text(end),
                         f"attacker={attacker} target={VICTIM} sources={sources} packets={len(rec)} file={path.name}"])
    with open(spliced["truth_path"], newline="") as fh:
        assert expected == list(csv.reader(fh))


def test_rewritten_addresses_replace_the_originals(spliced):
    """The masscan attacker and victim are gone; 203.0.113.7 -> 192.168.1.132 carries all of
    its packets; the spoofed flood's sources are kept, its victim is the honeypot."""
    b = read_capture(spliced["dir"] / "out.pcap")

    def count(src: str | None, dst: str | None) -> int:
        m = np.ones(len(b), dtype=bool)
        if src:
            m &= b.src_lo == np.uint64(addr_to_pair(src)[1])
        if dst:
            m &= b.dst_lo == np.uint64(addr_to_pair(dst)[1])
        return int(m.sum())

    assert 0 == count("172.31.15.102", None) + count(None, "198.124.152.15") + count(None, "10.10.10.10")
    assert len(read_records(MASSCAN_TCP)) == count("203.0.113.7", VICTIM)
    iv = load_truth(spliced["truth_path"])[0]
    flood = (b.ts_ns >= iv.start_ns) & (b.ts_ns < iv.end_ns) & (b.dst_lo == np.uint64(addr_to_pair(VICTIM)[1]))
    assert int(flood.sum()) >= len(read_records(SYNFLOOD))
    assert len(np.unique(b.src_lo[flood])) > 30_000


def _checksums_ok(frame: bytes) -> tuple[bool, bool | None]:
    """(IPv4 header checksum valid, TCP/UDP checksum valid or None), recomputed by scapy."""
    ip = Ether(frame)[IP]
    fresh = IP(bytes(ip))
    del fresh.chksum
    ip_ok = IP(bytes(fresh)).chksum == ip.chksum
    for layer in (TCP, UDP):
        if layer in ip:
            again = IP(bytes(ip))
            del again[layer].chksum
            return ip_ok, IP(bytes(again))[layer].chksum == ip[layer].chksum
    return ip_ok, None


@pytest.mark.parametrize(("row", "path"), [(0, SYNFLOOD), (1, MASSCAN_TCP), (2, SSH_BRUTE)])
def test_checksums_stay_valid_after_rewriting(spliced, row, path):
    """On a sample of each rewritten attack, scapy finds every IPv4 header checksum valid and
    every TCP checksum exactly as valid as in the original capture (the SSH capture has
    offloaded, invalid checksums on one side; the others are all valid)."""
    out, original = spliced["out"], read_records(path)
    iv = load_truth(spliced["truth_path"])[row]
    benign = read_records(HONEYPOT)
    idx = np.flatnonzero((out.ts_ns >= iv.start_ns) & (out.ts_ns < iv.end_ns))
    in_benign = np.isin(out.ts_ns[idx], benign.ts_ns)  # the interval may hold benign packets too
    idx = idx[~in_benign]
    assert len(original) == idx.size
    sample = np.random.default_rng(0).choice(idx.size, size=min(150, idx.size), replace=False)
    for k in sample.tolist():
        ip_ok, l4_ok = _checksums_ok(out.frame(int(idx[k])))
        _, l4_before = _checksums_ok(original.frame(k))
        assert ip_ok and l4_ok == l4_before, (path.name, k)
    if path != SSH_BRUTE:
        assert all(_checksums_ok(out.frame(int(idx[k])))[1] for k in sample.tolist())


def test_raw_ip_attack_is_reencapsulated_into_ethernet(tmp_path):
    """An attack captured as raw IP (link type 101) spliced into the Ethernet honeypot gives
    the same IP packets as its Ethernet original spliced the same way."""
    eth = read_records(SSH_BRUTE)
    raw = tmp_path / "raw.pcap"
    write_pcap(raw, eth.ts_ns, eth.data, eth.offsets + 14, eth.caplens - 14, linktype=101)
    spec = ":rewrite-src=203.0.113.9,rewrite-dst=192.168.1.132,event=X"
    a = splice(HONEYPOT, [AttackSpec.parse(f"{raw}@100{spec}")], tmp_path / "a.pcap", tmp_path / "a.csv")
    b = splice(HONEYPOT, [AttackSpec.parse(f"{SSH_BRUTE}@100{spec}")], tmp_path / "b.pcap", tmp_path / "b.csv")
    assert a.attacks[0].reencapsulated and not b.attacks[0].reencapsulated
    assert 1 == read_records(tmp_path / "a.pcap").linktype
    pa, pb = read_capture(tmp_path / "a.pcap"), read_capture(tmp_path / "b.pcap")
    for name, column in pa.columns().items():
        assert np.array_equal(column, getattr(pb, name)), name
    assert (tmp_path / "a.csv").read_text().splitlines()[1:] == [
        line.replace("file=malicious-ssh-bruteforce.pcap", "file=raw.pcap") for line in (tmp_path / "b.csv").read_text().splitlines()[1:]
    ]


def test_slow_stretches_the_attack_timeline_and_keeps_its_packets(tmp_path):
    """slow=50: the same frames in the same order, every offset from the attack's first packet
    50 times longer (to the microsecond the pcap holds), and the truth interval stretched too."""
    spec = "rewrite-src=203.0.113.9,rewrite-dst=192.168.1.132,event=SSH"
    plain = splice(HONEYPOT, [AttackSpec.parse(f"{SSH_BRUTE}@100:{spec}")], tmp_path / "p.pcap", tmp_path / "p.csv").attacks[0]
    slow = splice(HONEYPOT, [AttackSpec.parse(f"{SSH_BRUTE}@100:{spec},slow=50")], tmp_path / "s.pcap", tmp_path / "s.csv").attacks[0]
    assert plain.start_ns == slow.start_ns and plain.packets == slow.packets
    original = read_records(SSH_BRUTE)
    span_ns = int(original.ts_ns.max() - original.ts_ns.min())
    assert abs((slow.end_ns - slow.start_ns) - 50 * span_ns) <= 1000
    assert "slow=50" in (tmp_path / "s.csv").read_text() and "slow=" not in (tmp_path / "p.csv").read_text()

    def frames(path, attack):
        rec = read_records(path)
        inside = np.flatnonzero((rec.ts_ns >= attack.start_ns) & (rec.ts_ns < attack.end_ns))
        return rec, Counter(bytes(rec.data[rec.offsets[i] : rec.offsets[i] + rec.caplens[i]]) for i in inside)

    _, benign_in_span = frames(HONEYPOT, slow)
    rec, in_span = frames(tmp_path / "s.pcap", slow)
    assert frames(tmp_path / "p.pcap", plain)[1] - frames(HONEYPOT, plain)[1] == in_span - benign_in_span
    expected = slow.start_ns + (original.ts_ns - original.ts_ns.min()) * 50
    written = np.sort(rec.ts_ns)
    nearest = written[np.minimum(np.searchsorted(written, expected), written.size - 1)]
    assert np.all(np.abs(nearest - expected) <= 1000)


def test_attack_spec_syntax():
    spec = AttackSpec.parse("/x/y@z.pcap@12.5:rewrite-src=10.0.0.1,event=E")
    assert (Path("/x/y@z.pcap"), 12.5, "10.0.0.1", None, "E") == (spec.path, spec.offset_s, spec.rewrite_src, spec.rewrite_dst, spec.event)
    assert 600.0 == AttackSpec.parse("f.pcap@1:slow=600").slow and 1.0 == spec.slow
    for bad in ("file.pcap", "f.pcap@soon", "f.pcap@1:rewrite-src=nope", "f.pcap@1:colour=red", "f.pcap@-5", "f.pcap@1:slow=0.5",
                "f.pcap@1:slow=fast", "f.pcap@1:slow=nan"):
        with pytest.raises(ConfigError):
            AttackSpec.parse(bad)
    assert "ATTACK-TCP-SYNFLOOD-SPOOFED" == event_name(SYNFLOOD)
    assert "ATTACK-TCP-0-1000" == event_name(MASSCAN_TCP)


def test_an_attack_after_the_benign_capture_or_on_no_host_of_it_is_warned_of(spliced, tmp_path):
    """Offsets are seconds: an attack put past the benign capture's last packet has no benign
    traffic around it; an attack whose victim is left as its own capture had it hits no host
    of the benign one. Each is said (`netad splice` prints `warning:` lines on stderr); the
    splice above, on the honeypot's hosts and inside its span, has nothing to say."""
    assert [] == spliced["res"].warnings
    benign = read_records(SSH_BRUTE)  # a small benign capture of its own
    span_s = (int(benign.ts_ns.max()) - int(benign.ts_ns.min())) / 1e9
    host = next(p[IP].dst for p in _packets(SSH_BRUTE) if IP in p)
    res = splice(SSH_BRUTE, [AttackSpec.parse(f"{SYNFLOOD}@{span_s + 3600:.0f}:event=LATE"),
                             AttackSpec.parse(f"{MASSCAN_TCP}@1:rewrite-dst={host},event=ON-A-HOST")],
                 tmp_path / "w.pcap", tmp_path / "w.csv")
    assert 2 == len(res.warnings), res.warnings
    assert res.warnings[0].startswith("LATE starts at +") and "after the benign capture's last packet" in res.warnings[0]
    assert res.warnings[1] == (f"LATE: its target 10.10.10.10 is no address of {SSH_BRUTE}, so the attack hits no host of it: "
                               "give rewrite-dst=IP (one of the capture's hosts)")


def _packets(path: Path) -> list:
    from scapy.utils import rdpcap

    return list(rdpcap(str(path), count=20))
