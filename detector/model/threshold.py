"""Thresholds: the score above which a window is anomalous, set from a false-alarm target.

Calibrated on held-out benign windows with a peaks-over-threshold tail fit in the style of
SPOT (Siffer et al., KDD 2017): scores above a high initial quantile `u` are modelled by a
generalised Pareto distribution, and the threshold is the score whose exceedance
probability is the configured target (e.g. 1e-4 per window). The fit is checked; when it is
poor the threshold falls back to an empirical quantile and the calibration says so
(`method`). The fitted shape is kept within [0, MAX_SHAPE]: the extrapolation is never
lighter than exponential nor heavier than xi = 0.5, and `reason` says when it was held there.
A few hours of training give a few hundred calibration windows: the initial quantile is
lowered (to 0.90 at the lowest) until the tail holds MIN_PEAKS, and with fewer peaks than that
(but MIN_EXP_PEAKS at least) the tail is fitted as an exponential, its one parameter being
the mean excess. A bare quantile of a few hundred windows is about their maximum, which the
next day's benign windows pass (22 h honeypot, 6 h of training: 3 false incidents a day).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TypedDict

import numpy as np

MIN_PEAKS = 20  # peaks for a free tail fit (shape and scale)
MIN_EXP_PEAKS = 8  # peaks for an exponential tail (scale only)
MIN_INITIAL_QUANTILE = 0.90
MAX_SHAPE = 0.5


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
    """The threshold for benign calibration `scores` at the target false-alarm probability."""
    # imported here, not at the top: scipy.stats takes 1.3 s to import, and scoring (netad
    # score, run, the Kafka scorer) loads this module without calibrating anything
    from scipy import stats
    s = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    n = s.shape[0]
    if n == 0:
        raise ValueError("no calibration scores")
    quantile = float(np.quantile(s, fallback_quantile))
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
        xi, _, sigma = stats.genpareto.fit(peaks, floc=0.0)
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
            _, _, sigma = stats.genpareto.fit(peaks, f0=MAX_SHAPE, floc=0.0)
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
