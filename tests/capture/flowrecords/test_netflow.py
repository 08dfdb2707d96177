"""The NetFlow v5/v9/IPFIX collector: hand-built datagrams (templates, options, sampling,
biflows, bad input) and softflowd exporting real captures over loopback UDP, compared with
netad's own packet path on the same captures."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from detector.bench.flows import flows
from detector.capture.flowrecords.netflow import NetflowCollector, NetflowParser
from detector.capture.flows import FlowTable
from detector.capture.packets.pcap import read_capture, read_records
from detector.contracts import Exporter, FlowRecordBatch, addr_to_pair, pair_to_addr
from detector.errors import CaptureError
from detector.synth import netflow as enc
from tests.capture.flowrecords._softflowd import needs_softflowd, run_softflowd, softflowd_datagrams
from tests.conftest import shared_file

EXPORTER = "192.0.2.254"
EXPORT_S = 1_700_000_000

# v9 record layout with times in ms of uptime, as softflowd and routers send it
V9 = ((8, 4), (12, 4), (22, 4), (21, 4), (1, 4), (2, 4), (7, 2), (11, 2), (4, 1), (6, 1))


def ip(text: str) -> int:
    return addr_to_pair(text)[1] & 0xFFFFFFFF


def v9_records(n: int = 3, uptime_ms: int = 100_000, over: dict | None = None) -> bytes:
    cols = {8: np.full(n, ip("10.0.0.5")), 12: np.array([ip(f"192.0.2.{i + 1}") for i in range(n)]),
            22: np.full(n, uptime_ms - 4000), 21: np.full(n, uptime_ms - 1000), 1: np.arange(1, n + 1) * 1000,
            2: np.arange(1, n + 1) * 10, 7: np.full(n, 40000), 11: np.full(n, 443), 4: np.full(n, 6), 6: np.full(n, 0x1B)}
    cols.update(over or {})
    return enc.pack_records(V9, {k: np.asarray(v, dtype=np.uint64) for k, v in cols.items()}, n)


def v9(sets: list[bytes], seq: int = 0, uptime_ms: int = 100_000, source_id: int = 0) -> bytes:
    return enc.v9_datagram(sets, EXPORT_S, uptime_ms, seq, source_id)


def parse(parser: NetflowParser, *datagrams: bytes) -> FlowRecordBatch:
    return parser.parse(list(datagrams), [EXPORTER] * len(datagrams))


def test_v5_records_times_icmp_and_header_sampling():
    """v5: fixed records; times from the header's uptime and clock; ICMP type/code from the
    destination port; the header's sampling interval multiplies the counters."""
    recs = np.zeros(2, enc.V5_DTYPE)
    recs["src"], recs["dst"] = [ip("10.0.0.5"), ip("10.0.0.6")], [ip("192.0.2.1"), ip("192.0.2.2")]
    recs["packets"], recs["bytes"] = [3, 1], [300, 56]
    recs["first"], recs["last"] = [95_000, 99_000], [98_000, 99_000]
    recs["sport"], recs["dport"], recs["proto"], recs["flags"] = [40000, 0], [443, 0x0301], [6, 1], [0x12, 0]
    dg = enc.v5_datagram(recs, EXPORT_S, 500_000_000, uptime_ms=100_000, sequence=7, sampling_interval=(1 << 14) | 10)
    b = parse(NetflowParser(), dg)
    export_ns = EXPORT_S * 10**9 + 500_000_000
    assert [export_ns - 5 * 10**9, export_ns - 10**9] == b.start_ns.tolist()
    assert [export_ns - 2 * 10**9, export_ns - 10**9] == b.end_ns.tolist()
    assert ["10.0.0.5", "10.0.0.6"] == [pair_to_addr(h, lo) for h, lo in zip(b.src_hi, b.src_lo, strict=True)]
    assert [30, 10] == b.packets.tolist()
    assert [3000, 560] == b.bytes.tolist()
    assert [10, 10] == b.sampling.tolist()
    assert [40000, 3] == b.sport.tolist()  # ICMP: type ...
    assert [443, 1] == b.dport.tolist()  # ... and code, where PacketBatch has them
    assert [0x12, 0] == b.tcp_flags.tolist()
    assert {1: Exporter(name=EXPORTER, address=EXPORTER, domain=0)} == b.exporters


def test_v9_template_then_data_and_uptime_wrap():
    """Records follow the template; times survive the 32-bit uptime wrapping around."""
    parser = NetflowParser()
    b = parse(parser, v9([enc.template_set(256, V9, ipfix=False), enc.data_set(256, v9_records())]))
    assert 3 == len(b)
    assert [10, 20, 30] == b.packets.tolist()
    assert [EXPORT_S * 10**9 - 4 * 10**9] * 3 == b.start_ns.tolist()
    over = {22: [(500 - 4000) % 2**32], 21: [(500 - 1000) % 2**32]}
    wrapped = v9([enc.data_set(256, v9_records(1, uptime_ms=500, over=over))], seq=1, uptime_ms=500)
    b = parse(parser, wrapped)
    assert [EXPORT_S * 10**9 - 4 * 10**9] == b.start_ns.tolist()
    assert 0 == parser.counters["datagrams_malformed"]


def test_ipv6_records_and_icmpv6_type_code():
    """IPv6 addresses (16-byte fields) and ICMPv6's type/code from icmpTypeCodeIPv6."""
    fields = ((27, 16), (28, 16), (4, 1), (139, 2), (2, 4), (1, 4))
    src, dst = addr_to_pair("2001:db8::1"), addr_to_pair("2001:db8:ffff::2")
    cols = {27: np.array([src]), 28: np.array([dst]), 4: np.array([58]), 139: np.array([(1 << 8) | 4]),
            2: np.array([2]), 1: np.array([160])}
    b = parse(NetflowParser(), v9([enc.template_set(2048, fields, ipfix=False), enc.data_set(2048, enc.pack_records(fields, cols, 1))]))
    assert ["2001:db8::1"] == addrs(b.src_hi, b.src_lo)
    assert ["2001:db8:ffff::2"] == addrs(b.dst_hi, b.dst_lo)
    assert ([1], [4], [58]) == (b.sport.tolist(), b.dport.tolist(), b.proto.tolist())  # destination unreachable, port


