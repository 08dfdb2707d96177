"""Capture workers: the flow table and the per-bin accumulators split over N processes by
flow, merged per entity when a window closes, so that N workers give the windows of one.

Where this stands: inside the window stage, for `source.workers: N > 1`
(service.pipeline.build_windowing wires it; everything before and after is unchanged)::

                                  ┌─► worker 0: its flows' rows ─► FlowTable + accumulators ─┐
    PacketBatch ─► ring (shared ──┤   (flows.flow_shards)                                    ├─► merged per window ─► WindowBatch
                   memory)        └─► worker 1: its flows' rows ─► FlowTable + accumulators ─┘     (ShardedWindowAggregator)

The parent (ShardedWindowAggregator, a WindowAggregator) keeps what must be one: the event
clock's cut of each batch into parts, late packets, entity slots (which host is which row),
expiry, closing and each entity's history. Per batch it copies the columns once into a slot
of a ring in shared memory (FlowShards.push, capture.windows._ring) and, per part, writes
beside them the entity slots it found for each row; its messages only name the ring slot
and the part's rows. Each worker hashes every row (flows.flow_shards), copies out those of
its flows and runs the same numba kernels as the one-process path (FlowTable._push,
kernels.accumulate_window) on them. At a window's close each worker writes that window's
aggregates into a shared memory of its own (_ring.SharedArrays) and the parent merges them.

A close does not stop the parent. It does the entity side at once, in the stream's order
(expiry, the entities the window is for: EntityWindows._closing), asks the workers for the
window's aggregates and reads on; it merges them and builds the window (features, history,
evidence: EntityWindows._built) when every worker has answered, seen at the start and end of
each batch, or at the next close, which first builds this one (waiting for it if need be:
the history takes the windows in order, and each worker has one reply memory). So a window
is handed on up to a batch after the one that closed it; flush() and advance() hand on
everything. Before, the parent waited at every close while the workers took the batches it
was ahead by, then the workers waited while it merged and built: 0.2 to 0.26 s per million
bench packets at 6 closes, a third of the run.

What this costs and where (bench capture, CPU seconds per million packets; the README's
workers section has the runs): the parent still parses, finds entity slots per packet and
closes every window (merge, peer history, evidence): 0.40 to 0.44 s, against 0.64 to 0.68 s
for one process doing the whole job in one thread; each worker 0.20 to 0.23 s. That is more
CPU in all than one process spends (the split's slot columns, ring and hashing, the merge,
and the same work spread over more memory); on 2 cores the three processes share them, and
the parent, which no longer waits at closes nor for a worker's whole queue, is the limit.
One process reading ahead on a thread (capture.packets.pcap.read_ahead) comes within 1.07x
to 1.16x of 2 workers there. To go further the parse and the building of windows must
leave the parent (see the README).

When the parent is a whole ring ahead of a worker, it waits for that worker to take its
next batch (an eventfd the worker signals as it does), which says the worker is done with
the oldest slot; a reply to a message would come only after every batch queued before it.

Why the merge is exact, feature for feature and bit for bit:
- a flow lives in one worker (both directions hash alike), and its table sweeps at the
  whole batch's newest time (FlowTable.push's `watermark_ns`), so every packet gets the
  flow facts (new flow, direction) it gets from one table; flow ids are a hash of the
  flow's key and first time, the same in any worker;
- sums are float64 additions of whole numbers below 2**53: exact in any order;
- distinct peers and ports are not added (a peer can be reached through flows of both
  workers) but recounted from the union of the workers' tally rows: a row per (entity,
  peer) or (entity, port) holds a seen bit per (bin, direction); rows of one key are merged
  by OR-ing those bits, and a distinct count is the number of merged rows with its bit set.
  Sets, not sketches: no error bound to state;
- evidence tallies are merged by key (packets and bytes added), then ranked as before.
What is not exact: a worker's flow table evicts (when it holds `flows.max_flows` flows)
by its own least recently seen flows, which are not those one table would evict; each
worker has the full `max_flows`, so this happens only past N times the flows of one table.

Processes, not threads: the numba kernels hold the GIL (they are compiled without
`nogil`), and the numpy glue around them would too.
"""

from __future__ import annotations

