"""Zeek's long connections (conn_long.log beside the conn.log, as Zeek's long-connections
package writes it): each line counted as the part of its connection since the line before,
the conn.log line that ends it as the rest, whatever the batches; and the honeypot's real
day-long connections, whose volume a window saw only in their last minutes, counted in the
windows of their time."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.capture.flowrecords.zeeklog import DEFAULT_FIELDS, Connections, LongConnections, ZeekConnLog, long_log_beside
from detector.capture.windows import FLOW_SCHEMA
from detector.capture.windows.flow import FlowWindowAggregator
from detector.contracts import FlowRecordBatch, addr_to_pair
from tests.capture.flowrecords._zeek_long import HEADER_LONG, write_long_log
from tests.capture.flowrecords.test_zeeklog import HEADER, IOT23, following, wait_for
from tests.conftest import shared_file

T0 = 1_700_000_000.0


def conn_line(uid: str, ts: float, duration: float, opkts: int, obytes: int, rpkts: int, rbytes: int, history: str = "ShADad",
              orig: str = "10.0.0.5", resp: str = "192.0.2.9", oport: int = 40000, rport: int = 22) -> bytes:
    """A conn.log (or conn_long.log: the same columns) line as Zeek writes it."""
    fields = [f"{ts:.6f}", uid, orig, str(oport), resp, str(rport), "tcp", "ssh", f"{duration:.6f}", "0", "0", "S1", "-", "-",
              "0", history, str(opkts), str(obytes), str(rpkts), str(rbytes), "-"]
    return ("\t".join(fields) + "\n").encode()


def as_json(tsv: bytes) -> bytes:
    """The same line as Zeek's JSON writer writes it."""
    values = tsv.decode().rstrip("\n").split("\t")
    obj: dict = {}
    for name, value in zip(DEFAULT_FIELDS, values, strict=True):
        if value == "-":
            continue
        obj[name] = float(value) if name in ("ts", "duration") else int(value) if name.endswith(("_p", "_pkts", "_bytes")) else value
    return (json.dumps(obj) + "\n").encode()


# an SSH session of an hour, logged every 10 minutes, with a short connection beside it and a
# long-log line that names no connection. A line's duration is its last packet's time less the
# first's: the line of 30 minutes, after ten idle ones, says what the one of 20 said
SESSION = [  # (duration, orig packets, orig bytes, resp packets, resp bytes)
    (600, 100, 10_000, 80, 40_000),
    (1200, 250, 25_000, 200, 100_000),
    (1200, 250, 25_000, 200, 100_000),  # idle for these ten minutes
    (2400, 400, 40_000, 300, 150_000),
]
FINAL = (3600, 500, 52_000, 380, 190_000)


def _write(tmp_path: Path, json_lines: bool = False) -> Path:
    def fmt(raw: bytes) -> bytes:
        return as_json(raw) if json_lines else raw

    conn = tmp_path / "conn.log"
    conn.write_bytes((b"" if json_lines else HEADER)
                     + fmt(conn_line("Cshort", T0 + 100, 2.0, 6, 400, 5, 3000, oport=40001, rport=443))
                     + fmt(conn_line("Clong", T0, *FINAL, history="ShADadFf")))
    (tmp_path / "conn_long.log").write_bytes((b"" if json_lines else HEADER_LONG) + b"".join(
        fmt(conn_line("Clong", T0, s, op, ob, rp, rb)) for s, op, ob, rp, rb in SESSION[:2])
        + fmt(conn_line("-", T0 + 50, 700.0, 3, 180, 0, 0, oport=40002, rport=23))  # no uid: cannot be told apart
        + b"".join(fmt(conn_line("Clong", T0, s, op, ob, rp, rb)) for s, op, ob, rp, rb in SESSION[2:]))
    return conn


def _parts(batch: FlowRecordBatch, sport: int) -> list[tuple[float, float, int, int, int]]:
    """The records of one direction of the session: (start, end, packets, bytes, flags)."""
    rows = np.flatnonzero(batch.sport == sport)
    return [(round(batch.start_ns[i] / 1e9 - T0, 3), round(batch.end_ns[i] / 1e9 - T0, 3), int(batch.packets[i]),
             int(batch.bytes[i]), int(batch.tcp_flags[i])) for i in rows]


