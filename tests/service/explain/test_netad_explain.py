"""`netad explain` on the demo's incidents (from the files `netad score` writes, as a stopped
daemon leaves them): the explanation on stdout, the timeline PNG written; for the port scan,
the first evidence flows are the scan's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.service._daemon import base_config, netad, write_config

pytestmark = pytest.mark.slow  # `demo`: the session's demo capture and model (tests/conftest.py)


def _explain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detector.cli", "explain", *args], capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.fixture(scope="module")
def scored(demo, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("explain")
    config = write_config(out / "netad.yaml", base_config(out, demo["pcap"], demo["model"], outputs={"scores": str(out / "scores.jsonl"),
                                                                                                      "summary": False}))
    # (`netad score` writes where --incidents says; the config's jsonl sink names the same file, for -c)
    netad("score", "-c", str(config), "--pcap", str(demo["pcap"]), "--incidents", str(out / "incidents.jsonl"), "--scores",
          str(out / "scores.jsonl"))
    return {"dir": out, "config": config, "incidents": out / "incidents.jsonl", "scores": out / "scores.jsonl"}


def test_explain_the_demos_port_scan(demo, scored):
    """The scanner's incident: who, what, how unusual (top features observed vs expected),
    the evidence flows with the scan's probes first, the timeline of its scores (60 windows,
    the incident among them) written as a 960x340 PNG."""
    truth = demo["truth"].read_text()
    attacker, target = re.search(r"ATTACK-PORTSCAN.*attacker=(\S+) target=(\S+)", truth).groups()  # type: ignore[union-attr]
    events = [json.loads(line) for line in scored["incidents"].read_text().splitlines()]
    scan = next(e for e in events if e["netad"]["entity"] == attacker)
    png = scored["dir"] / "scan.png"
    res = _explain(scan["netad"]["incident_id"][:8], "--incidents", str(scored["incidents"]), "--scores", str(scored["scores"]),
                   "--png", str(png))
    assert 0 == res.returncode, res.stderr
    out = res.stdout
    assert f"scan on host {attacker}" in out and "T1046" in out
    for feature in scan["netad"]["top_features"]:
        assert re.search(rf"^  {feature['name']} ", out, re.M), feature
    flows = out.split("Evidence flows, ranked by cause")[1].split("\n\n")[0].splitlines()[2:]
    assert len(flows) >= 3
    for line in flows[:3]:
        assert re.search(rf"{re.escape(attacker)}:\d+ -> {re.escape(target)}:\d+|{re.escape(target)}:\d+ -> {re.escape(attacker)}:\d+", line)
    assert re.search(r"60 window scores from .* 3 anomalous", out) or "window scores from" in out
    from matplotlib.image import imread

    image = imread(str(png))
    assert (340, 960) == image.shape[:2] and image.std() > 0.05  # drawn, not blank


def test_explain_takes_a_config_and_says_what_is_missing(scored, tmp_path):
    """-c CONFIG finds the jsonl sink and the scores; an unknown id exits 1, a missing file 66,
    no source at all is a usage error (2), a config whose files are not there yet 66."""
    first = json.loads(scored["incidents"].read_text().splitlines()[0])["netad"]["incident_id"]
    res = _explain(first, "-c", str(scored["config"]), "--png", str(tmp_path / "t.png"))
    assert 0 == res.returncode, res.stderr
    assert "window scores from" in res.stdout
    assert 1 == _explain("ffffffff-nope", "--incidents", str(scored["incidents"])).returncode
    assert 66 == _explain(first, "--incidents", str(tmp_path / "missing.jsonl")).returncode
    assert 2 == _explain(first).returncode
    # a config whose daemon has written nothing yet: 66 naming where it looked, not the usage
    # error that asked for -c when -c was given
    fresh = tmp_path / "fresh.yaml"
    fresh.write_text(f"state_dir: {tmp_path / 'nothing-yet'}\nsinks: [{{url: 'jsonl://{tmp_path}/none.jsonl'}}]\n")
    res = _explain(first, "-c", str(fresh))
    assert 66 == res.returncode, res.stderr
    assert (f"netad: {fresh}: no incidents to explain: state_dir {tmp_path / 'nothing-yet'} and jsonl sink "
            f"{tmp_path}/none.jsonl are not there (has the daemon run with this config?)") in res.stderr