import json
import mmap
import os
import select
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from detector.capture.flows import FlowAnnotations, FlowTable, flow_shards
from detector.capture.windows import _kernels as kernels
from detector.capture.windows._base import Closing
from detector.capture.windows._ring import RingSlot, SharedArrays, new_slot_fd
from detector.capture.windows.packet import WindowAggregator, _key_ordered, _PacketWindowAcc, tally_rows, windows_of
from detector.contracts import PACKET_COLUMNS, PacketBatch, WindowBatch

_REPO_ROOT = Path(__file__).resolve().parents[3]

# ---------------------------------------------------------------------------- worker side


def _accumulate(accs: dict[int, _PacketWindowAcc], bins: int, bin_ns: int, b: PacketBatch, fl: FlowAnnotations,
                src_slot: np.ndarray, dst_slot: np.ndarray, src_home: np.ndarray, dst_home: np.ndarray,
                n_slots: int) -> None:
    """WindowAggregator._accumulate, on a worker's rows (slots found by the parent)."""
    abs_bin = b.ts_ns // bin_ns
    win = abs_bin // bins
    for w in windows_of(win):
        acc = accs.get(w)
        if acc is None:
            acc = accs[w] = _PacketWindowAcc(n_slots, bins, tally_rows(accs.values()))
        acc.fit(n_slots)
        acc.add(w, bins, win, abs_bin, b, fl, src_home, dst_home, src_slot, dst_slot)


def _in_use(tally: np.ndarray) -> np.ndarray:
    return tally[tally[:, kernels.PACKETS] != 0]


def _warm_up(bins: int, bin_ns: int) -> None:
    """Load the numba kernels now (from numba's cache, or compiled), not on the first batch."""
    one = PacketBatch(**{name: np.zeros(1, dtype=dtype) for name, dtype in PACKET_COLUMNS.items()})
    flows = FlowTable(max_flows=16).push(one)
    slot = np.zeros(1, dtype=np.int64)
    home = np.ones(1, dtype=np.bool_)
    _accumulate({}, bins, bin_ns, one, flows, slot, slot, home, home, 16)


class _Worker:
    """A capture worker's state: its flow table, its open windows' aggregates, and the batch
    of the last "flows" message (its rows of it: `mine`, copied out of the ring)."""

    def __init__(self, index: int, workers: int, ring: list[RingSlot], done: np.ndarray, taken_fd: int,
                 flow_kwargs: dict[str, Any], bins: int, bin_ns: int) -> None:
        self.index, self.workers, self.ring, self.done, self.taken_fd = index, workers, ring, done, taken_fd
        self.bins, self.bin_ns = bins, bin_ns
        self.table = FlowTable(**flow_kwargs)
        self.accs: dict[int, _PacketWindowAcc] = {}
        self.slot: RingSlot | None = None
        self.mine = np.zeros(0, dtype=np.int64)  # the rows of its flows in the ring slot's batch
        self.batch: PacketBatch | None = None
        self.flows: FlowAnnotations | None = None
        self.packets = 0

    def take_batch(self, seq: int, k: int, n: int, capacity: int, watermark_ns: int) -> None:
        """Batch `seq` is in ring slot k: its flows' rows through the flow table."""
        self.done[self.index] = seq - 1  # every message of the batch before has been handled
        os.eventfd_write(self.taken_fd, 1)  # wakes the parent if it waits for that batch's ring slot
        slot = self.slot = self.ring[k]
        if slot.capacity < capacity:
            slot.remap(capacity)
        whole = slot.batch(n)
        self.mine = np.flatnonzero(flow_shards(whole, self.workers) == self.index)
        self.batch = whole.take(self.mine)
        self.flows = self.table.push(self.batch, watermark_ns)
        self.packets += len(self.batch)

    def accumulate(self, a: int, b: int, kept: int, n_slots: int) -> None:
        """Rows a..b of the batch (all of them, or the `kept` listed in the ring's `rows`
        column from a on) into the open windows, with the entity slots the parent found."""
        assert self.slot is not None and self.batch is not None and self.flows is not None
        cols = self.slot.cols
        if kept == b - a:
            lo, hi = np.searchsorted(self.mine, (a, b)).tolist()
            sel: np.ndarray | slice = slice(lo, hi)
            rows = self.mine[lo:hi]
        else:
            wanted = cols["rows"][a : a + kept]
            pos = np.minimum(np.searchsorted(self.mine, wanted), max(len(self.mine) - 1, 0))
            sel = pos[self.mine[pos] == wanted] if len(self.mine) else pos[:0]
            rows = self.mine[sel]
        if not len(rows):
            return
        fl = self.flows
        _accumulate(self.accs, self.bins, self.bin_ns, self.batch.take(sel),
                    FlowAnnotations(fl.flow_id[sel], fl.new_flow[sel], fl.from_initiator[sel]),
                    cols["src_slot"][rows], cols["dst_slot"][rows], cols["src_home"][rows], cols["dst_home"][rows],
                    n_slots)


