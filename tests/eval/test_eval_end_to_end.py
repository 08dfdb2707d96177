"""`netad splice` then `netad eval` end to end, as a user runs them, on real traffic: the first
two hours of the honeypot capture with a real masscan spliced in at 1.5 h; trained on the
first hour (a few epochs: this checks the wiring and the outputs, not detection quality,
which docs/EVALUATION.md measures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detector.capture.packets.pcap import read_records
from detector.capture.packets.pcapwriter import write_pcap

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
HONEYPOT = SHARED_DATA / "iot23-honeypot-4-1" / "honeypot-4-1.pcap"
MASSCAN_TCP = SHARED_DATA / "attacks" / "esnet" / "tcp_0_1000_20190821.pcap"

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present (fresh clone without the shared captures; CI has them)"),
]

CONFIG = """
sensor: {{id: eval-e2e}}
home_net: [192.168.1.0/24]
model: {{path: {model}}}
training: {{epochs: 3}}
incidents: {{rules: [{rules}]}}
sinks: []
outputs: {{scores: null, summary: false}}
logging: {{format: json, level: warning}}
"""

METRICS_KEYS = {"netad_version", "created_at", "inputs", "split", "model", "intervals", "test", "global", "host", "most_relevant_host"}
CLASS_KEYS = {"windows", "positives", "negatives", "unlabelled", "threshold", "detectors", "lstm_minus", "lstm_minus_visible", "at_threshold",
              "classes", "detection", "incidents"}
DETECTOR_KEYS = {"roc_auc", "pr_auc", "tpr_at_fpr", "positives", "negatives", "max_negative_score", "min_positive_score"}


def netad(*args: str) -> subprocess.CompletedProcess:
    """`netad ARGS` in a real process (the eval commands straight from their module when the
    main group does not carry them yet)."""
    import click

    from detector.cli import main

    if {"eval", "splice"} <= set(main.list_commands(click.Context(main))):  # loaded lazily: not in main.commands yet
        cmd = [sys.executable, "-m", "detector.cli", *args]
    else:
        command = {"eval": "eval_command", "splice": "splice_command"}[args[0]]
        cmd = [sys.executable, "-c", f"from detector.eval.cli import {command}; {command}()", *args[1:]]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert 0 == res.returncode, f"netad {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("eval")
    rec = read_records(HONEYPOT)
    keep = np.flatnonzero(rec.ts_ns < rec.ts_ns.min() + 2 * 3600 * 10**9)
    write_pcap(d / "benign.pcap", rec.ts_ns[keep], rec.data, rec.offsets[keep], rec.caplens[keep], wire_lengths=rec.origlens[keep])
    (d / "netad.yaml").write_text(CONFIG.format(model=d / "unused-model", rules=REPO / "rules" / "default.yaml"))
    netad("splice", "--benign", str(d / "benign.pcap"), "--out", str(d / "spliced.pcap"), "--truth", str(d / "truth.csv"),
          "--attack", f"{MASSCAN_TCP}@5432.1:rewrite-src=203.0.113.7,rewrite-dst=192.168.1.132,event=ATTACK-MASSCAN-TCP")
    res = netad("eval", "-c", str(d / "netad.yaml"), "--pcap", str(d / "spliced.pcap"), "--truth", str(d / "truth.csv"),
                "--train-end-s", "3600", "--out", str(d / "out"))
    (d / "eval.stdout").write_text(res.stdout, encoding="utf-8")
    return d / "out"


def test_the_summary_gives_the_benign_hours_its_incident_rates_rest_on(evaluated):
    """A rate per day read off a few benign hours says little on its own (a short capture's
    one incident reads as hundreds a day): the summary line prints those hours beside it."""
    m = json.loads((evaluated / "metrics.json").read_text())
    first = (evaluated.parent / "eval.stdout").read_text(encoding="utf-8").splitlines()[0]
    assert f"(test {m['test']['hours']:.2f} h, {m['test']['benign_hours']:.2f} h benign)" in first, first
    assert 0 < m["test"]["benign_hours"] < m["test"]["hours"]


def test_host_incidents_on_hosts_no_interval_names_are_counted_over_the_whole_test_span(evaluated):
    """The benign hours leave out every host's incident while any interval runs: the hosts no
    interval names are benign all through the test span, and their incidents are counted
    there, per day of the test span, and printed."""
    m = json.loads((evaluated / "metrics.json").read_text())
    untouched = m["host"]["incidents"]["untouched_hosts"]
    named = {h for iv in m["intervals"] for h in iv.get("hosts", [])} | {"192.168.1.132"}
    assert untouched["benign"] == len(untouched["list"])
    assert not {i["entity"] for i in untouched["list"]} & named
    assert untouched["per_day"] == pytest.approx(untouched["benign"] / m["test"]["hours"] * 24, abs=1e-5)
    assert "untouched_hosts" not in m["global"]["incidents"]
    host_line = [line for line in (evaluated.parent / "eval.stdout").read_text(encoding="utf-8").splitlines()
                 if line.lstrip().startswith("host ")][0]
    assert f"on hosts no interval names, over the whole test span: {untouched['benign']} (" in host_line, host_line


def test_metrics_json_has_the_documented_keys(evaluated):
    """metrics.json carries every key docs/EVALUATION.md documents, for both entity classes
    and all five detectors, and the spliced attack is one positive test interval."""
    m = json.loads((evaluated / "metrics.json").read_text())
    assert METRICS_KEYS <= set(m)
    for cls in ("global", "host"):
        assert CLASS_KEYS <= set(m[cls]), cls
        assert {"lstm", "stateless_ae", "reset_hc", "zscore", "lstm_window"} == set(m[cls]["detectors"])
        for det, summary in m[cls]["detectors"].items():
            assert DETECTOR_KEYS <= set(summary), (cls, det)
            assert {"0.001", "0.01"} == set(summary["tpr_at_fpr"])
        assert {"opened", "benign", "per_hour", "per_day", "benign_list"} <= set(m[cls]["incidents"])
        for comparison in (m[cls]["lstm_minus"], m[cls]["lstm_minus_visible"], m[cls]["classes"]["ATTACK-MASSCAN-TCP"]["visible"]["lstm_minus"]):
            assert {"stateless_ae", "reset_hc", "zscore", "lstm_window"} == set(comparison), cls
            for d in comparison.values():
                # one spliced attack: a difference, and no interval drawn from a single attack
                assert -1 <= d["difference"] <= 1 and d["positive_clusters"] == 1 and d["ci95_low"] is None, (cls, d)
    assert ["ATTACK-MASSCAN-TCP"] == [iv["event"] for iv in m["intervals"]]
    assert m["intervals"][0]["visible"] is True and m["intervals"][0]["windows_with_attack_packets"] >= 1
    assert "192.168.1.132" in m["intervals"][0]["visible_hosts"] and m["intervals"][0]["host_packets"]["192.168.1.132"] >= 10
    assert m["global"]["positives"] >= 1 and m["global"]["negatives"] > 30
    assert "192.168.1.132" == m["most_relevant_host"]
    assert m["split"]["kind"] == "time" and m["model"]["trained_here"]


def test_report_png_and_markdown_are_written(evaluated):
    """report.png is a PNG image of a sensible size; report.md has the tables."""
    png = (evaluated / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 800 and height >= 500
    md = (evaluated / "report.md").read_text()
    for heading in ("## Window-level detection", "## Per event class", "## What the carried state is worth", "## Detection delay",
                    "## False alarms"):
        assert heading in md
    assert (evaluated / "scores.jsonl").stat().st_size > 0


def test_eval_scores_a_zeek_conn_log_as_flow_records(tmp_path):
    """`netad eval --conn-log`: the honeypot's real conn.log with a Mirai-style telnet scan by
    the device inserted in its held-out part (tests/service/test_flow_sources.py: 300 unanswered
    SYNs, one every 2 s), its interval in the truth. Trained on the first 13 h of the log as
    flow records; the scan's interval is visible from the records' packets and the device's
    scan windows outrank its benign ones."""
    from tests.service.test_flow_sources import CONN_LOG, DEVICE, SCAN_AT_S, SCAN_EVERY_S, SCAN_LINES, TRAIN_S, _end_s, _scan_lines

    lines = (SHARED_DATA / CONN_LOG).read_text().splitlines()
    header = [ln for ln in lines if ln.startswith("#")]
    data = [ln.split("\t") for ln in lines if ln and not ln.startswith("#")]
    t0 = float(data[0][0])  # the split counts from the first line's start, as `netad train` does
    scan_start = min(float(f[0]) for f in data) + SCAN_AT_S
    scan_end = scan_start + SCAN_LINES * SCAN_EVERY_S
    at = max(i for i, f in enumerate(data) if _end_s(f) <= scan_end) + 1  # Zeek writes a connection when it ends
    log = tmp_path / "scan.log"
    log.write_text("\n".join(header + ["\t".join(f) for f in data[:at]] + _scan_lines(scan_start) + ["\t".join(f) for f in data[at:]]) + "\n")
    truth = tmp_path / "truth.csv"
    truth.write_text(",".join(["event", "is_attack_or_fault", "start_offset_s", "end_offset_s", "start_epoch_pcap", "end_epoch_pcap",
                               "description"]) + "\n"
                     + f"TELNET-SCAN,1,{scan_start - t0:.3f},{scan_end - t0:.3f},{scan_start:.6f},{scan_end:.6f},attacker={DEVICE}\n")
    cfg = tmp_path / "netad.yaml"
    cfg.write_text(CONFIG.format(model=tmp_path / "unused-model", rules=REPO / "rules" / "default.yaml")
                   + "windows: {bin_s: 60, bins: 5, flow_lateness_s: 600}\n")
    netad("eval", "-c", str(cfg), "--conn-log", str(log), "--truth", str(truth), "--train-end-s", str(TRAIN_S), "--out", str(tmp_path / "out"))
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    (interval,) = m["intervals"]
    assert interval["visible"] and interval["host_packets"][DEVICE] >= 2 * SCAN_LINES  # 2 SYNs per unanswered connection
    host = m["host"]
    assert host["positives"] >= 2 and host["detectors"]["lstm"]["roc_auc"] >= 0.9, host["detectors"]
    assert [d["detected"] for d in host["detection"]] == [True]
    assert "192.168.1.132" == m["most_relevant_host"]
