"""Streaming scorer: closed WindowBatches -> WindowScores, hidden state carried per entity.

The stage after the window aggregator. For each entity class (global, host) a state bank
holds one (h, c) row per entity slot in one tensor on the model's device; all entities whose
window closed at the same moment are scored in one batched step: gather their states, run
the encoder/decoder, scatter the encoder's final states back (detached). The bank is
bounded: entities idle longer than `entity_idle_s` are dropped, and when `max_entities` is
reached the least recently scored entity gives up its slot.

A new entity starts from the neutral state and is `ready` only after `warmup_windows`
windows: before that it is scored (the state must warm up) but never anomalous.

A window is anomalous when its accumulated score passes the threshold: its own score plus
what the entity's previous window carried in. A window that does not alarm carries forward
what its accumulated score had above the class's allowance (a share of the threshold, chosen
by training: model.training), into the entity's next window only; a window that alarms
carries nothing. So one window alarms at the threshold, as ever; a run of windows each above
the allowance adds up, and alarms once its excess over the allowance reaches what the
threshold lacks; after an alarm, one quiet window (or a window the entity did not have), the
entity starts from nothing. This is a CUSUM on the score in threshold units, alarm level one
threshold less the allowance, restarted after each alarm as a CUSUM is: what alarmed is
spent, so the benign windows after an attack are not held up by it. Why: a host that changes
role, starts talking to new peers or calls out on a beat shows it over consecutive windows
each of which stays under the threshold (docs/EVALUATION.md, sections vii and xiv).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import torch

from detector.contracts import ENTITY_GLOBAL, ENTITY_HOST, ScoreBatch, WindowBatch
from detector.model.bundle import ClassModel, ModelBundle
from detector.model.groups import HostGroups
from detector.model.lstm import PHASE_SLOTS, LSTMAutoencoder, State, phase_of
from detector.model.scaler import FeatureScaler, TorchScaler
from detector.model.threshold import calibrate


def accumulate(scores: np.ndarray, carried: np.ndarray, threshold: float, allowance: float) -> tuple[np.ndarray, np.ndarray]:
    """Windows' accumulated scores (float64, compared with `threshold`) and what each carries
    into its entity's next window (in thresholds, 0 after an alarm), from their own `scores`
    and what their entities' previous windows carried in (`carried`, 0 where there was none):
    what an accumulated score has above `allowance` thresholds. The one definition the
    streaming scorer alarms with and training calibrates the allowance and reads margins with."""
    limit = np.float64(threshold)
    accumulated = np.asarray(scores, dtype=np.float64) + carried * limit
    if limit > 0:
        carry = np.maximum(accumulated / limit - allowance, 0.0)
        return accumulated, np.where((accumulated <= limit) & np.isfinite(carry), carry, 0.0)
    return accumulated, np.zeros_like(accumulated)


def set_torch_threads(threads: int) -> None:
    """Pin torch's CPU thread pool. Window batches are small: on a 2-core host one thread is
    faster than two that spin-wait on each other (measured: 0.4 ms vs 55 ms per LSTM call)."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
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


