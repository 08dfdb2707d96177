"""The streaming scorer: carried state, batching, warm-up, bounds, checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from detector.capture.schemas import HISTORY_FEATURES
from detector.capture.windows import PACKET_SCHEMA
from detector.capture.windows._base import history_keys, known_rows, link_hosts_of, requested_by_of
from detector.contracts import LinkHosts, ScoreBatch, WindowBatch
from detector.model import scorer as scorer_module
from detector.model.bundle import ClassModel, ModelBundle
from detector.model.lstm import LSTMAutoencoder, phase_of
from detector.model.scaler import FeatureScaler
from detector.model.scorer import StreamingScorer, aligned_error, reconstruct
from detector.model.threshold import Threshold

BINS = 6
N_F = len(PACKET_SCHEMA.features)


def _bundle(seed: int = 0, hidden: int = 16) -> ModelBundle:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train = rng.gamma(2.0, 20.0, size=(200, BINS, N_F)).astype(np.float32)
    classes = {}
    for cls in ("global", "host"):
        th = Threshold(5.0, "quantile", 1e-4, 1.0, None, None, 100, 0)
        classes[cls] = ClassModel(LSTMAutoencoder(N_F, hidden, BINS).eval(), FeatureScaler.fit(train), th)
    return ModelBundle(PACKET_SCHEMA, 10.0, BINS, hidden, classes)


def _windows(k: int, entities: list[str], feats: np.ndarray) -> WindowBatch:
    classes = ["global" if e == "global" else "host" for e in entities]
    start = 1_700_000_000_000_000_000 + k * 60_000_000_000
    return WindowBatch(start, start + 60_000_000_000, entities, classes, feats.astype(np.float32), PACKET_SCHEMA)


def _sequence(n_windows: int, n_entities: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, 20.0, size=(n_windows, n_entities, BINS, N_F)).astype(np.float32)


def test_carried_state_equals_one_long_sequence_and_differs_from_reset():
    """Scoring a host window by window (daemon path) equals running the encoder over the
    concatenated bins of all its windows with state carried, and differs from resetting
    the state every window."""
    bundle = _bundle()
    seq = _sequence(8, 1)
    scorer = StreamingScorer(bundle, device="cpu", warmup_windows=0)
    streamed = [scorer.score(_windows(k, ["10.0.0.1"], seq[k]))[0].score for k in range(8)]

    cm = bundle.classes["host"]
    x = torch.from_numpy(cm.scaler.transform(seq[:, 0].reshape(1, 8 * BINS, N_F)))
    with torch.no_grad():
        outputs, _ = cm.network.encoder(x)  # one long sequence from the neutral state
        long_scores = []
        for k in range(8):
            code = outputs[:, (k + 1) * BINS - 1]
            recon = cm.network.decode(code, BINS)
            long_scores.append(float(aligned_error(x[:, k * BINS : (k + 1) * BINS], recon).sum()) / (BINS * N_F))

    reset = []
    for k in range(8):
        fresh = StreamingScorer(bundle, device="cpu", warmup_windows=0)
        reset.append(fresh.score(_windows(k, ["10.0.0.1"], seq[k]))[0].score)

    np.testing.assert_allclose(long_scores, streamed, rtol=1e-5, atol=1e-6)
    assert streamed[0] == pytest.approx(reset[0], rel=1e-6)
    assert np.abs(np.array(streamed[1:]) - np.array(reset[1:])).max() > 1e-4


def test_aligned_error_forgives_a_one_bin_move_and_nothing_else():
    """A burst one bin away from where the reconstruction has it costs nothing; two bins
    away it costs one burst (the plain error counts it twice: missing here, new there); new
    activity, or expected activity that did not come, costs its squared error in full."""
    expected = torch.zeros(1, 6, 3)
    expected[0, 2, 0] = 5.0  # a periodic job in bin 2

    def err(observed):
        return float(aligned_error(observed, expected.clone()).sum())

    late = torch.zeros(1, 6, 3)
    late[0, 3, 0] = 5.0
    assert err(late) == 0.0
    much_later = torch.zeros(1, 6, 3)
    much_later[0, 4, 0] = 5.0
    assert err(much_later) == pytest.approx(25.0)
    quiet = torch.zeros(1, 6, 3)
    assert err(quiet) == pytest.approx(25.0)  # the job did not run
    scan = late.clone()
    scan[0, 5, 1] = 6.0  # plus a feature never expected (a scan's SYNs) in the last bin
    assert err(scan) == pytest.approx(36.0)
    per_feature = aligned_error(scan, expected.clone())[0]
    assert per_feature.tolist() == pytest.approx([0.0, 36.0, 0.0])  # the explanation names the scan
    # a single bin, or bins that match where they are: the plain squared error
    x, r = torch.randn(4, 1, 3), torch.randn(4, 1, 3)
    torch.testing.assert_close(aligned_error(x, r), (x - r).pow(2).sum(dim=1))
    torch.testing.assert_close(aligned_error(expected, expected.clone()), torch.zeros(1, 3))
    # never more than the plain error, per window
    x, r = torch.randn(64, 6, 16), torch.randn(64, 6, 16)
    assert (aligned_error(x, r).sum(dim=1) <= (x - r).pow(2).sum(dim=(1, 2)) + 1e-4).all()


def test_batched_equals_one_at_a_time():
    """Scoring many entities in one batched step equals scoring each alone."""
    bundle = _bundle()
    seq = _sequence(4, 5)
    names = ["global"] + [f"10.0.0.{i}" for i in range(1, 5)]
    together = StreamingScorer(bundle, device="cpu", warmup_windows=0)
    alone = {n: StreamingScorer(bundle, device="cpu", warmup_windows=0) for n in names}
    for k in range(4):
        batched = {s.entity: s.score for s in together.score(_windows(k, names, seq[k]))}
        for i, n in enumerate(names):
            single = alone[n].score(_windows(k, [n], seq[k][i : i + 1]))[0].score
            assert single == pytest.approx(batched[n], rel=1e-5, abs=1e-6)


def test_a_flood_of_windows_is_scored_in_steps_with_the_same_figures(monkeypatch):
    """More windows than a scoring step (a flood's entities) go through the network a step
    at a time, carrying the same state, and give the figures of one step with them all: bit
    for bit on CPU, over three windows and a step that leaves a remainder."""
    bundle = _bundle()
    names = ["global"] + [f"10.0.{i // 256}.{i % 256}" for i in range(1, 300)]
    seq = _sequence(3, len(names))
    whole = StreamingScorer(bundle, device="cpu", warmup_windows=0)
    monkeypatch.setattr(scorer_module, "SCORING_STEP", 64)
    stepped = StreamingScorer(bundle, device="cpu", warmup_windows=0)
    for k in range(3):
        monkeypatch.setattr(scorer_module, "SCORING_STEP", 64)
        a = stepped.score(_windows(k, names, seq[k]))
        monkeypatch.setattr(scorer_module, "SCORING_STEP", 4096)
        b = whole.score(_windows(k, names, seq[k]))
        for field in ("scores", "anomalous", "top_index", "top_share", "top_observed", "top_expected"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    state_a, state_b = stepped.state_dict(), whole.state_dict()
    for cls in ("global", "host"):
        assert torch.equal(state_a[cls]["h"], state_b[cls]["h"])
        assert torch.equal(state_a[cls]["c"], state_b[cls]["c"])


def test_warmup_windows_are_never_anomalous():
    """A new entity is scored but not alerted on during its warm-up windows."""
    bundle = _bundle()
    for cm in bundle.classes.values():
        cm.threshold.value = 0.0  # everything would be anomalous
    scorer = StreamingScorer(bundle, device="cpu", warmup_windows=2)
    seq = _sequence(4, 1)
    flags = [scorer.score(_windows(k, ["10.0.0.9"], seq[k]))[0] for k in range(4)]
    assert [False, False, True, True] == [s.ready for s in flags]
    assert [False, False, True, True] == [s.anomalous for s in flags]


def _raw_scores(bundle: ModelBundle, seq: np.ndarray, ks: list[int]) -> list[float]:
    """The windows' own scores (no threshold is involved in them)."""
    scorer = StreamingScorer(bundle, device="cpu", warmup_windows=0)
    return [scorer.score(_windows(k, ["10.0.0.9"], seq[i]))[0].score for i, k in enumerate(ks)]


def test_consecutive_windows_under_the_threshold_accumulate_to_an_alarm():
    """A window's accumulated score is its score plus what its entity's previous window
    carried in: what that window's accumulated score had above the class's allowance (half
    the threshold here), nothing if it alarmed. Windows each under the threshold alarm
    together; with a threshold no window comes near, nothing is carried and accumulated
    equals the score, unless the allowance is low enough for them to add up."""
    bundle = _bundle()
    seq = np.repeat(_sequence(1, 1), 8, axis=0)  # the same window 8 times: similar scores
    raw = _raw_scores(bundle, seq, list(range(8)))
    limit = 1.01 * max(raw)  # no window alone passes it
    for cm in bundle.classes.values():
        cm.threshold.value = limit
    scorer = StreamingScorer(bundle, device="cpu", warmup_windows=0)
    got = [scorer.score(_windows(k, ["10.0.0.9"], seq[k]))[0] for k in range(8)]

    carried, expected, carries = 0.0, [], []
    for s in raw:  # the recurrence, written out
        accumulated = s + carried * np.float32(limit)
        expected.append(accumulated)
        carried = 0.0 if accumulated > np.float32(limit) else max(accumulated / np.float32(limit) - 0.5, 0.0)
        carries.append(carried)
    assert [g.score for g in got] == pytest.approx(raw, rel=1e-6)
    assert [g.accumulated for g in got] == pytest.approx(expected, rel=1e-5)
    assert [g.carried for g in got] == pytest.approx(carries, rel=1e-4, abs=1e-6)  # what the incidents read
    assert [g.anomalous for g in got] == [a > np.float32(limit) for a in expected]
    assert not any(g.score > g.threshold for g in got) and any(g.anomalous for g in got)

    for cm in bundle.classes.values():
        cm.threshold.value = 4 * max(raw)  # every window under a quarter of it: nothing to carry
    quiet = StreamingScorer(bundle, device="cpu", warmup_windows=0)
    for k in range(8):
        s = quiet.score(_windows(k, ["10.0.0.9"], seq[k]))[0]
        assert s.accumulated == s.score and not s.anomalous

    for cm in bundle.classes.values():  # the class's allowance, as training chose it: a tenth
        cm.threshold.value, cm.threshold.allowance = 3 * max(raw), 0.1
    low = StreamingScorer(bundle, device="cpu", warmup_windows=0)
    got = [low.score(_windows(k, ["10.0.0.9"], seq[k]))[0] for k in range(8)]
    carried, expected = 0.0, []
    for s in raw:
        accumulated = s + carried * np.float32(3 * max(raw))
        expected.append(accumulated)
        carried = 0.0 if accumulated > np.float32(3 * max(raw)) else max(accumulated / np.float32(3 * max(raw)) - 0.1, 0.0)
    assert [g.accumulated for g in got] == pytest.approx(expected, rel=1e-5)
    assert any(g.anomalous for g in got)  # windows at about a third of it add up


def test_nothing_is_carried_over_a_window_the_entity_did_not_have():
    """Accumulation joins consecutive windows only: after a window the entity was absent
    from, its accumulated score is its own score again."""
    bundle = _bundle()
    seq = np.repeat(_sequence(1, 1), 4, axis=0)
    raw = _raw_scores(bundle, seq, [0, 1, 3])
    for cm in bundle.classes.values():
        cm.threshold.value = 1.01 * max(raw)
    scorer = StreamingScorer(bundle, device="cpu", warmup_windows=0)
    first, second = (scorer.score(_windows(k, ["10.0.0.9"], seq[k]))[0] for k in (0, 1))
    assert second.accumulated > second.score  # carried in from window 0
    after_gap = scorer.score(_windows(3, ["10.0.0.9"], seq[3]))[0]
    assert after_gap.accumulated == after_gap.score == pytest.approx(raw[2], rel=1e-6)


def test_state_bank_is_bounded_and_evicts_least_recent():
    """More entities than max_entities: the bank never exceeds the bound."""
    bundle = _bundle()
    scorer = StreamingScorer(bundle, device="cpu", max_entities=8)
    for k in range(5):
        names = [f"10.1.{k}.{i}" for i in range(6)]
        scorer.score(_windows(k, names, _sequence(1, 6, seed=k)[0]))
        assert scorer.entities <= 8
    assert scorer._banks["host"].capacity <= 8


def test_state_round_trips_through_a_checkpoint():
    """A scorer restored from state_dict continues exactly like the original, accumulation
    included."""
    bundle = _bundle()
    for cm in bundle.classes.values():
        cm.threshold.value = 2.0  # these windows score 0.7-1.4: those over 1.0 carry something into the next
    seq = _sequence(6, 3)
    names = ["global", "10.0.0.1", "10.0.0.2"]
    a = StreamingScorer(bundle, device="cpu")
    for k in range(3):
        a.score(_windows(k, names, seq[k]))
    b = StreamingScorer(bundle, device="cpu")
    b.load_state_dict(a.state_dict())
    carried_in = []
    for k in range(3, 6):
        sa = [(s.score, s.accumulated) for s in a.score(_windows(k, names, seq[k]))]
        sb = [(s.score, s.accumulated) for s in b.score(_windows(k, names, seq[k]))]
        assert sa == sb
        carried_in += [accumulated > score for score, accumulated in sb]
    assert carried_in[0] or carried_in[1] or carried_in[2]  # the first windows after the restore carried something in


def test_explanation_in_real_units():
    """Top features carry observed and expected values in the schema's units."""
    bundle = _bundle()
    seq = _sequence(1, 1)
    seq[0, 0, :, PACKET_SCHEMA.features.index("ports_out")] = 900.0
    s = StreamingScorer(bundle, device="cpu").score(_windows(0, ["10.0.0.1"], seq[0]))[0]
    top = s.top_features[0]
    assert "ports_out" == top.name
    assert "ports" == top.unit
    assert 900.0 == pytest.approx(top.observed)
    assert 0.0 < top.share <= 1.0


@pytest.mark.parametrize("n_hosts", [5, 300])  # below and above the scorer's quicksort cut-off
def test_scores_and_explanations_equal_reconstruct(n_hosts: int):
    """The daemon's path (torch end to end, only the top features scaled back) gives what
    reconstruct() and a stable sort over all features give, within float32 rounding; the
    window's minute of the hour reaches the decoder as in training. The explanation ranks the
    features by their share of the score (each error divided by its error scale), the
    deviations by the undivided errors."""
    bundle = _bundle()
    cm = bundle.classes["host"]
    with torch.no_grad():
        cm.network.phase.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(3))
    cm.scaler.error_scale = np.random.default_rng(4).uniform(1.0, 6.0, N_F).astype(np.float32)  # as training sets it
    names = [f"10.0.{i // 256}.{i % 256}" for i in range(n_hosts)]
    seq = _sequence(3, n_hosts)
    scorer = StreamingScorer(bundle, device="cpu", warmup_windows=0)
    state = cm.network.initial_state(n_hosts)
    for k in range(3):
        wb = _windows(k, names, seq[k])
        got = scorer.score(wb)
        errors, state = reconstruct(cm.network, cm.scaler, seq[k], state, torch.tensor(phase_of(wb.window_start_ns)))
        np.testing.assert_allclose(got.scores, errors.scores, rtol=1e-5)
        counted = errors.feature_error / cm.scaler.error_scale
        for prefix, error in (("top", counted), ("deviation", errors.feature_error)):
            top = np.argsort(-error, axis=1, kind="stable")[:, :3]
            share = np.take_along_axis(error, top, axis=1) / error.sum(axis=1, keepdims=True)
            np.testing.assert_array_equal(getattr(got, f"{prefix}_index"), top)
            np.testing.assert_allclose(getattr(got, f"{prefix}_share"), share, rtol=1e-5)
            np.testing.assert_allclose(getattr(got, f"{prefix}_observed"), np.take_along_axis(seq[k].mean(axis=1), top, axis=1),
                                       rtol=1e-5)
            np.testing.assert_allclose(getattr(got, f"{prefix}_expected"), np.take_along_axis(errors.expected, top, axis=1),
                                       rtol=1e-5)
        assert (got.top_index != got.deviation_index).any()  # the error scales reorder them: the two are told apart


