"""Each entity's recent window scores, bounded: what the incident page and `netad explain` draw
an incident's timeline from.

Where it stands: fed by the incident board (board.py) after every scored window, read by the
page's HTTP threads, saved in the state directory beside the checkpoint. One row per entity
per window: its end, the entity, score, threshold, flags (anomalous, ready) and the window's
top feature (which one, observed and expected per bin): 26 bytes, in columns (one numpy array
each) cut into chunks of CHUNK_ROWS rows. A window of 50,000 hosts costs 1.3 MB, an hour of
them 78 MB.

Bounded twice: rows `history_s` or more before the newest are neither shown nor saved,
and at most `max_bytes` are held, names included: chunks are added as rows come (never
copied to grow) until the cap, then the oldest rows are overwritten first, so with many
hosts the history is shorter than `history_s` (the README gives the figures). Entity names
are interned (a row holds a 32-bit id); names no row uses any more are dropped once the
table has grown to twice what the rows use.

Saving streams the chunks into an .npz file (numpy's own format, no pickles) without copying
the history: a temporary file beside the target, fsynced, renamed over it.
"""

from __future__ import annotations

import contextlib
import json
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.service.explain.book import atomic_file

# column -> dtype: a row is 26 bytes
COLUMNS: dict[str, Any] = {
    "end_s": np.uint32,  # window end, s since the epoch (UTC)
    "entity": np.uint32,  # interned name (scope and entity)
    "score": np.float32,  # what was compared with the threshold: the window's score plus what its run carried in
    "threshold": np.float32,
    "flags": np.uint8,  # ANOMALOUS | READY
    "top": np.uint8,  # index of the window's top feature in `features`; NO_FEATURE if none
    "observed": np.float32,  # that feature, mean per bin, real units
    "expected": np.float32,
}
ROW_BYTES = sum(np.dtype(t).itemsize for t in COLUMNS.values())
CHUNK_ROWS = 1 << 16  # 1.7 MB of rows: the step memory grows in
ANOMALOUS, READY = 1, 2
NO_FEATURE = 255
NAME_BYTES = 205  # what one interned name costs besides its characters (tuple, str, dict entry, list slot: measured)
FORMAT = 1


@dataclass
class Series:
    """One entity's rows, oldest first."""

    end_s: np.ndarray
    score: np.ndarray
    threshold: np.ndarray
    flags: np.ndarray
    top: list[str]  # the window's top feature ("" if none)
    observed: np.ndarray
    expected: np.ndarray

    def __len__(self) -> int:
        return int(self.end_s.shape[0])

    @classmethod
    def empty(cls) -> Series:
        z = np.zeros(0)
        return cls(z.astype(np.uint32), z.astype(np.float32), z.astype(np.float32), z.astype(np.uint8), [], z.astype(np.float32),
                   z.astype(np.float32))


