"""The incident page (service.explain.page, board): every value escaped, whatever it holds;
loopback clients served, others only with the bearer token; filters, the timeline PNG, and
the page mounted on the metrics server beside /metrics."""

from __future__ import annotations

import html.parser
import json
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from detector.config import IncidentPageConfig
from detector.contracts import FeatureContribution, FeatureSchema, IncidentEvent, ScoreBatch, WindowEvidence
from detector.service.explain import page as P
from detector.service.explain.board import IncidentBoard
from detector.service.explain.book import Entry
from detector.service.explain.evidence import CauseRanker
from detector.service.explain.explanation import Explanation
from detector.service.explain.history import Series
from detector.service.metrics import Metrics

# markup, both quotes, an attribute breakout, an event handler, a javascript: URL, NUL, an
# escape sequence, a bidi override, a line separator and a lone surrogate
HOSTILE = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)><a href=\"javascript:alert(3)\">&amp;\x00\x1b[31m\u202e\u2028\udcff"
SCHEMA = FeatureSchema("packet", 2, ("syn_out", "rst_in", "flows_out"), ("packets", "packets", "flows"))
ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "a", "form", "label", "input", "select", "option",
                "button", "table", "thead", "tbody", "tr", "th", "td", "span", "code", "dl", "dt", "dd", "figure", "img", "figcaption",
                "details", "summary", "pre"}


