"""The window-score file (`outputs.scores`) under an outside logrotate: the daemon flushes
it every second for as long as it runs, so a file moved away or deleted must not take the
scores with it."""

from __future__ import annotations

import json
from pathlib import Path

from detector.service.scoring import ScoresFile


def _line(window: int) -> str:
    return json.dumps({"window": window, "entity": "10.0.0.1"}) + "\n"


def _windows(path: Path) -> list[int]:
    return [json.loads(text)["window"] for text in path.read_text().splitlines()]


def test_a_file_moved_away_or_deleted_is_followed_by_a_new_one_at_the_path(tmp_path: Path):
    """Moved away (logrotate without copytruncate), then deleted (rotate 0): each time the
    next flush writes a new file at the path, and every line is in one file, in order.
    Before, the lines went on into the moved file, and after a deletion into no file at all."""
    path = tmp_path / "scores.jsonl"
    scores = ScoresFile(path, append=True)
    for window in (0, 1):
        scores.write(_line(window))
    scores.flush()
    path.rename(tmp_path / "scores.jsonl.1")
    for window in (2, 3):
        scores.write(_line(window))
    scores.flush()
    path.unlink()
    scores.write(_line(4))
    scores.close()
    assert [0, 1] == _windows(tmp_path / "scores.jsonl.1")
    assert [4] == _windows(path)  # 2 and 3 went into the file logrotate then deleted, as they must
    assert 0 == scores.lines_dropped