class ScoreHistory:
    """The ring (module text). `features` and `units` name the schema's feature indices;
    `bin_s` is the bin the observed and expected values are per."""

    def __init__(self, history_s: float, max_bytes: int, features: tuple[str, ...], units: tuple[str, ...],
                 bin_s: float = 0.0) -> None:
        self.history_s = float(history_s)
        self.max_bytes = int(max_bytes)
        self.features = tuple(features)
        self.units = tuple(units)
        self.bin_s = float(bin_s)
        self._chunks: list[dict[str, np.ndarray]] = []
        self._n = 0  # rows in use
        self._head = 0  # once the ring is full: the oldest row, overwritten next
        self._ids: dict[str, dict[str, int]] = {}  # scope (the sensor) -> entity -> id
        self._names: list[tuple[str, str]] = []  # id -> (scope, entity)
        self._name_chars = 0
        self._compact_at = 1024
        self.newest_s = 0

    # ------------------------------------------------------------------ memory
    @property
    def rows(self) -> int:
        return self._n

    def nbytes(self) -> int:
        """Memory held: the chunks, and the interned names (estimated)."""
        return len(self._chunks) * CHUNK_ROWS * ROW_BYTES + self._names_bytes()

    def _names_bytes(self) -> int:
        return len(self._names) * NAME_BYTES + self._name_chars

    def _max_chunks(self) -> int:
        return max(1, (self.max_bytes - self._names_bytes()) // (CHUNK_ROWS * ROW_BYTES))

    # ------------------------------------------------------------------ writing
    def add(self, end_ns: int, scope: str, entities: list[str], score: np.ndarray, threshold: np.ndarray,
            anomalous: np.ndarray, ready: np.ndarray, top: np.ndarray, observed: np.ndarray, expected: np.ndarray) -> None:
        """One closed window of one scope (the sensor that saw it): a row per entity, `top`
        the index of its top feature (-1 for none), `observed`/`expected` that feature's values."""
        n = len(entities)
        if n == 0:
            return
        end_s = min(int(end_ns // 1_000_000_000), 2**32 - 1)
        self.newest_s = max(self.newest_s, end_s)
        top_idx = np.asarray(top, np.int64)
        block = {
            "end_s": np.full(n, end_s, np.uint32),
            "entity": self._ids_of(scope, entities),
            "score": np.asarray(score, np.float32),
            "threshold": np.asarray(threshold, np.float32),
            "flags": (np.asarray(anomalous, bool) * ANOMALOUS + np.asarray(ready, bool) * READY).astype(np.uint8),
            "top": np.where((top_idx >= 0) & (top_idx < NO_FEATURE), top_idx, NO_FEATURE).astype(np.uint8),
            "observed": np.asarray(observed, np.float32),
            "expected": np.asarray(expected, np.float32),
        }
        self._write(block, n)
        if len(self._names) > self._compact_at:
            self._compact()
        if self.nbytes() > self.max_bytes:  # the names grew into the rows' share (hosts that come and go)
            self._shrink()

    def _size(self) -> int:
        return len(self._chunks) * CHUNK_ROWS

    def _write(self, block: dict[str, np.ndarray], n: int) -> None:
        max_rows = self._max_chunks() * CHUNK_ROWS
        if n > max_rows:  # more entities in one window than the history holds: the last of them
            block = {k: v[n - max_rows:] for k, v in block.items()}
            n = max_rows
        while self._head == 0 and self._n + n > self._size() and len(self._chunks) < self._max_chunks():
            self._chunks.append({name: np.zeros(CHUNK_ROWS, dtype) for name, dtype in COLUMNS.items()})
        done = 0
        if self._n < self._size():  # free rows: filled in order
            done = min(n, self._size() - self._n)
            self._put(self._n, block, 0, done)
            self._n += done
        while done < n:  # full: the oldest rows are overwritten, from the head on
            k = min(n - done, self._size() - self._head)
            self._put(self._head, block, done, k)
            self._head = (self._head + k) % self._size()
            done += k

    def _put(self, at: int, block: dict[str, np.ndarray], start: int, k: int) -> None:
        """block rows [start, start + k) to positions [at, at + k) (no wrap)."""
        while k > 0:
            c, off = divmod(at, CHUNK_ROWS)
            m = min(k, CHUNK_ROWS - off)
            chunk = self._chunks[c]
            for name, col in chunk.items():
                col[off: off + m] = block[name][start: start + m]
            at, start, k = at + m, start + m, k - m

    def _segments(self) -> list[tuple[int, int, int]]:
        """(chunk, start, stop) slices of the rows in use, oldest first."""
        out = []
        ranges = [(self._head, self._n), (0, self._head)] if self._head else [(0, self._n)]
        for lo, hi in ranges:
            while lo < hi:
                c, off = divmod(lo, CHUNK_ROWS)
                m = min(hi - lo, CHUNK_ROWS - off)
                out.append((c, off, off + m))
                lo += m
        return out

    def _shrink(self) -> None:
        """Back within max_bytes: the oldest rows go, a quarter at a time, with the names only
        they used and the chunks they leave empty."""
        while self.nbytes() > self.max_bytes and self._n > 0:
            keep = self._n * 3 // 4
            rows = self._gather(self._segments(), skip=self._n - keep)
            used, inverse = np.unique(rows["entity"], return_inverse=True)
            self._rename([self._names[i] for i in used.tolist()])
            rows["entity"] = inverse.reshape(-1).astype(np.uint32)
            self._chunks, self._n, self._head = [], 0, 0
            if keep:
                self._write(rows, keep)

    def _rename(self, names: list[tuple[str, str]]) -> None:
        """The table of names is `names` (ids are their positions)."""
        self._names = names
        self._ids = {}
        for i, (scope, entity) in enumerate(names):
            self._ids.setdefault(scope, {})[entity] = i
        self._name_chars = sum(len(entity) for _, entity in names)
        self._compact_at = max(1024, 2 * len(names))

    def _gather(self, segments: list[tuple[int, int, int]], skip: int = 0) -> dict[str, np.ndarray]:
        out: dict[str, list[np.ndarray]] = {name: [] for name in COLUMNS}
        for c, lo, hi in segments:
            if skip >= hi - lo:
                skip -= hi - lo
                continue
            for name in COLUMNS:
                out[name].append(self._chunks[c][name][lo + skip: hi])
            skip = 0
        return {name: np.concatenate(parts) if parts else np.zeros(0, COLUMNS[name]) for name, parts in out.items()}

    def _ids_of(self, scope: str, entities: list[str]) -> np.ndarray:
        ids = self._ids.setdefault(scope, {})
        out = np.fromiter(map(ids.get, entities, [-1] * len(entities)), np.int64, len(entities))
        for i in np.flatnonzero(out < 0).tolist():  # names not seen before
            out[i] = ids.setdefault(entities[i], len(self._names))
            if out[i] == len(self._names):
                self._names.append((scope, entities[i]))
                self._name_chars += len(entities[i])
        return out.astype(np.uint32)

    def _used_ids(self) -> np.ndarray:
        parts = [self._chunks[c]["entity"][lo:hi] for c, lo, hi in self._segments()]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint32)

    def _compact(self) -> None:
        """Forget names no row uses; renumber the rest."""
        used = self._used_ids()
        remap = np.zeros(max(len(self._names), 1), np.uint32)
        remap[used] = np.arange(used.shape[0], dtype=np.uint32)
        for c, lo, hi in self._segments():
            col = self._chunks[c]["entity"]
            col[lo:hi] = remap[col[lo:hi]]
        self._rename([self._names[i] for i in used.tolist()])

    # ------------------------------------------------------------------ reading
    def series(self, scope: str, entity: str, since_s: float | None = None, until_s: float | None = None) -> Series:
        """An entity's rows within the horizon (and [since_s, until_s] if given), oldest first."""
        i = self._ids.get(scope, {}).get(entity)
        if i is None:
            return Series.empty()
        parts: dict[str, list[np.ndarray]] = {name: [] for name in COLUMNS if name != "entity"}
        for c, lo, hi in self._segments():
            chunk = self._chunks[c]
            at = lo + np.flatnonzero(chunk["entity"][lo:hi] == i)
            for name in parts:
                parts[name].append(chunk[name][at])
        cols = {name: np.concatenate(p) if p else np.zeros(0, COLUMNS[name]) for name, p in parts.items()}
        end = cols["end_s"].astype(np.float64)
        keep = end > self.newest_s - self.history_s
        if since_s is not None:
            keep &= end >= since_s
        if until_s is not None:
            keep &= end <= until_s
        cols = {name: c[keep] for name, c in cols.items()}
        order = np.argsort(cols["end_s"], kind="stable")
        cols = {name: c[order] for name, c in cols.items()}
        return Series(cols["end_s"], cols["score"], cols["threshold"], cols["flags"],
                      [self.features[t] if t < len(self.features) else "" for t in cols["top"].tolist()],
                      cols["observed"], cols["expected"])

    def meta(self) -> dict[str, Any]:
        return {"format": FORMAT, "features": list(self.features), "units": list(self.units), "bin_s": self.bin_s,
                "history_s": self.history_s, "newest_s": self.newest_s}

    # ------------------------------------------------------------------ saving and restoring
    def save(self, path: Path) -> int:
        """The rows within the horizon, oldest first, with the names they use, to `path`
        (streamed a chunk at a time; atomically). Returns the rows written."""
        cutoff = self.newest_s - self.history_s
        kept = []  # (chunk, start, stop, rows within the horizon)
        for c, lo, hi in self._segments():
            keep = self._chunks[c]["end_s"][lo:hi].astype(np.float64) > cutoff
            if keep.any():
                kept.append((c, lo, hi, keep))
        used = np.unique(np.concatenate([self._chunks[c]["entity"][lo:hi][keep] for c, lo, hi, keep in kept])) if kept else (
            np.zeros(0, np.uint32))
        remap = np.zeros(max(len(self._names), 1), np.uint32)
        remap[used] = np.arange(used.shape[0], dtype=np.uint32)
        rows = sum(int(keep.sum()) for *_, keep in kept)
        with atomic_file(path) as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            _put_array(zf, "meta", np.array(json.dumps(self.meta())))
            names = [self._names[i] for i in used.tolist()]
            _put_array(zf, "scopes", np.array([scope for scope, _ in names], dtype=np.str_))
            _put_array(zf, "entities", np.array([entity for _, entity in names], dtype=np.str_))
            for name, dtype in COLUMNS.items():
                with zf.open(f"col_{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                             "fortran_order": False, "shape": (rows,)})
                    for c, lo, hi, keep in kept:
                        part = self._chunks[c][name][lo:hi][keep]
                        f.write((remap[part] if name == "entity" else part).tobytes())
        return rows

    @classmethod
    def from_file(cls, path: Path) -> ScoreHistory:
        """A history holding what a `save` wrote, whatever its schema (`netad explain`)."""
        with _npz(path) as data:
            meta = json.loads(str(data["meta"]))
        if not isinstance(meta, dict):
            raise ValueError(f"{path}: not a score history")
        history = cls(float(meta.get("history_s", 0.0)) or 1e12, max(64 * 2**20, 4 * path.stat().st_size),
                      tuple(str(f) for f in meta.get("features", ())), tuple(str(u) for u in meta.get("units", ())),
                      float(meta.get("bin_s", 0.0) or 0.0))
        history.restore(path)
        return history

    def restore(self, path: Path, until_s: float | None = None) -> int:
        """Rows a `save` wrote appended, those ending after `until_s` left out (a replay
        resumed there). ValueError (OSError) for a file that is not one, or was written for
        another feature schema. Returns the rows restored."""
        with _npz(path) as data:
            meta = json.loads(str(data["meta"]))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError(f"history format {meta.get('format') if isinstance(meta, dict) else meta!r}, expected {FORMAT}")
            if tuple(meta.get("features", ())) != self.features:
                raise ValueError("history written for another feature schema")
            scopes = [str(n) for n in np.asarray(data["scopes"]).reshape(-1).tolist()]
            entities = [str(n) for n in np.asarray(data["entities"]).reshape(-1).tolist()]
            cols = {name: np.asarray(data[f"col_{name}"]) for name in COLUMNS}
        if len(scopes) != len(entities):
            raise ValueError("history names of unequal length")
        n = cols["end_s"].shape[0]
        if any(c.ndim != 1 or c.shape[0] != n for c in cols.values()):
            raise ValueError("history columns of unequal length")
        if n and int(cols["entity"].max()) >= len(entities):
            raise ValueError("history rows name entities it does not list")
        keep = np.ones(n, bool) if until_s is None else cols["end_s"] <= until_s
        rows = {name: cols[name][keep].astype(dtype) for name, dtype in COLUMNS.items()}
        k = int(rows["end_s"].shape[0])
        if k == 0:
            return 0
        local = np.zeros(len(entities), np.uint32)
        for scope in set(scopes):
            at = [i for i, s in enumerate(scopes) if s == scope]
            local[at] = self._ids_of(scope, [entities[i] for i in at])
        rows["entity"] = local[rows["entity"]]
        self.newest_s = max(self.newest_s, int(rows["end_s"].max()))
        self._write(rows, k)
        self._compact()
        return k


@contextlib.contextmanager
def _npz(path: Path) -> Iterator[Any]:
    """np.load of a saved history, with what a damaged file raises (a bad block, a file cut
    short: zipfile.BadZipFile, EOFError, zlib.error) said as the ValueError the callers take
    for a history that cannot be used. Before, the daemon that restored such a file exited 1,
    and again at every restart systemd made."""
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:  # np.load leaves its own file open on a broken zip
            yield data
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: damaged: {type(exc).__name__}: {exc}") from None


def _put_array(zf: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, array, allow_pickle=False)


def measure(hosts: int, windows: int, max_bytes: int, history_s: float = 86400.0, window_s: int = 60) -> dict[str, Any]:
    """Fill a history with `windows` windows of `hosts` hosts and the link, as the daemon
    does; what it then holds and what it costs, counted by tracemalloc (the README's figure;
    tests/service/explain/test_history.py)."""
    import tracemalloc

    features = tuple(f"f{i}" for i in range(19))
    n = hosts + 1
    rng = np.random.default_rng(7)
    scores, zeros, ones = rng.random(n).astype(np.float32), np.zeros(n, bool), np.ones(n, bool)
    top, threshold = rng.integers(0, 19, n), np.full(n, 2.0, np.float32)
    tracemalloc.start()  # the names are made while traced: the history keeps them
    names = ["global"] + [f"10.{(h >> 16) & 255}.{(h >> 8) & 255}.{h & 255}" for h in range(hosts)]
    history = ScoreHistory(history_s, max_bytes, features, ("packets",) * len(features))
    for w in range(windows):
        history.add((1_700_000_000 + (w + 1) * window_s) * 1_000_000_000, "netad", names, scores, threshold, zeros, ones, top,
                    scores, scores)
    first_host = names[1]
    del names
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    kept = history.series("netad", first_host)
    return {"hosts": hosts, "windows_added": windows, "rows": history.rows, "nbytes": history.nbytes(),
            "traced_bytes": current, "traced_peak_bytes": peak, "max_bytes": max_bytes,
            "minutes_kept": len(kept) * window_s / 60.0}
