"""Host groups through the real commands: `netad train` with `training.host_groups` trains the
group's class and says so, warns of a group the capture never met, and `netad score` reads the
group's hosts with its model, whatever the scoring config says (the bundle keeps the groups)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.hostile._hostile import assert_no_traceback, netad_cli
from tests.service._daemon import write_config

pytestmark = pytest.mark.slow  # `demo`: the session's demo capture (tests/conftest.py)


def test_train_models_a_host_group_apart_and_score_reads_its_hosts_with_it(tmp_path: Path, demo):
    groups = {"servers": ["10.20.0.0/24"], "dmz": ["10.20.250.0/24"]}
    config = write_config(tmp_path / "train.yaml", {"home_net": ["10.20.0.0/16"], "model": {"device": "cpu"},
                                                    "training": {"epochs": 1, "members": 1, "host_groups": groups},
                                                    "logging": {"format": "json"}})
    out = tmp_path / "model"
    res = netad_cli("train", "-c", str(config), "--pcap", str(demo["pcap"]), "--end-s", "3600", "--out", str(out))
    assert 0 == res.returncode, res.stderr
    assert_no_traceback(res.stdout, res.stderr)
    classes = [line.split()[0] for line in res.stdout.splitlines() if line.startswith("  ") and line[2] != " " and " entities " in line]
    assert ["global", "host", "servers"] == sorted(classes), res.stdout
    assert "a host group: the hosts of 10.20.0.0/24 (training.host_groups)" in res.stdout
    warning = "no host of host group dmz (10.20.250.0/24) in the training span: the group has no model"
    assert warning in res.stdout and warning in res.stderr
    assert json.loads((out / "model.json").read_text())["host_groups"] == {"servers": ["10.20.0.0/24"]}

    # scored with a config that names no group: the bundle's groups are what count
    plain = write_config(tmp_path / "score.yaml", {"home_net": ["10.20.0.0/16"], "model": {"device": "cpu", "path": str(out)},
                                                   "sinks": [], "logging": {"format": "json"}})
    scores = tmp_path / "scores.jsonl"
    res = netad_cli("score", "-c", str(plain), "--pcap", str(demo["pcap"]), "--scores", str(scores), timeout_s=300)
    assert 0 == res.returncode, res.stderr
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    thresholds = json.loads((out / "model.json").read_text())["classes"]
    by_class: dict[str, set[str]] = {}
    for row in rows:
        by_class.setdefault(row["entity_class"], set()).add(row["entity"])
        assert row["threshold"] == pytest.approx(thresholds[row["entity_class"]]["threshold"]["value"], abs=1e-6)
    assert by_class["servers"] and all(e.startswith("10.20.0.") for e in by_class["servers"])
    assert by_class["host"] and not any(e.startswith("10.20.0.") for e in by_class["host"])
