"""Capture workers (source.workers > 1): the flows split over processes by flow hash, the
per-bin partials merged per window, give the windows, evidence and scores of one process."""

from __future__ import annotations

import io
import os
import signal
import threading

import numpy as np
import pytest
import torch

from detector.capture.flows import flow_shards
from detector.capture.packets.pcap import CaptureFile
from detector.capture.windows import PACKET_SCHEMA, sharded
from detector.config import load_config
from detector.contracts import PacketBatch, WindowBatch
from detector.model.bundle import ClassModel, ModelBundle
from detector.model.lstm import LSTMAutoencoder
from detector.model.scaler import FeatureScaler
from detector.model.threshold import Threshold
from detector.service.pipeline import Pipeline, build_windowing
from tests.conftest import REPO, make_batch, shared_file


def _westermo(**windows):
    """configs/westermo.yaml (home net 198.18.134.0/24, 5 x 2 s bins), with hosts expiring
    after 10 s idle (slots freed and reused) unless told otherwise."""
    cfg = load_config(REPO / "configs" / "westermo.yaml", env={})
    return cfg.model_copy(update={"windows": cfg.windows.model_copy(update={"entity_idle_s": 10.0, **windows})})


def _batches(batch_packets: int = 4000) -> list[PacketBatch]:
    """westermo/right.pcap in small batches: windows close inside batches, parts are cut."""
    return list(CaptureFile(shared_file("westermo/right.pcap"), batch_packets=batch_packets))


def _windows(cfg, batches: list[PacketBatch], workers: int) -> tuple[list[WindowBatch], dict, list]:
    stages = build_windowing(cfg, workers=workers)
    try:
        out = [w for b in batches for w in stages.push(b)] + stages.flush()
        return out, stages.stats(), stages.worker_stats()
    finally:
        stages.close()


def test_both_directions_of_a_flow_go_to_one_worker():
    """The shard of a packet is that of its reply (addresses and ports swapped)."""
    rows = [{"ts_s": 1.0, "src": f"10.0.{i}.1", "dst": "192.0.2.7", "sport": 1000 + i, "dport": 443, "proto": 6}
            for i in range(200)]
    replies = [{**r, "src": r["dst"], "dst": r["src"], "sport": r["dport"], "dport": r["sport"]} for r in rows]
    there, back = flow_shards(make_batch(rows), 4), flow_shards(make_batch(replies), 4)
    assert there.tolist() == back.tolist()
    assert {0, 1, 2, 3} == set(there.tolist())  # and flows do spread


def test_two_workers_give_the_windows_and_evidence_of_one():
    """westermo/right.pcap through 1 and 2 workers: every window's features equal bit for
    bit, and so do its entities, evidence and the flow-table counters; both workers got flows."""
    cfg, batches = _westermo(), _batches()
    one, one_stats, _ = _windows(cfg, batches, 1)
    two, two_stats, per_worker = _windows(cfg, batches, 2)
    assert len(one) > 50 and one_stats["entities_expired"] > 0
    assert [(w.window_start_ns, w.entities) for w in one] == [(w.window_start_ns, w.entities) for w in two]
    for a, b in zip(one, two, strict=True):
        assert a.features.tobytes() == b.features.tobytes()
        assert dict(a.evidence) == dict(b.evidence)
    assert one_stats == two_stats
    assert sum(w["packets"] for w in per_worker) == sum(len(b) for b in batches)
    assert all(w["flows_created"] > 0 for w in per_worker)


def test_a_batch_larger_than_the_ring_and_a_worker_behind_it(monkeypatch):
    """The shared-memory ring's slots grow for a batch larger than they are (the workers map
    them again), and with two slots the parent waits for the workers before it writes the
    next batch: the windows are still those of one process."""
    monkeypatch.setattr(sharded, "_RING_ROWS", 1000)
    monkeypatch.setattr(sharded, "_RING_SLOTS", 2)
    cfg, batches = _westermo(), _batches()[:3]
    one, one_stats, _ = _windows(cfg, batches, 1)
    two, two_stats, _ = _windows(cfg, batches, 2)
    assert [(w.window_start_ns, w.entities, w.features.tobytes()) for w in one] == \
        [(w.window_start_ns, w.entities, w.features.tobytes()) for w in two]
    assert one_stats == two_stats


def _bundle(cfg, windows: list[WindowBatch]) -> ModelBundle:
    """An untrained model (fixed seed) scaled to these windows: scores to compare, not judge."""
    torch.manual_seed(0)
    feats = np.concatenate([w.features for w in windows])
    classes = {}
    for cls in ("global", "host"):
        net = LSTMAutoencoder(len(PACKET_SCHEMA.features), 8, cfg.windows.bins).eval()
        classes[cls] = ClassModel(net, FeatureScaler.fit(feats), Threshold(5.0, "quantile", 1e-4, 1.0, None, None, 100, 0))
    return ModelBundle(PACKET_SCHEMA, cfg.windows.bin_s, cfg.windows.bins, 8, classes)


def test_two_workers_give_the_scores_of_one():
    """The Pipeline (as the daemon, `netad score` and `netad eval` wire it) writes the same
    score lines with source.workers 1 and 2 (the capture's first 8,000 packets)."""
    cfg, batches = _westermo(), _batches()[:2]
    bundle = _bundle(cfg, _windows(cfg, batches, 1)[0])
    lines, threads = [], []
    for workers in (1, 2):
        run_cfg = cfg.model_copy(update={"source": cfg.source.model_copy(update={"workers": workers})})
        out, scored_on = io.StringIO(), set()
        pipeline = Pipeline(run_cfg, bundle, scores_out=out, on_scored=lambda *_, seen=scored_on: seen.add(threading.current_thread().name))
        for b in batches:
            pipeline.push(b)
        pipeline.finish()
        pipeline.stages.close()
        lines.append(out.getvalue().splitlines())
        threads.append(scored_on)
    assert len(lines[0]) > 100
    assert lines[0] == lines[1]
    assert threads == [{"MainThread"}, {"netad-scoring"}]  # with workers, scored on the Scoring stage's thread


