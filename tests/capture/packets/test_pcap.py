"""The capture-file reader (detector.capture.packets.pcap) and its frame parser (detector.capture.packets._parse).

The fast parser has a slow, obviously-correct twin: `scapy_twin` dissects a frame with
scapy's own layers and applies the rules of _parse's module docstring one field at a time.
The parity tests hold the two to exact equality on every real capture in ../shared/data and
on crafted packets; the other tests pin behaviour the twin cannot see (file formats, damage,
batching) and fuzz both layers with hypothesis.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.config import conf
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6Unknown,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH, ESP
from scapy.layers.l2 import (
    ARP,
    LLC,
    SNAP,
    CookedLinux,
    CookedLinuxV2,
    Dot1AD,
    Dot1Q,
    Dot3,
    Ether,
    Loopback,
    LoopbackOpenBSD,
)
from scapy.packet import Packet, Raw
from scapy.utils import PcapNgWriter, RawPcapReader, wrpcap

from detector.capture.packets import pcap as pcap_module
from detector.capture.packets._parse import SUPPORTED_LINKTYPES, parse_frames
from detector.capture.packets.pcap import CaptureFile, read_capture, read_records
from detector.contracts import FRAG_FIRST, FRAG_LATER, FRAG_NONE, PACKET_COLUMNS, PacketBatch, pair_to_addr
from detector.errors import CaptureError

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
REAL_CAPTURES = sorted(str(p.relative_to(DATA)) for p in DATA.glob("**/*.pcap")) if DATA.is_dir() else []
T0_NS = 1_700_000_000 * 1_000_000_000
MAC = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def real_capture(name: str) -> Path:
    if not DATA.is_dir():
        pytest.skip("../shared/data not present (fresh clone): real-capture tests need it")
    return DATA / name


# --------------------------------------------------------------------------------------
# The slow twin
# --------------------------------------------------------------------------------------

# The link-layer field that names the next protocol, per scapy link layer.
_LINK_TYPE_FIELD = {
    Ether: "type", Dot1Q: "type", Dot1AD: "type", CookedLinux: "proto", CookedLinuxV2: "proto",
    SNAP: "code", Loopback: "type", LoopbackOpenBSD: "type",
}
_IP_OR_VLAN = {0x0800, 0x86DD, 0x8100, 0x88A8}


# scapy's own IP or IPv6 dissector raised on a whole header (it then hands back the bytes as
# Raw): the twin cannot say what the frame is. Seen on a mutated IPv6 frame with a routing
# header (IndexError inside scapy); the fuzz test leaves such frames out.
SCAPY_FAILED = "scapy failed"


def _ip_dissector_failed(ethertype: int, raw: bytes) -> bool:
    layer = {0x0800: IP, 0x86DD: IPv6}.get(ethertype)
    if layer is None or len(raw) < (20 if layer is IP else 40):
        return False
    before, conf.debug_dissector = conf.debug_dissector, True  # raise instead of falling back to Raw
    try:
        layer(raw)
    except Exception:
        return True
    finally:
        conf.debug_dissector = before
    return False


def scapy_twin(frame: bytes, linktype: int, ts_ns: int) -> dict[str, Any] | str:
    """One frame dissected by scapy: a row (dict of PACKET_COLUMNS, addresses as text),
    "non_ip" or "malformed". Plain Python, one field at a time: scapy's layers for the link
    layer, IP, IPv6 and transport headers; the rules of _parse's docstring on top."""
    try:
        pkt = conf.l2types.num2layer[linktype](frame)
    except Exception:  # scapy raises on a frame shorter than its link header
        return "malformed"
    link_layers: list[Packet] = []
    layer = pkt
    while not isinstance(layer, (IP, IPv6)):
        if isinstance(layer, Raw) or not layer:
            previous = link_layers[-1] if link_layers else None
            field = _LINK_TYPE_FIELD.get(type(previous)) if previous is not None else None
            if previous is None or (field and getattr(previous, field) in _IP_OR_VLAN):
                if field and _ip_dissector_failed(getattr(previous, field), bytes(layer)):
                    return SCAPY_FAILED
                return "malformed"  # the link layer promised IP (or a tag) but scapy found none
            if isinstance(previous, (Loopback, LoopbackOpenBSD)) and previous.type in (2, 24, 28, 30):
                return "malformed"
            return "non_ip"
        if layer.raw_packet_cache is None:  # scapy had no bytes for it: an empty frame
            return "malformed"
        if isinstance(layer, SNAP) and layer.OUI != 0:  # only OUI 0 means "an EtherType follows"
            return "non_ip"
        link_layers.append(layer)
        layer = layer.payload
    ip = layer
    vlans = [lay.vlan for lay in link_layers if isinstance(lay, Dot1Q)]
    ip_off = sum(len(lay.raw_packet_cache) for lay in link_layers)
    avail = len(frame) - ip_off
    row: dict[str, Any] = {"ts_ns": ts_ns, "vlan": vlans[0] if vlans else 0, "src": ip.src, "dst": ip.dst}
    if isinstance(ip, IP):
        if avail < 20 or ip.version != 4 or ip.ihl < 5 or ip.ihl * 4 > avail or ip.len < ip.ihl * 4:
            return "malformed"
        frag = FRAG_LATER if ip.frag > 0 else FRAG_FIRST if ip.flags.MF else FRAG_NONE
        row.update(ip_version=4, proto=ip.proto, ip_len=ip.len, frag=frag)
        l4_start, l4_end = ip_off + ip.ihl * 4, ip_off + min(avail, ip.len)
        has_l4 = frag != FRAG_LATER
    else:
        if avail < 40 or ip.version != 6:
            return "malformed"
        end = len(frame) if ip.plen == 0 else min(len(frame), ip_off + 40 + ip.plen)
        proto, frag, l4_start, has_l4 = ip.nh, FRAG_NONE, ip_off + 40, True
        while proto in (0, 43, 44, 60, 51):  # hop-by-hop, routing, fragment, dest. opts, AH
            if l4_start + 8 > end:  # not even the 8 bytes every extension header starts with
                has_l4 = False
                break
            # Next header and length read as bytes: scapy's chained dissection turns a whole
            # header into Raw when the *next* one is cut, and its AH needs 12 bytes.
            next_header, length = frame[l4_start], frame[l4_start + 1]
            size = 8 if proto == 44 else (length + 2) * 4 if proto == 51 else (length + 1) * 8
            if l4_start + size > end:  # not captured in full
                has_l4 = False
                break
            if proto == 44:
                fragment_header = IPv6ExtHdrFragment(frame[l4_start : l4_start + 8])
                if fragment_header.offset > 0:
                    proto, frag, has_l4 = next_header, FRAG_LATER, False
                    break
                frag = FRAG_FIRST if fragment_header.m else frag
            proto = next_header
            l4_start += size
        row.update(ip_version=6, proto=proto, ip_len=ip.plen + 40, frag=frag)
        l4_end = end
    row.update(sport=0, dport=0, tcp_flags=0)
    l4 = frame[l4_start:l4_end] if has_l4 else b""
    # Behind IPv4, scapy's own chain has dissected the transport from exactly these bytes
    # (it too cuts at the IP length); reusing it halves the twin's time on real captures.
    chained = ip.payload if isinstance(ip, IP) else None
    if row["proto"] == 6 and len(l4) >= 20:
        tcp = chained if isinstance(chained, TCP) else TCP(l4)
        row.update(sport=tcp.sport, dport=tcp.dport, tcp_flags=int(tcp.flags) & 0xFF)
    elif row["proto"] == 17 and len(l4) >= 8:
        udp = chained if isinstance(chained, UDP) else UDP(l4)
        row.update(sport=udp.sport, dport=udp.dport)
    elif row["proto"] == 1 and row["ip_version"] == 4 and len(l4) >= 8:
        icmp = chained if isinstance(chained, ICMP) else ICMP(l4)
        row.update(sport=icmp.type, dport=icmp.code)
    elif row["proto"] == 58 and row["ip_version"] == 6 and len(l4) >= 4:
        icmp6 = ICMPv6Unknown(l4)  # the 4-byte header every ICMPv6 message starts with
        row.update(sport=icmp6.type, dport=icmp6.code)
    return row


