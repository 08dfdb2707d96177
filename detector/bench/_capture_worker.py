"""A live capture in its own process, driven over a pipe: the receiving end of the veth
wire in `netad bench live` and in the live-capture test.

Child side (`python -m detector.bench._capture_worker --interface IF ...`, started inside
the namespace with `ip netns exec`): opens a LiveCapture (with `--workers N > 1`: a
FanoutCapture of N capture workers) and, with `--stages pipeline`, pushes every batch
through the clock, flow table(s) and window aggregator as service.pipeline wires them
(`build_windowing`, N flow workers too). It writes
one JSON object per line on stdout:

- `{"event": "ready"}` once the handle is active (start replaying after this, not before);
- `{"event": "idle", ...counters}` each time traffic stops for `--idle-s` seconds after
  packets arrived: the sender's burst has been read and processed in full;
- `{"event": "finished", ...counters}` after SIGTERM/SIGINT or `--max-s`; with `--out`,
  every captured row is saved first (numpy .npz of the PacketBatch columns);
- `{"event": "failed", "error": ...}` when the capture cannot be opened.

Parent side: `CaptureWorker` starts the child, waits for those lines, stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------- child side
def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detector.bench._capture_worker")
    parser.add_argument("--interface", required=True)
    parser.add_argument("--stages", choices=("capture", "pipeline"), default="capture")
    parser.add_argument("--home-net", action="append", default=[])
    parser.add_argument("--out", type=Path, default=None, help="save the captured rows here (.npz)")
    parser.add_argument("--idle-s", type=float, default=1.0)
    parser.add_argument("--max-s", type=float, default=600.0)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    parser.add_argument("--buffer-mb", type=int, default=64)
    parser.add_argument("--batch-packets", type=int, default=65536)
    parser.add_argument("--workers", type=int, default=1,
                        help="capture workers on one fanout group, and as many flow workers (source.workers)")
    args = parser.parse_args(argv)

    from detector.logging import configure

    configure("info", "json", stream=sys.stderr)  # stdout carries the protocol above
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})

    from detector.capture.packets.fanout import FanoutCapture
    from detector.capture.packets.live import LiveCapture
    from detector.contracts import PacketBatch
    from detector.errors import CaptureError

    stages = None
    if args.stages == "pipeline":
        from detector.config import Config
        from detector.service.pipeline import build_windowing

        cfg = Config(home_net=args.home_net) if args.home_net else Config()
        stages = build_windowing(cfg, workers=args.workers)
        stages.worker_stats()  # the flow workers are up
    capture: LiveCapture | FanoutCapture
    try:
        if args.workers > 1:
            capture = FanoutCapture(args.interface, args.workers, buffer_mb=args.buffer_mb, batch_packets=args.batch_packets)
        else:
            capture = LiveCapture(args.interface, buffer_mb=args.buffer_mb, batch_packets=args.batch_packets)
    except CaptureError as exc:
        _emit("failed", error=str(exc))
        return 66

    def on_signal(_signum: int, _frame: Any) -> None:
        capture.stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    kept: list[PacketBatch] = []
    rows = windows_closed = 0
    # Time in the stages after the capture since the last idle line: the total, and the
    # longest single batch (a stall the kernel ring must absorb).
    stages_s = longest_stage_s = 0.0
    started = time.monotonic()
    last_packet_s: float | None = None  # monotonic time of the last non-empty read
    def workers() -> dict[str, Any]:
        """CPU seconds of this process; per capture worker and flow worker, their counters."""
        return {"cpu_s": round(time.process_time(), 3),
                "capture_workers": capture.worker_stats() if isinstance(capture, FanoutCapture) else [],
                "flow_workers": stages.worker_stats() if stages is not None else []}

    _emit("ready", pid=os.getpid(), **workers())  # the baseline of the first step's CPU and busy seconds
    for batch in capture:
        now = time.monotonic()
        if len(batch) or batch.malformed or batch.non_ip:
            last_packet_s = now
            rows += len(batch)
            if args.out is not None:
                kept.append(batch)
            if stages is not None:
                windows_closed += sum(1 for _ in stages.push(batch))
                took = time.monotonic() - now
                stages_s += took
                longest_stage_s = max(longest_stage_s, took)
        elif last_packet_s is not None and now - last_packet_s >= args.idle_s:
            _emit("idle", rows=rows, windows=windows_closed, stages_s=round(stages_s, 3),
                  longest_stage_ms=round(longest_stage_s * 1000, 1), **capture.stats(), **workers())
            last_packet_s = None
            stages_s = longest_stage_s = 0.0
        elif stages is not None:
            windows_closed += len(stages.windows.advance(time.time_ns()))  # a quiet link: close on the clock
            took = time.monotonic() - now
            stages_s += took
            longest_stage_s = max(longest_stage_s, took)
        if now - started >= args.max_s:
            capture.stop = True
    if args.out is not None:
        import numpy as np

        everything = PacketBatch.concat(kept)
        np.savez(args.out, malformed=everything.malformed, non_ip=everything.non_ip, **everything.columns())
    _emit("finished", rows=rows, windows=windows_closed, seconds=round(time.monotonic() - started, 3), **capture.stats(),
          **workers())
    if stages is not None:
        stages.close()
    return 0


# ------------------------------------------------------------------------ parent side
class CaptureWorker:
    """The child above, started with `prefix_argv` (e.g. `ip netns exec NS`) in front."""

    def __init__(self, prefix_argv: list[str], interface: str, *, stages: str = "capture",
                 home_net: list[str] | None = None, out: Path | None = None, idle_s: float = 1.0,
                 max_s: float = 600.0, cpu: int | None = None, buffer_mb: int = 64, workers: int = 1) -> None:
        argv = [*prefix_argv, sys.executable, "-m", "detector.bench._capture_worker", "--interface", interface,
                "--stages", stages, "--idle-s", str(idle_s), "--max-s", str(max_s), "--buffer-mb", str(buffer_mb),
                "--workers", str(workers)]
        for net in home_net or []:
            argv += ["--home-net", net]
        if out is not None:
            argv += ["--out", str(out)]
        if cpu is not None:
            argv += ["--cpu", str(cpu)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")])))
        # stderr (the child's log lines) goes to a file: a pipe nobody reads would fill up
        # and stall the capture.
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read_lines, name="capture-worker-stdout", daemon=True)
        self._reader.start()

    def _read_lines(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)  # end of output: the child exited

    def wait_for(self, event: str, timeout_s: float) -> dict[str, Any]:
        """The next line of this event (others are skipped); RuntimeError on a timeout, a
        failure line or the child's exit."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise RuntimeError(f"capture worker: no {event!r} within {timeout_s:.0f} s") from None
            if line is None:
                self._lines.put(None)
                self.proc.wait(timeout=10)
                raise RuntimeError(f"capture worker exited ({self.proc.returncode}) before {event!r}: {self.stderr_tail()}")
            msg = json.loads(line)
            if msg["event"] == "failed":
                raise RuntimeError(f"capture worker: {msg['error']}")
            if msg["event"] == event:
                return msg

    def finish(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Stop the capture (SIGTERM) and return its final counters."""
        self.proc.send_signal(signal.SIGTERM)
        msg = self.wait_for("finished", timeout_s)
        self.proc.wait(timeout=timeout_s)
        return msg

    def stderr_tail(self, chars: int = 2000) -> str:
        """The end of what the child logged (its structlog lines)."""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()[-chars:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> CaptureWorker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(_main())
