"""Time and floods a sender controls, against the real stages on a real capture (the demo's
first 10 minutes, scored by its model): each hostile capture is compared with a run without
the hostile input, and the genuine traffic must score exactly as there.

- a packet dated 0 (1970) in the middle of the capture: refused as behind, counted, logged
  once, reported as a clock-jump incident; every score as without it;
- a 30-day gap in the middle: the silence costs one idle period of windows (the rest is
  skipped), and the traffic after it scores as a replay that began there;
- a flood of spoofed home_net sources, a silence, then the benign traffic: scored as
  without the flood, the entity slots and the scorer's state bank back to their size.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import structlog
import yaml

from detector.bench.flood import spoofed_flood
from detector.capture.packets.pcap import read_records
from detector.capture.packets.pcapwriter import write_pcap
from detector.config import load_config
from detector.model.bundle import ModelBundle
from detector.service.pipeline import Pipeline, capture_batches

pytestmark = pytest.mark.slow  # the demo's model (built once per session)

MIN_NS = 60 * 10**9
DAY_NS = 86400 * 10**9


@pytest.fixture(scope="module")
def slice10(demo, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The demo's first 10 minutes (about 15,000 packets) as records to rewrite, its config."""
    directory = tmp_path_factory.mktemp("time")
    rec = read_records(demo["pcap"])
    t0 = int(rec.ts_ns[0])
    cfg = yaml.safe_load((demo["dir"] / "train.yaml").read_text())
    cfg.update(sinks=[], state_dir=str(directory / "state"))
    cfg["windows"] = {"entity_idle_s": 300, "history_s": 900, "history_warmup_s": 300}  # a short silence forgets everything
    (directory / "netad.yaml").write_text(yaml.safe_dump(cfg))
    return {"rec": rec, "t0": t0, "dir": directory, "cfg": load_config(directory / "netad.yaml"),
            "bundle": ModelBundle.load(demo["model"])}


def _capture(s: dict, name: str, index: np.ndarray, ts_ns: np.ndarray) -> Path:
    rec, path = s["rec"], s["dir"] / name
    write_pcap(path, ts_ns, rec.data, rec.offsets[index], rec.caplens[index], wire_lengths=rec.origlens[index],
               linktype=rec.linktype)
    return path


def _minutes(s: dict, lo: int, hi: int) -> np.ndarray:
    ts = s["rec"].ts_ns
    return np.flatnonzero((ts >= s["t0"] + lo * MIN_NS) & (ts < s["t0"] + hi * MIN_NS))


class _Events:
    def __init__(self) -> None:
        self.events: list = []

    def publish(self, event) -> None:
        self.events.append(event)


def _pipeline(s: dict, carried: bool = True) -> tuple[Pipeline, io.StringIO, _Events]:
    """The daemon's stages with the demo model; `carried` False: from a cold peer history, not
    the one the model's training span ended with (what a silence longer than
    windows.history_s leaves of it)."""
    out, sink = io.StringIO(), _Events()
    bundle = s["bundle"] if carried else replace(s["bundle"], history=None)
    return Pipeline(s["cfg"], bundle, sinks=[sink], scores_out=out, origin="hostile.pcap"), out, sink


def _score(s: dict, batches, built: tuple[Pipeline, io.StringIO, _Events] | None = None) -> tuple[dict, Pipeline, list[dict], list]:
    """(window start, entity) -> score, the pipeline, the log events, the incident events."""
    pipeline, out, sink = built or _pipeline(s)
    with structlog.testing.capture_logs() as logs:
        for batch in batches:
            pipeline.push(batch)
        pipeline.finish()
    scores = {(r["window_start"], r["entity"]): r["score"] for r in map(json.loads, out.getvalue().splitlines())}
    return scores, pipeline, logs, sink.events


def _replay(*paths: Path):
    return capture_batches(paths)


def test_a_packet_dated_1970_changes_no_score(slice10):
    """The packet is refused (it would have opened windows back to 1970), counted, logged
    once, reported once; every window scores as without it."""
    s = slice10
    index = _minutes(s, 0, 10)
    baseline, _, _, _ = _score(s, _replay(_capture(s, "base.pcap", index, s["rec"].ts_ns[index])))
    mid = index.shape[0] // 2
    hostile = np.insert(index, mid, index[mid])
    ts = s["rec"].ts_ns[hostile].copy()
    ts[mid] = 0
    scores, pipeline, logs, events = _score(s, _replay(_capture(s, "zero.pcap", hostile, ts)))
    assert baseline == scores and len(scores) > 200
    st = pipeline.stats()
    assert (1, 0, 0) == (st["records_behind_time"], st["records_ahead_of_time"], st["late_packets"])
    [warned] = [e for e in logs if e["event"] == "records_out_of_time_bounds"]
    assert ("behind", "hostile.pcap", 1, "1970-01-01T00:00:00.000Z") == (warned["kind"], warned["origin"], warned["records"],
                                                                         warned["dated"])
    assert [("opened", "clock-jump"), ("resolved", "clock-jump")] == [(e.action, e.category) for e in events
                                                                      if e.rule_id == "netad-event-clock"]


