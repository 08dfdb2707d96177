"""Streaming scorer: closed WindowBatches -> WindowScores, hidden state carried per entity.

The stage after the window aggregator. For each entity class (global, host) a state bank
holds one (h, c) row per entity slot in one tensor on the model's device; all entities whose
window closed at the same moment are scored in one batched step: gather their states, run
the encoder/decoder, scatter the encoder's final states back (detached). The bank is
bounded: entities idle longer than `entity_idle_s` are dropped, and when `max_entities` is
reached the least recently scored entity gives up its slot.

A new entity starts from the neutral state and is `ready` only after `warmup_windows`
windows: before that it is scored (the state must warm up) but never anomalous.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from detector.contracts import ScoreBatch, WindowBatch
from detector.model.bundle import ClassModel, ModelBundle
from detector.model.lstm import LSTMAutoencoder, State
from detector.model.scaler import FeatureScaler
from detector.model.threshold import calibrate


def set_torch_threads(threads: int) -> None:
    """Pin torch's CPU thread pool. Window batches are small: on a 2-core host one thread is
    faster than two that spin-wait on each other (measured: 0.4 ms vs 55 ms per LSTM call)."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast on CUDA when asked; full precision otherwise (CPU LSTMs gain
    nothing from it)."""
    if precision == "fp32" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device is cuda but no CUDA device is available")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class WindowErrors:
    """The model's verdict on a batch of windows, before thresholds."""

    scores: np.ndarray  # (batch,) mean squared reconstruction error in scaled units
    feature_error: np.ndarray  # (batch, features) squared error summed over bins
    expected: np.ndarray  # (batch, features) reconstruction, real units, mean per bin


@torch.no_grad()
def reconstruct(
    network: LSTMAutoencoder, scaler: FeatureScaler, features: np.ndarray, state: State
) -> tuple[WindowErrors, State]:
    """Score windows (batch, bins, features) in real units from carried `state`.
    The one code path shared by the daemon, offline scoring and calibration."""
    x_np = scaler.transform(features)
    device = state[0].device
    x = torch.from_numpy(x_np).to(device)
    recon, new_state = network(x, state)
    sq = (recon - x).pow(2)
    feature_error = sq.sum(dim=1)
    scores = sq.mean(dim=(1, 2))
    expected = scaler.inverse(recon.float().cpu().numpy()).mean(axis=1)
    return WindowErrors(scores.float().cpu().numpy(), feature_error.float().cpu().numpy(), expected), new_state


class _StateBank:
    """(h, c) per entity slot of one entity class, bounded, on the model's device."""

    def __init__(self, network: LSTMAutoencoder, device: torch.device, max_entities: int) -> None:
        self.network = network
        self.device = device
        self.max_entities = max_entities
        self.capacity = min(16, max_entities)
        self.h, self.c = network.initial_state(self.capacity, device)
        self.slot_of: dict[str, int] = {}
        self.seen = np.zeros(self.capacity, dtype=np.int64)  # windows scored per slot
        self.last_ns = np.zeros(self.capacity, dtype=np.int64)  # end of the last window scored
        self.free: list[int] = []
        self.evicted = 0

    def slots(self, entities: list[str], now_ns: int) -> np.ndarray:
        out = np.empty(len(entities), dtype=np.int64)
        for i, name in enumerate(entities):
            slot = self.slot_of.get(name)
            if slot is None:
                slot = self._allocate(name, protect=out[:i])
            out[i] = slot
        return out

    def _allocate(self, name: str, protect: np.ndarray) -> int:
        if self.free:
            slot = self.free.pop()
        elif len(self.slot_of) < self.capacity:
            slot = len(self.slot_of)
        elif self.capacity < self.max_entities:
            self._grow(min(self.capacity * 2, self.max_entities))
            slot = len(self.slot_of)
        else:
            # full: the least recently scored entity not in this batch gives up its slot
            candidates = np.setdiff1d(np.arange(self.capacity), protect)
            slot = int(candidates[np.argmin(self.last_ns[candidates])])
            victim = next(k for k, v in self.slot_of.items() if v == slot)
            del self.slot_of[victim]
            self.evicted += 1
        h0, c0 = self.network.initial_state(1, self.device)
        self.h[slot], self.c[slot] = h0[0], c0[0]
        self.seen[slot] = 0
        self.slot_of[name] = slot
        return slot

    def _grow(self, capacity: int) -> None:
        h, c = self.network.initial_state(capacity, self.device)
        h[: self.capacity], c[: self.capacity] = self.h, self.c
        self.h, self.c = h, c
        self.seen = np.concatenate([self.seen, np.zeros(capacity - self.capacity, dtype=np.int64)])
        self.last_ns = np.concatenate([self.last_ns, np.zeros(capacity - self.capacity, dtype=np.int64)])
        self.capacity = capacity

    def expire(self, before_ns: int) -> int:
        gone = [k for k, s in self.slot_of.items() if self.last_ns[s] < before_ns]
        for k in gone:
            self.free.append(self.slot_of.pop(k))
        return len(gone)


