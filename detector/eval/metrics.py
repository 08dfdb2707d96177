"""Detection-quality metrics over labelled window scores: plain numpy, no model, no I/O.

Where it stands: the last step of `netad eval`. The evaluation wires the daemon's stages
offline and labels every (entity, window) from the ground truth; these functions turn
(scores, labels) into the numbers the report shows. Conventions:

- A higher score is more anomalous. Ties are handled exactly: the ROC curve has one point
  per distinct score, so the ROC AUC equals the Mann-Whitney probability that a positive
  outscores a negative, ties counting one half.
- PR AUC is average precision (the step-wise area, as scikit-learn computes it), not the
  trapezoid, which overstates it.
- A metric that needs both classes is None when one is missing, never a made-up 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RocCurve:
    fpr: np.ndarray  # false-positive rate at each distinct threshold, from (0, 0) to (1, 1)
    tpr: np.ndarray
    thresholds: np.ndarray  # the score at or above which a window is called positive
    positives: int
    negatives: int


def _checked(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=bool).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return s, y


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> RocCurve | None:
    """The ROC curve, one point per distinct score; None without both classes."""
    s, y = _checked(scores, labels)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_value = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # the last row of each distinct score
    tp = np.cumsum(y)[last_of_value]
    fp = np.cumsum(~y)[last_of_value]
    return RocCurve(
        fpr=np.r_[0.0, fp / neg],
        tpr=np.r_[0.0, tp / pos],
        thresholds=np.r_[np.inf, s[last_of_value]],
        positives=pos,
        negatives=neg,
    )


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    curve = roc_curve(scores, labels)
    if curve is None:
        return None
    return float(np.trapezoid(curve.tpr, curve.fpr))


def pr_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Average precision: sum over distinct thresholds of (recall step) x precision."""
    curve = roc_curve(scores, labels)
    if curve is None:
        return None
    tp = curve.tpr[1:] * curve.positives
    fp = curve.fpr[1:] * curve.negatives
    precision = tp / np.maximum(tp + fp, 1e-300)
    recall_step = np.diff(curve.tpr)
    return float(np.sum(recall_step * precision))


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, max_fpr: float) -> float | None:
    """The highest true-positive rate of any threshold whose false-positive rate is at most
    `max_fpr`. With N negatives the resolution is 1/N: below it, no false positive at all."""
    curve = roc_curve(scores, labels)
    if curve is None:
        return None
    ok = curve.fpr <= max_fpr + 1e-12
    return float(curve.tpr[ok].max())


def recall(flags: np.ndarray) -> float | None:
    """Share of positive windows flagged anomalous (None when there are none)."""
    f = np.asarray(flags, dtype=bool)
    return float(f.mean()) if f.size else None


def overlaps(start_ns: np.ndarray, end_ns: np.ndarray, lo_ns: int, hi_ns: int) -> np.ndarray:
    """Windows [start, end) that overlap the interval [lo, hi)."""
    return (start_ns < hi_ns) & (end_ns > lo_ns)


