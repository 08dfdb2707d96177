"""The open and recent incidents, as the incident page and `netad explain` show them.

Where it stands: fed by the incident board (board.py) with each incident event (its ECS
document, as the sinks write it) and, for every anomalous window of an open incident, that
window's evidence ranked by cause; or read back from a sink's ECS JSON lines
(`from_ecs_lines`). An entry is one incident: its latest ECS document, how many events it
has had, and the evidence of all its anomalous windows merged: per flow (by Community ID) its
packets, the windows it was seen in and the first and last of them, and the feature it
explains most; per peer and port their packets. An evidence flow's times are those of the
windows it was seen in (the window stage keeps no time per flow).

Bounded: at most MAX_INCIDENTS entries (the longest resolved go first, then the oldest open),
MAX_FLOWS flows, peers and ports and MAX_WINDOWS windows each. Saved as JSON in the state
directory (atomically), so a page after a restart still lists them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from detector.contracts import added_up

MAX_INCIDENTS = 500
MAX_FLOWS = 50
MAX_WINDOWS = 240
FORMAT = 1
OPEN, RESOLVED = "open", "resolved"
STALE = "stale"  # open when the process stopped, but its incident did not come back with the checkpoint


def dig(doc: Any, path: str, default: Any = None) -> Any:
    """doc["a"]["b"] for "a.b", `default` where any step is missing or not a mapping."""
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return default
        doc = doc[part]
    return doc


def number(value: Any) -> float | None:
    """A finite float, or None."""
    if isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if math.isfinite(out) else None


@dataclass
class Entry:
    """One incident (module text). The fields the list shows come from its latest ECS document."""

    incident_id: str
    scope: str = ""  # the sensor whose entity it is (its id, the ECS observer.name)
    status: str = OPEN
    events: int = 0
    ecs: dict[str, Any] = field(default_factory=dict)
    flows: dict[str, dict[str, Any]] = field(default_factory=dict)  # Community ID -> merged flow
    peers: dict[str, dict[str, Any]] = field(default_factory=dict)  # address -> merged peer
    ports: dict[str, dict[str, Any]] = field(default_factory=dict)  # "proto/port" -> merged port
    windows: list[dict[str, Any]] = field(default_factory=list)  # the anomalous windows, oldest first

    # ------------------------------------------------------------------ what the ECS document says
    @property
    def entity(self) -> str:
        return str(dig(self.ecs, "netad.entity", ""))

    @property
    def entity_class(self) -> str:
        return str(dig(self.ecs, "netad.entity_class", ""))

    @property
    def category(self) -> str:
        return str(dig(self.ecs, "netad.category", "") or dig(self.ecs, "rule.category", "") or "")

    @property
    def severity(self) -> str:
        return str(dig(self.ecs, "netad.severity", ""))

    @property
    def score(self) -> float | None:
        return number(dig(self.ecs, "netad.score"))

    @property
    def threshold(self) -> float | None:
        return number(dig(self.ecs, "netad.threshold"))

    @property
    def window_alone(self) -> float | None:
        """The peak window's own score where it stayed under the threshold and the run of
        windows before it crossed (IncidentEvent.added_up); None otherwise."""
        window = number(dig(self.ecs, "netad.window_score"))
        return window if added_up(window, self.threshold, self.score) else None

    @property
    def first_seen(self) -> str:
        return str(dig(self.ecs, "event.start", ""))

    @property
    def last_seen(self) -> str:
        """The end of its latest anomalous window: the last event's, or a later window's the
        board merged since (updates are sent only now and then)."""
        last = str(dig(self.ecs, "event.end", ""))
        if self.windows and str(self.windows[-1].get("end", "")) > last:
            return str(self.windows[-1]["end"])
        return last

    @property
    def anomalous_windows(self) -> int | None:
        value = number(dig(self.ecs, "netad.windows"))
        if value is None:
            return len(self.windows) or None
        return max(int(value), len(self.windows))

    @property
    def top_features(self) -> list[dict[str, Any]]:
        features = dig(self.ecs, "netad.top_features", [])
        return [f for f in features if isinstance(f, dict)] if isinstance(features, list) else []

    def ranked_flows(self) -> list[dict[str, Any]]:
        """Merged flows by cause (summed weight), then packets."""
        return sorted(self.flows.values(), key=lambda f: (-(number(f.get("weight")) or 0.0), -(number(f.get("packets")) or 0.0)))

    def ranked_peers(self) -> list[dict[str, Any]]:
        return sorted(self.peers.values(), key=lambda p: (-(number(p.get("weight")) or 0.0), -(number(p.get("packets")) or 0.0)))

    def ranked_ports(self) -> list[dict[str, Any]]:
        return sorted(self.ports.values(), key=lambda p: (-(number(p.get("weight")) or 0.0), -(number(p.get("packets")) or 0.0)))

    # ------------------------------------------------------------------ updates
    def take(self, ecs: dict[str, Any], evidence: bool = True) -> None:
        """The incident's next event, as its ECS document; with `evidence`, its evidence is
        merged if the entry has none yet (all a file of events has: the board merges every
        window's instead)."""
        self.ecs = ecs
        self.events += 1
        action = str(dig(ecs, "event.action", ""))
        self.status = RESOLVED if action.endswith("resolved") else OPEN
        if evidence and not self.flows:
            listed = dig(ecs, "netad.evidence", {})
            listed = listed if isinstance(listed, dict) else {}
            flows: list[dict[str, Any]] = [f for f in listed.get("top_flows", []) or [] if isinstance(f, dict)]
            self.merge_window(self.first_seen, self.last_seen, flows, [1.0 / (1 + i) for i in range(len(flows))],
                              listed.get("top_peers", []) or [], listed.get("top_ports", []) or [])

    def merge_window(self, start: str, end: str, flows: list[dict[str, Any]], weights: list[float],
                     peers: Iterable[Any], ports: Iterable[Any]) -> None:
        """One anomalous window's evidence (its flows' cause weights aligned with `flows`)."""
        for f, w in zip(flows, weights, strict=False):
            cid = str(f.get("community_id", ""))
            if not cid:
                continue
            merged = self.flows.get(cid)
            if merged is None:
                merged = self.flows[cid] = {k: f.get(k) for k in ("community_id", "src", "dst", "sport", "dport", "proto")}
                merged.update(packets=0, windows=0, first=start, last=end, weight=0.0, cause=f.get("cause", ""), best=-1.0)
            merged["packets"] = int((number(merged["packets"]) or 0) + (number(f.get("packets")) or 0))
            merged["windows"] += 1
            merged["first"] = min(str(merged["first"]), start) if merged["first"] else start
            merged["last"] = max(str(merged["last"]), end)
            merged["weight"] = round(float(merged["weight"]) + w, 6)
            if w > float(merged.get("best", -1.0)):
                merged["best"], merged["cause"] = w, f.get("cause", "")
        if len(self.flows) > 2 * MAX_FLOWS:
            self.flows = {f["community_id"]: f for f in self.ranked_flows()[:MAX_FLOWS]}
        for rank, p in enumerate(p for p in peers if isinstance(p, dict)):
            key = str(p.get("ip", ""))
            merged = self.peers.setdefault(key, {"ip": key, "packets": 0, "bytes": 0, "weight": 0.0})
            merged["packets"] = int((number(merged["packets"]) or 0) + (number(p.get("packets")) or 0))
            merged["bytes"] = int((number(merged["bytes"]) or 0) + (number(p.get("bytes")) or 0))
            merged["weight"] = round(float(merged["weight"]) + 1.0 / (1 + rank), 6)
            if isinstance(p.get("domain"), str) and p["domain"]:  # the domain the DNS answered it for
                merged["domain"] = p["domain"]
        for rank, p in enumerate(p for p in ports if isinstance(p, dict)):
            key = f"{p.get('proto', '')}/{p.get('port', '')}"
            merged = self.ports.setdefault(key, {"port": p.get("port"), "proto": p.get("proto"), "packets": 0, "weight": 0.0})
            merged["packets"] = int((number(merged["packets"]) or 0) + (number(p.get("packets")) or 0))
            merged["weight"] = round(float(merged["weight"]) + 1.0 / (1 + rank), 6)
        for table in (self.peers, self.ports):
            if len(table) > 2 * MAX_FLOWS:
                ranked = sorted(table.items(), key=lambda kv: -float(kv[1]["weight"]))[:MAX_FLOWS]
                table.clear()
                table.update(ranked)

    def add_window(self, window: dict[str, Any]) -> None:
        self.windows.append(window)
        del self.windows[:-MAX_WINDOWS]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        entry = cls(incident_id=str(data["incident_id"]), scope=str(data.get("scope", "")), status=str(data.get("status", OPEN)),
                    events=int(data.get("events", 0)), ecs=dict(data.get("ecs") or {}))
        entry.flows = {str(k): dict(v) for k, v in dict(data.get("flows") or {}).items()}
        entry.peers = {str(k): dict(v) for k, v in dict(data.get("peers") or {}).items()}
        entry.ports = {str(k): dict(v) for k, v in dict(data.get("ports") or {}).items()}
        entry.windows = [dict(w) for w in list(data.get("windows") or [])][-MAX_WINDOWS:]
        return entry


class IncidentBook:
    """incident id -> Entry, bounded (module text)."""

    def __init__(self, max_incidents: int = MAX_INCIDENTS) -> None:
        self.max_incidents = max_incidents
        self.entries: dict[str, Entry] = {}
        self._open_of: dict[tuple[str, str], str] = {}  # (scope, entity) -> its open incident

    def take(self, scope: str, ecs: dict[str, Any], evidence: bool = True) -> Entry | None:
        """An incident event's ECS document (Entry.take); the entry it went to (None without an id)."""
        incident_id = str(dig(ecs, "netad.incident_id", "") or "")
        if not incident_id:
            return None
        entry = self.entries.get(incident_id)
        if entry is None:
            entry = self.entries[incident_id] = Entry(incident_id, scope)
        entry.take(ecs, evidence)
        key = (scope, entry.entity)
        if entry.status == OPEN:
            self._open_of[key] = incident_id
        elif self._open_of.get(key) == incident_id:
            del self._open_of[key]
        self._bound()
        return entry

    def reconcile(self, scope: str, open_ids: set[str]) -> int:
        """After a restart: entries of `scope` still open here whose incident the tracker did
        not restore (no checkpoint, or one set aside) become stale; returns how many."""
        stale = 0
        for entry in self.entries.values():
            if entry.scope == scope and entry.status == OPEN and entry.incident_id not in open_ids:
                entry.status = STALE
                self._open_of.pop((scope, entry.entity), None)
                stale += 1
        return stale

    def open_entry(self, scope: str, entity: str) -> Entry | None:
        incident_id = self._open_of.get((scope, entity))
        return self.entries.get(incident_id) if incident_id else None

    def _bound(self) -> None:
        over = len(self.entries) - self.max_incidents
        if over <= 0:
            return
        # resolved first, then open; the longest ago first
        by_age = sorted(self.entries.values(), key=lambda e: (e.status == OPEN, e.last_seen))
        for entry in by_age[:over]:
            del self.entries[entry.incident_id]
            key = (entry.scope, entry.entity)
            if self._open_of.get(key) == entry.incident_id:
                del self._open_of[key]

    def listing(self, entity: str | None = None, category: str | None = None) -> list[Entry]:
        """Entries, open first, then the most recently seen; filtered by exact entity and category."""
        out = [e for e in self.entries.values() if (not entity or e.entity == entity) and (not category or e.category == category)]
        return sorted(out, key=lambda e: (e.status != OPEN, _desc(e.last_seen), e.incident_id))

    def find(self, incident_id: str) -> Entry | None:
        """The entry with this id, or the only one whose id starts with it."""
        if incident_id in self.entries:
            return self.entries[incident_id]
        found = [e for key, e in self.entries.items() if incident_id and key.startswith(incident_id)]
        return found[0] if len(found) == 1 else None

    def categories(self) -> list[str]:
        return sorted({e.category for e in self.entries.values() if e.category})

    # ------------------------------------------------------------------ files
    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "incidents": [e.to_json() for e in self.entries.values()]}

    def save(self, path: Path) -> None:
        with atomic_file(path) as f:
            f.write(json.dumps(self.to_json(), ensure_ascii=False, allow_nan=False).encode("utf-8"))

    @classmethod
    def load(cls, path: Path) -> IncidentBook:
        """What `save` wrote. OSError, ValueError (KeyError, TypeError) when it cannot be used."""
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: not an incident book of format {FORMAT}")
        book = cls()
        for raw in data.get("incidents", []):
            entry = Entry.from_json(raw)
            book.entries[entry.incident_id] = entry
            if entry.status == OPEN:
                book._open_of[(entry.scope, entry.entity)] = entry.incident_id
        book._bound()
        return book

    @classmethod
    def from_ecs_lines(cls, lines: Iterable[str], max_incidents: int = 1_000_000) -> IncidentBook:
        """Incident events a sink wrote, one ECS JSON document a line (lines that are not one
        are skipped: a file cut by a crash)."""
        book = cls(max_incidents)
        for line in lines:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                book.take(str(dig(doc, "observer.name", "") or ""), doc)
        return book


def _desc(iso: str) -> str:
    """A sort key that orders ISO times newest first."""
    return "".join(chr(0x10FFFF - ord(c)) if ord(c) < 0x10FFFF else c for c in iso)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` whole or not at all: written beside it, fsynced,
    renamed over it, the directory fsynced (the page's records survive a power cut as
    they were or as they are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
