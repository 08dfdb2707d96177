"""Incident lifecycle: anomalous window scores -> opened / updated / resolved incident events.

The stage after the scorer. One incident per entity per episode: consecutive anomalous
windows of a host extend one incident instead of opening new ones; `resolve_after_windows`
quiet windows resolve it. A window that does not alarm but carries evidence into the next
(a run still adding up: model.scorer) is not quiet: a beacon's or a slow scan's windows
alarm every few windows as their accumulated score refills, and each refill would
otherwise resolve and reopen the incident. Each transition is an IncidentEvent carrying the incident's stable
id (derived from sensor, entity and the episode's first window, so it is the same after a
restart that replays or restores the same episode) and a unique event id (what SIEMs
deduplicate on).

What an incident says happened (category, the entity's role, the hosts on each side, ATT&CK
techniques) is the reading (classify.py, through the rules) of its peak window. A link-wide
(`global`) incident takes it from the hosts that are anomalous in the same window, the most
anomalous first, so it names the dominant hosts instead of the link.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from detector.alerting.classify import Classification
from detector.alerting.rules import SEVERITY_SCORE, Dropped, RuleSet
from detector.contracts import (
    ENTITY_GLOBAL,
    FeatureContribution,
    IncidentAction,
    IncidentEvent,
    ScoreBatch,
    WindowEvidence,
    WindowScore,
)

_NAMESPACE = uuid.UUID("6f1d6a52-8c7e-4a55-9a39-4d6e7c0f2b11")
_SEVERITY_ORDER = ["low", "medium", "high", "critical"]


@dataclass
class _Open:
    incident_id: str
    entity: str
    entity_class: str
    first_seen_ns: int
    last_seen_ns: int
    windows: int
    peak_score: float
    threshold: float
    severity: str
    category: str
    top_features: list[FeatureContribution]
    evidence: WindowEvidence
    quiet: int = 0
    transitions: int = 0
    reported_windows: int = 0  # windows covered by the last event sent
    role: str = ""  # the entity's role: originator | target ("" in a checkpoint from before roles)
    originator: str = ""
    target: str = ""
    techniques: list[str] = field(default_factory=list)
    # the peak window's own score, which its explanation shares out; peak_score is what was
    # compared with the threshold (accumulated); None in a checkpoint from before it was kept
    peak_window_score: float | None = None

    def read(self, reading: Classification) -> None:
        self.category, self.role = reading.category, reading.role
        self.originator, self.target, self.techniques = reading.originator, reading.target, list(reading.techniques)


@dataclass
class _Entity:
    streak: int = 0  # consecutive anomalous windows not yet an incident
    streak_start_ns: int = 0
    incident: _Open | None = None


@dataclass
class IncidentTracker:
    rules: RuleSet
    min_windows: int = 1
    resolve_after_windows: int = 2
    update_every_windows: int = 10
    observer: dict[str, str] = field(default_factory=dict)
    rule_id: str = "netad-lstm-ae"
    rule_name: str = "Anomalous traffic for this entity (LSTM autoencoder)"
    model_version: str = ""

    def __post_init__(self) -> None:
        self._entities: dict[str, _Entity] = {}
        self.dropped: Counter[str] = Counter()

    @property
    def open_incidents(self) -> int:
        return sum(1 for e in self._entities.values() if e.incident is not None)

    def push(self, scores: ScoreBatch | list[WindowScore]) -> list[IncidentEvent]:
        """Advance every entity with this window's scores. A ScoreBatch is only unpacked for
        the rows that matter: anomalous ones and entities with a streak or open incident."""
        if isinstance(scores, ScoreBatch):
            rows = set(np.flatnonzero(scores.anomalous).tolist())
            if self._entities:
                row_of = {name: i for i, name in enumerate(scores.entities)}
                rows.update(row_of[e] for e in self._entities if e in row_of)
            scores = [scores[i] for i in sorted(rows)]
        checked: list[tuple[WindowScore, bool]] = []
        hosts: dict[int, list[WindowScore]] = {}  # window end -> its anomalous hosts, for the link
        for s in scores:
            anomalous = s.anomalous
            if anomalous:
                try:
                    self.rules.check(s)
                except Dropped as drop:
                    self.dropped[drop.rule] += 1
                    anomalous = False
            checked.append((s, anomalous))
            if anomalous and s.entity_class != ENTITY_GLOBAL:
                hosts.setdefault(s.window_end_ns, []).append(s)
        events: list[IncidentEvent] = []
        for s, anomalous in checked:
            state = self._entities.get(s.entity)
            if state is None:
                if not anomalous:
                    continue
                state = self._entities[s.entity] = _Entity()
            event = self._advance(state, s, anomalous, hosts.get(s.window_end_ns, []))
            if event is not None:
                events.append(event)
            if state.incident is None and state.streak == 0:
                del self._entities[s.entity]
        return events

    def _advance(self, state: _Entity, s: WindowScore, anomalous: bool, hosts: list[WindowScore]) -> IncidentEvent | None:
        inc = state.incident
        if anomalous:
            if inc is None:
                if state.streak == 0:
                    state.streak_start_ns = s.window_start_ns
                state.streak += 1
                if state.streak < self.min_windows:
                    return None
                inc = state.incident = self._open(s, state.streak_start_ns, state.streak, hosts)
                inc.reported_windows = inc.windows
                state.streak = 0
                return self._event(inc, "opened", s.window_end_ns)
            inc.quiet = 0
            inc.windows += 1
            inc.last_seen_ns = s.window_end_ns
            news = inc.windows - inc.reported_windows >= self.update_every_windows
            severity = self.rules.severity_of(_compared(s), s.threshold)
            if _SEVERITY_ORDER.index(severity) > _SEVERITY_ORDER.index(inc.severity):
                inc.severity = severity
                news = True
            if _compared(s) > inc.peak_score:
                news = news or _compared(s) >= 1.5 * inc.peak_score
                inc.peak_score = _compared(s)
                inc.peak_window_score = s.score
                inc.top_features = s.top_features
                inc.read(self._read(s, hosts))
                if s.evidence is not None:
                    inc.evidence = s.evidence
            if not news:
                return None  # an update per window would flood the SIEM with the same story
            inc.reported_windows = inc.windows
            return self._event(inc, "updated", s.window_end_ns)
        state.streak = 0
        if inc is None:
            return None
        if s.carried > 0:  # still adding up: the episode goes on
            inc.quiet = 0
            return None
        inc.quiet += 1
        if inc.quiet < self.resolve_after_windows:
            return None
        state.incident = None
        return self._event(inc, "resolved", s.window_end_ns)

    def _read(self, s: WindowScore, hosts: list[WindowScore]) -> Classification:
        """The window's reading; the link's from its most anomalous hosts when there are some."""
        reading = self.rules.classify(s)
        if s.entity_class != ENTITY_GLOBAL or not hosts:
            return reading
        ranked = [self.rules.classify(h) for h in sorted(hosts, key=_ratio, reverse=True)]
        # the sides come from one story: the most anomalous host that names one, a missing
        # side only from a reading that agrees on the other (a victim's reading without a
        # source, beside its peers' readings of its replies, once gave "victim -> victim")
        named = [r for r in ranked if r.originator or r.target] or ranked
        originator, target = named[0].originator, named[0].target
        for r in named[1:]:
            if not originator and r.originator and r.target == target and r.originator != target:
                originator = r.originator
            if not target and r.target and r.originator == originator and r.target != originator:
                target = r.target
        return Classification(
            category=ranked[0].category,
            role=reading.role,
            originator=originator,
            target=target,
            techniques=ranked[0].techniques,
        )

    def _open(self, s: WindowScore, first_ns: int, windows: int, hosts: list[WindowScore]) -> _Open:
        sensor = self.observer.get("name", "")
        incident_id = str(uuid.uuid5(_NAMESPACE, f"{sensor}/{s.entity}/{first_ns}"))
        inc = _Open(
            incident_id=incident_id,
            entity=s.entity,
            entity_class=s.entity_class,
            first_seen_ns=first_ns,
            last_seen_ns=s.window_end_ns,
            windows=windows,
            peak_score=_compared(s),
            peak_window_score=s.score,
            threshold=s.threshold,
            severity=self.rules.severity_of(_compared(s), s.threshold),
            category="",
            top_features=s.top_features,
            evidence=s.evidence or WindowEvidence(),
        )
        inc.read(self._read(s, hosts))
        return inc

    def _event(self, inc: _Open, action: IncidentAction, emitted_ns: int) -> IncidentEvent:
        inc.transitions += 1
        event_id = str(uuid.uuid5(uuid.UUID(inc.incident_id), f"{action}/{inc.transitions}/{emitted_ns}"))
        return IncidentEvent(
            event_id=event_id,
            incident_id=inc.incident_id,
            action=action,
            entity=inc.entity,
            entity_class=inc.entity_class,
            first_seen_ns=inc.first_seen_ns,
            last_seen_ns=inc.last_seen_ns,
            emitted_ns=emitted_ns,
            severity=inc.severity,
            severity_score=SEVERITY_SCORE[inc.severity],
            category=inc.category,
            score=inc.peak_score,
            window_score=inc.peak_window_score,
            threshold=inc.threshold,
            windows=inc.windows,
            top_features=list(inc.top_features),
            evidence=inc.evidence,
            rule_id=self.rule_id,
            rule_name=self.rule_name,
            observer=dict(self.observer),
            model_version=self.model_version,
            role=inc.role,
            originator=inc.originator,
            target=inc.target,
            techniques=list(inc.techniques),
        )

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return self.states_of(list(self._entities))

    def states_of(self, names: list[str]) -> dict:
        """The streaks and open incidents of some entities (those that have one)."""
        out = {}
        for name in names:
            e = self._entities.get(name)
            if e is not None:
                inc = None if e.incident is None else _open_to_dict(e.incident)
                out[name] = {"streak": e.streak, "streak_start_ns": e.streak_start_ns, "incident": inc}
        return out

    def load_state_dict(self, data: dict, merge: bool = False) -> None:
        """Put streaks and open incidents back; `merge` keeps the other entities' own."""
        if not merge:
            self._entities = {}
        for name, e in data.items():
            inc = e["incident"]
            self._entities[name] = _Entity(e["streak"], e["streak_start_ns"], None if inc is None else _open_from_dict(inc))

    def forget(self, names: list[str]) -> None:
        for name in names:
            self._entities.pop(name, None)


