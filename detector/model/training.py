"""Stateful training of the per-class LSTM autoencoders, and threshold calibration.

Input: the sequence of closed WindowBatches of benign traffic (from the very same capture ->
flows -> windows stages as the daemon) and, optionally, windows to leave out of the loss
(known attack intervals). Training carries state the way scoring does: each entity's
windows are cut into lanes of consecutive windows, (h, c) is carried from window to window
along a lane, and gradients flow back through `tbptt_windows` windows (truncated BPTT).
Each lane starts `warmup` windows early, without loss, so it does not learn from a cold
state more than deployment does.

Contamination: per step, the worst `trim_fraction` of window losses are left out (a trimmed
loss), so a few attack windows hiding in "benign" data do not become normal.

Validation is split in time (blocks spread over the span), scored sequentially with carried
state exactly as the daemon scores; it drives early stopping. Thresholds are calibrated on
out-of-fold scores of every benign window (two half-models, see _out_of_fold_errors).

The decoder also gets the window's minute of the hour (lstm.phase_of), so a device's
periodic job is learned as expected at its minute; it is learned only from at least
PHASE_MIN_HOURS of traffic (before that it stays neutral).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing
import os
import signal
import time
from collections.abc import Iterable, Mapping, MutableMapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import structlog
import torch

from detector.contracts import FeatureSchema, WindowBatch, ns_to_iso
from detector.model._memory import available_memory
from detector.model.bundle import ClassModel, ModelBundle
from detector.model.groups import HostGroups
from detector.model.levels import cross_fitted, levels_by_entity, levels_of
from detector.model.lstm import LSTMAutoencoder, phase_of
from detector.model.scaler import FeatureScaler, held_out_error_scale
from detector.model.scorer import accumulate, reconstruct, set_torch_threads
from detector.model.threshold import MIN_MARGIN, MIN_TAIL_WINDOWS, Threshold, bagged, calibrate, outliers_from
from detector.progress import Progress

log = structlog.get_logger()

PHASE_MIN_HOURS = 3  # the minute-of-hour input is learned only from this much traffic on
MIN_SPAN_HOURS = 24.0  # less than a day of training has not seen the night: `netad train` warns
THIN_MARGIN = MIN_MARGIN  # a threshold less than 10 % above the largest held-out benign window: warned
MEMBER_SEED_STEP = 7919  # members' seeds apart by this prime (member_seed)
# what a member training in a process of its own holds (member_workers): an interpreter with
# torch and the training (445 MB measured, with 0.9 MB of windows), and about this many copies
# of the class grids (the windows pickled to it, their scaled copy, its lanes, the half-models'):
# 834 MB with 43.8 MB of windows, 1,165-1,217 MB with 87.6 MB, two members in two workers
WORKER_BASE_BYTES = 450 << 20
WORKER_COPIES = 9
_PR_SET_PDEATHSIG = 1  # prctl(2)
BOOTSTRAP_RESAMPLES = 200  # block bootstraps of the held-out windows for the threshold's interval
UNCERTAIN_RATIO = 2.0  # the interval's top more than twice its bottom: warned
# the target_false_alarm is per entity window: a class whose entities have more windows a day
# than this many per false alarm allowed is warned (with 60 s windows and the default 1e-4, a
# class of seven hosts; the Westermo captures' 10 s windows and 4.5 hosts: 3.9 a day)
MAX_FALSE_ALARMS_PER_DAY = 1.0
# an epoch improves on the best only by this share of its validation loss: an absolute step
# (it was 1e-4) is always met by a loss still creeping down, and training ran to its cap
MIN_IMPROVEMENT = 0.01
# the accumulation's allowances tried, in thresholds, from the most cautious down
# (model.scorer.accumulate): each class takes the lowest that brings no held-out window
# nearer its threshold than the highest does (`allowance`). Not below a fifth: a CUSUM's
# allowance is half the shift it is built to find, and a run of windows under 0.4 of the
# threshold is what a benign class's ordinary peaks are made of; at a tenth, the held-out
# windows, a few hours of them, let a window at 0.19 of the threshold tip the next one (0.93)
# over it on the next day of the honeypot capture (docs/EVALUATION.md, section xiv)
ALLOWANCES = (0.5, 0.4, 0.3, 0.2)
# and not below what a benign class's windows routinely score: at most one held-out window in
# a hundred may carry anything. A busy server of the synthetic demo scores 0.26 to 0.36 of its
# threshold in window after window; at 0.4 two of its larger windows (0.79, then 0.65) added
# up to a false incident that no held-out window had foretold
ROUTINE_QUANTILE = 0.99


@dataclass
class TrainingParams:
    hidden_size: int = 32
    members: int = 1
    epochs: int = 30
    learning_rate: float = 3e-3
    batch_streams: int = 256
    seed: int = 7
    validation_fraction: float = 0.2
    trim_fraction: float = 0.02
    threshold_quantile: float = 0.999
    target_false_alarm: float = 1e-4
    lane_windows: int = 48
    warmup_windows: int = 6
    tbptt_windows: int = 4
    patience: int = 6
    validation_block_windows: int = 30
    threads: int = 1
    host_groups: dict[str, list[str]] = field(default_factory=dict)  # model.groups: home hosts modelled apart


@dataclass
class _ClassData:
    """All windows of one entity class aligned on a common window index."""

    features: np.ndarray  # float32 (entities, windows, bins, features), real units
    present: np.ndarray  # bool (entities, windows): the entity existed in that window
    usable: np.ndarray  # bool (entities, windows): may be learned from (benign, not excluded)
    window_start_ns: np.ndarray  # int64 (windows,)
    entities: list[str] = field(default_factory=list)


def collect(windows: Iterable[WindowBatch], exclude: list[tuple[int, int]] | None = None,
            groups: HostGroups | None = None) -> tuple[dict[str, _ClassData], FeatureSchema | None]:
    """Arrange window batches per entity class as (entity, window) grids; a host of one of
    `groups` in its group's class."""
    exclude = exclude or []
    starts: list[int] = []
    rows: dict[str, dict[str, dict[int, np.ndarray]]] = {}
    schema: FeatureSchema | None = None
    for wb in windows:
        schema = wb.schema
        k = len(starts)
        starts.append(wb.window_start_ns)
        classes = groups.classes(wb.entities, wb.entity_classes) if groups else wb.entity_classes
        for name, cls, feats in zip(wb.entities, classes, wb.features, strict=True):
            rows.setdefault(cls, {}).setdefault(name, {})[k] = feats
    starts_arr = np.asarray(starts, dtype=np.int64)
    if starts_arr.size == 0:
        return {}, schema
    window_ns = (starts_arr[1] - starts_arr[0]) if starts_arr.size > 1 else 1
    excluded = np.zeros(starts_arr.shape[0], dtype=bool)
    for lo, hi in exclude:
        excluded |= (starts_arr < hi) & (starts_arr + window_ns > lo)
    out: dict[str, _ClassData] = {}
    for cls, ents in rows.items():
        names = sorted(ents)
        first = next(iter(next(iter(ents.values())).values()))
        feats = np.zeros((len(names), starts_arr.shape[0]) + first.shape, dtype=np.float32)
        present = np.zeros((len(names), starts_arr.shape[0]), dtype=bool)
        for e, name in enumerate(names):
            for k, f in ents[name].items():
                feats[e, k] = f
                present[e, k] = True
        levels = [schema.features.index(n) for n in schema.levels] if schema is not None else []
        carried = present & (feats[:, :, :, levels] > 0).any(axis=(2, 3)) if levels else np.zeros_like(present)
        out[cls] = _ClassData(feats, present, present & ~excluded[None, :] & ~trail(excluded, carried), starts_arr, names)
    return out, schema


