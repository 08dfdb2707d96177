"""Zeek's dns.log beside a conn.log: its answers read as the capture reads them off the wire
(TSV and JSON, bad lines counted), handed on with the conn.log's records in step with their
time or as Zeek appends them, and the flow windows' peer history naming peers by them, on
the honeypot's real conn.log and the DNS answers of the same capture."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.capture.flowrecords.zeeklog import DNS_FIELDS, DnsLogParser, ZeekConnLog, dns_log_beside
from detector.capture.names import MAX_ANSWERS, registered
from detector.capture.schemas import FLOW_SCHEMA
from detector.capture.windows.flow import FlowWindowAggregator
from detector.contracts import DnsAnswers, pair_to_addr
from tests.capture.flowrecords.test_zeeklog import HEADER, IOT23, following, line, wait_for
from tests.conftest import shared_file

DNS_HEADER = ("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tdns\n"
              "#open\t2024-01-01-00-00-00\n#fields\t" + "\t".join(DNS_FIELDS) + "\n#types\t"
              + "\t".join(["string"] * len(DNS_FIELDS)) + "\n").encode()
NEW_PEERS = FLOW_SCHEMA.features.index("new_peers")


def dns_line(ts: float, client: str, query: str, answers: list[str] | None, rcode: str = "0", port: int = 53,
             qtype: str = "A") -> bytes:
    """One dns.log line as Zeek writes it (answers: its vector of strings, or unset)."""
    fields = [f"{ts:.6f}", "Cq1", client, "40001", "192.0.2.53", str(port), "udp", "4711", "0.012", query, "1",
              "C_INTERNET", "1" if qtype == "A" else "28", qtype, rcode, "NOERROR" if rcode == "0" else "NXDOMAIN",
              "F", "F", "T", "T", "0", ",".join(answers) if answers else "-", "-", "F"]
    return ("\t".join(fields) + "\n").encode()


def dns_json(ts: float, client: str, query: str, answers: list[str] | None, rcode: int | None = 0, port: int = 53,
             nested: bool = False) -> bytes:
    """The same, as Zeek's JSON writer does it (unset fields left out)."""
    obj: dict = {"ts": ts, "uid": "Cq1", "proto": "udp", "query": query}
    obj.update({"id": {"orig_h": client, "orig_p": 40001, "resp_h": "192.0.2.53", "resp_p": port}} if nested else
               {"id.orig_h": client, "id.orig_p": 40001, "id.resp_h": "192.0.2.53", "id.resp_p": port})
    if rcode is not None:
        obj["rcode"] = rcode
    if answers:
        obj["answers"] = answers
    return (json.dumps(obj) + "\n").encode()


def rows(a: DnsAnswers) -> list[tuple[float, str, str, int]]:
    return [(t / 1e9, pair_to_addr(ch, cl), pair_to_addr(ah, al), d) for t, ch, cl, ah, al, d
            in zip(*(c.tolist() for c in a.as_tuple()[:6]), strict=True)]


# the same responses in both formats: (ts, client, query, answers, rcode, port)
RESPONSES = [
    (10.5, "10.0.0.5", "www.ecdinterface.philips.com", ["lb.eu-west-1.elb.amazonaws.com", "52.51.133.171", "52.212.88.21"], 0, 53),
    (11.0, "10.0.0.5", "dcp.dc1.philips.com", ["2001:db8::5"], 0, 53),  # AAAA
    (12.0, "10.0.0.6", "nope.example.org", None, 3, 53),  # NXDOMAIN: no answers
    (13.0, "10.0.0.6", "slow.example.org", None, None, 53),  # no reply: rcode unset
    (14.0, "10.0.0.6", "printer.local", ["10.0.0.9"], 0, 5353),  # mDNS: not a resolver's answer
    (15.0, "10.0.0.6", "txt.example.org", ["TXT 18 v=spf1 -all"], 0, 53),  # no address among them
    (16.0, "fe80::1", "d111.cloudfront.net", [f"198.51.100.{i}" for i in range(1, 11)], 0, 53),  # more than 8
]
EXPECTED = [
    (10.5, "10.0.0.5", "52.51.133.171", registered("philips.com")[0]),
    (10.5, "10.0.0.5", "52.212.88.21", registered("philips.com")[0]),
    (11.0, "10.0.0.5", "2001:db8::5", registered("philips.com")[0]),
    *[(16.0, "fe80::1", f"198.51.100.{i}", registered("d111.cloudfront.net")[0]) for i in range(1, MAX_ANSWERS + 1)],
]


