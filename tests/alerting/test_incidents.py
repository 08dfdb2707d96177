"""Rules and the incident lifecycle."""

from __future__ import annotations

import dataclasses
import datetime as dt
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
    assert ("scan", "originator", ["T1046"]) == (events[0].category, events[0].role, events[0].techniques)


def test_windows_still_adding_up_keep_the_incident_open():
    """A run whose accumulated score refills between alarms (a beacon's, a slow scan's) is one
    episode: windows that do not alarm but carry evidence into the next are not quiet. The
    same pattern with nothing carried resolves and opens again."""
    pattern = [True, False, False, False, True, False, False, False, False]

    def run(carried: float) -> list:
        tr = IncidentTracker(_rules(), min_windows=1, resolve_after_windows=2, update_every_windows=100)
        events = []
        for k, anomalous in enumerate(pattern):
            adding_up = k in (1, 2, 3)  # the windows between the two alarms
            events += tr.push([dataclasses.replace(_score(k, anomalous=anomalous), carried=carried if adding_up else 0.0)])
        return events

    one = run(0.3)
    assert ["opened", "resolved"] == [e.action for e in one]
    assert 2 == one[-1].windows  # both alarms in it
    two = run(0.0)
    assert ["opened", "resolved", "opened", "resolved"] == [e.action for e in two]
    assert two[0].incident_id != two[2].incident_id


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


def test_an_incident_opened_by_accumulation_reports_what_alarmed():
    """A window under its threshold alone that alarmed with what its previous window carried
    in (model.scorer): the incident's score is the accumulated one, never under the threshold;
    its window's own score, which the explanation shares out, goes with it, and the summary
    says the windows added up. A later window that crosses alone replaces both."""
    from detector.alerting.formats import summary, to_ecs

    window = dataclasses.replace(_score(0, score=0.8), accumulated=1.15)
    tracker = IncidentTracker(_rules(), update_every_windows=1)
    opened = tracker.push([window])
    assert ["opened"] == [e.action for e in opened]
    assert opened[0].score == 1.15 and opened[0].score > opened[0].threshold
    assert opened[0].window_score == 0.8 and opened[0].added_up
    assert "added up over windows each under the threshold" in summary(opened[0])
    assert 0.8 == to_ecs(opened[0])["netad"]["window_score"]
    crossed = tracker.push([_score(1, score=3.0)])
    assert ["updated"] == [e.action for e in crossed]
    assert crossed[0].window_score == crossed[0].score == 3.0 and not crossed[0].added_up
    assert "added up" not in summary(crossed[0])


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


def test_a_schedule_in_a_time_zone_keeps_its_local_hours_across_daylight_saving(tmp_path: Path):
    """A nightly backup at 01:00-03:00 Berlin time, Monday to Friday: 00:30 UTC in winter
    (CET, UTC+1) and 23:30 UTC the evening before in summer (CEST, UTC+2), each weekday
    read in Berlin; 02:30 UTC in summer is 04:30 there, outside. A zone that is no IANA name
    is the rule file's error with its line."""
    from detector.alerting.rules import Schedule

    backup = Schedule(start=dt.time(1), end=dt.time(3), weekdays=[0, 1, 2, 3, 4], timezone="Europe/Berlin")
    utc = dt.UTC
    assert backup.active(dt.datetime(2026, 1, 13, 0, 30, tzinfo=utc))  # Tuesday 01:30 CET
    assert not backup.active(dt.datetime(2026, 1, 13, 2, 30, tzinfo=utc))  # 03:30 CET
    assert backup.active(dt.datetime(2026, 7, 13, 23, 30, tzinfo=utc))  # Tuesday 01:30 CEST, Monday in UTC
    assert not backup.active(dt.datetime(2026, 7, 14, 2, 30, tzinfo=utc))  # 04:30 CEST
    assert not backup.active(dt.datetime(2026, 7, 18, 23, 30, tzinfo=utc))  # Sunday 01:30 CEST, a Saturday in UTC
    assert Schedule(start=dt.time(1), end=dt.time(3)).active(dt.datetime(2026, 7, 14, 1, 30, tzinfo=utc))  # UTC by default
    f = tmp_path / "r.yaml"
    f.write_text("suppress:\n  - name: backup\n    schedule: {start: '01:00', end: '03:00', timezone: Europe/Berlinn}\n")
    with pytest.raises(ConfigError, match=rf"{f}:3: suppress\[0\]\.schedule\.timezone: Value error, unknown time zone 'Europe/Berlinn'"):
        load_rules([f])


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


def _host(k: int, entity: str, features: list[tuple[str, str, float, float]], peers: list[tuple[str, int]],
          score: float = 10.0, flows: list[dict] | None = None) -> WindowScore:
    return WindowScore(
        T0 + k * W, T0 + (k + 1) * W, entity, "global" if entity == "global" else "host", score, 1.0, True, True,
        [FeatureContribution(name, unit, share, observed, 0.1) for name, unit, share, observed in features],
        WindowEvidence(top_peers=[{"ip": ip, "packets": n, "bytes": 200 * n} for ip, n in peers], top_flows=flows or []),
    )


