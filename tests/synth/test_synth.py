"""The synthetic traffic generator (detector.synth.generate) and the pcap writer it uses.

The generated capture is read back with scapy (its raw reader for every record, full
dissection where checksums are checked) and its ground truth is checked against the
packets themselves: every attack's packets lie inside its interval, the attack-free prefix
holds no attack traffic, the capture is valid, ordered and reproducible.
"""

from __future__ import annotations

import csv
import ipaddress
import itertools
import struct
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils import RawPcapReader, rdpcap

from detector.capture.packets.pcapwriter import write_pcap
from detector.synth.generate import TRUTH_HEADER, SynthResult, generate

SYN, RST, ACK = 0x02, 0x04, 0x10
HOME = ipaddress.IPv4Network("10.20.0.0/16")
WEB_SERVER = int(ipaddress.IPv4Address("10.20.0.6"))
FILE_SERVER = int(ipaddress.IPv4Address("10.20.0.5"))


@dataclass
class Capture:
    """Every frame's timestamp and, for IPv4 frames, header fields as numpy columns."""

    ts_ns: np.ndarray
    wire_len: np.ndarray
    is_ipv4: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    proto: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    flags: np.ndarray
    seq: np.ndarray
    ack: np.ndarray
    ip_len: np.ndarray
    header_checksum_ok: np.ndarray

    def ipv4(self, mask: np.ndarray) -> np.ndarray:
        return self.is_ipv4 & mask


def read_capture(path: Path) -> Capture:
    """All records through scapy's raw reader, then header fields decoded with numpy."""
    heads, ts, wire = [], [], []
    with RawPcapReader(str(path)) as reader:
        for data, meta in reader:
            heads.append(data[:64].ljust(64, b"\0"))
            ts.append(meta.sec * 1_000_000_000 + meta.usec * 1000)
            wire.append(meta.wirelen)
    raw = np.frombuffer(b"".join(heads), dtype=np.uint8).reshape(-1, 64).astype(np.int64)

    def u16(at: int) -> np.ndarray:
        return raw[:, at] << 8 | raw[:, at + 1]

    words = sum(u16(14 + 2 * i) for i in range(10))
    words = (words & 0xFFFF) + (words >> 16)
    words = (words & 0xFFFF) + (words >> 16)
    return Capture(
        ts_ns=np.array(ts, dtype=np.int64),
        wire_len=np.array(wire, dtype=np.int64),
        is_ipv4=(u16(12) == 0x0800) & (raw[:, 14] == 0x45),
        src=u16(26) << 16 | u16(28),
        dst=u16(30) << 16 | u16(32),
        proto=raw[:, 23],
        sport=u16(34),
        dport=u16(36),
        flags=raw[:, 47],
        seq=u16(38) << 16 | u16(40),
        ack=u16(42) << 16 | u16(44),
        ip_len=u16(16),
        header_checksum_ok=words == 0xFFFF,
    )


def truth_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def interval(result: SynthResult, event: str) -> tuple[int, int]:
    """[first, last] packet time of an event, ns, from the truth CSV's epoch columns."""
    assert result.truth is not None
    (row,) = [r for r in truth_rows(result.truth) if r["event"] == event]
    # exact decimal arithmetic: a float's rounding could move a bound across a packet
    return int(Decimal(row["start_epoch_pcap"]) * 10**9), int(Decimal(row["end_epoch_pcap"]) * 10**9)


def inside(ts_ns: np.ndarray, span: tuple[int, int]) -> np.ndarray:
    return (ts_ns >= span[0]) & (ts_ns <= span[1])


def home(ip: np.ndarray) -> np.ndarray:
    return (ip >> 16) == (int(HOME.network_address) >> 16)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    """A short demo: 10 minutes benign, then 30 minutes with the attacks, 10 workstations."""
    out = tmp_path_factory.mktemp("synth")
    return generate(out / "demo.pcap", out / "demo_truth.csv", seed=11, benign_s=600, attack_s=1800, hosts=10)


@pytest.fixture(scope="module")
def capture(run: SynthResult) -> Capture:
    return read_capture(run.pcap)


# ---- determinism -------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(run: SynthResult, tmp_path: Path) -> None:
    """The capture and truth are a pure function of the settings and seed."""
    again = generate(tmp_path / "a.pcap", tmp_path / "a.csv", seed=11, benign_s=600, attack_s=1800, hosts=10)
    assert run.pcap.read_bytes() == again.pcap.read_bytes()
    assert run.truth is not None and again.truth is not None
    assert run.truth.read_bytes() == again.truth.read_bytes()
    other = generate(tmp_path / "b.pcap", tmp_path / "b.csv", seed=12, benign_s=600, attack_s=1800, hosts=10)
    assert run.pcap.read_bytes() != other.pcap.read_bytes()