def test_a_scoring_error_with_workers_is_raised_in_the_pipelines_caller():
    """On the scoring thread an error would end the thread and leave the daemon capturing
    blind; it is raised where the windows are pushed, as it is without workers."""
    cfg, batches = _westermo(), _batches()[:2]
    bundle = _bundle(cfg, _windows(cfg, batches, 1)[0])
    run_cfg = cfg.model_copy(update={"source": cfg.source.model_copy(update={"workers": 2})})

    def broken(*_: object) -> None:
        raise RuntimeError("scorer broke")

    pipeline = Pipeline(run_cfg, bundle, on_scored=broken)
    try:
        with pytest.raises(RuntimeError, match="scorer broke"):
            for b in batches:
                pipeline.push(b)
            pipeline.finish()
    finally:
        pipeline.stages.close()


def _flood_then_few() -> list[PacketBatch]:
    """3,000 spoofed home hosts for 4 s; then 8 hosts until 7.9 s, silent after; one more
    host from 7.95 s to 14 s keeps the clock going. When the window [6, 8) closes, the
    flood's entities expire, and the 8 hosts (in slots above the flood's) are alive but
    have nothing in an open window: they move down and the slot table shrinks back."""
    rng = np.random.default_rng(7)
    t0 = 1_700_000_000 * 10**9

    def rows(n: int, start_s: float, span_s: float, hosts: int, base: str) -> list[dict]:
        ts = np.sort(rng.uniform(start_s, start_s + span_s, n))
        return [{"ts_s": t0 / 1e9 + float(t), "src": f"{base}.{(i % hosts) // 250}.{(i % hosts) % 250 + 1}",
                 "dst": f"198.51.100.{int(rng.integers(1, 40))}", "sport": int(rng.integers(1024, 65535)),
                 "dport": int(rng.choice([53, 80, 443])), "proto": 6 if i % 3 else 17, "flags": 2}
                for i, t in enumerate(ts)]

    both = make_batch(rows(6000, 0.0, 4.0, 3000, "10.9") + rows(400, 4.0, 3.9, 8, "10.1") + rows(300, 7.95, 6.0, 1, "10.2"))
    return [both.take(slice(i, i + 100)) for i in range(0, len(both), 100)]


def test_two_workers_give_one_workers_windows_through_a_flood_and_its_expiry():
    """Entities of a flood expire and the slot table shrinks while windows are open: the
    windows with 2 workers still equal those of one, entity by entity."""
    cfg = load_config(None, env={})
    cfg = cfg.model_copy(update={"home_net": ["10.0.0.0/8"], "windows": cfg.windows.model_copy(
        update={"bin_s": 1.0, "bins": 2, "lateness_s": 0.5, "entity_idle_s": 2.0})})
    batches = _flood_then_few()
    slots = []
    for workers in (1, 2):
        stages = build_windowing(cfg, workers=workers)
        try:
            windows, most = [], 0
            for b in batches:
                windows += stages.push(b)
                most = max(most, stages.windows.slots)
            slots.append((most, stages.windows.slots))
            windows += stages.flush()
            if workers == 1:
                one, one_stats = windows, stages.stats()
            else:
                two, two_stats = windows, stages.stats()
        finally:
            stages.close()
    assert slots[0] == slots[1] and slots[0][0] > 3000 > 100 > slots[0][1]  # it shrank back
    assert one_stats["entities_expired"] >= 3000 and one_stats == two_stats
    by_entity = [[(w.window_start_ns, {e: w.features[i].tobytes() for i, e in enumerate(w.entities)}) for w in ws]
                 for ws in (one, two)]
    assert by_entity[0] == by_entity[1]


def test_the_parent_reads_on_while_a_worker_still_owes_a_closed_windows_aggregates():
    """A window's close does not wait for the workers: with one worker stopped (SIGSTOP),
    the batch that closes a window is taken in and the parent goes on; the window is handed
    on once the worker answers (SIGCONT), and every window still equals one process's."""
    cfg, batches = _westermo(), _batches(100)
    stages1 = build_windowing(cfg, workers=1)
    pushed = [list(stages1.push(b)) for b in batches]
    one = [w for ws in pushed for w in ws] + stages1.flush()
    closes = [len(ws) for ws in pushed]
    k = next(i for i, n in enumerate(closes) if i > 0 and n == 1)  # a batch that closes one window
    stages = build_windowing(cfg, workers=2)
    try:
        two = [w for b in batches[:k] for w in stages.push(b)]
        stages.worker_stats()  # both workers have taken every batch so far
        worker = stages.flows._procs[0]
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            done: list[list[WindowBatch]] = []
            pushing = threading.Thread(target=lambda: done.append(list(stages.push(batches[k]))), daemon=True)
            pushing.start()
            pushing.join(timeout=60)
            assert done, "the parent waited for a stopped worker at a window's close"
            assert all(w.window_start_ns < one[len(two) + len(done[0])].window_start_ns for w in done[0])
            assert len(two) + len(done[0]) < sum(closes[: k + 1])  # the window it closed is not handed on yet
            two += done[0]
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        two += [w for b in batches[k + 1 :] for w in stages.push(b)] + stages.flush()
    finally:
        stages.close()
    assert [(w.window_start_ns, w.entities, w.features.tobytes()) for w in one] == \
        [(w.window_start_ns, w.entities, w.features.tobytes()) for w in two]