def addrs(hi: np.ndarray, lo: np.ndarray) -> list[str]:
    return [pair_to_addr(h, lo_) for h, lo_ in zip(hi, lo, strict=True)]


def test_data_before_its_template_is_buffered_and_parsed_when_it_comes():
    """A collector started after the exporter sent its templates: the data waits (bounded),
    is parsed with its own datagram's clock once the template arrives."""
    parser = NetflowParser()
    early = v9([enc.data_set(256, v9_records())], seq=0, uptime_ms=100_000)
    assert 0 == len(parse(parser, early))
    assert 1 == parser.counters["flowsets_waiting_template"]
    later = v9([enc.template_set(256, V9, ipfix=False)], seq=1, uptime_ms=160_000)
    b = parse(parser, later)
    assert 3 == len(b)
    assert [EXPORT_S * 10**9 - 4 * 10**9] * 3 == b.start_ns.tolist()  # the early datagram's uptime
    assert 0 == parser.stats()["pending_bytes"]


def test_the_buffer_for_data_without_template_is_bounded():
    parser = NetflowParser(max_pending_bytes=1000)
    parse(parser, *[v9([enc.data_set(300 + i, v9_records())], seq=i) for i in range(20)])
    assert parser.stats()["pending_bytes"] <= 1000
    assert 20 == parser.counters["flowsets_waiting_template"]
    assert parser.counters["flowsets_dropped_no_template"] >= 10


def test_data_dropped_for_want_of_its_template_is_lost_and_the_records_are_whole_only_after_it():
    """A collector opened under an exporter whose template refresh is far off: its data
    waits, and what overflows the buffer is lost as an export never heard is. Its flows
    ended before its export, so the records are whole only from the export time of the
    last data dropped (FlowRecordBatch.watched_from_ns); what waited and was read once the
    template came moves nothing."""
    parser = NetflowParser(max_pending_bytes=1000)
    sent = [enc.v9_datagram([enc.data_set(256, v9_records(uptime_ms=100_000 + 10_000 * i))], EXPORT_S + 10 * i,
                            100_000 + 10_000 * i, 1 + i) for i in range(8)]
    first = parse(parser, *sent[:2])
    assert (0, None) == (len(first), first.watched_from_ns)  # waiting, nothing lost yet
    parse(parser, *sent[2:])
    dropped = parser.counters["flowsets_dropped_no_template"]
    assert 0 < dropped < 8
    b = parse(parser, enc.v9_datagram([enc.template_set(256, V9, ipfix=False)], EXPORT_S + 80, 180_000, 9))
    assert 3 * (8 - dropped) == len(b)  # the rest read with their own datagrams' clocks
    assert (EXPORT_S + 10 * (dropped - 1)) * 10**9 == b.watched_from_ns
    assert sorted({(EXPORT_S + 10 * i - 4) * 10**9 for i in range(dropped, 8)}) == np.unique(b.start_ns).tolist()


def test_a_parser_given_another_s_state_reads_at_once_what_that_one_could():
    """state_dict / load_state_dict: the templates and options (sampling) one parser learnt,
    through JSON, let a fresh one (a restarted collector) read data sent without them, as
    the first would; the exporter's own templates replace them as they come. An exporter
    whose sequence number says it started afresh voids them: its data waits for its new
    templates, as on a fresh collector."""
    first = NetflowParser()
    options = enc.options_template_set(257, scope=[(1, 4)], options=[(34, 4), (35, 1)], ipfix=False)
    opt_rec = enc.data_set(257, enc.pack_records(((1, 4), (34, 4), (35, 1)), {34: np.array([100]), 35: np.array([1])}, 1))
    short = ((8, 4), (12, 4), (2, 4))
    rec = enc.pack_records(short, {8: np.array([ip("10.0.0.9")]), 12: np.array([ip("10.0.0.1")]), 2: np.array([5])}, 1)
    long_flows = v9_records(over={22: np.full(3, 100_000 - 60_000)})  # begun a minute before their export
    parse(first, v9([enc.template_set(256, V9, ipfix=False), options, opt_rec, enc.template_set(300, short, ipfix=False),
                     enc.data_set(256, long_flows)], seq=7))
    state = json.loads(json.dumps(first.state_dict()))
    later = v9([enc.data_set(256, v9_records()), enc.data_set(300, rec)], seq=90)
    restarted = NetflowParser()
    assert 3 == restarted.load_state_dict(state)
    b, own = parse(restarted, later), parse(first, later)
    assert 4 == len(b)
    assert 60 * 10**9 == own.reporting_lag_ns == b.reporting_lag_ns  # how late the exporter reports, as known before
    for name in ("packets", "bytes", "sampling", "start_ns", "src_lo", "dst_lo"):
        assert getattr(own, name).tolist() == getattr(b, name).tolist(), name
    assert [100] * 4 == b.sampling.tolist()  # the domain's sampling, as the options record said
    assert 0 == restarted.counters["flowsets_waiting_template"]
    # the exporter's own template replaces the one given
    replaced = enc.pack_records(((8, 4), (12, 4), (1, 4)), {8: np.array([ip("10.0.0.9")]), 12: np.array([ip("10.0.0.1")]),
                                                            1: np.array([999])}, 1)
    b = parse(restarted, v9([enc.template_set(300, ((8, 4), (12, 4), (1, 4)), ipfix=False), enc.data_set(300, replaced)], seq=91))
    assert [999 * 100] == b.bytes.tolist()
    # an exporter that restarted too (v9 counts export packets from 1 at softflowd) sends its
    # templates first: what it said before and did not say again is void, its data waits
    fresh = NetflowParser()
    fresh.load_state_dict(state)
    b = parse(fresh, v9([enc.template_set(256, V9, ipfix=False), enc.data_set(256, v9_records())], seq=1))
    assert [1] * 3 == b.sampling.tolist()  # its sampling not said again
    assert 0 == len(parse(fresh, v9([enc.data_set(300, rec)], seq=2)))
    assert 1 == fresh.counters["flowsets_waiting_template"]
    # another collector's exporters, outside the allowed networks, are left out
    assert 0 == NetflowParser(allowed_exporters=["198.51.100.0/24"]).load_state_dict(state)