class _Markup(html.parser.HTMLParser):
    """Every tag and attribute a browser would build from the page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))

    def handle_data(self, data):
        self.text.append(data)


def _check_markup(page: str) -> str:
    """The page builds only our own tags and attributes (no script, no handler, no javascript:
    URL, no image but the timeline), holds no raw control or bidi character, and shows the
    hostile text as text; returns the text."""
    for bad in ("\x00", "\x1b", "\u202e", "\u2028", "\udcff"):
        assert bad not in page
    parser = _Markup()
    parser.feed(page)
    for tag, attrs in parser.tags:
        assert tag in ALLOWED_TAGS, tag
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name)
            assert name in {"lang", "charset", "name", "content", "href", "method", "action", "value", "size", "selected", "type",
                            "class", "src", "alt", "width", "height", "open"}, (tag, name)
            if name in ("href", "src", "action"):
                assert "javascript:" not in (value or "").lower()
        if tag == "img":
            assert dict(attrs)["src"].startswith("/incidents/") and dict(attrs)["src"].endswith("/timeline.png")
        if tag == "a":
            assert dict(attrs)["href"].startswith("/incidents")
    text = "".join(parser.text)
    assert "<script>alert(1)</script>" in text  # shown, as text
    return text


def _hostile_entry() -> Entry:
    h = HOSTILE
    ecs = {
        "@timestamp": h, "message": h, "event": {"action": h, "start": h, "end": h, "severity": h},
        "source": {"ip": h}, "destination": {"ip": h},
        "threat": {"technique": {"id": [h], "name": [h]}},
        "observer": {"name": h, "hostname": h, "labels": {"exporter": h, h: h}},
        "netad": {"incident_id": h, "entity": h, "entity_class": h, "category": h, "severity": h, "score": h, "threshold": h,
                  "windows": h, "role": h, "model_version": h,
                  "top_features": [{"name": h, "unit": h, "observed": h, "expected": h, "share": h}],
                  "evidence": {"top_flows": [{"community_id": h}]}},
    }
    entry = Entry(incident_id=h, scope=h, events=3, ecs=ecs)
    entry.flows = {h: {"community_id": h, "src": h, "dst": h, "sport": h, "dport": h, "proto": h, "packets": h, "windows": h,
                       "first": h, "last": h, "cause": h, "weight": 1.0}}
    entry.peers = {h: {"ip": h, "domain": h, "packets": h, "bytes": h, "weight": 1.0}}
    entry.ports = {h: {"port": h, "proto": h, "packets": h, "weight": 1.0}}
    entry.windows = [{"end": h, "score": h, "accumulated": h, "threshold": h,
                      "top_features": [{"name": h, "observed": h, "expected": h}]}]
    return entry


def test_hostile_strings_in_every_field_of_both_pages_are_escaped():
    """Entity, category, severity, times, scores, feature names and units, observed and
    expected values, flows (Community ID, addresses, ports, protocol, times, cause), peers (and their domains),
    ports, windows, ATT&CK, observer labels, the summary and the raw ECS event: each holding
    markup, quotes and control characters, none of it becomes markup."""
    entry = _hostile_entry()
    listing = P.render_list([entry], [HOSTILE], entity=HOSTILE, category=HOSTILE, sensor=HOSTILE, total=1)
    _check_markup(listing)
    page = P.render_incident(Explanation(entry, Series.empty(), 10.0), history_s=3600)
    text = _check_markup(page)
    assert text.count("<script>alert(1)</script>") >= 20  # every field shows it


def _scores(entity: str, score: float, end_ns: int) -> ScoreBatch:
    return ScoreBatch(end_ns - 60 * 10**9, end_ns, [entity], ["host"], np.array([score], np.float32), np.array([2.0], np.float32),
                      np.array([score > 2]), np.array([True]), np.array([[0, 1, 2]]), np.array([[0.5, 0.3, 0.2]], np.float32),
                      np.array([[40.0, 20.0, 41.0]], np.float32), np.array([[0.5, 0.1, 0.4]], np.float32), SCHEMA)


def _event(entity: str, action: str, category: str, observer: dict[str, str], incident_id: str = "inc-0001",
           minute: int = 2) -> IncidentEvent:
    end_ns = minute * 60 * 10**9
    return IncidentEvent(event_id=f"e-{action}", incident_id=incident_id, action=action, entity=entity, entity_class="host",  # type: ignore[arg-type]
                         first_seen_ns=end_ns - 60 * 10**9, last_seen_ns=end_ns, emitted_ns=end_ns, severity="high",
                         severity_score=75, category=category, score=40.0, threshold=2.0, windows=1,
                         top_features=[FeatureContribution("syn_out", "packets", 0.5, 40.0, 0.5)],
                         evidence=WindowEvidence(top_flows=[{"community_id": "1:abc=", "src": entity, "dst": "10.0.0.9", "sport": 5,
                                                             "dport": 6, "proto": "tcp", "packets": 2, "cause": category}]),
                         rule_id="netad-lstm-ae", rule_name=category, observer=observer, role="originator", originator=entity,
                         target="10.0.0.9")


def _board(tmp_path: Path, token: str | None = None, **settings) -> IncidentBoard:
    token_file = None
    if token is not None:
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")
    cfg = IncidentPageConfig(enabled=True, token_file=token_file, **settings)
    return IncidentBoard(cfg, SCHEMA, 10.0, tmp_path / "state", save_interval_s=60.0, scope="sensor-1")


def _feed(board: IncidentBoard, events: list[IncidentEvent], entity: str, minute: int = 2, score: float = 40.0) -> None:
    scoring = SimpleNamespace(causes=CauseRanker())
    board._on_window(scoring, "sensor-1", SimpleNamespace(), _scores(entity, score, minute * 60 * 10**9), events)  # type: ignore[arg-type]


def test_hostile_values_from_traffic_and_flow_records_reach_the_page_escaped(tmp_path: Path):
    """Through the daemon's own path: an incident event whose entity, category and exporter
    label are hostile (as a flow record or a rule file could make them) is put in the book as
    its ECS document and served escaped, list and incident page alike."""
    board = _board(tmp_path)
    entity = "10.0.0.1" + HOSTILE
    _feed(board, [_event(entity, "opened", HOSTILE, {"name": "sensor-1", "hostname": HOSTILE, "exporter": HOSTILE})], entity)
    listing = board.handle("/incidents", {}, "127.0.0.1")
    assert 200 == listing.status and "nosniff" == listing.headers["X-Content-Type-Options"]
    assert "default-src 'none'" in listing.headers["Content-Security-Policy"]
    _check_markup(listing.body.decode())
    page = board.handle("/incidents/inc-0001", {}, "127.0.0.1")
    assert 200 == page.status
    _check_markup(page.body.decode())


def test_loopback_clients_are_served_others_need_the_bearer_token(tmp_path: Path):
    """Without a token file only loopback clients (127/8, ::1, ::ffff:127.0.0.1) see the
    page; with one, others must send `Authorization: Bearer <token>`."""
    open_board = _board(tmp_path)
    for client in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert 200 == open_board.handle("/incidents", {}, client).status
    assert 403 == open_board.handle("/incidents", {"Authorization": "Bearer x"}, "192.0.2.7").status
    board = _board(tmp_path, token="s3cret-token")
    assert 401 == board.handle("/incidents", {}, "192.0.2.7").status
    assert 401 == board.handle("/incidents", {"Authorization": "Bearer wrong"}, "192.0.2.7").status
    assert 401 == board.handle("/incidents/x/timeline.png", {"authorization": "Basic s3cret-token"}, "2001:db8::1").status
    assert 200 == board.handle("/incidents", {"authorization": "Bearer s3cret-token"}, "192.0.2.7").status


def test_the_list_filters_by_entity_and_category_and_unknown_ids_are_404(tmp_path: Path):
    board = _board(tmp_path)
    _feed(board, [_event("10.0.0.1", "opened", "scan", {"name": "sensor-1"}, "inc-scan")], "10.0.0.1")
    _feed(board, [_event("10.0.0.2", "opened", "flood", {"name": "sensor-1"}, "inc-flood")], "10.0.0.2")

    def listed(query: str) -> str:
        return board.handle(f"/incidents{query}", {}, "127.0.0.1").body.decode()

    assert "inc-scan" in listed("") and "inc-flood" in listed("")
    assert "inc-scan" in listed("?entity=10.0.0.1") and "inc-flood" not in listed("?entity=10.0.0.1")
    assert "inc-flood" in listed("?category=flood&entity=") and "inc-scan" not in listed("?category=flood")
    assert "No incident matches" in listed("?category=sweep")
    assert 404 == board.handle("/incidents/no-such-incident", {}, "127.0.0.1").status
    assert 404 == board.handle("/incidents/inc-scan/other.png", {}, "127.0.0.1").status
    png = board.handle("/incidents/inc-scan/timeline.png", {}, "127.0.0.1")
    assert 200 == png.status and "image/png" == png.headers["Content-Type"] and png.body.startswith(b"\x89PNG\r\n\x1a\n")


def test_the_book_and_history_survive_a_restart(tmp_path: Path):
    """What the board saved in the state directory is there again after a restart: the
    incident, its windows and its entity's score history (an open incident the tracker did not
    restore is marked stale); a replay resumed midway drops what it will see again."""
    board = _board(tmp_path)
    for minute in range(1, 30):
        _feed(board, [], "10.0.0.1", minute=minute, score=1.0)
    _feed(board, [_event("10.0.0.1", "opened", "scan", {"name": "sensor-1"}, "inc-scan", minute=31)], "10.0.0.1", minute=31)
    board.close()
    again = _board(tmp_path)
    again.restore(until_s=None)
    x = again.explanation("inc-scan")
    assert x is not None and 30 == len(x.series) and 1 == len(x.entry.windows)
    assert "30 window scores" in again.handle("/incidents/inc-scan", {}, "127.0.0.1").body.decode()
    assert 1 == again.book.reconcile("sensor-1", open_ids=set())  # its incident did not come back with the checkpoint
    assert ">stale<" in again.handle("/incidents", {}, "127.0.0.1").body.decode()
    resumed = _board(tmp_path)
    resumed.restore(until_s=20 * 60)
    assert resumed.explanation("inc-scan") is None  # it began after the resume point: the replay sees it again
    assert 20 == len(resumed.history.series("sensor-1", "10.0.0.1"))  # type: ignore[union-attr]


def test_the_page_is_mounted_beside_the_metrics(tmp_path: Path):
    """A real HTTP server: /incidents from the board, /metrics as before, other paths 404;
    a page that fails answers 500 and the server goes on."""
    board = _board(tmp_path)
    _feed(board, [_event("10.0.0.1", "opened", "scan", {"name": "sensor-1"})], "10.0.0.1")
    metrics = Metrics(lambda: {"pipeline": {"packets": 3}})
    metrics.mount("/incidents", board.handle)
    metrics.mount("/broken", lambda path, headers, client: 1 / 0)  # type: ignore[arg-type,return-value]
    host, port = metrics.serve("127.0.0.1:0")
    try:
        base = f"http://{host}:{port}"
        with urllib.request.urlopen(f"{base}/incidents?entity=10.0.0.1", timeout=5) as r:
            assert "text/html; charset=utf-8" == r.headers["Content-Type"] and b"inc-0001" in r.read()
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
            assert b"netad_packets_total 3.0" in r.read()
        for path, code in (("/broken", 500), ("/incidentsX", 404), ("/incidents/none", 404)):
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(base + path, timeout=5)
            exc.value.close()
            assert code == exc.value.code
        with urllib.request.urlopen(f"{base}/incidents/inc-0001", timeout=5) as r:
            assert b"Raw ECS event" in r.read()
    finally:
        metrics.close()


def test_raw_ecs_event_is_the_sinks_document():
    """The page's raw event is the ECS document as the sinks wrote it (pretty-printed)."""
    entry = Entry("inc-1", "s", ecs={"netad": {"incident_id": "inc-1", "entity": "10.0.0.1"}, "event": {"action": "incident-opened"}})
    page = P.render_incident(Explanation(entry, Series.empty()))
    assert json.dumps(entry.ecs, indent=2).replace('"', "&quot;") in page


