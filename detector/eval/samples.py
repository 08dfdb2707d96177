"""What an evaluation counts: the labelled attack intervals and the scored (entity, window)
samples of the test part. Filled by `eval.evaluate`, read by `eval.metrics` users and
`eval.report` (which therefore never imports the evaluation itself)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from detector.truth import Interval


@dataclass
class LabelledInterval:
    interval: Interval
    attackers: list[str]
    targets: list[str]
    attacker_packets: int | None = None  # packets inside it from its attackers (or to/from targets)
    visible: bool | None = None
    host_packets: dict[str, int] = field(default_factory=dict)  # per named host, its packets of the attack
    visible_hosts: set[str] = field(default_factory=set)
    # packets of the attack per window start ("" = any of them, else a named host's part);
    # None when the tally did not run (no host named)
    window_packets: dict[str, dict[int, int]] | None = None

    @property
    def hosts(self) -> set[str]:
        return set(self.attackers) | set(self.targets)


@dataclass
class Windows:
    """Every scored (entity, window) of the test part, one row each, with labels."""

    start_ns: np.ndarray
    end_ns: np.ndarray
    entity: np.ndarray  # str
    entity_class: np.ndarray  # str
    scores: dict[str, np.ndarray]  # detector -> score
    anomalous: np.ndarray  # the daemon's verdict (ready and above threshold)
    threshold: np.ndarray  # the threshold the daemon applied to the window (it may adapt)
    features: np.ndarray  # (rows, bins, features), real units
    label: np.ndarray | None = None
    unlabelled: np.ndarray | None = None
    benign: np.ndarray | None = None  # overlaps no positive interval at all, nor is in one's trail
    trail: np.ndarray | None = None  # after a positive interval, still carrying its state: unlabelled
