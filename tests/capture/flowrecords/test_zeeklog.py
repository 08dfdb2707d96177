"""The Zeek conn.log reader: TSV and JSON, flags from history, bad lines counted, a live log
followed through appends, rotation and truncation; and IoT-23's real conn.log read, trained
on and scored end to end under the flow schema."""

from __future__ import annotations

import gzip
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.capture.flowrecords.zeeklog import DEFAULT_FIELDS, ZeekConnLog
from detector.capture.windows import FLOW_SCHEMA, PACKET_SCHEMA
from detector.capture.windows.flow import FlowWindowAggregator
from detector.contracts import FlowRecordBatch, addr_to_pair, pair_to_addr
from detector.errors import CaptureError, ModelError
from tests.capture.flowrecords._zeek_long import conn_log_rows
from tests.conftest import shared_file

HEADER = ("#separator \\x09\n#set_separator\t,\n#empty_field\t(empty)\n#unset_field\t-\n#path\tconn\n#open\t2024-01-01-00-00-00\n"
          "#fields\t" + "\t".join(DEFAULT_FIELDS) + "\n#types\t" + "\t".join(["string"] * len(DEFAULT_FIELDS)) + "\n").encode()
IOT23 = "iot23-honeypot-4-1/conn.log.labeled"


def line(ts: float = 1700000000.5, orig: str = "10.0.0.5", resp: str = "192.0.2.9", oport: int = 40000, rport: int = 443,
         proto: str = "tcp", duration: str = "2.000000", history: str = "ShADadFf", opkts: int = 6, obytes: int = 400,
         rpkts: int = 5, rbytes: int = 3000) -> bytes:
    fields = [f"{ts:.6f}", "Cabc", orig, str(oport), resp, str(rport), proto, "-", duration, "0", "0", "SF", "-", "-", "0",
              history, str(opkts), str(obytes), str(rpkts), str(rbytes), "-"]
    return ("\t".join(fields) + "\n").encode()


def read_all(path: Path, **kw) -> tuple[FlowRecordBatch, ZeekConnLog]:
    log = ZeekConnLog(path, **kw)
    batches = list(log)
    return FlowRecordBatch.concat(batches), log


def addrs(hi: np.ndarray, lo: np.ndarray) -> list[str]:
    return [pair_to_addr(h, lo_) for h, lo_ in zip(hi, lo, strict=True)]


def test_a_connection_becomes_one_record_per_direction(tmp_path: Path):
    path = tmp_path / "conn.log"
    path.write_bytes(HEADER + line() + line(ts=1700000001, history="S", rpkts=0, rbytes=0, duration="-", opkts=1, obytes=60))
    b, _ = read_all(path)
    assert 3 == len(b)  # the unanswered attempt has no reverse record
    assert ["10.0.0.5", "192.0.2.9", "10.0.0.5"] == addrs(b.src_hi, b.src_lo)
    assert ["192.0.2.9", "10.0.0.5", "192.0.2.9"] == addrs(b.dst_hi, b.dst_lo)
    assert [40000, 443, 40000] == b.sport.tolist()
    assert [6, 5, 1] == b.packets.tolist()
    assert [400, 3000, 60] == b.bytes.tolist()
    assert [1700000000_500000000, 1700000000_500000000, 1700000001_000000000] == b.start_ns.tolist()
    assert [1700000002_500000000, 1700000002_500000000, 1700000001_000000000] == b.end_ns.tolist()
    assert [0x13, 0x13, 0x02] == b.tcp_flags.tolist()  # S,A,F by the originator / h,a,f back; "S": SYN only
    assert [str(path)] == [e.name for e in b.exporters.values()]


@pytest.mark.parametrize(("history", "orig", "resp"), [
    ("S", 0x02, 0), ("Sr", 0x02, 0x04), ("ShR", 0x06, 0x12), ("ShAdDaFf", 0x13, 0x13), ("Dd", 0, 0), ("^hA", 0x10, 0x12),
])
def test_history_gives_each_directions_tcp_flags(tmp_path: Path, history: str, orig: int, resp: int):
    path = tmp_path / "conn.log"
    path.write_bytes(HEADER + line(history=history, rpkts=1))
    b, _ = read_all(path)
    assert [orig, resp] == b.tcp_flags.tolist()