@pytest.mark.parametrize("json_lines", [False, True], ids=["tsv", "json"])
@pytest.mark.parametrize("read_bytes", [1 << 20, 300], ids=["one-read", "line-by-line"])
def test_each_line_of_a_long_connection_is_the_part_since_the_line_before(tmp_path: Path, json_lines: bool, read_bytes: int):
    """The session's parts: from its start to 10 minutes, 10 to 20, the idle line of 30 not
    counted (the next part, 20 to 40, spreads over the time since the last packet counted),
    and the conn.log's line the rest, to the end. Each part holds what the totals added since
    the part before; they add up to the conn.log's totals; the first opens the connection
    (SYN, a flow), the later ones continue it: the session and the short connection beside
    it are the host's two flows. Read in
    one piece or a line at a time, in Zeek's TSV or JSON, the same; the line without a uid
    is counted, not read."""
    conn = _write(tmp_path, json_lines)
    log = ZeekConnLog(conn, batch_records=2, read_bytes=read_bytes)
    batch = FlowRecordBatch.concat(list(log))
    out, back = _parts(batch, 40000), _parts(batch, 22)
    assert [(a, b, p, n) for a, b, p, n, _ in out] == [
        (0, 600, 100, 10_000), (600, 1200, 150, 15_000), (1200, 2400, 150, 15_000), (2400, 3600, 100, 12_000)]
    assert [(a, b, p, n) for a, b, p, n, _ in back] == [
        (0, 600, 80, 40_000), (600, 1200, 120, 60_000), (1200, 2400, 100, 50_000), (2400, 3600, 80, 40_000)]
    assert (sum(r[2] for r in out), sum(r[3] for r in out)) == FINAL[1:3]
    assert (sum(r[2] for r in back), sum(r[3] for r in back)) == FINAL[3:5]
    syn = [bool(flags & 0x02) for *_, flags in out]
    assert syn == [True, False, False, False] and out[-1][4] & 0x01  # the conn.log's FIN, on the last part
    assert batch.continued[batch.sport == 40000].tolist() == [False, True, True, True]
    # so the session is one flow, as on the packet path, not one per line
    agg = FlowWindowAggregator(home_net=["10.0.0.0/8"], bin_s=10, bins=6, lateness_s=7200)
    windows = [w for w in agg.push(batch)] + agg.flush()
    flows_out = FLOW_SCHEMA.features.index("flows_out")
    assert 2 == sum(float(w.features[w.entities.index("10.0.0.5"), :, flows_out].sum()) for w in windows if "10.0.0.5" in w.entities)
    short = np.flatnonzero(batch.dport == 443)
    assert 1 == short.shape[0] and int(batch.bytes[short[0]]) == 400  # a connection of the conn.log alone, as it was
    stats = log.stats()
    assert (stats["long_lines"], stats["long_malformed"], stats["long_open"], stats["malformed"]) == (5, 1, 0, 0)


def test_without_a_long_log_a_connection_is_one_record_per_direction_as_before(tmp_path: Path):
    conn = _write(tmp_path)
    (tmp_path / "conn_long.log").unlink()
    batch = FlowRecordBatch.concat(list(ZeekConnLog(conn)))
    assert [(0, 3600, 500, 52_000)] == [(a, b, p, n) for a, b, p, n, _ in _parts(batch, 40000)]
    batch = FlowRecordBatch.concat(list(ZeekConnLog(_write(tmp_path), long_log=None)))  # or told to read none
    assert [(0, 3600, 500, 52_000)] == [(a, b, p, n) for a, b, p, n, _ in _parts(batch, 40000)]


