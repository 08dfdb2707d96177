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


def test_an_entity_met_again_after_it_expired_is_learned_and_scored_from_the_neutral_state():
    """The window stage emits a row for every entity it tracks, silent or not, so an entity
    absent from a window had expired, and the scorer meets it again from the neutral state,
    as new (StateBank._allocate). Training does as the scorer: its lanes do not run through
    the absent windows nor carry the state from before them, the held-out scores after them
    are those of a new entity's, and the window it comes back in is cold, as its first is."""
    import torch

    from detector.model.lstm import LSTMAutoencoder
    from detector.model.scaler import FeatureScaler
    from detector.model.training import TrainingParams, _ClassData, _first_windows, _lanes, _sequential_scores

    minute = 60 * S
    n_w = 12
    present = np.zeros((2, n_w), bool)
    present[0, [0, 1, 2, 3, 4, 8, 9, 10, 11]] = True  # expired in 5-7
    present[1, 8:] = True  # new in window 8, with the same traffic as the first from then on
    rng = np.random.default_rng(1)
    feats = np.zeros((2, n_w, 4, 2), np.float32)
    feats[0][present[0]] = rng.gamma(2.0, 5.0, (9, 4, 2))
    feats[1, 8:] = feats[0, 8:]
    cd = _ClassData(feats, present, present.copy(), np.arange(n_w) * minute, ["10.0.0.1", "10.0.0.2"])
    np.testing.assert_array_equal(np.flatnonzero(_first_windows(present)[0]), [0, 8])
    np.testing.assert_array_equal(np.flatnonzero(_first_windows(present)[1]), [8])

    lanes, mask, _ = _lanes(cd, cd.usable, TrainingParams(lane_windows=3, warmup_windows=2))
    values = {tuple(lane[:, 0, 0][lane[:, 0, 0] != 0].tolist()) for lane in lanes}
    first, back = feats[0, :, 0, 0], feats[0, 8:, 0, 0]
    # windows 0-2, then 3-4 after two warm-up windows; after the gap 8-10, then 11 after two
    assert {tuple(first[0:3]), tuple(first[1:5]), tuple(back[0:3]), tuple(back[1:4])} == values
    assert 6 == lanes.shape[0]  # the two entities' lanes after window 8 are the same two lanes

    torch.manual_seed(0)
    net = LSTMAutoencoder(2, 8, 4).eval()
    scaler = FeatureScaler.fit(feats[present])
    with torch.no_grad():
        scores = _sequential_scores(net, scaler, cd)
    np.testing.assert_array_equal(scores[0, 8:], scores[1, 8:])  # back from the neutral state, as a new entity