@pytest.mark.parametrize("state", [{}, {"exporters": [{"address": "192.0.2.1"}]}, {"exporters": "x"},
                                   {"exporters": [], "reporting_lag_ns": -5},
                                   {"exporters": [{"address": "192.0.2.1", "domain": 0, "samplers": [], "domain_rate": None,
                                                   "sysinit_ms": None, "templates": [{"version": 9, "id": 256,
                                                                                      "options": False, "fields": [[8]]}]}]}])
def test_a_state_not_of_a_parser_is_refused_whole(state: dict):
    parser = NetflowParser()
    with pytest.raises(ValueError, match="not a NetFlow parser's state"):
        parser.load_state_dict(state)
    assert (0, 0) == (parser.stats()["templates"], parser.stats()["exporters"])


def test_template_refresh_and_replacement():
    """The same template again is a refresh; other fields under the same id replace it."""
    parser = NetflowParser()
    parse(parser, v9([enc.template_set(256, V9, ipfix=False)]))
    parse(parser, v9([enc.template_set(256, V9, ipfix=False)], seq=1))
    assert (1, 1) == (parser.counters["templates_added"], parser.counters["templates_refreshed"])
    short = ((8, 4), (12, 4), (2, 4))
    rec = enc.pack_records(short, {8: np.array([ip("10.0.0.9")]), 12: np.array([ip("10.0.0.1")]), 2: np.array([77])}, 1)
    b = parse(parser, v9([enc.template_set(256, short, ipfix=False), enc.data_set(256, rec)], seq=2))
    assert 1 == parser.counters["templates_changed"]
    assert [77] == b.packets.tolist()
    assert [EXPORT_S * 10**9] == b.start_ns.tolist()  # no time fields: the export time


def test_templates_are_kept_per_exporter_and_domain():
    """Two exporters (or observation domains) may use one template id for different layouts."""
    parser = NetflowParser()
    short = ((8, 4), (12, 4), (2, 4))
    rec = enc.pack_records(short, {8: np.array([ip("10.0.0.9")]), 12: np.array([ip("10.0.0.1")]), 2: np.array([5])}, 1)
    a = v9([enc.template_set(256, V9, ipfix=False), enc.data_set(256, v9_records(1))], source_id=1)
    b = v9([enc.template_set(256, short, ipfix=False), enc.data_set(256, rec)], source_id=2)
    out = parse(parser, a, b)
    assert [10, 5] == out.packets.tolist()
    assert {"192.0.2.254/1", "192.0.2.254/2"} == {e.name for e in out.exporters.values()}


def test_v9_sampling_from_an_options_record():
    """An options template (scope System) with SAMPLING_INTERVAL: the domain's records are
    multiplied by it and say so."""
    parser = NetflowParser()
    options = enc.options_template_set(257, scope=[(1, 4)], options=[(34, 4), (35, 1)], ipfix=False)
    opt_rec = enc.data_set(257, enc.pack_records(((1, 4), (34, 4), (35, 1)), {34: np.array([100]), 35: np.array([1])}, 1))
    b = parse(parser, v9([enc.template_set(256, V9, ipfix=False), options, opt_rec, enc.data_set(256, v9_records())]))
    assert [1000, 2000, 3000] == b.packets.tolist()
    assert [100] * 3 == b.sampling.tolist()
    assert 1 == parser.counters["options_records"]
    assert [1000 * 100, 2000 * 100, 3000 * 100] == b.bytes.tolist()


def test_ipfix_sampling_per_selector_and_absolute_times():
    """IPFIX: samplingPacketInterval/Space per selectorId (1 in 4 and 1 in 10); records name
    their selector; flowStart/EndMilliseconds are absolute."""
    parser = NetflowParser()
    opt_fields = ((302, 4), (305, 4), (306, 4))
    options = enc.options_template_set(500, scope=[(302, 4)], options=[(305, 4), (306, 4)], ipfix=True)
    opt_recs = enc.pack_records(opt_fields, {302: np.array([1, 2]), 305: np.array([1, 1]), 306: np.array([3, 9])}, 2)
    fields = ((8, 4), (12, 4), (152, 8), (153, 8), (2, 8), (1, 8), (4, 1), (302, 4))
    start_ms = EXPORT_S * 1000 - 30_000
    recs = enc.pack_records(fields, {8: np.full(3, ip("10.0.0.1")), 12: np.full(3, ip("10.0.0.2")), 152: np.full(3, start_ms),
                                     153: np.full(3, start_ms + 1500), 2: np.array([1, 2, 3]), 1: np.array([100, 200, 300]),
                                     4: np.full(3, 17), 302: np.array([1, 2, 9])}, 3)
    msg = enc.ipfix_message([options, enc.data_set(500, opt_recs), enc.template_set(501, fields, ipfix=True),
                             enc.data_set(501, recs)], EXPORT_S, sequence=0)
    b = parse(parser, msg)
    assert [4, 10, 1] == b.sampling.tolist()  # selector 9 was never announced: unsampled
    assert [4, 20, 3] == b.packets.tolist()
    assert [start_ms * 10**6] * 3 == b.start_ns.tolist()
    assert [(start_ms + 1500) * 10**6] * 3 == b.end_ns.tolist()