def test_a_connection_across_zeek_s_hourly_logs_is_counted_once(tmp_path: Path):
    """Zeek rotates its logs every hour: the session's lines of the first 20 minutes in one
    hour's conn_long.log, the rest and its end in the next hour's. Read one after another
    (`netad train --conn-log conn.*.log`), the two logs share what was counted: the session's
    totals are the conn.log's, not more."""
    from detector.service.pipeline import conn_log_batches

    first, second = tmp_path / "conn.00:00:00-01:00:00.log", tmp_path / "conn.01:00:00-02:00:00.log"
    first.write_bytes(HEADER + conn_line("Cshort", T0 + 100, 2.0, 6, 400, 5, 3000, oport=40001, rport=443))
    long_log_beside(first)[0].write_bytes(HEADER_LONG + b"".join(conn_line("Clong", T0, *line) for line in SESSION[:2]))
    second.write_bytes(HEADER + conn_line("Clong", T0, *FINAL, history="ShADadFf"))
    long_log_beside(second)[0].write_bytes(HEADER_LONG + b"".join(conn_line("Clong", T0, *line) for line in SESSION[2:]))
    batch = FlowRecordBatch.concat(list(conn_log_batches([first, second])))
    out = _parts(batch, 40000)
    assert (sum(r[2] for r in out), sum(r[3] for r in out)) == FINAL[1:3]
    assert [(a, b) for a, b, *_ in out] == [(0, 600), (600, 1200), (1200, 2400), (2400, 3600)]


def test_the_long_log_is_the_one_zeek_writes_beside_the_conn_log():
    assert [Path("/z/current/conn_long.log"), Path("/z/current/open_conn.log")] == long_log_beside(Path("/z/current/conn.log"))
    assert Path("/z/2024-01-01/conn_long.00:00:00-01:00:00.log.gz") == long_log_beside(
        Path("/z/2024-01-01/conn.00:00:00-01:00:00.log.gz"))[0]


def _connections(rows: list[tuple[str, float, float, int]]) -> Connections:
    """Connections of (uid, start s, end s, orig packets)."""
    n = len(rows)
    hi, lo = addr_to_pair("10.0.0.5")
    z = np.zeros(n, np.int64)
    return Connections(np.array([r[0].encode() for r in rows], dtype=np.bytes_),
                       np.array([int(r[1] * 1e9) for r in rows]), np.array([int(r[2] * 1e9) for r in rows]),
                       np.full(n, hi, np.uint64), np.full(n, lo, np.uint64), np.full(n, hi, np.uint64), np.full(n, lo + 1, np.uint64),
                       z + 40000, z + 22, z + 6, np.array([r[3] for r in rows]), z, np.array([r[3] * 100 for r in rows]), z,
                       z + 0x12, z + 0x12, np.zeros(n, bool))


def test_at_most_max_open_connections_are_held_and_a_forgotten_one_counts_from_its_start():
    ledger = LongConnections(max_open=2)
    interim = np.array([True, True, True])
    ledger.count(_connections([("A", 0, 600, 10), ("B", 0, 610, 10), ("C", 0, 620, 10)]), interim)
    assert list(ledger.open) == [b"B", b"C"] and ledger.forgotten == 1
    final = ledger.count(_connections([("A", 0, 900, 30), ("B", 0, 900, 30)]), np.array([False, False]))
    assert final.start_ns.tolist() == [0, 610 * 10**9]  # A from its start, all 30 packets; B since its line
    assert final.orig_pkts.tolist() == [30, 20] and list(ledger.open) == [b"C"]


@st.composite
def _sessions(draw: st.DrawFn) -> tuple[list[tuple[str, float, float, int, bool]], list[int]]:
    """Connections logged as they went, then ended: (uid, start, end, orig packets so far,
    interim) lines in the time order a replay reads them, and where the batches are cut."""
    lines = []
    for k in range(draw(st.integers(1, 5))):
        start = draw(st.integers(0, 1000))
        ends = sorted(draw(st.lists(st.integers(1, 5000), min_size=1, max_size=6)))
        totals = sorted(draw(st.lists(st.integers(0, 1000), min_size=len(ends), max_size=len(ends))))
        lines += [(f"C{k}", start, start + e, t, i < len(ends) - 1) for i, (e, t) in enumerate(zip(ends, totals, strict=True))]
    lines.sort(key=lambda line: (line[2], not line[4]))
    return lines, sorted(draw(st.lists(st.integers(0, len(lines)), max_size=4)))


def _restarted(ledger: LongConnections) -> LongConnections:
    """A ledger as a restart has it: through a checkpoint's arrays, as safetensors bytes."""
    again = LongConnections()
    again.load_state_dict(safetensors.numpy.load(safetensors.numpy.save(ledger.state_dict())))
    return again


