"""The flow table: bidirectional flows, TCP endings, timeouts, bounded state."""

from __future__ import annotations

import numpy as np

from detector.capture.flows import FlowTable, community_id
from detector.capture.packets.pcap import read_capture
from detector.contracts import PACKET_COLUMNS, PacketBatch
from tests.conftest import make_batch, shared_file

SYN, SYNACK, ACK, RST = 0x02, 0x12, 0x10, 0x04


def test_both_directions_are_one_flow_and_initiator_is_known():
    """A request and its reply share a flow id; the reply is not from the initiator."""
    b = make_batch([
        {"ts_s": 1, "src": "10.0.0.1", "dst": "8.8.8.8", "sport": 5000, "dport": 53, "proto": 17},
        {"ts_s": 2, "src": "8.8.8.8", "dst": "10.0.0.1", "sport": 53, "dport": 5000, "proto": 17},
        {"ts_s": 3, "src": "10.0.0.1", "dst": "8.8.8.8", "sport": 5001, "dport": 53, "proto": 17},
    ])
    ft = FlowTable()
    ann = ft.push(b)
    assert ann.flow_id[0] == ann.flow_id[1] != ann.flow_id[2]
    assert [True, False, True] == ann.new_flow.tolist()
    assert [True, False, True] == ann.from_initiator.tolist()
    assert 2 == len(ft)


def test_rst_ends_flow_and_new_syn_opens_another():
    """After RST, a SYN on the same 5-tuple is a new flow."""
    t = [
        {"ts_s": 1, "src": "10.0.0.1", "dst": "1.1.1.1", "sport": 40000, "dport": 443, "flags": SYN},
        {"ts_s": 1.1, "src": "1.1.1.1", "dst": "10.0.0.1", "sport": 443, "dport": 40000, "flags": SYNACK},
        {"ts_s": 1.2, "src": "10.0.0.1", "dst": "1.1.1.1", "sport": 40000, "dport": 443, "flags": RST},
        {"ts_s": 2, "src": "10.0.0.1", "dst": "1.1.1.1", "sport": 40000, "dport": 443, "flags": SYN},
    ]
    ann = FlowTable().push(make_batch(t))
    assert ann.flow_id[0] == ann.flow_id[1] == ann.flow_id[2] != ann.flow_id[3]
    assert [True, False, False, True] == ann.new_flow.tolist()


def test_idle_timeout_per_protocol():
    """A UDP flow silent longer than udp_idle_timeout_s restarts; the TCP one does not."""
    t = [
        {"ts_s": 0, "src": "10.0.0.1", "dst": "9.9.9.9", "sport": 1, "dport": 53, "proto": 17},
        {"ts_s": 0, "src": "10.0.0.1", "dst": "9.9.9.9", "sport": 2, "dport": 22, "proto": 6, "flags": ACK},
        {"ts_s": 100, "src": "10.0.0.1", "dst": "9.9.9.9", "sport": 1, "dport": 53, "proto": 17},
        {"ts_s": 100, "src": "10.0.0.1", "dst": "9.9.9.9", "sport": 2, "dport": 22, "proto": 6, "flags": ACK},
    ]
    ft = FlowTable(udp_idle_timeout_s=60, tcp_idle_timeout_s=300)
    ann = ft.push(make_batch(t))
    assert [True, True, True, False] == ann.new_flow.tolist()