class StreamingScorer:
    """Scores closed windows with state carried per entity: `score(windows)` -> WindowScores."""

    def __init__(
        self,
        bundle: ModelBundle,
        device: str = "auto",
        warmup_windows: int = 1,
        max_entities: int = 50_000,
        entity_idle_s: float = 3600.0,
        top_features: int = 3,
        precision: str = "fp32",
        adapt_samples: int = 20_000,
    ) -> None:
        self.bundle = bundle
        self.device = resolve_device(device)
        self.warmup_windows = warmup_windows
        self.max_entities = max_entities
        self.entity_idle_s = entity_idle_s
        self.top_features = top_features
        self.precision = precision
        self.adapt_samples = adapt_samples
        self.features = bundle.schema.features
        self.units = bundle.schema.units
        self._models: dict[str, ClassModel] = {}
        self._banks: dict[str, _StateBank] = {}
        for cls, cm in bundle.classes.items():
            cm.network.to(self.device).eval()
            self._models[cls] = cm
            self._banks[cls] = _StateBank(cm.network, self.device, max_entities)
        self.windows_scored = 0
        self._next_expiry_ns = 0
        # recent scores of ready, non-anomalous windows per class: the sample a slow
        # threshold refit draws on (bounded ring buffers)
        self._recent: dict[str, np.ndarray] = {cls: np.zeros(adapt_samples, np.float32) for cls in self._models}
        self._recent_n: dict[str, int] = {cls: 0 for cls in self._models}
        self.calibrated: dict[str, float] = {cls: cm.threshold.value for cls, cm in self._models.items()}

    @property
    def entities(self) -> int:
        return sum(len(b.slot_of) for b in self._banks.values())

    def score(self, windows: WindowBatch) -> ScoreBatch:
        n = len(windows)
        k = min(self.top_features, len(self.features))
        out = ScoreBatch(
            window_start_ns=windows.window_start_ns,
            window_end_ns=windows.window_end_ns,
            entities=windows.entities,
            entity_classes=windows.entity_classes,
            scores=np.zeros(n, np.float32),
            thresholds=np.zeros(n, np.float32),
            anomalous=np.zeros(n, bool),
            ready=np.zeros(n, bool),
            top_index=np.zeros((n, k), np.int64),
            top_share=np.zeros((n, k), np.float32),
            top_observed=np.zeros((n, k), np.float32),
            top_expected=np.zeros((n, k), np.float32),
            schema=self.bundle.schema,
            evidence=windows.evidence,
        )
        classes = np.asarray(windows.entity_classes)
        for cls in np.unique(classes).tolist():
            cm = self._models.get(cls)
            if cm is None:
                continue
            rows = np.flatnonzero(classes == cls)
            bank = self._banks[cls]
            names = windows.entities if rows.shape[0] == n else [windows.entities[i] for i in rows.tolist()]
            slots = bank.slots(names, windows.window_end_ns)
            idx = torch.from_numpy(slots).to(self.device)
            state = (bank.h.index_select(0, idx), bank.c.index_select(0, idx))
            feats = windows.features[rows]
            with _autocast(self.device, self.precision):
                errors, (h, c) = reconstruct(cm.network, cm.scaler, feats, state)
            bank.h.index_copy_(0, idx, h.to(bank.h.dtype))
            bank.c.index_copy_(0, idx, c.to(bank.c.dtype))
            bank.seen[slots] += 1
            bank.last_ns[slots] = windows.window_end_ns
            ready = bank.seen[slots] > self.warmup_windows
            threshold = np.float32(cm.threshold.value)
            # explanation, vectorised: the k features with the largest error share
            err = errors.feature_error
            top = np.argsort(-err, axis=1, kind="stable")[:, :k]
            total = err.sum(axis=1, keepdims=True)
            total[total <= 0] = 1.0
            out.scores[rows] = errors.scores
            out.thresholds[rows] = threshold
            out.ready[rows] = ready
            out.anomalous[rows] = ready & (errors.scores > threshold)
            self._remember(cls, errors.scores[ready & (errors.scores <= threshold)])
            out.top_index[rows] = top
            out.top_share[rows] = np.take_along_axis(err, top, axis=1) / total
            out.top_observed[rows] = np.take_along_axis(feats.mean(axis=1), top, axis=1)
            out.top_expected[rows] = np.take_along_axis(errors.expected, top, axis=1)
        self.windows_scored += 1
        # expiry walks every entity: do it a few times per idle period, not every window
        if windows.window_end_ns >= self._next_expiry_ns:
            idle_ns = int(self.entity_idle_s * 1e9)
            for bank in self._banks.values():
                bank.expire(windows.window_end_ns - idle_ns)
            self._next_expiry_ns = windows.window_end_ns + idle_ns // 8
        return out

    # ------------------------------------------------------------ thresholds
    def _remember(self, cls: str, scores: np.ndarray) -> None:
        if scores.size == 0:
            return
        buf, n = self._recent[cls], self._recent_n[cls]
        scores = scores[-buf.shape[0] :]
        pos = np.arange(n, n + scores.shape[0]) % buf.shape[0]
        buf[pos] = scores
        self._recent_n[cls] = n + scores.shape[0]

    def refresh_thresholds(self, target_false_alarm: float, min_samples: int = 2_000,
                           max_raise: float = 1.5, max_lower: float = 0.8) -> dict[str, float]:  # fmt: skip
        """Slow adaptation: refit each class's tail on recent windows that were not alerted.
        Bounded to [max_lower, max_raise] x the calibrated threshold, so traffic an attacker
        slowly ramps up cannot raise it without limit (and the refit never sees alerted
        windows)."""
        out = {}
        for cls, cm in self._models.items():
            n = min(self._recent_n[cls], self._recent[cls].shape[0])
            if n < min_samples:
                continue
            fitted = calibrate(self._recent[cls][:n], target_false_alarm).value
            base = self.calibrated[cls]
            cm.threshold.value = float(min(max(fitted, base * max_lower), base * max_raise))
            out[cls] = cm.threshold.value
        return out

    def thresholds(self) -> dict[str, float]:
        return {cls: cm.threshold.value for cls, cm in self._models.items()}

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, dict]:
        """Hidden states by entity, for checkpoints (restored by load_state_dict)."""
        return {cls: self.states_of(cls, list(bank.slot_of)) for cls, bank in self._banks.items()}

    def states_of(self, cls: str, names: list[str]) -> dict:
        """The states of some entities of one class (those it holds), in state_dict's form."""
        bank = self._banks[cls]
        names = [n for n in names if n in bank.slot_of]
        slots = np.array([bank.slot_of[n] for n in names], dtype=np.int64)
        idx = torch.from_numpy(slots).to(self.device)
        return {
            "entities": names,
            "h": bank.h.index_select(0, idx).cpu(),
            "c": bank.c.index_select(0, idx).cpu(),
            "seen": bank.seen[slots].tolist(),
            "last_ns": bank.last_ns[slots].tolist(),
        }

    def last_scored_ns(self, cls: str, names: list[str]) -> np.ndarray:
        """End of the last window scored per entity; -1 for an entity it does not hold."""
        bank = self._banks.get(cls)
        if bank is None:
            return np.full(len(names), -1, dtype=np.int64)
        return np.array([bank.last_ns[s] if (s := bank.slot_of.get(n)) is not None else -1 for n in names], dtype=np.int64)

    def forget(self, cls: str, names: list[str]) -> None:
        """Let go of some entities' states (their partition moved to another scorer)."""
        bank = self._banks.get(cls)
        if bank is not None:
            bank.free.extend(bank.slot_of.pop(n) for n in names if n in bank.slot_of)

    def load_state_dict(self, data: dict[str, dict]) -> None:
        """Put states back (merged: entities not in `data` keep theirs)."""
        for cls, entry in data.items():
            bank = self._banks.get(cls)
            if bank is None:
                continue
            names = entry["entities"]
            slots = bank.slots(names, 0)
            idx = torch.from_numpy(slots).to(self.device)
            bank.h.index_copy_(0, idx, entry["h"].to(self.device, bank.h.dtype))
            bank.c.index_copy_(0, idx, entry["c"].to(self.device, bank.c.dtype))
            bank.seen[slots] = np.asarray(entry["seen"], dtype=np.int64)
            bank.last_ns[slots] = np.asarray(entry["last_ns"], dtype=np.int64)
