"""Progress on a terminal only (detector/progress.py): drawn on stderr when it is a tty,
nothing when it is a pipe; `netad synth` through a real pseudo-terminal."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from pathlib import Path

from detector.progress import Progress, tracked
from tests.conftest import REPO


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_is_drawn_on_a_terminal_and_nothing_on_a_pipe() -> None:
    """On a terminal: the count, the share of the total, one line redrawn with CR and ended
    by a newline. Not on a terminal (a pipe, a file, the journal): not one byte."""
    terminal, pipe = _Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        with Progress("train host", total=30, unit="epochs", stream=stream) as bar:
            for _ in range(12):
                bar.update(1, note="validation 0.0123")
    assert "" == pipe.getvalue()
    text = terminal.getvalue()
    assert text.startswith("\r") and text.endswith("\n") and "\n" not in text[:-1]
    assert "train host:  40% 12/30 epochs" in text.rsplit("\r", 1)[-1]
    assert "validation 0.0123" in text


def test_tracked_counts_every_item_and_closes_the_bar() -> None:
    terminal = _Terminal()
    bar = Progress("score", unit="packets", stream=terminal)
    assert [[1, 2], [3]] == list(tracked([[1, 2], [3]], bar))
    assert 3 == bar.done and not bar.enabled
    assert "score: 3 packets" in terminal.getvalue()


def test_netad_synth_shows_its_steps_on_a_terminal_and_not_in_a_pipe(tmp_path: Path) -> None:
    """A real `netad synth` with stderr on a pseudo-terminal shows its bar there; with stderr
    piped (every other test) it writes none, and stdout holds only its report either way."""
    args = [sys.executable, "-m", "detector.cli", "synth", "--out", str(tmp_path / "a.pcap"), "--benign-s", "120", "--attack-s", "0",
            "--hosts", "3"]
    controller, terminal = pty.openpty()
    try:
        run = subprocess.run(args, stdout=subprocess.PIPE, stderr=terminal, cwd=REPO, timeout=120)
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
    assert 0 == run.returncode
    assert b"synth: 100% 4/4 steps" in shown and b"written to" in shown
    assert run.stdout.startswith(b"wrote ") and b"synth:" not in run.stdout
    piped = subprocess.run(args, capture_output=True, cwd=REPO, timeout=120)
    assert 0 == piped.returncode and b"synth:" not in piped.stderr
