"""Periodic retraining on recent benign windows, in a separate low-priority process.

Where it stands: beside the scorer. The run loop feeds every scored window into a bounded
ring (`WindowRing`), keeping only the rows the model did not flag (an attack must not become
normal by being retrained on). When the `retrain` job is due, the ring is written to disk
(npz, no pickle) and a child process is spawned (multiprocessing 'spawn': a fresh
interpreter, no copy of the daemon's threads, locks or sockets) that runs at nice 10:

  1. trains a candidate with model.training.train on the older windows (1 - HOLDOUT), its
     members at once in processes of their own (at nice 10 too) where the CPUs and the memory
     allow, as `netad train` does,
  2. writes it as a bundle to state_dir/models/<version> (atomically, as every bundle),
  3. scores the newest HOLDOUT windows with both the running model and the candidate, each
     through a StreamingScorer with state carried from the first buffered window (exactly
     as the daemon scores), and reports each model's false-alarm rate on them.

The run loop polls the child between batches and swaps the candidate in only if it is not
worse (`verdict`); the swap itself happens on the run loop's thread (daemon.py).

How big is the ring: retraining wants a day of traffic (the daily cycle is most of what a
benign baseline is), so `retrain_buffer_windows` defaults to 1440 windows of 60 s; a window
of 1000 hosts is 1000 x 6 bins x 16 features x 4 bytes = 384 kB, so a day of it would be
550 MB, hence the second bound, `retrain_buffer_mb` (default 256): whichever is reached
first drops the oldest windows. Evidence and flows are never kept, only features.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from detector.contracts import FeatureSchema, ScoreBatch, WindowBatch

log = structlog.get_logger()

HOLDOUT_FRACTION = 0.2  # the newest windows, kept out of training to judge the candidate on
FAR_SLACK = 0.005  # a candidate may raise the held-out false-alarm rate by this much and still win
_NAME_BYTES = 64  # rough memory of one entity name (a str and its list slot)


@dataclass
class _Kept:
    start_ns: int
    end_ns: int
    entities: list[str]
    classes: list[str]
    features: np.ndarray  # float32 (rows, bins, features)

    @property
    def nbytes(self) -> int:
        return int(self.features.nbytes) + _NAME_BYTES * len(self.entities)


class WindowRing:
    """Recent scored windows, only their non-anomalous rows, bounded in count and bytes."""

    def __init__(self, max_windows: int, max_bytes: int) -> None:
        self.max_windows = max_windows
        self.max_bytes = max_bytes
        self._windows: deque[_Kept] = deque()
        self.nbytes = 0
        self.schema: FeatureSchema | None = None

    def __len__(self) -> int:
        return len(self._windows)

    def resize(self, max_windows: int, max_bytes: int) -> None:
        self.max_windows, self.max_bytes = max_windows, max_bytes
        self._trim()

    def clear(self) -> None:
        self._windows.clear()
        self.nbytes = 0

    def add(self, window: WindowBatch, scores: ScoreBatch) -> None:
        keep = ~np.asarray(scores.anomalous, dtype=bool)
        rows = np.flatnonzero(keep)
        kept = _Kept(
            window.window_start_ns,
            window.window_end_ns,
            [window.entities[i] for i in rows.tolist()],
            [window.entity_classes[i] for i in rows.tolist()],
            np.ascontiguousarray(window.features[rows], dtype=np.float32),  # a copy: the window's arrays go
        )
        self.schema = window.schema
        self._windows.append(kept)
        self.nbytes += kept.nbytes
        self._trim()

    def _trim(self) -> None:
        while self._windows and (len(self._windows) > self.max_windows or self.nbytes > self.max_bytes):
            self.nbytes -= self._windows.popleft().nbytes

    def save(self, path: Path) -> int:
        """Write the ring as npz (strings as fixed-width unicode, never pickled); atomic."""
        windows = list(self._windows)
        counts = np.array([len(w.entities) for w in windows], dtype=np.int64)
        bins_features = windows[0].features.shape[1:] if windows else (0, 0)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                start_ns=np.array([w.start_ns for w in windows], dtype=np.int64),
                end_ns=np.array([w.end_ns for w in windows], dtype=np.int64),
                counts=counts,
                entities=np.array([e for w in windows for e in w.entities], dtype=str),
                classes=np.array([c for w in windows for c in w.classes], dtype=str),
                features=np.concatenate([w.features for w in windows]) if windows else np.zeros((0, *bins_features), np.float32),
            )
        os.replace(tmp, path)
        return len(windows)


def load_windows(path: Path, schema: FeatureSchema) -> list[WindowBatch]:
    """The inverse of WindowRing.save."""
    with np.load(path, allow_pickle=False) as z:
        starts, ends, counts = z["start_ns"], z["end_ns"], z["counts"]
        entities, classes, features = z["entities"].tolist(), z["classes"].tolist(), z["features"]
    out = []
    offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
    for k in range(starts.shape[0]):
        a, b = offsets[k], offsets[k + 1]
        out.append(WindowBatch(int(starts[k]), int(ends[k]), entities[a:b], classes[a:b], features[a:b], schema))
    return out


# ---------------------------------------------------------------------------- the child


def false_alarm_rate(bundle: Any, windows: list[WindowBatch], held_from: int, scorer_kwargs: dict[str, Any]) -> tuple[float, int]:
    """The share of (ready) entity-windows from index `held_from` on that `bundle` flags,
    scoring every window in order with state carried, as the daemon does."""
    from detector.model.scorer import StreamingScorer

    scorer = StreamingScorer(bundle, device="cpu", **scorer_kwargs)
    flagged = rows = 0
    for k, wb in enumerate(windows):
        if len(wb) == 0:
            continue
        scores = scorer.score(wb)
        if k >= held_from:
            ready = np.asarray(scores.ready, dtype=bool)
            rows += int(ready.sum())
            flagged += int((np.asarray(scores.anomalous, dtype=bool) & ready).sum())
    return (flagged / rows if rows else 0.0), rows


def _child_main(request: dict[str, Any], daemon_pid: int) -> None:
    """Entry point of the spawned process: train, save, validate, write result.json."""
    os.nice(10)  # the capture and scoring keep the CPU; training (its member workers too) takes what is left
    from detector.logging import configure
    from detector.model.training import end_with_parent

    end_with_parent(daemon_pid)  # Ctrl-C on a terminal is for the daemon, which stops us; a daemon killed kills us
    # the daemon stops us with SIGTERM: as an exit, so that training stops its member workers
    # and hands back their pool's semaphores (killed outright, the child left them to
    # multiprocessing's resource tracker, which said so on the daemon's stderr, not in JSON)
    signal.signal(signal.SIGTERM, _exit_on_signal)

    configure(request["log_level"], "json")
    structlog.contextvars.bind_contextvars(process="retrain")  # on every line, training's own too
    clog = log
    result: dict[str, Any] = {"ok": False}
    started = time.monotonic()
    try:
        result = _train_and_validate(request, clog)
    except Exception as exc:  # whatever happens here must reach the daemon as a result, not a hang
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    result["seconds"] = round(time.monotonic() - started, 2)
    out = Path(request["result_path"])
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    os.replace(tmp, out)


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _train_and_validate(request: dict[str, Any], clog: Any) -> dict[str, Any]:
    import torch

    from detector.model.bundle import ModelBundle
    from detector.model.training import TrainingParams, train

    params = TrainingParams(**request["params"])
    torch.set_num_threads(max(1, params.threads))
    current = ModelBundle.load(request["current_model"])
    windows = load_windows(Path(request["windows_path"]), current.schema)
    held_from = len(windows) - max(1, int(round(len(windows) * HOLDOUT_FRACTION)))
    clog.info("retrain_started", windows=len(windows), train_windows=held_from, held_out_windows=len(windows) - held_from)
    candidate = train(windows[:held_from], params, request["bin_s"], request["bins"])
    candidate.training["retrained_from"] = current.version
    candidate.training["retrain_windows"] = [windows[0].window_start_ns, windows[held_from - 1].window_end_ns]
    models_dir = Path(request["models_dir"])
    staging = models_dir / f".candidate-{os.getpid()}"
    candidate.save(staging)
    final = models_dir / candidate.version
    if final.exists():  # the very same weights again
        shutil.rmtree(staging)
    else:
        os.rename(staging, final)
    saved = ModelBundle.load(final)  # what the daemon will load, hash-checked
    kwargs = request["scorer"]
    far_current, rows = false_alarm_rate(current, windows, held_from, kwargs)
    far_candidate, _ = false_alarm_rate(saved, windows, held_from, kwargs)
    return {
        "ok": True,
        "version": saved.version,
        "path": str(final),
        "far_current": far_current,
        "far_candidate": far_candidate,
        "held_out_rows": rows,
        "train_windows": held_from,
        "held_out_windows": len(windows) - held_from,
    }


# ---------------------------------------------------------------------------- the parent


@dataclass
class RetrainResult:
    ok: bool
    version: str = ""
    path: str = ""
    far_current: float = 0.0
    far_candidate: float = 0.0
    held_out_rows: int = 0
    train_windows: int = 0
    held_out_windows: int = 0
    seconds: float = 0.0
    error: str = ""

    def as_log(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items() if k not in ("ok", "error")}


def verdict(result: RetrainResult) -> tuple[bool, str]:
    """Swap the candidate in only if it is not worse on the held-out recent windows."""
    if result.held_out_rows == 0:
        return False, "no held-out windows to judge the candidate on"
    if result.far_candidate <= result.far_current + FAR_SLACK:
        return True, "not worse on held-out windows"
    return False, (f"false-alarm rate on held-out windows {result.far_candidate:.4f} vs "
                   f"{result.far_current:.4f} for the running model")


def _cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds used by `pid` and the processes under it (its member workers), those it
    has waited for included (proc(5): utime, stime, cutime, cstime); None once it is gone."""
    if pid is None:
        return None
    ticks, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += sum(int(f) for f in fields[11:15])
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError, IndexError):
            if current == pid:
                return None
    return ticks / os.sysconf("SC_CLK_TCK")