def twin_batch(frames: list[tuple[int, bytes]], linktype: int) -> tuple[list[dict[str, Any]], int, int]:
    """(rows, malformed, non_ip) of the twin over (ts_ns, frame) pairs. A frame repeated
    byte for byte (ARP, STP, retransmissions) is dissected once: same bytes, same result."""
    seen: dict[bytes, dict[str, Any] | str] = {}
    results: list[dict[str, Any] | str] = []
    for ts, frame in frames:
        if frame not in seen:
            seen[frame] = scapy_twin(frame, linktype, ts)
        result = seen[frame]
        results.append({**result, "ts_ns": ts} if isinstance(result, dict) else result)
    rows = [r for r in results if isinstance(r, dict)]
    return rows, results.count("malformed"), results.count("non_ip")


def batch_rows(batch: PacketBatch) -> list[dict[str, Any]]:
    """The batch as row dicts, addresses as text: the twin's shape."""
    cols = {name: getattr(batch, name).tolist() for name in PACKET_COLUMNS}
    rows = []
    for i in range(len(batch)):
        row = {name: cols[name][i] for name in PACKET_COLUMNS if not name.startswith(("src_", "dst_"))}
        row["src"] = pair_to_addr(cols["src_hi"][i], cols["src_lo"][i])
        row["dst"] = pair_to_addr(cols["dst_hi"][i], cols["dst_lo"][i])
        rows.append(row)
    return rows


def frames_of(pkts: list[Packet]) -> list[tuple[int, bytes]]:
    return [(T0_NS + i * 1000, bytes(p)) for i, p in enumerate(pkts)]


def parse_list(frames: list[tuple[int, bytes]], linktype: int | np.ndarray) -> PacketBatch:
    data = np.frombuffer(b"".join(f for _, f in frames), dtype=np.uint8)
    caplens = np.array([len(f) for _, f in frames], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(caplens)[:-1]]).astype(np.int64)
    ts = np.array([t for t, _ in frames], dtype=np.int64)
    return parse_frames(data, offsets, caplens, ts, linktype)


# --------------------------------------------------------------------------------------
# Capture-file builders for what scapy does not write (byte order, pcapng details)
# --------------------------------------------------------------------------------------


def pcap_bytes(frames: list[tuple[int, bytes]], linktype: int, nsec: bool = False, endian: str = "<") -> bytes:
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    for ts, frame in frames:
        seconds, rest = divmod(ts, 1_000_000_000)
        out.append(struct.pack(endian + "IIII", seconds, rest if nsec else rest // 1000, len(frame), len(frame)))
        out.append(frame)
    return b"".join(out)


def ng_block(block_type: int, body: bytes, endian: str = "<") -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = struct.pack(endian + "I", 12 + len(body))
    return struct.pack(endian + "I", block_type) + length + body + length


def ng_shb(endian: str = "<") -> bytes:
    return ng_block(0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1), endian)


def ng_idb(linktype: int, tsresol: int | None = None, tsoffset_s: int = 0, endian: str = "<") -> bytes:
    options = b""
    if tsresol is not None:
        options += struct.pack(endian + "HH", 9, 1) + bytes([tsresol, 0, 0, 0])
    if tsoffset_s:
        options += struct.pack(endian + "HHq", 14, 8, tsoffset_s)
    if options:
        options += struct.pack(endian + "HH", 0, 0)
    return ng_block(1, struct.pack(endian + "HHI", linktype, 0, 0) + options, endian)


def ng_epb(iface: int, ts_units: int, frame: bytes, endian: str = "<") -> bytes:
    head = struct.pack(endian + "IIIII", iface, ts_units >> 32, ts_units & 0xFFFFFFFF, len(frame), len(frame))
    return ng_block(6, head + frame, endian)


def ng_spb(frame: bytes, endian: str = "<") -> bytes:
    return ng_block(3, struct.pack(endian + "I", len(frame)) + frame, endian)


def ng_pb(iface: int, ts_units: int, frame: bytes, endian: str = "<") -> bytes:
    head = struct.pack(endian + "HHIIII", iface, 0, ts_units >> 32, ts_units & 0xFFFFFFFF, len(frame), len(frame))
    return ng_block(2, head + frame, endian)


def write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def tcp_frame(sport: int = 1234, dport: int = 80, src: str = "10.0.0.1") -> bytes:
    return bytes(Ether(**MAC) / IP(src=src, dst="10.0.0.2") / TCP(sport=sport, dport=dport, flags="S"))


# --------------------------------------------------------------------------------------
# Parity with the twin
# --------------------------------------------------------------------------------------


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_CAPTURES or ["(none)"])
def test_real_capture_matches_scapy_twin(name: str) -> None:
    """Every column of every row, and the malformed and non-IP counts, equal the scapy
    twin's on each real capture (read in batches of 4096 to cross batch boundaries)."""
    path = real_capture(name)
    reader = RawPcapReader(str(path))
    linktype = reader.linktype
    frames = [(meta.sec * 1_000_000_000 + meta.usec * 1000, frame) for frame, meta in reader]
    reader.close()
    capture = CaptureFile(path, batch_packets=4096)
    batch = PacketBatch.concat(list(capture))
    rows, malformed, non_ip = twin_batch(frames, linktype)
    assert (len(frames), malformed, non_ip, None) == (capture.packets, batch.malformed, batch.non_ip, capture.damage)
    assert rows == batch_rows(batch)


