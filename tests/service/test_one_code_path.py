"""One code path: the daemon, `netad score` and the Kafka roles share one Scoring stage
(service.scoring) and one process lifecycle (service.lifecycle), so they score alike,
reload alike and stop alike. Real `netad` processes on the demo capture; the Kafka roles
against librdkafka's mock cluster.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from detector.config import IncidentsConfig
from tests.conftest import REPO
from tests.service._daemon import SPEED, DaemonProcess, base_config, netad, wait_until, write_config

pytestmark = pytest.mark.slow  # `demo`: the session's demo capture and model (tests/conftest.py)


@pytest.fixture
def started():
    """Every process a test starts, killed at its end."""
    procs: list[DaemonProcess] = []
    yield procs
    for p in procs:
        p.kill()


def _config(demo, directory: Path, name: str, role: str = "all-in-one", bootstrap: str = "", speed: float = 0.0) -> Path:
    cfg = base_config(directory, demo["pcap"], demo["model"])
    cfg["role"] = role
    cfg["source"]["speed"] = speed
    if role != "all-in-one":
        cfg["kafka"] = {"bootstrap_servers": bootstrap, "batch_windows": 200,
                        "client": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 300}}
    cfg["state_dir"] = str(directory / f"state-{name}")
    cfg["sinks"] = [{"url": f"jsonl://{directory / f'{name}-incidents.jsonl'}"}]
    cfg["outputs"] = {"scores": str(directory / f"{name}-scores.jsonl"), "summary": False}
    return write_config(directory / f"{name}.yaml", cfg)


def _scores(path: Path) -> dict[tuple[str, str], float]:
    """(entity, window start) -> score."""
    out = {}
    if path.exists():
        # a running scorer may be writing its last line: only whole lines count (CI once read
        # one cut short here, under the load of two other jobs)
        for line in path.read_text().split("\n")[:-1]:
            r = json.loads(line)
            out[(r["entity"], r["window_start"])] = r["score"]
    return out


def _left(path: Path) -> dict[tuple[str, str], str]:
    """(entity, window start) -> the host a link alarm was left to (model.scorer)."""
    rows = (json.loads(line) for line in path.read_text().splitlines())
    return {(r["entity"], r["window_start"]): r["left_to"] for r in rows if "left_to" in r}


def _event_ids(path: Path) -> list[str]:
    return sorted(json.loads(line)["event"]["id"] for line in path.read_text().splitlines()) if path.exists() else []


def _start(started: list, config: Path) -> DaemonProcess:
    d = DaemonProcess(config)
    started.append(d)
    return d


def _run_sensor(started: list, config: Path) -> None:
    sensor = _start(started, config)
    assert 0 == sensor.wait(180), sensor.tail()


def test_daemon_score_and_kafka_roles_give_the_same_scores_and_incident_ids(demo, kafka_cluster, tmp_path, started):
    """A replay by the daemon, `netad score`, and a Kafka sensor + scorer on one capture give
    the same score for every entity window, leave the same link alarms to the same hosts
    (the Kafka scorer scores the link apart from its hosts, from what its record carries),
    and give the same incident event ids."""
    reference_cfg = _config(demo, tmp_path, "score")
    netad("score", "-c", str(reference_cfg), "--pcap", str(demo["pcap"]), "--scores", str(tmp_path / "score-scores.jsonl"),
          "--incidents", str(tmp_path / "score-incidents.jsonl"))
    reference, reference_ids = _scores(tmp_path / "score-scores.jsonl"), _event_ids(tmp_path / "score-incidents.jsonl")
    assert reference and reference_ids
    left = _left(tmp_path / "score-scores.jsonl")
    assert left, "the demo's brute force holds a link alarm left to its target: this test compares that decision too"

    daemon = _start(started, _config(demo, tmp_path, "daemon"))
    assert 0 == daemon.wait(300), daemon.tail()
    _run_sensor(started, _config(demo, tmp_path, "sensor", "sensor", kafka_cluster))
    scorer = _start(started, _config(demo, tmp_path, "scorer", "scorer", kafka_cluster))
    wait_until(lambda: len(_scores(tmp_path / "scorer-scores.jsonl")) >= len(reference), 180, "the scorer to score every window")
    scorer.signal(signal.SIGTERM)
    assert 0 == scorer.wait(60), scorer.tail()

    for name in ("daemon", "scorer"):
        scores = _scores(tmp_path / f"{name}-scores.jsonl")
        assert reference.keys() == scores.keys(), name
        np.testing.assert_allclose([scores[k] for k in reference], list(reference.values()), rtol=1e-5, atol=1e-6, err_msg=name)
        assert left == _left(tmp_path / f"{name}-scores.jsonl"), name
        assert reference_ids == _event_ids(tmp_path / f"{name}-incidents.jsonl"), name


def _changed_incidents(directory: Path, current: IncidentsConfig) -> dict[str, Any]:
    """A new `incidents` section, as config_reloaded must then report it: every field of the
    incidents config changed, so a key added later is covered (or fails here)."""
    rules = directory / "reloaded-rules.yaml"
    shutil.copy(REPO / "rules" / "default.yaml", rules)
    section: dict[str, Any] = {}
    for name, value in current.model_dump(mode="json").items():
        if name == "rules":
            section[name] = [str(rules)]
        elif isinstance(value, int) and not isinstance(value, bool):
            section[name] = value + 3
        else:
            raise AssertionError(f"incidents.{name}: this test has no changed value for a {type(value).__name__}; add one")
    return section


def _reload_every_incident_setting(process: DaemonProcess, config: Path, directory: Path) -> None:
    cfg = yaml.safe_load(config.read_text())
    current = IncidentsConfig.model_validate(cfg["incidents"])
    expected = _changed_incidents(directory, current)
    assert set(IncidentsConfig.model_fields) == set(expected)
    cfg["incidents"] = expected
    config.write_text(yaml.safe_dump(cfg))
    process.signal(signal.SIGHUP)
    _, reloaded = process.wait_log("config_reloaded", timeout_s=60)
    assert expected == reloaded["incidents"]


def test_sighup_applies_every_incident_setting_in_the_daemon(demo, tmp_path, started):
    """The daemon's SIGHUP puts every incidents.* setting in force (update_every_windows too),
    as read back from its running incident tracker."""
    config = _config(demo, tmp_path, "daemon", speed=SPEED)
    daemon = _start(started, config)
    daemon.wait_log("daemon_started", timeout_s=60)
    _reload_every_incident_setting(daemon, config, tmp_path)
    daemon.signal(signal.SIGTERM)
    assert 0 == daemon.wait(60), daemon.tail()


def test_sighup_applies_every_incident_setting_in_the_kafka_scorer(demo, kafka_cluster, tmp_path, started):
    """The Kafka scorer's SIGHUP puts every incidents.* setting in force in each sensor's
    Scoring stage, as read back from its incident tracker."""
    _run_sensor(started, _config(demo, tmp_path, "sensor", "sensor", kafka_cluster))
    config = _config(demo, tmp_path, "scorer", "scorer", kafka_cluster)
    scorer = _start(started, config)
    wait_until(lambda: _scores(tmp_path / "scorer-scores.jsonl"), 120, "the scorer to score a window")
    _reload_every_incident_setting(scorer, config, tmp_path)
    scorer.signal(signal.SIGTERM)
    assert 0 == scorer.wait(60), scorer.tail()


@pytest.mark.parametrize("role", ["all-in-one", "sensor", "scorer"])
def test_a_second_sigint_exits_at_once_with_130(demo, tmp_path, started, request, role):
    """Each role (daemon, sensor, scorer) installs the same signal handlers: the first SIGINT
    starts the shutdown, a second one ends the process at once with exit code 130."""
    bootstrap = request.getfixturevalue("kafka_cluster") if role != "all-in-one" else ""
    process = _start(started, _config(demo, tmp_path, "p", role, bootstrap, speed=SPEED))
    process.wait_log({"all-in-one": "daemon_started", "sensor": "sensor_started", "scorer": "scorer_started"}[role], timeout_s=60)
    deadline = time.monotonic() + 30
    while process.alive() and time.monotonic() < deadline:  # one signal may be folded into the next: keep sending
        process.signal(signal.SIGINT)
        time.sleep(0.002)
    assert 130 == process.wait(10), process.tail()
    assert any("second interrupt" in line for line in process.stderr)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA")
@pytest.mark.parametrize("command", ["run", "score"])
def test_cuda_without_cuda_is_a_config_error(demo, tmp_path, command):
    """`model.device: cuda` on a host without CUDA: `netad run` and `netad score` exit 78
    with one line on stderr naming model.device, no traceback."""
    cfg = base_config(tmp_path, demo["pcap"], demo["model"])
    cfg["model"]["device"] = "cuda"
    config = write_config(tmp_path / "cuda.yaml", cfg)
    args = ["-c", str(config)] + (["--pcap", str(demo["pcap"])] if command == "score" else [])
    res = subprocess.run([sys.executable, "-m", "detector.cli", command, *args], capture_output=True, text=True, timeout=120, cwd=REPO)
    lines = res.stderr.strip().splitlines()
    assert (78, 1) == (res.returncode, len(lines)), res.stderr
    assert "model.device" in lines[0] and "Traceback" not in res.stderr + res.stdout