def test_the_answers_are_the_addresses_of_successful_resolver_responses():
    """A and AAAA addresses among `answers` (not the CNAME names or TXT texts), of responses
    with rcode 0 from a resolver (not mDNS), at most MAX_ANSWERS each, keyed by the
    registered domain of the name asked (a private suffix's customer on its own)."""
    parser = DnsLogParser()
    text = DNS_HEADER + b"".join(dns_line(t, c, q, a, "-" if r is None else str(r), p) for t, c, q, a, r, p in RESPONSES)
    got = parser.feed(text)
    assert EXPECTED == rows(got)
    assert (len(RESPONSES), 0) == (parser.lines, parser.malformed)
    assert registered("philips.com")[0] != registered("d111.cloudfront.net")[0] != registered("d222.cloudfront.net")[0]


@pytest.mark.parametrize("nested", [False, True])
def test_json_lines_give_what_the_tsv_gives(nested: bool):
    parser = DnsLogParser()
    got = parser.feed(b"".join(dns_json(t, c, q, a, r, p, nested) for t, c, q, a, r, p in RESPONSES))
    assert EXPECTED == rows(got) and 0 == parser.malformed


def test_bad_lines_are_counted_and_the_good_ones_kept():
    parser = DnsLogParser()
    good = dns_line(20.0, "10.0.0.5", "a.example.com", ["192.0.2.1"])
    bad = [b"1.0\tonly\tthree\n", dns_line(21.0, "not-an-address", "a.example.com", ["192.0.2.2"]),
           dns_line(22.0, "10.0.0.5", "a.example.com", ["192.0.2.3"]).replace(b"22.000000", b"soon", 1),
           dns_line(1e300, "10.0.0.5", "a.example.com", ["192.0.2.4"])]
    got = parser.feed(DNS_HEADER + bad[0] + good + b"".join(bad[1:]))
    assert [(20.0, "10.0.0.5", "192.0.2.1", registered("example.com")[0])] == rows(got)
    assert (5, 4) == (parser.lines, parser.malformed)
    json_parser = DnsLogParser()
    got = json_parser.feed(dns_json(20.0, "10.0.0.5", "a.example.com", ["192.0.2.1"]) + b"{not json\n[1, 2]\n"
                           + dns_json(23.0, "10.0.0.5", "a.example.com", ["192.0.2.5", "999.1.2.3"]))
    assert ["192.0.2.1", "192.0.2.5"] == [r[2] for r in rows(got)] and 2 == json_parser.malformed


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(
    st.lists(st.sampled_from(["-", "", "(empty)", "0", "3", "1e400", "nan", "53", "5353", "10.0.0.1", "::1", "a.example.com",
                              "x,10.0.0.2,::ffff:1.2.3.4", "TXT 5 hello", "999.1.1.1", ",,,", "é", "{}"]),
             min_size=0, max_size=26).map("\t".join),
    st.dictionaries(st.sampled_from(["ts", "id.orig_h", "id", "id.resp_p", "query", "rcode", "answers"]),
                    st.one_of(st.none(), st.integers(-5, 10**20), st.floats(), st.text(max_size=8),
                              st.lists(st.text(max_size=8), max_size=3), st.dictionaries(st.text(max_size=3), st.integers()))
                    ).map(json.dumps)), max_size=8),
       st.booleans())
def test_any_dns_line_is_read_or_counted(lines: list[str], with_header: bool):
    """Fuzz: odd values in every field, TSV or JSON, after a header or none: answers (each an
    address, at most MAX_ANSWERS a line) or malformed counts, never an exception."""
    parser = DnsLogParser()
    got = parser.feed((DNS_HEADER if with_header else b"") + "\n".join(lines).encode("utf-8") + b"\n")
    assert len(got) <= MAX_ANSWERS * len(lines)
    assert parser.malformed <= parser.lines


