"""A host's own level (model.levels): its held-out scores' LEVEL_QUANTILE over its class's,
where above 1; read cross-fitted for the calibration, kept in the bundle per member, and
divided out of the host's scores by the scorer and by the eval's twins alike."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from detector.errors import ModelError
from detector.eval.baselines import stateless_scores
from detector.model.bundle import ModelBundle
from detector.model.levels import LEVEL_QUANTILE, MIN_LEVEL_WINDOWS, cross_fitted, levels_by_entity, levels_of
from detector.model.scorer import StreamingScorer
from detector.model.training import TrainingParams, train
from tests.hostile._hostile import _edit
from tests.model.test_members import _members
from tests.model.test_scorer import _bundle, _sequence, _windows


def _scores(levels: list[float], windows: int = 2 * MIN_LEVEL_WINDOWS, seed: int = 0) -> np.ndarray:
    """(entities, windows) scores: one draw, each entity's multiplied by its level."""
    rng = np.random.default_rng(seed)
    return rng.lognormal(0.0, 0.5, size=windows)[None, :] * np.asarray(levels)[:, None]


def test_a_host_s_level_is_its_own_quantile_over_the_class_s_and_never_under_one():
    s = _scores([1.0] * 19 + [4.0])
    got = levels_of(s)
    class_level = np.quantile(s, LEVEL_QUANTILE)  # every window of the class pooled
    assert got[19] == pytest.approx(np.quantile(s[19], LEVEL_QUANTILE) / class_level)
    assert got[19] > 2.0  # the busy host: about 4 over a class its own windows lift a little
    assert np.all(got[:19] == 1.0)  # the quiet ones are judged as the class is, never by less
    names = [f"10.0.0.{i}" for i in range(20)]
    assert {"10.0.0.19": pytest.approx(got[19], rel=1e-6)} == levels_by_entity(names, got)
    # where the busy are many, they are what the class ordinarily scores: levels pooled by window
    many = levels_of(_scores([1.0] * 15 + [4.0] * 5))
    assert np.all(many[15:] == many[15]) and 1.0 < many[15] < 2.0


def test_a_host_read_from_too_few_windows_keeps_the_class_s_level():
    s = _scores([1.0] * 19 + [4.0])
    s[19, MIN_LEVEL_WINDOWS - 1 :] = np.nan  # the busy host seen in MIN_LEVEL_WINDOWS - 1 windows
    assert np.all(levels_of(s) == 1.0)
    s[19, MIN_LEVEL_WINDOWS - 1] = 4.0
    assert levels_of(s)[19] > 1.0
    assert np.all(levels_of(np.full((2, 5), np.nan)) == 1.0)


def test_a_host_that_holds_more_than_the_quantile_s_share_of_the_windows_has_no_level():
    """Two hosts (the honeypot's victim and gateway): each is half of what the class's
    quantile is read from, and neither has others to be judged against."""
    assert np.all(levels_of(_scores([1.0, 4.0])) == 1.0)
    # one of 10 hosts holds 1 - LEVEL_QUANTILE of the windows at most: it has a level; 1 of 9 does not
    assert levels_of(_scores([1.0] * 9 + [4.0]))[9] > 1.0
    assert np.all(levels_of(_scores([1.0] * 8 + [4.0])) == 1.0)


def test_each_half_is_divided_by_the_level_read_from_the_other_half_only():
    s = _scores([1.0] * 20, windows=4 * MIN_LEVEL_WINDOWS)
    half = np.arange(s.shape[1]) % 2
    s[3, half == 0] *= 5.0  # host 3 is busy in the first half only
    out = cross_fitted(s.astype(np.float32), half)
    assert out.dtype == np.float32
    # its busy windows are read with the level of its quiet half (1): they stand out as they are
    np.testing.assert_allclose(out[3, half == 0], s[3, half == 0], rtol=1e-6)
    # its quiet windows with the level its busy half gave it
    level = levels_of(np.where(half[None, :] == 0, s, np.nan))[3]
    assert level > 2.0
    np.testing.assert_allclose(out[3, half == 1], s[3, half == 1] / level, rtol=1e-5)
    np.testing.assert_allclose(np.delete(out, 3, axis=0), np.delete(s, 3, axis=0), rtol=1e-6)


