"""Window-score lines are strict JSON: a score, threshold or feature value that is not
finite is written as null, never as a bare NaN or Infinity (which JSON parsers refuse)."""

from __future__ import annotations

import json

import numpy as np

from detector.capture.windows import PACKET_SCHEMA
from detector.contracts import ScoreBatch


def _strict(line: str) -> dict:
    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(line, parse_constant=refuse)


def _batch(scores: list[float], observed: list[float]) -> ScoreBatch:
    n, k = len(scores), 2
    return ScoreBatch(
        window_start_ns=1_700_000_000_000_000_000, window_end_ns=1_700_000_060_000_000_000,
        entities=[f"10.20.0.{i}" for i in range(n)], entity_classes=["host"] * n,
        scores=np.asarray(scores, np.float32), thresholds=np.full(n, 2.0, np.float32),
        anomalous=np.zeros(n, bool), ready=np.ones(n, bool),
        top_index=np.tile(np.arange(k), (n, 1)), top_share=np.full((n, k), 0.5, np.float32),
        top_observed=np.asarray([[v, 1.0] for v in observed], np.float32), top_expected=np.zeros((n, k), np.float32),
        schema=PACKET_SCHEMA,
    )


def test_non_finite_values_are_written_as_null():
    lines = _batch([np.nan, np.inf, 3.5], [np.inf, -np.inf, 2.0]).jsonl(sensor="s1").splitlines()
    rows = [_strict(line) for line in lines]
    assert [None, None, 3.5] == [r["score"] for r in rows]
    assert [None, None, 2.0] == [r["top_features"][0]["observed"] for r in rows]
    assert all(2.0 == r["threshold"] and "s1" == r["sensor"] for r in rows)


def test_finite_lines_are_as_before():
    """The usual case keeps its exact form (rounded values, no nulls)."""
    line = _batch([1.23456789], [4.56789]).jsonl().splitlines()[0]
    row = _strict(line)
    assert 1.234568 == row["score"] and 4.568 == row["top_features"][0]["observed"] and "NaN" not in line