def test_a_rotated_hour_s_gzip_pair_is_read_together(tmp_path: Path):
    """Zeek's archive: conn.<hours>.log.gz beside dns.<hours>.log.gz, read whole."""
    conn, times = _conn_and_dns(tmp_path, n=20)
    hours = "00:00:00-01:00:00"
    (tmp_path / f"conn.{hours}.log.gz").write_bytes(gzip.compress(conn.read_bytes()))
    (tmp_path / f"dns.{hours}.log.gz").write_bytes(gzip.compress((tmp_path / "dns.log").read_bytes()))
    log = ZeekConnLog(tmp_path / f"conn.{hours}.log.gz")
    assert times == [t / 1e9 for b in log for t in b.answers.ts_ns.tolist()]
    assert log.position() is None  # a gzip file is read whole, never resumed


def test_the_dns_log_is_the_one_zeek_writes_beside_the_conn_log():
    assert Path("/logs/current/dns.log") == dns_log_beside(Path("/logs/current/conn.log"))
    assert (Path("/logs/2024-01-01/dns.00:00:00-01:00:00.log.gz")
            == dns_log_beside(Path("/logs/2024-01-01/conn.00:00:00-01:00:00.log.gz")))


def _conn_and_dns(tmp_path: Path, n: int = 200) -> tuple[Path, list[float]]:
    """A conn.log of n connections 10 s apart and a dns.log answering each 1 s before."""
    conn = tmp_path / "conn.log"
    conn.write_bytes(HEADER + b"".join(line(ts=1000 + 10 * i, resp=f"198.51.{i // 250}.{i % 250}") for i in range(n)))
    times = [999 + 10 * i for i in range(n)]
    (tmp_path / "dns.log").write_bytes(DNS_HEADER + b"".join(
        dns_line(t, "10.0.0.5", f"n{i}.example.com", [f"198.51.{i // 250}.{i % 250}"]) for i, t in enumerate(times)))
    return conn, times