def _compared(s: WindowScore) -> float:
    """What the window's threshold was compared with (model.scorer): an incident's score is
    what alarmed, so that it never reads as under its threshold."""
    return s.score if s.accumulated is None else s.accumulated


def _ratio(s: WindowScore) -> float:
    return _compared(s) / s.threshold if s.threshold > 0 else float("inf")


def _open_to_dict(inc: _Open) -> dict:
    return asdict(inc)


def _open_from_dict(d: dict) -> _Open:
    d = dict(d)
    d["top_features"] = [FeatureContribution(**c) for c in d["top_features"]]
    d["evidence"] = WindowEvidence(**d["evidence"])
    return _Open(**d)


# ------------------------------------------------------------ records out of time
TIME_CATEGORIES = {"ahead": "future-dated-records", "behind": "clock-jump"}
TIME_RULE_ID = "netad-event-clock"


def time_bounds_event(action: IncidentAction, kind: str, origin: str, records: int, first_ns: int, last_ns: int,
                      emitted_ns: int, observer: dict[str, str], model_version: str = "") -> IncidentEvent:
    """An incident about the input itself, not a host: a burst of records from `origin` (an
    exporter, a capture file, an interface) dated too far `kind` ("ahead" of the clock, or
    "behind" the watermark) to be believed (capture.clock). The link's (`global`) incident,
    category future-dated-records or clock-jump, the origin as the observer's exporter, the
    records refused as its score; its id comes from the sensor, origin and the burst's start,
    so its opened and resolved events share it."""
    sensor = observer.get("name", "")
    category = TIME_CATEGORIES[kind]
    incident_id = str(uuid.uuid5(_NAMESPACE, f"{sensor}/{category}/{origin}/{first_ns}"))
    where = "ahead of the clock" if kind == "ahead" else "behind the newest believed time"
    return IncidentEvent(
        event_id=str(uuid.uuid5(uuid.UUID(incident_id), f"{action}/{records}/{emitted_ns}")),
        incident_id=incident_id, action=action, entity=ENTITY_GLOBAL, entity_class=ENTITY_GLOBAL,
        first_seen_ns=first_ns, last_seen_ns=last_ns, emitted_ns=emitted_ns, severity="medium",
        severity_score=SEVERITY_SCORE["medium"], category=category, score=float(records), threshold=0.0, windows=0,
        top_features=[], evidence=WindowEvidence(), rule_id=TIME_RULE_ID,
        rule_name=f"Records dated too far {where}, refused (their origin's clock jumped, or they were forged)",
        observer={**observer, "exporter": origin}, model_version=model_version,
    )
