"""`netad bench soak`: the pipeline replays a capture in a loop and prints RSS over time."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO
from tests.service._daemon import base_config, netad

pytestmark = pytest.mark.slow


def test_soak_prints_rss_lines_over_several_passes(tmp_path):
    """A few seconds of soak: one RSS line per report interval, several passes of the
    capture (time-shifted, so windows keep closing), and the growth summary at the end."""
    pcap, model = tmp_path / "benign.pcap", tmp_path / "model"
    netad("synth", "--out", str(pcap), "--benign-s", "600", "--attack-s", "0")
    config = tmp_path / "netad.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path, pcap, model)))
    netad("train", "-c", str(config), "--pcap", str(pcap), "--out", str(model))
    res = subprocess.run([sys.executable, "-m", "detector.bench.soak", "-c", str(config), "--seconds", "4",
                          "--report-s", "1"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert 0 == res.returncode, res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith("t=")]
    assert len(lines) >= 4, res.stdout
    rss = [float(re.search(r"rss_mib=\s*([\d.]+)", line).group(1)) for line in lines]
    assert all(r > 0 for r in rss)
    windows = [int(re.search(r"windows=([\d,]+)", line).group(1).replace(",", "")) for line in lines]
    assert windows[-1] > windows[1] > 0, "windows stopped closing: the passes are not one continuous stream"
    passes = int(re.search(r"pass=(\d+)", lines[-1]).group(1))
    assert passes >= 2, res.stdout
    assert re.search(r"growth [+-][\d.]+ MiB over \d+ pass", res.stdout)
