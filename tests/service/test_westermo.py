"""Real data: the Westermo industrial capture (right vantage point) with its ground truth.

Training uses the first 2,700 s with every labelled attack/fault interval left out of the
loss; scoring replays the whole capture. From this vantage point the attacker
198.18.134.99 is visible in only some of its labelled intervals (the others carry no packets
of it here), so the assertion is about the windows in which it actually sends.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from detector.capture.packets.pcap import read_capture
from detector.config import load_config
from detector.contracts import addr_to_pair
from detector.service.offline import score_captures
from detector.service.training import train_from_captures
from detector.truth import load_truth
from tests.conftest import REPO, shared_file

pytestmark = pytest.mark.slow  # the module fixture trains a model

ATTACKER = "198.18.134.99"


@pytest.fixture(scope="module")
def westermo(tmp_path_factory) -> dict:
    pcap = shared_file("westermo/right.pcap")
    truth = shared_file("westermo/ground_truth_intervals.csv")
    d = tmp_path_factory.mktemp("westermo")
    cfg = load_config(REPO / "configs" / "westermo.yaml", env={})
    cfg.training.epochs = 15
    cfg.training.members = 1  # the detection of one network; three (the default) cost the suite 50 s here, and test_end_to_end trains them
    train_from_captures(cfg, [pcap], d / "model", truth=truth, end_s=2700)
    score_captures(cfg, [pcap], model_dir=d / "model", scores=d / "scores.jsonl")
    scores = [json.loads(line) for line in (d / "scores.jsonl").read_text().splitlines()]
    return {"scores": scores, "truth": load_truth(truth), "batch": read_capture(pcap), "bin_s": cfg.windows.bin_s * cfg.windows.bins}


def test_portscan_windows_of_the_attacker_score_above_threshold(westermo):
    """Every window in which 198.18.134.99 sends 50+ packets inside a BAD-PORTSCAN
    interval scores above the host threshold."""
    import datetime as dt

    b = westermo["batch"]
    hi, lo = addr_to_pair(ATTACKER)
    sent = b.ts_ns[(b.src_hi == hi) & (b.src_lo == lo)]
    by_start = {
        int(dt.datetime.fromisoformat(s["window_start"].replace("Z", "+00:00")).timestamp() * 1e9): s
        for s in westermo["scores"]
        if s["entity"] == ATTACKER
    }
    window_ns = int(westermo["bin_s"] * 1e9)
    checked = 0
    for iv in westermo["truth"]:
        if not iv.event.startswith("BAD-PORTSCAN"):
            continue
        in_iv = sent[(sent >= iv.start_ns) & (sent < iv.end_ns)]
        starts, counts = np.unique(in_iv // window_ns * window_ns, return_counts=True)
        for start, n in zip(starts.tolist(), counts.tolist(), strict=True):
            if n < 50:
                continue
            s = by_start[start]
            assert s["anomalous"] and s["score"] > s["threshold"], (iv.event, s)
            checked += 1
    assert checked >= 10  # the scans that are visible here span many windows


def test_benign_windows_of_the_attacker_are_mostly_quiet(westermo):
    """Outside every labelled interval the attacker host is rarely anomalous."""
    import datetime as dt

    def ns(t: str) -> int:
        return int(dt.datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1e9)

    quiet = [
        s for s in westermo["scores"]
        if s["entity"] == ATTACKER and s["ready"]
        and not any(ns(s["window_start"]) < iv.end_ns and ns(s["window_end"]) > iv.start_ns for iv in westermo["truth"])
    ]
    assert quiet
    assert sum(s["anomalous"] for s in quiet) / len(quiet) <= 0.05