def test_a_replayed_conn_log_carries_the_dns_log_s_answers_in_step_with_its_records(tmp_path: Path):
    """Each answer is handed on once, with the batch of the records of its time (at most one
    read of the DNS log ahead), not all with the first batch; none without a DNS log."""
    conn, times = _conn_and_dns(tmp_path)
    log = ZeekConnLog(conn, batch_records=40, read_bytes=2048)
    batches = list(log)
    assert len(batches) > 5
    got = [t / 1e9 for b in batches for t in b.answers.ts_ns.tolist()]
    assert times == got
    assert log.stats()["dns_answers"] == len(times) and log.stats()["dns_malformed"] == 0
    one_read_s = 10 * (2048 // len(dns_line(999, "10.0.0.5", "n0.example.com", ["198.51.0.0"])) + 1)
    for b in batches:  # each batch's answers end at most one read of the DNS log after its records
        if len(b.answers):
            assert b.answers.ts_ns.max() <= b.end_ns.max() + one_read_s * 10**9
    assert 0 < len(batches[0].answers) < len(times)
    assert not any(len(b.answers) for b in ZeekConnLog(conn, dns_log=None))
    (tmp_path / "dns.log").unlink()
    assert not any(len(b.answers) for b in ZeekConnLog(conn))


def test_a_followed_dns_log_that_appears_late_is_read_and_a_restart_reads_on_from_its_position(tmp_path: Path):
    conn = tmp_path / "conn.log"
    conn.write_bytes(HEADER + line(ts=1)[:10])
    dns = tmp_path / "dns.log"
    log = ZeekConnLog(conn, follow=True, poll_s=0.05, from_end=True)  # from_end: a dns.log that comes later is all news
    with following(log) as got:
        with open(conn, "ab") as f:
            f.write(line(ts=1)[10:] + line(ts=1.5))
        wait_for(lambda: sum(len(b) for b in got) == 2)  # the half line it started at is skipped
        dns.write_bytes(DNS_HEADER + dns_line(2, "10.0.0.5", "a.example.com", ["192.0.2.1"]))  # Zeek's first look-up
        wait_for(lambda: sum(len(b.answers) for b in got) == 1)
        with open(dns, "ab") as f:
            f.write(dns_line(3, "10.0.0.5", "b.example.com", ["192.0.2.2"]))
        wait_for(lambda: sum(len(b.answers) for b in got) == 2)
    at = log.position()
    assert dns.stat().st_size == at["dns"]["offset"]
    with open(dns, "ab") as f:  # what Zeek writes while netad is down
        f.write(dns_line(4, "10.0.0.5", "c.example.com", ["192.0.2.3"]))
    with following(ZeekConnLog(conn, follow=True, poll_s=0.05, from_end=True, resume_at=at)) as again:
        wait_for(lambda: sum(len(b.answers) for b in again) >= 1)
        time.sleep(0.2)  # and no more come
    assert ["192.0.2.3"] == [r[2] for b in again for r in rows(b.answers)]


def _honeypot_dns_log(path: Path) -> int:
    """The honeypot capture's DNS responses written as Zeek's dns.log (scapy reads them)."""
    from scapy.all import DNS, IP, UDP, PcapReader

    n = 0
    with open(path, "wb") as out, PcapReader(str(shared_file("iot23-honeypot-4-1/honeypot-4-1.pcap"))) as pcap:
        out.write(DNS_HEADER)
        for p in pcap:
            if IP not in p or UDP not in p or p[UDP].sport != 53 or DNS not in p or not p[DNS].qr or not p[DNS].qd:
                continue
            answers = [rr.rdata.decode() if isinstance(rr.rdata, bytes) else str(rr.rdata)
                       for rr in (p[DNS].an or []) if rr.type in (1, 5, 28)]
            n += sum(1 for rr in (p[DNS].an or []) if rr.type in (1, 28))
            out.write(dns_line(float(p.time), p[IP].dst, p[DNS].qd.qname.decode().rstrip("."),
                               [a.rstrip(".") for a in answers], str(p[DNS].rcode)))
    return n


@pytest.mark.slow
@pytest.mark.shared_data
def test_the_honeypot_s_flow_windows_name_its_peers_by_the_dns_log(tmp_path: Path):
    """IoT-23's real conn.log with the same capture's DNS answers as a dns.log beside it: the
    266 answers the packet path reads, and the bridge's new peers of the day fall from 8 to
    2. At 08:02 on the second day it looked up a new name under philips.com, a domain it
    talks to every hour, and opened sessions to its two new AWS addresses: by address three
    new peers in that window, by name none, and the evidence names both philips.com's."""
    conn = tmp_path / "conn.log"
    conn.write_bytes(shared_file(IOT23).read_bytes())
    expected_answers = _honeypot_dns_log(tmp_path / "dns.log")
    assert 266 == expected_answers

    named_at_0802: dict[str, str | None] = {}

    def new_peers(**kw) -> tuple[dict[str, float], ZeekConnLog]:
        agg = FlowWindowAggregator(home_net=["192.168.1.0/24"], bin_s=10, bins=6, lateness_s=600)
        log = ZeekConnLog(conn, batch_records=128, **kw)
        windows = [w for b in log for w in agg.push(b)] + agg.flush()
        per_window: dict[str, float] = {}
        for w in windows:
            if "192.168.1.132" in w.entities:
                n = float(w.features[w.entities.index("192.168.1.132")][:, NEW_PEERS].sum())
                stamp = time.strftime("%d %H:%M", time.gmtime(w.window_start_ns / 1e9))
                per_window[stamp] = per_window.get(stamp, 0) + n
                if stamp == "26 08:02":
                    named_at_0802.update({p["ip"]: p.get("domain") for p in w.evidence["192.168.1.132"].top_peers})
        return per_window, log

    by_address, _ = new_peers(dns_log=None)
    assert not any(named_at_0802.values())
    by_name, log = new_peers()
    assert {"52.51.133.171": "philips.com", "52.212.88.21": "philips.com"}.items() <= named_at_0802.items()  # the evidence
    assert expected_answers == log.stats()["dns_answers"]
    assert (8, 2) == (sum(by_address.values()), sum(by_name.values()))
    assert (3, 0) == (by_address["26 08:02"], by_name["26 08:02"])
    assert {"26 09:48", "26 09:50"} == {k for k, v in by_name.items() if v}  # peers no answer named