def test_ipfix_system_init_time_past_what_nanoseconds_hold_is_unknown():
    """Times in ms of uptime from a systemInitTimeMilliseconds no system could have (2**62:
    its nanoseconds overflow int64, and wrapped they were a time like any other): the
    records are read, their times unknown (the export's), as without an init time; an
    options record that announces 2**63 or more neither crashes the parser nor sets one."""
    fields = ((8, 4), (12, 4), (22, 4), (21, 4), (2, 8), (1, 8), (4, 1), (160, 8))
    recs = enc.pack_records(fields, {8: np.full(2, ip("10.0.0.1")), 12: np.full(2, ip("10.0.0.2")), 22: np.full(2, 1000),
                                     21: np.full(2, 2000), 2: np.array([1, 2]), 1: np.array([100, 200]), 4: np.full(2, 17),
                                     160: np.array([1 << 62, 1 << 62])}, 2)
    options = enc.options_template_set(500, scope=[(160, 8)], options=[], ipfix=True)
    opt_recs = enc.pack_records(((160, 8),), {160: np.array([(1 << 63) + 5], dtype=np.uint64)}, 1)
    msg = enc.ipfix_message([options, enc.data_set(500, opt_recs), enc.template_set(501, fields, ipfix=True),
                             enc.data_set(501, recs)], EXPORT_S, sequence=0)
    b = parse(NetflowParser(), msg)
    assert [1, 2] == b.packets.tolist()
    assert [EXPORT_S * 10**9] * 2 == b.start_ns.tolist() == b.end_ns.tolist()