V4 = {"src": "10.0.0.1", "dst": "10.0.0.2"}
V6 = {"src": "2001:db8::1", "dst": "2001:db8::2"}
CRAFTED = {
    "vlan": [Ether(**MAC) / Dot1Q(vlan=100) / IP(**V4) / TCP(sport=1, dport=2, flags="SA")],
    "qinq": [Ether(**MAC) / Dot1AD(vlan=200) / Dot1Q(vlan=100) / IP(**V4) / UDP(sport=53, dport=5353)],
    "ipv4_options": [
        Ether(**MAC) / IP(src="1.2.3.4", dst="5.6.7.8", options=[IPOption_RR()]) / TCP(sport=22, dport=2222, flags="PA")
    ],
    "ipv4_fragments": fragment(
        Ether(**MAC) / IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=7, dport=9) / (b"x" * 3000), fragsize=1000
    ),
    "icmp": [Ether(**MAC) / IP(src="1.1.1.1", dst="2.2.2.2") / ICMP(type=3, code=13)],
    "ipv6_ext": [
        Ether(**MAC) / IPv6(**V6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting(addresses=["2001:db8::3"]) / TCP(sport=443, dport=50000, flags="FA"),
        Ether(**MAC) / IPv6(**V6) / IPv6ExtHdrFragment(offset=0, m=1, id=7) / UDP(sport=1000, dport=2000) / (b"y" * 64),
        Ether(**MAC) / IPv6(**V6) / IPv6ExtHdrFragment(nh=17, offset=9, m=0, id=7) / (b"y" * 64),
        Ether(**MAC) / IPv6(**V6) / IPv6ExtHdrFragment(offset=0, m=0, id=8) / UDP(sport=3, dport=4),
        Ether(**MAC) / IPv6(**V6) / AH(nh=6, payloadlen=4, spi=1, seq=1, icv=b"\0" * 12) / TCP(sport=5, dport=6),
        Ether(**MAC) / IPv6(**V6) / ESP(spi=1, seq=1, data=b"z" * 16),
        Ether(**MAC) / IPv6(**V6, nh=59),
        Ether(**MAC) / IPv6(src="fe80::1", dst="ff02::1") / ICMPv6EchoRequest(),
    ],
    "non_ip": [
        Ether(**MAC) / ARP(),
        Ether(**MAC, type=0x88CC) / (b"\0" * 40),  # LLDP
        Dot3(**MAC) / LLC(dsap=0x42, ssap=0x42, ctrl=3) / (b"\0" * 40),  # STP
    ],
    "snap": [
        Dot3(**MAC) / LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=0, code=0x0800)
        / IP(src="9.9.9.9", dst="8.8.8.8") / UDP(sport=1, dport=2)
    ],
    "malformed": [
        Ether(**MAC) / IP(ihl=3, src="1.1.1.1", dst="2.2.2.2") / TCP(),  # IHL below 5
        Ether(**MAC) / IP(len=12, src="1.1.1.1", dst="2.2.2.2") / TCP(),  # total length < header
        Ether(**MAC) / IP(version=6, src="1.1.1.1", dst="2.2.2.2") / TCP(),  # version mismatch
        Ether(**MAC, type=0x0800) / (b"E\0\0\x28" + b"\0" * 6),  # IPv4 header cut at 10 bytes
        Ether(**MAC, type=0x86DD) / (b"\x60" + b"\0" * 30),  # IPv6 header cut
        Ether(**MAC, type=0x8100) / b"\0\x05",  # VLAN tag cut
    ],
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_packets_match_scapy_twin(case: str) -> None:
    """Crafted packets of each kind parse exactly as the scapy twin dissects them."""
    frames = frames_of(CRAFTED[case])
    rows, malformed, non_ip = twin_batch(frames, 1)
    batch = parse_list(frames, 1)
    assert (rows, malformed, non_ip) == (batch_rows(batch), batch.malformed, batch.non_ip)


# --------------------------------------------------------------------------------------
# Frame parsing, one behaviour at a time
# --------------------------------------------------------------------------------------


def test_vlan_column_is_the_outermost_tag() -> None:
    """802.1Q, 802.1ad (QinQ) and 0x9100 tags are walked to the IP header; vlan is the
    outermost VLAN id, 0 when untagged."""
    ip = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2)
    pkts = [
        Ether(**MAC) / Dot1Q(vlan=100) / ip,
        Ether(**MAC) / Dot1AD(vlan=200) / Dot1Q(vlan=100) / ip,
        Ether(**MAC, type=0x9100) / Dot1Q(vlan=300) / Dot1Q(vlan=5) / ip,
        Ether(**MAC) / ip,
    ]
    batch = parse_list(frames_of(pkts), 1)
    assert [100, 200, 300, 0] == batch.vlan.tolist()
    assert [(1, 2)] * 4 == list(zip(batch.sport.tolist(), batch.dport.tolist(), strict=True))


