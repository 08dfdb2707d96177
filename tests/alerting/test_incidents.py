"""Rules and the incident lifecycle."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.alerting.incidents import IncidentTracker
from detector.alerting.rules import RuleSet, load_rules
from detector.contracts import FeatureContribution, WindowEvidence, WindowScore
from detector.errors import ConfigError
from tests.conftest import REPO

W = 60_000_000_000
T0 = 1_700_000_040_000_000_000


def _score(k: int, entity: str = "10.0.0.5", anomalous: bool = True, score: float = 10.0, top: str = "ports_out") -> WindowScore:
    return WindowScore(
        T0 + k * W, T0 + (k + 1) * W, entity, "host", score, 1.0, anomalous, True,
        [FeatureContribution(top, "ports", 0.9, 800.0, 3.0)],
        WindowEvidence(top_ports=[{"port": 22, "proto": "tcp", "packets": 5}]),
    )


def _rules() -> RuleSet:
    return load_rules([REPO / "rules" / "default.yaml"])


def test_consecutive_windows_extend_one_incident_then_resolve():
    """opened -> updated -> resolved with one stable incident id and distinct event ids."""
    tr = IncidentTracker(_rules(), min_windows=1, resolve_after_windows=2, update_every_windows=1, observer={"name": "s1"})
    events = []
    for k, anomalous in enumerate([True, True, False, False, False]):
        events += tr.push([_score(k, anomalous=anomalous)])
    assert ["opened", "updated", "resolved"] == [e.action for e in events]
    assert 1 == len({e.incident_id for e in events})
    assert 3 == len({e.event_id for e in events})
    assert T0 == events[0].first_seen_ns
    assert 2 == events[-1].windows
    assert "scan-like" == events[0].category


def test_incident_id_is_stable_across_trackers():
    """The same episode gets the same incident id after a restart."""
    a = IncidentTracker(_rules(), observer={"name": "s1"}).push([_score(3)])
    b = IncidentTracker(_rules(), observer={"name": "s1"}).push([_score(3)])
    assert a[0].incident_id == b[0].incident_id
    assert a[0].event_id == b[0].event_id


def test_min_windows_delays_opening():
    tr = IncidentTracker(_rules(), min_windows=3, update_every_windows=1)
    actions = [[e.action for e in tr.push([_score(k)])] for k in range(4)]
    assert [[], [], ["opened"], ["updated"]] == actions
    assert [] == IncidentTracker(_rules(), min_windows=2).push([_score(0)])


def test_severity_from_score_ratio():
    tr = IncidentTracker(_rules())
    assert "critical" == tr.push([_score(0, "10.0.0.1", score=25.0)])[0].severity
    assert "high" == tr.push([_score(0, "10.0.0.2", score=6.0)])[0].severity
    assert "low" == tr.push([_score(0, "10.0.0.3", score=1.5)])[0].severity


def test_allow_and_suppress_rules_drop_windows(tmp_path: Path):
    """An allowlisted network and an active schedule drop windows and count why."""
    f = tmp_path / "r.yaml"
    f.write_text(
        "allow:\n  - name: scanner\n    cidr: [10.0.0.5/32]\n"
        "suppress:\n  - name: backup\n    entity: 10.0.0.6\n    schedule: {start: '22:00', end: '23:59'}\n"
    )
    tr = IncidentTracker(load_rules([f]))
    assert [] == tr.push([_score(0, "10.0.0.5")])
    # T0 is 2023-11-14 22:14 UTC: inside the backup schedule
    assert [] == tr.push([_score(0, "10.0.0.6")])
    assert 1 == len(tr.push([_score(0, "10.0.0.7")]))
    assert {"allow:scanner": 1, "suppress:backup": 1} == dict(tr.dropped)


def test_rule_file_errors_name_file_and_line(tmp_path: Path):
    f = tmp_path / "r.yaml"
    f.write_text("severity:\n  - {min_ratio: 2, severity: urgent}\n")
    with pytest.raises(ConfigError, match=rf"{f}:2: severity\[0\]\.severity"):
        load_rules([f])


def test_tracker_state_round_trips():
    """An open incident survives a checkpoint: the restored tracker updates the same id."""
    a = IncidentTracker(_rules(), update_every_windows=1)
    opened = a.push([_score(0)])[0]
    b = IncidentTracker(_rules(), update_every_windows=1)
    b.load_state_dict(a.state_dict())
    updated = b.push([_score(1)])[0]
    assert ("updated", opened.incident_id) == (updated.action, updated.incident_id)


def test_updates_are_rate_limited_unless_the_story_changes():
    """A long steady incident sends an update every update_every_windows windows; a jump
    in severity is reported at once."""
    tr = IncidentTracker(_rules(), update_every_windows=3)
    actions = [[e.action for e in tr.push([_score(k, score=3.0)])] for k in range(7)]
    assert [["opened"], [], [], ["updated"], [], [], ["updated"]] == actions
    jump = tr.push([_score(7, score=30.0)])
    assert ["updated"] == [e.action for e in jump]
    assert "critical" == jump[0].severity
