"""Sinks: URLs, local files, the spool, and delivery through outages and crashes.

Receivers here are real sockets on loopback owned by the test (fast and controllable);
test_sinks_rsyslog.py checks the same framing against a real rsyslogd, and
test_sinks_http.py a fake Splunk HEC and webhook.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
import structlog.testing

from detector.alerting._spool import event_to_json
from detector.alerting.sinks import Sink, SinkSet, build_sink
from detector.contracts import IncidentEvent
from detector.errors import ConfigError
from tests.conftest import can_unshare_mounts, on_a_full_disk

REPO = Path(__file__).resolve().parents[2]
FAST = "backoff_s=0.05&backoff_max_s=0.3&timeout_s=2"
Factory = Callable[..., IncidentEvent]


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


class TcpReceiver:
    """A syslog-over-TCP receiver (RFC 6587 octet counting) that can stop and restart on the
    same port. stop() is a graceful shutdown: the listener closes (new connections are
    refused) and open connections are half-closed, but what senders already wrote is still
    read, as a receiver that drains on shutdown does."""

    def __init__(self) -> None:
        self.port = 0
        self.frames: list[bytes] = []
        self._lock = threading.Lock()
        self._accepting = False
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._killed = False

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener, self._accepting = listener, True
        self._acceptor = self._spawn(self._accept, listener)

    def _spawn(self, target: Callable[..., None], *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def _accept(self, listener: socket.socket) -> None:
        while self._accepting:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(0.05)
            with self._lock:
                self._conns.append(conn)
            self._spawn(self._read, conn)

    def _read(self, conn: socket.socket) -> None:
        buffer = b""
        while not self._killed:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            buffer += data
            while match := re.match(rb"(\d+) ", buffer):
                end = match.end() + int(match.group(1))
                if len(buffer) < end:
                    break
                with self._lock:
                    self.frames.append(buffer[match.end() : end])
                buffer = buffer[end:]
        conn.close()

    def stop(self) -> None:
        self._accepting = False
        self._acceptor.join()
        assert self._listener is not None
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            self._conns = []

    def kill(self) -> None:
        if self._accepting:
            self.stop()
        self._killed = True
        for thread in self._threads:
            thread.join(2.0)

    def received(self, count: int, timeout_s: float = 10.0) -> list[str]:
        """The event ids received, once there are at least `count` (delivery means written to
        the socket; the receiver reads a moment later) and a short pause shows no more come."""
        wait_until(lambda: len(self.frames) >= count, timeout_s, what=f"{count} frames")
        time.sleep(0.1)
        return self.event_ids()

    def event_ids(self) -> list[str]:
        with self._lock:
            frames = list(self.frames)
        return [re.search(rb'eventId="([^"]*)"', f).group(1).decode() for f in frames]  # type: ignore[union-attr]


@pytest.fixture
def tcp_receiver() -> Iterator[TcpReceiver]:
    receiver = TcpReceiver()
    receiver.start()
    yield receiver
    receiver.kill()


def spooled_files(spool_dir: Path, sink: Sink) -> list[Path]:
    return sorted((spool_dir / sink.name).glob("*.json"))


# ---------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("jsonl:///var/tmp/netad/incidents.jsonl", "jsonl-var-tmp-netad-incidents.jsonl"),
        ("jsonl:var/incidents.jsonl?max_bytes=1000000&backups=3&format=cef", "jsonl-var-incidents.jsonl"),
        ("stdout://?format=ocsf", "stdout"),
        ("syslog+udp://127.0.0.1", "syslog+udp-127.0.0.1-514"),
        ("syslog+tcp://127.0.0.1:5514?format=cef&facility=local0", "syslog+tcp-127.0.0.1-5514"),
        ("syslog+tls://[::1]:6514?insecure=1", "syslog+tls-1-6514"),
        ("https://splunk.example:8088/services/collector?token=abc&index=netad", "hec-splunk.example-8088"),
        ("webhook+http://127.0.0.1:9000/hooks/netad?token=t", "webhook-127.0.0.1-9000-hooks-netad"),
    ],
)
def test_url_forms_build(url: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every documented URL form builds a sink with a stable name (its spool directory)."""
    monkeypatch.chdir(tmp_path)  # jsonl files are opened at build time
    sink = build_sink(url.replace("/var/tmp/", f"{tmp_path}/var/tmp/"))
    name = name.replace("jsonl-var-tmp", f"jsonl-{str(tmp_path).strip('/').replace('/', '-')}-var-tmp")
    name = name[:100]  # names are capped at 100 characters (a long temporary directory reaches it)
    try:
        assert sink.name == name
        assert sink.stats == {"delivered": 0, "failed": 0, "backlog": 0, "disabled": False, "retries": 0,
                              "dead_lettered": 0}
    finally:
        sink.close(0)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example", "unknown scheme 'ftp'"),
        ("syslog+tcp://127.0.0.1:5514?colour=blue", "unknown parameter 'colour'"),
        ("syslog+tcp://127.0.0.1:5514?format=xml", "format='xml'"),
        ("syslog+tcp://127.0.0.1:99999", "Port out of range"),
        ("syslog+tcp://:5514", "no host"),
        ("syslog+udp://127.0.0.1?facility=local9", "facility='local9'"),
        ("syslog+tls://127.0.0.1?ca=/nonexistent/ca.pem", "no such file"),
        ("https://splunk.example:8088/services/collector", "needs ?token="),
        ("https://splunk.example:8088/hook?token=s3cret", "webhook+http"),
        ("jsonl://host/path.jsonl", "takes a path, not a host"),
        ("jsonl:out.jsonl?max_bytes=10&backups=0", "backups='0'"),
        ("jsonl:out.jsonl?max_bytes=ten", "not an integer"),
        ("jsonl:///proc/netad/out.jsonl", "jsonl:///proc/netad/out.jsonl: cannot open for writing"),
        ("syslog+tcp://h?backoff_s=2&backoff_max_s=1", "backoff_max_s"),
        ("syslog+tcp://h?format=cef&format=ecs", "given twice"),
    ],
)
def test_bad_urls_are_config_errors(url: str, reason: str) -> None:
    """A bad URL is a ConfigError naming the URL (secrets redacted) and the reason."""
    with pytest.raises(ConfigError) as caught:
        build_sink(url)
    message = str(caught.value)
    assert message.startswith("sinks: ")
    assert reason in message
    assert "s3cret" not in message