def test_ipv6_extension_headers_lead_to_the_upper_layer_protocol() -> None:
    """Hop-by-hop, destination options, routing, fragment and AH headers are skipped to the
    transport; ESP and no-next-header stop the walk; IPv6 fragments are marked like IPv4's."""
    pkts = CRAFTED["ipv6_ext"]
    batch = parse_list(frames_of(pkts), 1)
    assert [6, 17, 17, 17, 6, 50, 59, 58] == batch.proto.tolist()
    frag = [FRAG_NONE, FRAG_FIRST, FRAG_LATER, FRAG_NONE, FRAG_NONE, FRAG_NONE, FRAG_NONE, FRAG_NONE]
    assert frag == batch.frag.tolist()
    ports = [(443, 50000), (1000, 2000), (0, 0), (3, 4), (5, 6), (0, 0), (0, 0), (128, 0)]
    assert ports == list(zip(batch.sport.tolist(), batch.dport.tolist(), strict=True))
    assert [0x11, 0, 0, 0, 0x02, 0, 0, 0] == batch.tcp_flags.tolist()
    assert [len(p[IPv6]) for p in pkts] == batch.ip_len.tolist()
    assert ["2001:db8::1"] * 7 + ["fe80::1"] == [pair_to_addr(h, lo) for h, lo in zip(batch.src_hi, batch.src_lo, strict=True)]


def test_ipv6_extension_chain_cut_by_snaplen() -> None:
    """An extension header not captured in full ends the walk: the row keeps that header's
    number as proto, and ports 0."""
    frame = bytes(Ether(**MAC) / IPv6(src="::1", dst="::2") / IPv6ExtHdrRouting(addresses=["::3", "::4"]) / TCP())
    batch = parse_list([(T0_NS, frame[: 14 + 40 + 20])], 1)
    assert ([43], [0], [0], 0) == (batch.proto.tolist(), batch.sport.tolist(), batch.dport.tolist(), batch.malformed)


def test_ipv4_fragments_first_carries_ports_later_ones_do_not() -> None:
    """The first IPv4 fragment (offset 0, MF) is FRAG_FIRST with its ports; later ones are
    FRAG_LATER with ports and flags 0; all keep proto and their own IP length."""
    pkts = CRAFTED["ipv4_fragments"]
    batch = parse_list(frames_of(pkts), 1)
    assert [FRAG_FIRST, FRAG_LATER, FRAG_LATER, FRAG_LATER] == batch.frag.tolist()
    assert [7, 0, 0, 0] == batch.sport.tolist()
    assert [9, 0, 0, 0] == batch.dport.tolist()
    assert [17] * 4 == batch.proto.tolist()
    assert [1020, 1020, 1020, 28] == batch.ip_len.tolist()  # 3008 bytes of UDP in 1000-byte pieces


def test_ipv4_addresses_are_v4_mapped_and_options_are_skipped() -> None:
    """IPv4 addresses are stored IPv4-mapped (hi 0, lo ::ffff:a.b.c.d); an IHL above 5 moves
    the transport header behind the options."""
    batch = parse_list(frames_of(CRAFTED["ipv4_options"]), 1)
    assert ([0], [0x0000FFFF01020304], [0x0000FFFF05060708]) == (
        batch.src_hi.tolist(), batch.src_lo.tolist(), batch.dst_lo.tolist(),
    )
    assert ([22], [2222], [0x18], [4]) == (
        batch.sport.tolist(), batch.dport.tolist(), batch.tcp_flags.tolist(), batch.ip_version.tolist(),
    )


def test_malformed_frames_are_counted_without_rows() -> None:
    """IHL 3, total length below the header, version mismatch, cut IPv4/IPv6 headers and a
    cut VLAN tag: each is counted malformed, no row, no exception."""
    batch = parse_list(frames_of(CRAFTED["malformed"]), 1)
    assert (0, len(CRAFTED["malformed"]), 0) == (len(batch), batch.malformed, batch.non_ip)


def test_non_ip_frames_are_counted_without_rows() -> None:
    """ARP, LLDP and 802.3/LLC (STP) frames count as non_ip; IP behind LLC/SNAP is parsed."""
    batch = parse_list(frames_of(CRAFTED["non_ip"] + CRAFTED["snap"]), 1)
    assert (1, 0, 3) == (len(batch), batch.malformed, batch.non_ip)
    assert ["9.9.9.9"] == [pair_to_addr(h, lo) for h, lo in zip(batch.src_hi, batch.src_lo, strict=True)]


def test_transport_header_cut_by_snaplen_keeps_the_row() -> None:
    """A packet whose IP header is intact but whose TCP header is cut by the snap length gets
    a row with ports and flags 0 and the IP header's length (not the captured one)."""
    frame = tcp_frame()
    batch = parse_list([(T0_NS, frame[: 14 + 20 + 10])], 1)
    assert (1, 0) == (len(batch), batch.malformed)
    actual = (batch.sport, batch.dport, batch.tcp_flags, batch.proto, batch.ip_len)
    assert ([0], [0], [0], [6], [40]) == tuple(column.tolist() for column in actual)


def test_ethernet_padding_is_not_read_as_transport() -> None:
    """Bytes after the IPv4 total length (Ethernet padding) are not the transport header: a
    UDP packet whose length stops inside its header gets ports 0."""
    frame = bytes(Ether(**MAC) / IP(src="1.1.1.1", dst="2.2.2.2", proto=17, len=24) / (b"\x11" * 26))
    batch = parse_list([(T0_NS, frame)], 1)
    assert ([17], [24], [0]) == (batch.proto.tolist(), batch.ip_len.tolist(), batch.sport.tolist())


def test_unsupported_single_linktype_is_a_capture_error() -> None:
    """parse_frames refuses a single link type it does not decode (802.11 = 105)."""
    with pytest.raises(CaptureError, match="link type 105"):
        parse_list([(T0_NS, tcp_frame())], 105)


def test_per_frame_linktypes_keep_order_and_unknown_ones_are_non_ip() -> None:
    """With one link type per frame, each frame is parsed by its own; a frame of a link type
    the parser does not decode counts as non_ip."""
    raw_ip = bytes(IP(src="3.3.3.3", dst="4.4.4.4") / UDP(sport=5, dport=6))
    frames = [(T0_NS, tcp_frame()), (T0_NS + 1, raw_ip), (T0_NS + 2, raw_ip)]
    batch = parse_list(frames, np.array([1, 101, 105]))
    assert ([T0_NS, T0_NS + 1], [6, 17], 1) == (batch.ts_ns.tolist(), batch.proto.tolist(), batch.non_ip)


LINK_FRAMING = {
    113: lambda ip: CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6) / ip,
    276: lambda ip: CookedLinuxV2(pkttype=0, lladdrtype=1, lladdrlen=6) / ip,
    101: lambda ip: ip,
    12: lambda ip: ip,
    0: lambda ip: Loopback() / ip,
    108: lambda ip: LoopbackOpenBSD() / ip,
}


