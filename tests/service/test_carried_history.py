"""A model bundle carries the peer history its training span ended with into what it scores.

On the real honeypot capture: the windows of a stream that starts where a training span
ended, carried in, count new peers and ports exactly as one stream through both would; a
cold start counts none for its first hour (the history's warm-up). And `netad train` puts
it in the bundle, from which the daemon's stages start.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from detector.config import load_config
from detector.contracts import CarriedHistory, PacketBatch, WindowBatch
from detector.service.pipeline import capture_batches, window_stream
from tests.conftest import shared_file

HOUR_NS = 3600 * 10**9


def _part(path, keep) -> Iterator[PacketBatch]:
    for b in capture_batches([path]):
        mask = keep(b.ts_ns)
        if mask.any():
            yield b.take(mask)


def _novelty(windows: list[WindowBatch], start_ns: int, end_ns: int) -> dict[tuple[int, str], np.ndarray]:
    """(window start, entity) -> its new_peers and new_ports per bin, for windows in [start, end)."""
    out = {}
    for wb in windows:
        if start_ns <= wb.window_start_ns < end_ns:
            cols = [list(wb.schema.features).index(n) for n in ("new_peers", "new_ports")]
            for i, entity in enumerate(wb.entities):
                out[(wb.window_start_ns, entity)] = wb.features[i][:, cols]
    return out


def test_a_stream_carried_in_from_the_training_span_counts_new_peers_as_one_stream_through_both():
    pcap = shared_file("iot23-honeypot-4-1/honeypot-4-1.pcap")
    cfg = load_config(None, env={})
    window_ns = int(cfg.windows.bin_s * cfg.windows.bins * 1e9)
    t0 = int(next(iter(capture_batches([pcap]))).ts_ns[0])
    split = -(-(t0 + 6 * HOUR_NS) // window_ns) * window_ns  # 6 h in, on the window grid
    carried: list[CarriedHistory] = []
    training = list(window_stream(cfg, _part(pcap, lambda ts: ts < split), ended=carried.append))
    assert training[-1].window_end_ns == split and carried[0].ended_ns == split
    after = list(window_stream(cfg, _part(pcap, lambda ts: ts >= split), carried=carried[0]))
    cold = list(window_stream(cfg, _part(pcap, lambda ts: ts >= split)))
    whole = list(window_stream(cfg, _part(pcap, lambda ts: ts < split + 3 * HOUR_NS)))

    span = (split, split + 2 * HOUR_NS)
    one, seeded, fresh = _novelty(whole, *span), _novelty(after, *span), _novelty(cold, *span)
    assert seeded.keys() <= one.keys() and len(seeded) > 100
    for key, value in seeded.items():
        np.testing.assert_array_equal(value, one[key], err_msg=str(key))
    assert sum(v.sum() for v in seeded.values()) > 0  # the span has news to miss
    first_hour = [v for (start, _), v in fresh.items() if start + window_ns <= split + HOUR_NS]
    assert first_hour and sum(v.sum() for v in first_hour) == 0  # cold: blind for the warm-up

    # capture workers build a window after the parent has closed the next: the same windows
    split_cfg = cfg.model_copy(deep=True)
    split_cfg.source.workers = 2
    sharded = list(window_stream(split_cfg, _part(pcap, lambda ts: ts >= split), carried=carried[0]))
    assert [w.window_start_ns for w in sharded] == [w.window_start_ns for w in after]
    for a, b in zip(after, sharded, strict=True):
        assert a.entities == b.entities
        np.testing.assert_array_equal(a.features, b.features)


@pytest.mark.slow
def test_netad_train_puts_the_history_in_the_bundle_and_the_daemon_s_stages_start_from_it(tmp_path):
    from detector.model.bundle import ModelBundle
    from detector.service.pipeline import Pipeline
    from detector.service.training import train_from_captures

    pcap = shared_file("iot23-honeypot-4-1/honeypot-4-1.pcap")
    cfg = load_config(None, env={})
    cfg.training.epochs = 2
    train_from_captures(cfg, [pcap], tmp_path / "m", end_s=3 * 3600)
    bundle = ModelBundle.load(tmp_path / "m")
    assert bundle.history is not None and bundle.history.rows("peers") > 0
    assert bundle.history.state["entities.keys"].tolist()[0] == 0  # `global` (key 0) among them
    pipeline = Pipeline(cfg, bundle)
    history = pipeline.windows.history.state_dict()
    for k, v in bundle.history.state.items():
        np.testing.assert_array_equal(history[k], v)


@pytest.mark.slow
def test_a_training_span_shorter_than_the_warm_up_still_teaches_the_novelty_inputs(demo):
    """The demo is trained on its first 25 minutes, under the default hour of warm-up. Scored,
    its hosts' histories (carried in) warm up 35 minutes in and count new peers and ports from
    then on; so training counts them too, from a quarter of its span on, and the host class
    learns them as inputs that vary: their held-out errors are above the floor, not a count
    never seen, weighed in full (19 incidents, 6 on benign workstations, where 7 are right:
    docs/EVALUATION.md, section xxiii)."""
    from detector.model.bundle import ModelBundle
    from detector.model.scaler import MIN_ERROR_SCALE

    cfg = load_config(None, env={})
    bundle = ModelBundle.load(demo["model"])
    assert 0 < bundle.training["history_warmup_s"] <= 0.25 * 1800 < cfg.windows.history_warmup_s
    host = bundle.classes["host"].scaler.error_scale
    for name in ("new_peers", "new_ports"):
        assert host[list(bundle.schema.features).index(name)] > MIN_ERROR_SCALE, name
