"""Progress of the long offline steps (train, eval, synth, a replay with `netad score`) on a
terminal: one line on stderr, redrawn in place at most a few times a second, and nothing at
all when stderr is not a terminal (a pipe, a file, systemd's journal), so logs and data stay
clean.

Where it stands: shared, below the stages (like logging.py); the stages take a Progress (or
None) from the command that runs them. Tiny on purpose: a count, a total when one is known,
a rate and an ETA; tqdm would do more than this needs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TextIO, TypeVar

T = TypeVar("T")

_REDRAW_S = 0.2


class Progress:
    """`with Progress("score", unit="packets") as bar: bar.update(n)`; `total` when known
    (then a percentage and an ETA). `enabled` defaults to whether `stream` is a terminal."""

    def __init__(self, label: str, total: float | None = None, unit: str = "", *, stream: TextIO | None = None,
                 enabled: bool | None = None) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0.0
        self.note = ""
        self._start = self._drawn_at = time.monotonic()
        self._width = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def update(self, n: float = 1, note: str | None = None) -> None:
        """`n` more done; `note` (what is being done now) replaces the last one."""
        self.done += n
        if note is not None:
            self.note = note
        now = time.monotonic()
        if self.enabled and now - self._drawn_at >= _REDRAW_S:
            self._draw(now)

    def close(self) -> None:
        """The final state, then a newline: the line stays as the step's record."""
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
            self.enabled = False

    def line(self, now: float) -> str:
        elapsed_s = max(now - self._start, 1e-9)
        rate = self.done / elapsed_s
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            share = min(self.done / self.total, 1.0)
            eta = f", {(self.total - self.done) / rate:.0f} s left" if 0 < rate and share < 1 else ""
            text = f"{self.label}: {share:4.0%} {self.done:,.0f}/{self.total:,.0f}{unit}{eta}"
        else:
            text = f"{self.label}: {self.done:,.0f}{unit} ({rate:,.0f}/s)"
        return f"{text}  {self.note}".rstrip() + f" [{elapsed_s:.0f} s]"

    def _draw(self, now: float) -> None:
        text = self.line(now)
        self.stream.write("\r" + text + " " * max(0, self._width - len(text)))
        self.stream.flush()
        self._width, self._drawn_at = len(text), now


def tracked(batches: Iterable[T], bar: Progress) -> Iterator[T]:
    """The batches (anything with a length: packets, flow records) as they come, counted on
    `bar`, which is closed when they end."""
    try:
        for batch in batches:
            bar.update(len(batch))  # type: ignore[arg-type]
            yield batch
    finally:
        bar.close()
