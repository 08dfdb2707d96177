"""The incident board: what a running daemon (or Kafka scorer) knows about its incidents, kept
for the incident page and for `netad explain`, and the page's HTTP handler.

Where it stands: a watcher of Scoring stages (service.scoring: told of every scored window
after its events were published), read by the metrics server's HTTP threads (one lock
guards both sides; what a request reads it copies, then renders outside the lock). Per window
it adds a row per entity to the score history (history.py) and puts the window's incident
events (their ECS documents) and, for every anomalous window of an open incident, that
window's evidence ranked by cause (evidence.CauseRanker) into the incident book (book.py).

Both are saved in the state directory, under STATE_SUBDIR, beside the checkpoint: the book
every `service.checkpoint_interval_s`, the history (larger) at least HISTORY_SAVE_S apart, both
when the process closes; they are read back at start-up, so a page after a restart still
shows history. A replay that starts over (no checkpoint to resume) starts them afresh too; one
that resumes drops what lies after its resume point.

The page (`service.incident_page.enabled`, on `service.metrics_address`): clients on a
loopback address are served; any other must send `Authorization: Bearer <token>` with the
token from `service.incident_page.token_file` (without a token file they are refused).
"""

from __future__ import annotations

import copy
import hmac
import ipaddress
import threading
import time
import urllib.parse
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np
import structlog

from detector.alerting.formats import to_ecs
from detector.config import Config, IncidentPageConfig
from detector.contracts import FeatureSchema, IncidentEvent, ScoreBatch, WindowBatch, ns_to_iso
from detector.errors import ConfigError
from detector.service.explain import page as P
from detector.service.explain.book import IncidentBook
from detector.service.explain.explanation import BOOK_FILE, HISTORY_FILE, STATE_SUBDIR, Explanation, parse_iso
from detector.service.explain.history import ScoreHistory, Series
from detector.service.explain.timeline import timeline_png
from detector.service.lifecycle import Lifecycle
from detector.service.metrics import Response
from detector.service.scoring import Scoring

log = structlog.get_logger()

HISTORY_SAVE_S = 300.0  # the history is saved at most this often (and when the process closes)
_PNG_CACHE = 32