def test_the_terminal_explanation_prints_hostile_values_inert():
    """`netad explain` prints the same fields: escape sequences, NUL, line breaks, bidi
    overrides and lone surrogates never reach the terminal (they could repaint it)."""
    from detector.service.explain.text import render_text

    out = render_text(Explanation(_hostile_entry(), Series.empty(), 10.0), png="/tmp/x\x1b[2J.png")
    for bad in ("\x00", "\x1b", "\u202e", "\u2028", "\udcff"):
        assert bad not in out
    assert out.count("<script>alert(1)</script>") >= 10
    out.encode("utf-8")  # printable: no lone surrogate left


def test_a_peak_window_under_the_threshold_says_the_windows_before_it_added_up():
    """An incident flagged on what a run of windows added up shows its peak window's own
    score beside the accumulated one, on the page and in `netad explain`; one whose window
    crossed alone does not."""
    from detector.service.explain.text import render_text

    def entry(window_score: float) -> Entry:
        return Entry("inc-1", "s", ecs={"event": {"action": "incident-opened"},
                                        "netad": {"incident_id": "inc-1", "entity": "10.0.0.1", "score": 0.231,
                                                  "window_score": window_score, "threshold": 0.179}})

    said = "its window alone 0.139: the windows before it added up"
    added = Explanation(entry(0.139), Series.empty())
    assert said in P.render_incident(added) and said in render_text(added)
    alone = Explanation(entry(0.231), Series.empty())
    assert "added up" not in P.render_incident(alone) and "added up" not in render_text(alone)