@settings(max_examples=200, deadline=None)
@given(_sessions(), st.lists(st.booleans(), min_size=5, max_size=5))
def test_a_connection_s_parts_add_up_to_its_totals_and_follow_each_other(sessions, restarts):
    """However the lines fall into batches, and with a restart between any two of them (what
    was counted kept in the checkpoint): each connection's parts add up to the totals its
    conn.log line says, span it from its start to its end without overlapping (an idle
    line's span is left out), and only the first opens it."""
    lines, cuts = sessions
    ledger = LongConnections()
    parts: dict[str, list[tuple[int, int, int, bool]]] = {}
    for a, b, restart in zip([0, *cuts], [*cuts, len(lines)], restarts, strict=False):
        if restart:
            ledger = _restarted(ledger)
        chunk = lines[a:b]
        if not chunk:
            continue
        counted = ledger.count(_connections([(u, s, e, t) for u, s, e, t, _ in chunk]), np.array([i for *_, i in chunk]))
        for uid, s, e, t, c in zip(counted.uid.tolist(), counted.start_ns.tolist(), counted.end_ns.tolist(),
                                    counted.orig_pkts.tolist(), counted.continued.tolist(), strict=True):
            parts.setdefault(uid.decode(), []).append((s, e, t, c))
    assert not ledger.open
    for uid in {u for u, *_ in lines}:
        final = next(line for line in lines if line[0] == uid and not line[4])
        got = parts[uid]
        assert sum(t for _, _, t, _ in got) == final[3]
        assert got[0][0] == int(final[1] * 1e9) and got[-1][1] == int(final[2] * 1e9)
        assert all(got[i][1] <= got[i + 1][0] for i in range(len(got) - 1))
        assert [c for *_, c in got] == [False] + [True] * (len(got) - 1)


def test_a_long_log_line_read_after_its_connection_ended_is_not_counted_twice():
    """Zeek buffers its logs one by one: a live conn_long.log line can come after the conn.log
    line that ended its connection, which counted all of it (the whole, or the rest)."""
    ledger = LongConnections()
    first = ledger.count(_connections([("A", 0, 600, 10), ("B", 0, 600, 10)]), np.array([True, True]))
    assert first.orig_pkts.tolist() == [10, 10]
    ended = ledger.count(_connections([("A", 0, 1800, 30), ("C", 0, 1800, 40), ("D", 0, 30, 2)]), np.array([False, False, False]))
    assert ended.orig_pkts.tolist() == [20, 40, 2] and ended.start_ns.tolist() == [600 * 10**9, 0, 0]
    late = ledger.count(_connections([("A", 0, 1200, 25), ("C", 0, 1200, 30), ("D", 0, 20, 1), ("B", 0, 1200, 15)]),
                        np.array([True, True, True, True]))
    assert late.orig_pkts.tolist() == [1, 5]  # D ended too soon to be known as long; B goes on
    assert ledger.after_end == 2 and list(ledger.open) == [b"D", b"B"]


def test_a_followed_long_log_is_read_as_zeek_appends_and_a_restart_reads_on_from_its_position(tmp_path: Path):
    """Live: the long log's lines come as Zeek writes them, each the part since the one
    before; the conn.log's line ends the connection. A restart reads on from the position
    (what Zeek wrote while netad was down) with what was counted of the connections still
    open (the checkpoint's arrays): the next line of one counts from where it stood. Without
    them it counts from its start."""
    now = time.time() - 7200
    conn, longs = tmp_path / "conn.log", tmp_path / "conn_long.log"
    conn.write_bytes(HEADER)
    longs.write_bytes(HEADER_LONG)
    log = ZeekConnLog(conn, follow=True, poll_s=0.05)
    with following(log) as got:
        def parts() -> list[tuple[int, int]]:
            b = FlowRecordBatch.concat(list(got))
            rows = np.flatnonzero(b.sport == 40000)
            return [(round(b.start_ns[i] / 1e9 - now), int(b.packets[i])) for i in rows]

        with open(longs, "ab") as f:
            f.write(conn_line("Cssh", now, 600.0, 100, 10_000, 80, 40_000))
        wait_for(lambda: [(0, 100)] == parts())
        with open(longs, "ab") as f:
            f.write(conn_line("Cssh", now, 1200.0, 250, 25_000, 200, 100_000))
        wait_for(lambda: [(0, 100), (600, 150)] == parts())
        assert 1 == log.stats()["long_open"]
    at, ledger = log.position(), _restarted(log.ledger)
    assert longs.stat().st_size == at["long"]["offset"]
    with open(longs, "ab") as f:  # what Zeek writes while netad is down
        f.write(conn_line("Cssh", now, 1800.0, 300, 30_000, 240, 120_000))
    for kept, counted in ((ledger, [(1200, 50), (1800, 100)]), (None, [(0, 300), (1800, 100)])):
        with open(conn, "r+b") as f:
            f.truncate(at["offset"])  # as the checkpoint found it
        with following(ZeekConnLog(conn, follow=True, poll_s=0.05, resume_at=at, ledger=kept)) as again:
            wait_for(lambda: sum(len(b) for b in again) >= 2)
            with open(conn, "ab") as f:
                f.write(conn_line("Cssh", now, 2400.0, 400, 40_000, 300, 150_000))
            wait_for(lambda: sum(len(b) for b in again) >= 4)
            time.sleep(0.2)  # and no more come
        b = FlowRecordBatch.concat(list(again))
        rows = np.flatnonzero(b.sport == 40000)
        assert counted == [(round(b.start_ns[i] / 1e9 - now), int(b.packets[i])) for i in rows]


