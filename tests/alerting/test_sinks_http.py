"""HTTP sinks against a real local server: a fake Splunk HEC and a generic webhook.

The server is the standard library's threaded http.server on loopback; a policy function
decides each response, so outages (503), refusals (400) and bad tokens (403) are scripted.
It answers as HEC documents: {"text", "code"} bodies (4 Invalid token, 6 Invalid data
format, 9 Server is busy, 10 Data channel is missing), and with indexer acknowledgement on,
an ackId per request on a channel and POST /services/collector/ack {"acks": [ids]} ->
{"acks": {"id": bool}}; `indexed(ack_id, poll)` says when the indexers have a request.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from detector.alerting.sinks import build_sink
from detector.contracts import IncidentEvent

FAST = "backoff_s=0.05&backoff_max_s=0.3&timeout_s=2"
Factory = Callable[..., IncidentEvent]


class FakeCollector(ThreadingHTTPServer):
    """Records every request; `policy(n, body)` gives the status of the n-th (from 0)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.accepted: list[bytes] = []
        self.policy: Callable[[int, bytes], int] = lambda n, body: 200
        self.delay_s: Callable[[int], float] = lambda n: 0.0
        self.lock = threading.Lock()
        self.ack = False  # the token has indexer acknowledgement on
        self.indexed: Callable[[int, int], bool] = lambda ack_id, poll: True
        self.ack_bodies: dict[int, bytes] = {}  # ackId -> the request it acknowledges
        self.ack_polls: dict[int, int] = {}
        self.acked: list[bytes] = []  # the requests the indexers confirmed, in order
        self.acked_ids: set[int] = set()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client that timed out and hung up: expected in the timeout test
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def accepted_events(self, acked: bool = False) -> list[Any]:
        """The HEC envelopes (or webhook bodies) of every 2xx request, in arrival order (with
        `acked`: of every request the indexers confirmed)."""
        with self.lock:
            bodies = list(self.acked if acked else self.accepted)
        decoder = json.JSONDecoder()
        out = []
        for body in bodies:
            text, index = body.decode("utf-8"), 0
            while index < len(text):  # HEC batches are concatenated JSON objects
                obj, end = decoder.raw_decode(text, index)
                out.append(obj)
                index = end
                while index < len(text) and text[index].isspace():
                    index += 1
        return out


