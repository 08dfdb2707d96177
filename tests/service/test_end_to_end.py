"""End to end through the CLI, as a user runs it: synth -> train -> score.

One synthetic office capture (benign prefix, then a port scan, an SSH brute force and a SYN
flood) is generated, a model trained on the benign prefix, and the whole capture replayed
through `netad score`. Real processes, real files.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import subprocess
import sys

import pytest

from tests.alerting._schemas import validate_ecs, validate_ocsf
from tests.conftest import REPO

pytestmark = pytest.mark.slow

CONFIG = """
sensor: {{id: e2e}}
home_net: [10.20.0.0/16]
source: {{type: pcap, path: {pcap}}}
model: {{path: {model}}}
training: {{epochs: 12}}
incidents: {{rules: [{rules}]}}
sinks: []
outputs: {{scores: null, summary: true}}
state_dir: {state}
logging: {{format: json}}
"""


def netad(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "detector.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert 0 == res.returncode, f"netad {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res


def _ns(text: str) -> int:
    return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1e9)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("e2e")
    pcap, truth, model = d / "demo.pcap", d / "truth.csv", d / "model"
    cfg = d / "netad.yaml"
    cfg.write_text(CONFIG.format(pcap=pcap, model=model, rules=REPO / "rules" / "default.yaml", state=d / "state"))
    netad("synth", "--out", str(pcap), "--truth", str(truth), "--benign-s", "5400", "--attack-s", "3000")
    trained = netad("train", "-c", str(cfg), "--pcap", str(pcap), "--truth", str(truth), "--before-first-attack", "--out", str(model))
    scores, incidents, findings = d / "scores.jsonl", d / "incidents.jsonl", d / "findings.ocsf.jsonl"
    netad("score", "-c", str(cfg), "--pcap", str(pcap), "--scores", str(scores), "--incidents", str(incidents),
          "--sink", f"jsonl://{findings}?format=ocsf")
    with open(truth, newline="") as fh:
        intervals = list(csv.DictReader(fh))
    return {
        "scores": [json.loads(line) for line in scores.read_text().splitlines()],
        "incidents": [json.loads(line) for line in incidents.read_text().splitlines()],
        "findings": [json.loads(line) for line in findings.read_text().splitlines()],
        "truth": intervals,
        "model": model,
        "trained": trained.stdout,
    }


def _interval(demo: dict, event: str) -> tuple[int, int, str]:
    row = next(r for r in demo["truth"] if r["event"] == event)
    attacker = row["description"].split("attacker=")[1].split()[0]
    return int(float(row["start_epoch_pcap"]) * 1e9), int(float(row["end_epoch_pcap"]) * 1e9), attacker


def test_port_scan_host_is_flagged_inside_its_interval(demo):
    """Windows of the scanning workstation that overlap the scan are anomalous, and an
    incident for it opens inside the interval."""
    start, end, attacker = _interval(demo, "ATTACK-PORTSCAN")
    inside = [s for s in demo["scores"] if s["entity"] == attacker and _ns(s["window_start"]) < end and _ns(s["window_end"]) > start]
    assert inside, "no windows of the attacker during the scan"
    assert all(s["anomalous"] for s in inside if _ns(s["window_start"]) >= start and _ns(s["window_end"]) <= end)
    opened = [i for i in demo["incidents"] if i["netad"]["entity"] == attacker and i["event"]["action"] == "incident-opened"]
    # the incident starts with the first anomalous window, which may begin before the scan
    assert any(start - 60e9 < _ns(i["event"]["start"]) < end for i in opened)


def test_every_attack_opens_an_incident_in_its_interval(demo):
    """The SSH brute force and SYN flood targets (and the link) get incidents while attacked."""
    for event in ("ATTACK-PORTSCAN", "ATTACK-SSH-BRUTEFORCE", "ATTACK-SYNFLOOD"):
        row = next(r for r in demo["truth"] if r["event"] == event)
        start, end = int(float(row["start_epoch_pcap"]) * 1e9), int(float(row["end_epoch_pcap"]) * 1e9)
        target = row["description"].split("target=")[1].split()[0]
        hits = {
            i["netad"]["entity"]
            for i in demo["incidents"]
            if i["event"]["action"] == "incident-opened" and start - 60e9 <= _ns(i["event"]["start"]) < end
        }
        assert target in hits, f"{event}: no incident for {target}; got {hits}"


def test_few_incidents_outside_attack_intervals(demo):
    """Benign traffic: at most a handful of incidents outside the attack intervals."""
    attacks = [(int(float(r["start_epoch_pcap"]) * 1e9), int(float(r["end_epoch_pcap"]) * 1e9))
               for r in demo["truth"] if r["is_attack_or_fault"] == "1"]
    opened = [i for i in demo["incidents"] if i["event"]["action"] == "incident-opened"]
    outside = [i for i in opened if not any(a - 60e9 <= _ns(i["event"]["start"]) <= b for a, b in attacks)]
    assert len(outside) <= 5, [(i["netad"]["entity"], i["event"]["start"]) for i in outside]


def test_train_counts_each_feature_error_in_its_held_out_scale_and_says_so(demo):
    """Each class's scaler carries the error scale training read off its held-out windows (at
    least one scaled unit per feature, some of the demo's bursty counts far more), and `netad
    train` names each class's noisiest features with it."""
    from detector.model.bundle import ModelBundle

    bundle = ModelBundle.load(demo["model"])
    for cls, cm in bundle.classes.items():
        scale = cm.scaler.error_scale
        assert scale is not None and (scale >= 1.0).all(), cls
    assert max(float(cm.scaler.error_scale.max()) for cm in bundle.classes.values()) > 1.0
    told = [line for line in demo["trained"].splitlines() if "counted in units of its held-out error; the noisiest: " in line]
    assert len(told) == len(bundle.classes)
    host = bundle.classes["host"].scaler.error_scale
    noisiest = bundle.schema.features[int(host.argmax())]
    assert any(f"{noisiest} /{float(host.max()):.3g}" in line for line in told)


def test_train_says_how_many_false_alarms_a_day_each_class_expects(demo):
    """`netad train` prints, per class, its entities per window and the false alarms a day its
    target comes to, as the bundle's training summary records them."""
    from detector.model.bundle import ModelBundle

    bundle = ModelBundle.load(demo["model"])
    lines = demo["trained"].splitlines()
    for cls, s in bundle.training["classes"].items():
        said = (f"{s['entities_per_window']:g} entities a window: {s['false_alarms_per_day']:.3g} false alarms a day "
                f"expected at the target {bundle.classes[cls].threshold.target_false_alarm:g} per entity window")
        assert sum(said in line for line in lines) == 1, (cls, said)
    assert bundle.training["classes"]["host"]["entities_per_window"] > 1.0


def test_scores_and_incidents_have_the_documented_shape(demo):
    """Window-score lines and ECS incidents carry the fields the design promises."""
    s = demo["scores"][0]
    assert {"window_start", "window_end", "entity", "score", "threshold", "anomalous", "top_features"} <= set(s)
    inc = next(i for i in demo["incidents"] if i["event"]["action"] == "incident-opened")
    assert "alert" == inc["event"]["kind"]
    assert ["network", "intrusion_detection"] == inc["event"]["category"]
    top = inc["netad"]["top_features"][0]
    assert {"name", "unit", "share", "observed", "expected"} <= set(top)
    assert inc["netad"]["incident_id"]
    assert inc["event"]["id"]


@pytest.mark.parametrize("fmt", ["ecs", "ocsf"])
def test_every_event_of_the_replay_is_schema_valid(demo, fmt):
    """Every incident event of the replay (a port scan, an SSH brute force, a SYN flood and
    what the benign part raises) is valid against the published ECS 8.11.0 / OCSF 1.1.0
    schemas, vendored in tests/alerting/schemas/: zero errors."""
    events, validate = {"ecs": (demo["incidents"], validate_ecs), "ocsf": (demo["findings"], validate_ocsf)}[fmt]
    assert len(demo["incidents"]) == len(demo["findings"])
    categories = {e["netad"]["category"] if fmt == "ecs" else e["unmapped"]["netad"]["category"] for e in events}
    assert {"scan", "brute-force", "flood"} <= categories, categories
    errors = {f"{i}: {error}" for i, event in enumerate(events) for error in validate(event)}
    assert set() == errors


def test_daemon_replays_the_capture_and_prints_a_summary(demo, tmp_path):
    """`netad run` on a replay source exits 0 when the capture ends and prints a summary;
    its incidents equal those of `netad score` on the same capture (one code path)."""
    cfg_text = (demo["model"].parent / "netad.yaml").read_text()
    out = tmp_path / "run-incidents.jsonl"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(cfg_text.replace("sinks: []", f"sinks:\n  - url: jsonl://{out}"))
    res = netad("run", "-c", str(cfg))
    assert "netad summary" in res.stdout
    assert "incidents" in res.stdout
    ran = [json.loads(line) for line in out.read_text().splitlines()]
    assert [i["event"]["id"] for i in demo["incidents"]] == [i["event"]["id"] for i in ran]