def test_each_feature_error_counts_in_its_held_out_error_scale():
    """With an error scale, a window's score counts each feature's error divided by it (what
    the feature's error ordinarily reaches on held-out windows), in the daemon's path and in
    reconstruct() alike, and training calibrates on the same sums (held_out_scores). The
    explanation ranks the features by what the score counted of each, so the divided
    feature drops out of it; the deviations still rank them by their error in scaled units:
    how far each is from what was expected, whatever its error ordinarily is."""
    from detector.model.training import held_out_scores

    plain, weighted = _bundle(), _bundle()
    error_scale = np.ones(N_F, np.float32)
    pkts_in = PACKET_SCHEMA.features.index("pkts_in")
    error_scale[pkts_in] = 50.0  # a feature the model never reconstructs well
    weighted.classes["host"].scaler.error_scale = error_scale
    seq = _sequence(1, 4)
    seq[0, :, :, pkts_in] *= 40.0
    names = [f"10.0.0.{i}" for i in range(1, 5)]
    a = StreamingScorer(plain, device="cpu", warmup_windows=0).score(_windows(0, names, seq[0]))
    b = StreamingScorer(weighted, device="cpu", warmup_windows=0).score(_windows(0, names, seq[0]))
    cm = plain.classes["host"]
    phase = torch.tensor(phase_of(_windows(0, names, seq[0]).window_start_ns))
    errors, _ = reconstruct(cm.network, cm.scaler, seq[0], cm.network.initial_state(4), phase)
    expected = held_out_scores(errors.feature_error[None], 1.0 / error_scale, BINS)[0]
    np.testing.assert_allclose(b.scores, expected, rtol=1e-5)
    share = errors.feature_error[:, pkts_in] / errors.feature_error.sum(axis=1)
    np.testing.assert_allclose(b.scores, a.scores - errors.feature_error[:, pkts_in] * (1 - 1 / 50.0) / (BINS * N_F), rtol=1e-4)
    assert (share > 0.4).all()  # much of the plain score: now divided by 50
    np.testing.assert_array_equal(a.deviation_index, b.deviation_index)  # the same deviations, in the same units
    np.testing.assert_allclose(a.deviation_share, b.deviation_share, rtol=1e-6)
    assert (b.deviation_index[:, 0] == pkts_in).all()
    assert (a.top_index[:, 0] == pkts_in).all()  # undivided, it leads the score ...
    assert not (b.top_index == pkts_in).any()  # ... divided by 50, it is not among what the score counted most
    explained = b[0]
    assert "pkts_in" == explained.moved[0].name != explained.top_features[0].name
    assert sum(c.share for c in explained.top_features) <= 1.0
    errors_w, _ = reconstruct(cm.network, weighted.classes["host"].scaler, seq[0], cm.network.initial_state(4), phase)
    np.testing.assert_allclose(errors_w.scores, b.scores, rtol=1e-5)
    np.testing.assert_array_equal(errors_w.feature_error, errors.feature_error)