def test_ipfix_biflows_become_two_records():
    """RFC 5103 reverse elements: a biflow is split into its two directions."""
    fields = ((8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (2, 4), (1, 4), (6, 1), (2, 4, 29305), (1, 4, 29305), (6, 1, 29305))
    cols = {8: np.array([ip("10.0.0.1"), ip("10.0.0.3")]), 12: np.array([ip("192.0.2.7"), ip("192.0.2.8")]),
            7: np.array([40000, 40001]), 11: np.array([443, 80]), 4: np.array([6, 6]), 2: np.array([5, 1]),
            1: np.array([500, 60]), 6: np.array([0x1B, 0x02]), -2: np.array([4, 0]), -1: np.array([4000, 0]),
            -6: np.array([0x1B, 0])}
    msg = enc.ipfix_message([enc.template_set(600, fields, ipfix=True), enc.data_set(600, enc.pack_records(fields, cols, 2))],
                            EXPORT_S, sequence=0)
    b = parse(NetflowParser(), msg)
    assert 3 == len(b)  # the unanswered SYN has no reverse record
    assert ["10.0.0.1", "192.0.2.7", "10.0.0.3"] == [pair_to_addr(h, lo) for h, lo in zip(b.src_hi, b.src_lo, strict=True)]
    assert [40000, 443, 40001] == b.sport.tolist()
    assert [5, 4, 1] == b.packets.tolist()
    assert [0x1B, 0x1B, 0x02] == b.tcp_flags.tolist()


def test_ipfix_variable_length_fields_and_withdrawal():
    fields = ((8, 4), (82, 65535), (12, 4), (2, 4))
    rec = b"".join(struct_rec(a, name, d, p) for a, name, d, p in (("10.0.0.1", b"eth0", "10.0.0.2", 7),
                                                                    ("10.0.0.3", b"x" * 300, "10.0.0.4", 9)))
    parser = NetflowParser()
    b = parse(parser, enc.ipfix_message([enc.template_set(700, fields, ipfix=True), enc.data_set(700, rec)], EXPORT_S, 0))
    assert [7, 9] == b.packets.tolist()
    assert ["10.0.0.2", "10.0.0.4"] == [pair_to_addr(h, lo) for h, lo in zip(b.dst_hi, b.dst_lo, strict=True)]
    parse(parser, enc.ipfix_message([enc.withdrawal_set(700)], EXPORT_S, 2))
    assert 1 == parser.counters["templates_withdrawn"]
    assert 0 == len(parse(parser, enc.ipfix_message([enc.data_set(700, rec)], EXPORT_S, 2)))
    assert 1 == parser.counters["flowsets_waiting_template"]


def struct_rec(src: str, name: bytes, dst: str, packets: int) -> bytes:
    length = bytes([len(name)]) if len(name) < 255 else b"\xff" + len(name).to_bytes(2, "big")
    return ip(src).to_bytes(4, "big") + length + name + ip(dst).to_bytes(4, "big") + packets.to_bytes(4, "big")


def test_sequence_gaps_and_reordering_are_counted():
    parser = NetflowParser()
    tmpl = enc.template_set(256, V9, ipfix=False)
    for seq in (1, 2, 5, 3, 6):  # 3 and 4 lost, then 3 arrives late
        parse(parser, v9([tmpl, enc.data_set(256, v9_records(1))], seq=seq))
    assert 1 == parser.counters["sequence_gaps"]
    assert 1 == parser.counters["datagrams_out_of_order"]
    assert 5 == parser.counters["records"]  # counted, never dropped for their order


def test_an_exporter_first_heard_past_its_first_export_is_whole_from_then_on():
    """The first datagram heard from an exporter says by its sequence number whether it had
    exported before; if so, what it exported then was lost, and its records are whole only
    from this datagram's export time (FlowRecordBatch.watched_from_ns). Each version counts
    from 0 (v5 flows, v9 export packets, IPFIX data records); softflowd starts v9 at 1 and
    counts an IPFIX message's own records, as the test below shows with it."""
    tmpl = enc.template_set(256, V9, ipfix=False)
    assert parse(NetflowParser(), v9([tmpl, enc.data_set(256, v9_records(2))], seq=1)).watched_from_ns is None
    late = NetflowParser()
    b = parse(late, v9([tmpl, enc.data_set(256, v9_records(2))], seq=40_001))
    assert EXPORT_S * 10**9 == b.watched_from_ns
    later = enc.v9_datagram([tmpl, enc.data_set(256, v9_records(2))], EXPORT_S + 60, 160_000, 40_002, 0)
    assert EXPORT_S * 10**9 == parse(late, later).watched_from_ns  # a datagram after the first moves nothing
    recs = np.zeros(3, enc.V5_DTYPE)
    recs["last"], recs["first"], recs["packets"] = 90_000, 89_000, 1
    for seq, whole_from in ((0, None), (3, None), (4, EXPORT_S * 10**9)):
        assert whole_from == parse(NetflowParser(), enc.v5_datagram(recs, EXPORT_S, 0, 100_000, seq)).watched_from_ns
    # live, an export time ahead of the wall clock (as far as export_window_s lets in) counts
    # from the datagram's arrival: a clock ahead must not hide windows the collector heard whole
    live = NetflowParser(export_window_s=(300.0, 3600.0))
    before_ns = time.time_ns()
    ahead = live.parse([enc.v5_datagram(recs, int(time.time()) + 240, 0, 100_000, 4)], [EXPORTER]).watched_from_ns
    assert ahead is not None and before_ns <= ahead <= time.time_ns()
    # a second exporter, first heard later and past its first export, moves it on; one heard
    # from its first export does not
    parser = NetflowParser()
    parse(parser, enc.v5_datagram(recs, EXPORT_S, 0, 100_000, 0))
    assert parser.parse([enc.v5_datagram(recs, EXPORT_S + 30, 0, 130_000, 0)], ["192.0.2.7"]).watched_from_ns is None
    assert (EXPORT_S + 90) * 10**9 == parser.parse([enc.v5_datagram(recs, EXPORT_S + 90, 0, 190_000, 700)],
                                                   ["192.0.2.8"]).watched_from_ns


def test_the_reporting_lag_is_the_longest_an_exporter_took_to_report_a_flow():
    """Each record's export time less its start, the largest met so far: how long after a
    packet the exporter may still report it (its active timeout for a long flow)."""
    parser = NetflowParser()
    assert parse(parser, v9([enc.template_set(256, V9, ipfix=False)])).reporting_lag_ns is None
    recs = np.zeros(2, enc.V5_DTYPE)
    recs["src"], recs["dst"], recs["packets"] = ip("10.0.0.5"), ip("192.0.2.1"), 1
    recs["first"], recs["last"] = [100_000 - 65_000, 100_000 - 3_000], [100_000 - 5_000, 100_000 - 2_000]
    assert 65 * 10**9 == parse(parser, enc.v5_datagram(recs, EXPORT_S, 0, 100_000, 0)).reporting_lag_ns
    recs["first"] = 100_000 - 20_000
    assert 65 * 10**9 == parse(parser, enc.v5_datagram(recs, EXPORT_S + 60, 0, 100_000, 2)).reporting_lag_ns


@needs_softflowd
@pytest.mark.shared_data
@pytest.mark.parametrize("version", ["5", "9", "10"])
def test_softflowd_heard_from_its_later_exports_is_whole_from_the_first_heard(version: str, tmp_path: Path):
    """softflowd exporting a capture (its table kept small, so it exports as the capture's
    clock goes on): a collector that heard every datagram has all it watched; one that
    opened after its first exports (the datagrams from the fourth on) knows it missed them,
    from softflowd's own sequence numbers, and is whole from the fourth's export time."""
    datagrams = softflowd_datagrams(shared_file("iot23-honeypot-4-1/honeypot-4-1.pcap"), ["-v", version, "-m", "64"], tmp_path)
    assert len(datagrams) > 20
    assert NetflowParser().parse(datagrams, [EXPORTER] * len(datagrams)).watched_from_ns is None
    export_s = int.from_bytes(datagrams[3][4:8] if version == "10" else datagrams[3][8:12], "big")
    assert export_s * 10**9 == NetflowParser().parse(datagrams[3:], [EXPORTER] * (len(datagrams) - 3)).watched_from_ns


@needs_softflowd
@pytest.mark.shared_data
@pytest.mark.parametrize("version", ["9", "10"])
def test_softflowd_read_on_after_a_restart_with_the_templates_it_had(version: str, tmp_path: Path):
    """softflowd sends its templates every 16 datagrams. A collector restarted after its 20th
    with the templates the run before learnt (state_dict, through JSON) reads every record
    of the 21st on at once, the same records as the run that never stopped; one restarted
    without them holds the 21st to the 32nd until the templates come again."""
    datagrams = softflowd_datagrams(shared_file("iot23-honeypot-4-1/honeypot-4-1.pcap"), ["-v", version, "-m", "64"], tmp_path)
    before, after = datagrams[:20], datagrams[20:]
    running = NetflowParser()
    running.parse(before, [EXPORTER] * len(before))
    restarted = NetflowParser()
    assert restarted.load_state_dict(json.loads(json.dumps(running.state_dict()))) > 0
    fields = ("start_ns", "end_ns", "src_lo", "dst_lo", "sport", "dport", "proto", "packets", "bytes", "tcp_flags")
    parts = [restarted.parse([d], [EXPORTER]) for d in after[:12]]  # each as it comes
    assert all(len(b) for b in parts)
    rest = restarted.parse(after[12:], [EXPORTER] * len(after[12:]))
    own = running.parse(after, [EXPORTER] * len(after))
    read = FlowRecordBatch.concat([*parts, rest])
    for name in fields:
        assert getattr(own, name).tolist() == getattr(read, name).tolist(), name
    assert 0 == restarted.counters["flowsets_waiting_template"]
    fresh = NetflowParser()
    assert 0 == sum(len(fresh.parse([d], [EXPORTER])) for d in after[:12])
    assert 12 == fresh.counters["flowsets_waiting_template"]


def test_records_with_impossible_times_are_dropped_and_counted():
    """A record cannot end long after it was exported, nor start weeks before."""
    parser = NetflowParser(max_clock_skew_s=60, max_record_age_s=86400)
    late = v9_records(2, over={22: [100_000 - 4000, 100_000 + 3_600_000], 21: [100_000 - 1000, 100_000 + 3_700_000]})
    b = parse(parser, v9([enc.template_set(256, V9, ipfix=False), enc.data_set(256, late)]))
    assert 1 == len(b)
    assert 1 == parser.counters["records_bad_time"]


def test_exporters_outside_the_allowed_networks_are_refused():
    parser = NetflowParser(allowed_exporters=["10.0.0.0/8"])
    dg = v9([enc.template_set(256, V9, ipfix=False), enc.data_set(256, v9_records())])
    assert 0 == len(parser.parse([dg], ["192.0.2.1"]))
    assert 3 == len(parser.parse([dg], ["10.1.2.3"]))
    assert 1 == parser.counters["datagrams_refused"]


VALID = [
    v9([enc.template_set(256, V9, ipfix=False), enc.data_set(256, v9_records())], seq=1),
    v9([enc.options_template_set(257, [(1, 4)], [(34, 4)], ipfix=False),
        enc.data_set(257, enc.pack_records(((1, 4), (34, 4)), {34: np.array([8])}, 1))], seq=2),
    enc.ipfix_message([enc.template_set(300, enc.IPFIX_FIELDS, ipfix=True),
                       enc.data_set(300, enc.pack_records(enc.IPFIX_FIELDS, enc.synthetic_columns(5, EXPORT_S * 1000 - 700_000), 5))],
                      EXPORT_S, 0),
    enc.v5_datagram(np.zeros(3, enc.V5_DTYPE), EXPORT_S, 0, 1000, 0),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1500), st.sampled_from([b"", b"\x00\x05", b"\x00\x09", b"\x00\x0a"]))
