"""Evaluation metrics, labels and baselines (detector.eval.metrics, .evaluate, .baselines) on
hand-made scores and windows, where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.capture.windows import PACKET_SCHEMA
from detector.contracts import PACKET_COLUMNS, PacketBatch, WindowBatch, addr_to_pair
from detector.errors import ConfigError
from detector.eval import metrics as M
from detector.eval.baselines import RobustZScore, stateless_scores, without_history
from detector.eval.evaluate import (
    LabelledInterval,
    Windows,
    _class_rows,
    _tally,
    hosts_of,
    label_intervals,
    label_windows,
    most_relevant_host,
    parse_attacker_hints,
)
from detector.model.bundle import ClassModel, ModelBundle
from detector.model.lstm import LSTMAutoencoder
from detector.model.scaler import FeatureScaler
from detector.model.scorer import StreamingScorer
from detector.model.threshold import Threshold
from detector.truth import Interval


def _mann_whitney(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(positive outscores negative), ties one half: the definition the ROC AUC must equal."""
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def test_perfect_separation_has_roc_and_pr_auc_one():
    """Every positive above every negative: ROC AUC 1, PR AUC 1, TPR 1 at FPR 0."""
    scores = np.array([9.0, 8.0, 7.5, 1.0, 0.5, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    assert 1.0 == M.roc_auc(scores, labels)
    assert 1.0 == M.pr_auc(scores, labels)
    assert 1.0 == M.tpr_at_fpr(scores, labels, 0.0)


def test_inverted_and_tied_scores():
    """Every positive below every negative: ROC AUC 0; all scores equal: 0.5."""
    labels = np.array([1, 1, 0, 0], dtype=bool)
    assert 0.0 == M.roc_auc(np.array([0.0, 1.0, 2.0, 3.0]), labels)
    assert 0.5 == M.roc_auc(np.ones(4), labels)


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_equals_mann_whitney_with_ties(seed):
    """On random scores with many ties the ROC AUC is the Mann-Whitney probability."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=300).astype(float)
    labels = rng.random(300) < 0.3
    assert abs(_mann_whitney(scores, labels) - M.roc_auc(scores, labels)) < 1e-12


def test_average_precision_matches_the_stepwise_definition():
    """Ranked P N P N: precision 1 at recall 0.5, 2/3 at recall 1 -> AP = 0.5 + 1/3."""
    assert abs(M.pr_auc(np.array([4.0, 3, 2, 1]), np.array([1, 0, 1, 0], dtype=bool)) - (0.5 + 1 / 3)) < 1e-12


def test_tpr_at_fpr_takes_the_best_threshold_within_the_budget():
    """Positives at 10, 8, 6; negatives at 9, 1, 1, 1: at FPR 0 only the 10 is caught; at
    FPR 0.25 (one negative of four) all three are."""
    scores = np.array([10.0, 8, 6, 9, 1, 1, 1])
    labels = np.array([1, 1, 1, 0, 0, 0, 0], dtype=bool)
    assert abs(1 / 3 - M.tpr_at_fpr(scores, labels, 0.0)) < 1e-12
    assert 1.0 == M.tpr_at_fpr(scores, labels, 0.25)


def test_metrics_without_both_classes_are_none():
    """No positives (or no negatives): no AUC, rather than an invented 0.5."""
    assert M.roc_auc(np.array([1.0, 2.0]), np.array([0, 0], dtype=bool)) is None
    assert M.pr_auc(np.array([1.0, 2.0]), np.array([1, 1], dtype=bool)) is None
    summary = M.summary(np.array([1.0]), np.array([0], dtype=bool))
    assert summary["roc_auc"] is None and summary["tpr_at_fpr"] == {"0.001": None, "0.01": None}


def test_auc_difference_is_the_plain_difference_with_an_interval_that_knows_clusters():
    """The point estimate is roc_auc(a) - roc_auc(b); identical detectors give exactly 0 with
    a zero-width interval; a detector that wins on every cluster gets an interval above 0;
    one that wins on a single attack of several gets an interval that holds 0."""
    rng = np.random.default_rng(3)
    n_attacks, per_attack, n_moments = 8, 10, 300
    y = np.r_[np.ones(n_attacks * per_attack, dtype=bool), np.zeros(n_moments, dtype=bool)]
    clusters = np.r_[np.repeat(np.arange(n_attacks), per_attack), n_attacks + np.arange(n_moments)]
    negatives = rng.normal(size=n_moments)
    b = np.r_[rng.normal(1.0, 1.0, n_attacks * per_attack), negatives].round(1)  # ties within and across classes
    d = M.auc_difference(b, b, y, clusters, resamples=200)
    assert (0.0, 0.0, 0.0) == (d["difference"], d["ci95_low"], d["ci95_high"])
    assert (n_attacks, n_moments) == (d["positive_clusters"], d["negative_clusters"])

    a = b + 1.5 * y  # better on every attack
    d = M.auc_difference(a, b, y, clusters, resamples=500)
    assert abs(d["difference"] - (M.roc_auc(a, y) - M.roc_auc(b, y))) < 1e-6
    assert 0 < d["ci95_low"] < d["difference"] < d["ci95_high"]

    one = b.copy()
    one[:per_attack] += 3.0  # better on one attack only: the windows are many, the evidence is one attack
    d = M.auc_difference(one, b, y, clusters, resamples=500)
    assert d["difference"] > 0 and d["ci95_low"] <= 0 < d["ci95_high"]
    # the same windows taken one by one would claim a win the data do not hold
    naive = M.auc_difference(one, b, y, np.arange(y.size), resamples=500)
    assert naive["ci95_low"] > 0
    # two attacks are too few to draw an interval from: the difference alone
    two_attacks = np.where(y, clusters % 2, clusters + 2)
    two = M.auc_difference(a, b, y, two_attacks, resamples=500)
    assert 2 == two["positive_clusters"] and two["ci95_low"] is None and two["ci95_high"] is None
    assert abs(two["difference"] - (M.roc_auc(a, y) - M.roc_auc(b, y))) < 1e-6


def test_auc_difference_draws_each_kind_of_attack_within_itself():
    """Ten attacks of five kinds, two each; `a` wins on both attacks of one kind. Drawn
    without regard to kind, 11 % of the draws hold neither and the interval's lower end is
    0; drawn within each kind, every draw holds one of them (weighed twice) and the interval
    is above 0. A win on one attack of a kind, not the other, still gets an interval that
    holds 0: the kind's two attacks disagree, and the draw knows it."""
    rng = np.random.default_rng(5)
    n_attacks, per_attack, n_moments = 10, 10, 300
    y = np.r_[np.ones(n_attacks * per_attack, dtype=bool), np.zeros(n_moments, dtype=bool)]
    attack = np.repeat(np.arange(n_attacks), per_attack)
    clusters = np.r_[attack, n_attacks + np.arange(n_moments)]
    kinds = np.r_[np.array(["beacon", "onset", "upload", "scan", "role"])[attack // 2], np.full(n_moments, "")]
    b = np.r_[rng.normal(0.5, 1.0, n_attacks * per_attack), rng.normal(size=n_moments)].round(1)
    both = b + 3.0 * (y & (clusters < 2))  # better on the two beacons
    plain = M.auc_difference(both, b, y, clusters, resamples=1000)
    strat = M.auc_difference(both, b, y, clusters, resamples=1000, kinds=kinds)
    assert plain["difference"] == strat["difference"] > 0.05
    assert plain["ci95_low"] <= 0 < strat["ci95_low"] < strat["difference"] < strat["ci95_high"]
    assert (6, 0) == (strat["strata"], strat["fixed_clusters"])  # the moments and five kinds
    one = b + 3.0 * (y & (clusters == 0))  # better on one beacon only
    d = M.auc_difference(one, b, y, clusters, resamples=1000, kinds=kinds)
    assert d["difference"] > 0 and d["ci95_low"] <= 0 < d["ci95_high"]
    # kinds of one attack each are one stratum, drawn as without kinds
    singles = np.r_[np.array([f"k{i}" for i in range(n_attacks)])[attack], np.full(n_moments, "")]
    d = M.auc_difference(both, b, y, clusters, resamples=1000, kinds=singles)
    assert 2 == d["strata"] and d["ci95_low"] <= 0
    # one kind of one attack beside kinds of two or more: a stratum of one, kept whole
    d = M.auc_difference(both, b, y, clusters, resamples=200, kinds=np.where(clusters == 9, "beacon", kinds))
    assert (6, 1) == (d["strata"], d["fixed_clusters"])  # the moments, four kinds drawn, one kept
    with pytest.raises(ValueError, match="two kinds"):
        M.auc_difference(both, b, y, clusters, kinds=np.where(np.arange(y.size) == 0, "x", kinds))


def test_auc_difference_refuses_mixed_clusters_and_needs_both_classes():
    y = np.array([1, 1, 0, 0], dtype=bool)
    with pytest.raises(ValueError, match="both positive and negative"):
        M.auc_difference(np.arange(4.0), np.arange(4.0), y, np.array([0, 1, 1, 2]))
    assert M.auc_difference(np.arange(2.0), np.arange(2.0), np.zeros(2, dtype=bool), np.arange(2)) is None


def test_detection_delay_counts_from_the_interval_start_to_the_window_end():
    """60 s windows; an interval starting at 130 s is caught by the window [180, 240): delay
    110 s, one window after the one holding the start."""
    s = 1_000_000_000
    starts = np.arange(0, 600, 60) * s
    anomalous = np.zeros(10, dtype=bool)
    anomalous[3] = True
    d = M.detection_delay(starts, starts + 60 * s, anomalous, 130 * s, 150 * s, 60 * s)
    assert {"detected": True, "delay_s": 110.0, "windows_after_start": 1} == d
    anomalous[:] = False
    anomalous[9] = True  # long after the interval: not a detection of it
    assert not M.detection_delay(starts, starts + 60 * s, anomalous, 130 * s, 150 * s, 60 * s)["detected"]


def test_hosts_of_reads_key_values_then_bare_addresses():
    """attacker=/target= win; without them every IP literal is a target; none: no hosts."""
    assert (["203.0.113.7"], ["192.168.1.132"]) == hosts_of("attacker=203.0.113.7 target=192.168.1.132 sources=1")
    assert ([], ["198.18.134.6"]) == hosts_of("SSH 248 times (T=5) target: 198.18.134.6")
    assert ([], ["198.18.134.1", "198.18.134.43"]) == hosts_of("Port scan several devices nmap 198.18.134.43 198.18.134.1")
    assert ([], []) == hosts_of("Manual MITM starts")
    assert ([], ["192.168.1.132"]) == hosts_of("attacker=spoofed target=192.168.1.132")


def test_attacker_hints_apply_to_matching_events_without_a_named_attacker():
    hints = parse_attacker_hints(["BAD-PORTSCAN*=198.18.134.99"])
    ivs = [Interval("BAD-PORTSCAN1", True, 0, 1, "nmap 198.18.134.5"), Interval("BAD-SSH", True, 0, 1, "target: 198.18.134.6")]
    labelled = label_intervals(ivs, hints)
    assert ["198.18.134.99"] == labelled[0].attackers and [] == labelled[1].attackers
    with pytest.raises(ConfigError):
        parse_attacker_hints(["BAD-SSH=not-an-ip"])


def _windows(rows: list[tuple[int, str, str, float]]) -> Windows:
    """(start_s, entity, class, score) rows of 10 s windows."""
    s = 1_000_000_000
    n = len(rows)
    return Windows(
        start_ns=np.array([r[0] * s for r in rows], dtype=np.int64),
        end_ns=np.array([(r[0] + 10) * s for r in rows], dtype=np.int64),
        entity=np.array([r[1] for r in rows]),
        entity_class=np.array([r[2] for r in rows]),
        scores={"lstm": np.array([r[3] for r in rows])},
        anomalous=np.zeros(n, dtype=bool),
        threshold=np.ones(n),
        features=np.zeros((n, 1, 1), dtype=np.float32),
    )


def test_window_labels_follow_overlap_and_named_hosts():
    """global: overlap with a positive interval; hosts: overlap AND named; overlap with an
    interval naming nobody: unlabelled; normal intervals make nothing positive."""
    s = 1_000_000_000
    w = _windows([
        (0, "global", "global", 0.1), (10, "global", "global", 5.0), (20, "global", "global", 0.2), (30, "global", "global", 0.3),
        (10, "10.0.0.1", "host", 6.0), (10, "10.0.0.2", "host", 0.1), (30, "10.0.0.2", "host", 0.1), (20, "10.0.0.1", "host", 0.1),
    ])
    ivs = [
        LabelledInterval(Interval("ATTACK", True, 15 * s, 18 * s, ""), ["10.0.0.1"], []),
        LabelledInterval(Interval("FAULT", True, 35 * s, 36 * s, ""), [], []),
        LabelledInterval(Interval("GOOD", False, 20 * s, 25 * s, ""), [], []),
    ]
    label_windows(w, ivs)
    assert [False, True, False, True, True, False, False, False] == w.label.tolist()
    assert [False, False, False, False, False, False, True, False] == w.unlabelled.tolist()
    assert [True, False, True, False, False, False, False, True] == w.benign.tolist()
    assert "10.0.0.1" == most_relevant_host(w)


def test_an_interval_s_trail_is_neither_positive_nor_negative():
    """After a beacon's last packet its host still carries the peer's level (its series): those
    windows, up to the host's first window without a level or a window it did not have, are
    unlabelled and not benign; a level of a host the interval did not touch, or one after the
    trail ended, is the host's own and stays a negative."""
    s = 1_000_000_000
    rows = [(t, "10.0.0.1", "host", 1.0) for t in (0, 10, 20, 30, 40, 50, 60, 80)] + [(t, "10.0.0.2", "host", 1.0) for t in (20, 30)]
    w = _windows(rows)
    level = [0, 3, 4, 4, 0, 5, 5, 5, 2, 2]  # 10.0.0.1 at 0..60 and 80 (none at 70); 10.0.0.2 at 20, 30
    w.features = np.array(level, dtype=np.float32).reshape(-1, 1, 1)
    ivs = [LabelledInterval(Interval("BEACON", True, 10 * s, 20 * s, ""), ["10.0.0.1"], [])]
    label_windows(w, ivs, levels=[0])
    assert w.label.tolist() == [False, True] + [False] * 8
    assert w.trail.tolist() == [False, False, True, True, False, False, False, False, False, False]
    assert w.unlabelled.tolist() == w.trail.tolist()
    assert w.benign.tolist() == [True, False, False, False, True, True, True, True, True, True]
    # without levels (a schema that carries none) nothing is a trail
    label_windows(w, ivs)
    assert not w.trail.any() and w.benign.tolist() == [True, False] + [True] * 8


def _packets(rows: list[tuple[float, str, str]]) -> PacketBatch:
    """(ts_s, src, dst) TCP packets."""
    n = len(rows)
    cols = {name: np.zeros(n, dtype=dt) for name, dt in PACKET_COLUMNS.items()}
    cols["ts_ns"] = np.array([int(r[0] * 1e9) for r in rows], dtype=cols["ts_ns"].dtype)
    for i, (_, src, dst) in enumerate(rows):
        cols["src_hi"][i], cols["src_lo"][i] = addr_to_pair(src)
        cols["dst_hi"][i], cols["dst_lo"][i] = addr_to_pair(dst)
    cols["ip_version"][:] = 4
    cols["proto"][:] = 6
    return PacketBatch(**cols)


def test_visible_hosts_are_those_with_packets_of_the_attack():
    """A scan names two targets; the link carries the attacker's packets to one of them. The
    other target's own traffic with a bystander does not make it visible, packets outside the
    interval do not count, and only the visible hosts are positives of the visible variant."""
    s = 1_000_000_000
    a, t1, t2, other = "10.0.0.99", "10.0.0.1", "10.0.0.2", "10.0.0.50"
    li = LabelledInterval(Interval("SCAN", True, 10 * s, 20 * s, "nmap 10.0.0.1 10.0.0.2"), [a], [t1, t2])
    rows = [(11 + 0.1 * i, a, t1) for i in range(8)] + [(12 + 0.1 * i, t1, a) for i in range(4)]
    rows += [(13 + 0.1 * i, other, t2) for i in range(30)] + [(25, a, t2)] * 20
    list(_tally([_packets(sorted(rows))], [li], window_ns=10 * s))
    assert 8 == li.attacker_packets
    assert {a: 8, t1: 12, t2: 0} == li.host_packets
    li.visible_hosts = {ip for ip, n in li.host_packets.items() if n >= 10}
    w = _windows([(10, t1, "host", 5.0), (10, t2, "host", 0.0), (10, a, "host", 3.0), (10, "global", "global", 4.0)])
    assert [True, True, True, False] == _class_rows(w, li, "host").tolist()
    assert [True, False, False, False] == _class_rows(w, li, "host", visible_only=True).tolist()


def test_the_visible_variant_counts_only_windows_that_hold_the_attack():
    """A slow attack: packets at 11-12.5 s and at 26 s of a 10-30 s interval, 5 s windows.
    The windows in between hold nothing of it: positives of the `all` variant, not of the
    `visible` one, for the link and for each host (a host's own part of the attack)."""
    s = 1_000_000_000
    a, t1 = "10.0.0.99", "10.0.0.1"
    li = LabelledInterval(Interval("SLOW", True, 10 * s, 30 * s, ""), [a], [t1])
    rows = [(11, a, t1), (12, a, t1), (12.5, t1, a), (26, a, t1), (17, t1, "10.0.0.50")]
    list(_tally([_packets(sorted(rows))], [li], window_ns=5 * s))
    assert {10 * s: 3, 25 * s: 1} == li.window_packets[""] == li.window_packets[t1]
    assert {10 * s: 2, 25 * s: 1} == li.window_packets[a]
    li.visible_hosts = {a, t1}
    starts = [10, 15, 20, 25]
    n = 3 * len(starts)
    w = Windows(
        start_ns=np.array(starts * 3, dtype=np.int64) * s, end_ns=(np.array(starts * 3, dtype=np.int64) + 5) * s,
        entity=np.array(["global"] * 4 + [t1] * 4 + [a] * 4), entity_class=np.array(["global"] * 4 + ["host"] * 8),
        scores={"lstm": np.zeros(n)}, anomalous=np.zeros(n, dtype=bool), threshold=np.ones(n), features=np.zeros((n, 1, 1), dtype=np.float32),
    )
    assert [True] * 4 == _class_rows(w, li, "global").tolist()[:4]
    assert [True, False, False, True] == _class_rows(w, li, "global", visible_only=True).tolist()[:4]
    assert [True, False, False, True] * 2 == _class_rows(w, li, "host", visible_only=True).tolist()[4:]


def test_robust_zscore_is_zero_at_the_median_and_large_on_a_spike():
    rng = np.random.default_rng(1)
    train = rng.poisson(5.0, size=(200, 6, 3)).astype(np.float32)
    z = RobustZScore.fit(train)
    median_window = np.expm1(np.broadcast_to(z.center, (1, 6, 3))).astype(np.float32)
    spike = median_window.copy()
    spike[0, 2, 1] = 5000.0
    scores = z.score(np.concatenate([median_window, spike]))
    assert scores[0] < 1e-6
    assert scores[1] > 10.0


def test_stateless_baseline_is_the_scorer_from_a_fresh_state():
    """The stateless autoencoder score of a window equals what the streaming scorer gives a
    brand-new entity for it (neutral state), whatever that entity's history would be."""
    torch.manual_seed(3)
    n_feat, bins = len(PACKET_SCHEMA.features), 6
    net = LSTMAutoencoder(n_feat, 8, bins).eval()
    with torch.no_grad():  # a trained decoder's phase input is not zero: windows of different minutes differ
        net.phase.weight.normal_(0.0, 0.5)
    scaler = FeatureScaler(center=np.zeros(n_feat, np.float32), scale=np.ones(n_feat, np.float32))
    threshold = Threshold(1.0, "quantile", 1e-4, 0.5, None, None, 100, 0)
    cm = ClassModel(net, scaler, threshold)
    bundle = ModelBundle(schema=PACKET_SCHEMA, bin_s=10.0, bins=bins, hidden_size=8, classes={"host": cm})
    rng = np.random.default_rng(0)
    feats = rng.poisson(3.0, size=(4, bins, n_feat)).astype(np.float32)
    starts = np.arange(4, dtype=np.int64) * 60_000_000_000 * 7  # minutes 0, 7, 14, 21
    expected = []
    for i in range(4):
        scorer = StreamingScorer(bundle, device="cpu", warmup_windows=0)
        wb = WindowBatch(int(starts[i]), int(starts[i]) + 60_000_000_000, [f"10.0.0.{i}"], ["host"], feats[i : i + 1], PACKET_SCHEMA)
        expected.append(float(scorer.score(wb).scores[0]))
    assert np.allclose(expected, stateless_scores(cm, feats, starts), rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected, stateless_scores(cm, feats, np.zeros(4, np.int64)), rtol=1e-3)


def test_without_history_zeroes_the_novelty_features_and_nothing_else():
    """The memoryless twin sees a window as an entity with an empty (never warm) history
    would: new peers, new ports and young peers' returns 0, every other feature as observed."""
    rng = np.random.default_rng(1)
    feats = rng.poisson(3.0, size=(5, 6, len(PACKET_SCHEMA.features))).astype(np.float32)
    out = without_history(feats, PACKET_SCHEMA)
    novelty = [PACKET_SCHEMA.features.index(n) for n in ("new_peers", "new_ports", "young_peer_returns")]
    others = [i for i in range(len(PACKET_SCHEMA.features)) if i not in novelty]
    assert (out[..., novelty] == 0).all() and (feats[..., novelty] > 0).any()
    assert np.array_equal(out[..., others], feats[..., others])
