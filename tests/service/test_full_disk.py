"""A full disk under the daemon's state directory: a daemon that runs for months meets one.

The daemon runs in a mount namespace of its own (unshare(1)) with its state directory on a
tmpfs of 1 MiB, filled but for 8 KiB before it starts: no checkpoint fits, nor any sink's
spool, nor the window scores. It must keep scoring, stop cleanly (exit 0, every stderr line
JSON), and lose no incident without saying which. A scores file there used to end the
daemon at its first window (exit 73), before that window's incidents, at every restart."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import can_unshare_mounts, on_a_full_disk
from tests.service._daemon import base_config, free_port, read_events, write_config


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.skipif(not can_unshare_mounts(), reason="needs root and unshare(1) for a private mount namespace")
def test_a_daemon_on_a_full_disk_keeps_scoring_stops_cleanly_and_names_every_incident_it_could_not_keep(
        tmp_path: Path, demo: dict):
    """The replay runs to its end. The checkpoints fail, each said in one line, the last one at
    shutdown too, where safetensors' own error used to end the daemon in a traceback (exit
    1) before its sinks were flushed. The syslog sink, whose collector is down, cannot spool
    what it holds (its spool is on the full disk) and keeps it in memory; as it stops, it
    tries the spool again and names, by event_id, every incident it could keep nowhere:
    exactly those the jsonl sink (on another disk) wrote."""
    state = tmp_path / "state"
    state.mkdir()
    incidents = tmp_path / "incidents.jsonl"
    # shutdown_timeout_s: the syslog sink, whose collector is down, holds its events until the
    # deadline; 4 s leave room to try its spool and name the lost, without the 20 s default
    cfg = base_config(tmp_path, demo["pcap"], demo["model"], source={"speed": 360.0}, state_dir=str(state),
                      service={"checkpoint_interval_s": 1, "shutdown_timeout_s": 4}, outputs={"scores": str(state / "scores.jsonl")},
                      sinks=[{"url": f"jsonl://{incidents}"}, {"url": f"syslog+tcp://127.0.0.1:{free_port()}"}])
    config = write_config(tmp_path / "netad.yaml", cfg)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_", "NETAD_"))}
    done = on_a_full_disk(state, [sys.executable, "-m", "detector.cli", "run", "-c", str(config)], leave_bytes=8192, env=env)
    lines = done.stderr.splitlines()
    assert 0 == done.returncode, "\n".join(lines[-20:])
    log = [json.loads(line) for line in lines]  # every line JSON: no traceback
    events = {e["event"] for e in log}
    assert "spool_write_failed" in events and "daemon_stopped" in events
    jobs = [e for e in log if e["event"] == "job_failed"]  # the scheduled checkpoints: a line each, no traceback
    assert jobs and all("checkpoint" == e["job"] and "No space left on device" in e["error"] and "exception" not in e
                        for e in jobs)
    failed = [e for e in log if e["event"] == "checkpoint_save_failed"]
    assert 1 == len(failed) and "No space left on device" in failed[0]["reason"]
    kept = [e["event"]["id"] for e in read_events(incidents)]
    assert kept, "the demo opens incidents"
    lost = [e for e in log if e["event"] == "sink_events_lost"]
    assert 1 == len(lost) and "error" == lost[0]["level"]
    assert sorted(kept) == sorted(lost[0]["event_ids"]) and len(kept) == lost[0]["events"]
    # the window scores on the full disk: dropped, said with the file, and never a cost to the incidents
    failed = [e for e in log if e["event"] == "scores_write_failed"]
    assert 1 == len(failed) and str(state / "scores.jsonl") == failed[0]["path"]
    dropped = [e for e in log if e["event"] == "scores_lines_dropped"]
    assert 1 == len(dropped) and "error" == dropped[0]["level"] and dropped[0]["lines"] > 0


_SCORES_ON_A_FULL_DISK = r"""
import json, os
from pathlib import Path
import structlog.testing
from detector.errors import OutputError
from detector.service.scoring import ScoresFile

disk = Path(os.environ["FULL_DISK"])
line = lambda i: json.dumps({"window": i, "pad": "x" * 1500}) + "\n"  # about 1.5 KB a line
with structlog.testing.capture_logs() as logs:
    scores = ScoresFile(disk / "scores.jsonl", append=False)
    for i in range(2):  # 3 KB: they fit in the page left
        scores.write(line(i))
    scores.flush()
    for i in range(2, 5):  # 4.5 KB: the page takes 1 KB of them, in part
        scores.write(line(i))
    scores.flush()
    os.truncate(disk / "filler", 0)  # the operator frees the disk
    scores.write(line(5))
    scores.flush()
    try:
        scores.close()
    except OutputError as exc:
        said = str(exc)
print(json.dumps({"logs": logs, "said": said, "lines": (disk / "scores.jsonl").read_text().splitlines()}))
"""


@pytest.mark.root
@pytest.mark.skipif(not can_unshare_mounts(), reason="needs root and unshare(1) for a private mount namespace")
def test_window_scores_the_disk_refuses_are_dropped_counted_and_never_left_in_part(tmp_path: Path):
    """A page of room: the first flush fits, the second is taken in part and cut off again, so
    the file stays whole JSON lines; once the disk has room the next lines are written, and
    the outage is said as it begins and as it ends, with the file and the lines it cost."""
    done = on_a_full_disk(tmp_path, [sys.executable, "-c", _SCORES_ON_A_FULL_DISK], leave_bytes=4096)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [json.loads(text)["window"] for text in out["lines"]] == [0, 1, 5]
    path = str(tmp_path / "scores.jsonl")
    assert [(e["event"], e["path"], e["lines_dropped"]) for e in out["logs"]] == [
        ("scores_write_failed", path, 3), ("scores_write_recovered", path, 3)]
    assert out["said"] == f"{path}: 3 window-score lines could not be written: No space left on device"