def detection_delay(
    window_start_ns: np.ndarray,
    window_end_ns: np.ndarray,
    anomalous: np.ndarray,
    interval_start_ns: int,
    interval_end_ns: int,
    window_ns: int,
) -> dict[str, float | int | bool | None]:
    """When an interval was first detected: the first anomalous window that ends after the
    interval starts and begins before one window past its end. `delay_s` runs from the
    interval's start to that window's end (when the daemon can say so); `windows_after_start`
    counts windows from the one holding the start (0: that very window)."""
    ws, we, an = np.asarray(window_start_ns), np.asarray(window_end_ns), np.asarray(anomalous, dtype=bool)
    candidates = np.flatnonzero(an & (we > interval_start_ns) & (ws < interval_end_ns + window_ns))
    if candidates.size == 0:
        return {"detected": False, "delay_s": None, "windows_after_start": None}
    first = candidates[np.argmin(ws[candidates])]
    start_window = interval_start_ns // window_ns
    return {
        "detected": True,
        "delay_s": round((int(we[first]) - interval_start_ns) / 1e9, 3),
        "windows_after_start": int(int(ws[first]) // window_ns - start_window),
    }


def _weighted_auc(group: np.ndarray, label: np.ndarray, weight: np.ndarray, groups: int) -> float:
    """ROC AUC (ties one half) of rows weighted by `weight`, rows given as their distinct-score
    group (0 = lowest score)."""
    pos = np.bincount(group[label], weight[label], minlength=groups)
    neg = np.bincount(group[~label], weight[~label], minlength=groups)
    below = np.cumsum(neg) - neg
    return float(np.sum(pos * (below + 0.5 * neg)) / (pos.sum() * neg.sum()))


def auc_difference(
    a: np.ndarray, b: np.ndarray, labels: np.ndarray, clusters: np.ndarray, resamples: int = 2000, seed: int = 0,
    min_clusters: int = 5, kinds: np.ndarray | None = None,
) -> dict[str, float | int | None] | None:
    """ROC AUC of detector `a` minus that of `b` on the same windows, with a 95% percentile
    interval from a paired, stratified cluster bootstrap: whole clusters (an attack interval's
    positive windows; a stretch of time's negative windows) are drawn with replacement within
    their stratum, and both detectors are scored on each draw. Windows of one attack, or of one
    minute across hosts, are not independent; resampling them one by one would make the
    interval far too narrow. `clusters`: a non-negative id per row, never shared between a
    positive and a negative row. With fewer than `min_clusters` positive clusters the interval
    is None: drawn from one or two attacks it would only restate them. None without both
    classes.

    Strata: the negative clusters are one; the positive clusters are stratified by `kinds` (a
    positive row's kind of attack, e.g. its truth event), since a labelled set's mix of kinds
    is fixed by whoever built it, not drawn at random: an unstratified draw of ten attacks of
    which two are beacons leaves out both beacons in (8/10)^10 = 11 % of its draws, sets that no
    one evaluates, and the interval's lower end is read from them. Kinds with a single
    cluster are collapsed into one stratum (and with `kinds` None every positive cluster is
    in it), as survey practice collapses strata of one unit. Each draw takes n_h - 1 of a
    stratum's n_h clusters and weighs them n_h / (n_h - 1) (Rao and Wu's rescaling
    bootstrap, J. Am. Stat. Assoc. 83, 1988): the plain bootstrap's variance is (n_h - 1) /
    n_h of the truth, half of it with two clusters a kind. A collapsed stratum of one cluster
    is kept whole in every draw (its variance cannot be told) and counted in
    `fixed_clusters`."""
    sa, y = _checked(a, labels)
    sb, _ = _checked(b, labels)
    c = np.asarray(clusters, dtype=np.int64).reshape(-1)
    if c.shape != y.shape:
        raise ValueError("clusters and labels differ in length")
    if kinds is not None and np.asarray(kinds).reshape(-1).shape != y.shape:
        raise ValueError("kinds and labels differ in length")
    if not y.any() or y.all():
        return None
    if np.intersect1d(c[y], c[~y]).size:
        raise ValueError("a cluster holds both positive and negative windows")
    _, cid = np.unique(c, return_inverse=True)
    pos_c, neg_c = np.unique(cid[y]), np.unique(cid[~y])
    ga, gb = np.unique(sa, return_inverse=True)[1], np.unique(sb, return_inverse=True)[1]
    na, nb = int(ga.max()) + 1, int(gb.max()) + 1

    def difference(weight: np.ndarray) -> float:
        return _weighted_auc(ga, y, weight, na) - _weighted_auc(gb, y, weight, nb)

    diff = difference(np.ones(y.shape[0]))
    out: dict[str, float | int | None] = {"difference": _round(diff), "ci95_low": None, "ci95_high": None,
                                          "positive_clusters": int(pos_c.size), "negative_clusters": int(neg_c.size),
                                          "strata": 0, "fixed_clusters": 0, "resamples": 0}
    if min(pos_c.size, neg_c.size) < min_clusters:
        return out
    strata = [neg_c, *_positive_strata(cid, y, pos_c, kinds)]
    drawn = [s for s in strata if s.size > 1]
    fixed = np.zeros(cid.max() + 1)
    for s in strata:
        if s.size == 1:
            fixed[s] = 1.0
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for k in range(resamples):
        weight = fixed.copy()
        for s in drawn:
            weight += np.bincount(rng.choice(s, s.size - 1), minlength=weight.size) * (s.size / (s.size - 1))
        draws[k] = difference(weight[cid])
    lo, hi = np.percentile(draws, [2.5, 97.5])
    out.update(ci95_low=_round(lo), ci95_high=_round(hi), strata=len(strata), fixed_clusters=int(sum(s.size == 1 for s in strata)),
               resamples=resamples)
    return out


def _positive_strata(cid: np.ndarray, y: np.ndarray, pos_c: np.ndarray, kinds: np.ndarray | None) -> list[np.ndarray]:
    """The positive clusters by kind, the kinds of one cluster collapsed into one stratum."""
    if kinds is None:
        return [pos_c]
    kind_of: dict[int, str] = {}
    for ci, kind in zip(cid[y].tolist(), np.asarray(kinds).reshape(-1)[y].tolist(), strict=True):
        if kind_of.setdefault(ci, str(kind)) != str(kind):
            raise ValueError("a positive cluster holds windows of two kinds")
    by_kind: dict[str, list[int]] = {}
    for ci in pos_c.tolist():
        by_kind.setdefault(kind_of[ci], []).append(ci)
    strata = [np.array(v, dtype=np.int64) for _, v in sorted(by_kind.items()) if len(v) > 1]
    single = [v[0] for _, v in sorted(by_kind.items()) if len(v) == 1]
    if single:
        strata.append(np.array(single, dtype=np.int64))
    return strata


def rate_per_hour(count: int, hours: float) -> float | None:
    return float(count / hours) if hours > 0 else None


def summary(scores: np.ndarray, labels: np.ndarray, fprs: tuple[float, ...] = (1e-3, 1e-2)) -> dict:
    """The threshold-free numbers of one detector on one set of windows."""
    s, y = _checked(scores, labels)
    return {
        "roc_auc": _round(roc_auc(s, y)),
        "pr_auc": _round(pr_auc(s, y)),
        "tpr_at_fpr": {f"{f:g}": _round(tpr_at_fpr(s, y, f)) for f in fprs},
        "positives": int(y.sum()),
        "negatives": int((~y).sum()),
        # the margin a threshold has to work with: above the last, below the first
        "max_negative_score": _round(float(s[~y].max())) if (~y).any() else None,
        "min_positive_score": _round(float(s[y].min())) if y.any() else None,
    }


def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(float(x), digits)
