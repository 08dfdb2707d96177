"""`netad bench flood`: RSS and packets/s before, during and after a spoofed home_net flood."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO
from tests.service._daemon import base_config, netad

pytestmark = pytest.mark.slow

PHASES = ("prime", "settle", "before", "during", "recovery", "after")
_PASS = re.compile(r"^(\w+)\s+pass (\d+):\s+([\d,]+) pkt/CPU-s\s+([\d,]+) pkt/s\s+twin\s+([\d,]+) pkt/CPU-s\s+"
                   r"rss\s+([\d.]+) MiB \(peak ([\d.]+), end ([\d.]+)\)\s+"
                   r"entities\s+([\d,]+)\s+slots\s+([\d,]+)\s+flows\s+([\d,]+)\s+heap trims (\d+) \(([\d.]+) s\)$")
_MEDIAN = re.compile(r"^(before|during|after)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$")


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def test_flood_bench_prints_every_phase_and_a_verdict(demo, tmp_path):
    """A tiny flood (40 spoofed sources, one pass of one lap per phase): a line per pass of
    every phase in order, the flood's entities present DURING and gone again AFTER, a median
    table whose figures are those of the passes (one pass: the median is the pass), and the
    after-vs-before line, whichever way its verdict goes (that depends on the machine)."""
    pcap = tmp_path / "benign.pcap"  # five minutes: each phase replays it twice (the pipeline and its twin)
    netad("synth", "--out", str(pcap), "--benign-s", "300", "--attack-s", "0")
    config = tmp_path / "netad.yaml"
    config.write_text(yaml.safe_dump(base_config(tmp_path, pcap, demo["model"])))
    hosts = 40
    res = subprocess.run([sys.executable, "-m", "detector.bench.flood", "-c", str(config), "--pcap", str(pcap),
                          "--model", str(demo["model"]), "--passes", "1", "--laps", "1", "--hosts", str(hosts)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert 0 == res.returncode, res.stderr
    lines = res.stdout.splitlines()
    passes = [m.groups() for line in lines if (m := _PASS.match(line))]
    assert list(PHASES) == [p[0] for p in passes], res.stdout
    # pkt/CPU-s, pkt/s, twin pkt/CPU-s, rss (mean over the pass), its peak, at the end, entities, slots, flows, trims, trim s
    rows = {p[0]: [_num(v) for v in p[2:]] for p in passes}
    assert all(r[0] > 0 and r[1] > 0 and r[2] > 0 and 0 < r[3] <= r[4] for r in rows.values()), res.stdout
    assert all(r[5] > 0 for r in rows.values()), res.stdout
    benign = rows["before"][6]
    assert rows["during"][6] >= benign + hosts, "the flood's sources are entities while it lasts"
    assert benign == rows["after"][6] and rows["after"][7] <= rows["during"][7], "they expire, and the slots shrink back"
    medians = {m.group(1): [_num(v) for v in m.groups()[1:]] for line in lines if (m := _MEDIAN.match(line))}
    assert ["before", "during", "after"] == list(medians), res.stdout
    for phase, (cpu, wall, twin, vs_twin, rss, peak, end) in medians.items():
        assert (cpu, wall, twin, rss, peak, end) == tuple(rows[phase][:6])
        assert vs_twin == pytest.approx(cpu / twin, abs=0.002)
    verdict = re.search(r"^after vs before: pkt/CPU-s against the twin ([+-][\d.]+)%, RSS ([+-][\d.]+)% -> "
                        r"(back within 10 %|NOT back within 10 %)$", res.stdout, re.M)
    assert verdict is not None, res.stdout
    assert re.search(r"^\(RSS at the passes' ends alone [+-][\d.]+%", res.stdout, re.M), res.stdout
    rss_change = float(verdict.group(2)) / 100
    assert rss_change == pytest.approx(medians["after"][4] / medians["before"][4] - 1, abs=0.002)
    speed_change = float(verdict.group(1)) / 100
    assert speed_change == pytest.approx(medians["after"][3] / medians["before"][3] - 1, abs=0.005)
    if abs(rss_change - 0.10) > 0.001 and abs(speed_change + 0.10) > 0.001:  # not rounded onto the line
        assert (verdict.group(3) == "back within 10 %") == (speed_change >= -0.10 and rss_change <= 0.10)