@pytest.mark.parametrize("linktype", sorted(LINK_FRAMING))
def test_link_types_give_the_same_rows_as_ethernet(tmp_path: Path, linktype: int) -> None:
    """IPv4 and IPv6 packets framed by SLL, SLL2, raw IP (101 and DLT 12), NULL and LOOP give
    the rows the same packets give under Ethernet (written with scapy's wrpcap)."""
    ips = [IP(src="10.1.1.1", dst="10.2.2.2") / TCP(sport=80, dport=9999, flags="A"),
           IPv6(src="2001:db8::a", dst="2001:db8::b") / UDP(sport=53, dport=4444)]
    pkts = [LINK_FRAMING[linktype](ip) for ip in ips]
    for i, p in enumerate(pkts):
        p.time = 1_700_000_000 + i
    wrpcap(str(tmp_path / "link.pcap"), pkts, linktype=linktype)
    expected = parse_list([(T0_NS + i * 1_000_000_000, bytes(Ether(**MAC) / ip)) for i, ip in enumerate(ips)], 1)
    capture = CaptureFile(tmp_path / "link.pcap")
    assert batch_rows(expected) == batch_rows(PacketBatch.concat(list(capture)))
    assert linktype == capture.linktype


@pytest.mark.parametrize("linktype, version", [(228, 4), (229, 6)])
def test_ipv4_and_ipv6_link_types(tmp_path: Path, linktype: int, version: int) -> None:
    """LINKTYPE_IPV4 (228) and LINKTYPE_IPV6 (229) frames are bare IP packets of that version;
    a packet of the other version on them is malformed."""
    v4 = bytes(IP(src="10.1.1.1", dst="10.2.2.2") / TCP(sport=1, dport=2))
    v6 = bytes(IPv6(src="::1", dst="::2") / TCP(sport=1, dport=2))
    path = write(tmp_path, "ip.pcap", pcap_bytes([(T0_NS, v4), (T0_NS, v6)], linktype))
    batch = read_capture(path)
    assert ([version], 1) == (batch.ip_version.tolist(), batch.malformed)


# --------------------------------------------------------------------------------------
# File formats
# --------------------------------------------------------------------------------------


def test_nanosecond_pcap_keeps_nanoseconds(tmp_path: Path) -> None:
    """A nanosecond pcap (magic a1b23c4d, written by scapy's wrpcap(nano=True)) gives exact
    ns timestamps."""
    from scapy.utils import EDecimal

    pkts = [Ether(**MAC) / IP() / TCP(), Ether(**MAC) / IP() / UDP()]
    pkts[0].time, pkts[1].time = EDecimal("1700000000.123456789"), EDecimal("1700000001.000000001")
    wrpcap(str(tmp_path / "nano.pcap"), pkts, nano=True)
    assert [1_700_000_000_123_456_789, 1_700_000_001_000_000_001] == read_capture(tmp_path / "nano.pcap").ts_ns.tolist()


@pytest.mark.parametrize("nsec", [False, True])
def test_big_endian_pcap(tmp_path: Path, nsec: bool) -> None:
    """Big-endian pcap files (usec and nsec) read like little-endian ones."""
    frames = [(T0_NS + 123_456_000, tcp_frame(1)), (T0_NS + 2_000_001_000, tcp_frame(2))]
    big = read_capture(write(tmp_path, "be.pcap", pcap_bytes(frames, 1, nsec=nsec, endian=">")))
    little = read_capture(write(tmp_path, "le.pcap", pcap_bytes(frames, 1, nsec=nsec)))
    assert [T0_NS + 123_456_000, T0_NS + 2_000_001_000] == big.ts_ns.tolist()
    assert batch_rows(little) == batch_rows(big)


def test_pcapng_timestamp_resolutions(tmp_path: Path) -> None:
    """pcapng interfaces convert their timestamps by if_tsresol: the default (microseconds),
    a power of 10 (nanoseconds), a power of 2 (2**-20 s), and add if_tsoffset seconds."""
    content = b"".join([
        ng_shb(),
        ng_idb(1), ng_idb(1, tsresol=9), ng_idb(1, tsresol=0x80 | 20), ng_idb(1, tsresol=3, tsoffset_s=100),
        ng_epb(0, 1_700_000_000_123_456, tcp_frame(1)),
        ng_epb(1, 1_700_000_000_123_456_789, tcp_frame(2)),
        ng_epb(2, (1_700_000_000 << 20) + (1 << 19), tcp_frame(3)),  # +0.5 s
        ng_epb(3, 1_700_000_000_007, tcp_frame(4)),
    ])
    capture = CaptureFile(write(tmp_path, "res.pcapng", content))
    batch = PacketBatch.concat(list(capture))
    expected = [T0_NS + 123_456_000, T0_NS + 123_456_789, T0_NS + 500_000_000, T0_NS + 100_007_000_000]
    assert expected == batch.ts_ns.tolist()
    assert ("pcapng", (1, 1, 1, 1), None) == (capture.format, capture.linktypes, capture.damage)


def test_pcapng_packet_block_kinds_and_unknown_blocks(tmp_path: Path) -> None:
    """EPB, obsolete PB and SPB all give packets (an SPB, having no timestamp, takes the
    previous packet's); unknown blocks (name resolution, statistics, custom) are skipped."""
    content = b"".join([
        ng_shb(), ng_idb(1),
        ng_block(4, b"\0" * 8),  # name resolution
        ng_epb(0, 1_700_000_000_000_001, tcp_frame(1)),
        ng_block(0x00000BAD, b"custom"),
        ng_pb(0, 1_700_000_000_000_002, tcp_frame(2)),
        ng_spb(tcp_frame(3)),
        ng_block(5, b"\0" * 12),  # interface statistics
    ])
    batch = read_capture(write(tmp_path, "kinds.pcapng", content))
    assert [1, 2, 3] == batch.sport.tolist()
    assert [T0_NS + 1000, T0_NS + 2000, T0_NS + 2000] == batch.ts_ns.tolist()