_HEC_ERRORS = {403: {"text": "Invalid token", "code": 4}, 400: {"text": "Invalid data format", "code": 6}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as HEC does
    server: FakeCollector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.startswith("/services/collector/ack"):
            self._reply(200, self._acks(body))
            return
        with self.server.lock:
            n = len(self.server.requests)
            self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        time.sleep(self.server.delay_s(n))
        status = self.server.policy(n, body)
        channel = self.headers.get("X-Splunk-Request-Channel")
        if 200 <= status < 300 and self.server.ack and not channel:
            status = 400
        reply: dict[str, Any] = _HEC_ERRORS.get(status, {"text": "Server is busy", "code": 9})
        if 200 <= status < 300:
            reply = {"text": "Success", "code": 0}
            with self.server.lock:
                self.server.accepted.append(body)
                if self.server.ack:
                    reply["ackId"] = len(self.server.ack_bodies)
                    self.server.ack_bodies[reply["ackId"]] = body
        elif status == 400 and self.server.ack and not channel:
            reply = {"text": "Data channel is missing", "code": 10}
        self._reply(status, reply)

    def _acks(self, body: bytes) -> dict[str, Any]:
        answer = {}
        with self.server.lock:
            for ack_id in json.loads(body)["acks"]:
                poll = self.server.ack_polls[ack_id] = self.server.ack_polls.get(ack_id, 0) + 1
                done = ack_id in self.server.acked_ids or (ack_id in self.server.ack_bodies and self.server.indexed(ack_id, poll))
                if done and ack_id not in self.server.acked_ids:
                    self.server.acked_ids.add(ack_id)
                    self.server.acked.append(self.server.ack_bodies[ack_id])
                answer[str(ack_id)] = done
        return {"acks": answer}

    def _reply(self, status: int, doc: dict[str, Any]) -> None:
        reply = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # keep the test output clean


@pytest.fixture
def collector() -> Iterator[FakeCollector]:
    server = FakeCollector()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_hec_retries_through_503_and_delivers_everything(tmp_path: Path, make_event: Factory,
                                                          collector: FakeCollector) -> None:
    """The collector answers 503 to the first 4 requests: with backoff, every event arrives
    once it recovers, in HEC's envelope, authenticated with the token."""
    collector.policy = lambda n, body: 503 if n < 4 else 200
    sink = build_sink(f"{collector.url}/services/collector?token=abc-123&{FAST}", spool_dir=tmp_path)
    events = [make_event(i) for i in range(30)]
    for event in events:
        sink.publish(event)
    assert sink.flush(10.0)
    sink.close()
    envelopes = collector.accepted_events()
    assert [e["event"]["event"]["id"] for e in envelopes] == [e.event_id for e in events]
    first = envelopes[0]
    assert set(first) == {"time", "host", "source", "sourcetype", "event"}
    assert (first["sourcetype"], first["source"], first["host"]) == ("netad:incident", "netad", "sensor-1")
    assert first["time"] == pytest.approx(events[0].emitted_ns / 1e9)
    assert first["event"]["event"]["kind"] == "alert"
    request = collector.requests[0]
    assert request["path"] == "/services/collector"
    assert request["headers"]["Authorization"] == "Splunk abc-123"
    assert len(collector.requests) >= 5
    assert sink.stats["retries"] >= 4 and sink.stats["delivered"] == 30
    assert not list((tmp_path / sink.name).glob("*.json"))


def test_hec_batch_rejected_is_split_and_the_culprit_dead_lettered(tmp_path: Path, make_event: Factory,
                                                                  collector: FakeCollector) -> None:
    """A 400 refuses the records themselves: the batch is retried one by one, the refused
    event is kept in dead/, and the others are delivered in order."""
    poison = make_event(3).event_id.encode()
    collector.policy = lambda n, body: 400 if poison in body else 200
    sink = build_sink(f"{collector.url}/services/collector/event?token=t&batch=10&{FAST}", spool_dir=tmp_path)
    events = [make_event(i) for i in range(8)]
    with structlog.testing.capture_logs() as logs:
        for event in events:
            sink.publish(event)
        assert sink.flush(10.0)
        sink.close()
    delivered = [e["event"]["event"]["id"] for e in collector.accepted_events()]
    assert delivered == [e.event_id for e in events if e.event_id.encode() != poison]
    assert len(list((tmp_path / sink.name / "dead").iterdir())) == 1
    assert (sink.stats["failed"], sink.stats["dead_lettered"], sink.stats["delivered"]) == (1, 1, 7)
    assert any(entry["event"] == "event_dead_lettered" for entry in logs)


def test_hec_bad_token_disables_until_fixed(tmp_path: Path, make_event: Factory, collector: FakeCollector) -> None:
    """403 means our configuration or theirs is wrong: the sink says it is disabled, keeps the
    events spooled, and resumes by itself once the endpoint accepts again."""
    fixed = threading.Event()
    collector.policy = lambda n, body: 200 if fixed.is_set() else 403
    sink = build_sink(f"{collector.url}/services/collector?token=wrong&{FAST}", spool_dir=tmp_path)
    with structlog.testing.capture_logs() as logs:
        for i in range(3):
            sink.publish(make_event(i))
        deadline = time.monotonic() + 5
        while not sink.stats["disabled"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sink.stats["disabled"] and sink.stats["backlog"] == 3
        fixed.set()
        assert sink.flush(5.0)
        sink.close()
    assert not sink.stats["disabled"]
    assert len(collector.accepted_events()) == 3
    events = [entry["event"] for entry in logs]
    assert "sink_disabled" in events and "sink_enabled" in events
    disabled = next(entry for entry in logs if entry["event"] == "sink_disabled")
    assert "HTTP 403: Invalid token (code 4)" in disabled["reason"]  # Splunk's reason, not just the status
    assert all("wrong" not in json.dumps(entry, default=str) for entry in logs), "the token must not be logged"


def test_a_disabled_sink_does_not_hold_up_close(tmp_path: Path, make_event: Factory, collector: FakeCollector) -> None:
    """A sink disabled by a 403 makes one more attempt when closed, then gives up at once
    instead of waiting out the close timeout (the daemon's 20 s shutdown); its events stay
    spooled for the next run."""
    collector.policy = lambda n, body: 403
    sink = build_sink(f"{collector.url}/services/collector?token=wrong&backoff_s=0.05&backoff_max_s=3600", spool_dir=tmp_path)
    sink.publish(make_event(0))
    deadline = time.monotonic() + 5
    while not sink.stats["disabled"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.stats["disabled"]
    attempts = len(collector.requests)
    closing = threading.Thread(target=sink.close, kwargs={"timeout_s": 240.0})
    closing.start()
    closing.join(30)  # liveness only: before, close() waited its whole timeout
    assert not closing.is_alive()
    assert attempts + 1 == len(collector.requests)  # the one last try close() asks for
    assert 1 == sink.stats["backlog"] and 1 == len(list((tmp_path / sink.name).glob("*.json")))


def test_hec_indexer_acknowledgement(tmp_path: Path, make_event: Factory, collector: FakeCollector) -> None:
    """With ack=true every request goes on one channel, and a batch is delivered (and leaves
    the spool) only once HEC's ack endpoint confirms its ackId; an ackId the indexers never
    confirm is sent again after ack_timeout_s. Every event ends up indexed."""
    collector.ack = True
    release = threading.Event()
    collector.indexed = lambda ack_id, poll: ack_id != 0 and release.is_set() and poll >= 2  # request 0 is lost
    sink = build_sink(f"{collector.url}/services/collector/event?token=t&ack=true&ack_timeout_s=0.5&batch=5&{FAST}",
                      spool_dir=tmp_path)
    events = [make_event(i) for i in range(8)]
    for event in events:
        sink.publish(event)
    assert not sink.flush(1.0)  # accepted by HEC, not yet by the indexers
    assert (0, 8) == (sink.stats["delivered"], sink.stats["backlog"])
    assert len(collector.accepted) >= 1
    release.set()
    assert sink.flush(10.0)
    sink.close()
    assert (8, 0) == (sink.stats["delivered"], sink.stats["backlog"])
    assert [e.event_id for e in events] == [e["event"]["event"]["id"] for e in collector.accepted_events(acked=True)]
    channels = {r["headers"].get("X-Splunk-Request-Channel") for r in collector.requests}
    assert 1 == len(channels) and None not in channels
    assert collector.ack_polls[0] >= 2 and 0 not in collector.acked_ids  # polled, never confirmed, sent again
    assert not list((tmp_path / sink.name).glob("*.json"))


def test_hec_ack_on_a_token_without_it_is_named(tmp_path: Path, make_event: Factory, collector: FakeCollector) -> None:
    """ack=true against a token with acknowledgement off (no ackId in the answer) disables the
    sink with the reason, and keeps the event spooled."""
    sink = build_sink(f"{collector.url}/services/collector?token=t&ack=true&{FAST}", spool_dir=tmp_path)
    with structlog.testing.capture_logs() as logs:
        sink.publish(make_event(0))
        assert not sink.flush(5.0)
        sink.close(0.5)
    disabled = next(entry for entry in logs if entry["event"] == "sink_disabled")
    assert "indexer acknowledgement is off for this token" in disabled["reason"]
    assert 1 == sink.stats["backlog"]


def test_http_timeout_is_retried(tmp_path: Path, make_event: Factory, collector: FakeCollector) -> None:
    """A collector that hangs past timeout_s counts as a failed attempt, not a stuck sink."""
    collector.delay_s = lambda n: 1.0 if n == 0 else 0.0
    sink = build_sink(f"{collector.url}/services/collector?token=t&timeout_s=0.2&backoff_s=0.05",
                      spool_dir=tmp_path)
    sink.publish(make_event(0))
    assert sink.flush(5.0)
    sink.close()
    assert sink.stats["retries"] >= 1
    # the hung request may have been accepted after we gave up: at-least-once, same id
    assert {e["event"]["event"]["id"] for e in collector.accepted_events()} == {make_event(0).event_id}


@pytest.mark.parametrize(("fmt", "content_type"), [("ecs", "application/json"), ("cef", "text/plain; charset=utf-8")])
def test_webhook_posts_one_event_per_request(tmp_path: Path, make_event: Factory, collector: FakeCollector,
                                             fmt: str, content_type: str) -> None:
    sink = build_sink(f"webhook+{collector.url}/hooks/netad?token=tok&format={fmt}&{FAST}", spool_dir=tmp_path)
    for i in range(3):
        sink.publish(make_event(i))
    assert sink.flush(5.0)
    sink.close()
    assert len(collector.requests) == 3
    request = collector.requests[0]
    assert request["path"] == "/hooks/netad"
    assert request["headers"]["Authorization"] == "Bearer tok"
    assert request["headers"]["Content-Type"] == content_type
    if fmt == "ecs":
        assert json.loads(request["body"])["event"]["id"] == make_event(0).event_id
    else:
        assert request["body"].startswith(b"CEF:0|netad|netad|")