def worker_main(conn: Connection, index: int, workers: int, ring_fds: list[int], done_fd: int, taken_fd: int,
                reply_fd: int, flow_kwargs: dict[str, Any], bins: int, bin_ns: int) -> None:
    """One capture worker: messages from the parent, in order, until "stop" or EOF."""
    _warm_up(bins, bin_ns)
    ring = [RingSlot(fd, 0, create=False) for fd in ring_fds]
    done = np.frombuffer(mmap.mmap(done_fd, 8 * workers), dtype=np.int64)
    me = _Worker(index, workers, ring, done, taken_fd, flow_kwargs, bins, bin_ns)
    reply = SharedArrays(reply_fd)  # a window's aggregates, for the parent to merge
    conn.send(("ready",))
    busy_s = 0.0  # wall time spent on messages (not waiting for them)
    cpu0 = time.process_time()  # after the warm-up: CPU time on messages
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        started = time.perf_counter()
        kind = msg[0]
        if kind == "flows":
            me.take_batch(*msg[1:])
        elif kind == "acc":
            me.accumulate(*msg[1:])
        elif kind == "close":
            acc = me.accs.pop(msg[1], None)  # peers and ports in key order: the parent merges them in one pass
            conn.send(None if acc is None else reply.put([acc.sums, _key_ordered(acc.peers), _key_ordered(acc.ports), _in_use(acc.flows)]))
        elif kind == "stats":
            conn.send({**me.table.stats(), "packets": me.packets, "busy_s": busy_s + time.perf_counter() - started,
                       "cpu_s": time.process_time() - cpu0})
        elif kind == "stop":
            conn.close()
            return
        busy_s += time.perf_counter() - started


# ---------------------------------------------------------------------------- parent side

_RING_SLOTS = 4  # batches the parent may be ahead of the slowest worker
_OWED = object()  # a worker's answer to a close, not yet received
_RING_ROWS = 65536  # each slot's first capacity (grown for a larger batch)


