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


def test_the_verdict_reads_a_flat_series_as_flat():
    """The verdict compares the end of the first pass with the median of the last three
    samples: a flat series whose last sample (taken after the final flush) jumps is flat, a
    steady climb is GROWING, and a run that never finished a pass is too short to judge."""
    from detector.bench.soak import soak_verdict

    def rows(*rss: float) -> list[dict[str, float]]:
        return [{"rss_mib": r} for r in rss]

    line, growth, flat = soak_verdict(rows(300, 450, 452, 451, 453, 452, 490), 451.0, 5)
    assert flat is True and 2.0 == growth and line.endswith("-> flat")
    assert soak_verdict(rows(300, 450, 500, 550, 600, 650), 450.0, 5)[2] is False
    line, _, flat = soak_verdict(rows(300, 420, 440), None, 0)
    assert flat is None and "too short to judge" in line