def test_random_bytes_are_counted_never_raised(data: bytes, version: bytes):
    """Fuzz: any datagram (random, or random after a valid version number) is parsed or
    counted as malformed; the parser never raises."""
    parser = NetflowParser(log_interval_s=3600)
    b = parser.parse([version + data], [EXPORTER])
    assert 1 == parser.counters["datagrams"]
    assert len(b) >= 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(VALID))), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
       st.integers(0, 2000))
def test_damaged_datagrams_are_counted_never_raised(which: int, flips: list[tuple[int, int]], cut: int):
    """Fuzz: valid datagrams with bytes changed and tails cut, to a parser that knows the
    templates (so damaged data sets, not only headers, are exercised)."""
    parser = NetflowParser(log_interval_s=3600)
    parser.parse(VALID, [EXPORTER] * len(VALID))
    data = bytearray(VALID[which])
    for pos, value in flips:
        data[pos % len(data)] = value
    b = parser.parse([bytes(data[: max(cut, 1)])], [EXPORTER])
    assert len(b) >= 0
    assert np.all(b.end_ns >= b.start_ns)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([1, 2, 4, 6, 7, 8, 11, 12, 21, 22, 27, 28, 32, 34, 48, 82, 152, 153, 156, 160, 302, 305, 306]),
                          st.sampled_from([1, 2, 3, 4, 5, 7, 8, 16, 65535]), st.sampled_from([0, 0, 29305, 9])),
                min_size=1, max_size=12),
       st.booleans(), st.booleans(), st.binary(min_size=0, max_size=400))
# found by this test in CI: an options record's systemInitTimeMilliseconds of 2**63 or more
# (no int64 holds it) raised OverflowError
@example(fields=[(160, 8, 0)], ipfix=True, options=True, data=b"\x80\x00\x00\x00\x00")
def test_any_template_with_any_data_is_read_or_counted(fields, ipfix: bool, options: bool, data: bytes):
    """Fuzz: arbitrary templates (odd lengths, variable-length fields, reverse elements,
    options) followed by arbitrary data never make the parser raise."""
    parser = NetflowParser(log_interval_s=3600)
    if options:
        tmpl = enc.options_template_set(400, scope=[f[:2] for f in fields[:1]], options=[f[:2] for f in fields[1:]], ipfix=ipfix)
    else:
        tmpl = enc.template_set(400, fields if ipfix else [f[:2] for f in fields], ipfix=ipfix)
    sets = [tmpl, enc.data_set(400, data)]
    msg = enc.ipfix_message(sets, EXPORT_S, 0) if ipfix else v9(sets)
    b = parser.parse([msg, msg], [EXPORTER, EXPORTER])
    assert np.all(b.end_ns >= b.start_ns)