# ---- validity ----------------------------------------------------------------------------


def test_scapy_dissects_every_frame_and_all_checksums_are_valid(tmp_path: Path) -> None:
    """On a short benign capture: scapy reads every frame as Ethernet; recomputing the IPv4,
    UDP (also over IPv6) and ICMP checksums of every packet, and of a sample of TCP packets,
    gives the stored values; IP lengths match the frames (padded to 60 bytes); there are
    ARP and IPv6 frames too."""
    result = generate(tmp_path / "small.pcap", seed=3, benign_s=180, attack_s=0, hosts=6)
    packets = rdpcap(str(result.pcap))
    assert result.packets == len(packets)
    kinds = {"tcp": 0, "udp": 0, "icmp": 0, "arp": 0, "ipv6": 0}
    stride = max(1, len(packets) // 600)  # rebuilding is slow: every TCP packet would take long
    for k, pkt in enumerate(packets):
        assert isinstance(pkt, Ether)
        if TCP in pkt and k % stride:
            kinds["tcp"] += 1
        elif IP in pkt:
            ip = pkt[IP]
            transport = ip.payload
            stored = (ip.chksum, transport.chksum)
            rebuilt = Ether(bytes(pkt))
            del rebuilt[IP].chksum
            del rebuilt[IP].payload.chksum
            rebuilt = Ether(bytes(rebuilt))
            assert stored == (rebuilt[IP].chksum, rebuilt[IP].payload.chksum), pkt.summary()
            assert len(pkt) == max(60, 14 + ip.len)
            kinds[{TCP: "tcp", UDP: "udp", ICMP: "icmp"}[type(transport)]] += 1
        elif IPv6 in pkt:
            stored = pkt[UDP].chksum
            rebuilt = Ether(bytes(pkt))
            del rebuilt[UDP].chksum
            assert stored == Ether(bytes(rebuilt))[UDP].chksum
            kinds["ipv6"] += 1
        else:
            assert ARP in pkt
            kinds["arp"] += 1
    assert all(count > 0 for count in kinds.values()), kinds
    assert not any(Raw in p and p[Raw].load.strip(b"\0") for p in packets if IP in p)  # payloads are zeros


def test_every_ipv4_header_checksum_is_valid(capture: Capture) -> None:
    """The vectorised checksum is right for every IPv4 packet, attacks included."""
    assert capture.is_ipv4.sum() > 100_000
    assert capture.header_checksum_ok[capture.is_ipv4].all()


def test_tcp_sequence_and_ack_numbers_follow_the_bytes_sent(capture: Capture) -> None:
    """In every TCP connection opened inside the capture, each side's sequence number
    advances by exactly the payload it sent (SYN and FIN count one), and no ACK covers bytes
    the tap has not yet seen from the other side."""
    tcp = np.flatnonzero(capture.ipv4(capture.proto == 6))
    header_bytes = np.where(capture.flags[tcp] & SYN, 24, 20)
    payload = capture.ip_len[tcp] - 20 - header_bytes
    next_seq: dict[tuple[int, int, int, int], int] = {}
    checked = 0
    columns = (capture.src[tcp], capture.sport[tcp], capture.dst[tcp], capture.dport[tcp], capture.flags[tcp])
    for i, (src, sport, dst, dport, flags) in enumerate(zip(*(c.tolist() for c in columns), strict=True)):
        key, back = (src, sport, dst, dport), (dst, dport, src, sport)
        seq, ack = int(capture.seq[tcp[i]]), int(capture.ack[tcp[i]])
        if flags & SYN:
            next_seq[key] = (seq + 1) % 2**32
            continue
        if flags & RST or key not in next_seq:  # resets, and connections older than the capture
            continue
        assert seq == next_seq[key], (i, key)
        next_seq[key] = (seq + int(payload[i]) + (flags & 1)) % 2**32
        if flags & ACK and back in next_seq:
            assert (next_seq[back] - ack) % 2**32 < 2**31, (i, key)  # ack <= what was sent
        checked += 1
    assert checked > 50_000


def test_capture_is_time_ordered_and_spans_the_requested_time(run: SynthResult, capture: Capture) -> None:
    """Frames are in time order; the first is at the start time, all before the end."""
    assert (np.diff(capture.ts_ns) >= 0).all()
    assert capture.ts_ns[0] == int(run.start_epoch_s * 1e9) == 1_700_000_000 * 10**9
    assert capture.ts_ns[-1] < run.end_epoch_s * 1e9
    assert run.end_epoch_s - run.start_epoch_s == pytest.approx(2400.0)
    assert run.benign_until_epoch_s - run.start_epoch_s == pytest.approx(600.0)
    assert run.packets == capture.ts_ns.shape[0]
    assert run.home_net == "10.20.0.0/16"


def test_benign_traffic_is_two_way_and_varies_by_host(run: SynthResult, capture: Capture) -> None:
    """DNS queries get answers, pings get replies, TCP handshakes are answered, and
    workstations differ in how much they send."""
    prefix = capture.ts_ns < run.benign_until_epoch_s * 1e9
    udp53 = capture.ipv4(prefix & (capture.proto == 17))
    queries = udp53 & (capture.dport == 53)
    answers = udp53 & (capture.sport == 53)
    assert queries.sum() > 50 and answers.sum() >= 0.95 * queries.sum()
    icmp = capture.ipv4(prefix & (capture.proto == 1))
    icmp_type = capture.sport >> 8
    assert (icmp & (icmp_type == 0)).sum() >= 0.8 * (icmp & (icmp_type == 8)).sum() > 0
    tcp = capture.ipv4(prefix & (capture.proto == 6))
    syn = tcp & (capture.flags == SYN)
    syn_ack = tcp & (capture.flags == SYN | ACK)
    assert syn_ack.sum() >= 0.95 * syn.sum() > 50
    workstations = capture.ipv4(prefix & ((capture.src >> 8) == (int(ipaddress.IPv4Address("10.20.1.0")) >> 8)))
    per_host = np.unique(capture.src[workstations], return_counts=True)[1]
    assert per_host.size >= 8 and per_host.max() > 2 * per_host.min()  # some arrive late
    rate_pps = prefix.sum() / (run.benign_until_epoch_s - run.start_epoch_s)
    assert 5 < rate_pps < 100


# ---- ground truth ------------------------------------------------------------------------


def test_truth_csv_has_the_exact_header_and_one_row_per_event(run: SynthResult) -> None:
    """Westermo's columns, in order; three attacks labelled 1, two unusual events labelled 0;
    offsets agree with epochs; descriptions name attacker and target."""
    assert run.truth is not None
    assert run.truth.read_text().splitlines()[0] == ",".join(TRUTH_HEADER)
    assert ",".join(TRUTH_HEADER) == (
        "event,is_attack_or_fault,start_offset_s,end_offset_s,start_epoch_pcap,end_epoch_pcap,description"
    )
    rows = truth_rows(run.truth)
    assert sorted((r["event"], r["is_attack_or_fault"]) for r in rows) == [
        ("ATTACK-PORTSCAN", "1"),
        ("ATTACK-SSH-BRUTEFORCE", "1"),
        ("ATTACK-SYNFLOOD", "1"),
        ("GOOD-BULK-COPY", "0"),
        ("GOOD-SSH", "0"),
    ]
    for row in rows:
        for edge in ("start", "end"):
            offset_s = float(row[f"{edge}_epoch_pcap"]) - run.start_epoch_s
            assert offset_s == pytest.approx(float(row[f"{edge}_offset_s"]), abs=0.011)
        if row["is_attack_or_fault"] == "1":
            assert "attacker=" in row["description"] and "target=" in row["description"]
    assert [a.event for a in run.attacks] == ["ATTACK-PORTSCAN", "ATTACK-SSH-BRUTEFORCE", "ATTACK-SYNFLOOD"]
    assert run.attacks[2].attacker == "spoofed" and run.attacks[2].target == "10.20.0.6"
    assert [e.event for e in run.events] == [r["event"] for r in rows]


def test_attacks_are_in_the_attack_part_and_ten_minutes_apart(run: SynthResult) -> None:
    """None in the benign prefix or the attack part's first 5 minutes; gaps >= 10 minutes."""
    spans = [(a.start_epoch_s, a.end_epoch_s) for a in run.attacks]
    assert spans[0][0] >= run.benign_until_epoch_s + 300
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start - end >= 600
    assert spans[-1][1] < run.end_epoch_s
    for event in run.events:
        assert 20 < event.end_epoch_s - event.start_epoch_s < 300, event


def test_syn_flood_packets_all_lie_inside_its_interval(run: SynthResult, capture: Capture) -> None:
    """Every SYN from outside to the web server's port 443 is inside ATTACK-SYNFLOOD, at a
    few thousand per second, from thousands of sources; the server's SYN-ACKs too."""
    span = interval(run, "ATTACK-SYNFLOOD")
    to_web = (capture.dst == WEB_SERVER) & (capture.dport == 443)
    flood = capture.ipv4(to_web & (capture.flags == SYN) & ~home(capture.src))
    assert flood.sum() > 20_000
    assert inside(capture.ts_ns[flood], span).all()
    rate_pps = flood.sum() / ((span[1] - span[0]) / 1e9)
    assert 1_500 < rate_pps < 5_000
    assert np.unique(capture.src[flood]).size > 0.9 * flood.sum()
    backscatter = capture.ipv4((capture.src == WEB_SERVER) & ~home(capture.dst))
    assert backscatter.sum() > 0 and inside(capture.ts_ns[backscatter], span).all()


def test_port_scan_reaches_over_900_ports_inside_its_interval_and_none_outside(
    run: SynthResult, capture: Capture
) -> None:
    """The scanner probes >= 900 distinct ports of the file server inside ATTACK-PORTSCAN;
    closed ports answer RST-ACK, open ones SYN-ACK; outside the interval the scanner only
    uses the file share like any workstation."""
    span = interval(run, "ATTACK-PORTSCAN")
    scanner = int(ipaddress.IPv4Address(run.attacks[0].attacker))
    to_target = capture.ipv4((capture.src == scanner) & (capture.dst == FILE_SERVER))
    during = to_target & inside(capture.ts_ns, span)
    assert np.unique(capture.dport[during & (capture.flags == SYN)]).size >= 900
    assert set(np.unique(capture.dport[to_target & ~inside(capture.ts_ns, span)]).tolist()) <= {445}
    answers = capture.ipv4((capture.src == FILE_SERVER) & (capture.dst == scanner)) & inside(capture.ts_ns, span)
    assert (answers & (capture.flags == RST | ACK)).sum() >= 900
    assert (answers & (capture.flags == SYN | ACK)).sum() >= 3


def test_ssh_brute_force_is_many_short_connections_inside_its_interval(run: SynthResult, capture: Capture) -> None:
    """Every packet to or from the outside attacker is inside ATTACK-SSH-BRUTEFORCE; it opens
    1-3 connections to port 22 a second, each a handful of packets."""
    span = interval(run, "ATTACK-SSH-BRUTEFORCE")
    attacker = int(ipaddress.IPv4Address(run.attacks[1].attacker))
    involved = capture.ipv4((capture.src == attacker) | (capture.dst == attacker))
    assert inside(capture.ts_ns[involved], span).all()
    connections = involved & (capture.src == attacker) & (capture.dport == 22) & (capture.flags == SYN)
    rate = connections.sum() / ((span[1] - span[0]) / 1e9)
    assert 0.5 < rate < 3.5
    assert 10 < involved.sum() / connections.sum() < 80


def test_benign_prefix_holds_no_attack_traffic(run: SynthResult, capture: Capture) -> None:
    """Before benign_until: no packet of the outside attacker, no SYN from outside to the web
    server, and no host touches more than a few dozen ports of another."""
    prefix = capture.ipv4(capture.ts_ns < run.benign_until_epoch_s * 1e9)
    attacker = int(ipaddress.IPv4Address(run.attacks[1].attacker))
    assert not (prefix & ((capture.src == attacker) | (capture.dst == attacker))).any()
    assert not (prefix & (capture.dst == WEB_SERVER) & (capture.flags == SYN) & ~home(capture.src)).any()
    tcp_syn = prefix & (capture.proto == 6) & (capture.flags == SYN)
    pairs = np.unique(np.column_stack([capture.src[tcp_syn], capture.dst[tcp_syn], capture.dport[tcp_syn]]), axis=0)
    _, ports_per_pair = np.unique(pairs[:, :2], axis=0, return_counts=True)
    assert ports_per_pair.max() <= 3


# ---- other profiles and settings ---------------------------------------------------------


def test_bench_profile_writes_exactly_the_packets_asked_for(tmp_path: Path) -> None:
    """`packets` sets the bench capture's size exactly; its truth has the header only."""
    result = generate(
        tmp_path / "bench.pcap", tmp_path / "bench.csv", profile="bench", packets=20_000, hosts=300, benign_s=60
    )
    capture = read_capture(result.pcap)
    assert result.packets == capture.ts_ns.shape[0] == 20_000
    assert result.home_net == "10.30.0.0/16" and result.attacks == []
    assert (np.diff(capture.ts_ns) >= 0).all() and capture.header_checksum_ok[capture.is_ipv4].all()
    assert np.unique(capture.src[capture.is_ipv4 & home(capture.src) == 0]).size > 100  # many peers
    assert result.truth is not None and result.truth.read_text() == ",".join(TRUTH_HEADER) + "\n"


def test_snaplen_cuts_frames_but_keeps_their_wire_length(tmp_path: Path) -> None:
    """With a snaplen, records hold at most that many bytes and the original length."""
    result = generate(tmp_path / "cut.pcap", seed=5, benign_s=120, attack_s=0, hosts=4, snaplen=96)
    with RawPcapReader(str(result.pcap)) as reader:
        lengths = [(len(data), meta.wirelen) for data, meta in reader]
    assert max(cap for cap, _ in lengths) == 96
    assert max(wire for _, wire in lengths) == 1514
    assert all(cap == min(wire, 96) for cap, wire in lengths)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"profile": "office"}, "unknown profile"),
        ({"attack_s": 900}, "too short"),
        ({"packets": 1000}, "bench profile"),
        ({"profile": "bench", "attack_s": 600}, "no attack part"),
        ({"benign_s": 0}, "benign_s"),
    ],
)
def test_impossible_settings_are_refused(tmp_path: Path, settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(tmp_path / "x.pcap", **settings)


@pytest.mark.slow
def test_default_demo_has_the_documented_size_and_schedule(tmp_path: Path) -> None:
    """The default demo (4 h benign, 1 h attacks, 20 workstations): some 500k-1.2M packets,
    attacks at least 10 minutes apart after the first 5 minutes of the attack hour."""
    result = generate(tmp_path / "demo.pcap", tmp_path / "demo.csv")
    assert 500_000 < result.packets < 1_200_000
    assert result.end_epoch_s - result.start_epoch_s == 5 * 3600
    starts = [a.start_epoch_s for a in result.attacks]
    ends = [a.end_epoch_s for a in result.attacks]
    assert starts[0] >= result.benign_until_epoch_s + 300
    assert all(b - a >= 600 for a, b in zip(ends, starts[1:], strict=False))


# ---- the pcap writer ---------------------------------------------------------------------


def test_write_pcap_round_trips_variable_frames_through_scapy(tmp_path: Path) -> None:
    """Frames of any length, taken from anywhere in the byte array, zero-padded up to their
    wire length and cut at the snaplen, come back as written."""
    rng = np.random.default_rng(0)
    n = 3000
    lengths = rng.integers(0, 300, n)
    frames = rng.integers(0, 256, int(lengths.sum()) + 100, dtype=np.uint8)
    offsets = rng.integers(0, 100, n) + np.cumsum(lengths) - lengths
    wire = lengths + rng.integers(0, 50, n)
    ts = 1_600_000_000 * 10**9 + np.sort(rng.integers(0, 10**12, n))
    path = tmp_path / "w.pcap"
    write_pcap(path, ts, frames, offsets, lengths, wire_lengths=wire, snaplen=256)
    with RawPcapReader(str(path)) as reader:
        records = list(reader)
    assert len(records) == n
    for k, (data, meta) in enumerate(records):
        expected = bytes(frames[offsets[k] : offsets[k] + lengths[k]]) + bytes(int(wire[k] - lengths[k]))
        assert data == expected[:256]
        assert meta.wirelen == wire[k]
        assert meta.sec * 10**9 + meta.usec * 1000 == ts[k] - ts[k] % 1000


def test_write_pcap_nanosecond_header_and_empty_capture(tmp_path: Path) -> None:
    """The nanosecond magic keeps nanoseconds; no frames gives just the file header."""
    path = tmp_path / "ns.pcap"
    frame = np.arange(60, dtype=np.uint8)
    write_pcap(path, np.array([1_700_000_000_123_456_789]), frame, np.array([0]), np.array([60]), nanosecond=True)
    magic, _, _, _, _, snaplen, linktype = struct.unpack_from("<IHHiIII", path.read_bytes())
    assert (magic, snaplen, linktype) == (0xA1B23C4D, 65535, 1)
    assert struct.unpack_from("<IIII", path.read_bytes(), 24) == (1_700_000_000, 123_456_789, 60, 60)
    empty = tmp_path / "empty.pcap"
    assert write_pcap(empty, np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(0), np.zeros(0)) == 24
    assert len(empty.read_bytes()) == 24
