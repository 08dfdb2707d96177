"""Thresholds: the score above which a window is anomalous, set from a false-alarm target.

Calibrated on held-out benign windows with a peaks-over-threshold tail fit in the style of
SPOT (Siffer et al., KDD 2017): scores above a high initial quantile `u` are modelled by a
generalised Pareto distribution, and the threshold is the score whose exceedance
probability is the configured target (e.g. 1e-4 per window). The fit is checked; when it is
poor the threshold falls back to the empirical quantile at the target (at least the
configured `fallback_quantile`), and the calibration says so (`method`). The fitted shape
is kept within [0, MAX_SHAPE]: the extrapolation is never lighter than exponential nor
heavier than xi = 0.5, and `reason` says when it was held there.
A few hours of training give a few hundred calibration windows: the initial quantile is
lowered (to 0.90 at the lowest) until the tail holds MIN_PEAKS, and with fewer peaks than that
(but MIN_EXP_PEAKS at least) the tail is fitted as an exponential, its one parameter being
the mean excess. A bare quantile of a few hundred windows is about their maximum, which the
next day's benign windows pass (22 h honeypot, 6 h of training: 3 false incidents a day).

Before the fit, the calibration scores are screened for windows that are not benign at all
(an attack or a fault inside the training span, which training had no truth to leave out):
at most MAX_OUTLIER_SHARE of the largest scores are outliers when they stand above a gap
that a heavy benign tail leaves with probability under OUTLIER_ALPHA, or lie beyond the
heaviest tail the rest make plausible (`_outliers`); they are left out of the calibration
and reported (`n_outliers`, `outliers_from`). Without the screen, attacks in a honeypot's
training span were most of the tail's peaks: two made the thresholds 1.9-5.3 times the clean
ones, ten 22-265 times (docs/EVALUATION.md, section ix).

Last, a floor: with fewer calibration windows than one per false alarm allowed (n * target <
1: under 10,000 windows at 1e-4), the threshold is at least MIN_MARGIN over the largest of
them. A light tail fitted on a few thousand windows put the synthetic demo's host threshold
1.3 % over its largest held-out window, and the DNS server's ordinary windows of that size
opened three incidents.

What a model is deployed with is `bagged`: the median of the thresholds the same rule gives on
block-bootstrap resamples of the calibration windows (model.training.bootstrap_thresholds),
floored as above. A tail read from a few dozen peaks moves with each of them, its shape
most (on the same traffic, one seed's host tail held as exponential and the next seed's
fitted at xi = 0.2: thresholds 27 % apart). The median over resamples (Breiman's bagging)
moves less with any one peak: over three seeds and four training spans of the 22 h
honeypot, the spread of a class's threshold between seeds fell from 18 % to 12 % of its
mean (docs/EVALUATION.md, section xxvii).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TypedDict

import numpy as np

MIN_PEAKS = 20  # peaks for a free tail fit (shape and scale)
MIN_EXP_PEAKS = 8  # peaks for an exponential tail (scale only)
MIN_INITIAL_QUANTILE = 0.90
# the fewest calibration windows with a tail to fit: MIN_EXP_PEAKS above MIN_INITIAL_QUANTILE
MIN_TAIL_WINDOWS = round(MIN_EXP_PEAKS / (1.0 - MIN_INITIAL_QUANTILE))  # 80
MAX_SHAPE = 0.5
MAX_OUTLIER_SHARE = 0.05  # at most this share of the scores is screened (fewer where the tail holds few peaks)
OUTLIER_ALPHA = 0.01  # each test's level: the gap's probability, or benign windows expected at least that high
SCREEN_QUANTILE = 0.90  # the screen's tail starts here
# the least margin a threshold leaves over the largest calibration window, where there are
# fewer of them than one per false alarm allowed (n * target < 1): a tail fit that puts the
# threshold at or under a benign window it was shown contradicts its own target (that window
# alone is an exceedance rate of 1/n), and the next day's largest window passes today's about
# as often as not; 10 % is the margin issue 18 asks every class to leave
MIN_MARGIN = 0.10


class _Calibration(TypedDict):
    """What every Threshold of one calibration shares, whichever method wins."""

    target_false_alarm: float
    initial: float
    n_calibration: int
    n_peaks: int


@dataclass
class Threshold:
    value: float
    method: str  # "pot" | "quantile"
    target_false_alarm: float
    initial: float  # u: the initial quantile the tail is fitted above
    shape: float | None  # GPD xi
    scale: float | None  # GPD sigma
    n_calibration: int
    n_peaks: int
    reason: str = ""  # why the fallback was taken
    n_outliers: int = 0  # the largest calibration scores left out as not benign (see the screen above)
    outliers_from: float | None = None  # the smallest of them
    # what a window's accumulated score must exceed, in thresholds, to carry the rest into the
    # entity's next window (model.scorer.accumulate; chosen by model.training.allowance); 0.5
    # in bundles from before it was chosen
    allowance: float = 0.5
    # the hosts whose own ordinary level of score is above the class's, by name, and by how
    # much: their scores are divided by it before this threshold judges them (model.levels);
    # empty in bundles from before levels were read
    levels: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Threshold:
        return cls(**data)


def calibrate(
    scores: np.ndarray,
    target_false_alarm: float = 1e-4,
    fallback_quantile: float = 0.999,
    initial_quantile: float = 0.98,
) -> Threshold:
    """The threshold for benign calibration `scores` at the target false-alarm probability,
    fitted on what is left once the screen has taken out the scores no benign tail explains."""
    s = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    if s.shape[0] == 0:
        raise ValueError("no calibration scores")
    n_out = _screened(s)
    kept = s[: s.shape[0] - n_out]
    threshold = _calibrate_sorted(kept, target_false_alarm, fallback_quantile, initial_quantile)
    if n_out:
        threshold.n_outliers, threshold.outliers_from = n_out, float(s[s.shape[0] - n_out])
    _floored(threshold, kept, target_false_alarm)
    return threshold


def bagged(threshold: Threshold, resampled: np.ndarray, scores: np.ndarray) -> Threshold:
    """`threshold` (calibrate's, on the calibration `scores`) with its value replaced by the
    median of `resampled` (the thresholds calibrate gives on resamples of the same scores),
    floored as calibrate floors it; `reason` keeps the sample's own value. Unchanged where
    nothing was resampled."""
    resampled = np.asarray(resampled, dtype=np.float64)
    resampled = resampled[np.isfinite(resampled)]
    if resampled.size == 0:
        return threshold
    own = threshold.value
    s = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    kept = s[s < threshold.outliers_from] if threshold.n_outliers and threshold.outliers_from is not None else s
    threshold.value = float(np.median(resampled))
    threshold.reason = "; ".join(filter(None, (threshold.reason, (
        f"the median of {resampled.size} resamples' thresholds (the sample's own: {own:.4g})"))))
    if kept.size:
        _floored(threshold, kept, threshold.target_false_alarm)
    return threshold


def _floored(threshold: Threshold, kept: np.ndarray, target_false_alarm: float) -> None:
    """Raises `threshold` to MIN_MARGIN over the largest of the sorted calibration scores
    `kept` (the screen's outliers left out) where they are fewer than one per false alarm
    allowed, and says so."""
    floor = float(kept[-1]) / (1.0 - MIN_MARGIN)
    if kept.shape[0] * target_false_alarm < 1.0 and threshold.value < floor:
        threshold.reason = "; ".join(filter(None, (threshold.reason, (
            f"raised to {MIN_MARGIN:.0%} over the largest of {kept.shape[0]} windows ({float(kept[-1]):.4g}): with fewer "
            f"windows than one per false alarm allowed, none may reach the threshold"))))
        threshold.value = floor


def outliers_from(scores: np.ndarray) -> float | None:
    """The smallest of the calibration `scores` the screen leaves out as not benign (every
    score at or above it), or None when it leaves none out."""
    s = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    n_out = _screened(s) if s.shape[0] else 0  # none held out: calibrate says so, with the span's length
    return float(s[s.shape[0] - n_out]) if n_out else None


def _screened(s: np.ndarray) -> int:
    """How many of the largest of the sorted scores `s` the screen leaves out."""
    n_out = 0
    while found := _outliers(s[: s.shape[0] - n_out], s.shape[0]):  # again without them: outliers mask each other
        n_out += found
    return n_out


def _outliers(s: np.ndarray, n_all: int) -> int:
    """How many of the largest sorted scores `s` (what is left of `n_all` calibration scores,
    at most MAX_OUTLIER_SHARE of them in all) are outliers, by either of two tests: each
    catches contamination the other misses (12 h of honeypot training with ten attacks: the
    gap test found their 14 and 12 windows, the tail test 3 and 1; with two attacks the tail
    test found the host's two largest, the gap test none)."""
    return max(_beyond_plausible_tail(s, n_all), _above_a_gap(s, n_all))


def _above_a_gap(s: np.ndarray, n_all: int) -> int:
    """The largest scores that stand above a gap no heavy-tailed benign sample leaves: with
    the top tenth of the scores in descending order X1 >= X2 >= ... >= Xk+1, the spacings
    i * log(Xi / Xi+1) of a Pareto-like tail are independent exponentials of one mean (Renyi's
    representation; Hill's estimator is their mean), so the spacing under the k0-th largest,
    against the mean of the spacings below it, has an exact tail probability. The largest k0
    whose probability, times the number of k0 tried (Bonferroni), is under OUTLIER_ALPHA is
    the count, k0 at most MIN_PEAKS (cf. Bhattacharya, Kallitsis and Stoev 2019, outliers in
    the extremes of heavy-tailed data)."""
    n = s.shape[0]
    k = int(math.ceil((1.0 - SCREEN_QUANTILE) * n))
    # at most MIN_PEAKS at a time (calibrate asks again without them): a wide gap under the
    # largest scores is what contamination leaves; one deep in a large tail is chance
    most = min(int(math.ceil(MAX_OUTLIER_SHARE * n_all)) - (n_all - n), k - MIN_PEAKS, MIN_PEAKS)
    top = s[::-1][: k + 1]
    if most < 1 or top[-1] <= 0:
        return 0
    spacings = np.arange(1, k + 1) * np.log(top[:-1] / top[1:])
    for k0 in range(most, 0, -1):
        below = spacings[k0:]
        mean = float(below.mean())
        if mean > 0 and most * (1.0 + spacings[k0 - 1] / (below.shape[0] * mean)) ** (-below.shape[0]) < OUTLIER_ALPHA:
            return k0
    return 0


def _beyond_plausible_tail(s: np.ndarray, n_all: int) -> int:
    """The largest scores beyond the heaviest tail the top SCREEN_QUANTILE of the scores make
    plausible (their largest MAX_OUTLIER_SHARE of `n_all` censored, less what has already been
    left out): fewer than OUTLIER_ALPHA of n benign windows would reach them."""
    n = s.shape[0]
    u = float(np.quantile(s, SCREEN_QUANTILE))
    tail = s[s > u] - u
    censored = min(int(math.ceil(MAX_OUTLIER_SHARE * n_all)) - (n_all - n), tail.shape[0] - MIN_PEAKS)
    if censored < 1:
        return 0  # too few peaks to say what is beyond the tail
    xi, sigma = _heaviest_plausible_tail(tail[:-censored], float(tail[-censored]), censored)
    top = tail[-censored:]
    survival = np.exp(-top / sigma) if xi == 0.0 else (1.0 + xi * top / sigma) ** (-1.0 / xi)
    expected = tail.shape[0] * survival  # benign windows of n expected at or above each censored score
    return int((expected < OUTLIER_ALPHA).sum())  # the survival falls with the score: these are the largest


_SHAPES = np.linspace(0.0, MAX_SHAPE, 26)
_SCALES = np.exp(np.linspace(-4.0, 4.0, 161))  # times the mean excess, 5 % apart


def _heaviest_plausible_tail(peaks: np.ndarray, limit: float, censored: int) -> tuple[float, float]:
    """The generalised Pareto tail (shape, scale) of `peaks`, and of `censored` more known only
    to exceed `limit`, with the largest shape within [0, MAX_SHAPE] that the profile likelihood
    does not reject (one-sided 95 %: 1.35 below its maximum), and that shape's best scale. A
    shape fitted on a few dozen peaks is uncertain by +-0.2; the screen judges a score against
    the heaviest tail they allow, so that a heavy benign tail is not cut for being heavy.
    Evaluated on a grid (shapes 0.02, scales 5 % apart): a screen needs no finer answer."""
    sigma = float(peaks.mean()) * _SCALES[:, None]  # (scales, 1)
    xi = _SHAPES[None, 1:]  # (1, shapes > 0)
    k = peaks.shape[0]
    pareto = (-k * np.log(sigma) - (1.0 + 1.0 / xi) * np.log1p(xi[..., None] * peaks / sigma[..., None]).sum(-1)
              - censored * np.log1p(xi * limit / sigma) / xi)
    exponential = -k * np.log(sigma) - (peaks.sum() + censored * limit) / sigma
    loglik = np.concatenate([exponential, pareto], axis=1)  # (scales, shapes)
    profile = loglik.max(axis=0)
    plausible = np.flatnonzero(profile >= profile.max() - 1.35)
    j = int(plausible[-1])
    return float(_SHAPES[j]), float(sigma[int(loglik[:, j].argmax()), 0])


# scipy's penalty in a fit's objective for each point off the support (or of a non-finite log
# density): 100 times the log of the largest float
_OFF_SUPPORT = float(np.log(np.finfo(float).max)) * 100


def _pareto_nnlf(shape: float, scale: float, peaks: np.ndarray) -> float:
    """The generalised Pareto's negative log-likelihood of `peaks` (location 0), penalised
    where a point is off the support as scipy.stats penalises it: genpareto.fit's own
    objective, in the same operations, without scipy's generic dispatch around them (which
    took about three quarters of a calibration's time)."""
    if not math.isfinite(shape) or scale <= 0:
        return math.inf
    from scipy import special
    z = peaks / scale
    n_log_scale = len(z) * np.log(scale)
    inside = (0.0 <= z) & (z <= (-1.0 / shape if shape < 0 else math.inf))
    off = z.size - int(np.count_nonzero(inside))
    if off:
        z = z[inside]
    log_density = -special.xlog1py(shape + 1.0, shape * z) / shape if shape != 0 else -z
    finite = np.isfinite(log_density)
    off += finite.size - int(np.count_nonzero(finite))
    return float(-np.sum(log_density[finite]) + off * _OFF_SUPPORT + n_log_scale)


def _fit_pareto(peaks: np.ndarray, shape: float | None = None) -> tuple[float, float]:
    """(shape, scale) of the generalised Pareto fitted to `peaks` by maximum likelihood,
    location 0, the shape held at `shape` if given: genpareto.fit itself (its start, its
    Nelder-Mead, its checks) searching _pareto_nnlf, so the same fit, bit for bit on scipy
    1.17 (tests/model/test_bundle_threshold.py), 3.3 times faster (a calibration's 200 bootstrap
    resamples fit a tail each)."""
    from scipy import optimize, stats

    def objective(theta: np.ndarray, x: np.ndarray) -> float:
        return _pareto_nnlf(theta[0], theta[1], x) if shape is None else _pareto_nnlf(shape, theta[0], x)

    def search(_func: object, x0: np.ndarray, args: tuple = (), disp: int = 0) -> np.ndarray:  # genpareto.fit's optimizer, on our objective
        return optimize.fmin(objective, x0, args=args, disp=disp)

    if shape is None:
        xi, _, sigma = stats.genpareto.fit(peaks, floc=0.0, optimizer=search)
        return float(xi), float(sigma)
    _, _, sigma = stats.genpareto.fit(peaks, f0=shape, floc=0.0, optimizer=search)
    return shape, float(sigma)


def _calibrate_sorted(s: np.ndarray, target_false_alarm: float, fallback_quantile: float, initial_quantile: float,
                      ) -> Threshold:
    """The peaks-over-threshold calibration of sorted, finite scores `s`."""
    # imported here, not at the top: scipy.stats takes 1.3 s to import, and scoring (netad
    # score, run, the Kafka scorer) loads this module without calibrating anything
    from scipy import stats
    n = s.shape[0]
    # the fallback: the empirical quantile at the target where there are windows enough to read
    # it (n * target >= 1; with fewer, the floor sets the threshold whatever this is), and never
    # under `fallback_quantile`; the 0.999 quantile alone ignored the target (206 hosts'
    # 74,160 windows, two tail fits rejected: a threshold ten times the target's rate,
    # docs/EVALUATION.md xlviii)
    quantile = float(np.quantile(s, max(fallback_quantile, 1.0 - target_false_alarm)))
    # small calibration sets: lower the initial quantile (not below MIN_INITIAL_QUANTILE, where
    # the body of the distribution would start to bend the fit) so the tail still has enough peaks
    initial_quantile = max(min(initial_quantile, 1.0 - MIN_PEAKS / n), MIN_INITIAL_QUANTILE)
    u = float(np.quantile(s, initial_quantile))
    peaks = s[s > u] - u
    base = _Calibration(target_false_alarm=target_false_alarm, initial=u, n_calibration=int(n), n_peaks=int(peaks.shape[0]))
    if peaks.shape[0] < MIN_EXP_PEAKS:
        reason = f"only {peaks.shape[0]} peaks above the {initial_quantile} quantile (need {MIN_EXP_PEAKS})"
        return Threshold(quantile, "quantile", shape=None, scale=None, reason=reason, **base)
    if peaks.shape[0] < MIN_PEAKS:
        note = f"{peaks.shape[0]} peaks (< {MIN_PEAKS}): exponential tail"
        return _threshold(0.0, float(peaks.mean()), u, n, peaks.shape[0], target_false_alarm, quantile, note, base)
    try:
        xi, sigma = _fit_pareto(peaks)
        note = ""
        if xi < 0.0:
            # a bounded tail fitted on a few dozen peaks ends right at the largest calibration
            # score, and the next benign day goes past it (IoT-23 honeypot, trained on 12 h:
            # the fit ended near 4, the following night's benign windows reached 8-10); the
            # exponential tail is the lightest one extrapolated
            xi, sigma, note = 0.0, float(peaks.mean()), f"bounded tail (xi={xi:.2f}) extrapolated as exponential"
        elif xi > MAX_SHAPE:
            # a tail this heavy (infinite variance) is contamination or too few samples; its
            # own extrapolation is absurd, the largest score seen is too low: cap the shape
            _, sigma = _fit_pareto(peaks, MAX_SHAPE)
            xi, note = MAX_SHAPE, f"tail too heavy (xi={xi:.2f}), shape capped at {MAX_SHAPE}"
    except Exception as exc:  # scipy raises a variety of fit errors
        return Threshold(quantile, "quantile", shape=None, scale=None, reason=f"tail fit failed: {exc}", **base)
    if not math.isfinite(xi) or not math.isfinite(sigma) or sigma <= 0:
        return Threshold(quantile, "quantile", shape=float(xi), scale=float(sigma), reason="tail fit gave no finite shape or scale", **base)
    # the goodness-of-fit check judges the free fit; a held shape is a deliberate departure
    ks = stats.kstest(peaks, "genpareto", args=(xi, 0.0, sigma))
    if not note and ks.pvalue < 0.01:
        return Threshold(quantile, "quantile", shape=float(xi), scale=float(sigma), reason=f"poor tail fit (KS p={ks.pvalue:.3g})", **base)
    return _threshold(float(xi), float(sigma), u, n, peaks.shape[0], target_false_alarm, quantile, note, base)


def _threshold(xi: float, sigma: float, u: float, n: int, n_peaks: int, target_false_alarm: float, quantile: float,
               note: str, base: _Calibration) -> Threshold:
    """The score the fitted tail exceeds with probability `target_false_alarm`."""
    ratio = target_false_alarm * n / n_peaks
    if ratio >= 1.0:
        value = u
    elif abs(xi) < 1e-6:
        value = u - sigma * math.log(ratio)
    else:
        value = u + (sigma / xi) * (ratio ** (-xi) - 1.0)
    if not math.isfinite(value) or value <= 0:
        return Threshold(quantile, "quantile", shape=float(xi), scale=float(sigma), reason="tail fit gave no finite threshold", **base)
    return Threshold(float(value), "pot", shape=float(xi), scale=float(sigma), reason=note, **base)