class FlowShards:
    """N worker processes, each with its own flow table; the flow stage of a sharded run.

    `push(batch)` writes the batch into the ring (shared memory) and tells every worker;
    each takes the rows of its flows (flows.flow_shards) from there. The flow facts stay in
    the workers (they are used there, by the accumulators); what it returns only numbers the
    batch's rows (`flow_id` = row number; `new_flow`, `from_initiator` unset), so that the
    aggregator's cuts and late-packet filter say which rows each part holds. `stats()` sums
    the workers' flow tables; `worker_stats()` gives each one's."""

    def __init__(self, workers: int, flow_kwargs: dict[str, Any], bins: int, bin_s: float,
                 start_timeout_s: float = 120.0) -> None:
        if workers < 2:
            raise ValueError("FlowShards needs at least 2 workers")
        if _RING_SLOTS < 2:  # a worker marks a batch done when it takes the next: one slot would wait forever
            raise ValueError("the ring needs at least 2 slots")
        self.workers = workers
        self._conns: list[Connection] = []
        self._procs: list[subprocess.Popen] = []
        fds = [new_slot_fd() for _ in range(_RING_SLOTS + 1)]
        reply_fds = [new_slot_fd() for _ in range(workers)]
        self._taken = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(workers)]  # a worker took a batch
        self.replies = [SharedArrays(fd) for fd in reply_fds]
        self.ring = [RingSlot(fd, _RING_ROWS, create=True) for fd in fds[:-1]]
        os.ftruncate(fds[-1], 8 * workers)
        self._done = np.frombuffer(mmap.mmap(fds[-1], 8 * workers), dtype=np.int64)
        self._done[:] = -1
        self._seq = -1  # the last batch written
        # per worker, its answer to the "close" asked (the parts are in `replies`): _OWED until
        # taken; [] when no close is asked
        self._answers: list[Any] = []
        # A fresh interpreter per worker, not multiprocessing's fork (the parent may hold
        # torch's threads) nor its spawn (which imports the parent's __main__ again)
        spec = {"workers": workers, "ring_fds": fds[:-1], "done_fd": fds[-1], "taken_fds": self._taken, "reply_fds": reply_fds,
                "flow_kwargs": flow_kwargs, "bins": bins, "bin_ns": int(round(bin_s * 1e9))}
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")])))
        try:
            for k in range(workers):
                parent, child = socket.socketpair()
                proc = subprocess.Popen([sys.executable, "-m", "detector.capture.windows.sharded", str(child.fileno()),
                                         json.dumps({**spec, "index": k})],
                                        pass_fds=(child.fileno(), *fds, *reply_fds, self._taken[k]), env=env,
                                        stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL)
                child.close()
                self._conns.append(Connection(parent.detach()))
                self._procs.append(proc)
        finally:
            os.close(fds[-1])  # its map holds the memory; the workers have their own descriptors
        self._finalizer = weakref.finalize(self, _stop, self._conns, self._procs, fds[:-1] + reply_fds + self._taken)
        deadline = time.monotonic() + start_timeout_s
        for conn, proc in zip(self._conns, self._procs, strict=True):  # up, kernels loaded: then the first batch
            if not conn.poll(max(deadline - time.monotonic(), 0.001)):
                self.close()
                raise RuntimeError(f"a capture worker did not start within {start_timeout_s:.0f} s")
            try:
                conn.recv()
            except EOFError:
                self.close()
                raise RuntimeError(f"a capture worker exited at start (status {proc.wait(timeout=10)})") from None

    @property
    def conns(self) -> list[Connection]:
        return self._conns

    @property
    def slot(self) -> RingSlot:
        """The ring slot of the last batch pushed."""
        return self.ring[self._seq % _RING_SLOTS]

    def push(self, batch: PacketBatch) -> FlowAnnotations:
        n = len(batch)
        if n:
            self._seq += 1
            for k in range(self.workers):  # a worker still on the batch in the slot to be written: wait for it
                while self._done[k] < self._seq - _RING_SLOTS:
                    self._wait_taken(k)
            slot = self.slot
            slot.write(batch)
            msg = ("flows", self._seq, self._seq % _RING_SLOTS, n, slot.capacity, int(batch.ts_ns.max()))
            for conn in self._conns:
                conn.send(msg)
        return FlowAnnotations(np.arange(n, dtype=np.uint64), np.zeros(n, dtype=np.bool_), np.zeros(n, dtype=np.bool_))

    def _wait_taken(self, k: int) -> None:
        """Until worker k takes its next batch (from the ring: it is done with the one before),
        not until it has taken every batch sent: the workers keep their queue of batches. On
        its socket meanwhile: its answer to a close asked, or, if it exits, EOFError."""
        conn = self._conns[k]
        readable, _, _ = select.select([self._taken[k], conn], [], [])
        if conn in readable:
            if not (self._answers and self._answers[k] is _OWED):
                raise RuntimeError(f"capture worker {k} sent {conn.recv()!r} unasked")
            self._answers[k] = conn.recv()
        if self._taken[k] in readable:
            os.eventfd_read(self._taken[k])

    def request_close(self, w: int) -> None:
        """Ask every worker for window w's aggregates, and go on: `close_parts()` takes them.
        A worker answers once it has taken every batch sent before (messages are in order);
        one close is asked at a time (each worker has one reply memory)."""
        assert not self._answers, "the parts of the last close were not taken"
        for conn in self._conns:
            conn.send(("close", w))
        self._answers = [_OWED] * self.workers

    def close_ready(self) -> bool:
        """Every worker has answered the close asked (close_parts() will not wait)."""
        return bool(self._answers) and all(a is not _OWED or conn.poll() for a, conn in zip(self._answers, self._conns, strict=True))

    def close_parts(self) -> list[list[np.ndarray]]:
        """The asked window's aggregates from each worker that had any (waiting for them):
        views of the workers' reply memories, valid until the next request_close()."""
        self._take_answers()
        answers, self._answers = self._answers, []
        return [reply.get(*a) for reply, a in zip(self.replies, answers, strict=True) if a is not None]

    def _take_answers(self) -> None:
        """The answers to an outstanding close, before any other exchange with the workers."""
        for k, conn in enumerate(self._conns):
            if self._answers and self._answers[k] is _OWED:
                self._answers[k] = conn.recv()

    def worker_stats(self) -> list[dict[str, float]]:
        self._take_answers()
        for conn in self._conns:
            conn.send(("stats",))
        return [conn.recv() for conn in self._conns]

    def stats(self) -> dict[str, int]:
        per = self.worker_stats()
        keys = ("active_flows", "flows_created", "flows_ended", "flow_evictions")
        return {k: int(sum(s[k] for s in per)) for k in keys}

    def close(self) -> None:
        """Stop the workers (also done when this object is collected or at exit)."""
        self._finalizer()