class Retrainer:
    """Starts, polls and stops the retraining child; one at a time."""

    def __init__(self, state_dir: Path) -> None:
        self.models_dir = Path(state_dir) / "models"
        self.work_dir = Path(state_dir) / "retrain"
        self._process: multiprocessing.process.BaseProcess | None = None
        self._started_s = 0.0
        self._cpu_at_last_due: float | None = None  # the child's CPU seconds when a retraining last fell due as it ran
        self._result_path = self.work_dir / "result.json"

    @property
    def running(self) -> bool:
        return self._process is not None

    def start(self, ring: WindowRing, min_windows: int, request: dict[str, Any]) -> str:
        """The job's outcome: started, or why not. A child still running when a retraining
        falls due is left to work while it works: its CPU time (with its member workers') is
        noted, and said (`retrain_overdue`). One that has used no CPU since the last time a
        retraining fell due has hung (a deadlock, a stopped process, a file system that does
        not answer): it is stopped, and a fresh one starts (`retrain_hung`). Without that, a
        hung child kept every later retraining away for good, each skipped as busy. No time
        limit: a large ring on a slow machine may train for longer than the interval."""
        if self._process is not None:
            running_s = round(time.monotonic() - self._started_s, 1)
            cpu_s = _cpu_seconds(self._process.pid)
            if cpu_s is None or self._cpu_at_last_due is None or cpu_s > self._cpu_at_last_due:
                self._cpu_at_last_due = cpu_s
                log.warning("retrain_overdue", pid=self._process.pid, running_s=running_s, cpu_s=cpu_s,
                            reason="still running as the next retraining fell due; stopped if it uses no CPU until the one after")
                return "skipped_busy"
            log.error("retrain_hung", pid=self._process.pid, running_s=running_s, cpu_s=cpu_s,
                      reason="no CPU used since the last retraining fell due: stopped, and a fresh one started")
            self.stop()
        if len(ring) < min_windows:
            return "skipped_too_few_windows"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._result_path.unlink(missing_ok=True)
        windows_path = self.work_dir / "windows.npz"
        n = ring.save(windows_path)
        request = dict(request, windows_path=str(windows_path), models_dir=str(self.models_dir),
                       result_path=str(self._result_path))
        ctx = multiprocessing.get_context("spawn")
        # not daemonic, so that it may train the members in processes of their own; every way
        # out of the daemon stops it (stop()), and it dies with the daemon (end_with_parent)
        self._process = ctx.Process(target=_child_main, args=(request, os.getpid()), name="netad-retrain")
        self._process.start()
        self._started_s, self._cpu_at_last_due = time.monotonic(), None
        log.info("retrain_spawned", pid=self._process.pid, windows=n, buffer_mb=round(ring.nbytes / 2**20, 1))
        return "started"

    def poll(self) -> RetrainResult | None:
        """The child's result once it has exited (non-blocking); None while it runs."""
        proc = self._process
        if proc is None or proc.is_alive():
            return None
        proc.join()
        self._process = None
        try:
            data = json.loads(self._result_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return RetrainResult(ok=False, error=f"the retraining process exited with status {proc.exitcode} and no result")
        return RetrainResult(**{k: v for k, v in data.items() if k in RetrainResult.__dataclass_fields__})

    def stop(self, timeout_s: float = 2.0) -> None:
        proc, self._process = self._process, None
        if proc is None:
            return
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout_s)
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
            log.info("retrain_cancelled", pid=proc.pid, exitcode=proc.exitcode)

    def discard(self, path: str) -> None:
        """Remove a rejected candidate (unless it is the bundle in use by coincidence)."""
        p = Path(path)
        if p.parent == self.models_dir and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)

    def prune(self, keep: set[Path]) -> None:
        """Retrained bundles other than `keep` (the running one and its predecessor) go."""
        if not self.models_dir.is_dir():
            return
        keep_resolved = {k.resolve() for k in keep}
        for child in self.models_dir.iterdir():
            if child.is_dir() and child.resolve() not in keep_resolved:
                shutil.rmtree(child, ignore_errors=True)