def test_collector_receives_over_udp(tmp_path: Path):
    """A real socket on a free port: datagrams in, batches out, the sender as exporter."""
    with NetflowCollector("127.0.0.1", 0, poll_s=0.05) as coll:
        got: list[FlowRecordBatch] = []
        thread = threading.Thread(target=lambda: got.extend(coll))
        thread.start()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(v9([enc.template_set(256, V9, ipfix=False), enc.data_set(256, v9_records())]), coll.address)
                s.sendto(b"\x00\x09garbage", coll.address)
            deadline = time.monotonic() + 5
            while (sum(len(b) for b in got) < 3 or len(got[-1])) and time.monotonic() < deadline:
                time.sleep(0.02)  # until the records came and then an idle batch
        finally:
            coll.stop = True
            thread.join(5)
    batch = FlowRecordBatch.concat(got)
    assert 3 == len(batch)
    assert 1 == batch.malformed
    assert "127.0.0.1" == next(iter(batch.exporters.values())).address
    assert any(len(b) == 0 for b in got)  # idle batches keep the daemon's clock


def test_collector_bind_failure_is_a_clear_error():
    with pytest.raises(CaptureError, match="cannot bind UDP 192.0.2.123"):
        NetflowCollector("192.0.2.123", 0)


# --------------------------------------------------------------------------------------
# softflowd: a real exporter reading real captures, compared with netad's packet path.
#
# softflowd tracks flows bidirectionally and exports each direction as its own record (v5,
# v9, IPFIX; with -b, IPFIX biflows, which the collector splits again). Reading a file
# (-r), softflowd 1.1.0 expires flows only at end of file, when max_flows is exceeded, or
# when a packet comes after the flow's idle timeout (checked in packet time). With every
# timeout set to a week and max_flows above the flow count, its flows are exactly the
# capture's 5-tuples: one record per direction, all packets. That is what these tests
# compare like with like:
# - records == the capture's directional 5-tuples; packets per record: exact;
# - bytes per record: softflowd counts each frame's length past the Ethernet header, so a
#   short frame's padding (to the 60-byte minimum) and any trailer are included; netad
#   counts IP lengths. Asserted: softflowd's bytes == the frames' link-layer payload, and
#   >= the IP bytes netad counts, per record;
# - bidirectional flows == FlowTable(timeouts off).flows_created, up to the flows that
#   FlowTable alone splits: a TCP 5-tuple reused after FIN/RST (a new SYN, or packets after
#   the 5 s linger). The bound is computed from the capture (0 extra here, in fact);
# - times: v5 has ms of uptime and a ns clock (1 ms); softflowd's IPFIX sends ms of uptime
#   plus the ms its clock started, both truncated (2 ms); v9's header clock is whole
#   seconds, so v9 times may be up to 1 s early.
# --------------------------------------------------------------------------------------

NO_TIMEOUTS = ["-t", "tcp=1w", "-t", "udp=1w", "-t", "icmp=1w", "-t", "general=1w", "-t", "tcp.rst=1w",
               "-t", "tcp.fin=1w", "-t", "maxlife=0", "-m", "1000000", "-T", "full"]


def softflowd_export(capture: Path, args: list[str], tmp_path: Path) -> tuple[FlowRecordBatch, str, NetflowCollector]:
    """softflowd reads `capture` (-a: its clock follows the capture) and exports to a
    collector on a free loopback port; returns what the collector got and softflowd's report."""
    coll = NetflowCollector("127.0.0.1", 0, buffer_mb=16, poll_s=0.05)
    got: list[FlowRecordBatch] = []
    thread = threading.Thread(target=lambda: got.extend(coll))
    thread.start()
    try:
        report, records = run_softflowd(capture, coll.address[1], args, tmp_path)
        deadline = time.monotonic() + 10
        while sum(len(b) for b in got) < records and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        coll.stop = True
        thread.join(5)
    return FlowRecordBatch.concat(got), report, coll


def link_payload_lengths(path: Path, batch) -> np.ndarray:
    """Each IP packet's frame length past the Ethernet header (IP packet + padding/trailer)."""
    raw = read_records(path)
    assert raw.linktype == 1, "these tests compare Ethernet captures"
    ethertype = raw.data[raw.offsets + 12].astype(np.int64) << 8 | raw.data[raw.offsets + 13]
    ip_frames = np.isin(ethertype, (0x0800, 0x86DD))
    assert int(ip_frames.sum()) == len(batch), "an IP frame the packet path did not parse (VLAN tags?)"
    return raw.origlens[ip_frames] - 14


def directional_totals(batch, link_bytes: np.ndarray) -> dict[tuple, list]:
    """Per directional 5-tuple: [packets, IP bytes, link-layer payload bytes, first ns,
    last ns]; the times are those of the whole (bidirectional) flow, as softflowd reports
    them in both of its records."""
    out: dict[tuple, list] = {}
    span: dict[tuple, list] = {}
    keys = zip(batch.src_hi.tolist(), batch.src_lo.tolist(), batch.dst_hi.tolist(), batch.dst_lo.tolist(),
               batch.sport.tolist(), batch.dport.tolist(), batch.proto.tolist(), strict=True)
    for key, ln, link, ts in zip(keys, batch.ip_len.tolist(), link_bytes.tolist(), batch.ts_ns.tolist(), strict=True):
        t = out.setdefault(key, [0, 0, 0])
        t[0] += 1
        t[1] += ln
        t[2] += link
        both = min(key, _reverse(key))
        s = span.setdefault(both, [ts, ts])
        s[0], s[1] = min(s[0], ts), max(s[1], ts)
    return {key: t + span[min(key, _reverse(key))] for key, t in out.items()}


def _reverse(key: tuple) -> tuple:
    return (key[2], key[3], key[0], key[1], key[5], key[4], key[6])


def reopen_bound(batch) -> int:
    """Packets that follow a FIN or RST on their (direction-free) TCP 5-tuple: the most
    flows FlowTable can split off where an exporter without timeouts does not."""
    tcp = np.flatnonzero(batch.proto == 6)
    a = np.minimum(batch.src_lo[tcp], batch.dst_lo[tcp])
    b = np.maximum(batch.src_lo[tcp], batch.dst_lo[tcp])
    ports = np.minimum(batch.sport[tcp], batch.dport[tcp]).astype(np.uint64) << np.uint64(16) | np.maximum(batch.sport[tcp], batch.dport[tcp])
    seen: set[tuple] = set()
    count = 0
    for key, flags in zip(zip(a.tolist(), b.tolist(), ports.tolist(), strict=True), batch.tcp_flags[tcp].tolist(), strict=True):
        if key in seen:
            count += 1
        if flags & 0x05:
            seen.add(key)
    return count