def test_explicit_name_must_be_a_safe_directory_name() -> None:
    with pytest.raises(ConfigError, match="name"):
        build_sink("stdout://", name="../etc")


def test_duplicate_names_in_a_sinkset_are_refused() -> None:
    first, second = build_sink("stdout://"), build_sink("stdout://?format=cef")
    with pytest.raises(ConfigError, match="two sinks are named 'stdout'"):
        SinkSet([first, second])
    SinkSet([first, build_sink("stdout://?format=cef", name="stdout-cef")]).close(0)
    second.close(0)


# ---------------------------------------------------------------- local sinks


def test_jsonl_appends_and_rotates(tmp_path: Path, make_event: Factory) -> None:
    """With max_bytes, the file rotates to .1, .2 ...; no line is lost or split."""
    path = tmp_path / "out" / "incidents.jsonl"
    sink = build_sink(f"jsonl://{path}?max_bytes=8000&backups=50", spool_dir=tmp_path / "spool")
    events = [make_event(i) for i in range(40)]
    for event in events:
        sink.publish(event)
    assert sink.flush(1.0)
    sink.close()
    files = sorted(path.parent.glob("incidents.jsonl*"))
    assert len(files) > 3, "rotation should have happened"
    assert all(f.stat().st_size <= 8000 for f in files)
    lines = [line for f in files for line in f.read_text(encoding="utf-8").splitlines()]
    assert sorted(json.loads(line)["event"]["id"] for line in lines) == sorted(e.event_id for e in events)
    assert not (tmp_path / "spool").exists(), "local sinks do not spool"
    assert sink.stats["delivered"] == 40


