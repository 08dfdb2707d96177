"""One incident's explanation, whatever it is read from: what the incident page and `netad
explain` show.

Where it stands: between the records (book.Entry, history.Series) and their two views
(page.py, text.py). A running daemon's board builds it from memory; `netad explain` from what
a stopped daemon left in its state directory (STATE_SUBDIR: the incident book and the score
history the board saved), from a sink's ECS JSON lines, and from a window-scores file.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.service.explain.book import Entry, IncidentBook, dig, number
from detector.service.explain.history import ANOMALOUS, READY, Series

STATE_SUBDIR = "incident_page"  # in the state directory, beside the checkpoint
BOOK_FILE = "incidents.json"
HISTORY_FILE = "history.npz"


def parse_iso(text: Any) -> float | None:
    """Seconds since the epoch of an ISO 8601 time ("2023-11-15T00:22:00.000Z"); None if not one."""
    if not isinstance(text, str) or not text:
        return None
    try:
        stamp = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


def iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(float(seconds), tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Explanation:
    """An incident (its book entry) and its entity's window scores (oldest first); `bin_s` is
    the bin the features' observed and expected values are per (0 when unknown)."""

    entry: Entry
    series: Series
    bin_s: float = 0.0

    @property
    def start_s(self) -> float | None:
        return parse_iso(self.entry.first_seen)

    @property
    def end_s(self) -> float | None:
        return parse_iso(self.entry.last_seen)

    @property
    def per_bin(self) -> str:
        return f"per {self.bin_s:g} s bin" if self.bin_s > 0 else "per bin"

    @property
    def peak(self) -> tuple[float, float, float] | None:
        """(time s, score, threshold) of the incident's peak as its last event says, for a
        timeline without window scores."""
        when = self.end_s
        score, threshold = self.entry.score, self.entry.threshold
        if when is None or score is None or threshold is None:
            return None
        return when, score, threshold

    def covers_incident(self) -> bool:
        """Whether the window scores reach into the incident."""
        start, end = self.start_s, self.end_s
        if not len(self.series) or start is None or end is None:
            return False
        return bool(((self.series.end_s > start) & (self.series.end_s <= end + 1)).any())

    def roles(self) -> dict[str, str]:
        """role, originator (ECS source.ip), target (destination.ip), when the event has them."""
        out = {"role": str(dig(self.entry.ecs, "netad.role", "") or "")}
        out["originator"] = str(dig(self.entry.ecs, "source.ip", "") or "")
        out["target"] = str(dig(self.entry.ecs, "destination.ip", "") or "")
        return out

    def techniques(self) -> list[tuple[str, str]]:
        """ATT&CK (id, name) pairs of the event's threat.technique."""
        ids = dig(self.entry.ecs, "threat.technique.id", []) or []
        names = dig(self.entry.ecs, "threat.technique.name", []) or []
        if not isinstance(ids, list):
            return []
        names = names if isinstance(names, list) else []
        return [(str(i), str(names[k]) if k < len(names) else "") for k, i in enumerate(ids)]


def ratio(observed: Any, expected: Any) -> str:
    """How many times the expected value the observed one is, for a reader."""
    o, e = number(observed), number(expected)
    if o is None or e is None:
        return ""
    if e <= 0:
        return "new" if o > 0 else ""
    return f"{o / e:,.1f}x"


def added_up(e: Entry) -> str:
    """What the peak score says when a run of windows crossed the threshold and its peak window
    alone did not: ", its window alone 0.139: the windows before it added up"; "" otherwise."""
    window = e.window_alone
    return "" if window is None else f", its window alone {fmt(window)}: the windows before it added up"


def fmt(value: Any) -> str:
    """A number for a reader: 3 significant digits, thousands grouped; '' if not a number."""
    x = number(value)
    if x is None:
        return "" if value is None else str(value)
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


# --------------------------------------------------------------------------------------------- files

def load_book(path: Path) -> IncidentBook:
    """A book the board saved, or a sink's ECS JSON lines (a file that is not one of the first
    is read as the second)."""
    try:
        return IncidentBook.load(path)
    except (ValueError, KeyError, TypeError):
        with path.open(encoding="utf-8", errors="replace") as f:
            return IncidentBook.from_ecs_lines(f)


def series_from_scores(lines: Iterable[str], scope: str, entity: str, horizon_s: float | None = None) -> Series:
    """An entity's rows from a window-scores file (`outputs.scores` JSON lines; a Kafka
    scorer's carry the sensor first): the window end, score, threshold, flags and top feature."""
    needle = json.dumps(entity)
    rows: list[tuple[float, float, float, int, str, float, float]] = []
    for line in lines:
        if needle not in line:
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if not isinstance(doc, dict) or doc.get("entity") != entity or (scope and doc.get("sensor", scope) != scope):
            continue
        end = parse_iso(doc.get("window_end"))
        if end is None:
            continue
        top = doc.get("top_features") or []
        first = top[0] if isinstance(top, list) and top and isinstance(top[0], dict) else {}
        flags = (ANOMALOUS if doc.get("anomalous") else 0) | (READY if doc.get("ready") else 0)
        compared = doc.get("accumulated", doc.get("score"))  # what the threshold was compared with, as the daemon's history keeps
        rows.append((end, number(compared) or float("nan"), number(doc.get("threshold")) or float("nan"), flags,
                     str(first.get("name", "")), number(first.get("observed")) or float("nan"),
                     number(first.get("expected")) or float("nan")))
    rows.sort(key=lambda r: r[0])
    if horizon_s is not None and rows:
        rows = [r for r in rows if r[0] >= rows[-1][0] - horizon_s]
    if not rows:
        return Series.empty()
    cols = list(zip(*rows, strict=True))
    return Series(np.asarray(cols[0], np.uint32), np.asarray(cols[1], np.float32), np.asarray(cols[2], np.float32),
                  np.asarray(cols[3], np.uint8), list(cols[4]), np.asarray(cols[5], np.float32), np.asarray(cols[6], np.float32))