def test_the_scorer_and_the_twins_divide_a_host_s_scores_by_its_level_and_no_other_s():
    plain = _bundle()
    levelled = copy.deepcopy(plain)
    levelled.classes["host"].threshold.levels = {"10.0.0.2": 2.5}
    entities = ["global", "10.0.0.1", "10.0.0.2"]
    seq = _sequence(4, 3)
    a, b = StreamingScorer(plain, device="cpu", warmup_windows=0), StreamingScorer(levelled, device="cpu", warmup_windows=0)
    for k in range(4):
        x, y = a.score(_windows(k, entities, seq[k])), b.score(_windows(k, entities, seq[k]))
        np.testing.assert_allclose(y.scores, x.scores / np.array([1.0, 1.0, 2.5], np.float32), rtol=1e-5)
        np.testing.assert_array_equal(x.top_index, y.top_index)  # the explanation is the host's as it was
    feats, start = seq[:, 1:].reshape(-1, *seq.shape[2:]), np.zeros(8, np.int64)
    names = ["10.0.0.1", "10.0.0.2"] * 4
    twin = stateless_scores(levelled.classes["host"], feats, start, names)
    np.testing.assert_allclose(twin, stateless_scores(plain.classes["host"], feats, start) / np.tile([1.0, 2.5], 4), rtol=1e-6)


def test_each_member_divides_by_its_own_level_before_the_median():
    together, alone = _members()
    levelled = copy.deepcopy(together)
    for m, level in zip(levelled.classes["host"].members, (1.5, 4.0, 2.0), strict=True):
        m.threshold.levels = {"10.0.0.2": level}
    entities = ["global", "10.0.0.1", "10.0.0.2"]
    seq = _sequence(3, 3)
    scorer = StreamingScorer(levelled, device="cpu", warmup_windows=0)
    singles = [StreamingScorer(b, device="cpu", warmup_windows=0) for b in alone]
    for k in range(3):
        got = scorer.score(_windows(k, entities, seq[k]))
        own = [s.score(_windows(k, entities, seq[k])).scores[2] for s in singles]
        shares = [o / (level * t) for o, level, t in zip(own, (1.5, 4.0, 2.0), (5.0, 7.0, 9.0), strict=True)]
        assert got.scores[2] == pytest.approx(float(np.median(shares)) * 7.0, rel=1e-5)


def test_levels_round_trip_in_the_bundle_and_a_bad_one_is_refused(tmp_path: Path):
    bundle = _bundle()
    bundle.classes["host"].threshold.levels = {"10.0.0.2": 2.5, "fd00::7": 1.25}
    bundle.save(tmp_path / "m")
    assert {"10.0.0.2": 2.5, "fd00::7": 1.25} == ModelBundle.load(tmp_path / "m").classes["host"].threshold.levels
    for bad, reason in ((0.5, r"levels\[10.0.0.2\]: 0.5 is not a finite number above 1"),
                        ("x", r"levels\[10.0.0.2\]: 'x' is not a number")):
        _edit(lambda meta, v=bad: meta["classes"]["host"]["threshold"]["levels"].update({"10.0.0.2": v}))(tmp_path / "m")
        with pytest.raises(ModelError, match=reason):
            ModelBundle.load(tmp_path / "m")
    _edit(lambda meta: meta["classes"]["host"]["threshold"].update({"levels": [2.5]}))(tmp_path / "m")
    with pytest.raises(ModelError, match="threshold.levels: not an object"):
        ModelBundle.load(tmp_path / "m")
    _edit(lambda meta: meta["classes"]["host"]["threshold"].pop("levels"))(tmp_path / "m")  # a bundle from before levels
    assert {} == ModelBundle.load(tmp_path / "m").classes["host"].threshold.levels


@pytest.fixture(scope="module")
def busy_one() -> ModelBundle:
    """A model of 12 hosts of 240 windows, one of them of wild swings (two epochs: seconds)."""
    from detector.bench.model import _batches, _setup

    setup = _setup(16, 6, 12, 2 * MIN_LEVEL_WINDOWS + 40, seed=3)
    rng = np.random.default_rng(4)
    setup.features[:, 3] *= rng.lognormal(0.0, 1.5, size=setup.features.shape[0])[:, None, None]
    return train(_batches(setup, 12), TrainingParams(hidden_size=16, epochs=2, validation_block_windows=10), 10.0, 6)


def test_training_reads_a_level_for_the_busy_host_and_says_so(busy_one):
    host = busy_one.classes["host"]
    assert list(host.threshold.levels) == ["10.0.0.3"] and host.threshold.levels["10.0.0.3"] > 1.5
    summary = busy_one.training["classes"]["host"]
    assert 1 == summary["own_levels"] and summary["largest_level"] == host.threshold.levels["10.0.0.3"]


def test_netad_train_says_how_many_hosts_have_a_level_and_the_largest(busy_one, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from detector import cli
    from detector.service import training

    busy_one.training["history_warmup_s"] = 3600.0
    monkeypatch.setattr(training, "train_from_captures", lambda *a, **k: busy_one)
    capture = tmp_path / "c.pcap"
    capture.write_bytes(b"")
    result = CliRunner().invoke(cli.main, ["train", "--pcap", str(capture), "--out", str(tmp_path / "m")])
    assert 0 == result.exit_code, result.output
    level = busy_one.classes["host"].threshold.levels["10.0.0.3"]
    assert f"hosts judged in their own level, busier than the class's: 1, up to x{level:.3g} (10.0.0.3)" in result.output