def aligned_error(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Squared reconstruction error per window and feature, summed over bins (batch,
    features), in scaled units, tolerating activity that moved by one bin: each observed bin
    is compared with the closest of the reconstructed bins b-1, b, b+1 (closest over all
    features at once), and each reconstructed bin with the closest of the observed bins
    around it; the window keeps the larger of the two directions. So a burst the model
    expects in bin 2 that came in bin 3 costs nothing, while anything the model expected
    nowhere near (a scan's SYNs, a new peer) costs in full from the observed side, and
    activity that should have been there and was not costs in full from the reconstructed
    side. Never more than the plain squared error; equal to it with one bin.

    Why: devices' periodic jobs jitter by a few seconds. On the IoT-23 honeypot the Hue
    bridge's smaller jobs at hh:17/:32/:47 came one 10 s bin later at night than in the
    afternoon the model learned from, and each such window outscored a 0.7 s nmap fragment
    (docs/EVALUATION.md, section v)."""
    same = (x - recon).pow_(2)
    later = (x[:, 1:] - recon[:, :-1]).pow_(2)  # observed bin k+1 vs reconstructed bin k
    earlier = (x[:, :-1] - recon[:, 1:]).pow_(2)  # observed bin k vs reconstructed bin k+1
    s_same, s_later, s_earlier = same.sum(dim=2), later.sum(dim=2), earlier.sum(dim=2)
    # per bin, its two neighbours' errors: seen from the observed bin (o_) and from the
    # reconstructed bin (r_); the window's edges have no neighbour beyond them
    edge = torch.full_like(s_same[:, :1], math.inf)
    o_before, o_after = torch.cat((edge, s_later), 1), torch.cat((s_earlier, edge), 1)
    r_before, r_after = torch.cat((edge, s_earlier), 1), torch.cat((s_later, edge), 1)
    o_near, r_near = torch.minimum(o_before, o_after), torch.minimum(r_before, r_after)
    o_keep, r_keep = ~(o_near < s_same), ~(r_near < s_same)  # ties (and NaN) keep the same bin
    o_total = torch.where(o_keep, s_same, o_near).sum(dim=1)
    r_total = torch.where(r_keep, s_same, r_near).sum(dim=1)
    observed_side = (o_total >= r_total)[:, None]
    # which bins of same, later and earlier the window counts; ties take the neighbour before
    o_first, r_first = o_before <= o_after, r_before <= r_after
    keep = torch.where(observed_side, o_keep, r_keep)
    use_later = torch.where(observed_side, ~o_keep[:, 1:] & o_first[:, 1:], ~r_keep[:, :-1] & ~r_first[:, :-1])
    use_earlier = torch.where(observed_side, ~o_keep[:, :-1] & ~o_first[:, :-1], ~r_keep[:, 1:] & r_first[:, 1:])
    error = (same * keep[..., None]).sum(dim=1)
    error += (later * use_later[..., None]).sum(dim=1)
    error += (earlier * use_earlier[..., None]).sum(dim=1)
    return error


def padded_rows(n: int) -> int:
    """The batch size `n` windows go through the network at: 1 to 3 as they are, then 8,
    the next power of two up to 64, then in quarters of an octave (80, 96, 112, 128, 160,
    ...: at most a quarter more rows than asked past 64). oneDNN, which runs torch's LSTM on
    CPU, keeps a primitive of about 160 KiB in its cache (1,024 of them by default) for every
    batch size it has run: 1,000 sizes held 160 MiB of heap for good (`mallinfo2`, torch
    2.13), and how many windows close at once varies with the traffic, so a daemon's memory
    grew with every new size it met and a flood's thousands of entities brought hundreds
    (issue 19's flood bench). With these sizes there are 27 up to SCORING_STEP.
    From 4 rows on, each row's result is the same bit for bit at any batch size, so padding
    changes no score. 1 to 3 rows take another kernel (3e-8 apart): padded, the link's
    windows (always one) and a small network's hosts moved in their last digits, and that
    was enough to move a calibrated threshold 2.8x (docs/EVALUATION.md, section viii: the
    tail fit jumps at its 20th peak). So they are left as they are, and the padding changes
    memory only."""
    if n < 4:
        return n
    if n <= 64:
        return max(8, 1 << (n - 1).bit_length())
    step = (1 << (n - 1).bit_length()) // 8
    return -(-n // step) * step


def _network(network: LSTMAutoencoder, x: torch.Tensor, state: State, phase: torch.Tensor | None) -> tuple[torch.Tensor, State]:
    """network(x, state, phase) run at padded_rows(batch) rows (zeros past the windows'),
    the padding cut off again."""
    n = x.shape[0]
    size = padded_rows(n)
    if size != n:
        x = torch.cat((x, x.new_zeros((size - n, *x.shape[1:]))))
        neutral = state[0].new_zeros((size - n, state[0].shape[1]))
        state = (torch.cat((state[0], neutral)), torch.cat((state[1], neutral)))
        if phase is not None and phase.dim() > 0:
            phase = torch.cat((phase, phase.new_zeros(size - n)))
    recon, (h, c) = network(x, state, phase)
    return recon[:n], (h[:n], c[:n])


@dataclass
class WindowErrors:
    """The model's verdict on a batch of windows, before thresholds."""

    scores: np.ndarray  # (batch,) aligned_error per bin and feature, each feature's in its error scale
    feature_error: np.ndarray  # (batch, features) aligned_error, in scaled units, undivided (the error scales are read from it)
    expected: np.ndarray  # (batch, features) reconstruction, real units, mean per bin


@torch.no_grad()
def reconstruct(
    network: LSTMAutoencoder, scaler: FeatureScaler, features: np.ndarray, state: State, phase: torch.Tensor | None = None
) -> tuple[WindowErrors, State]:
    """Score windows (batch, bins, features) in real units from carried `state`; `phase`: the
    windows' minute of the hour (phase_of), the decoder's phase input. The code path of
    offline scoring and calibration; the daemon's scorer computes the same scores and
    explanations in _reconstruct_top."""
    x_np = scaler.transform(features)
    device = state[0].device
    x = torch.from_numpy(x_np).to(device)
    recon, new_state = _network(network, x, state, phase)
    feature_error = aligned_error(x, recon)
    scores = (feature_error * torch.from_numpy(scaler.weights()).to(device)).sum(dim=1) / (x.shape[1] * x.shape[2])
    expected = scaler.inverse(recon.float().cpu().numpy()).mean(axis=1)
    return WindowErrors(scores.float().cpu().numpy(), feature_error.float().cpu().numpy(), expected), new_state


@dataclass
class _Explained:
    """The streaming scorer's share of a reconstruction: scores; the k features with the
    largest share of the score (each error divided by its error scale, as the score counts
    it: the explanation); the k furthest from what was expected (the undivided errors in
    scaled units: what the categories read); each with its observed and expected means (real
    units)."""

    scores: np.ndarray  # (batch,)
    top_index: np.ndarray  # (batch, k)
    top_share: np.ndarray  # (batch, k)
    top_observed: np.ndarray  # (batch, k)
    top_expected: np.ndarray  # (batch, k)
    deviation_index: np.ndarray  # (batch, k)
    deviation_share: np.ndarray  # (batch, k)
    deviation_observed: np.ndarray  # (batch, k)
    deviation_expected: np.ndarray  # (batch, k)


@dataclass
class _Reading:
    """One network's reading of a batch of windows, before any explanation: its
    reconstruction (scaled units, float32, ours to overwrite), each feature's aligned_error
    undivided and as the score counts it (divided by its error scale), the scores, and the
    states the windows leave."""

    recon: torch.Tensor  # (batch, bins, features)
    error: torch.Tensor  # (batch, features)
    counted: torch.Tensor  # (batch, features)
    scores: np.ndarray  # (batch,)
    state: State


def _read(network: LSTMAutoencoder, scaler: TorchScaler, x: torch.Tensor, state: State, phase: torch.Tensor) -> _Reading:
    """`network`'s reading of windows `x` (batch, bins, features), already scaled."""
    recon, new_state = _network(network, x, state, phase)
    recon = recon.float()  # ours to overwrite (inverse_)
    error = aligned_error(x, recon)
    counted = error * scaler.weight
    scores = counted.sum(dim=1).cpu().numpy() / np.float32(x.shape[1] * x.shape[2])
    return _Reading(recon, error, counted, scores, new_state)


def _explain(features: torch.Tensor, reading: _Reading, scaler: TorchScaler, k: int) -> _Explained:
    """A reading's scores and explanations: the k features with the largest share of the
    score, the k furthest from what was expected, each with its observed and expected means
    in real units (only the 2k picked go through the inverse). Overwrites reading.recon."""
    top, top_share = _shares(reading.counted.cpu().numpy(), k)
    deviation, deviation_share = _shares(reading.error.cpu().numpy(), k)
    index = torch.from_numpy(np.concatenate([top, deviation], axis=1)).to(features.device)
    observed = features.mean(dim=1).gather(1, index).cpu().numpy()
    expected = scaler.inverse_(reading.recon, index).mean(dim=1).cpu().numpy()
    return _Explained(reading.scores, top, top_share, observed[:, :k], expected[:, :k],
                      deviation, deviation_share, observed[:, k:], expected[:, k:])


@torch.inference_mode()
def _reconstruct_top(
    network: LSTMAutoencoder, scaler: TorchScaler, features: torch.Tensor, state: State, phase: torch.Tensor,
    levels: np.ndarray | None, k: int
) -> tuple[_Explained, State]:
    """reconstruct() for the streaming scorer, equal to it within float32 rounding: features
    (batch, bins, features) in real units arrive as a tensor on the state's device and stay in
    torch, intermediate tensors are reused, and only the k explained features go through the
    inverse. Around an LSTM this small the numpy version's copies and full-width passes took
    as long as the network itself (batch 1024, one thread). `levels` (1, batch): each
    window's entity's level (model.levels), its score divided by it; None: none has one."""
    reading = _read(network, scaler, scaler.transform(features), state, phase)
    if levels is not None:
        reading.scores = reading.scores / levels[0]
    return _explain(features, reading, scaler, k), reading.state


@torch.inference_mode()
def _reconstruct_members(
    cm: ClassModel, scalers: list[TorchScaler], features: torch.Tensor, state: State, phase: torch.Tensor,
    levels: np.ndarray | None, k: int
) -> tuple[_Explained, State]:
    """_reconstruct_top for a class of several members: each member reads the windows from
    its own columns of the carried state; the scores are combined as ClassModel.in_thresholds
    combines them (their median), and each window is explained by its median member (the
    higher middle one of an even number): the member whose reading the score is. Only that
    member's reading of a window is explained: explaining every member's and keeping one
    cost a three-member class about a third of its time (`netad bench model --members 3`,
    docs/EVALUATION.md section xxxi). Members whose scalers map features alike (those trained on the same
    windows do) share one scaled copy of the windows. `levels` (members, batch): each member's
    level of each window's entity (model.levels), its score divided by it first."""
    members = cm.members
    width = cm.network.hidden_size
    readings: list[_Reading] = []
    scaled: list[tuple[TorchScaler, torch.Tensor]] = []
    for i, (member, scaler) in enumerate(zip(members, scalers, strict=True)):
        x = next((x for s, x in scaled if _same_map(s, scaler)), None)
        if x is None:
            x = scaler.transform(features)
            scaled.append((scaler, x))
        columns = slice(i * width, (i + 1) * width)
        own = (state[0][:, columns].contiguous(), state[1][:, columns].contiguous())
        readings.append(_read(member.network, scaler, x, own, phase))
        if levels is not None:
            readings[-1].scores = readings[-1].scores / levels[i]
    share = np.stack([r.scores / np.float32(m.threshold.value) for r, m in zip(readings, members, strict=True)])
    judge = np.argsort(share, axis=0, kind="stable")[len(members) // 2]  # (batch,) the member that explains each window
    pick = torch.from_numpy(judge).to(features.device)
    rows = torch.arange(pick.shape[0], device=features.device)

    def judged(name: str) -> torch.Tensor:
        return torch.stack([getattr(r, name) for r in readings])[pick, rows]

    chosen = _Reading(judged("recon"), judged("error"), judged("counted"),
                      np.asarray(cm.in_thresholds([r.scores for r in readings]), np.float32),
                      (torch.cat([r.state[0] for r in readings], dim=1), torch.cat([r.state[1] for r in readings], dim=1)))
    if len(scaled) == 1:
        inverse = scalers[0]
    else:  # each window's judge's own map (per row, broadcast over the bins)
        inverse = TorchScaler(torch.stack([s.center for s in scalers])[pick].unsqueeze(1),
                              torch.stack([s.scale for s in scalers])[pick].unsqueeze(1), scalers[0].weight)
    return _explain(features, chosen, inverse, k), chosen.state


def _same_map(a: TorchScaler, b: TorchScaler) -> bool:
    return a is b or (torch.equal(a.center, b.center) and torch.equal(a.scale, b.scale))


def _shares(err: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest of each row's errors (batch, features): their indices and their shares
    of the row's total."""
    total = err.sum(axis=1)
    total[total <= 0] = 1.0
    top, largest = _top_features(err, k)
    return top, largest / total[:, None]


def _leave_to_hosts(out: ScoreBatch, windows: WindowBatch) -> None:
    """An alarm that another home host's doing explains, where nothing was new to either, is
    that host's to judge.

    A host that only answered another home host's requests (WindowBatch.requested_by: that
    host started every flow it had in the window, it started none, and both are known) is
    not anomalous on its own score, and names the requester (`left_to`): a gateway
    answering a device's look-ups at a minute it is always quiet answers for the device,
    whose own window, scored against its own history, alarms or not. A host with a requester
    that met something new (a peer, a port), or with requests from two hosts, or from
    outside, keeps its alarm.

    A link alarm that one host's doing explains, where that host met nothing new, is the
    host's to judge too. Where the link's window alarms on its own score, and in each of the
    features its score counted most (`top_features`) that rose above what was expected:
    - one known host (LinkHosts: history past its warm-up, nothing new to it in the window)
      sent and received at least the rise: without it the link would not have risen;
    - the home hosts that met something new, or whose history is still warming up, sent and
      received less than the rise: without them it still would have;
    the link's window is not anomalous and names the host (`left_to`). The host's own window,
    scored against its own history, alarms or not.
    What is new to a host is news the link may carry: a device's first contacts with the
    outside can be unheard of on a link that never sees any, and ordinary in a host class
    pooled over busy hosts. What a host has always done, at a minute the link finds odd, is
    its own model's to judge. A busy host that met nothing new does not take a link alarm
    that another host's news raised. A feature the link fell in (traffic that did not come),
    or a ratio of others, is asked of no host; a link with no other feature among its top
    ones is left to no one, nor is an alarm on what the link's windows added up (its
    evidence lies in windows before this one), nor traffic no home host had.
    The window stage makes what this reads and it travels with the windows (a host's
    requester with the host's window, the link's hosts with the link's), so every scorer, the
    daemon's or a Kafka role's, decides alike."""
    if not out.anomalous.any():
        return
    own = np.flatnonzero(out.anomalous & (out.compared <= out.scores))  # alarms on their own scores
    if windows.requested_by:
        for row in own.tolist():
            requester = windows.requested_by.get(out.entities[row])
            if requester is not None:
                out.anomalous[row] = False
                out.left_to[row] = requester
    hosts = windows.link_hosts
    if hosts is None or not hosts.hosts:
        return
    for row in own.tolist():
        if out.entity_classes[row] != ENTITY_GLOBAL:
            continue
        index = out.top_index[row]
        rise = out.top_observed[row].astype(np.float64) - out.top_expected[row]
        asked = (rise > 0) & np.isfinite(hosts.news[index])
        if not asked.any():
            continue
        index, rise = index[asked], rise[asked]
        if (hosts.news[index] >= rise).any():
            continue
        covers = (hosts.known[:, index] >= rise).all(axis=1)
        if covers.any():
            best = int(np.argmax(np.where(covers, (hosts.known[:, index] / rise).min(axis=1), -np.inf)))
            out.anomalous[row] = False
            out.left_to[row] = hosts.hosts[best]


SCORING_STEP = 2048  # windows through the network at once, at most


_Reconstruct = Callable[[torch.Tensor, State, torch.Tensor, np.ndarray | None], tuple[_Explained, State]]


def _reconstruct_in_steps(reconstruct: _Reconstruct, features: torch.Tensor, state: State, phase: torch.Tensor,
                          levels: np.ndarray | None) -> tuple[_Explained, State]:
    """reconstruct(features, state, phase, levels) (_reconstruct_top or _reconstruct_members) over at
    most SCORING_STEP windows at a time, the same figures (each window's row is computed on
    its own: bit for bit on CPU, 9,000 windows in steps against at once). What one step
    allocates is bounded however many entities a flood makes: the
    32,000 windows of a flood's closed window at once were a stack of 15-100 MB tensors, and
    glibc left its heap at that high-water mark with its free pages scattered, which the
    traffic after the flood touched again (issue 19's flood bench on the 5 h demo, one-pass
    probes: the heap 0.7 GiB during the flood at once, 0.4 GiB in steps; README, Flood). A flood's windows
    also score faster in steps that fit the caches (21,400 against 14,600 pkt/CPU-s during
    that flood, one pass each)."""
    n = features.shape[0]
    if n <= SCORING_STEP:
        return reconstruct(features, state, phase, levels)
    steps, hs, cs = [], [], []
    for a in range(0, n, SCORING_STEP):
        b = min(a + SCORING_STEP, n)
        phases = phase if phase.dim() == 0 else phase[a:b]
        res, (h, c) = reconstruct(features[a:b], (state[0][a:b], state[1][a:b]), phases,
                                  None if levels is None else levels[:, a:b])
        steps.append(res)
        hs.append(h)
        cs.append(c)
    explained = _Explained(*(np.concatenate([getattr(r, f.name) for r in steps]) for f in fields(_Explained)))
    return explained, (torch.cat(hs), torch.cat(cs))


_QUICKSORT_ROWS = 256  # below this the stable sort costs no more than quicksort + the tie check


def _top_features(err: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest errors per row (batch, features) and their feature indices, largest first,
    the lowest feature first among equal errors and NaN last, as np.argsort(-err,
    kind="stable") orders them: explanations are reproducible. On large batches numpy's (SIMD)
    quicksort is 2-3x faster than the stable sort, but leaves ties in any order: a batch with a
    tie (or a NaN) within or at the edge of a row's top k is sorted again, stably. torch.topk
    leaves ties unordered too, and is slower on CPU."""
    if err.shape[0] >= _QUICKSORT_ROWS:
        order = np.argsort(-err, axis=1)[:, : k + 1]
        values = err[np.arange(err.shape[0])[:, None], order]
        if not ((values[:, 1:] == values[:, :-1]).any() or np.isnan(values.sum())):
            return order[:, :k], values[:, :k]
    top = np.argsort(-err, axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(err, top, axis=1)


def _features_tensor(features: np.ndarray, device: torch.device) -> torch.Tensor:
    """Windows' features as a float32 tensor on `device`, sharing memory on CPU (nothing
    writes to it); a read-only array is copied, torch warns on those."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    if not features.flags.writeable:
        features = features.copy()
    return torch.from_numpy(features).to(device)


class _StateBank:
    """(h, c) per entity slot of one entity class, bounded, on the model's device."""

    def __init__(self, network: LSTMAutoencoder, device: torch.device, max_entities: int, members: int = 1) -> None:
        self.network = network
        self.members = members  # each entity's row holds every member's state side by side
        self.device = device
        self.max_entities = max_entities
        self.capacity = min(16, max_entities)
        self.h, self.c = self._neutral(self.capacity)
        self.slot_of: dict[str, int] = {}
        self.seen = np.zeros(self.capacity, dtype=np.int64)  # windows scored per slot
        self.last_ns = np.zeros(self.capacity, dtype=np.int64)  # end of the last window scored
        self.carried = np.zeros(self.capacity, dtype=np.float64)  # into the next window, in thresholds
        self.free: list[int] = []
        self.evicted = 0

    def slots(self, entities: list[str], now_ns: int) -> np.ndarray:
        try:  # steady state, every entity already holds a slot: one C-level pass over the dict
            return np.fromiter(map(self.slot_of.__getitem__, entities), dtype=np.int64, count=len(entities))
        except KeyError:
            pass
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
        self.h[slot], self.c[slot] = 0.0, 0.0  # the neutral state (LSTMAutoencoder.initial_state)
        self.seen[slot] = 0
        self.carried[slot] = 0.0
        self.slot_of[name] = slot
        return slot

    def _neutral(self, capacity: int) -> State:
        """`capacity` rows of the neutral state, every member's."""
        h, c = self.network.initial_state(capacity, self.device)
        return (h, c) if self.members == 1 else (h.repeat(1, self.members), c.repeat(1, self.members))

    def _grow(self, capacity: int) -> None:
        h, c = self._neutral(capacity)
        h[: self.capacity], c[: self.capacity] = self.h, self.c
        self.h, self.c = h, c
        self.seen = np.concatenate([self.seen, np.zeros(capacity - self.capacity, dtype=np.int64)])
        self.last_ns = np.concatenate([self.last_ns, np.zeros(capacity - self.capacity, dtype=np.int64)])
        self.carried = np.concatenate([self.carried, np.zeros(capacity - self.capacity, dtype=np.float64)])
        self.capacity = capacity

    def expire(self, before_ns: int) -> int:
        gone = [k for k, s in self.slot_of.items() if self.last_ns[s] < before_ns]
        for k in gone:
            self.free.append(self.slot_of.pop(k))
        if self.capacity > 64 and 4 * len(self.slot_of) <= self.capacity:
            self._compact()
        return len(gone)

    def _compact(self) -> None:
        """After a flood has expired: the living entities into the first slots of a bank
        sized for them again (twice their number, at least 16)."""
        names = list(self.slot_of)
        keep = torch.as_tensor([self.slot_of[n] for n in names], dtype=torch.int64, device=self.device)
        capacity = min(self.max_entities, max(16, 1 << (2 * len(names)).bit_length()))
        h, c = self._neutral(capacity)
        h[: len(names)], c[: len(names)] = self.h.index_select(0, keep), self.c.index_select(0, keep)
        rows = keep.cpu().numpy()
        for array in ("seen", "last_ns", "carried"):
            fresh = np.zeros(capacity, dtype=getattr(self, array).dtype)
            fresh[: len(names)] = getattr(self, array)[rows]
            setattr(self, array, fresh)
        self.h, self.c, self.capacity = h, c, capacity
        self.slot_of = dict(zip(names, range(len(names)), strict=True))
        self.free = []


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
        self._groups = HostGroups(bundle.host_groups)  # a group's hosts are its class's (model.groups)
        self._models: dict[str, ClassModel] = {}
        self._banks: dict[str, _StateBank] = {}
        self._scalers: dict[tuple[str, int], tuple[FeatureScaler, TorchScaler]] = {}
        for cls, cm in bundle.classes.items():
            cm.network.to(self.device).eval()
            self._models[cls] = cm
            for member in cm.members:
                member.network.to(self.device).eval()
            self._banks[cls] = _StateBank(cm.network, self.device, max_entities, len(cm.members) or 1)
        # the decoder's phase inputs (the windows' minute of the hour, as in training), made once
        self._phases = torch.arange(PHASE_SLOTS, device=self.device).unbind()
        self._next_expiry_ns = 0
        # recent accumulated scores of ready, non-anomalous windows per class: the sample a slow
        # threshold refit draws on (bounded ring buffers)
        self._recent: dict[str, np.ndarray] = {cls: np.zeros(adapt_samples, np.float32) for cls in self._models}
        self._recent_n: dict[str, int] = {cls: 0 for cls in self._models}
        self.calibrated: dict[str, float] = {cls: cm.threshold.value for cls, cm in self._models.items()}

    @property
    def entities(self) -> int:
        return sum(len(b.slot_of) for b in self._banks.values())

    def score(self, windows: WindowBatch) -> ScoreBatch:
        n = len(windows)
        entity_classes = self._groups.classes(windows.entities, windows.entity_classes) if self._groups else windows.entity_classes
        k = min(self.top_features, len(self.features))
        compared = np.zeros(n, np.float32)  # accumulated scores: what each threshold is compared with
        carried = np.zeros(n, np.float32)  # what each window carries into its entity's next
        out = ScoreBatch(
            window_start_ns=windows.window_start_ns,
            window_end_ns=windows.window_end_ns,
            entities=windows.entities,
            entity_classes=entity_classes,
            scores=np.zeros(n, np.float32),
            accumulated=compared,
            carried=carried,
            thresholds=np.zeros(n, np.float32),
            anomalous=np.zeros(n, bool),
            ready=np.zeros(n, bool),
            top_index=np.zeros((n, k), np.int64),
            top_share=np.zeros((n, k), np.float32),
            top_observed=np.zeros((n, k), np.float32),
            top_expected=np.zeros((n, k), np.float32),
            deviation_index=np.zeros((n, k), np.int64),
            deviation_share=np.zeros((n, k), np.float32),
            deviation_observed=np.zeros((n, k), np.float32),
            deviation_expected=np.zeros((n, k), np.float32),
            schema=self.bundle.schema,
            evidence=windows.evidence,
        )
        # expiry walks every entity: do it a few times per idle period, not every window;
        # before scoring, so that an entity back after a silence longer than the idle time
        # (a quiet capture's gap) starts afresh, as the window stage has restarted it
        if windows.window_end_ns >= self._next_expiry_ns:
            idle_ns = int(self.entity_idle_s * 1e9)
            for bank in self._banks.values():
                bank.expire(windows.window_end_ns - idle_ns)
            self._next_expiry_ns = windows.window_end_ns + idle_ns // 8
        phase = self._phases[phase_of(windows.window_start_ns)]
        kinds = set(entity_classes)
        classes = np.asarray(entity_classes) if len(kinds) > 1 else None
        for cls in sorted(kinds):
            cm = self._models.get(cls)
            if cm is None:
                continue
            rows: slice | np.ndarray
            if classes is None:  # one class, the usual case: whole columns, no index arrays
                rows, names = slice(None), windows.entities
            else:
                index = np.flatnonzero(classes == cls)
                rows, names = index, [windows.entities[i] for i in index.tolist()]
            bank = self._banks[cls]
            slots = bank.slots(names, windows.window_end_ns)
            idx = torch.from_numpy(slots).to(self.device)
            state = (bank.h.index_select(0, idx), bank.c.index_select(0, idx))
            feats = _features_tensor(windows.features[rows], self.device)
            res, (h, c) = self._reconstruct(cls, cm, feats, state, phase, cm.levels_of(names), k)
            bank.h.index_copy_(0, idx, h.to(bank.h.dtype))
            bank.c.index_copy_(0, idx, c.to(bank.c.dtype))
            follows = bank.last_ns[slots] == windows.window_start_ns  # the entity's previous window was the one before
            bank.seen[slots] += 1
            bank.last_ns[slots] = windows.window_end_ns
            ready = bank.seen[slots] > self.warmup_windows
            threshold = np.float32(cm.threshold.value)
            accumulated, carry = accumulate(res.scores, np.where(follows, bank.carried[slots], 0.0), float(threshold),
                                            cm.threshold.allowance)
            anomalous = ready & (accumulated > np.float64(threshold))  # with nothing carried: score > threshold, exactly
            bank.carried[slots] = np.where(ready, carry, 0.0)
            carried[rows] = bank.carried[slots]
            out.scores[rows] = res.scores
            compared[rows] = accumulated
            out.thresholds[rows] = threshold
            out.ready[rows] = ready
            out.anomalous[rows] = anomalous
            self._remember(cls, accumulated[ready & ~anomalous])  # what the threshold is compared with, as training calibrates
            out.top_index[rows] = res.top_index
            out.top_share[rows] = res.top_share
            out.top_observed[rows] = res.top_observed
            out.top_expected[rows] = res.top_expected
            for column in ("deviation_index", "deviation_share", "deviation_observed", "deviation_expected"):
                getattr(out, column)[rows] = getattr(res, column)
        _leave_to_hosts(out, windows)
        return out

    def _reconstruct(self, cls: str, cm: ClassModel, feats: torch.Tensor, state: State, phase: torch.Tensor,
                     levels: np.ndarray | None, k: int) -> tuple[_Explained, State]:
        """The class's verdict on its windows and the states they leave: its network's, or
        its members' combined (_reconstruct_members); each score in its entity's own level
        (`levels`, ClassModel.levels_of)."""
        reconstruct: _Reconstruct
        if cm.members:
            scalers = [self._scaler(cls, i, m.scaler) for i, m in enumerate(cm.members)]
            reconstruct = functools.partial(_reconstruct_members, cm, scalers, k=k)
        else:
            reconstruct = functools.partial(_reconstruct_top, cm.network, self._scaler(cls, 0, cm.scaler), k=k)
        with _autocast(self.device, self.precision):
            return _reconstruct_in_steps(reconstruct, feats, state, phase, levels)

    def _scaler(self, cls: str, member: int, scaler: FeatureScaler) -> TorchScaler:
        """A member's scaler as tensors on the device, rebuilt if the bundle's scaler was
        replaced since."""
        source, cached = self._scalers.get((cls, member), (None, None))
        if source is not scaler or cached is None:
            cached = scaler.to_torch(self.device)
            self._scalers[(cls, member)] = (scaler, cached)
        return cached

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
                           max_raise: float = 1.5, max_lower: float = 0.8) -> dict[str, float]:
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

    def _banked(self, cls: str, names: list[str]) -> dict[str, list[int]]:
        """The positions of `names` (entities of the window stage's class `cls`) by the class
        whose bank holds them: a host group's hosts are in their group's (model.groups)."""
        if not self._groups or cls != ENTITY_HOST:
            return {cls: list(range(len(names)))}
        out: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            out.setdefault(self._groups.class_of(name), []).append(i)
        return out

    def states_of(self, cls: str, names: list[str]) -> dict:
        """The states of some entities of one class (those it holds), in state_dict's form."""
        parts = []
        for own, rows in self._banked(cls, names).items():
            bank = self._banks.get(own)
            if bank is not None:
                held = [names[i] for i in rows if names[i] in bank.slot_of]
                slots = np.array([bank.slot_of[n] for n in held], dtype=np.int64)
                idx = torch.from_numpy(slots).to(self.device)
                parts.append({
                    "entities": held,
                    "h": bank.h.index_select(0, idx).cpu(),
                    "c": bank.c.index_select(0, idx).cpu(),
                    "seen": bank.seen[slots].tolist(),
                    "last_ns": bank.last_ns[slots].tolist(),
                    "carried": bank.carried[slots].tolist(),
                })
        if len(parts) == 1:
            return parts[0]
        if not parts:
            raise KeyError(cls)
        return {key: torch.cat([p[key] for p in parts]) if key in ("h", "c") else [v for p in parts for v in p[key]]
                for key in parts[0]}

    def last_scored_ns(self, cls: str, names: list[str]) -> np.ndarray:
        """End of the last window scored per entity; -1 for an entity it does not hold."""
        out = np.full(len(names), -1, dtype=np.int64)
        for own, rows in self._banked(cls, names).items():
            bank = self._banks.get(own)
            if bank is not None:
                for i in rows:
                    if (s := bank.slot_of.get(names[i])) is not None:
                        out[i] = bank.last_ns[s]
        return out

    def forget(self, cls: str, names: list[str]) -> None:
        """Let go of some entities' states (their partition moved to another scorer)."""
        for own, rows in self._banked(cls, names).items():
            bank = self._banks.get(own)
            if bank is not None:
                bank.free.extend(bank.slot_of.pop(names[i]) for i in rows if names[i] in bank.slot_of)

    def load_state_dict(self, data: dict[str, dict]) -> None:
        """Put states back (merged: entities not in `data` keep theirs)."""
        for cls, whole in data.items():
            for own, rows in self._banked(cls, list(whole["entities"])).items():
                bank = self._banks.get(own)
                if bank is not None and rows:
                    self._load_bank(bank, _rows_of(whole, rows) if len(rows) < len(whole["entities"]) else whole)

    def _load_bank(self, bank: _StateBank, entry: dict) -> None:
        names = entry["entities"]
        slots = bank.slots(names, 0)
        idx = torch.from_numpy(slots).to(self.device)
        bank.h.index_copy_(0, idx, entry["h"].to(self.device, bank.h.dtype))
        bank.c.index_copy_(0, idx, entry["c"].to(self.device, bank.c.dtype))
        bank.seen[slots] = np.asarray(entry["seen"], dtype=np.int64)
        bank.last_ns[slots] = np.asarray(entry["last_ns"], dtype=np.int64)
        carried = entry.get("carried")  # None in a state from before accumulation: nothing carried
        bank.carried[slots] = 0.0 if carried is None else np.asarray(carried, dtype=np.float64)


def _rows_of(entry: dict, rows: list[int]) -> dict:
    """Some rows of a state_dict entry (states_of's form), in their order."""
    index = torch.tensor(rows, dtype=torch.long)
    return {key: (value.index_select(0, index) if isinstance(value, torch.Tensor)
                  else None if value is None else [value[i] for i in rows])
            for key, value in entry.items()}