def _stop(conns: list[Connection], procs: list[subprocess.Popen], fds: list[int]) -> None:
    for conn in conns:
        try:
            conn.send(("stop",))
        except OSError:  # that worker is gone already
            pass
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    for conn in conns:
        conn.close()
    for fd in fds:  # the ring's maps stay valid until their arrays go
        os.close(fd)


class _Touched:
    """The parent's stand-in for an open window's aggregates (the workers hold them): which
    entity slots have data in it, in `sums` as the base class reads it (expiry, shrinking)."""

    def __init__(self, n_slots: int) -> None:
        self.sums = np.zeros((max(n_slots, 16), 1, 1), dtype=np.uint8)

    def fit(self, n_slots: int) -> None:
        if self.sums.shape[0] < n_slots:
            grown = np.zeros((max(n_slots, 2 * self.sums.shape[0]), 1, 1), dtype=np.uint8)
            grown[: self.sums.shape[0]] = self.sums
            self.sums = grown


class ShardedWindowAggregator(WindowAggregator):
    """A WindowAggregator whose flows and accumulators are in capture workers (FlowShards):
    `push(batch, shards.push(batch))` as the one-process path, same windows."""

    def __init__(self, shards: FlowShards, home_net: list[str], **kwargs: Any) -> None:
        super().__init__(home_net, **kwargs)
        self.shards = shards
        self._pending: Closing | None = None  # the window closed last, waiting for the workers' aggregates

    def _new_acc(self, n_slots: int) -> Any:
        return _Touched(n_slots)

    def _accumulate(self, b: PacketBatch, fl: FlowAnnotations, abs_bin: np.ndarray, win: np.ndarray) -> None:
        src_home = self._home.contains(b.src_hi, b.src_lo)
        dst_home = self._home.contains(b.dst_hi, b.dst_lo)
        src_slot = self._slots_for(b.src_hi, b.src_lo, b.ts_ns, src_home)
        dst_slot = self._slots_for(b.dst_hi, b.dst_lo, b.ts_ns, dst_home)
        n_slots = len(self._slot_addr)
        windows = windows_of(win)
        for w in windows:
            touched = self._acc(w).sums
            touched[0] = 1
            here = (win == w) if len(windows) > 1 else True
            touched[src_slot[here & (src_slot >= 0)]] = 1
            touched[dst_slot[here & (dst_slot >= 0)]] = 1
        rows = fl.flow_id.astype(np.int64)  # row numbers in the batch FlowShards wrote
        start, stop = int(rows[0]), int(rows[-1]) + 1
        cols = self.shards.slot.cols
        where: slice | np.ndarray = slice(start, stop) if stop - start == rows.shape[0] else rows
        if isinstance(where, np.ndarray):  # late rows left out: the list of those kept
            cols["rows"][start : start + rows.shape[0]] = rows
        cols["src_slot"][where], cols["dst_slot"][where] = src_slot, dst_slot
        cols["src_home"][where], cols["dst_home"][where] = src_home, dst_home
        msg = ("acc", start, stop, rows.shape[0], n_slots)
        for conn in self.shards.conns:
            conn.send(msg)

    def stream(self, batch: PacketBatch, flows: FlowAnnotations) -> Iterator[WindowBatch]:
        yield from self._answered()
        yield from super().stream(batch, flows)
        yield from self._answered()

    def advance(self, now_ns: int) -> list[WindowBatch]:
        return super().advance(now_ns) + self._drained()

    def flush(self) -> list[WindowBatch]:
        return super().flush() + self._drained()

    def stop(self, owed_ns: int = 0) -> list[WindowBatch]:
        return super().stop(owed_ns) + self._drained()

    def _closed(self, w: int) -> Iterator[WindowBatch]:
        """Window w is closed: the entity side now (expiry, the entities it is for), the
        workers asked for its aggregates; its batch is built once they answer, while the
        parent reads on. The window before is built first (waiting for it if need be): the
        history takes the windows in order."""
        yield from self._drained()
        closing = self._closing(w)
        if closing.acc is None:  # no packets in it: nothing in the workers either
            yield from self._handed(closing)
            return
        self.shards.request_close(w)
        self._pending = closing

    def _answered(self) -> list[WindowBatch]:
        """The pending window's batch, if the workers have answered."""
        return self._drained() if self._pending is not None and self.shards.close_ready() else []

    def _drained(self) -> list[WindowBatch]:
        """The pending window's batch, waiting for the workers' answers."""
        if self._pending is None:
            return []
        closing, self._pending = self._pending, None
        closing.acc = self._merged(closing.slots)
        return self._handed(closing)

    def _merged(self, slots: int) -> _PacketWindowAcc:
        """The asked window's aggregates from every worker, merged (see the module docstring)."""
        parts = self.shards.close_parts()
        n_slots = max([slots] + [p[0].shape[0] for p in parts])
        acc = _PacketWindowAcc(n_slots, self.bins)
        acc.sums = np.zeros((n_slots, self.bins, len(self.SUMS)))
        for p in parts:
            acc.sums[: p[0].shape[0]] += p[0]
        words = kernels.seen_words(self.bins)
        acc.peers = _merged_rows([p[1] for p in parts], acc.peers, (kernels.PACKETS, kernels.PEER_BYTES), kernels.PEER_SEEN, words)
        acc.ports = _merged_rows([p[2] for p in parts], acc.ports, (kernels.PACKETS, kernels.PORT_TCP), kernels.PORT_SEEN, words)
        acc.flows = np.concatenate([p[3] for p in parts]) if parts else acc.flows  # a flow is in one worker only
        acc.distinct = np.zeros((n_slots, self.bins, len(self.DISTINCT)), dtype=np.int64)
        kernels.count_seen(acc.distinct, acc.peers, kernels.PEER_SLOT, kernels.PEER_SEEN, 0, self.bins)
        kernels.count_seen(acc.distinct, acc.ports, kernels.PORT_SLOT, kernels.PORT_SEEN, 2, self.bins)
        return acc


def _merged_rows(tables: list[np.ndarray], empty: np.ndarray, added: tuple[int, int], seen: int, words: int) -> np.ndarray:
    """The workers' rows of one tally (each in key order) as one tally's rows, in key order:
    one row per key (kernels.merge_sorted, a pair at a time); `empty`'s columns if none."""
    if not tables:
        return empty[:0]
    rows = np.array(tables[0])  # a copy: the workers' reply memories are written again
    for more in tables[1:]:
        rows = kernels.merge_sorted(rows, more, added[0], added[1], seen, words)
    return rows


if __name__ == "__main__":  # a worker: python -m detector.capture.windows.sharded FD SPEC
    from detector.logging import configure

    configure("info", "json", stream=sys.stderr)  # stdout is not ours
    _spec = json.loads(sys.argv[2])
    worker_main(Connection(int(sys.argv[1])), _spec["index"], _spec["workers"], _spec["ring_fds"], _spec["done_fd"],
                _spec["taken_fds"][_spec["index"]], _spec["reply_fds"][_spec["index"]], _spec["flow_kwargs"], _spec["bins"],
                _spec["bin_ns"])
    sys.stdout.flush()
    os._exit(0)  # nothing left to tidy: skip the interpreter's teardown (a second, on a loaded machine)