def test_a_flow_met_midway_is_its_clients():
    """The table met these flows midway (a capture or a restart begun in them): a segment with
    ACK set, or a datagram, from the lower port of the two, or an echo reply, is the server's,
    so the flow is its peer's. A pure SYN and a probe without ACK are their sender's whatever
    their ports (a scan from source port 53 is the scanner's), so is a datagram from port 53
    too short to hold a DNS header, and a group address began nothing."""
    ACK_PSH, FIN, ECHO_REPLY = 0x18, 0x01, 0
    rows = [
        # (first packet seen, the flow's initiator is its sender)
        ({"src": "1.1.1.1", "dst": "10.0.0.1", "sport": 443, "dport": 40000, "flags": ACK_PSH}, False),
        ({"src": "1.1.1.1", "dst": "10.0.0.2", "sport": 443, "dport": 40000, "flags": SYNACK}, False),
        ({"src": "10.0.0.3", "dst": "1.1.1.1", "sport": 40000, "dport": 443, "flags": ACK_PSH}, True),
        ({"src": "8.8.8.8", "dst": "10.0.0.4", "sport": 53, "dport": 40000, "proto": 17}, False),
        ({"src": "10.0.0.5", "dst": "8.8.8.8", "sport": 40000, "dport": 53, "proto": 17}, True),
        ({"src": "10.0.0.66", "dst": "10.0.0.6", "sport": 53, "dport": 40000, "flags": SYN}, True),
        ({"src": "10.0.0.66", "dst": "10.0.0.7", "sport": 53, "dport": 40000, "flags": FIN}, True),
        # from UDP port 53, less payload than a DNS header: a probe, not an answer
        ({"src": "10.0.0.66", "dst": "10.0.0.14", "sport": 53, "dport": 40000, "proto": 17, "ip_len": 28}, True),
        ({"src": "10.0.0.66", "dst": "10.0.0.15", "sport": 53, "dport": 40000, "proto": 17, "ip_len": 39}, True),
        ({"src": "8.8.8.8", "dst": "10.0.0.16", "sport": 53, "dport": 40000, "proto": 17, "ip_len": 40}, False),
        ({"src": "2001:db8::66", "dst": "2001:db8::14", "sport": 53, "dport": 40000, "proto": 17, "ip_len": 48}, True),
        ({"src": "2001:db8::53", "dst": "2001:db8::16", "sport": 53, "dport": 40000, "proto": 17, "ip_len": 60}, False),
        ({"src": "10.0.0.1", "dst": "255.255.255.255", "sport": 67, "dport": 68, "proto": 17}, True),
        ({"src": "10.0.0.1", "dst": "ff02::fb", "sport": 53, "dport": 5353, "proto": 17}, True),
        ({"src": "10.0.0.8", "dst": "10.0.0.9", "sport": 123, "dport": 123, "proto": 17}, True),
        ({"src": "fe80::1", "dst": "2001:db8::547", "sport": 546, "dport": 547, "proto": 17}, True),
        ({"src": "10.0.0.10", "dst": "10.0.0.11", "sport": ECHO_REPLY, "dport": 0, "proto": 1}, False),
        ({"src": "10.0.0.12", "dst": "10.0.0.13", "sport": 8, "dport": 0, "proto": 1}, True),
    ]
    first = [dict(r, ts_s=1 + i) for i, (r, _) in enumerate(rows)]
    answer = [dict(r, ts_s=20 + i, src=r["dst"], dst=r["src"], sport=r["dport"], dport=r["sport"],
                   flags=ACK_PSH if r.get("proto", 6) == 6 else 0)
              for i, (r, _) in enumerate(rows) if r["dst"] not in ("255.255.255.255", "ff02::fb")]
    ft = FlowTable()
    opened, answered = ft.push(make_batch(first)), ft.push(make_batch(answer))
    assert opened.new_flow.all() and not answered.new_flow.any()
    assert [sender for _, sender in rows] == opened.from_initiator.tolist()
    assert [not sender for r, sender in rows if r["dst"] not in ("255.255.255.255", "ff02::fb")] == (
        answered.from_initiator.tolist())


def test_a_udp_scan_from_source_port_53_is_the_scanners_and_dns_answers_stay_the_servers():
    """The ESnet masscan UDP scan (1,001 probes from one port to ports 0-1000, 997 of them
    empty) sent from source port 53 to ports 40,000-41,000, as nmap --source-port 53 sends
    it past firewalls that let DNS answers in: each probe opens a flow of the scanner's,
    but for the four that carry a payload as long as a DNS message's, which read as answers.
    Before, all 1,001 were read as answers, and their flows as the target's, begun towards
    the scanner's port 53. The honeypot's real DNS answers, none shorter than a DNS header,
    are still each the server's answer in its client's flow."""
    scan = read_capture(shared_file("attacks/esnet/udp_0_1000_20190821.pcap"))
    scan.sport[:] = 53
    scan.dport[:] += 40_000
    opened = FlowTable().push(scan)
    assert 1001 == int(opened.new_flow.sum())
    payload = scan.ip_len.astype(np.int64) - 28
    assert opened.from_initiator.tolist() == (payload < 12).tolist() and 997 == int(opened.from_initiator.sum())
    benign = read_capture(shared_file("iot23-honeypot-4-1/honeypot-4-1.pcap"))
    answers = (benign.proto == 17) & (benign.sport == 53) & (benign.dport >= 1024)
    assert 191 == int(answers.sum())
    assert not FlowTable().push(benign).from_initiator[answers].any()


def test_a_flow_cut_at_the_active_timeout_keeps_its_initiator():
    """A long session cut at the active timeout goes on as a new flow of the same initiator,
    whoever speaks first after the cut (the server's push here)."""
    t = [
        {"ts_s": 0, "src": "10.0.0.1", "dst": "1.1.1.1", "sport": 40000, "dport": 8883, "flags": SYN},
        {"ts_s": 0.1, "src": "1.1.1.1", "dst": "10.0.0.1", "sport": 8883, "dport": 40000, "flags": SYNACK},
        {"ts_s": 50, "src": "10.0.0.1", "dst": "1.1.1.1", "sport": 40000, "dport": 8883, "flags": ACK},
        {"ts_s": 101, "src": "1.1.1.1", "dst": "10.0.0.1", "sport": 8883, "dport": 40000, "flags": ACK},
        {"ts_s": 102, "src": "10.0.0.1", "dst": "1.1.1.1", "sport": 40000, "dport": 8883, "flags": ACK},
    ]
    ann = FlowTable(active_timeout_s=100).push(make_batch(t))
    assert [True, False, False, True, False] == ann.new_flow.tolist()
    assert [True, False, True, False, True] == ann.from_initiator.tolist()