def test_jsonl_keeps_only_the_backups_asked_for(tmp_path: Path, make_event: Factory) -> None:
    path = tmp_path / "incidents.jsonl"
    sink = build_sink(f"jsonl:{path}?max_bytes=3000&backups=2")
    for i in range(20):
        sink.publish(make_event(i))
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["incidents.jsonl", "incidents.jsonl.1", "incidents.jsonl.2"]


def test_jsonl_relative_path_and_outside_rotation(tmp_path: Path, make_event: Factory,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """jsonl:relative/path is relative to the working directory; a file moved away by an
    outside logrotate is noticed and a new one started."""
    monkeypatch.chdir(tmp_path)
    sink = build_sink("jsonl:var/incidents.jsonl?format=cef")
    sink.publish(make_event(0))
    os.rename(tmp_path / "var/incidents.jsonl", tmp_path / "var/rotated.jsonl")
    sink.publish(make_event(1))
    sink.close()
    assert (tmp_path / "var/rotated.jsonl").read_text().startswith("CEF:0|")
    assert "evt-00001" in (tmp_path / "var/incidents.jsonl").read_text()


_JSONL_ON_A_FULL_DISK = r"""
import json, os, sys
from pathlib import Path
import structlog.testing
sys.path.insert(0, "tests/alerting")
from conftest import _make_event
from detector.alerting.sinks import SinkSet, build_sink

disk = Path(os.environ["FULL_DISK"])
path = disk / "incidents.jsonl"
events = [_make_event(i) for i in range(10)]


def fill(name):
    fd = os.open(disk / name, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, bytes(4096)):
            pass
    except OSError:
        pass
    os.close(fd)


with structlog.testing.capture_logs() as logs:
    sinks = SinkSet([build_sink(f"jsonl:{path}")])
    for event in events[:6]:
        sinks.publish(event)
    held = next(iter(sinks.stats().values()))["backlog"]
    os.truncate(disk / "filler", 0)  # the operator frees the disk; no incident comes
    sinks.write_held()  # the daemon's heartbeat
    for event in events[6:8]:
        sinks.publish(event)
    fill("more")  # full again, to the end
    for event in events[8:]:
        sinks.publish(event)
    sinks.close()
print(json.dumps({"held": held, "logs": logs, "lines": path.read_text().splitlines()}, default=str))
"""


@pytest.mark.root
@pytest.mark.skipif(not can_unshare_mounts(), reason="needs root and unshare(1) for a private mount namespace")
def test_a_jsonl_file_on_a_full_disk_holds_its_events_and_writes_them_whole_once_it_can(tmp_path: Path) -> None:
    """A page of room: two events fit and the third is written in part. Before, that half line
    stayed, the next event written ran on from it (one broken line for two events), and each
    event the disk refused was given up at once: four lost while the disk was full, though
    it was freed minutes later. Now the half line is cut off, the refused events wait in
    memory and are written in order once the disk has room (here at the heartbeat, with no
    new incident), and those the disk never takes are named as the sink stops."""
    done = on_a_full_disk(tmp_path, [sys.executable, "-c", _JSONL_ON_A_FULL_DISK], leave_bytes=4096)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    ids = [f"evt-{i:05d}-0b6f2c" for i in range(10)]
    written = [json.loads(line)["event"]["id"] for line in out["lines"]]  # every line whole JSON
    assert written == ids[:8]
    assert out["held"] == 4
    logged = [(e["event"], e.get("held"), e.get("written"), e.get("event_ids")) for e in out["logs"]
              if e["event"] != "sink_started"]
    assert logged == [("sink_write_failed", 1, None, None), ("sink_recovered", None, 4, None),
                      ("sink_write_failed", 1, None, None), ("sink_events_lost", None, None, ids[8:]),
                      ("sink_closed", None, None, None)]
    assert [(e["delivered"], e["failed"]) for e in out["logs"] if e["event"] == "sink_closed"] == [(8, 2)]


def test_stdout_writes_one_line_per_event(capsys: pytest.CaptureFixture[str], make_event: Factory) -> None:
    with structlog.testing.capture_logs():  # structlog's default logger writes to stdout too
        sink = build_sink("stdout://?format=rfc5424")
        sink.publish(make_event(0, entity="evil\nhost"))
        sink.publish(make_event(1))
        sink.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("<171>1 ") for line in lines)