def _brute_force_victim(k: int) -> WindowScore:
    flows = [{"src": "10.0.0.22", "dst": "203.0.113.66", "sport": 22, "dport": 60000 + i, "proto": "tcp", "packets": 30}
             for i in range(3)]
    return _host(k, "10.0.0.22", [("syn_in", "packets", 0.4, 18.5), ("flows_in", "flows", 0.3, 18.7)],
                 [("203.0.113.66", 2500), ("10.0.0.10", 70)], score=13.0, flows=flows)


def test_incident_knows_roles_and_attack_techniques():
    """A brute-force victim's incident says it is the target, names the attacker as the
    originator, and carries the category's ATT&CK technique."""
    event = IncidentTracker(_rules()).push([_brute_force_victim(0)])[0]
    assert ("brute-force", "target", "203.0.113.66", "10.0.0.22", ["T1110"]) == (
        event.category, event.role, event.originator, event.target, event.techniques)


def test_link_incident_names_the_dominant_hosts():
    """The link's incident reads its story from the most anomalous hosts of the same window:
    their category, the attacker as originator and the victim as target."""
    link = _host(0, "global", [("syn_in", "packets", 0.4, 18.0), ("flows_in", "flows", 0.4, 18.0)], [("10.0.0.9", 5)], 4.0)
    bystander = _host(0, "10.0.0.30", [("bytes_out", "bytes", 0.9, 5e4)], [("198.51.100.1", 10)], score=2.0)
    events = {e.entity: e for e in IncidentTracker(_rules()).push([link, bystander, _brute_force_victim(0)])}
    assert ("brute-force", "203.0.113.66", "10.0.0.22", ["T1110"]) == (
        events["global"].category, events["global"].originator, events["global"].target, events["global"].techniques)
    assert "target" == events["global"].role  # the link's own features: traffic coming in
    alone = IncidentTracker(_rules()).push([_host(5, "global", [("syn_in", "packets", 0.9, 20_000.0)], [])])[0]
    assert ("flood", "", "") == (alone.category, alone.originator, alone.target)


def test_link_incident_takes_both_sides_from_one_story():
    """A host flooded by many peers (no dominant source: its reading names it as the target
    only) beside one of those peers, whose reading names the flooded host as the originator
    of the replies it got: the link says who was flooded, never "victim -> victim"."""
    link = _host(0, "global", [("pkts_out", "packets", 0.9, 400.0)], [("10.0.0.22", 50)], 4.0)
    peers = [(f"10.0.0.{40 + i}", 30) for i in range(8)]
    victim = _host(0, "10.0.0.22", [("pkts_in", "packets", 0.9, 400.0)], peers, score=13.0)
    peer = _host(0, "10.0.0.40", [("bytes_in", "bytes", 0.9, 5e4)], [("10.0.0.22", 60)], score=6.0)
    tracker = IncidentTracker(_rules())
    readings = {s.entity: tracker.rules.classify(s) for s in (victim, peer)}
    assert ("", "10.0.0.22") == (readings["10.0.0.22"].originator, readings["10.0.0.22"].target)
    assert "10.0.0.22" == readings["10.0.0.40"].originator  # the peer's reading: replies from the victim
    events = {e.entity: e for e in tracker.push([link, victim, peer])}
    assert ("", "10.0.0.22") == (events["global"].originator, events["global"].target)


def test_category_rules_override_the_builtin_reading(tmp_path: Path):
    """An operator's category rule (optionally only for one role) names the category and its
    techniques; `attack:` remaps a category's techniques; bad technique ids are config errors."""
    f = tmp_path / "r.yaml"
    f.write_text(
        "categories:\n"
        "  - {features: [syn_in], role: originator, category: never-used}\n"
        "  - {features: [syn_in], role: target, category: ssh-guessing, techniques: [T1110.001]}\n"
        "attack:\n  scan: [T1595.001, T1046]\n"
    )
    rules = load_rules([f])
    event = IncidentTracker(rules).push([_brute_force_victim(0)])[0]
    assert ("ssh-guessing", ["T1110.001"], "203.0.113.66") == (event.category, event.techniques, event.originator)
    scan = IncidentTracker(rules).push([_score(0)])[0]
    assert ("scan", ["T1595.001", "T1046"]) == (scan.category, scan.techniques)
    f.write_text("attack:\n  scan: [T1046, t1046]\n")
    with pytest.raises(ConfigError, match=rf"{f}:2: attack"):
        load_rules([f])


def test_checkpoint_from_before_roles_restores():
    """An open incident checkpointed by a netad without roles resumes; its next peak reads them."""
    a = IncidentTracker(_rules(), update_every_windows=1)
    a.push([_brute_force_victim(0)])
    state = a.state_dict()
    for key in ("role", "originator", "target", "techniques"):
        del state["10.0.0.22"]["incident"][key]
    b = IncidentTracker(_rules(), update_every_windows=1)
    b.load_state_dict(state)
    stronger = _brute_force_victim(1)
    stronger.score = 30.0
    updated = b.push([stronger])[0]
    assert ("updated", "target", "203.0.113.66") == (updated.action, updated.role, updated.originator)