@pytest.mark.parametrize("n_hosts", [5, 300])
def test_equal_errors_are_explained_lowest_feature_first(n_hosts: int):
    """Ties in the explanation resolve to the lower feature index, whatever the batch size:
    the same window always gets the same explanation."""
    bundle = _bundle()
    cm = bundle.classes["host"]
    with torch.no_grad():
        for p in cm.network.decoder.parameters():
            p.zero_()  # reconstructs 0 everywhere
    cm.scaler.center[:] = 0.0
    cm.scaler.scale[:] = 1.0
    feats = np.full((n_hosts, BINS, N_F), 7.0, np.float32)  # every feature errs alike ...
    feats[:, :, 5] = 50.0  # ... but one
    names = [f"10.0.{i // 256}.{i % 256}" for i in range(n_hosts)]
    got = StreamingScorer(bundle, device="cpu").score(_windows(0, names, feats))
    assert (got.top_index == [5, 0, 1]).all()


def test_threshold_adaptation_is_bounded():
    """Refitting on ever larger benign scores raises the threshold at most max_raise x the
    calibrated value; alerted windows never enter the refit sample."""
    bundle = _bundle()
    scorer = StreamingScorer(bundle, device="cpu", warmup_windows=0)
    base = scorer.calibrated["host"]
    scorer._remember("host", np.full(5000, base * 0.99, np.float32) * np.linspace(0.5, 1.0, 5000, dtype=np.float32))
    new = scorer.refresh_thresholds(1e-3)
    assert base * 0.8 <= new["host"] <= base * 1.5
    scorer._remember("host", np.full(20000, base * 100, np.float32))
    assert base * 1.5 == pytest.approx(scorer.refresh_thresholds(1e-3)["host"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_scores_match_cpu_within_tolerance():
    """The same windows scored on CUDA and on CPU agree within 1e-4 relative (fp32)."""
    seq = _sequence(4, 8)
    names = ["global"] + [f"10.0.0.{i}" for i in range(1, 8)]
    cpu = StreamingScorer(_bundle(), device="cpu", warmup_windows=0)
    gpu = StreamingScorer(_bundle(), device="cuda", warmup_windows=0)
    for k in range(4):
        a = cpu.score(_windows(k, names, seq[k])).scores
        b = gpu.score(_windows(k, names, seq[k])).scores
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _link_and_hosts(bundle: ModelBundle, hosts: list[float]) -> ScoreBatch:
    """One window: the link at 1,000 in every feature and bin, beside hosts at the levels
    given, each warm with nothing new to it (history features 0), as the window stage hands
    them on; the link alarms (threshold 0), no host does."""
    bundle.classes["global"].threshold.value = 0.0
    bundle.classes["host"].threshold.value = 1e9
    feats = np.stack([np.full((BINS, N_F), 1000.0)] + [np.full((BINS, N_F), v) for v in hosts]).astype(np.float32)
    feats[1:, :, [PACKET_SCHEMA.features.index(n) for n, _ in HISTORY_FEATURES]] = 0.0
    names = ["global"] + [f"10.0.0.{i + 1}" for i in range(len(hosts))]
    windows = _windows(0, names, feats)
    windows.link_hosts = link_hosts_of(feats, names, PACKET_SCHEMA, np.ones(len(names), bool))
    return StreamingScorer(bundle, device="cpu", warmup_windows=0).score(windows)


def test_a_link_alarm_that_one_host_explains_is_left_to_that_host():
    """The link rose in every feature its score counted most. Where one host alone sent and
    received at least each rise, the link's window is not anomalous and names the host,
    whose own window alarms or not on its own score; where two hosts share it, no one host
    explains it and the link alarms."""
    one = _link_and_hosts(_bundle(), [5000.0, 0.0])
    assert (one.top_observed[0] > one.top_expected[0]).all()
    assert not one.anomalous[0]
    assert "10.0.0.1" == one[0].left_to
    assert json.loads(one.jsonl().splitlines()[0])["left_to"] == "10.0.0.1"
    assert [None, None] == [one[1].left_to, one[2].left_to]

    shared = _link_and_hosts(_bundle(), [300.0, 300.0])
    assert shared.anomalous[0]
    assert shared[0].left_to is None
    assert "left_to" not in json.loads(shared.jsonl().splitlines()[0])


def test_the_window_stage_hands_on_the_known_host_with_the_most_of_each_feature_and_the_rest_as_news():
    """A host's value is its window mean in both directions added; a ratio is no host's to
    add up (NaN); a host is known when its history is warm and nothing was new to it; the
    known host with the most of some feature is handed on once, with all its values, and
    what the other hosts had is summed as news."""
    names = PACKET_SCHEMA.features
    f = {n: names.index(n) for n in ("pkts_out", "pkts_in", "bytes_out", "bytes_in", "mean_pkt_bytes", "new_peers")}
    feats = np.zeros((5, BINS, N_F), np.float32)
    feats[1, :, f["pkts_out"]], feats[1, :, f["pkts_in"]] = 10.0, 5.0  # known, the most packets
    feats[2, :, f["bytes_in"]] = 9000.0  # known, the most bytes
    feats[3, :, f["pkts_out"]], feats[3, :, f["new_peers"]] = 100.0, 1 / BINS  # met a new peer
    feats[4, :, f["pkts_in"]] = 7.0  # still warming up
    feats[1:, :, f["mean_pkt_bytes"]] = 60.0
    known = known_rows(feats, PACKET_SCHEMA, np.array([True, True, True, True, False]))
    assert [True, True, True, False, False] == known.tolist()
    hosts = link_hosts_of(feats, ["global", "a", "b", "c", "d"], PACKET_SCHEMA, known)
    assert ["a", "b"] == hosts.hosts
    assert hosts.known[0, f["pkts_out"]] == hosts.known[0, f["pkts_in"]] == 15.0
    assert hosts.known[1, f["bytes_out"]] == 9000.0
    assert hosts.news[f["pkts_in"]] == 107.0 and hosts.news[f["new_peers"]] == pytest.approx(1 / BINS)
    assert np.isnan(hosts.known[:, f["mean_pkt_bytes"]]).all() and np.isnan(hosts.news[f["mean_pkt_bytes"]])
    nobody = link_hosts_of(feats, ["global", "a", "b", "c", "d"], PACKET_SCHEMA, np.zeros(5, bool))
    assert [] == nobody.hosts and nobody.known.shape == (0, N_F)


def _one_link_alarm(observed: list[float], expected: list[float], known: dict[str, float] | None,
                    news: dict[str, float] | None = None, carried_in: float = 0.0,
                    top: tuple[str, str] = ("pkts_out", "ports_out")) -> ScoreBatch:
    """A scored window of the link, alarming, its top features (`top`) at `observed`
    against `expected` (`carried_in` added to its score by the windows before), with one
    known host whose values are `known` (None: the link's hosts not known) and the other
    hosts' `news`."""
    names = PACKET_SCHEMA.features
    index = np.array([[names.index(n) for n in top]] * 2)
    windows = _windows(0, ["global", "10.0.0.1"], np.zeros((2, BINS, N_F), np.float32))
    if known is not None:
        row, rest = np.zeros((1, N_F), np.float32), np.zeros(N_F, np.float32)
        for values, target in ((known, row[0]), (news or {}, rest)):
            for name, value in values.items():
                target[names.index(name)] = value
        row[:, names.index("mean_pkt_bytes")] = rest[names.index("mean_pkt_bytes")] = np.nan
        windows.link_hosts = LinkHosts(["10.0.0.1"], row, rest)
    scores = np.ones(2, np.float32)
    batch = ScoreBatch(windows.window_start_ns, windows.window_end_ns, windows.entities, windows.entity_classes,
                       scores=scores, thresholds=np.full(2, 0.5, np.float32), anomalous=np.array([True, False]),
                       ready=np.ones(2, bool), top_index=index, top_share=np.full((2, 2), 0.5, np.float32),
                       top_observed=np.array([observed] * 2, np.float32), top_expected=np.array([expected] * 2, np.float32),
                       schema=PACKET_SCHEMA, accumulated=scores + np.float32(carried_in))
    scorer_module._leave_to_hosts(batch, windows)
    return batch


def test_a_known_host_explains_the_links_rise_unless_the_news_could():
    """A known host that sent and received at least the link's rise in each feature that
    rose explains it; where the hosts that met something new had as much, the rise may be
    theirs, and the link keeps its alarm however busy the known host (a server that met
    nothing new does not take a workstation's new peer). A feature the link fell in, or a
    ratio, is asked of no host; a link that only fell, an alarm on what the link's windows
    added up, and a link whose hosts are not known are left to no one."""
    answered = {"pkts_out": 30.0, "ports_out": 4.0}  # out and in added (link_hosts_of)
    assert "10.0.0.1" == _one_link_alarm([27.0, 4.0], [2.0, 1.0], answered)[0].left_to
    assert "10.0.0.1" == _one_link_alarm([27.0, 4.0], [2.0, 1.0], answered, {"pkts_out": 24.0, "ports_out": 2.9})[0].left_to
    busy = {"pkts_out": 5000.0, "ports_out": 40.0}
    for news in ({"pkts_out": 25.0}, {"ports_out": 3.0}):
        assert _one_link_alarm([27.0, 4.0], [2.0, 1.0], busy, news).anomalous[0]
    assert _one_link_alarm([27.0, 4.0], [2.0, 1.0], {"pkts_out": 20.0, "ports_out": 4.0}).anomalous[0]  # 20 < a rise of 25
    assert "10.0.0.1" == _one_link_alarm([27.0, 0.0], [2.0, 1.0], {"pkts_out": 30.0}, {"ports_out": 9.0})[0].left_to  # ports fell
    ratio = ("pkts_out", "mean_pkt_bytes")
    assert "10.0.0.1" == _one_link_alarm([27.0, 900.0], [2.0, 80.0], answered, top=ratio)[0].left_to
    assert _one_link_alarm([1.0, 900.0], [2.0, 80.0], answered, top=ratio).anomalous[0]  # only the ratio rose
    for kept in (_one_link_alarm([1.0, 0.0], [2.0, 1.0], answered), _one_link_alarm([27.0, 4.0], [2.0, 1.0], answered, carried_in=0.2),
                 _one_link_alarm([27.0, 4.0], [2.0, 1.0], None)):
        assert kept.anomalous[0] and kept[0].left_to is None


def test_a_host_that_only_answered_another_known_host_leaves_its_alarm_to_it():
    """A host whose every flow in the window another known home host started (its
    requester, WindowBatch.requested_by) is not anomalous on its own score and names the
    requester; an alarm on what its windows added up stays, and so does any host's alarm
    without a requester."""
    bundle = _bundle()
    bundle.classes["host"].threshold.value = 0.0
    names = ["global", "10.0.0.1", "10.0.0.53"]
    windows = _windows(0, names, np.full((3, BINS, N_F), 5.0, np.float32))
    windows.requested_by = {"10.0.0.53": "10.0.0.1"}
    out = StreamingScorer(bundle, device="cpu", warmup_windows=0).score(windows)
    assert [True, False] == out.anomalous[1:].tolist()
    assert [None, "10.0.0.1"] == [out[1].left_to, out[2].left_to]
    assert json.loads(out.jsonl().splitlines()[2])["left_to"] == "10.0.0.1"

    batch = ScoreBatch(windows.window_start_ns, windows.window_end_ns, names, windows.entity_classes,
                       scores=np.ones(3, np.float32), thresholds=np.full(3, 0.5, np.float32), anomalous=np.ones(3, bool),
                       ready=np.ones(3, bool), top_index=np.zeros((3, 1), np.int64), top_share=np.ones((3, 1), np.float32),
                       top_observed=np.ones((3, 1), np.float32), top_expected=np.ones((3, 1), np.float32),
                       schema=PACKET_SCHEMA, accumulated=np.array([1.0, 1.0, 1.3], np.float32))
    scorer_module._leave_to_hosts(batch, windows)
    assert batch.anomalous.all() and not batch.left_to  # 10.0.0.53's alarm added up over its windows


def test_the_window_stage_names_the_one_known_host_whose_requests_a_host_only_answered():
    """Per host: the one other home host that started every flow it had, where it started
    none and both are known; none where two hosts asked, where the host asked too, where the
    requester came from outside or where either is not known."""
    keys = history_keys([(0, 0x0A000001), (0, 0x0A000035), (0, 0x0A000002)])
    keys = np.concatenate([np.zeros(1, np.uint64), keys])  # the link's key is 0
    names = ["global", "10.0.0.1", "10.0.0.53", "10.0.0.2"]
    known = np.ones(4, bool)
    addr = {1: 0x0A000001, 2: 0x0A000035, 3: 0x0A000002, 9: 0x08080808}

    def flows(*pairs):  # (entity row, initiator)
        rows = np.array([r for r, _ in pairs], np.int64)
        return rows, np.zeros(len(pairs), np.uint64), np.array([addr[i] for _, i in pairs], np.uint64)

    answered = flows((1, 1), (2, 1), (1, 1), (2, 1))  # .1 asks .53 twice
    assert {"10.0.0.53": "10.0.0.1"} == requested_by_of(keys, *answered, names, known)
    assert {} == requested_by_of(keys, *answered, names, np.array([True, False, True, True]))  # .1 met something new
    assert {} == requested_by_of(keys, *answered, names, np.array([True, True, False, True]))  # .53 did
    assert {} == requested_by_of(keys, *flows((1, 1), (2, 1), (3, 3), (2, 3)), names, known)  # two hosts asked
    assert {} == requested_by_of(keys, *flows((1, 1), (2, 1), (2, 2)), names, known)  # .53 asked too
    assert {} == requested_by_of(keys, *flows((2, 9)), names, known)  # from outside
    # .1, which asked, answered .2 too: it is no answerer; .53 and .2 both answered .1 alone
    assert {"10.0.0.53": "10.0.0.1"} == requested_by_of(keys, *flows((1, 1), (2, 1), (1, 3), (3, 3)), names, known)
    assert {"10.0.0.53": "10.0.0.1", "10.0.0.2": "10.0.0.1"} == requested_by_of(keys, *flows((1, 1), (2, 1), (3, 1)), names, known)