def test_a_window_flagged_on_what_its_run_carried_in_is_drawn_and_listed_with_it(tmp_path: Path):
    """Through the board: a window that scored 1.5 alone, under its threshold of 2, flagged
    with 2.6 carried in. The timeline's history keeps what was compared with the threshold,
    as its anomalous mark says; the incident's window list keeps both."""
    import dataclasses

    board = _board(tmp_path)
    scoring = SimpleNamespace(causes=CauseRanker())
    batch = dataclasses.replace(_scores("10.0.0.1", 1.5, 3 * 60 * 10**9), anomalous=np.array([True]),
                                accumulated=np.array([2.6], np.float32))
    board._on_window(scoring, "sensor-1", SimpleNamespace(), batch,  # type: ignore[arg-type]
                     [_event("10.0.0.1", "opened", "new-service", {"name": "sensor-1"}, "inc-run", minute=3)])
    x = board.explanation("inc-run")
    assert x is not None
    assert [2.6] == [round(float(v), 3) for v in x.series.score]
    assert {"score": 1.5, "accumulated": 2.6} == {k: x.entry.windows[-1][k] for k in ("score", "accumulated")}
    page = board.handle("/incidents/inc-run", {}, "127.0.0.1").body.decode()
    assert "with what earlier windows carried in" in page and ">2.6<" in page and ">1.5<" in page