# ---------------------------------------------------------------- spool and delivery


def test_event_is_spooled_before_delivery(tmp_path: Path, make_event: Factory) -> None:
    """With nothing listening, publish returns at once and every event waits on disk."""
    port = _free_port()
    sink = build_sink(f"syslog+tcp://127.0.0.1:{port}?{FAST}", spool_dir=tmp_path)
    started = time.monotonic()
    for i in range(5):
        sink.publish(make_event(i))
    assert time.monotonic() - started < 1.0
    assert len(spooled_files(tmp_path, sink)) == 5
    wait_until(lambda: sink.stats["retries"] >= 2, what="retries")
    assert sink.stats["backlog"] == 5 and not sink.flush(0.2)
    sink.close(0.1)
    assert len(spooled_files(tmp_path, sink)) == 5, "undelivered events stay spooled"


def test_tcp_outage_delays_but_never_loses(tmp_path: Path, make_event: Factory, tcp_receiver: TcpReceiver) -> None:
    """The receiver goes away mid-stream and comes back on the same port: every event
    arrives exactly once, in order, and the spool is empty afterwards."""
    sink = build_sink(f"syslog+tcp://127.0.0.1:{tcp_receiver.port}?{FAST}", spool_dir=tmp_path)
    events = [make_event(i) for i in range(60)]
    for event in events[:20]:
        sink.publish(event)
    wait_until(lambda: len(tcp_receiver.event_ids()) == 20, what="first 20 events")
    tcp_receiver.stop()
    for event in events[20:40]:
        sink.publish(event)
        time.sleep(0.01)
    wait_until(lambda: sink.stats["retries"] >= 3, what="failed attempts")
    assert sink.stats["backlog"] > 0
    time.sleep(0.3)
    tcp_receiver.start()
    for event in events[40:]:
        sink.publish(event)
    assert sink.flush(10.0)
    sink.close()
    assert tcp_receiver.received(60) == [e.event_id for e in events]
    assert spooled_files(tmp_path, sink) == []
    assert sink.stats["delivered"] == 60


def test_restart_delivers_backlog_first_in_order(tmp_path: Path, make_event: Factory,
                                                 tcp_receiver: TcpReceiver) -> None:
    """A SinkSet closed during an outage leaves its backlog spooled; the next one (same
    spool_dir, as after a daemon restart) delivers it before anything new, in order. The
    healthy jsonl sink beside it never waited."""
    port = _free_port()
    jsonl = tmp_path / "incidents.jsonl"
    first = SinkSet([build_sink(f"syslog+tcp://127.0.0.1:{port}?{FAST}", spool_dir=tmp_path / "spool", name="siem"),
                     build_sink(f"jsonl:{jsonl}", spool_dir=tmp_path / "spool", name="file")])
    events = [make_event(i) for i in range(15)]
    for event in events[:10]:
        first.publish(event)
    assert len(jsonl.read_text().splitlines()) == 10
    stats = first.stats()
    assert stats["siem"]["backlog"] == 10 and stats["file"]["delivered"] == 10
    assert not first.flush(0.2)
    first.close(0.2)

    second = SinkSet([build_sink(f"syslog+tcp://127.0.0.1:{tcp_receiver.port}?{FAST}",
                                 spool_dir=tmp_path / "spool", name="siem")])
    for event in events[10:]:
        second.publish(event)
    assert second.flush(10.0)
    second.close()
    assert tcp_receiver.received(15) == [e.event_id for e in events]


