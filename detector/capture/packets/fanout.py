"""Capture stage, live source with N capture workers: one interface read by N processes on
one AF_PACKET fanout group (PACKET_FANOUT_HASH), their batches merged into one stream.

Where this stands in the pipeline (`source.type: interface`, `source.workers: N > 1`)::

    interface ─► kernel fanout (symmetric flow hash) ─┬─► worker 0: LiveCapture + parse ─┐
                                                      └─► worker 1: LiveCapture + parse ─┴─► FanoutCapture ─► PacketBatch ─► ...

Each worker has its own ring (`buffer_mb` each) and parses its share of the frames: the
capture and parse, the part of a live pipeline that must keep up with the wire, run on N
cores. The kernel sends both directions of a flow to one socket (capture.packets.live), so
every flow's packets stay in their order. The parent takes what the workers have parsed,
orders it by capture time (what one socket would have handed over) and yields it as one
stream (a worker hands a batch over at least every `poll_s`, so the stream may step back
that much between batches: far less than the window stage's lateness); the flow tables and accumulators after it are split again by flow
(capture.windows.sharded), so windows equal those of one capture.

Drops and balance are counted per worker: frames received, kernel and interface drops (from
that worker's ring), and busy time (its CPU seconds: a worker waits in select() when idle,
so CPU time is the time it worked). `worker_stats()` gives them; the daemon exports them.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from detector.capture._channel import Channel
from detector.contracts import DnsAnswers, PacketBatch
from detector.errors import CaptureError

_REPO_ROOT = Path(__file__).resolve().parents[3]
# Batches a capture worker may hold for a busy parent before it stops reading its ring
# (each at most batch_packets rows, about 50 bytes a row: 64 x 3.3 MB at the default)
_MAX_QUEUED_BATCHES = 64


# ---------------------------------------------------------------------------- worker side
def worker_main(conn: Channel, spec: dict[str, Any]) -> int:
    """One capture worker: LiveCapture on the fanout group, each batch sent to the parent
    with the counters; stops on "stop" (or EOF). Sends are queued (Channel): the worker goes
    on draining its ring while the parent is busy, up to _MAX_QUEUED_BATCHES batches."""
    from detector.capture.packets.live import LiveCapture

    try:
        capture = LiveCapture(spec["interface"], snaplen=spec["snaplen"], buffer_mb=spec["buffer_mb"],
                              promisc=spec["promisc"], bpf=spec["bpf"], batch_packets=spec["batch_packets"],
                              poll_s=spec["poll_s"], fanout_group=spec["fanout_group"])
    except CaptureError as exc:
        conn.send(("failed", str(exc)))
        return 66
    conn.send(("ready", None))
    cpu0, wall0 = time.process_time(), time.monotonic()
    for batch in capture:
        if conn.poll():
            try:
                conn.recv()  # "stop"
            except EOFError:
                pass
            capture.stop = True
        stats = {**capture.stats(), "busy_s": time.process_time() - cpu0, "up_s": time.monotonic() - wall0}
        cols = batch.columns() if len(batch) else None
        answers = batch.answers.as_tuple() if len(batch.answers) else None
        try:
            conn.send(("batch", (cols, batch.malformed, batch.non_ip, answers), stats))
        except OSError:  # the parent is gone
            capture.stop = True
    conn.send(("finished", {**capture.stats(), "busy_s": time.process_time() - cpu0, "up_s": time.monotonic() - wall0}))
    return 0


# ---------------------------------------------------------------------------- parent side
class FanoutCapture:
    """Iterator of PacketBatch from N capture workers on one fanout group (module docstring).

    Like LiveCapture: `stop = True` ends the iteration within `poll_s`; an empty batch comes
    every `poll_s` while the link is idle; `stats()` sums the workers' counters;
    `worker_stats()` gives each one's. Raises CaptureError when a worker cannot open the
    interface."""

    def __init__(self, interface: str, workers: int, snaplen: int = 262144, buffer_mb: int = 64, promisc: bool = True,
                 bpf: str = "", batch_packets: int = 65536, poll_s: float = 0.2, fanout_group: int | None = None,
                 start_timeout_s: float = 60.0) -> None:
        if workers < 2:
            raise ValueError("FanoutCapture needs at least 2 workers (1 is LiveCapture)")
        self.interface = interface
        self.workers = workers
        self.poll_s = poll_s
        self.fanout_group = secrets.randbelow(1 << 16) if fanout_group is None else fanout_group
        self.stop = False
        self.packets = self.malformed = self.non_ip = 0
        spec = {"interface": interface, "snaplen": snaplen, "buffer_mb": buffer_mb, "promisc": promisc, "bpf": bpf,
                "batch_packets": batch_packets, "poll_s": poll_s, "fanout_group": self.fanout_group}
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")])))
        self._conns: list[Connection] = []
        self._procs: list[subprocess.Popen] = []
        self._stats: list[dict[str, float]] = [{} for _ in range(workers)]
        for _ in range(workers):
            parent, child = socket.socketpair()
            self._procs.append(subprocess.Popen(
                [sys.executable, "-m", "detector.capture.packets.fanout", str(child.fileno()), json.dumps(spec)],
                pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL))
            child.close()
            self._conns.append(Connection(parent.detach()))
        deadline = time.monotonic() + start_timeout_s
        for conn in self._conns:  # every worker in the group before a packet is counted
            if not conn.poll(max(deadline - time.monotonic(), 0.001)):
                self.close()
                raise CaptureError(f"interface {interface!r}: a capture worker did not start within {start_timeout_s:.0f} s")
            kind, detail = conn.recv()
            if kind == "failed":
                self.close()
                raise CaptureError(detail)

    def __iter__(self) -> Iterator[PacketBatch]:
        open_conns = list(self._conns)
        stopping = False
        try:
            while open_conns:
                if self.stop and not stopping:
                    stopping = True
                    for conn in open_conns:
                        conn.send(("stop",))
                parts: list[PacketBatch] = []
                for conn in wait(open_conns, timeout=self.poll_s):
                    while conn in open_conns and conn.poll():
                        if self._take(conn, parts):
                            open_conns.remove(conn)
                yield self._merged(parts)
        finally:
            self.close()

    def _take(self, conn: Connection, parts: list[PacketBatch]) -> bool:
        """One message of a worker into `parts`; True when that worker finished."""
        k = self._conns.index(conn)
        try:
            kind, body, *rest = conn.recv()
        except EOFError:
            return True
        if kind == "finished":
            self._stats[k] = body
            return True
        cols, malformed, non_ip, answers = body
        self._stats[k] = rest[0]
        batch = PacketBatch(**cols) if cols is not None else PacketBatch.empty()
        parts.append(PacketBatch(**batch.columns(), malformed=malformed, non_ip=non_ip,
                                 answers=DnsAnswers(*answers) if answers is not None else batch.answers))
        return False

    def _merged(self, parts: list[PacketBatch]) -> PacketBatch:
        """The workers' batches as one, in capture-time order (stable: a flow's packets,
        all from one worker, keep theirs)."""
        if not parts:
            return PacketBatch.empty()
        batch = parts[0] if len(parts) == 1 else PacketBatch.concat(parts)
        if len(parts) > 1:
            order = np.argsort(batch.ts_ns, kind="stable")
            batch = PacketBatch(**{k: v[order] for k, v in batch.columns().items()}, malformed=batch.malformed,
                                non_ip=batch.non_ip, answers=DnsAnswers.concat([p.answers for p in parts]))
        self.packets += len(batch)
        self.malformed += batch.malformed
        self.non_ip += batch.non_ip
        return batch

    def worker_stats(self) -> list[dict[str, float]]:
        """Per worker, as last reported: packets (frames), kernel_drops, interface_drops,
        malformed, non_ip, busy_s (CPU seconds), up_s."""
        return [dict(s) for s in self._stats]

    def stats(self) -> dict[str, int]:
        per = self.worker_stats()
        out = {k: int(sum(s.get(k, 0) for s in per)) for k in ("packets", "kernel_drops", "interface_drops")}
        lost = max((int(s.get("interface_lost", 0)) for s in per), default=0)  # every worker sees each loss
        return {**out, "interface_lost": lost, "malformed": self.malformed, "non_ip": self.non_ip}

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(("stop",))
            except OSError:
                pass
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for conn in self._conns:
            conn.close()


if __name__ == "__main__":  # a worker: python -m detector.capture.packets.fanout FD SPEC
    from detector.logging import configure

    configure("info", "json", stream=sys.stderr)  # stdout is not ours
    _channel = Channel(Connection(int(sys.argv[1])), max_queued=_MAX_QUEUED_BATCHES)
    _code = worker_main(_channel, json.loads(sys.argv[2]))
    _channel.close()
    sys.stdout.flush()
    os._exit(_code)