@pytest.mark.shared_data
def test_the_honeypot_s_long_connections_are_counted_in_the_windows_of_their_time(tmp_path: Path):
    """IoT-23's conn.log, with the long-connections log its capture gives (every 10 minutes:
    tests/capture/flowrecords/_zeek_long.py). The day-long keepalive to 104.155.18.91 and the
    bridge's SSDP announcements (19.5 h as one record) end with the log: read alone, a window
    could only hold their last 10 minutes (`flow_lateness_s`), and 3,135,529 of the log's
    3,672,845 bytes were dropped as late. With the long log none is late, the same packets and
    bytes are counted in all, and each hour of the keepalive's life holds what the capture's
    packets of it carried that hour."""
    conn = tmp_path / "conn.log"
    shutil.copy(shared_file(IOT23), conn)
    pcap = shared_file("iot23-honeypot-4-1/honeypot-4-1.pcap")
    conns = write_long_log(conn, pcap, tmp_path / "long.log")
    assert 7 == len(conns)  # the SSDP announcements of 13 to 27 minutes, and the two of the day

    def windows(long: bool) -> tuple[dict[int, float], FlowRecordBatch, dict[str, int]]:
        if long:
            shutil.copy(tmp_path / "long.log", tmp_path / "conn_long.log")
        agg = FlowWindowAggregator(home_net=["192.168.1.0/24"], bin_s=10, bins=6, lateness_s=600)
        batches = list(ZeekConnLog(conn, batch_records=128))
        per_hour: dict[int, float] = {}
        for w in [w for b in batches for w in agg.push(b)] + agg.flush():
            ev = w.evidence.get("192.168.1.132")
            for peer in ev.top_peers if ev is not None else ():
                if peer["ip"] == "104.155.18.91":
                    hour = int(w.window_start_ns // 3_600_000_000_000)
                    per_hour[hour] = per_hour.get(hour, 0) + peer["bytes"]
        return per_hour, FlowRecordBatch.concat(batches), agg.stats()

    alone, records_alone, stats_alone = windows(long=False)
    counted, records, stats = windows(long=True)
    assert (int(records_alone.packets.sum()), int(records_alone.bytes.sum())) == (16_912, 3_672_845)
    assert (int(records.packets.sum()), int(records.bytes.sum())) == (16_912, 3_672_845)
    assert (stats_alone["late_bytes"], stats["late_bytes"], stats["late_packets"]) == (3_135_529, 0, 0)
    keepalive = next(c for c in conns if c["id.resp_h"] == "104.155.18.91")
    truth: dict[int, float] = {}
    for t, _orig, size in keepalive["packets"]:
        truth[int(t // 3600)] = truth.get(int(t // 3600), 0) + size
    hours = sorted(truth)[1:-1]  # whole hours of its life
    assert len(hours) >= 20 and sum(alone.values()) < 0.02 * sum(truth.values())  # alone: its last 10 minutes
    for hour in hours:
        assert counted[hour] == pytest.approx(truth[hour], rel=0.05), hour  # 0.978 to 0.985 of it, as measured
