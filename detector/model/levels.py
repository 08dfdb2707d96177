"""A host's own level: its scores judged against what it ordinarily scores, where that is
more than its class ordinarily does.

One class's threshold is set by the tail of all its members' held-out windows, so on a
network of hundreds its busiest hosts' ordinary bursts set the threshold every quiet host is
judged against: on the 206-host office a workstation's 20 MB upload or its first served SSH
session scored under the busiest workstation's ordinary windows (docs/EVALUATION.md,
sections xlix and l). A host's level is the LEVEL_QUANTILE of its own held-out scores over
the class's (every member's held-out windows pooled); where it is above 1 the host's scores
are divided by it, so that what a busy host ordinarily does no longer sets the threshold
the quiet ones are judged against.

Only ever down (a level is at least 1): a quiet host is never judged against less than its
class's ordinary level, so one whose held-out span was quieter than its test span (or a few
windows long) does not alarm on its first ordinary burst. The price: a host that is busy in
its training span hides an attack as much bigger as it is busy (an attack on it must stand
out of its own bursts). A host read from fewer than MIN_LEVEL_WINDOWS windows keeps its
class's level (10 windows over the quantile, at the least, say where it lies).

Only a host of a class of many has one: a host that holds more than 1 - LEVEL_QUANTILE of
its class's windows is, on its own, what the class's quantile is read from, and no typical
level of others to be judged against exists. On the honeypot's two hosts (half the windows
each) the victim took a level of 1.6 to 1.8 over the pair, the threshold fell by half, and
the gateway's ordinary twice-a-day burst opened 2 benign incidents (fold A, 6 h: 3 in all,
where there had been none: docs/EVALUATION.md, section li).

Cross-fitted, as the held-out scores are (model.training._out_of_fold_errors): the windows
of one half of the training span are divided by levels read from the other half only, and
the threshold is calibrated on those; a level read from the very windows it divides would
make every host's tail look alike, and the threshold too low for the next day. The bundle
keeps the levels read from every held-out window (Threshold.levels, per member).
"""

from __future__ import annotations

import numpy as np

LEVEL_QUANTILE = 0.9
MIN_LEVEL_WINDOWS = 100
MAX_SHARE = round(1.0 - LEVEL_QUANTILE, 9)  # of the class's windows, for a host to have a level


def levels_of(scores: np.ndarray) -> np.ndarray:
    """Each entity's level (entities,) from held-out `scores` (entities, windows), NaN where
    there is no score: its LEVEL_QUANTILE over the class's, where that is above 1, it has
    MIN_LEVEL_WINDOWS scores or more and they are at most MAX_SHARE of the class's;
    1 elsewhere."""
    out = np.ones(scores.shape[0])
    finite = np.isfinite(scores)
    if not finite.any():
        return out
    class_level = float(np.quantile(scores[finite], LEVEL_QUANTILE))
    if not class_level > 0:
        return out
    n = finite.sum(axis=1)
    for e in np.flatnonzero((n >= MIN_LEVEL_WINDOWS) & (n <= MAX_SHARE * finite.sum())):
        out[e] = max(1.0, float(np.quantile(scores[e, finite[e]], LEVEL_QUANTILE)) / class_level)
    return out


def cross_fitted(scores: np.ndarray, halves: np.ndarray) -> np.ndarray:
    """`scores` (entities, windows) each divided by its entity's level read from the other
    half of the windows only (`halves`: (windows,) 0 or 1, as the out-of-fold scores were
    dealt)."""
    out = scores.astype(np.float64)
    for k in (0, 1):
        here = halves == k
        out[:, here] /= levels_of(np.where(here[None, :], np.nan, scores))[:, None]
    return out.astype(scores.dtype)


def levels_by_entity(entities: list[str], levels: np.ndarray) -> dict[str, float]:
    """The levels above 1, by entity name: what the bundle keeps (Threshold.levels)."""
    return {name: round(float(v), 6) for name, v in zip(entities, levels, strict=True) if v > 1.0}
