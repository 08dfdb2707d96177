"""`netad bench model`: scoring and training throughput of the streaming LSTM autoencoder.

Measured side by side in one run, medians of repetitions (the machine is shared and noisy):
- entity-windows/s through StreamingScorer.score (the daemon's path, state carried) at
  batches of 1, 64 and 1024 entities, on the asked number of torch threads and, beside it,
  on one thread (the daemon's default, `model.threads`);
- the stateless alternative at the same batches: to give a window the same context without
  carried state, the encoder must re-read the entity's last `history_windows` windows from
  scratch every time;
- latency of one window close at 2,000 active hosts (p50, p99);
- training windows/s (model.training.train on synthetic windows); with members, beside it
  the members trained one after another in this process, as on one CPU, or where the memory
  leaves room for one worker.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from detector.capture.windows import PACKET_SCHEMA
from detector.contracts import WindowBatch
from detector.model.bundle import ClassModel, ModelBundle
from detector.model.lstm import LSTMAutoencoder
from detector.model.scaler import FeatureScaler
from detector.model.scorer import StreamingScorer, reconstruct, resolve_device
from detector.model.threshold import Threshold
from detector.model.training import TrainingParams, member_workers, train

TARGET_BATCH_1024 = 300_000  # entity-windows/s
TARGET_P99_MS = 10.0
WINDOW_NS = 60_000_000_000


@dataclass
class _Setup:
    bundle: ModelBundle
    features: np.ndarray  # (windows, entities, bins, features)


def _setup(hidden: int, bins: int, entities: int, windows: int, seed: int = 0, members: int = 1) -> _Setup:
    rng = np.random.default_rng(seed)
    n_f = len(PACKET_SCHEMA.features)
    feats = rng.gamma(2.0, 20.0, size=(windows, entities, bins, n_f)).astype(np.float32)
    torch.manual_seed(seed)
    scaler = FeatureScaler.fit(feats[: min(windows, 4)])

    def threshold() -> Threshold:
        # every other host busier than the class, judged in its own level (model.levels), as a
        # trained model of many hosts has some: the scorer's path with levels is what is timed
        levels = {name: 1.5 for name in _names(entities)[1::2]}
        return Threshold(1e9, "quantile", 1e-4, 0.0, None, None, 0, 0, levels=levels)

    own = [ClassModel(LSTMAutoencoder(n_f, hidden, bins).eval(), scaler, threshold()) for _ in range(members)]
    host = ClassModel(own[0].network, scaler, threshold(), members=own if members > 1 else [])
    return _Setup(ModelBundle(PACKET_SCHEMA, 10.0, bins, hidden, {"host": host}, members=members), feats)


def _names(n: int) -> list[str]:
    return [f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}" for i in range(n)]


def _batches(setup: _Setup, n: int) -> list[WindowBatch]:
    names = _names(n)
    out = []
    for k in range(setup.features.shape[0]):
        out.append(WindowBatch(k * WINDOW_NS, (k + 1) * WINDOW_NS, names, ["host"] * n, setup.features[k, :n], PACKET_SCHEMA))
    return out


@contextlib.contextmanager
def _torch_threads(threads: int):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _carried_rate(setup: _Setup, n: int, device: str, min_s: float) -> float:
    scorer = StreamingScorer(setup.bundle, device=device, warmup_windows=0, max_entities=max(n, 16))
    batches = _batches(setup, n)
    scorer.score(batches[0])
    done, t0 = 0, time.perf_counter()
    while True:
        for wb in batches[1:]:
            scorer.score(wb)
            done += n
        elapsed = time.perf_counter() - t0
        if elapsed >= min_s:
            return done / elapsed


def _stateless_rate(setup: _Setup, n: int, history: int, device: str, min_s: float) -> float:
    """Same context without carried state: re-encode the last `history` windows each time."""
    cm = setup.bundle.classes["host"]
    dev = resolve_device(device)
    members = cm.members or [cm]
    for m in members:
        m.network.to(dev)
    feats = setup.features[:, :n]
    w, bins = feats.shape[0], feats.shape[2]
    done, t0 = 0, time.perf_counter()
    while True:
        for k in range(history, w):
            hist = feats[k - history : k].transpose(1, 0, 2, 3).reshape(n, history * bins, -1)
            for m in members:  # every member re-reads the history, as every member carries its state
                x = torch.from_numpy(m.scaler.transform(hist)).to(dev)
                with torch.no_grad():
                    _, (h, c) = m.network.encoder(x)
                reconstruct(m.network, m.scaler, feats[k], (h[0], c[0]))
            done += n
        elapsed = time.perf_counter() - t0
        if elapsed >= min_s:
            return done / elapsed


def _latency_ms(setup: _Setup, n: int, device: str, closes: int) -> tuple[float, float]:
    scorer = StreamingScorer(setup.bundle, device=device, warmup_windows=0, max_entities=n)
    batches = _batches(setup, n)
    scorer.score(batches[0])
    times = []
    for i in range(closes):
        wb = batches[1 + i % (len(batches) - 1)]
        t0 = time.perf_counter()
        scorer.score(wb)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def _training_rate(hidden: int, bins: int, entities: int, windows: int, epochs: int, members: int = 1,
                   workers: int | None = None) -> float:
    setup = _setup(hidden, bins, entities, windows, seed=1)
    batches = _batches(setup, entities)
    params = TrainingParams(hidden_size=hidden, epochs=epochs, patience=epochs + 1, threads=0, members=members)
    t0 = time.perf_counter()
    bundle = train(batches, params, 10.0, bins, workers=workers)
    elapsed = time.perf_counter() - t0
    epochs_run = bundle.training["classes"]["host"]["epochs"]
    return entities * windows * epochs_run / elapsed


def run_model_bench(threads: int = 2, device: str = "cpu", hidden: int = 32, bins: int = 6, repeats: int = 3,
                    min_s: float = 1.0, history_windows: int = 10, hosts: int = 2000, members: int = 1) -> dict:
    torch.set_num_threads(threads)
    setup = _setup(hidden, bins, 1024, 12, members=members)
    result: dict = {"threads": threads, "device": device, "hidden_size": hidden, "bins": bins, "repeats": repeats,
                    "members": members}
    carried, carried_1, stateless = {}, {}, {}
    for n in (1, 64, 1024):
        carried[n] = statistics.median(_carried_rate(setup, n, device, min_s) for _ in range(repeats))
        if threads == 1:
            carried_1[n] = carried[n]
        else:
            with _torch_threads(1):
                carried_1[n] = statistics.median(_carried_rate(setup, n, device, min_s) for _ in range(repeats))
        stateless[n] = statistics.median(_stateless_rate(setup, n, history_windows, device, min_s) for _ in range(repeats))
    result["carried_windows_per_s"] = {str(k): round(v) for k, v in carried.items()}
    result["carried_windows_per_s_1_thread"] = {str(k): round(v) for k, v in carried_1.items()}
    result["stateless_windows_per_s"] = {str(k): round(v) for k, v in stateless.items()}
    result["stateless_history_windows"] = history_windows
    result["carried_over_stateless"] = {str(k): round(carried[k] / stateless[k], 2) for k in carried}
    lat_setup = _setup(hidden, bins, hosts, 8, seed=2, members=members)
    p50s, p99s = zip(*(_latency_ms(lat_setup, hosts, device, 100) for _ in range(repeats)), strict=True)
    result["latency_ms_at_hosts"] = {"hosts": hosts, "p50": round(statistics.median(p50s), 3), "p99": round(statistics.median(p99s), 3)}
    # the members train in as many processes at once as member_workers allows; beside it,
    # in the same rounds, one after another in this process (one CPU, or room for one worker)
    workers = member_workers(members, 0, 1)
    at_once, one_by_one = [], []
    for _ in range(repeats):
        at_once.append(_training_rate(hidden, bins, 64, 200, 2, members))
        if workers > 1:
            one_by_one.append(_training_rate(hidden, bins, 64, 200, 2, members, workers=1))
    result["training_windows_per_s"] = round(statistics.median(at_once))
    result["training_workers"] = workers
    if one_by_one:
        result["training_windows_per_s_one_by_one"] = round(statistics.median(one_by_one))
    result["targets"] = {"carried_1024": TARGET_BATCH_1024, "p99_ms": TARGET_P99_MS}
    return result


def format_model_bench(r: dict) -> str:
    lines = [
        f"netad bench model: {r['device']}, {r['threads']} torch thread(s), hidden {r['hidden_size']}, {r['bins']} bins/window, "
        f"{r.get('members', 1)} member(s) per class, median of {r['repeats']}",
        f"{'batch':>8} {'carried (win/s)':>16} {'carried, 1 thread':>18} "
        f"{'stateless, ' + str(r['stateless_history_windows']) + ' windows of history':>36} {'ratio':>7}",
    ]
    for k in ("1", "64", "1024"):
        lines.append(f"{k:>8} {r['carried_windows_per_s'][k]:>16,} {r['carried_windows_per_s_1_thread'][k]:>18,} "
                     f"{r['stateless_windows_per_s'][k]:>36,} {r['carried_over_stateless'][k]:>7.2f}")
    lat = r["latency_ms_at_hosts"]
    target = r["targets"]["carried_1024"]
    c1024, c1024_1 = r["carried_windows_per_s"]["1024"], r["carried_windows_per_s_1_thread"]["1024"]
    lines += [
        f"window-close latency at {lat['hosts']:,} hosts: p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms "
        f"(target p99 <= {r['targets']['p99_ms']:.0f} ms: {'met' if lat['p99'] <= r['targets']['p99_ms'] else 'MISSED'})",
        f"batch 1024 with carried state: {c1024:,} entity-windows/s (target >= {target:,}: {'met' if c1024 >= target else 'MISSED'}); "
        f"on 1 thread (the daemon's default): {c1024_1:,} ({'met' if c1024_1 >= target else 'MISSED'})",
        f"training: {r['training_windows_per_s']:,} windows/s (epochs x windows / wall time, validation included)"
        + (f", the members in {r['training_workers']} processes at once; one after another: "
           f"{r['training_windows_per_s_one_by_one']:,} ({r['training_windows_per_s'] / r['training_windows_per_s_one_by_one']:.2f}x)"
           if "training_windows_per_s_one_by_one" in r else ""),
    ]
    return "\n".join(lines)


def main(json_out: bool = False, **kwargs) -> str:
    r = run_model_bench(**kwargs)
    return json.dumps(r, indent=2) if json_out else format_model_bench(r)