def test_udp_and_icmp(tmp_path: Path):
    """No flags outside TCP; ICMP's type is the record's sport (its counterpart for the reply)."""
    path = tmp_path / "conn.log"
    path.write_bytes(HEADER + line(proto="udp", history="Dd", rport=53) + line(proto="icmp", oport=8, rport=0, history="-")
                     + line(proto="icmp", orig="2001:db8::1", resp="2001:db8::2", oport=128, rport=129, rpkts=0, rbytes=0))
    b, _ = read_all(path)
    assert [17, 17, 1, 1, 58] == b.proto.tolist()
    assert [0] * 5 == b.tcp_flags.tolist()
    assert [40000, 53, 8, 0, 128] == b.sport.tolist()
    assert "2001:db8::1" == pair_to_addr(b.src_hi[4], b.src_lo[4])


def test_bad_lines_are_counted_and_the_rest_kept(tmp_path: Path):
    path = tmp_path / "conn.log"
    path.write_bytes(HEADER + line() + b"too\tfew\tfields\n" + line(orig="10.0.0.999") + line(opkts="x") + line(ts=1700000009))  # type: ignore[arg-type]
    b, log = read_all(path)
    assert 4 == len(b)
    assert 3 == log.stats()["malformed"]
    assert 5 == log.stats()["lines"]


def test_a_file_without_header_and_without_final_newline(tmp_path: Path):
    """Zeek with include_meta=F writes no header: the default conn.log columns are assumed."""
    path = tmp_path / "conn.log"
    path.write_bytes(line() + line(ts=1700000005).rstrip(b"\n"))
    b, _ = read_all(path)
    assert 4 == len(b)


def test_gzip_logs_are_read(tmp_path: Path):
    path = tmp_path / "conn.log.gz"
    path.write_bytes(gzip.compress(HEADER + line() * 3))
    assert 6 == len(read_all(path)[0])


def test_a_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(CaptureError, match="cannot open the Zeek log"):
        ZeekConnLog(tmp_path / "nope.log")