def test_pcapng_sections_of_both_byte_orders(tmp_path: Path) -> None:
    """A big-endian section followed by a little-endian one: each section's byte order and
    its own interfaces (numbered from 0 again) apply to its packets."""
    content = b"".join([
        ng_shb(">"), ng_idb(1, tsresol=9, endian=">"), ng_epb(0, T0_NS + 5, tcp_frame(1), ">"),
        ng_shb("<"), ng_idb(101), ng_epb(0, 1_700_000_000_000_006, bytes(IP() / UDP(sport=2))),
    ])
    capture = CaptureFile(write(tmp_path, "sections.pcapng", content))
    batch = PacketBatch.concat(list(capture))
    assert ([T0_NS + 5, T0_NS + 6000], [1, 2]) == (batch.ts_ns.tolist(), batch.sport.tolist())
    assert (1, (1, 101)) == (capture.linktype, capture.linktypes)


def test_pcapng_interfaces_of_different_link_types_keep_capture_order(tmp_path: Path) -> None:
    """Interleaved packets of an Ethernet and a raw-IP interface are each parsed by their
    interface's link type, rows in capture order (not re-sorted: the third is older); frames
    of an interface whose link type is not decoded (802.11) count as non_ip."""
    raw_ip = bytes(IP(src="3.3.3.3", dst="4.4.4.4") / UDP(sport=7, dport=8))
    content = b"".join([
        ng_shb(), ng_idb(1), ng_idb(101), ng_idb(105),
        ng_epb(0, 1_700_000_000_000_003, tcp_frame(1)),
        ng_epb(1, 1_700_000_000_000_004, raw_ip),
        ng_epb(0, 1_700_000_000_000_001, tcp_frame(3)),
        ng_epb(2, 1_700_000_000_000_005, b"\x08\x00" + b"\0" * 30),
    ])
    capture = CaptureFile(write(tmp_path, "mixed.pcapng", content), batch_packets=3)
    batch = PacketBatch.concat(list(capture))
    assert ([1, 7, 3], [T0_NS + 3000, T0_NS + 4000, T0_NS + 1000]) == (batch.sport.tolist(), batch.ts_ns.tolist())
    assert (4, 1, (1, 101, 105)) == (capture.packets, capture.non_ip, capture.linktypes)
    records = read_records(capture.path)
    assert [1, 101, 1, 105] == records.linktypes.tolist()
    assert batch_rows(batch) == batch_rows(records.parse())


def test_pcapng_written_by_scapy_matches_pcap(tmp_path: Path) -> None:
    """The same packets written by scapy as pcapng (PcapNgWriter) and as pcap read the same."""
    pkts = [CRAFTED["vlan"][0], CRAFTED["icmp"][0]] + CRAFTED["ipv6_ext"]
    for i, p in enumerate(pkts):
        p.time = 1_700_000_000 + i
    writer = PcapNgWriter(str(tmp_path / "s.pcapng"))
    for p in pkts:
        writer.write(p)
    writer.close()
    wrpcap(str(tmp_path / "s.pcap"), pkts)
    assert batch_rows(read_capture(tmp_path / "s.pcap")) == batch_rows(read_capture(tmp_path / "s.pcapng"))


def test_read_records_gives_the_records_as_written(tmp_path: Path) -> None:
    """read_records exposes each record's frame bytes, lengths and timestamp, and parses to
    what CaptureFile yields."""
    frames = [(T0_NS + i * 7, tcp_frame(i)) for i in range(5)]
    content = pcap_bytes(frames, 1, nsec=True)
    records = read_records(write(tmp_path, "r.pcap", content))
    assert [f for _, f in frames] == [records.frame(i) for i in range(len(records))]
    assert [t for t, _ in frames] == records.ts_ns.tolist()
    assert [len(f) for _, f in frames] == records.origlens.tolist()
    assert (1, None, None) == (records.linktype, records.linktypes, records.damage)
    assert batch_rows(read_capture(tmp_path / "r.pcap")) == batch_rows(records.parse())


# --------------------------------------------------------------------------------------
# Open errors, damage, batching
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such capture file"),
        (b"", "not a pcap or pcapng file"),
        (b"hello, this is text\n" * 3, "not a pcap or pcapng file \\(starts with 68656c6c\\)$"),
        (b"#separator \\x09\n#fields\tts\n", "it reads as a Zeek log; give it with --conn-log"),
        (b'{"ts":1540469302.5,"uid":"C1"}\n', "it reads as a Zeek log; give it with --conn-log"),
        (gzip.compress(b"\xd4\xc3\xb2\xa1" + bytes(20), mtime=0), "it is gzip-compressed; decompress it first"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "truncated pcap header"),
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 105), "link type 105 is not supported"),
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 9, 4, 0, 0, 65535, 1), "unsupported pcap version 9"),
        (ng_shb()[:20], "truncated pcapng section header"),
        (ng_shb()[:8] + b"\x11\x22\x33\x44" + ng_shb()[12:], "byte-order magic"),
        (ng_shb() + ng_idb(105), "link type 105 is not supported"),
    ],
)
def test_open_errors_are_capture_errors(tmp_path: Path, content: bytes | None, message: str) -> None:
    """A missing file, a file that is not a capture, a truncated header, an unsupported
    version or link type: CaptureError at construction, with a message saying which."""
    path = tmp_path / "x.pcap"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CaptureError, match=message):
        CaptureFile(path)


def test_directory_is_a_capture_error(tmp_path: Path) -> None:
    """Opening a directory is a CaptureError, not an OSError."""
    with pytest.raises(CaptureError, match="cannot read"):
        CaptureFile(tmp_path)


def _mixed_frames(n: int) -> list[tuple[int, bytes]]:
    """n frames of assorted kinds and sizes (some larger than a tiny read buffer)."""
    kinds = [tcp_frame(), bytes(Ether(**MAC) / ARP()), bytes(Ether(**MAC) / IP() / UDP() / (b"p" * 1400)),
             bytes(CRAFTED["malformed"][0]), bytes(CRAFTED["ipv6_ext"][0])]
    return [(T0_NS + i * 1_000, kinds[i % len(kinds)]) for i in range(n)]