def test_a_thirty_day_gap_is_skipped_and_what_follows_scores_as_a_fresh_replay(slice10):
    """Five minutes, 30 days of silence, five minutes: the windows of the first part score as
    that part alone, those of the second as that part alone from a cold history (the silence
    has forgotten every peer, the training span's too); the silence closes one idle period of
    windows and skips the 43,000 others."""
    s = slice10
    first, second = _minutes(s, 0, 5), _minutes(s, 5, 10)
    ts = s["rec"].ts_ns
    alone_a, _, _, _ = _score(s, _replay(_capture(s, "a.pcap", first, ts[first])))
    alone_b, _, _, _ = _score(s, _replay(_capture(s, "b.pcap", second, ts[second] + 30 * DAY_NS)), _pipeline(s, carried=False))
    gap = _capture(s, "gap.pcap", np.concatenate([first, second]), np.concatenate([ts[first], ts[second] + 30 * DAY_NS]))
    scores, pipeline, _, _ = _score(s, _replay(gap))
    assert {**alone_a, **alone_b} == {k: scores[k] for k in {**alone_a, **alone_b}}
    st = pipeline.stats()
    assert 1 == st["time_jumps"] and 0 == st["records_ahead_of_time"] + st["records_behind_time"]
    assert st["windows_skipped"] > 43_000 and st["windows_closed"] < 30


def test_a_flood_of_spoofed_home_sources_leaves_nothing_behind(slice10):
    """3,000 spoofed home_net sources SYN-flood a home host; after a silence longer than the
    idle time and the history, the benign capture scores as it does alone from a cold history
    (the silence has forgotten the training span's too), and the window stage's slots and the
    scorer's state bank are back to their size."""
    s = slice10
    index = _minutes(s, 0, 5)
    ts = s["rec"].ts_ns[index]
    benign = _capture(s, "benign.pcap", index, ts)
    alone, _, _, _ = _score(s, _replay(benign), _pipeline(s, carried=False))
    flood = spoofed_flood("10.20.0.0/16", 3000, int(ts[0]) - DAY_NS, 2 * MIN_NS, "10.20.0.1")
    built = _pipeline(s)
    pipeline = built[0]
    peak: dict[str, int] = {}

    def stream():
        yield from (flood.take(slice(i, i + 4096)) for i in range(0, len(flood), 4096))
        peak.update(slots=pipeline.windows.slots, bank=pipeline.scoring.scorer._banks["host"].capacity)
        yield from _replay(benign)

    scores, _, _, _ = _score(s, stream(), built)
    assert alone == {k: scores[k] for k in alone}
    assert peak["slots"] > 3000 and peak["bank"] >= 3000
    assert pipeline.windows.slots <= 64 and pipeline.scoring.scorer._banks["host"].capacity <= 64
    assert 0 == pipeline.stats()["entity_overflow_packets"]


def test_score_on_a_capture_cut_mid_record_says_so_and_exits_65(slice10, demo):
    """`netad score` scores what comes before the damage, and says where it is: on stderr, in
    the log (capture_damaged) and the summary (damaged_inputs=1), with exit status 65."""
    from tests.hostile._hostile import assert_no_traceback, netad_cli

    s = slice10
    index = _minutes(s, 0, 3)
    whole = _capture(s, "whole.pcap", index, s["rec"].ts_ns[index])
    cut = s["dir"] / "cut.pcap"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size - 10])  # inside the last record
    res = netad_cli("score", "-c", str(s["dir"] / "netad.yaml"), "--model", str(demo["model"]), "--pcap", str(cut))
    assert 65 == res.returncode, res.stderr
    assert_no_traceback(res.stdout, res.stderr)
    summary = dict(kv.split("=") for kv in res.stdout.split())
    assert "1" == summary["damaged_inputs"] and index.shape[0] - 1 == int(summary["packets"]) + int(summary["non_ip"])
    assert f"netad: {cut}: truncated: the record at byte" in res.stderr and "scored what came before it" in res.stderr
    assert "capture_damaged" in res.stderr


@pytest.mark.parametrize("kind", ["ahead", "behind"])
def test_the_event_clocks_incidents_are_valid_ecs_and_ocsf(kind: str):
    """A future-dated-records or clock-jump incident is the IncidentEvent every format takes:
    valid ECS and OCSF (the published schemas), opened and resolved under one id."""
    from detector.alerting import formats
    from detector.alerting.incidents import time_bounds_event
    from tests.alerting._schemas import validate_ecs, validate_ocsf

    events = [time_bounds_event(action, kind, "192.0.2.1", 30, 1_700_000_000 * 10**9, 1_700_000_001 * 10**9,
                                1_700_000_060 * 10**9, {"name": "s1", "hostname": "h1", "interface": ""}, "m1")
              for action in ("opened", "resolved")]
    assert events[0].incident_id == events[1].incident_id != "" and events[0].event_id != events[1].event_id
    for event in events:
        assert [] == validate_ecs(json.loads(formats.ecs_json(event)))
        assert [] == validate_ocsf(json.loads(formats.ocsf_json(event)))
        assert "192.0.2.1" == json.loads(formats.ecs_json(event))["labels"]["exporter"]
