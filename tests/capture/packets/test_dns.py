"""The DNS answers of a batch of frames (capture.packets._dns), checked against frames scapy
builds and, on the real honeypot capture, against scapy's own dissection."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from detector.capture.names import registered_domain
from detector.capture.packets._dns import MAX_ANSWERS, dns_answers
from detector.capture.packets.pcap import CaptureFile, read_records
from detector.contracts import DnsAnswers, addr_to_pair
from tests.conftest import REPO, shared_file

CLIENT, RESOLVER = "192.168.1.132", "192.168.1.1"


def _answers(frames: list[bytes], linktype: int = 1) -> DnsAnswers:
    offsets = np.cumsum([0] + [len(f) for f in frames[:-1]]).astype(np.int64)
    return dns_answers(b"".join(frames), offsets, np.array([len(f) for f in frames], np.int64),
                       np.arange(len(frames), dtype=np.int64) * 1000, linktype)


def _response(qname: str, answers: list[DNSRR], **dns: int) -> bytes:
    return bytes(Ether() / IP(src=RESOLVER, dst=CLIENT) / UDP(sport=53, dport=40000)
                 / DNS(qr=1, qd=DNSQR(qname=qname), an=answers, **dns))


def _addrs(a: DnsAnswers) -> list[tuple[int, int]]:
    return list(zip(a.addr_hi.tolist(), a.addr_lo.tolist(), strict=True))


def test_a_cname_chain_answers_for_the_name_asked_and_aaaa_over_ipv6():
    chain = _response("www.ecdinterface.philips.com", [
        DNSRR(rrname="www.ecdinterface.philips.com", type="CNAME", rdata="lb.eu-west-1.elb.amazonaws.com"),
        DNSRR(rrname="lb.eu-west-1.elb.amazonaws.com", type="A", rdata="52.51.133.171"),
        DNSRR(rrname="lb.eu-west-1.elb.amazonaws.com", type="A", rdata="52.212.88.21")])
    six = bytes(Ether() / IPv6(src="fd00::1", dst="fd00::84") / UDP(sport=53, dport=5353)
                / DNS(qr=1, qd=DNSQR(qname="dcp.dc1.philips.com", qtype="AAAA"),
                      an=DNSRR(rrname="dcp.dc1.philips.com", type="AAAA", rdata="2001:db8::5")))
    a = _answers([chain, six])
    assert _addrs(a) == [addr_to_pair("52.51.133.171"), addr_to_pair("52.212.88.21"), addr_to_pair("2001:db8::5")]
    assert list(zip(a.client_hi.tolist(), a.client_lo.tolist(), strict=True)) == [addr_to_pair(CLIENT)] * 2 + [addr_to_pair("fd00::84")]
    assert a.ts_ns.tolist() == [0, 0, 1000]
    assert len(set(a.domain.tolist())) == 1 and a.domain[0] != 0  # all three under philips.com


def test_compressed_owner_names_and_a_vlan_tag():
    """Answers whose owner names are pointers (what resolvers send), hand-built, in a tagged frame."""
    question = b"\x03www\x07example\x03com\x00" + struct.pack("!HH", 1, 1)
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([203, 0, 113, 7])
    message = struct.pack("!HHHHHH", 7, 0x8180, 1, 2, 0, 0) + question + answer + answer[:-1] + b"\x08"
    frame = bytes(Ether() / Dot1Q(vlan=5) / IP(src=RESOLVER, dst=CLIENT) / UDP(sport=53, dport=40000) / message)
    a = _answers([frame])
    assert _addrs(a) == [addr_to_pair("203.0.113.7"), addr_to_pair("203.0.113.8")]


def test_only_answers_of_successful_responses_from_port_53():
    rr = [DNSRR(rrname="a.example.com", type="A", rdata="198.51.100.1")]
    frames = [
        bytes(Ether() / IP(src=CLIENT, dst=RESOLVER) / UDP(sport=40000, dport=53) / DNS(qr=0, qd=DNSQR(qname="a.example.com"))),
        _response("a.example.com", rr, rcode=3),  # NXDOMAIN
        _response("a.example.com", rr, opcode=2),
        bytes(Ether() / IP(src=RESOLVER, dst=CLIENT) / UDP(sport=5353, dport=5353) / DNS(qr=1, qd=DNSQR(qname="a.example.com"), an=rr)),
        bytes(Ether() / IP(src=RESOLVER, dst=CLIENT) / TCP(sport=53, dport=40000) / DNS(qr=1, qd=DNSQR(qname="a.example.com"), an=rr)),
        bytes(Ether() / IP(src=RESOLVER, dst=CLIENT) / UDP(sport=53, dport=40000)
              / DNS(qr=1, qd=[DNSQR(qname="a.example.com"), DNSQR(qname="b.example.com")], an=rr)),
        _response("a.example.com", [DNSRR(rrname="a.example.com", type="TXT", rdata="hello")]),
    ]
    assert len(_answers(frames)) == 0
    assert len(_answers(frames + [_response("a.example.com", rr)])) == 1


def test_at_most_max_answers_per_response():
    rr = [DNSRR(rrname="pool.example.com", type="A", rdata=f"198.51.100.{i}") for i in range(1, 13)]
    a = _answers([_response("pool.example.com", rr)] * 40)  # more than one output round
    assert len(a) == 40 * MAX_ANSWERS
    assert _addrs(a)[:MAX_ANSWERS] == [addr_to_pair(f"198.51.100.{i}") for i in range(1, MAX_ANSWERS + 1)]


def test_a_cut_or_garbled_message_gives_what_was_whole_and_never_raises():
    frame = _response("a.example.com", [DNSRR(rrname="a.example.com", type="A", rdata=f"198.51.100.{i}") for i in (1, 2)])
    whole = len(_answers([frame]))
    for cut in range(len(frame)):
        assert len(_answers([frame[:cut]])) <= whole
    rng = np.random.default_rng(5)
    for _ in range(300):
        garbled = bytearray(frame)
        for i in rng.integers(42, len(frame), 4):  # leave Ethernet, IP and UDP headers alone
            garbled[i] = int(rng.integers(0, 256))
        assert len(_answers([bytes(garbled)])) <= MAX_ANSWERS


def test_registered_domains_come_from_the_public_suffix_list():
    assert registered_domain("www.ecdinterface.philips.com") == "philips.com"
    assert registered_domain("a.b.example.co.uk") == "example.co.uk"
    assert registered_domain("d111.cloudfront.net") == "d111.cloudfront.net"  # a private suffix: each customer apart
    assert registered_domain("com") is None and registered_domain("") is None and registered_domain("10.1.2.3") is None


@pytest.mark.shared_data
def test_the_honeypot_capture_read_as_scapy_reads_it_and_streamed_in_batches():
    """Every A/AAAA answer scapy finds in the real capture, found; and the streaming reader's
    batches carry the same answers as one pass over the records."""
    path = shared_file("iot23-honeypot-4-1/honeypot-4-1.pcap")
    from scapy.utils import PcapReader

    expected = []
    with PcapReader(str(path)) as reader:
        packets = list(reader)
    for p in packets:
        if UDP in p and p[UDP].sport == 53 and p.haslayer(DNS) and p[DNS].qr == 1 and p[DNS].rcode == 0:
            expected += [(p[IP].dst, rr.rdata) for rr in (p[DNS].an or []) if rr.type in (1, 28)][:MAX_ANSWERS]
    rec = read_records(path)
    a = dns_answers(rec.data, rec.offsets, rec.caplens, rec.ts_ns, rec.linktype)
    assert len(expected) == len(a) > 200
    assert _addrs(a) == [addr_to_pair(str(x)) for _, x in expected]
    assert list(zip(a.client_hi.tolist(), a.client_lo.tolist(), strict=True)) == [addr_to_pair(c) for c, _ in expected]
    streamed = DnsAnswers.concat([b.answers for b in CaptureFile(path, 1000)])
    for got, want in zip(streamed.as_tuple()[:6], a.as_tuple()[:6], strict=True):
        np.testing.assert_array_equal(got, want)
    assert streamed.names == a.names and {"philips.com", "meethue.com"} <= set(a.names.values())


def test_the_evidence_names_each_peer_by_the_domain_it_was_answered_for():
    """What an analyst reads beside a peer's address: the registered domain the DNS answered
    it for. On the honeypot, the bridge's 08:02 sessions go to two AWS addresses of its first
    look-up of a name under philips.com, and its 09:19 uploads to meethue.com's; the gateway
    and the keepalive peer (looked up before the capture began) have none."""
    from detector.config import load_config
    from detector.service.pipeline import capture_batches, window_stream

    cfg = load_config(REPO / "configs" / "eval-honeypot.yaml")
    path = shared_file("iot23-honeypot-4-1/honeypot-4-1.pcap")
    wanted = {1540540920: "08:02", 1540545540: "09:19"}  # window starts (UTC, 26 Oct 2018)
    got: dict[str, dict[str, str | None]] = {}
    for w in window_stream(cfg, capture_batches([path]), False):
        if w.window_start_ns // 10**9 in wanted:
            peers = w.evidence[CLIENT].top_peers
            got[wanted[w.window_start_ns // 10**9]] = {p["ip"]: p.get("domain") for p in peers}
    assert {"52.51.133.171": "philips.com", "52.212.88.21": "philips.com", RESOLVER: None}.items() <= got["08:02"].items()
    assert {"130.211.67.12": "meethue.com", "104.155.18.91": None}.items() <= got["09:19"].items()