def test_a_real_capture_met_midway_names_the_same_initiators():
    """Westermo's TCP sessions, each read from the packet after its handshake on (as a restart
    or a capture begun midway meets them), are given the initiators the whole capture gives
    them: the first packet left is the server's in part of them (taking the first packet's
    sender as the initiator, as the table did, gets those wrong)."""
    from detector.capture.packets.pcap import CaptureFile

    batch = next(iter(CaptureFile(shared_file("westermo/right.pcap"), batch_packets=200_000)))
    tcp = batch.take(np.flatnonzero(batch.proto == 6))
    whole = FlowTable().push(tcp)
    # each flow's packets from a drawn one on, past its SYN and SYN-ACK
    order = np.argsort(whole.flow_id, kind="stable")
    ids = whole.flow_id[order]
    start = np.searchsorted(ids, ids)
    nth, size = np.arange(ids.size) - start, np.searchsorted(ids, ids, side="right") - start
    cut = 2 + (np.random.default_rng(0).random(ids.size)[start] * np.maximum(size - 2, 0)).astype(np.int64)
    later = np.sort(order[nth >= cut])
    midway = FlowTable().push(tcp.take(later))
    first = midway.new_flow
    server_first = first & (tcp.sport[later] < tcp.dport[later])
    assert server_first.sum() > 100 and (first & ~server_first).sum() > 100
    assert midway.from_initiator.tolist() == whole.from_initiator[later].tolist()


def _flood(n: int, seed: int = 0) -> PacketBatch:
    rng = np.random.default_rng(seed)
    cols = {k: np.zeros(n, dtype=d) for k, d in PACKET_COLUMNS.items()}
    cols["ts_ns"] = np.arange(n, dtype=np.int64) * 10_000
    cols["src_lo"] = np.uint64(0xFFFF00000000) + rng.integers(0, 2**32, n).astype(np.uint64)
    cols["dst_lo"][:] = np.uint64(0xFFFF0A000001)
    cols["sport"] = rng.integers(1024, 65535, n).astype(np.uint16)
    cols["dport"][:] = 80
    cols["proto"][:] = 6
    cols["tcp_flags"][:] = SYN
    cols["ip_len"][:] = 40
    return PacketBatch(**cols)


def test_spoofed_flood_cannot_grow_state_past_the_cap():
    """A flood of distinct spoofed sources is bounded by max_flows; evictions are counted."""
    ft = FlowTable(max_flows=5000)
    before = ft.state_bytes
    for seed in range(3):
        ft.push(_flood(20_000, seed))
    assert len(ft) <= 5000
    assert before == ft.state_bytes
    assert 60_000 - 5000 <= ft.evicted + ft.flows_ended
    assert 60_000 == ft.flows_created
    assert ft.state_bytes / ft.max_flows <= 150


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * 4096


def test_an_ended_flood_hands_its_rows_pages_back():
    """Once a flood's flows have ended, the pages of the dense rows it wrote are handed back
    (they read as zeros and take no memory, as in a fresh table), and the table then
    annotates packets exactly as a fresh one does."""
    ft = FlowTable(max_flows=200_000)
    ft.push(_flood(100_000))
    held = _rss_bytes()
    ft.sweep(3600 * 10**9)  # an hour later: every SYN-only flow has timed out
    assert 0 == len(ft)
    assert held - _rss_bytes() >= 100_000 * 80  # the rows' pages (88 bytes a row, a few pages kept)
    assert not ft._keys_u64[1024:100_000].any() and not ft._vals_u64[1024:100_000].any()
    later = make_batch([
        {"ts_s": 3700, "src": "10.0.0.1", "dst": "9.9.9.9", "sport": 1, "dport": 53, "proto": 17},
        {"ts_s": 3700, "src": "10.0.0.2", "dst": "9.9.9.9", "sport": 5, "dport": 80, "proto": 6, "flags": SYN},
        {"ts_s": 3701, "src": "9.9.9.9", "dst": "10.0.0.2", "sport": 80, "dport": 5, "proto": 6, "flags": SYNACK},
    ])
    got, fresh = ft.push(later), FlowTable(max_flows=200_000).push(later)
    assert fresh.flow_id.tolist() == got.flow_id.tolist()
    assert fresh.new_flow.tolist() == got.new_flow.tolist()
    assert fresh.from_initiator.tolist() == got.from_initiator.tolist()


def test_real_synflood_capture_stays_bounded():
    """The real spoofed SYN flood (37,624 sources) replayed three times stays within the cap."""
    from detector.capture.packets.pcap import read_capture

    batch = read_capture(shared_file("attacks/stopddos/pkt.TCP.synflood.spoofed.pcap"))
    ft = FlowTable(max_flows=4096)
    span = int(batch.ts_ns.max() - batch.ts_ns.min()) + 1
    for loop in range(3):
        shifted = batch.take(slice(None))
        shifted.ts_ns = batch.ts_ns + loop * span
        ft.push(shifted)
        assert len(ft) <= 4096
    assert ft.evicted > 0


def test_community_id_matches_spec_example():
    """Community ID v1 of the spec's TCP example (corelight/community-id-spec baseline)."""
    assert "1:LQU9qZlK+B5F3KDmev6m5PMibrg=" == community_id(6, "128.232.110.120", "66.35.250.204", 34855, 80)
