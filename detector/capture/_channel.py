"""A connection from a capture worker to the parent whose sends are made by a thread of their own.

Used by a capture worker (capture.packets.fanout): it goes on draining its kernel ring while
the parent is busy, scoring a window for instance; a socket buffer holds far less than a
batch. (The flow workers of capture.windows.sharded need none: their batches travel in
shared memory, and their messages are a few hundred bytes.) Replies are read by the caller.
"""

from __future__ import annotations

import queue
import threading
from multiprocessing.connection import Connection
from typing import Any


class Channel:
    """`send` queues (blocking only when `max_queued` messages wait: then the sender holds
    back, and a capture worker's kernel ring absorbs the rest); `recv` reads directly."""

    def __init__(self, conn: Connection, max_queued: int = 0) -> None:
        self.conn = conn
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._send_all, name="netad-worker-sender", daemon=True)
        self._thread.start()

    def _send_all(self) -> None:
        while (msg := self._queue.get()) is not None:
            try:
                self.conn.send(msg)
            except OSError:  # the other end is gone: what it was sent is lost with it
                return

    def send(self, msg: Any) -> None:
        self._queue.put(msg)

    def poll(self, timeout_s: float = 0.0) -> bool:
        return self.conn.poll(timeout_s)

    def recv(self) -> Any:
        return self.conn.recv()

    def close(self) -> None:
        """Send what is queued, then close."""
        self._queue.put(None)
        self._thread.join(timeout=10)
        self.conn.close()
