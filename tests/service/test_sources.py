"""The daemon's packet sources (detector/service/_sources.py) on real captures."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from detector.service._sources import ReplaySource
from tests.conftest import shared_file


def _counters(source: ReplaySource) -> Counter[str]:
    totals: Counter[str] = Counter()
    for batch in source:
        totals["packets"] += len(batch)
        totals["malformed"] += batch.malformed
        totals["non_ip"] += batch.non_ip
    return totals


@pytest.mark.shared_data
def test_a_paced_replay_counts_what_an_unpaced_one_counts() -> None:
    """Pacing (source.speed > 0) cuts each batch into slices due at their scaled time; the
    batch's malformed and non-IP frames are counted once, not once per slice (they were
    inflated 24x on a real capture). Westermo's 90 minutes at 200,000x take ~30 ms of wall
    time in slices of 200 s of capture, several per batch."""
    path = shared_file("westermo/right.pcap")
    unpaced = _counters(ReplaySource(path, speed=0.0, batch_packets=4096))
    paced = _counters(ReplaySource(path, speed=200_000.0, batch_packets=4096, poll_s=0.001))
    assert unpaced["non_ip"] > 10_000  # LLDP, STP, ARP... on an industrial switch's port
    assert unpaced == paced


@pytest.mark.shared_data
def test_captures_are_read_in_the_order_of_their_first_packets_and_an_overlap_is_said(tmp_path) -> None:
    """A rotated capture given as a shell glob lists capture.pcap10 before capture.pcap2: each
    part after a later one was all late (the 1 h demo in three parts, the second given last:
    129,948 packets dropped, other incidents). The offline commands' input reads the parts in
    the order of their first packets and says it reordered them; parts that overlap in time
    cannot be put in order, and that is said, naming both."""
    from structlog.testing import capture_logs

    from detector.capture.packets.pcap import read_records
    from detector.capture.packets.pcapwriter import write_pcap
    from detector.service.pipeline import capture_batches

    whole = read_records(shared_file("attacks/slips/malicious-ssh-bruteforce.pcap"))
    thirds = np.array_split(np.arange(len(whole)), 3)
    parts = []
    for i, rows in enumerate(thirds, 1):
        parts.append(tmp_path / f"capture.pcap{i}")
        write_pcap(parts[-1], whole.ts_ns[rows], whole.data, whole.offsets[rows], whole.caplens[rows], linktype=whole.linktype)

    def read(paths: list) -> tuple[np.ndarray, list[dict]]:
        with capture_logs() as logs:
            ts = np.concatenate([b.ts_ns for b in capture_batches(paths)])
        return ts, [e for e in logs if e["event"].startswith("captures_")]

    in_order, said = read(parts)
    assert [] == said and bool(np.all(np.diff(in_order) >= 0))
    shuffled, said = read([parts[2], parts[0], parts[1]])
    assert np.array_equal(in_order, shuffled)
    assert [("captures_reordered", [str(p) for p in parts])] == [(e["event"], e["read"]) for e in said]
    _, said = read([parts[0], tmp_path / "capture.pcap1"])  # the same part twice: the second overlaps the first
    assert ["captures_overlap"] == [e["event"] for e in said] and said[0]["overlap_s"] > 0