def test_events_the_spool_could_not_take_are_spooled_as_the_sink_stops(tmp_path: Path, make_event: Factory,
                                                                       tcp_receiver: TcpReceiver) -> None:
    """Events published while the spool cannot be written (here its directory moved away; on
    a daemon, a full disk) wait in memory. The sink stops with its collector still down: the
    spool is tried again, takes them, and the next run delivers them. Before, they were lost
    at exit without a word (tests/service/test_full_disk.py has a disk that stays full)."""
    spool_dir = tmp_path / "spool"
    sink = build_sink(f"syslog+tcp://127.0.0.1:{_free_port()}?{FAST}", spool_dir=spool_dir, name="siem")
    away = tmp_path / "away"
    (spool_dir / "siem").rename(away)
    events = [make_event(i) for i in range(3)]
    with structlog.testing.capture_logs() as logs:
        for event in events:
            sink.publish(event)
        away.rename(spool_dir / "siem")
        sink.close(0.2)
    assert 3 == sum(e["event"] == "spool_write_failed" for e in logs)
    assert [3] == [e["events"] for e in logs if e["event"] == "sink_events_spooled"]
    assert len(spooled_files(spool_dir, sink)) == 3
    second = build_sink(f"syslog+tcp://127.0.0.1:{tcp_receiver.port}?{FAST}", spool_dir=spool_dir, name="siem")
    assert second.flush(10.0)
    second.close()
    assert tcp_receiver.received(3) == [e.event_id for e in events]


def test_one_spool_one_sender(tmp_path: Path) -> None:
    """Two live sinks on one spool directory would deliver everything twice: refused."""
    sink = build_sink("syslog+tcp://127.0.0.1:9?backoff_s=1", spool_dir=tmp_path)
    try:
        with pytest.raises(ConfigError, match="held by another process or sink"):
            build_sink("syslog+tcp://127.0.0.1:9?format=cef", spool_dir=tmp_path)
    finally:
        sink.close(0)
    build_sink("syslog+tcp://127.0.0.1:9", spool_dir=tmp_path).close(0)  # free again after close


def test_corrupt_spool_file_is_dead_lettered(tmp_path: Path, make_event: Factory, tcp_receiver: TcpReceiver) -> None:
    """A damaged spool file costs that one event (kept in dead/), not the queue behind it."""
    directory = tmp_path / f"syslog+tcp-127.0.0.1-{tcp_receiver.port}"
    directory.mkdir()
    for seq, event in enumerate([make_event(0), None, make_event(2)]):
        text = event_to_json(event) if event else '{"v": 1, "event": {"trunc'
        (directory / f"{seq:020d}.json").write_text(text)
    (directory / f"{3:020d}.json.tmp").write_text("torn")
    sink = build_sink(f"syslog+tcp://127.0.0.1:{tcp_receiver.port}?{FAST}", spool_dir=tmp_path)
    assert sink.flush(5.0)
    sink.close()
    assert tcp_receiver.received(2) == ["evt-00000-0b6f2c", "evt-00002-0b6f2c"]
    assert [p.name for p in (directory / "dead").iterdir()] == [f"{1:020d}.json"]
    assert sink.stats["dead_lettered"] == 1 and sink.stats["failed"] == 1
    assert not list(directory.glob("*.tmp"))


def test_without_spool_delivery_is_synchronous(make_event: Factory, tcp_receiver: TcpReceiver) -> None:
    """Offline commands (no spool_dir): publish delivers before it returns, or counts the
    event failed after a short retry; it never raises."""
    sink = build_sink(f"syslog+tcp://127.0.0.1:{tcp_receiver.port}?{FAST}")
    sink.publish(make_event(0))
    assert sink.stats["delivered"] == 1
    sink.close()
    dead = build_sink(f"syslog+tcp://127.0.0.1:{_free_port()}?{FAST}")
    dead.publish(make_event(1))
    assert (dead.stats["failed"], dead.stats["retries"]) == (1, 3)
    dead.close()
    assert tcp_receiver.received(1) == ["evt-00000-0b6f2c"]


def test_udp_sends_one_datagram_per_event(make_event: Factory) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        sink = build_sink(f"syslog+udp://127.0.0.1:{server.getsockname()[1]}?format=cef")
        sink.publish(make_event(0))
        sink.close()
        datagram = server.recv(65536).decode()
    assert datagram.startswith("<171>1 ") and " CEF:0|netad|netad|" in datagram


