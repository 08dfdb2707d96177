"""Which windows training may learn from (model.training.collect): a labelled attack's windows
are left out, and so is the state it leaves behind in each entity (its trail)."""

from __future__ import annotations

import numpy as np

from detector.contracts import FeatureSchema, WindowBatch
from detector.model.training import collect, trail

S = 1_000_000_000
SCHEMA = FeatureSchema("packet", 4, ("pkts_out", "young_peer_returns"), ("packets", "returns"), levels=("young_peer_returns",))


def test_the_trail_runs_while_the_entity_carries_a_level_out_of_an_excluded_run():
    excluded = np.array([False, True, True, False, False, False, False, True, False])
    carried = np.array([
        [True, False, True, True, True, False, True, True, True],  # a level after both runs; a gap ends the first trail
        [True, True, True, False, True, True, True, False, False],  # none right after the first run: no trail
    ])
    assert trail(excluded, carried).tolist() == [
        [False, False, False, True, True, False, False, False, True],
        [False, False, False, False, False, False, False, False, False],
    ]


def test_collect_leaves_out_the_labelled_windows_and_each_entity_s_trail_after_them():
    """Windows 2-3 hold a labelled beacon; afterwards host a still carries its peer's level for
    two windows (the beacon's series), host b carries none; a level before the interval, or a
    later one after a window without it, is the host's own and is learned from."""
    level_of = {"a": [1, 0, 5, 6, 4, 3, 0, 2], "b": [0, 0, 0, 0, 0, 0, 0, 0]}
    windows = []
    for k in range(8):
        feats = np.zeros((2, 6, 2), np.float32)
        for e, name in enumerate(("a", "b")):
            feats[e, :, 0] = 10
            feats[e, :, 1] = level_of[name][k]
        windows.append(WindowBatch(k * 60 * S, (k + 1) * 60 * S, ["a", "b"], ["host", "host"], feats, SCHEMA))
    data, _ = collect(windows, exclude=[(2 * 60 * S + 1, 4 * 60 * S - 1)])
    host = data["host"]
    assert host.entities == ["a", "b"]
    assert host.usable.tolist() == [
        [True, True, False, False, False, False, True, True],
        [True, True, False, False, True, True, True, True],
    ]
    # a schema without levels has no trail: only the labelled windows are left out
    plain = FeatureSchema("packet", 4, SCHEMA.features, SCHEMA.units)
    data, _ = collect([WindowBatch(w.window_start_ns, w.window_end_ns, w.entities, w.entity_classes, w.features, plain)
                       for w in windows], exclude=[(2 * 60 * S + 1, 4 * 60 * S - 1)])
    assert data["host"].usable.tolist() == [[True, True, False, False, True, True, True, True]] * 2
