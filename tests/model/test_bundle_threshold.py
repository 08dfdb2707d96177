"""Model bundles (round trip, schema refusal, corruption) and threshold calibration."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.capture.windows import PACKET_SCHEMA
from detector.errors import ModelError
from detector.model.bundle import META, WEIGHTS, ModelBundle, meta_digest
from detector.model.threshold import MIN_MARGIN, calibrate
from tests.model.test_scorer import _bundle


def test_bundle_round_trip(tmp_path: Path):
    """Weights, scaler and thresholds (with the accumulation's allowance) come back identical;
    no pickle is written."""
    b = _bundle()
    b.classes["host"].threshold.allowance = 0.2
    b.classes["host"].scaler.error_scale = np.linspace(1.0, 9.0, len(PACKET_SCHEMA.features), dtype=np.float32)
    b.save(tmp_path / "m")
    assert {META, WEIGHTS} == {p.name for p in (tmp_path / "m").iterdir()}
    back = ModelBundle.load(tmp_path / "m", expected_schema=PACKET_SCHEMA)
    assert b.version == back.version
    for cls in ("global", "host"):
        for (k, v), (k2, v2) in zip(b.classes[cls].network.state_dict().items(), back.classes[cls].network.state_dict().items(), strict=True):
            assert k == k2
            assert torch.equal(v, v2)
        np.testing.assert_array_equal(b.classes[cls].scaler.scale, back.classes[cls].scaler.scale)
        np.testing.assert_array_equal(b.classes[cls].scaler.weights(), back.classes[cls].scaler.weights())
        assert b.classes[cls].threshold == back.classes[cls].threshold
    assert back.classes["global"].scaler.error_scale is None  # not learned: every error counts as it is


def test_bundle_with_other_schema_is_refused(tmp_path: Path):
    b = _bundle()
    b.save(tmp_path / "m")
    other = replace(PACKET_SCHEMA, version=PACKET_SCHEMA.version + 1)
    with pytest.raises(ModelError, match=f"feature schema packet v{PACKET_SCHEMA.version}"):
        ModelBundle.load(tmp_path / "m", expected_schema=other)


def test_corrupted_weights_are_refused(tmp_path: Path):
    b = _bundle()
    b.save(tmp_path / "m")
    w = tmp_path / "m" / WEIGHTS
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256 mismatch"):
        ModelBundle.load(tmp_path / "m")


def test_the_carried_peer_history_round_trips_and_a_replaced_one_is_refused(tmp_path: Path):
    """The training span's peer history is saved beside the weights, its SHA-256 in model.json:
    it loads back equal; a history file replaced (or gone) is refused, as replaced weights are."""
    from detector.capture.windows._history import PeerHistory
    from detector.contracts import CarriedHistory
    from detector.model.meta import HISTORY, describe

    h = PeerHistory(3600, 0)
    keys = np.array([0, 7], np.uint64)
    peers = (np.array([0, 1]), np.zeros(2, np.uint64), np.array([5, 9], np.uint64))
    h.observe(keys, peers, (np.zeros(0, np.int64),) * 8, 60 * 10**9)
    b = _bundle()
    b.history = CarriedHistory(h.state_dict(), 60 * 10**9)
    b.save(tmp_path / "m")
    back = ModelBundle.load(tmp_path / "m")
    assert back.history is not None and back.history.ended_ns == 60 * 10**9
    assert back.history.state.keys() == b.history.state.keys()
    for k, v in b.history.state.items():
        np.testing.assert_array_equal(back.history.state[k], v)
    assert back.history.rows("peers") == 2
    (tmp_path / "m" / HISTORY).write_bytes((tmp_path / "m" / HISTORY).read_bytes()[:-1] + b" ")
    with pytest.raises(ModelError, match="history.safetensors: SHA-256 mismatch"):
        ModelBundle.load(tmp_path / "m")
    with pytest.raises(ModelError, match="history.safetensors: SHA-256 mismatch"):
        describe(tmp_path / "m")
    (tmp_path / "m" / HISTORY).unlink()
    with pytest.raises(ModelError, match="missing"):
        ModelBundle.load(tmp_path / "m")


def test_an_allowance_out_of_range_is_refused_and_a_missing_one_is_the_old_half(tmp_path: Path):
    b = _bundle()
    b.save(tmp_path / "m")
    meta = tmp_path / "m" / META
    doc = json.loads(meta.read_text())
    doc["classes"]["host"]["threshold"]["allowance"] = 1.5
    doc["meta_sha256"] = meta_digest(doc)
    meta.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=r"host\.threshold\.allowance: 1\.5"):
        ModelBundle.load(tmp_path / "m")
    del doc["classes"]["host"]["threshold"]["allowance"]  # a bundle from before it was chosen
    doc["meta_sha256"] = meta_digest(doc)
    meta.write_text(json.dumps(doc))
    assert ModelBundle.load(tmp_path / "m").classes["host"].threshold.allowance == 0.5


def test_an_error_scale_below_its_floor_is_refused(tmp_path: Path):
    """An error scale under MIN_ERROR_SCALE would turn one packet of a quiet feature into an
    alarm: such a bundle is refused, naming the class."""
    b = _bundle()
    b.save(tmp_path / "m")
    meta = tmp_path / "m" / META
    doc = json.loads(meta.read_text())
    doc["classes"]["host"]["scaler"]["error_scale"] = [0.5] * len(PACKET_SCHEMA.features)
    doc["meta_sha256"] = meta_digest(doc)
    meta.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=r"host\.scaler\.error_scale: 0\.5 is below 1\.0"):
        ModelBundle.load(tmp_path / "m")


def test_the_error_scale_is_a_high_quantile_of_the_held_out_errors_floored():
    """Per feature, the 0.999 quantile of the held-out windows' errors, at least one scaled
    unit; windows not held out (NaN rows) do not count."""
    from detector.model.scaler import ERROR_QUANTILE, MIN_ERROR_SCALE, held_out_error_scale

    rng = np.random.default_rng(5)
    errors = np.zeros((5000, 3), np.float32)
    errors[:, 0] = rng.exponential(4.0, 5000)  # a noisy feature
    errors[:, 1] = rng.exponential(0.01, 5000)  # one always reconstructed well
    errors[:100] = np.nan
    got = held_out_error_scale(errors)
    assert got[0] == pytest.approx(np.quantile(errors[100:, 0].astype(np.float64), ERROR_QUANTILE), rel=1e-6)
    assert got[1] == got[2] == MIN_ERROR_SCALE
    assert (held_out_error_scale(np.full((4, 3), np.nan, np.float32)) == MIN_ERROR_SCALE).all()


def test_windows_the_screen_leaves_out_do_not_set_the_error_scales():
    """An attack inside the training span that the truth did not name: its held-out windows,
    each far above every benign one in one feature, would make that feature's error scale and
    hide the next attack like it. The threshold's screen, reading the undivided scores, takes
    exactly them out before the scales are read."""
    from detector.model.scaler import held_out_error_scale
    from detector.model.training import _benign_rows

    rng = np.random.default_rng(6)
    errors = rng.exponential(1.0, (1, 2000, 4)).astype(np.float32)  # (entity, window, feature)
    errors[0, :2, 3] = np.nan  # windows not held out
    errors[0, 100:110, 2] = 5000.0  # ten attack windows, all in one feature
    rows = _benign_rows(errors, bins=6)
    assert rows.shape == (1988, 4) and (rows[:, 2] < 5000.0).all()
    assert held_out_error_scale(rows)[2] < 20.0 < held_out_error_scale(errors.reshape(-1, 4))[2]


def test_truncated_metadata_is_refused(tmp_path: Path):
    b = _bundle()
    b.save(tmp_path / "m")
    meta = tmp_path / "m" / META
    meta.write_text(meta.read_text()[:50])
    with pytest.raises(ModelError, match="unreadable"):
        ModelBundle.load(tmp_path / "m")


def test_save_replaces_atomically(tmp_path: Path):
    """Saving over an existing bundle leaves one complete bundle and no temporaries."""
    _bundle(seed=1).save(tmp_path / "m")
    second = _bundle(seed=2)
    second.save(tmp_path / "m")
    assert ["m"] == sorted(p.name for p in tmp_path.iterdir())
    assert second.version == json.loads((tmp_path / "m" / META).read_text())["weights_sha256"][:12]


@pytest.mark.parametrize("target", [1e-2, 1e-3])
def test_pot_threshold_realises_the_target_false_alarm_rate(target: float):
    """On scores from a known heavy-tailed distribution, the realised false-alarm rate of
    the calibrated threshold is within a factor 2 of the target."""
    rng = np.random.default_rng(3)
    calibration = rng.lognormal(0.0, 0.6, 20_000)
    th = calibrate(calibration, target_false_alarm=target)
    assert "pot" == th.method
    fresh = rng.lognormal(0.0, 0.6, 2_000_000)
    realised = float((fresh > th.value).mean())
    assert target / 2 <= realised <= target * 2


def test_too_few_peaks_falls_back_to_quantile_and_says_why():
    th = calibrate(np.linspace(0, 1, 50), target_false_alarm=1e-4)
    assert "quantile" == th.method
    assert "peaks" in th.reason


def test_a_rejected_tail_fit_falls_back_to_the_targets_own_quantile_where_the_windows_can_read_it():
    """100,000 windows (a few hundred hosts' six hours) whose scores come in steps (identical
    hosts score alike): the fit's check rejects the tail, and the fallback is the empirical
    quantile at the 1e-4 target, not the 0.999 quantile that let ten times as many windows
    of the same traffic over it (docs/EVALUATION.md xlviii)."""
    rng = np.random.default_rng(3)

    def scores(n: int) -> np.ndarray:
        return np.round(rng.pareto(4.0, n) / 0.3) * 0.3

    calibration = scores(100_000)
    th = calibrate(calibration, target_false_alarm=1e-4)
    assert "quantile" == th.method and "poor tail fit" in th.reason and 0 == th.n_outliers
    assert (calibration > th.value).mean() <= 1e-4
    fresh = scores(5_000_000)
    assert 0.5e-4 <= (fresh > th.value).mean() <= 2e-4
    assert (fresh > np.quantile(calibration, 0.999)).mean() >= 5e-4
    # a looser target than the configured quantile keeps the configured one
    assert calibrate(calibration, target_false_alarm=1e-2).value == pytest.approx(np.quantile(calibration, 0.999))


def test_a_few_hours_of_calibration_get_an_exponential_tail_not_their_maximum():
    """150 windows (2.5 h of 1-minute windows): the initial quantile goes down to 0.90 and the
    15 peaks above it are fitted as an exponential tail. Over 200 such calibrations the median
    realised false-alarm rate is within a factor 2 of the 1e-3 target, where the old fallback
    (the 0.999 quantile of 150 scores, about their maximum) is passed 3 times as often or more."""
    rng = np.random.default_rng(11)
    realised, fallback = [], []
    for _ in range(200):
        calibration = rng.exponential(1.0, 150)
        th = calibrate(calibration, target_false_alarm=1e-3)
        assert "pot" == th.method and 0.0 == th.shape and "exponential" in th.reason and 15 == th.n_peaks
        realised.append(np.exp(-th.value))  # the exponential's exact exceedance probability
        fallback.append(np.exp(-np.quantile(calibration, 0.999)))
    assert 0.5e-3 <= np.median(realised) <= 2e-3
    assert np.median(fallback) >= 3e-3


def test_bounded_tail_is_extrapolated_as_exponential_not_ended_at_the_largest_score():
    """A light, bounded tail (uniform scores) fits a negative shape whose end is the largest
    calibration score; the threshold is extrapolated as an exponential tail instead, so it
    lies above every calibration score and says why."""
    rng = np.random.default_rng(5)
    calibration = rng.uniform(0.0, 1.0, 2_000)
    free = calibrate(calibration, target_false_alarm=1e-3)
    assert "pot" == free.method and 0.0 == free.shape
    assert "exponential" in free.reason and "raised" not in free.reason
    assert free.value > calibration.max()
    # exponential above u = q0.98 with mean excess ~0.01: u + 0.01 * ln(0.02 / 1e-3) ~ 1.01
    assert free.value < 1.1


def test_with_fewer_windows_than_one_per_false_alarm_the_threshold_clears_the_largest_by_the_margin():
    """2,000 windows at a target of 1e-4: not one of them may reach the threshold, and the
    next day's largest passes today's about every other day, so the threshold is at least
    MIN_MARGIN over the largest. With 20,000 windows the fit stands (its target puts two of
    them over the threshold)."""
    rng = np.random.default_rng(5)
    few = rng.uniform(0.0, 1.0, 2_000)
    th = calibrate(few, target_false_alarm=1e-4)
    assert th.value == pytest.approx(few.max() / (1 - MIN_MARGIN)) and "raised to 10%" in th.reason
    assert "exponential" in th.reason  # the fit's own reason is kept
    many = rng.exponential(1.0, 20_000)
    th = calibrate(many, target_false_alarm=1e-4)
    assert "raised" not in th.reason and th.value < many.max() / (1 - MIN_MARGIN)


def test_heavy_tail_shape_is_capped():
    """A tail heavier than xi = 0.5 (Pareto with alpha 1: xi = 1) is extrapolated with the
    shape held at 0.5: above the largest score seen (the old fallback), below the free fit."""
    rng = np.random.default_rng(6)
    calibration = rng.pareto(1.0, 5_000) + 1.0
    th = calibrate(calibration, target_false_alarm=1e-4)
    assert "pot" == th.method and 0.5 == th.shape
    assert "capped" in th.reason
    assert th.value > np.quantile(calibration, 0.999)


def test_the_tail_fit_is_scipys_genpareto_fit():
    """The calibration's own objective gives genpareto.fit's answer, free and with the shape
    held: on light, exponential, heavy and bounded tails (points at the end of their
    support, where scipy's penalty decides), with ties, from 8 to 400 peaks."""
    from scipy import stats

    from detector.model.threshold import MAX_SHAPE, _fit_pareto

    rng = np.random.default_rng(11)
    fits = 0
    for shape in (-0.9, -0.4, 0.0, 0.2, 0.8):
        for n in (8, 30, 400):
            peaks = stats.genpareto.rvs(shape, scale=rng.uniform(0.01, 5.0), size=n, random_state=rng)
            for sample in (peaks, np.round(peaks, 1) + 0.05):
                xi, _, sigma = stats.genpareto.fit(sample, floc=0.0)
                np.testing.assert_allclose(_fit_pareto(sample), (xi, sigma), rtol=1e-9)
                _, _, held = stats.genpareto.fit(sample, f0=MAX_SHAPE, floc=0.0)
                np.testing.assert_allclose(_fit_pareto(sample, MAX_SHAPE), (MAX_SHAPE, held), rtol=1e-9)
                fits += 2
    assert 60 == fits


def test_training_reports_margin_and_warns_of_short_span_thin_margin_and_epoch_cap():
    """The margin is the threshold's distance above the largest held-out benign window; a span
    under a day, a margin under 10 % and training that hit its epoch cap each give a warning."""
    from detector.model.training import TrainingParams, _margin_and_warnings

    hour_ns = 3_600_000_000_000
    day = {"train_start": 0, "train_end": 30 * hour_ns, "epochs": 12}
    quiet = _margin_and_warnings("host", 2.0, np.array([0.5, 1.0, 1.5]), day, TrainingParams(epochs=30))
    assert (1.5, 0.25, []) == (quiet["largest_held_out"], quiet["margin"], quiet["warnings"])
    short = {"train_start": 0, "train_end": 6 * hour_ns, "epochs": 30}
    loud = _margin_and_warnings("host", 2.0, np.array([1.9]), short, TrainingParams(epochs=30))
    assert 3 == len(loud["warnings"])
    assert ["trained on 6.0 h", "thin margin", "training ran to its cap"] == [w[: len(p)] for w, p in zip(
        loud["warnings"], ["trained on 6.0 h", "thin margin", "training ran to its cap"], strict=True)]


@pytest.mark.parametrize("attacks", [2, 10])
def test_attack_windows_in_the_calibration_are_screened_out_and_reported(attacks: int):
    """Windows of an attack in the training span (here a hundred times the largest benign
    score) would be most of the tail's peaks: the screen leaves exactly them out, so the
    threshold is the clean one, and says from which score up it left windows out."""
    rng = np.random.default_rng(8)
    benign = rng.lognormal(0.0, 0.6, 720)
    clean = calibrate(benign)
    assert 0 == clean.n_outliers and clean.outliers_from is None
    attack = benign.max() * 100.0 * rng.uniform(0.5, 1.5, attacks)
    screened = calibrate(np.concatenate([benign, attack]))
    assert (attacks, attack.min()) == (screened.n_outliers, screened.outliers_from)
    assert clean.value == screened.value
    from detector.model import threshold

    unscreened = threshold._calibrate_sorted(np.sort(np.concatenate([benign, attack])), 1e-4, 0.999, 0.98)
    assert unscreened.value > 2 * clean.value  # what the screen prevents


def test_the_screen_leaves_heavy_benign_tails_alone():
    """A heavy benign tail (Pareto, shape 0.5, the heaviest the fit extrapolates) is not cut
    for being heavy: in 60 calibrations of 720 windows at most 3 lose a window to the screen."""
    rng = np.random.default_rng(9)
    screened = [calibrate(rng.pareto(2.0, 720) + 1.0).n_outliers for _ in range(60)]
    assert sum(n > 0 for n in screened) <= 3


def test_outlier_windows_are_named_and_warned_and_kept_out_of_the_margin():
    """The warning names each window the screen left out; one that is its entity's first,
    scored cold, is said to be."""
    from detector.model.threshold import Threshold
    from detector.model.training import TrainingParams, _ClassData, _margin_and_warnings, _outlier_windows

    minute = 60_000_000_000
    scores = np.array([[0.1, 0.2, 50.0, np.nan], [np.nan, 80.0, 0.2, 0.1]], dtype=np.float32)
    present = np.ones((2, 4), bool)
    present[1, 0] = False  # 10.0.0.2 is first seen in the window the screen leaves out
    cd = _ClassData(features=np.zeros((2, 4, 6, 1), np.float32), present=present,
                    usable=np.ones((2, 4), bool), window_start_ns=np.arange(4) * minute, entities=["10.0.0.1", "10.0.0.2"])
    th = Threshold(2.0, "pot", 1e-4, 0.5, 0.0, 0.1, 8, 3, n_outliers=2, outliers_from=50.0)
    found = _outlier_windows(th, {"host": (cd, scores)})
    assert [("10.0.0.2", "1970-01-01T00:01:00.000Z", 80.0, True), ("10.0.0.1", "1970-01-01T00:02:00.000Z", 50.0, False)] == [
        (o["entity"], o["window_start"], o["score"], o["first"]) for o in found]
    summary = {"train_start": 0, "train_end": 30 * 60 * minute, "epochs": 12, "outliers": found}
    warned = _margin_and_warnings("host", 2.0, np.array([0.3]), summary, TrainingParams())
    assert 1 == len(warned["warnings"]) and warned["warnings"][0].startswith("2 held-out window(s) far beyond")
    assert ("10.0.0.2 at 1970-01-01T00:01:00.000Z (80, its first window, scored cold), "
            "10.0.0.1 at 1970-01-01T00:02:00.000Z (50);") in warned["warnings"][0]


def test_threshold_interval_covers_the_threshold_and_narrows_with_more_held_out_windows():
    """The block bootstrap of the held-out windows brackets the threshold calibrated on all of
    them, and a hundred times more windows narrow it (to within 30 %); a wide one is warned."""
    from detector.model.training import TrainingParams, _margin_and_warnings, bootstrap_thresholds, interval_of

    rng = np.random.default_rng(4)
    ratios = []
    for n_windows in (200, 20_000):
        scores = rng.lognormal(0.0, 0.6, (2, n_windows))  # two entities' out-of-fold scores
        scores[0, ::7] = np.nan  # windows an entity did not have
        low, high = interval_of(bootstrap_thresholds([scores], TrainingParams()))
        assert low <= calibrate(scores[np.isfinite(scores)]).value <= high
        ratios.append(high / low)
    assert ratios[1] < 1.3 < ratios[0]
    hour_ns = 3_600_000_000_000
    summary = {"train_start": 0, "train_end": 30 * hour_ns, "epochs": 12}
    steady = _margin_and_warnings("host", 4.0, np.array([1.0]), {**summary, "threshold_interval": (3.0, 5.0)}, TrainingParams())
    assert [] == steady["warnings"]
    wide = _margin_and_warnings("host", 4.0, np.array([1.0]), {**summary, "threshold_interval": (2.0, 9.0)}, TrainingParams())
    assert ["uncertain threshold"] == [w[:19] for w in wide["warnings"]]


def test_accumulated_scores_carry_only_between_consecutive_windows():
    """training._accumulated is the scorer's recurrence over an (entity, window) matrix: a
    window carries what its accumulated score has above half the threshold into the next,
    nothing after an alarm and nothing over a window the entity did not have (NaN)."""
    from detector.model.training import _accumulated

    scores = np.array([[0.8, 0.8, 0.1, 0.9, 0.9, np.nan, 0.9],
                       [0.2, 0.3, 0.2, 0.2, 0.2, 0.2, 0.2]])
    got = _accumulated(scores, 1.0, 0.5)
    np.testing.assert_allclose(got[0], [0.8, 1.1, 0.1, 0.9, 1.3, np.nan, 0.9])  # 0.8 + 0.3 alarms: spent; gap
    np.testing.assert_allclose(got[1], scores[1])  # never above half: nothing carried
    low = _accumulated(scores, 1.0, 0.1)  # what is above a tenth is carried
    np.testing.assert_allclose(low[1], [0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])


def test_the_allowance_is_the_lowest_that_brings_no_held_out_window_nearer_the_threshold():
    """training.allowance: isolated benign peaks (each followed by quiet windows) let it go
    down to the lowest tried; a benign run at a third of the threshold holds it where that run
    does not add up past the largest window; a run at 0.3, beside a peak of 0.6, stops it
    where the run would pass the peak; windows that routinely score 0.25 to 0.45 of the
    threshold keep it above what one in a hundred of them scores."""
    from detector.model.training import ALLOWANCES, allowance

    rng = np.random.default_rng(3)
    quiet = rng.uniform(0.0, 0.05, size=(2, 2000))
    peaks = quiet.copy()
    peaks[0, [50, 200, 350]] = [0.7, 0.8, 0.6]
    assert allowance(peaks, 1.0) == ALLOWANCES[-1] == 0.2
    run = peaks.copy()
    run[1, 100:110] = 0.33  # ten windows at a third: at 0.3 they add 0.03 a window, at 0.2 0.13
    assert allowance(run, 1.0) == 0.3
    steady = quiet.copy()
    steady[0, 300] = 0.6
    steady[1, 10:20] = 0.3  # at 0.2 it carries 0.1 a window: 0.3 + 9 * 0.1 = 1.2, past 0.6
    assert allowance(steady, 1.0) == 0.3
    busy = rng.uniform(0.25, 0.45, size=(1, 2000))  # a busy server: its 0.99 quantile is 0.448
    assert allowance(busy, 2.0) == 0.3  # under twice the threshold, 0.224: nothing adds up, but 0.2 is below it
    busy[0, 500:502] = [0.79, 0.65]
    assert allowance(busy, 1.0) == 0.5
    assert allowance(np.full((1, 10), np.nan), 1.0) == 0.5  # nothing held out: the most cautious


@pytest.mark.slow
@pytest.mark.parametrize("windows, source", [(120, "class"), (60, "pooled")])
def test_a_class_is_calibrated_on_its_own_windows_where_they_have_a_tail_to_fit(windows: int, source: str):
    """`global` (one entity) beside eight hosts whose traffic varies far more: with 120
    windows `global`'s threshold comes from its own held-out windows (pooled, it took on the
    hosts' heavier tail: docs/EVALUATION.md, section xi); with 60, fewer than a tail can be
    fitted to (MIN_TAIL_WINDOWS), from all classes' pooled."""
    from detector.contracts import WindowBatch
    from detector.model.threshold import MIN_TAIL_WINDOWS
    from detector.model.training import TrainingParams, train

    assert 60 < MIN_TAIL_WINDOWS <= 120
    rng = np.random.default_rng(3)
    n_feat, minute = len(PACKET_SCHEMA.features), 60_000_000_000
    names, classes = ["global"] + [f"10.0.0.{i}" for i in range(1, 9)], ["global"] + ["host"] * 8
    batches = []
    for k in range(windows):
        feats = rng.poisson(5.0, (9, 6, n_feat)).astype(np.float32)
        feats[1:] *= rng.lognormal(0.0, 1.0, (8, 6, 1)).astype(np.float32)
        batches.append(WindowBatch(k * minute, (k + 1) * minute, names, classes, feats, PACKET_SCHEMA))
    bundle = train(batches, TrainingParams(epochs=2, hidden_size=8, validation_block_windows=10), bin_s=10, bins=6)
    summary = bundle.training["classes"]["global"]
    assert summary["calibration"].startswith(f"{source}: out-of-fold scores of ")
    assert summary["calibration"].endswith(f" {windows if source == 'class' else 9 * windows} windows")
    told = [w for w in summary["warnings"] if "too few for a tail of its own" in w]
    if source == "class":
        assert told == []
    else:  # `netad train` says so, and a pooled class keeps the most cautious allowance
        assert len(told) == 1 and told[0].startswith(f"only {windows} held-out windows of this class")
        assert bundle.classes["global"].threshold.allowance == summary["allowance"] == 0.5
    for cm in bundle.classes.values():  # each class's errors counted in its held-out error scale
        assert cm.scaler.error_scale is not None and (cm.scaler.error_scale >= 1.0).all()
    assert bundle.classes["host"].scaler.error_scale.max() > 1.0  # the hosts' varying volumes


@pytest.mark.parametrize("target", [1e-4, 1e-3])
def test_training_says_how_many_false_alarms_a_day_each_class_expects_and_warns_over_one(target: float):
    """training.target_false_alarm is a probability per entity window, so a class alarms as
    often as it has entity windows: four hosts in every 60 s window and four more in every
    other are six a window, 8,640 host windows a day. `netad train` says what the target
    comes to (0.864 false alarms a day at 1e-4, 8.64 at 1e-3: warned, with the target that
    would give one) and `global`, one window a minute, 0.144 or 1.44."""
    from detector.contracts import WindowBatch
    from detector.model.training import TrainingParams, train

    rng = np.random.default_rng(5)
    n_feat, minute = len(PACKET_SCHEMA.features), 60_000_000_000
    batches = []
    for k in range(100):
        hosts = [f"10.0.0.{i}" for i in range(1, 9 if k % 2 == 0 else 5)]
        feats = rng.poisson(5.0, (1 + len(hosts), 6, n_feat)).astype(np.float32)
        batches.append(WindowBatch(k * minute, (k + 1) * minute, ["global"] + hosts, ["global"] + ["host"] * len(hosts),
                                   feats, PACKET_SCHEMA))
    params = TrainingParams(epochs=1, hidden_size=8, validation_block_windows=10, target_false_alarm=target)
    summary = train(batches, params, bin_s=10, bins=6).training["classes"]
    host, link = summary["host"], summary["global"]
    assert host["entities_per_window"] == 6.0 and link["entities_per_window"] == 1.0
    assert host["false_alarms_per_day"] == pytest.approx(target * 6 * 1440)
    assert link["false_alarms_per_day"] == pytest.approx(target * 1440)
    told = {cls: [w for w in s["warnings"] if "false alarms a day expected" in w] for cls, s in summary.items()}
    if target == 1e-4:
        assert told == {"global": [], "host": []}
    else:
        assert told["host"] == ["8.64 false alarms a day expected: the target (0.001, training.target_false_alarm) is per "
                                "entity window, and this class has 6 entities in a window on average; set it to "
                                "0.00012 for one a day"]
        assert told["global"][0].startswith("1.44 false alarms a day expected") and "set it to 0.00069 for one" in told["global"][0]


def test_the_deployed_threshold_is_the_median_of_the_resamples_floored_and_steadier_than_one_samples():
    """bagged: the median of the resampled thresholds, never under MIN_MARGIN over the largest
    calibration window where they are fewer than one per false alarm, the sample's own value
    kept in `reason`. Over independent samples of one heavy-ish benign tail (700 held-out
    windows each, half a day's), the median of the resamples lands nearer the tail's true
    1e-4 quantile than each sample's own fit (root mean square, relative: 0.17-0.19 against
    0.23-0.59 over four draws of the samples), and moves less from sample to sample."""
    from copy import deepcopy

    from detector.model.threshold import bagged
    from detector.model.training import TrainingParams, bootstrap_thresholds

    draw = np.random.default_rng(0)
    population = draw.lognormal(0.0, 0.5, 5_000_000) * (1.0 + draw.pareto(6.0, 5_000_000))
    rng = np.random.default_rng(11)
    true = float(np.quantile(population, 1.0 - 1e-4))
    own, median = [], []
    for _ in range(12):
        scores = rng.lognormal(0.0, 0.5, 700) * (1.0 + rng.pareto(6.0, 700))
        th = calibrate(scores)
        resampled = bootstrap_thresholds([scores[None, :]], TrainingParams(), resamples=60)
        b = bagged(deepcopy(th), resampled, scores)
        assert b.value == pytest.approx(max(float(np.median(resampled)), scores.max() / (1.0 - MIN_MARGIN)))
        assert f"the sample's own: {th.value:.4g}" in b.reason
        own.append(th.value)
        median.append(b.value)

    def error(values: list[float]) -> float:
        return float(np.sqrt(np.mean((np.asarray(values) / true - 1.0) ** 2)))

    assert error(median) < error(own)
    assert np.std(median) / np.mean(median) < np.std(own) / np.mean(own)
    assert bagged(deepcopy(th), np.array([]), scores).value == th.value  # nothing resampled: the sample's own


def test_the_margin_is_read_on_the_windows_the_daemon_may_alert_on_not_an_entity_s_first():
    """An entity's first window is scored from the neutral state and never alerted on
    (model.warmup_windows 1, the default). Here each entity's first window is 1.6 times its usual
    traffic, so it is its class's largest held-out score (and not so far beyond the rest
    that the screen leaves it out); the margin `netad train` reports, and its thin-margin
    warning, read the largest of the others."""
    from detector.contracts import WindowBatch
    from detector.model.training import TrainingParams, _accumulated, _member, collect

    rng = np.random.default_rng(4)
    n_feat, minute = len(PACKET_SCHEMA.features), 60_000_000_000
    names, classes = ["global"] + [f"10.0.0.{i}" for i in range(1, 5)], ["global"] + ["host"] * 4
    batches = []
    for k in range(120):
        here = [0, 1, 2] + ([3, 4] if k >= 30 else [])  # two hosts first seen in window 30
        feats = rng.poisson(5.0, (len(here), 6, n_feat)).astype(np.float32)
        if k in (0, 30):
            feats[[i for i, e in enumerate(here) if (k == 0) == (e < 3)]] *= 1.6
        batches.append(WindowBatch(k * minute, (k + 1) * minute, [names[e] for e in here], [classes[e] for e in here],
                                   feats, PACKET_SCHEMA))
    data, _ = collect(batches)
    member = _member(data, TrainingParams(epochs=2, hidden_size=8, validation_block_windows=10, members=1), 10.0, 6, False)
    for cls in ("global", "host"):
        first, benign = member.first[cls], member.benign[cls]
        np.testing.assert_array_equal(first.sum(axis=1), 1)  # one first window per entity, however late it came
        th = member.classes[cls].threshold
        every = _accumulated(benign, th.value, th.allowance)
        others = _accumulated(np.where(first, np.nan, benign), th.value, th.allowance)
        assert np.nanmax(every) == np.nanmax(every[first]) > np.nanmax(others)  # the bursts: the largest
        assert float(np.nanmax(others)) == member.summary[cls]["largest_held_out"]
        assert member.summary[cls]["margin"] == (th.value - np.nanmax(others)) / th.value
