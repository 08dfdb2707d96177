"""The daemon's packet sources (detector/service/_sources.py) on real captures."""

from __future__ import annotations

from collections import Counter

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