@pytest.mark.parametrize("name, content", [
    ("c.pcap", b"\xd4\xc3\xb2\xa1" + bytes(20)),
    ("c.pcapng", b"\x0a\x0d\x0d\x0a" + bytes(20)),
    ("c.pcap.gz", gzip.compress(b"\xa1\xb2\xc3\xd4" + bytes(20), mtime=0)),
])
def test_a_capture_given_as_a_zeek_log_is_named_as_one(tmp_path: Path, name: str, content: bytes):
    """Read as text, a capture's lines were all malformed, and `netad train --conn-log` ended
    in "no windows to train on: is the capture empty or outside home_net?"."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CaptureError, match="a pcap or pcapng capture, not a Zeek log: give it with --pcap"):
        ZeekConnLog(path)


def plain_reading(path: Path) -> list[tuple]:
    """The slow, obvious twin: split each line, look fields up by name, two directions."""
    out = []
    for v in conn_log_rows(path):
        start = round(float(v["ts"]) * 1e6) * 1000
        end = start + round(float(0 if v["duration"] == "-" else v["duration"]) * 1e6) * 1000
        o, r = v["id.orig_h"], v["id.resp_h"]
        n = {k: int(0 if v[k] == "-" else v[k]) for k in ("orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes")}
        out.append((start, end, o, r, int(v["id.orig_p"]), int(v["id.resp_p"]), v["proto"], n["orig_pkts"], n["orig_ip_bytes"]))
        if n["resp_pkts"] or n["resp_ip_bytes"]:
            out.append((start, end, r, o, int(v["id.resp_p"]), int(v["id.orig_p"]), v["proto"], n["resp_pkts"], n["resp_ip_bytes"]))
    return out


def as_tuples(b: FlowRecordBatch) -> list[tuple]:
    names = {6: "tcp", 17: "udp", 1: "icmp"}
    return [(s, e, src, dst, sp, dp, names[p], pk, by) for s, e, src, dst, sp, dp, p, pk, by in zip(
        b.start_ns.tolist(), b.end_ns.tolist(), addrs(b.src_hi, b.src_lo), addrs(b.dst_hi, b.dst_lo), b.sport.tolist(),
        b.dport.tolist(), b.proto.tolist(), b.packets.tolist(), b.bytes.tolist(), strict=True)]


@pytest.mark.shared_data
def test_iot23_conn_log_matches_a_plain_reading():
    """IoT-23's conn.log (its label columns joined to the header with spaces) read by the
    vectorised reader equals a line-by-line reading of it, in order."""
    path = shared_file(IOT23)
    b, log = read_all(path, batch_records=100)
    assert plain_reading(path) == as_tuples(b)
    assert 452 == log.stats()["lines"]
    assert 0 == log.stats()["malformed"]


@pytest.mark.shared_data
def test_json_logs_give_the_same_records_as_tsv(tmp_path: Path):
    """The same log as Zeek's JSON writer (flat keys, epoch times) and with nested id and
    ISO 8601 times: the same records."""
    path = shared_file(IOT23)
    tsv, _ = read_all(path)
    flat, nested = tmp_path / "flat.log", tmp_path / "nested.log"
    with open(flat, "w") as f_flat, open(nested, "w") as f_nested:
        fields: list[str] = []
        for raw in path.read_text().splitlines():
            if raw.startswith("#fields"):
                fields = [n for f in raw.split("\t")[1:] for n in f.split()[:1]]
            if raw.startswith("#") or not raw:
                continue
            v = {k: x for k, x in zip(fields, raw.split("\t"), strict=True) if x != "-"}
            obj = {k: (float(x) if k in ("ts", "duration") else int(x) if x.isdigit() else x) for k, x in v.items()}
            f_flat.write(json.dumps(obj) + "\n")
            obj["id"] = {k[3:]: obj.pop(k) for k in list(obj) if k.startswith("id.")}
            obj["ts"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(obj["ts"])) + f".{round(obj['ts'] % 1 * 1e6):06d}Z"
            f_nested.write(json.dumps(obj) + "\n")
    assert as_tuples(tsv) == as_tuples(read_all(flat)[0])
    assert as_tuples(tsv) == as_tuples(read_all(nested)[0])


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@contextmanager
def following(log: ZeekConnLog) -> Iterator[list[FlowRecordBatch]]:
    """The batches a followed log hands on, gathered by a thread until the block ends."""
    got: list[FlowRecordBatch] = []
    thread = threading.Thread(target=lambda: got.extend(log))
    thread.start()
    try:
        yield got
    finally:
        log.stop = True
        thread.join(5)
    assert not thread.is_alive()


def test_follow_reads_appends_rotation_and_truncation(tmp_path: Path):
    """A live log: appended lines (even one written in two pieces), a rotation (the path
    names a new file: the old one is read to its end first), a truncation (the file got
    shorter: read again from the top); records dated past our clock dropped and counted;
    empty batches while idle."""
    path = tmp_path / "conn.log"
    path.write_bytes(HEADER + line(ts=1))
    log = ZeekConnLog(path, follow=True, poll_s=0.05)
    with following(log) as got:
        def starts() -> list[int]:
            return [int(s // 10**9) for b in got for s in b.start_ns[::2].tolist()]

        wait_for(lambda: [1] == starts())
        with open(path, "ab") as f:
            f.write(line(ts=2)[:20])
            f.flush()
            time.sleep(0.2)
            f.write(line(ts=2)[20:] + line(ts=3))
        wait_for(lambda: [1, 2, 3] == starts())
        with open(path, "ab") as f:
            f.write(line(ts=4))  # written to the old file just before it is rotated away
        path.rename(tmp_path / "conn.2024-01-01.log")
        path.write_bytes(HEADER + line(ts=5))
        wait_for(lambda: [1, 2, 3, 4, 5] == starts())
        assert 1 == log.rotations
        path.write_bytes(b"")
        wait_for(lambda: log.truncations == 1)
        with open(path, "ab") as f:
            f.write(HEADER + line(ts=6) + line(ts=time.time() + 86400 * 365))  # a corrupt time, a year ahead
        wait_for(lambda: [1, 2, 3, 4, 5, 6] == starts() and log.future_records == 2)
        wait_for(lambda: len(got[-1]) == 0)  # idle: empty batches keep the daemon's clock


def test_a_rotated_path_that_cannot_be_opened_yet_is_tried_again(tmp_path: Path):
    """The path names something else than the file being read (a rotation), and that cannot
    be opened yet: here a directory, as a file rotated away again before it could be opened,
    or one made without read permission, would be. The CaptureError that raised out of the
    reading ended the daemon; now it is said, the old file is kept at its end, and the new
    one is read once it can be."""
    import structlog.testing

    path = tmp_path / "conn.log"
    path.write_bytes(HEADER + line(ts=1))
    log = ZeekConnLog(path, follow=True, poll_s=0.05)
    with structlog.testing.capture_logs() as logs, following(log) as got:
        def starts() -> list[int]:
            return [int(s // 10**9) for b in got for s in b.start_ns[::2].tolist()]

        wait_for(lambda: [1] == starts())
        path.rename(tmp_path / "conn.2024-01-01.log")
        path.mkdir()
        wait_for(lambda: any(e["event"] == "zeek_log_reopen_failed" for e in logs))
        path.rmdir()
        path.write_bytes(HEADER + line(ts=5))
        wait_for(lambda: [1, 5] == starts())
    assert 1 == log.rotations


def test_from_end_skips_what_was_already_there(tmp_path: Path):
    path = tmp_path / "conn.log"
    path.write_bytes(HEADER + line(ts=1) + line(ts=2)[:15])  # Zeek is in the middle of a line
    with following(ZeekConnLog(path, follow=True, poll_s=0.05, from_end=True)) as got:
        with open(path, "ab") as f:
            f.write(line(ts=2)[15:] + line(ts=7))
        wait_for(lambda: sum(len(b) for b in got) >= 2)
        time.sleep(0.1)
    assert [7, 7] == [int(s // 10**9) for b in got for s in b.start_ns.tolist()]


def test_a_restart_resumes_at_the_position_of_the_last_reader(tmp_path: Path):
    """position() is the offset after the last whole line handed on (not the half line Zeek
    is writing); a reader given it reads on from there, with the header from the top. A
    file rotated or truncated since is read from its top, from_end or not."""
    path = tmp_path / "conn.log"
    path.write_bytes(HEADER + line(ts=1) + line(ts=2) + line(ts=3)[:12])
    first = ZeekConnLog(path, follow=True, poll_s=0.05)
    with following(first) as got:
        wait_for(lambda: sum(len(b) for b in got) == 4)
    at = first.position()
    assert len(HEADER + line(ts=1) + line(ts=2)) == at["offset"]
    with open(path, "ab") as f:  # what Zeek writes while nobody reads
        f.write(line(ts=3)[12:] + line(ts=4))

    def starts(batch: FlowRecordBatch) -> list[int]:
        return [int(s // 10**9) for s in batch.start_ns[::2].tolist()]

    resumed, log = read_all(path, from_end=True, resume_at=at)
    assert [3, 4] == starts(resumed) and 0 == log.parser.malformed
    assert path.stat().st_size == log.position()["offset"]

    path.rename(tmp_path / "conn.old.log")  # rotated while stopped: the new file is all news
    path.write_bytes(HEADER + line(ts=5))
    assert [5] == starts(read_all(path, from_end=True, resume_at=at)[0])
    path.write_bytes(HEADER)  # truncated below the position (same inode)
    with open(path, "ab") as f:
        f.write(line(ts=6))
    at_now = {**at, "inode": path.stat().st_ino, "device": path.stat().st_dev}
    assert [6] == starts(read_all(path, from_end=True, resume_at=at_now)[0])


@pytest.mark.parametrize("rotated_to", ["conn.2024-01-01-01-00-00.log", "log-queue/conn__2024-01-01-01-00-00__.log"])
def test_a_log_rotated_while_netad_was_down_is_read_to_its_end_first(tmp_path: Path, rotated_to: str):
    """Zeek went on writing while netad was down, then rotated the log (renamed it beside the
    path, or into log-queue/ there, and began a new one). A restart reads on in the rotated
    file from the position (what Zeek wrote to it is scored, once), then the new file from its
    top, as a rotation met while following; the position moves into the new file. Where the
    rotated file is gone (compressed, deleted), the new file is read from its top and the
    warning says what is not read."""
    import structlog.testing

    path = tmp_path / "conn.log"
    path.write_bytes(HEADER + line(ts=1) + line(ts=2))
    first = ZeekConnLog(path, follow=True, poll_s=0.05)
    with following(first) as got:
        wait_for(lambda: sum(len(b) for b in got) == 4)
    at = first.position()
    with open(path, "ab") as f:  # what Zeek writes while nobody reads, before it rotates the file
        f.write(line(ts=3) + line(ts=4))
    rotated = tmp_path / rotated_to
    rotated.parent.mkdir(exist_ok=True)
    path.rename(rotated)
    path.write_bytes(HEADER + line(ts=5))
    with structlog.testing.capture_logs() as logs:
        resumed = ZeekConnLog(path, follow=True, poll_s=0.05, resume_at=at)
    with following(resumed) as got:
        wait_for(lambda: sum(len(b) for b in got) == 6)
        time.sleep(0.2)
    assert [3, 4, 5] == [int(s // 10**9) for b in got for s in b.start_ns[::2].tolist()]
    assert 1 == resumed.rotations and 0 == resumed.parser.malformed
    assert {"inode": path.stat().st_ino, "offset": path.stat().st_size} == {k: resumed.position()[k] for k in ("inode", "offset")}
    assert any(e["event"] == "zeek_log_resumed_in_rotated_file" and e["rotated"] == str(rotated) for e in logs)

    rotated.unlink()  # compressed into the archive: a new file, the position's inode is gone
    with structlog.testing.capture_logs() as logs:
        assert [5] == [int(s // 10**9) for s in read_all(path, resume_at=at)[0].start_ns[::2].tolist()]
    assert any(e["event"] == "zeek_log_resumed_from_top" and "not read" in e["reason"] for e in logs)


def _follow_to_end(log: ZeekConnLog, path: Path, agg: FlowWindowAggregator) -> list:
    """Windows `agg` closes while `log` reads what `path` holds (followed: the reader is left
    at the end, as a daemon is between batches)."""
    windows, it = [], iter(log)
    while log.position()["offset"] < path.stat().st_size:
        windows += agg.push(next(it))
    return windows


def test_the_reading_point_is_before_the_records_of_the_windows_not_closed(tmp_path: Path):
    """reading_point(before): the last point between batches where every record handed on
    had ended before `before` (the end of the last window closed), with the newest record
    time read by now; None (no window closed yet): where the reading began. A replay has
    no reading points: its position now."""
    path = tmp_path / "conn.log"
    path.write_bytes(HEADER)
    log = ZeekConnLog(path, follow=True, poll_s=0.01)
    it, offsets = iter(log), [0]  # where the reading began: its top
    for ts in (100, 200, 400):  # each a batch of its own: one connection of 2 s
        with open(path, "ab") as f:
            f.write(line(ts=ts))
        while log.position()["offset"] < path.stat().st_size:
            next(it)
        offsets.append(path.stat().st_size)
    s = 10**9
    point = {before: log.reading_point(before) for before in (None, 102 * s, 102 * s + 1, 350 * s)}
    assert [p[0]["offset"] for p in point.values()] == [offsets[0], offsets[0], offsets[1], offsets[2]]
    assert {402 * s} == {p[0]["read_to_ns"] for p in point.values()}
    assert log.reading_point(500 * s)[0]["offset"] == offsets[3] == log.position()["offset"]
    it.close()
    replay = ZeekConnLog(path)
    list(replay)
    assert replay.reading_point(150 * s)[0] == replay.position() and "read_to_ns" not in replay.position()


def test_reading_points_are_bounded_and_share_an_unchanged_ledger(tmp_path: Path):
    """A log read for hours with no checkpoint to take its reading points keeps at most 512,
    thinned with the first kept (a reading point is safe however early); a point closer than
    10 s of record time to the one before the last replaces the last (two points per 10 s at
    most); an unchanged long-connection count is held once."""
    path = tmp_path / "conn.log"
    path.write_bytes(HEADER)
    with ZeekConnLog(path, follow=True) as log:
        offsets = itertools.count()
        log.position = lambda: {"device": 0, "inode": 0, "offset": next(offsets)}  # a new point at each batch
        for i in range(5000):
            log._newest_ns = i * 4 * 10**9  # a batch every 4 s of record time
            log._mark()
            if i == 99:  # 400 s read
                assert len(log._marks) <= 2 * 400 // 10 + 1
        marks = log._marks
        assert len(marks) <= 512 and marks[0][0] == 0 and len({id(m[2]) for m in marks}) == 1
        assert all(b[0] - a[0] >= 10 * 10**9 for a, b in zip(marks, marks[2:], strict=False))
        at, _ = log.reading_point(10_000 * 10**9)
        assert at["offset"] < 2500 and at["read_to_ns"] == 4999 * 4 * 10**9


@pytest.mark.shared_data
def test_a_restart_of_a_followed_log_builds_the_windows_it_left_open_whole(tmp_path: Path):
    """IoT-23's conn.log followed, the daemon's way: the reader stopped (a crash, or a stop
    that closes only the windows the watermark passed) with windows still open. Picked up at
    the reading point before those windows' records (reading_point, with the end of the last
    window closed) and the window stage told which windows were closed (resume_at), every
    window after is what one uninterrupted reading gives, and nothing read again counts as
    late. Picked up at the position after the last line read (the code before), the windows
    left open lose the records read before the stop."""
    lines = shared_file(IOT23).read_bytes().splitlines(keepends=True)
    header = [ln for ln in lines if ln.startswith(b"#")]
    body = [ln for ln in lines if not ln.startswith(b"#")]
    whole, path = tmp_path / "whole.log", tmp_path / "conn.log"
    whole.write_bytes(b"".join(header + body))

    def aggregator() -> FlowWindowAggregator:
        return FlowWindowAggregator(home_net=["192.168.1.0/24"], bin_s=60, bins=5, lateness_s=600)

    reference = aggregator()
    want = _follow_to_end(ZeekConnLog(whole, follow=True, poll_s=0.01, batch_records=16, read_bytes=4096, dns_log=None), whole, reference)
    want += reference.flush()
    path.write_bytes(b"".join(header + body[: len(body) // 2]))  # Zeek has written half of it
    first_agg = aggregator()
    first = ZeekConnLog(path, follow=True, poll_s=0.01, batch_records=16, read_bytes=4096, dns_log=None)
    before = _follow_to_end(first, path, first_agg)
    closed = before[-1].window_end_ns
    assert first_agg.watermark_ns > closed and first.position() != first.reading_point(closed)[0]
    points = {"reading point": first.reading_point(closed)[0], "position": first.position()}
    assert 0 < points["reading point"]["offset"] < points["position"]["offset"]
    history = first_agg.history.state_dict()
    with open(path, "ab") as f:  # Zeek writes on while netad is down
        f.write(b"".join(body[len(body) // 2:]))

    def restarted(at: dict, resume: bool) -> tuple[list, FlowWindowAggregator]:
        agg = aggregator()
        agg.history.load_state_dict(history)
        if resume:
            agg.resume_at(closed, at["read_to_ns"])
        log = ZeekConnLog(path, follow=True, poll_s=0.01, batch_records=16, read_bytes=4096, dns_log=None, resume_at=at)
        return _follow_to_end(log, path, agg) + agg.flush(), agg

    def by_end(windows: list) -> dict:
        return {w.window_end_ns: (w.entities, w.features) for w in windows if w.window_end_ns > closed}

    def same(end: int, entities: list[str], features: np.ndarray) -> bool:
        """The window as the uninterrupted reading has it. A host silent since the restart is
        not listed until it speaks again (the entity table starts empty, as after a replay's
        restart): its row there must be all zeros."""
        ref_entities, ref_features = expected[end]
        rows = [ref_entities.index(e) for e in entities if e in ref_entities]
        unlisted = [i for i, e in enumerate(ref_entities) if e not in entities]
        return (len(rows) == len(entities) and np.allclose(features, ref_features[rows], rtol=1e-5, atol=1e-6)
                and not ref_features[unlisted].any())

    expected = by_end(want)
    got, agg = restarted(points["reading point"], resume=True)
    assert by_end(before) == {} and expected.keys() == by_end(got).keys()
    assert all(same(end, e, f) for end, (e, f) in by_end(got).items())
    # what was read again is not late; what is late is what one reading finds late
    assert agg.read_again > 0 and (reference.late_starts, reference.late_records) == (
        first_agg.late_starts + agg.late_starts, first_agg.late_records + agg.late_records)
    assert np.isclose(reference.late_bytes, first_agg.late_bytes + agg.late_bytes)
    old, _ = restarted(points["position"], resume=False)
    lost = [end for end, (e, f) in by_end(old).items() if not same(end, e, f)]
    assert lost, "the position after the last line read lost nothing: this test shows nothing"


@pytest.mark.slow
@pytest.mark.shared_data
def test_iot23_conn_log_trains_and_scores_end_to_end(tmp_path: Path):
    """IoT-23's conn.log -> FlowWindowAggregator -> train on the first 60 % of the windows
    -> StreamingScorer on the rest: windows for the link and the device, finite scores. The
    bundle carries the flow schema and is refused where packet windows are expected."""
    from detector.model.bundle import ModelBundle
    from detector.model.scorer import StreamingScorer
    from detector.model.training import TrainingParams, train

    # Zeek writes a connection when it ends (TCP: up to 5 min of inactivity after): lateness
    # covers that; the two day-long connections still arrive late and are counted as such
    agg = FlowWindowAggregator(home_net=["192.168.1.0/24"], bin_s=60, bins=5, lateness_s=600)
    windows = []
    for batch in ZeekConnLog(shared_file(IOT23), batch_records=128):
        windows += agg.push(batch)
    windows += agg.flush()
    assert 250 < len(windows) < 280  # 21.9 h of 5-minute windows
    assert all(w.schema == FLOW_SCHEMA for w in windows)
    assert agg.late_records == 0 and agg.late_packets > 0
    split = int(len(windows) * 0.6)
    bundle = train(windows[:split], TrainingParams(epochs=3), bin_s=60, bins=5)
    assert FLOW_SCHEMA == bundle.schema
    scorer = StreamingScorer(bundle)
    scored = [scorer.score(w) for w in windows[split:]]
    assert len(scored) == len(windows) - split
    entities = {e for s in scored for e in s.entities}
    assert {"global", "192.168.1.132"} <= entities
    scores = np.concatenate([s.scores for s in scored])
    assert scores.size > len(scored) and np.isfinite(scores).all()
    path = bundle.save(tmp_path / "model")
    assert FLOW_SCHEMA == ModelBundle.load(path, expected_schema=FLOW_SCHEMA).schema
    with pytest.raises(ModelError, match=f"feature schema flow v{FLOW_SCHEMA.version}"):
        ModelBundle.load(path, expected_schema=PACKET_SCHEMA)


def test_addresses_of_every_form(tmp_path: Path):
    """Dotted quads are parsed by numpy, the rest (IPv6, scoped) one value at a time."""
    forms = ["0.0.0.0", "255.255.255.255", "10.1.2.3", "fe80::1%eth0", "2001:db8::ff", "::ffff:10.9.8.7"]
    path = tmp_path / "conn.log"
    path.write_bytes(HEADER + b"".join(line(orig=a, rpkts=0, rbytes=0) for a in forms))
    b, log = read_all(path)
    assert 0 == log.stats()["malformed"]
    expected = [addr_to_pair(a.split("%")[0]) for a in forms]
    assert expected == list(zip(b.src_hi.tolist(), b.src_lo.tolist(), strict=True))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.sampled_from(["-", "", "1e400", "nan", "-5", "1.5", "99999999999999999999", "10.0.0.1", "::1",
                                          "tcp", "udp", "icmp", "ShAF", "\\x09", "{}", "#fields", "é"]),
                         min_size=0, max_size=24).map("\t".join), max_size=8),
       st.booleans())
def test_any_line_is_read_or_counted(tmp_path: Path, lines: list[str], with_header: bool):
    """Fuzz: lines of odd values (unset, empty, overflowing, non-finite, misplaced) after a
    header or none, TSV or JSON-looking: records or malformed counts, never an exception."""
    path = tmp_path / "fuzz.log"
    path.write_bytes((HEADER if with_header else b"") + "\n".join(lines).encode("utf-8") + b"\n")
    b, log = read_all(path)
    assert np.all(b.end_ns >= b.start_ns)
    assert log.stats()["lines"] >= 0