def test_sinkset_isolates_a_failing_sink(tmp_path: Path, make_event: Factory) -> None:
    """One sink whose publish raises (here: closed) does not cost the others the event."""
    broken = build_sink("stdout://", name="broken")
    broken.close()
    jsonl = tmp_path / "a.jsonl"
    sinks = SinkSet([broken, build_sink(f"jsonl:{jsonl}")])
    sinks.publish(make_event(0))
    sinks.close()
    assert len(jsonl.read_text().splitlines()) == 1


# ---------------------------------------------------------------- a crash of the sender

_SENDER = r"""
import sys, time
from pathlib import Path
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from detector.alerting._spool import event_from_json
from detector.alerting.sinks import build_sink

url, spool_dir, events_path, start, delay_s = sys.argv[1:6]
lines = Path(events_path).read_text().splitlines()
sink = build_sink(url, spool_dir=Path(spool_dir))
for i in range(int(start), len(lines)):
    sink.publish(event_from_json(lines[i]))
    print(i, flush=True)
    time.sleep(float(delay_s))
flushed = sink.flush(15.0)
sink.close(1.0)
print("flushed", flushed, flush=True)
"""


def _sender(args: list[str], log_path: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(log_path, "w") as log_file:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-c", _SENDER, *args], stdout=subprocess.PIPE, stderr=log_file,
                                text=True, cwd=REPO, env=env)


def _progress(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.strip())

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _published_until(lines: queue.Queue[str], index: int, timeout_s: float = 10.0) -> int:
    last = -1
    deadline = time.monotonic() + timeout_s
    while last < index:
        last = int(lines.get(timeout=max(0.01, deadline - time.monotonic())))
    return last


def test_sigkill_mid_stream_loses_nothing(tmp_path: Path, make_event: Factory, tcp_receiver: TcpReceiver) -> None:
    """The sending process is killed with SIGKILL mid-stream, during a receiver outage; a new
    process on the same spool delivers the rest. Every event arrives; a duplicate (possible
    for what was written but not yet acknowledged) carries the same id and content."""
    events = [make_event(i) for i in range(50)]
    events_path = tmp_path / "events.jsonl"
    events_path.write_text("".join(event_to_json(e) + "\n" for e in events))
    url = f"syslog+tcp://127.0.0.1:{tcp_receiver.port}?{FAST}"
    spool = tmp_path / "spool"

    first = _sender([url, str(spool), str(events_path), "0", "0.02"], tmp_path / "first.log")
    try:
        progress = _progress(first)
        _published_until(progress, 15)
        tcp_receiver.stop()
        last = _published_until(progress, 30)
        first.send_signal(signal.SIGKILL)
        first.wait(5)
        while not progress.empty():  # lines printed before the kill landed
            last = max(last, int(progress.get()))
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        assert first.stdout is not None
        first.stdout.close()
    assert first.returncode == -signal.SIGKILL
    backlog = list((spool / f"syslog+tcp-127.0.0.1-{tcp_receiver.port}").glob("*.json"))
    assert backlog, "the outage should have left events spooled at the kill"

    tcp_receiver.start()
    second = subprocess.run([sys.executable, "-c", _SENDER, url, str(spool), str(events_path), str(last + 1), "0"],
                            capture_output=True, text=True, timeout=30, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.splitlines()[-1] == "flushed True"

    expected = {e.event_id for e in events}
    wait_until(lambda: set(tcp_receiver.event_ids()) >= expected, what="every event id")
    assert set(tcp_receiver.received(len(events))) == expected
    by_id: dict[str, set[bytes]] = {}
    for frame in tcp_receiver.frames:
        event_id = re.search(rb'eventId="([^"]*)"', frame).group(1).decode()  # type: ignore[union-attr]
        by_id.setdefault(event_id, set()).add(frame.split(b"] ", 1)[1])  # the MSG, without the pid
    assert all(len(msgs) == 1 for msgs in by_id.values()), "a duplicate differs from its original"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