class IncidentBoard:
    """See the module text. `schema` and `bin_s` are those of the windows it is told of."""

    def __init__(self, settings: IncidentPageConfig, schema: FeatureSchema, bin_s: float, state_dir: Path | None,
                 save_interval_s: float, scope: str = "") -> None:
        self.settings = settings
        self.scope = scope
        self.lock = threading.Lock()
        self.history = ScoreHistory(settings.history_s, int(settings.history_mb * 2**20), schema.features, schema.units, bin_s) \
            if settings.history_mb > 0 else None
        self.book = IncidentBook()
        self.directory = state_dir / STATE_SUBDIR if state_dir is not None else None
        self.save_interval_s = save_interval_s
        self._next_book_save = self._next_history_save = 0.0
        self._dirty = self._history_dirty = False
        self._token: bytes | None = None
        self._png: dict[tuple[str, int, int], bytes] = {}
        self._png_lock = threading.Lock()
        if settings.token_file is not None:
            try:
                self._token = settings.token_file.read_bytes().strip()
            except OSError as exc:
                raise ConfigError(f"service.incident_page.token_file: cannot read {settings.token_file}: {exc.strerror or exc}") from None
            if not self._token:
                raise ConfigError(f"service.incident_page.token_file: {settings.token_file} is empty")

    # ------------------------------------------------------------------ start and stop
    @classmethod
    def start(cls, cfg: Config, lifecycle: Lifecycle, schema: FeatureSchema, live: bool, resume_ns: int | None,
              scope: str) -> IncidentBoard:
        """A board from the config: its files read back (module text), its page mounted on the
        lifecycle's metrics server (before that is served), saved when the process closes."""
        settings = cfg.service.incident_page
        if settings.enabled and not cfg.service.metrics_address:
            raise ConfigError("service.incident_page.enabled: needs service.metrics_address (the page is served there)")
        board = cls(settings, schema, cfg.windows.bin_s, cfg.state_dir, cfg.service.checkpoint_interval_s, scope)
        if live or resume_ns is not None:
            board.restore(until_s=None if live or resume_ns is None else resume_ns / 1e9)
        else:
            log.info("incident_page_fresh", reason="a replay that starts over starts its incident history over")
        if settings.enabled:
            lifecycle.mount(P.PREFIX, board.handle)
        lifecycle.on_close.append(board.close)
        return board

    def watch(self, scoring: Scoring, scope: str | None = None) -> None:
        """Be told of every window `scoring` scores; its entities are `scope`'s (a sensor id)."""
        scoring.watchers.append(partial(self._on_window, scoring, self.scope if scope is None else scope))

    def restore(self, until_s: float | None) -> None:
        if self.directory is None:
            return
        book, history = self.directory / BOOK_FILE, self.directory / HISTORY_FILE
        with self.lock:
            if book.exists():
                try:
                    self.book = IncidentBook.load(book)
                    if until_s is not None:  # a resumed replay: what it will see again is not kept
                        for entry in list(self.book.entries.values()):
                            first = parse_iso(entry.first_seen)
                            if first is not None and first >= until_s:
                                del self.book.entries[entry.incident_id]
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    log.warning("incident_book_unusable", path=str(book), reason=str(exc))
                    self.book = IncidentBook()
            if history.exists() and self.history is not None:
                try:
                    rows = self.history.restore(history, until_s=until_s)
                except (OSError, ValueError, KeyError) as exc:
                    log.warning("incident_history_unusable", path=str(history), reason=str(exc))
                else:
                    log.info("incident_history_restored", rows=rows, incidents=len(self.book.entries))

    def save(self, history: bool = True) -> None:
        """The book (and the history) to the state directory."""
        if self.directory is None:
            return
        started = time.perf_counter()
        with self.lock:
            self.book.save(self.directory / BOOK_FILE)
            self._dirty = False
            rows = None
            if history and self.history is not None:
                rows = self.history.save(self.directory / HISTORY_FILE)
                self._history_dirty = False
        log.debug("incident_page_saved", incidents=len(self.book.entries), history_rows=rows,
                  seconds=round(time.perf_counter() - started, 4))

    def close(self) -> None:
        try:
            self.save()
        except OSError as exc:
            log.error("incident_page_save_failed", reason=str(exc))

    # ------------------------------------------------------------------ the run loop's side
    def _on_window(self, scoring: Scoring, scope: str, window: WindowBatch, scores: ScoreBatch, events: list[IncidentEvent]) -> None:
        with self.lock:
            if self.history is not None and len(scores):
                top = scores.top_index[:, 0] if scores.top_index.shape[1] else np.full(len(scores), -1)
                observed = scores.top_observed[:, 0] if scores.top_observed.shape[1] else np.zeros(len(scores))
                expected = scores.top_expected[:, 0] if scores.top_expected.shape[1] else np.zeros(len(scores))
                self.history.add(scores.window_end_ns, scope, scores.entities, scores.compared, scores.thresholds, scores.anomalous,
                                 scores.ready, top, observed, expected)
                self._history_dirty = True
            for event in events:
                self.book.take(scope, to_ecs(event), evidence=False)
                self._dirty = True
            anomalous = np.flatnonzero(scores.anomalous)
            if anomalous.size:
                self._merge(scoring, scope, scores, anomalous)
        now = time.monotonic()
        if self.directory is None or now < self._next_book_save or not (self._dirty or self._history_dirty):
            return
        history = self._history_dirty and now >= self._next_history_save
        try:
            self.save(history=history)
        except OSError as exc:  # a full disk must not stop the capture; the next interval tries again
            log.error("incident_page_save_failed", reason=str(exc))
        self._next_book_save = now + self.save_interval_s
        if history:
            self._next_history_save = now + max(self.save_interval_s, HISTORY_SAVE_S)

    def _merge(self, scoring: Scoring, scope: str, scores: ScoreBatch, rows: np.ndarray) -> None:
        """Each anomalous window of an open incident: its evidence by cause, and the window."""
        start, end = ns_to_iso(scores.window_start_ns), ns_to_iso(scores.window_end_ns)
        names, units = scores.schema.features, scores.schema.units
        for i in rows.tolist():
            entity = scores.entities[i]
            entry = self.book.open_entry(scope, entity)
            if entry is None:
                continue
            ranked = scoring.causes.ranked(entity)
            if ranked is not None:
                entry.merge_window(start, end, ranked.flows, ranked.weights, ranked.peers, ranked.ports)
            top = [{"name": names[k], "unit": units[k], "share": round(float(sh), 4), "observed": round(float(ob), 3),
                    "expected": round(float(ex), 3)}
                   for k, sh, ob, ex in zip(scores.top_index[i].tolist(), scores.top_share[i].tolist(), scores.top_observed[i].tolist(),
                                            scores.top_expected[i].tolist(), strict=True)]
            entry.add_window(P.window_row(scores.window_end_ns, float(scores.scores[i]), float(scores.compared[i]),
                                          float(scores.thresholds[i]), top))
            self._dirty = True

    # ------------------------------------------------------------------ the page (HTTP threads)
    def allowed(self, headers: Mapping[str, str], client: str) -> Response | None:
        """None if the client may see the page, else the answer it gets."""
        if _loopback(client):
            return None
        if self._token is None:
            return Response(403, P.render_message(403, "The incident page answers loopback clients only; set "
                                                  "service.incident_page.token_file to serve others.").encode(), dict(P.HEADERS))
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("utf-8", "replace"), self._token):
            return None
        return Response(401, P.render_message(401, "A bearer token is needed.").encode(),
                        {**P.HEADERS, "WWW-Authenticate": 'Bearer realm="netad"'})

    def handle(self, path: str, headers: Mapping[str, str], client: str) -> Response:
        """GET /incidents[?entity=&category=], /incidents/ID, /incidents/ID/timeline.png."""
        refused = self.allowed(headers, client)
        if refused is not None:
            return refused
        parts = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(parts.query)
        rest = parts.path[len(P.PREFIX):].strip("/")
        if not rest:
            entity, category = (query.get(k, [""])[0].strip() for k in ("entity", "category"))
            with self.lock:
                entries = self.book.listing(entity or None, category or None)
                categories, total = self.book.categories(), len(self.book.entries)
                body = P.render_list(entries, categories, entity, category, self.scope, total)
            return Response(200, body.encode("utf-8"), dict(P.HEADERS))
        segments = rest.split("/")
        incident_id = urllib.parse.unquote(segments[0])
        explanation = self.explanation(incident_id)
        if explanation is None or len(segments) > 2 or (len(segments) == 2 and segments[1] != "timeline.png"):
            return Response(404, P.render_message(404, f"No incident {incident_id!r} here.").encode("utf-8"), dict(P.HEADERS))
        if len(segments) == 2:
            return Response(200, self._png_of(explanation), {"Content-Type": "image/png", "Cache-Control": "no-store",
                                                              "X-Content-Type-Options": "nosniff"})
        history_s = self.history.history_s if self.history is not None else 0.0
        return Response(200, P.render_incident(explanation, history_s).encode("utf-8"), dict(P.HEADERS))

    def explanation(self, incident_id: str) -> Explanation | None:
        """An incident's explanation, copied under the lock."""
        with self.lock:
            entry = self.book.find(incident_id)
            if entry is None:
                return None
            entry = copy.deepcopy(entry)
            series = self.history.series(entry.scope, entry.entity) if self.history is not None else None
            bin_s = self.history.bin_s if self.history is not None else 0.0
        return Explanation(entry, series if series is not None else Series.empty(), bin_s)

    def _png_of(self, x: Explanation) -> bytes:
        key = (x.entry.incident_id, x.entry.events, int(x.series.end_s[-1]) if len(x.series) else 0)
        with self._png_lock:
            png = self._png.get(key)
        if png is None:
            png = timeline_png(x.series, x.entry.entity, x.start_s, x.end_s, x.peak,
                               title=f"{x.entry.entity}: window scores against the threshold ({x.entry.category or 'anomaly'})")
            with self._png_lock:
                if len(self._png) >= _PNG_CACHE:
                    self._png.pop(next(iter(self._png)))
                self._png[key] = png
        return png


def attach_board(cfg: Config, scoring: Scoring, lifecycle: Lifecycle, live: bool) -> IncidentBoard:
    """The daemon's board over its Scoring stage (call after a checkpoint is restored, before
    the metrics are served): one line in the daemon."""
    board = IncidentBoard.start(cfg, lifecycle, scoring.bundle.schema, live, scoring.last_window_end_ns, cfg.sensor.id)
    restored = {str(e["incident"]["incident_id"]) for e in scoring.tracker.state_dict().values() if e.get("incident")}
    with board.lock:
        board.book.reconcile(board.scope, restored)
    board.watch(scoring)
    return board


def _loopback(client: str) -> bool:
    try:
        address = ipaddress.ip_address(client.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
