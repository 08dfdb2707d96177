"""HTTP sinks against a real local server: a fake Splunk HEC and a generic webhook.

The server is the standard library's threaded http.server on loopback; a policy function
decides each response, so outages (503), refusals (400) and bad tokens (403) are scripted.
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

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client that timed out and hung up: expected in the timeout test
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def accepted_events(self) -> list[Any]:
        """The HEC envelopes (or webhook bodies) of every 2xx request, in arrival order."""
        with self.lock:
            bodies = list(self.accepted)
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as HEC does
    server: FakeCollector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            n = len(self.server.requests)
            self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        time.sleep(self.server.delay_s(n))
        status = self.server.policy(n, body)
        if 200 <= status < 300:
            with self.server.lock:
                self.server.accepted.append(body)
        reply = b'{"text":"Success","code":0}' if status == 200 else b'{"text":"nope","code":9}'
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
    assert all("wrong" not in json.dumps(entry, default=str) for entry in logs), "the token must not be logged"


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