CASES = [
    ("iot23-honeypot-4-1/honeypot-4-1.pcap", ["-v", "5"], 1_000_000),
    ("iot23-honeypot-4-1/honeypot-4-1.pcap", ["-v", "9"], 1_000_000_000),
    ("iot23-honeypot-4-1/honeypot-4-1.pcap", ["-v", "10"], 2_000_000),
    ("iot23-honeypot-4-1/honeypot-4-1.pcap", ["-v", "10", "-b"], 2_000_000),
    ("westermo/right.pcap", ["-v", "9"], 1_000_000_000),
    ("westermo/right.pcap", ["-v", "10"], 2_000_000),
]


@needs_softflowd
@pytest.mark.shared_data
@pytest.mark.parametrize(("capture", "version", "time_tolerance_ns"), CASES, ids=[f"{c.split('/')[0]}-{'-'.join(v)}" for c, v, _ in CASES])
def test_softflowd_export_matches_the_packet_path(capture: str, version: list[str], time_tolerance_ns: int, tmp_path: Path):
    path = shared_file(capture)
    got, report, coll = softflowd_export(path, version + NO_TIMEOUTS, tmp_path)
    flows, forced = map(int, re.search(r"Flows expired: (\d+) \((\d+) forced\)", report).groups())
    records = int(re.search(r"Flows exported: \d+ \((\d+) records\)", report).group(1))
    assert 0 == forced  # no flow was cut short for want of table space
    batch = read_capture(path)
    ref = directional_totals(batch, link_payload_lengths(path, batch))
    assert len(ref) == len(got)
    assert (flows if "-b" in version else len(ref)) == records  # biflows: one record per flow, split by the collector
    assert 0 == coll.stats()["datagrams_malformed"] and 0 == coll.stats()["kernel_drops"]
    assert got.watched_from_ns is None  # its first export heard was its first: nothing it watched was lost
    seen = set()
    keys = zip(got.src_hi.tolist(), got.src_lo.tolist(), got.dst_hi.tolist(), got.dst_lo.tolist(), got.sport.tolist(),
               got.dport.tolist(), got.proto.tolist(), strict=True)
    columns = zip(keys, got.packets.tolist(), got.bytes.tolist(), got.start_ns.tolist(), got.end_ns.tolist(), strict=True)
    for key, packets, nbytes, start, end in columns:
        assert key not in seen
        seen.add(key)
        r = ref[key]
        assert r[0] == packets, key
        assert r[1] <= nbytes == r[2], key  # softflowd counts IP bytes plus Ethernet padding and trailers
        assert -time_tolerance_ns <= start - r[3] <= 1_000_000, key
        assert -time_tolerance_ns <= end - r[4] <= 1_000_000, key
    assert sum(r[0] for r in ref.values()) == int(got.packets.sum()) == len(batch)
    table = FlowTable(tcp_idle_timeout_s=1e9, udp_idle_timeout_s=1e9, other_idle_timeout_s=1e9, active_timeout_s=1e9)
    table.push(batch)
    assert 0 <= table.flows_created - flows <= reopen_bound(batch)


@needs_softflowd
@pytest.mark.shared_data
@pytest.mark.parametrize("version", ["9", "10"])
def test_softflowd_sampling_is_applied(version: str, tmp_path: Path):
    """softflowd -s 4 samples 1 packet in 4 and announces it in an options record (v9
    SAMPLING_INTERVAL, IPFIX samplingPacketInterval/Space): every record says 4 and its
    counters are 4 x what softflowd sampled (its own report)."""
    got, report, _ = softflowd_export(shared_file("iot23-honeypot-4-1/honeypot-4-1.pcap"), ["-v", version, "-s", "4"] + NO_TIMEOUTS, tmp_path)
    sampled = int(re.search(r"Packets processed: (\d+)", report).group(1))
    assert len(got) > 100
    assert {4} == set(got.sampling.tolist())
    assert 4 * sampled == int(got.packets.sum())
    assert np.all(got.packets % 4 == 0)


def test_bench_flows_runs_end_to_end():
    """`netad bench flows` with a tiny count: every source reports every record (no rates
    are asserted: benchmarks print figures, tests do not time things)."""
    result = CliRunner().invoke(flows, ["--records", "10000", "--repeats", "1", "--json"], catch_exceptions=False)
    assert 0 == result.exit_code, result.output
    r = json.loads(result.output)
    assert 10_000 == r["parse_v9"]["records"] == r["parse_ipfix"]["records"] == r["udp_ipfix"]["offered"]
    assert r["zeek_tsv"]["records"] == r["zeek_json"]["records"] == r["zeek_tsv_dns"]["records"] > 5_000  # one or two per connection
    assert 2 * (5_000 // 4) == r["zeek_tsv_dns"]["answers"] == r["zeek_tsv_dns"]["answers_read"]  # the dns.log read whole
    # two parts more of each of 500 connections, one record each at least
    assert 1_000 == r["zeek_tsv_long"]["long_lines"] and r["zeek_tsv_long"]["records"] >= r["zeek_tsv"]["records"] + 1_000
    assert r["udp_ipfix"]["records"] > 0
    assert all(r[k]["records_per_s"] > 0 for k in ("parse_v9", "parse_ipfix", "zeek_tsv", "zeek_json", "aggregate_ipfix_records"))