def test_truncated_file_keeps_everything_before_the_cut(tmp_path: Path) -> None:
    """A pcap cut in the middle of a record: every record before the cut is yielded, damage
    names the offset, and iteration ends without an exception."""
    frames = _mixed_frames(40)
    content = pcap_bytes(frames, 1)
    full = read_capture(write(tmp_path, "full.pcap", content))
    cut_at = 24 + sum(16 + len(f) for _, f in frames[:30]) + 16 + 5
    capture = CaptureFile(write(tmp_path, "cut.pcap", content[:cut_at]), batch_packets=8)
    batch = PacketBatch.concat(list(capture))
    assert batch_rows(read_capture(write(tmp_path, "first30.pcap", pcap_bytes(frames[:30], 1)))) == batch_rows(batch)
    assert 30 == capture.packets
    assert capture.damage is not None and f"record at byte {cut_at - 21}" in capture.damage
    assert cut_at - 21 == capture.bytes_read
    assert len(full) > len(batch)


@pytest.mark.shared_data
def test_truncated_real_capture(tmp_path: Path) -> None:
    """A real capture cut mid-record gives exactly the records before the cut, then damage."""
    source = real_capture("westermo/right.pcap")
    records = read_records(source)
    k = len(records) // 2
    cut_at = int(records.offsets[k]) + int(records.caplens[k]) // 2
    path = write(tmp_path, "cut.pcap", source.read_bytes()[:cut_at])
    capture = CaptureFile(path, batch_packets=1000)
    batch = PacketBatch.concat(list(capture))
    first_k = parse_frames(records.data, records.offsets[:k], records.caplens[:k], records.ts_ns[:k], 1)
    assert (k, "truncated") == (capture.packets, capture.damage.split(":")[0] if capture.damage else None)
    assert all(np.array_equal(getattr(first_k, n), getattr(batch, n)) for n in PACKET_COLUMNS)
    assert k == len(read_records(path))


@pytest.mark.parametrize(
    "corrupt, message",
    [
        ("header_cut", "inside a record header"),
        ("huge_caplen", "captured length 2147483647 exceeds"),
    ],
)
def test_corrupt_pcap_record_stops_cleanly(tmp_path: Path, corrupt: str, message: str) -> None:
    """A record header cut short, or one claiming an absurd captured length, ends iteration
    there with damage set; the records before it are kept."""
    frames = _mixed_frames(10)
    content = bytearray(pcap_bytes(frames, 1))
    at = 24 + sum(16 + len(f) for _, f in frames[:6])
    if corrupt == "header_cut":
        content = content[: at + 9]
    else:
        content[at + 8 : at + 12] = struct.pack("<I", 0x7FFFFFFF)
    capture = CaptureFile(write(tmp_path, "c.pcap", bytes(content)))
    list(capture)
    assert (6, True) == (capture.packets, message in (capture.damage or ""))
    assert f"byte {at}" in (capture.damage or "")


@pytest.mark.parametrize(
    "corrupt, message",
    [
        ("block_len", "block length 13"),
        ("trailer", "trailing length"),
        ("interface", "interface 7"),
        ("cut", "truncated: the block at byte"),
        ("caplen", "captured length"),
    ],
)
def test_corrupt_pcapng_block_stops_cleanly(tmp_path: Path, corrupt: str, message: str) -> None:
    """A pcapng block with a bad length, a mismatched trailer, an undefined interface, a
    captured length beyond its block, or cut by the end of file ends iteration there."""
    good = [ng_epb(0, 1_700_000_000_000_000 + i, f) for i, (_, f) in enumerate(_mixed_frames(5))]
    bad = bytearray(ng_epb(0, 1_700_000_000_000_009, tcp_frame()))
    if corrupt == "block_len":
        bad[4:8] = struct.pack("<I", 13)
    elif corrupt == "trailer":
        bad[-4:] = struct.pack("<I", 4)
    elif corrupt == "interface":
        bad[8:12] = struct.pack("<I", 7)
    elif corrupt == "cut":
        bad = bad[:30]
    else:
        bad[20:24] = struct.pack("<I", 4000)
    after = b"" if corrupt == "cut" else b"".join(good)  # a cut block can only end the file
    content = ng_shb() + ng_idb(1) + b"".join(good) + bytes(bad) + after
    capture = CaptureFile(write(tmp_path, "c.pcapng", content))
    batch = PacketBatch.concat(list(capture))
    assert (5, True) == (capture.packets, message in (capture.damage or ""))
    assert 5 == len(batch) + batch.malformed + batch.non_ip
    assert len(content) - len(bad) - len(after) == capture.bytes_read