def trail(excluded: np.ndarray, carried: np.ndarray) -> np.ndarray:
    """bool (entities, windows): the windows after an excluded run (`excluded`, per window) in
    which the entity still carries a level out of it (`carried`: a history level above 0),
    up to its first window without one. An excluded interval's packets end, but the state they
    left does not: a beacon's peer stays in its series for up to twice its period, and those
    windows, learned as benign, taught the model the beacon and set the threshold over it."""
    out = np.zeros_like(carried)
    after = np.zeros(carried.shape[0], dtype=bool)
    for k in range(excluded.shape[0]):
        if excluded[k]:
            after[:] = True
            continue
        after &= carried[:, k]
        out[:, k] = after
    return out


def train(
    windows: Iterable[WindowBatch],
    params: TrainingParams,
    bin_s: float,
    bins: int,
    exclude: list[tuple[int, int]] | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> ModelBundle:
    """Train one model per entity class and calibrate its threshold; with `params.members`
    above 1, that many per class, each from its own seed (member_seed), combined as
    ClassModel.members says. The members train in `workers` processes at once (None: as many
    as member_workers allows); the model is the same whichever the number."""
    set_torch_threads(params.threads)
    data, schema = collect(windows, exclude, HostGroups(params.host_groups))
    if not data or schema is None:
        raise ValueError("no windows to train on: is the capture empty or outside home_net?")
    started = time.monotonic()
    each = [replace(params, seed=member_seed(params.seed, i)) for i in range(params.members)]
    if workers is None:
        workers = member_workers(params.members, params.threads, sum(cd.features.nbytes for cd in data.values()))
    if len(each) > 1:
        log.info("members_training", members=len(each), at_once=min(workers, len(each)))
    members = _members_at_once(data, each, bin_s, bins, progress, workers) if workers > 1 and len(each) > 1 else \
        [_member(data, p, bin_s, bins, progress) for p in each]
    classes, summary = members[0].classes, members[0].summary
    if params.members > 1:
        classes, summary = _ensemble(members, params)
    return ModelBundle(
        schema=schema,
        bin_s=bin_s,
        bins=bins,
        hidden_size=params.hidden_size,
        classes=classes,
        training={"params": params.__dict__, "classes": summary, "seconds": round(time.monotonic() - started, 2)},
        members=params.members,
        host_groups={name: nets for name, nets in params.host_groups.items() if name in classes},
    )


def member_seed(seed: int, member: int) -> int:
    """The seed of a class's `member`-th network: the configured seed for the first (a model
    of one member is the model it always was), then apart by a prime, so that the members of
    seeds 7, 8 and 9 share no seed."""
    return (seed + MEMBER_SEED_STEP * member) % 2**32


def member_workers(members: int, threads: int, data_bytes: int) -> int:
    """How many members may train at once, each in a process of its own: as many as the CPUs
    this process may run on hold at `threads` torch threads apiece (0: torch's own count), and
    as fit in half the available memory at WORKER_BASE_BYTES and WORKER_COPIES copies of the
    windows apiece. One in a daemonic process, which may not start processes. The daemon's
    retraining child is not one: its workers inherit its nice 10, and take only what the
    capture and the scoring leave."""
    if members < 2 or multiprocessing.current_process().daemon:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_worker = threads if threads > 0 else torch.get_num_threads()
    fit = available_memory() // 2 // (WORKER_BASE_BYTES + WORKER_COPIES * data_bytes)
    return int(max(1, min(members, cpus // max(1, per_worker), fit)))


def _members_at_once(data: dict[str, _ClassData], each: list[TrainingParams], bin_s: float, bins: int, progress: bool,
                     workers: int) -> list[_Member]:
    """The members trained in `workers` spawned processes (fresh interpreters: no copy of a
    daemon's threads or locks, nor torch's thread pool, which a fork does not survive). Each
    member seeds torch and numpy from its own seed first (_member), so it is the network it
    would be in this process. What a member logs comes back with it and is logged here, in the
    members' order, as one process would have logged it. Members whose worker died are
    trained here, one after another, and all of them where no worker can start (no semaphore
    for the pool's queues, as with a read-only /dev/shm; a process or a thread that cannot be
    started, as under a cgroup's pids.max)."""
    done: list[tuple[_Member, list[dict]] | None] = [None] * len(each)
    pool, futures = None, []
    try:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=end_with_parent, initargs=(os.getpid(),))
        # a worker takes the torch threads this process has (where params.threads is 0, a
        # fresh interpreter would take one per core, each worker all of them)
        threads = torch.get_num_threads()
        for p in each:  # the workers start as the members are handed out
            futures.append(pool.submit(_member_in_worker, data, p, bin_s, bins, threads))
    except BrokenProcessPool:
        pass  # a worker died before every member was handed out: those not handed out are lost (below)
    except (OSError, NotImplementedError, RuntimeError) as exc:
        # OSError: no semaphore for the pool's queues (a read-only /dev/shm), no process to
        # fork; RuntimeError: no thread for the pool's manager ("can't start new thread": a
        # cgroup's pids.max, systemd's TasksMax=, reached); BrokenProcessPool, above, is one too
        if pool is not None:
            _stop_workers(pool)
        log.warning("member_workers_unavailable", reason=f"{type(exc).__name__}: {exc}",
                    action="training the members in this process, one after another")
        return [_member(data, p, bin_s, bins, progress) for p in each]
    except BaseException:  # Ctrl-C while the workers start: they stop now, not with this process
        if pool is not None:
            _stop_workers(pool)
        raise
    assert pool is not None
    broken = ""  # why the pool broke, where it did
    try:
        with Progress("train members", total=len(each), unit="members", enabled=progress) as bar:
            for i, f in enumerate(futures):
                try:
                    done[i] = _result(pool, f)
                except BrokenProcessPool as exc:
                    broken = broken or str(exc)
                bar.update(1)
    except BaseException:
        _stop_workers(pool)
        raise
    lost = [i for i, d in enumerate(done) if d is None]
    if not lost:
        pool.shutdown()
    else:
        # a worker died (the kernel's OOM killer, a signal) and the pool with it, or the pool's
        # manager thread did, which leaves its workers waiting: they stop, and the members not
        # returned are trained here, one after another, the networks they would be there
        _stop_workers(pool)
        log.warning("member_workers_lost", members=lost, reason=broken or "the pool broke while the members were handed out",
                    action="training these members in this process, one after another")
    members = []
    for i, p in enumerate(each):
        member, events = done[i] or (_member(data, p, bin_s, bins, progress), [])
        for event in events:
            getattr(log, event.pop("level"))(event.pop("event"), **event)
        members.append(member)
    return members


def _result(pool: ProcessPoolExecutor, future: Future) -> Any:
    """future.result(), or BrokenProcessPool where the pool's manager thread has died with the
    future still pending: it hands the members to the workers and their results back, and it
    dies where it cannot start the call queue's feeder thread (a cgroup's pids.max reached
    while the members are handed out), which left training waiting for ever."""
    while True:
        try:
            return future.result(timeout=1.0)
        except TimeoutError:
            manager = getattr(pool, "_executor_manager_thread", None)
            if manager is not None and not manager.is_alive() and not future.done():
                raise BrokenProcessPool("the pool's manager thread died") from None


_MANAGER_JOIN_S = 5.0  # how long the stop waits for the pool's manager thread to end


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Ctrl-C, a member's error, the daemon's SIGTERM to its retraining: the other workers stop
    now, not when their member is trained (shutdown waits for running work);
    terminate_workers from Python 3.14. The pool's manager thread is then waited for: it
    closes its wake-up pipe as it ends, and the interpreter's exit wakes every pool's
    (concurrent.futures' _python_exit), which checks the pipe is open and then writes to it.
    A manager still closing it between the two made the write fail (EBADF): the retraining
    child stopped by SIGTERM exited 1, with a traceback on the daemon's stderr, not 143
    (tests/service/test_retrain.py, once in a fresh clone's full suite)."""
    manager = getattr(pool, "_executor_manager_thread", None)  # shutdown drops the pool's reference
    stop = getattr(pool, "terminate_workers", None)
    if stop is not None:
        stop()
    else:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    if manager is not None and manager.is_alive():  # not started where no thread could be (a task limit)
        manager.join(_MANAGER_JOIN_S)


def end_with_parent(parent: int) -> None:
    """This process leaves Ctrl-C to `parent`, the process that started it (which stops it),
    and is killed when `parent` ends, however it ends (Linux's PR_SET_PDEATHSIG): a `netad
    train` killed leaves no member training on, nor a daemon killed its retraining."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the line above
        os._exit(1)


def _member_in_worker(data: dict[str, _ClassData], params: TrainingParams, bin_s: float, bins: int,
                      threads: int) -> tuple[_Member, list[dict]]:
    """One member in a worker process, and what it logged (each event's dict, its level in `level`)."""
    events: list[dict] = []

    def keep(_logger: object, level: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        events.append({**event, "level": "warning" if level == "warn" else level})
        raise structlog.DropEvent

    structlog.configure(processors=[keep], wrapper_class=structlog.BoundLogger, cache_logger_on_first_use=False)
    set_torch_threads(threads)
    return _member(data, params, bin_s, bins, progress=False), events


@dataclass
class _Member:
    """One network per class, trained and calibrated on its own: the models, the training
    summary, and per class the out-of-fold scores of the held-out windows (entity, window;
    NaN where none), those the calibration kept as benign (the screen's outliers NaN), and
    each entity's first window (_first_windows)."""

    classes: dict[str, ClassModel]
    summary: dict[str, dict]
    held_out: dict[str, np.ndarray]
    benign: dict[str, np.ndarray]
    pooled: dict[str, bool]
    first: dict[str, np.ndarray]


def _member(data: dict[str, _ClassData], params: TrainingParams, bin_s: float, bins: int, progress: bool) -> _Member:
    """Train and calibrate one network per class from `params.seed`."""
    torch.manual_seed(params.seed)
    np.random.seed(params.seed)
    trained: dict[str, tuple[LSTMAutoencoder, FeatureScaler]] = {}
    val_scores: dict[str, np.ndarray] = {}
    levels: dict[str, dict[str, float]] = {}
    summary: dict[str, dict] = {}
    for cls, cd in sorted(data.items()):
        n_w = cd.window_start_ns.shape[0]
        held_out = validation_windows(n_w, params.validation_fraction, params.validation_block_windows)
        train_mask = cd.usable & ~held_out[None, :]
        val_mask = cd.usable & held_out[None, :]
        if not train_mask.any():
            raise ValueError(f"class {cls}: no benign training windows")
        net, scaler, history = _trained(cd, train_mask, val_mask, params, bins, cls, progress)
        # each feature's error counted in what it ordinarily reaches on windows the model did
        # not learn from (scaler.held_out_error_scale), and the threshold calibrated on scores so counted
        held_out_errors = _out_of_fold_errors(cd, params, bins, cls)
        scaler.error_scale = held_out_error_scale(_benign_rows(held_out_errors, bins))
        raw = held_out_scores(held_out_errors, scaler.weights(), bins)
        # each host's scores in its own level where that is above the class's (model.levels):
        # the bundle keeps the levels of every held-out window, the calibration the cross-fitted
        levels[cls] = levels_by_entity(cd.entities, levels_of(raw))
        val_scores[cls] = cross_fitted(raw, halves(n_w, params))
        trained[cls] = (net, scaler)
        entity_windows = int(cd.present.sum())
        entities_per_window = entity_windows / n_w
        summary[cls] = {
            "entities": len(cd.entities),
            "entities_per_window": round(entities_per_window, 3),
            # what the target means for this class: false alarms (windows over the threshold) a
            # day, every entity window of the training span's density alarming at the target rate
            "false_alarms_per_day": params.target_false_alarm * entities_per_window * 86_400.0 / (bin_s * bins),
            "windows": entity_windows,
            "train_windows": int(train_mask.sum()),
            "validation_windows": int(val_mask.sum()),
            "excluded_windows": int((cd.present & ~cd.usable).sum()),
            # the hosts judged in their own level (model.levels), and the largest of those levels
            "own_levels": len(levels[cls]),
            "largest_level": max(levels[cls].values(), default=1.0),
            "epochs": len(history),
            "best_validation_loss": float(min(h["val"] for h in history)),
            "train_start": int(cd.window_start_ns[0]),
            "train_end": int(cd.window_start_ns[-1]),
            "validation": f"every {int(round(1 / params.validation_fraction))}th block of {params.validation_block_windows} windows",
        }
    classes: dict[str, ClassModel] = {}
    benign_of: dict[str, np.ndarray] = {}
    pooled_of: dict[str, bool] = {}
    first_of = {cls: _first_windows(cd.present) for cls, cd in data.items()}
    for cls, (net, scaler) in trained.items():
        scores = val_scores[cls][np.isfinite(val_scores[cls])]
        # a class is calibrated on its own scores wherever they have a tail to fit; pooled
        # with the other classes' (as it was below 200 windows), `global` took on the hosts'
        # heavier tail (the scenario eval's fold B: 167 windows of its own after the truth
        # intervals, a threshold of 9.52 pooled against 1.60 alone: docs/EVALUATION.md,
        # section xi). Pooled only below MIN_TAIL_WINDOWS, where its own would be a bare
        # maximum (Westermo's `global`, 62-70 windows of 45 minutes' training)
        source = "class"
        if scores.shape[0] < MIN_TAIL_WINDOWS:
            scores, source = np.concatenate([v[np.isfinite(v)] for v in val_scores.values()]), "pooled"
        th = calibrate(scores, params.target_false_alarm, params.threshold_quantile)
        th.levels = levels[cls]
        classes[cls] = ClassModel(net, scaler, th)
        summary[cls]["calibration"] = f"{source}: out-of-fold scores of {scores.shape[0]} windows"
        if source == "pooled":
            summary[cls]["own_calibration_windows"] = int(np.isfinite(val_scores[cls]).sum())
        pooled = [cls] if source == "class" else sorted(val_scores)
        resampled = bootstrap_thresholds([val_scores[c] for c in pooled], params)
        summary[cls]["threshold_interval"] = interval_of(resampled)
        summary[cls]["threshold_of_the_sample"] = th.value
        bagged(th, resampled, scores)  # the resamples' median: steadier than the one sample's (model.threshold)
        summary[cls]["outliers"] = _outlier_windows(th, {c: (data[c], val_scores[c]) for c in pooled})
        benign = val_scores[cls].copy()
        if th.n_outliers and th.outliers_from is not None:
            benign[benign >= th.outliers_from] = np.nan  # not benign: their own warning says so
        # too few windows of its own for a tail are too few to vouch for a lower allowance:
        # Westermo's link (62-70 windows, pooled) went from 0.991 to 0.982 ROC AUC on its
        # visible brute force at 0.2 (docs/EVALUATION.md, section xiv)
        benign_of[cls], pooled_of[cls] = benign, source == "pooled"
        th.allowance = allowance(benign, th.value) if source == "class" else ALLOWANCES[0]
        summary[cls]["allowance"] = th.allowance
        # the margin is read on what the threshold will be compared with: the held-out windows'
        # accumulated scores (model.scorer.accumulate) at this threshold and allowance, of the
        # windows the daemon may alert on
        held_out = _accumulated(_alertable(benign, first_of[cls]), th.value, th.allowance)
        # a member's own margin is its class's business only where it is the class's only member
        summary[cls].update(_margin_and_warnings(cls, th.value, held_out[np.isfinite(held_out)], summary[cls], params,
                                                 announce=params.members == 1))
        log.info("threshold_calibrated", entity_class=cls, value=round(th.value, 4), method=th.method,
                 n=th.n_calibration, source=source, reason=th.reason or None, allowance=th.allowance,
                 interval=[round(v, 4) for v in summary[cls]["threshold_interval"]], outliers=th.n_outliers)
    return _Member(classes, summary, val_scores, benign_of, pooled_of, first_of)


def _ensemble(members: list[_Member], params: TrainingParams) -> tuple[dict[str, ClassModel], dict[str, dict]]:
    """The classes of several members: each class's threshold the mean of its members', its
    held-out windows scored as the scorer will score them (ClassModel.in_thresholds), and the
    allowance and margin read from those, as for one member."""
    classes: dict[str, ClassModel] = {}
    summary: dict[str, dict] = {}
    for cls in members[0].classes:
        own = [m.classes[cls] for m in members]
        first = own[0]
        value = float(np.mean([m.threshold.value for m in own]))
        th = Threshold(value=value, method="members", target_false_alarm=params.target_false_alarm,
                       initial=0.0, shape=None, scale=None, n_calibration=first.threshold.n_calibration,
                       n_peaks=0, reason=f"the mean of {len(own)} members' thresholds, each window scored by its members' "
                                         f"median score in their own thresholds")
        cm = ClassModel(first.network, first.scaler, th, members=own)
        # a window is left out where most members' screens left it out: one member's screen
        # is outvoted as its scores are (fold B 6 h seed 10's cut 14 benign windows, section xxx)
        screened = sum((np.isnan(m.benign[cls]) & np.isfinite(m.held_out[cls])).astype(np.int64) for m in members)
        benign = np.where(2 * screened > len(members), np.nan, cm.in_thresholds([m.held_out[cls] for m in members]))
        pooled = any(m.pooled[cls] for m in members)
        th.allowance = allowance(benign, th.value) if not pooled else ALLOWANCES[0]
        s = {k: v for k, v in members[0].summary[cls].items() if k not in ("threshold_interval", "threshold_of_the_sample")}
        s["allowance"] = th.allowance
        s["members"] = [{"seed": member_seed(params.seed, i), "threshold": m.threshold.value,
                         "threshold_interval": members[i].summary[cls].get("threshold_interval"),
                         "epochs": members[i].summary[cls]["epochs"],
                         "own_levels": members[i].summary[cls].get("own_levels", 0),
                         "largest_level": members[i].summary[cls].get("largest_level", 1.0),
                         "best_validation_loss": members[i].summary[cls]["best_validation_loss"]}
                        for i, m in enumerate(own)]
        s["epochs"] = max(members[i].summary[cls]["epochs"] for i in range(len(own)))
        votes: dict[tuple[str, str], list[dict]] = {}
        for m in members:
            for o in m.summary[cls]["outliers"]:
                votes.setdefault((o["entity"], o["window_start"]), []).append(o)
        s["outliers"] = sorted((v[0] for v in votes.values() if 2 * len(v) > len(members)), key=lambda o: -o["score"])
        held_out = _accumulated(_alertable(benign, members[0].first[cls]), th.value, th.allowance)
        s.update(_margin_and_warnings(cls, th.value, held_out[np.isfinite(held_out)], s, params))
        for i in range(len(own)):  # what one member's calibration met, that the median outvotes
            seed, (low, high) = member_seed(params.seed, i), members[i].summary[cls]["threshold_interval"]
            notes = []
            alone = [o for o in members[i].summary[cls]["outliers"] if o not in s["outliers"]]  # most members kept them
            if alone:
                notes.append(f"member {i} (seed {seed}) left {len(alone)} held-out window(s) out of its calibration as "
                             f"outliers, from {min(o['score'] for o in alone):.4g}, that most members kept; the members' "
                             f"median outvotes it")
            if high > UNCERTAIN_RATIO * low:
                notes.append(f"member {i} (seed {seed}): its threshold resampled lies anywhere from {low:.4g} to {high:.4g} (90 %)")
            for note in notes:
                log.warning("training_warning", entity_class=cls, warning=note)
            s["warnings"] += notes
        classes[cls], summary[cls] = cm, s
        log.info("threshold_calibrated", entity_class=cls, value=round(th.value, 4), method=th.method,
                 members=[round(m.threshold.value, 4) for m in own], allowance=th.allowance)
    return classes, summary


def _margin_and_warnings(cls: str, threshold: float, held_out: np.ndarray, summary: dict, params: TrainingParams,
                         announce: bool = True) -> dict:
    """What an operator must know before trusting a class's threshold: the largest held-out
    benign window (out-of-fold score) and the margin the threshold leaves above it, and
    warnings for a short training span, a thin margin and training that hit its epoch cap.
    Each warning is also logged."""
    largest = float(held_out.max()) if held_out.size else float("nan")
    margin = (threshold - largest) / threshold if held_out.size and threshold > 0 else float("nan")
    span_h = (summary["train_end"] - summary["train_start"]) / 3.6e12
    warnings = []
    if span_h < MIN_SPAN_HOURS:
        warnings.append(f"trained on {span_h:.1f} h of traffic (< {MIN_SPAN_HOURS:.0f} h): traffic of other hours "
                        f"(the night, daily jobs) is unseen and may alarm; train on at least a full day")
    if not margin >= THIN_MARGIN:
        warnings.append(f"thin margin: the threshold {threshold:.4g} leaves {margin:+.1%} over the largest held-out benign "
                        f"window ({largest:.4g}); a benign burst like it may alarm")
    outliers = summary.get("outliers", [])
    if outliers:
        seen = ", ".join(f"{o['entity']} at {o['window_start']} ({o['score']:.4g}"
                         f"{', its first window, scored cold' if o.get('first') else ''})" for o in outliers[:3])
        warnings.append(f"{len(outliers)} held-out window(s) far beyond the tail of the others, left out of the calibration: "
                        f"{seen}{', ...' if len(outliers) > 3 else ''}; an attack or a fault in the training span? "
                        f"Check them, and retrain with them in --truth if they are")
    own = summary.get("own_calibration_windows")
    if own is not None:
        warnings.append(f"only {own} held-out windows of this class (< {MIN_TAIL_WINDOWS}), too few for a tail of its own: "
                        f"its threshold comes from every class's held-out windows pooled, and lies as far from its own "
                        f"as the other classes' tails are from it; a longer training span gives it its own")
    low, high = summary.get("threshold_interval", (threshold, threshold))
    if high > UNCERTAIN_RATIO * low:
        warnings.append(f"uncertain threshold: resampling the held-out windows puts it anywhere from {low:.4g} to {high:.4g} "
                        f"(90 %), the tail it is read from rests on a few dozen windows; a longer training span narrows it")
    per_day = summary.get("false_alarms_per_day", 0.0)
    if per_day > MAX_FALSE_ALARMS_PER_DAY:
        wanted = params.target_false_alarm * MAX_FALSE_ALARMS_PER_DAY / per_day
        warnings.append(f"{per_day:.3g} false alarms a day expected: the target ({params.target_false_alarm:g}, "
                        f"training.target_false_alarm) is per entity window, and this class has "
                        f"{summary['entities_per_window']:g} entities in a window on average; "
                        f"set it to {wanted:.2g} for one a day")
    if summary["epochs"] >= params.epochs:
        warnings.append(f"training ran to its cap of {params.epochs} epochs without early stopping (training.epochs)")
    for w in warnings if announce else []:
        log.warning("training_warning", entity_class=cls, warning=w)
    return {"largest_held_out": largest, "margin": margin, "warnings": warnings}


def interval_of(values: np.ndarray) -> tuple[float, float]:
    """The 5 % and 95 % points of resampled thresholds (NaN, NaN for none)."""
    if not values.size:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [0.05, 0.95])
    return float(low), float(high)


def bootstrap_thresholds(matrices: list[np.ndarray], params: TrainingParams, resamples: int = BOOTSTRAP_RESAMPLES,
                         ) -> np.ndarray:
    """How much a class's threshold owes to which benign windows happened to be held out: the
    thresholds calibrated, by the same rule, on `resamples` block bootstraps of the
    out-of-fold `matrices` ((entity, window) scores, NaN where none); their median is the
    threshold a model is deployed with (threshold.bagged), their 5 % and 95 % points the
    interval `netad train` reports. Blocks
    of `validation_block_windows` consecutive windows are drawn with replacement (all entities
    of a block together), so that a burst of benign peaks stays one draw: its windows are not
    independent. It measures the calibration's sampling spread, not the training's: a network
    trained with another seed scores differently again (docs/EVALUATION.md, section viii)."""
    n_w = matrices[0].shape[1]
    size = _block_windows(n_w, params)
    starts = np.arange(0, n_w, size)
    rng = np.random.default_rng(params.seed)
    values = []
    for _ in range(resamples):
        picked = rng.choice(starts.shape[0], starts.shape[0])
        columns = np.concatenate([np.arange(starts[b], min(starts[b] + size, n_w)) for b in picked])
        drawn = np.concatenate([m[:, columns][np.isfinite(m[:, columns])] for m in matrices])
        if drawn.size:
            values.append(calibrate(drawn, params.target_false_alarm, params.threshold_quantile).value)
    return np.asarray(values, np.float64)


def _outlier_windows(th: Threshold, pooled: dict[str, tuple[_ClassData, np.ndarray]]) -> list[dict]:
    """The held-out windows the calibration left out as outliers (threshold.calibrate's
    screen: scores from `th.outliers_from` up), largest first: entity, window start, score,
    and whether it is the entity's first window (`first`: scored from the neutral state,
    which alone can put a window there)."""
    if not th.n_outliers or th.outliers_from is None:
        return []
    found = []
    for cd, scores in pooled.values():
        first = _first_windows(cd.present)
        for e, w in zip(*np.nonzero(np.isfinite(scores) & (scores >= th.outliers_from)), strict=True):
            found.append({"entity": cd.entities[e], "window_start": ns_to_iso(int(cd.window_start_ns[w])),
                          "score": round(float(scores[e, w]), 4), "first": bool(first[e, w])})
    return sorted(found, key=lambda o: -o["score"])


def allowance(held_out: np.ndarray, threshold: float) -> float:
    """The lowest of ALLOWANCES, tried from the highest down, that is above the benign held-out
    windows' ROUTINE_QUANTILE (an (entity, window) matrix of out-of-fold scores, NaN where none)
    and at which no held-out window accumulates more than the largest one does at the highest:
    a lower allowance lets a run of windows each under the threshold add up sooner (a
    beacon's, a bot's first minutes: docs/EVALUATION.md, section xiv), and the held-out windows
    say how low it can go before their own runs add up. The margin `netad train` prints is
    unchanged by it."""
    finite = held_out[np.isfinite(held_out)]
    if finite.size == 0 or threshold <= 0:
        return ALLOWANCES[0]
    routine = float(np.quantile(finite, ROUTINE_QUANTILE)) / threshold
    reference = np.nanmax(_accumulated(held_out, threshold, ALLOWANCES[0]))
    chosen = ALLOWANCES[0]
    for a in ALLOWANCES[1:]:
        if a < routine or np.nanmax(_accumulated(held_out, threshold, a)) > reference:
            break
        chosen = a
    return chosen


def _accumulated(scores: np.ndarray, threshold: float, allowance: float) -> np.ndarray:
    """Accumulated scores (model.scorer.accumulate) of a (entity, window) matrix of scores, NaN
    where an entity had no scored window: nothing is carried over such a gap, as in the daemon."""
    out = np.full(scores.shape, np.nan)
    carried = np.zeros(scores.shape[0])
    for k in range(scores.shape[1]):
        here = np.isfinite(scores[:, k])
        out[here, k], carry = accumulate(scores[here, k], carried[here], threshold, allowance)
        carried[:] = 0.0
        carried[here] = carry
    return out


def _first_windows(present: np.ndarray) -> np.ndarray:
    """The windows (entity, window) each entity is met cold in: its first, and its first
    after a window it was absent from. The window stage emits a row for every entity it
    still tracks, its silent windows too (all zeros), so an absent window is one after the
    entity expired (`windows.entity_idle_s`); the scorer then drops its state too, and meets
    it again from the neutral state, as new. Scored cold, and not alerted on while
    `model.warmup_windows` is 1 or more (the default 1)."""
    before = np.zeros_like(present)
    before[:, 1:] = present[:, :-1]
    return present & ~before


def _alertable(scores: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Held-out `scores` (entity, window) of the windows the daemon may alert on: each
    entity's `first` (_first_windows) NaN. The margin `netad train` reports is read on
    these. The threshold is still calibrated on every held-out window, the first too:
    counted, a cold first window lifts it (the honeypot's, 23 s of a minute, was the largest
    held-out `global` score of each member of fold A's 6 h model), and left out, fold A's
    6 h runs opened six benign incidents where they had opened one (docs/EVALUATION.md,
    section xlii)."""
    return np.where(first, np.nan, scores)


def _block_windows(n_w: int, params: TrainingParams) -> int:
    """Consecutive windows dealt together (cross-fitting's halves, the threshold's bootstrap):
    `validation_block_windows`, but at least four blocks."""
    return max(1, min(params.validation_block_windows, n_w // 4 or 1))


def _out_of_fold_errors(cd: _ClassData, params: TrainingParams, bins: int, cls: str) -> np.ndarray:
    """Calibration errors: each feature's window error (scorer.WindowErrors.feature_error) of
    every benign window of the class, each scored by a model that did not learn from it
    (cross-fitting); the error scales are read from them and the threshold from the scores
    they make (held_out_scores). The windows are cut into blocks of
    `validation_block_windows`, the blocks dealt at random into two halves; a model trained
    on one half scores the other, state carried from the first window as in the daemon.

    Why not the validation windows alone: they are a few hundred per class for half a day
    of traffic, and a 1e-4 false-alarm target cannot be read off a few hundred scores (the
    tail fit falls back to their maximum, and rare benign jobs, e.g. a device's hourly
    call home, then alert every time they happen). Why not the deployed model's own scores
    of its training windows: they are biased low (measured on the IoT-23 honeypot: the
    in-sample 0.999 quantile of `global` was 0.4 while held-out windows reached 1.9). Each
    half-model learned from about half the data, so its errors run a little higher than the
    deployed model's: the threshold errs on the quiet side."""
    fold = halves(cd.window_start_ns.shape[0], params)
    out = np.full((*cd.present.shape, cd.features.shape[-1]), np.nan, dtype=np.float32)
    for k in (0, 1):
        train_mask = cd.usable & (fold != k)[None, :]
        score_mask = cd.usable & (fold == k)[None, :]
        if not train_mask.any() or not score_mask.any():
            continue
        net, scaler, _ = _trained(cd, train_mask, score_mask, params, bins, f"{cls} calibration {k + 1}/2", False)
        errors = np.zeros_like(out)
        _sequential_scores(net, scaler, cd, errors)
        out[score_mask] = errors[score_mask]
    return out  # (entity, window, features), NaN where not a usable window


def halves(n_w: int, params: TrainingParams) -> np.ndarray:
    """The half (0 or 1) of the training span each of its `n_w` windows is scored in by
    _out_of_fold_errors: blocks of _block_windows dealt at random from `params.seed`."""
    block = np.arange(n_w) // _block_windows(n_w, params)
    return (np.random.default_rng(params.seed).permutation(block[-1] + 1) % 2)[block]


def _benign_rows(errors: np.ndarray, bins: int) -> np.ndarray:
    """The held-out windows' feature errors (windows, features) the error scales are read
    from: those the threshold's screen keeps when it reads their undivided scores. An
    attack inside the training span that `--truth` did not name would otherwise set the
    scale of its own features (its SYNs, resets, new peers) and hide the next one like it:
    with two attacks left in, fold B's held-out scales flagged 4 of 13 attack windows on the
    link at its threshold (docs/EVALUATION.md, section xv)."""
    plain = held_out_scores(errors, np.ones(errors.shape[-1], np.float32), bins)
    cut = outliers_from(plain)
    keep = np.isfinite(plain) if cut is None else np.isfinite(plain) & (plain < cut)
    return errors[keep]


def held_out_scores(errors: np.ndarray, weights: np.ndarray, bins: int) -> np.ndarray:
    """Window scores (entity, window) from held-out feature errors (entity, window, features),
    weighted as scorer.reconstruct weighs them; NaN where the errors are."""
    return ((errors.astype(np.float64) * weights).sum(axis=-1) / (bins * errors.shape[-1])).astype(np.float32)


def _trained(cd: _ClassData, train_mask: np.ndarray, val_mask: np.ndarray, params: TrainingParams, bins: int,
             label: str, progress: bool) -> tuple[LSTMAutoencoder, FeatureScaler, list[dict]]:
    """A network and scaler fitted on the `train_mask` windows, early-stopped on `val_mask`,
    at its best epoch, ready to score."""
    scaler = FeatureScaler.fit(cd.features[train_mask])
    net = LSTMAutoencoder(cd.features.shape[-1], params.hidden_size, bins)
    best, history = _fit(net, scaler, cd, train_mask, val_mask, params, label, progress)
    net.load_state_dict(best)
    net.eval()
    return net, scaler, history


def validation_windows(n_windows: int, fraction: float, block: int) -> np.ndarray:
    """Held-out windows: whole blocks of consecutive windows, every k-th block (k = 1 /
    fraction), so validation is split in time yet spread over the whole span (a single
    tail block would early-stop on one quiet stretch). The last block is always held out."""
    block = max(1, min(block, n_windows // 5 or 1))
    every = max(2, int(round(1.0 / fraction)))
    idx = np.arange(n_windows) // block
    last = idx[-1] if n_windows else 0
    return ((idx % every) == (every - 1)) | ((idx == last) & (n_windows > block))


def _lanes(cd: _ClassData, mask: np.ndarray, params: TrainingParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut each entity's windows into lanes: (lanes, warmup + lane_windows, bins, features),
    the loss mask and the windows' phases (lanes, warmup + lane_windows). Lanes run within
    each stretch of windows the entity was present in, from its first window cold
    (_first_windows), as the scorer meets it: an entity back after it expired starts from
    the neutral state, not from its state before, nor through its absent windows as zeros."""
    L, W = params.lane_windows, params.warmup_windows
    feats, masks, phases = [], [], []
    phase = phase_of(cd.window_start_ns)
    starts = _first_windows(cd.present)
    for e in range(cd.features.shape[0]):
        for first in np.flatnonzero(starts[e]).tolist():
            absent = np.flatnonzero(~cd.present[e, first:])
            last = first + int(absent[0]) if absent.size else cd.present.shape[1]
            for s in range(first, last, L):
                lo = max(first, s - W)
                hi = min(last, s + L)
                m = mask[e, lo:hi].copy()
                m[: s - lo] = False
                if not m.any():
                    continue
                pad = (W + L) - (hi - lo)
                f = cd.features[e, lo:hi]
                p = phase[lo:hi]
                if pad:
                    f = np.concatenate([f, np.zeros((pad,) + f.shape[1:], np.float32)])
                    m = np.concatenate([m, np.zeros(pad, bool)])
                    p = np.concatenate([p, np.zeros(pad, np.int64)])
                feats.append(f)
                masks.append(m)
                phases.append(p)
    if not feats:
        return np.zeros((0, W + L) + cd.features.shape[2:], np.float32), np.zeros((0, W + L), bool), np.zeros((0, W + L), np.int64)
    return np.stack(feats), np.stack(masks), np.stack(phases)


def _fit(net: LSTMAutoencoder, scaler: FeatureScaler, cd: _ClassData, train_mask: np.ndarray, val_mask: np.ndarray,
         params: TrainingParams, cls: str, progress: bool) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    if cd.window_start_ns[-1] - cd.window_start_ns[0] < PHASE_MIN_HOURS * 3_600_000_000_000:
        # each minute of the hour seen once or twice: its phase weights would memorise noise
        # (Westermo, 45 min of training: link-level port-scan AUC fell from 0.96 to 0.92)
        net.phase.weight.requires_grad_(False)
    lanes, lane_mask, lane_phase = _lanes(cd, train_mask, params)
    x_all = torch.from_numpy(scaler.transform(lanes))
    m_all = torch.from_numpy(lane_mask)
    p_all = torch.from_numpy(lane_phase)
    opt = torch.optim.Adam(net.parameters(), lr=params.learning_rate)
    rng = np.random.default_rng(params.seed)
    best_state = {k: v.clone() for k, v in net.state_dict().items()}
    best_val = math.inf
    history: list[dict[str, float]] = []
    bad = 0
    # a bar on a terminal (stderr), up to the epoch cap: early stopping may end it sooner
    bar = Progress(f"train {cls}", total=params.epochs, unit="epochs", enabled=progress)
    for epoch in range(params.epochs):
        net.train()
        order = rng.permutation(x_all.shape[0])
        losses = []
        for b0 in range(0, order.shape[0], params.batch_streams):
            sel = torch.from_numpy(order[b0 : b0 + params.batch_streams])
            x, m, p = x_all[sel], m_all[sel], p_all[sel]
            state = net.initial_state(x.shape[0])
            for k0 in range(0, x.shape[1], params.tbptt_windows):
                per_window = []
                masks = []
                for k in range(k0, min(k0 + params.tbptt_windows, x.shape[1])):
                    recon, state = net(x[:, k], state, p[:, k])
                    per_window.append((recon - x[:, k]).pow(2).mean(dim=(1, 2)))
                    masks.append(m[:, k])
                state = (state[0].detach(), state[1].detach())
                loss_w = torch.stack(per_window, 1)[torch.stack(masks, 1)]
                if loss_w.numel() == 0:
                    continue
                keep = loss_w.numel() - int(loss_w.numel() * params.trim_fraction)
                loss = torch.topk(loss_w, max(keep, 1), largest=False).values.mean()
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
                losses.append(loss.item())
        net.eval()
        scores = _sequential_scores(net, scaler, cd)
        target = val_mask if val_mask.any() else train_mask
        if target.any():
            val = float(np.mean(np.minimum(scores[target], np.quantile(scores[target], 1 - params.trim_fraction))))
        else:
            val = float(np.mean(losses))
        history.append({"epoch": epoch, "train": float(np.mean(losses)) if losses else math.nan, "val": val})
        bar.update(1, note=f"train loss {history[-1]['train']:.4f}, validation {val:.4f}")
        if val < best_val * (1.0 - MIN_IMPROVEMENT):
            best_val, bad = val, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
            if bad >= params.patience:
                break
    bar.close()
    log.info("class_trained", entity_class=cls, epochs=len(history), best_validation_loss=round(best_val, 5), lanes=int(x_all.shape[0]))
    return best_state, history


def _sequential_scores(net: LSTMAutoencoder, scaler: FeatureScaler, cd: _ClassData,
                       errors: np.ndarray | None = None) -> np.ndarray:
    """Scores of every (entity, window), state carried from each entity's first window, and
    from the neutral state again where it is met after it expired (_first_windows): the
    same computation as StreamingScorer, all entities of the class in one batch. `errors`
    (entity, window, features), if given, gets each window's feature errors, undivided by
    the scaler's error scales (scorer.WindowErrors.feature_error)."""
    n_e, n_w = cd.present.shape
    scores = np.zeros((n_e, n_w), dtype=np.float32)
    phase = torch.from_numpy(phase_of(cd.window_start_ns))
    h, c = net.initial_state(n_e)
    cold = _first_windows(cd.present)
    for k in range(n_w):
        rows = np.flatnonzero(cd.present[:, k])
        if rows.size == 0:
            continue
        back = torch.from_numpy(np.flatnonzero(cold[:, k]))
        if back.numel():  # met again after it expired: from the neutral state, as the scorer meets it
            h[back], c[back] = 0.0, 0.0
        idx = torch.from_numpy(rows)
        result, (h_new, c_new) = reconstruct(net, scaler, cd.features[rows, k], (h[idx], c[idx]), phase[k])
        h[idx], c[idx] = h_new, c_new
        scores[rows, k] = result.scores
        if errors is not None:
            errors[rows, k] = result.feature_error
    return scores