@pytest.mark.parametrize("name", ["f.pcap", "f.pcapng"])
def test_batches_tiny_buffers_and_rereads_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Batch size, a read buffer smaller than one record (so it must grow and compact) and
    small parse groups change only how rows are cut into batches, never the rows; every
    batch but the last holds batch_packets frames; a second pass gives the same again."""
    frames = _mixed_frames(101)
    if name.endswith("ng"):
        content = ng_shb() + ng_idb(1, tsresol=9) + b"".join(ng_epb(0, t, f) for t, f in frames)
    else:
        content = pcap_bytes(frames, 1, nsec=True)
    path = write(tmp_path, name, content)
    reference = batch_rows(read_capture(path))
    monkeypatch.setattr(pcap_module, "_INITIAL_BUFFER_BYTES", 256)
    capture = CaptureFile(path, batch_packets=7)
    sizes = [len(b) + b.malformed + b.non_ip for b in capture]
    assert [7] * 14 + [3] == sizes
    assert (101, len(content), None) == (capture.packets, capture.bytes_read, capture.damage)
    assert reference == batch_rows(PacketBatch.concat(list(capture)))
    monkeypatch.setattr(pcap_module, "_PARSE_GROUP_FRAMES", 3)
    assert reference == batch_rows(PacketBatch.concat(list(CaptureFile(path, batch_packets=50))))
    assert [t for t, _ in frames] == read_records(path).ts_ns.tolist()


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["iot23-honeypot-4-1/honeypot-4-1.pcap", "westermo/right.pcap"])
def test_read_sizes_change_no_row_of_a_real_capture(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """How much of the file one read brings in (reads end inside records; the part of a
    record already read moves to the buffer's front) changes no row and no count: a real
    capture read in small pieces gives every column exactly as the whole file parsed at
    once (read_records)."""
    path = real_capture(name)
    whole = read_records(path).parse()
    for read_bytes in (1 << 20, 4096, 1500):
        monkeypatch.setattr(pcap_module, "_READ_BYTES", read_bytes)
        capture = CaptureFile(path, batch_packets=5000)
        batch = PacketBatch.concat(list(capture))
        assert {k: v.tolist() for k, v in whole.columns().items()} == {k: v.tolist() for k, v in batch.columns().items()}
        assert (whole.malformed, whole.non_ip, path.stat().st_size, None) == (
            capture.malformed, capture.non_ip, capture.bytes_read, capture.damage)


# --------------------------------------------------------------------------------------
# Property tests: nothing in the bytes raises, and every frame is accounted for
# --------------------------------------------------------------------------------------

_SEED_FRAMES = [bytes(p) for case in sorted(CRAFTED) for p in CRAFTED[case]]
# NETAD_TEST_FUZZ_EXAMPLES raises the count for a long hunt (they passed 10,000 while written).
_FUZZ = settings(
    max_examples=int(os.environ.get("NETAD_TEST_FUZZ_EXAMPLES", "300")),
    deadline=None,  # the first example may include numba's compile or cache load
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def mutated_frame(draw: st.DrawFn) -> bytes:
    """A crafted frame, cut at a random length, with a few random bytes overwritten."""
    frame = bytearray(draw(st.sampled_from(_SEED_FRAMES)))
    frame = frame[: draw(st.integers(0, len(frame)))]
    for _ in range(draw(st.integers(0, 4))):
        if frame:
            frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    return bytes(frame)


@_FUZZ
@given(
    frames=st.lists(st.binary(max_size=120) | mutated_frame(), max_size=40),
    linktypes=st.lists(st.sampled_from(sorted(SUPPORTED_LINKTYPES) + [105, 65535]), min_size=40, max_size=40),
)
def test_any_frames_are_accounted_for(frames: list[bytes], linktypes: list[int]) -> None:
    """Random and mutated frames under any link type: parse_frames never raises, and rows +
    malformed + non_ip equals the number of frames, per link type and mixed."""
    pairs = [(T0_NS + i, f) for i, f in enumerate(frames)]
    for linktype in sorted(SUPPORTED_LINKTYPES):
        batch = parse_list(pairs, linktype) if pairs else PacketBatch.empty()
        assert len(frames) == len(batch) + batch.malformed + batch.non_ip
    if pairs:
        batch = parse_list(pairs, np.array(linktypes[: len(pairs)]))
        assert len(frames) == len(batch) + batch.malformed + batch.non_ip
        assert all(getattr(batch, n).dtype == dt for n, dt in PACKET_COLUMNS.items())


@_FUZZ
@given(frame=mutated_frame())
def test_mutated_ethernet_frames_match_scapy_twin(frame: bytes) -> None:
    """Cut and mutated Ethernet frames parse as the scapy twin dissects them (where scapy
    itself can dissect them)."""
    assume(scapy_twin(frame, 1, T0_NS) != SCAPY_FAILED)
    rows, malformed, non_ip = twin_batch([(T0_NS, frame)], 1)
    batch = parse_list([(T0_NS, frame)], 1)
    assert (rows, malformed, non_ip) == (batch_rows(batch), batch.malformed, batch.non_ip)


_SEED_PCAP = pcap_bytes(_mixed_frames(12), 1)
_SEED_PCAPNG = ng_shb() + ng_idb(1) + ng_idb(101, tsresol=0x80 | 10) + b"".join(
    ng_epb(i % 2, t, f if i % 2 == 0 else f[14:]) for i, (t, f) in enumerate(_mixed_frames(12))
) + ng_spb(tcp_frame())


@st.composite
def mutated_file(draw: st.DrawFn) -> bytes:
    """Random bytes, or a valid pcap/pcapng file cut and with bytes overwritten."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    content = bytearray(draw(st.sampled_from([_SEED_PCAP, _SEED_PCAPNG])))
    content = content[: draw(st.integers(0, len(content)))]
    for _ in range(draw(st.integers(0, 6))):
        if content:
            content[draw(st.integers(0, len(content) - 1))] = draw(st.integers(0, 255))
    return bytes(content)


@_FUZZ
@given(content=mutated_file(), batch_packets=st.integers(1, 20))
def test_any_file_is_read_or_refused_at_open(
    tmp_path_factory: pytest.TempPathFactory, content: bytes, batch_packets: int
) -> None:
    """Any byte string as a capture file: CaptureError at open, or iteration that never
    raises, accounts for every frame read and stops within the file; read_records agrees."""
    path = tmp_path_factory.mktemp("fuzz") / "f.cap"
    path.write_bytes(content)
    try:
        capture = CaptureFile(path, batch_packets=batch_packets)
    except CaptureError:
        return
    batches = list(capture)
    rows = sum(len(b) for b in batches)
    assert capture.packets == rows + capture.malformed + capture.non_ip
    assert capture.bytes_read <= len(content)
    assert (capture.damage is None) == (capture.bytes_read == len(content))
    records = read_records(path)
    assert (capture.packets, capture.damage) == (len(records), records.damage)


def test_pcapng_with_thousands_of_interfaces_reads_every_one(tmp_path: Path) -> None:
    """5,000 interface blocks (the walk keeps their columns in arrays grown by doubling: 8,000
    took 80 s when each block rebuilt them all) and a packet on the last one, with its own
    timestamp resolution."""
    content = b"".join([ng_shb(), *[ng_idb(1) for _ in range(4999)], ng_idb(1, tsresol=9),
                        ng_epb(4999, 1_700_000_000_123_456_789, tcp_frame(1))])
    capture = CaptureFile(write(tmp_path, "many.pcapng", content))
    batch = PacketBatch.concat(list(capture))
    assert [T0_NS + 123_456_789] == batch.ts_ns.tolist()
    assert (5000, None) == (len(capture.linktypes), capture.damage)


def test_pcapng_huge_if_tsoffset_is_damage_not_an_overflow(tmp_path: Path) -> None:
    """An if_tsoffset of 2**62 s would overflow nanoseconds: the interface block is damage,
    the packets before it are read, iteration ends cleanly."""
    content = b"".join([ng_shb(), ng_idb(1), ng_epb(0, 1_700_000_000_000_001, tcp_frame(1)),
                        ng_idb(1, tsoffset_s=1 << 62), ng_epb(1, 1_700_000_000_000_002, tcp_frame(2))])
    capture = CaptureFile(write(tmp_path, "offset.pcapng", content))
    assert 1 == sum(len(b) for b in capture)
    assert capture.damage is not None and "if_tsoffset 4611686018427387904 s" in capture.damage
