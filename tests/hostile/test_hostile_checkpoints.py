"""Damaged checkpoints (tests/hostile/_hostile.py: BAD_CHECKPOINTS, every kind): the daemon
moves the checkpoint aside (`checkpoint.bad-<UTC time>`, kept for a post-mortem), logs a
warning that says why, and starts fresh, instead of refusing to start or crashing; and a
checkpoint's files reach the disk before the rename that publishes them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from detector.errors import CheckpointError
from detector.service import state as state_module
from detector.service.daemon import CHECKPOINT_DIR
from detector.service.state import (
    STATE_JSON,
    STATE_TENSORS,
    Checkpoint,
    CheckpointMeta,
    EntityStates,
    load_checkpoint,
    move_aside,
    save_checkpoint,
)
from tests.hostile._hostile import BAD_CHECKPOINTS, BadCheckpoint, assert_no_traceback, damaged_copy
from tests.service._daemon import DaemonProcess, base_config, write_config


def _states(n: int, hidden: int = 4) -> dict[str, EntityStates]:
    return {"host": EntityStates([f"10.20.0.{i}" for i in range(n)], torch.rand(n, hidden), torch.rand(n, hidden),
                                 [1] * n, [60_000_000_000] * n)}


@pytest.fixture
def synthetic_state(tmp_path: Path) -> Path:
    """A state directory with a checkpoint of three hosts written by save_checkpoint."""
    incidents = {"10.20.0.1": {"streak": 0, "streak_start_ns": 0, "incident": None}}
    save_checkpoint(tmp_path / "state" / CHECKPOINT_DIR, Checkpoint(_states(3), incidents, CheckpointMeta(resume_ns=1)))
    return tmp_path / "state"


@pytest.mark.parametrize("case", [c for c in BAD_CHECKPOINTS if not c.on_restore], ids=lambda c: c.kind)
def test_every_structurally_bad_checkpoint_is_a_checkpoint_error(tmp_path: Path, synthetic_state: Path, case: BadCheckpoint):
    bad = damaged_copy(synthetic_state, tmp_path / "copy", case)
    with pytest.raises(CheckpointError, match=case.reason.replace("(", r"\(")):
        load_checkpoint(bad / CHECKPOINT_DIR)


def test_a_good_checkpoint_still_loads(synthetic_state: Path):
    back = load_checkpoint(synthetic_state / CHECKPOINT_DIR)
    assert back is not None and 3 == back.entities and synthetic_state / CHECKPOINT_DIR == back.path


def test_move_aside_keeps_the_files_under_a_dated_name(synthetic_state: Path):
    directory = synthetic_state / CHECKPOINT_DIR
    first = move_aside(directory)
    save_checkpoint(directory, Checkpoint(_states(1), {}))
    second = move_aside(directory)  # the same second: a second name, nothing overwritten
    assert first != second and first.name.startswith("checkpoint.bad-") and second.name.startswith("checkpoint.bad-")
    assert (first / STATE_JSON).is_file() and (second / STATE_JSON).is_file() and not directory.exists()


def test_every_file_is_fsynced_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Both files and the temporary directory reach the disk before the rename that makes
    them the checkpoint (a power cut after it must not leave an empty hidden.safetensors)."""
    calls: list[tuple[str, str]] = []
    fsync, rename = os.fsync, os.rename

    def recording_fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_rename(src, dst) -> None:
        calls.append(("rename", str(src)))
        rename(src, dst)

    monkeypatch.setattr(state_module.os, "fsync", recording_fsync)
    monkeypatch.setattr(state_module.os, "rename", recording_rename)
    save_checkpoint(tmp_path / CHECKPOINT_DIR, Checkpoint(_states(2), {}))
    publish = next(i for i, (what, path) in enumerate(calls) if what == "rename" and Path(path).name.startswith(f".{CHECKPOINT_DIR}."))
    tmp = calls[publish][1]
    synced = {path for what, path in calls[:publish] if what == "fsync"}
    assert {tmp, f"{tmp}/{STATE_JSON}", f"{tmp}/{STATE_TENSORS}"} <= synced


# ------------------------------------------------------------------------ the daemon
@pytest.fixture(scope="module")
def real_state(demo: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A state directory with the checkpoint a real daemon wrote midway through the demo
    replay (SIGTERM: hidden states of every entity, open incidents, where to resume)."""
    directory = tmp_path_factory.mktemp("real-state")
    cfg = base_config(directory, demo["pcap"], demo["model"], service={"checkpoint_interval_s": 0.5})
    config = write_config(directory / "netad.yaml", cfg)
    d = DaemonProcess(config)
    try:
        d.log.wait_for(lambda r: r.get("event") == "checkpoint_saved" and r["entities"] > 5, timeout_s=90, what="a checkpoint")
        d.signal(signal.SIGTERM)
        assert 0 == d.wait(timeout_s=30)
    finally:
        d.kill()
    doc = json.loads((directory / "state" / CHECKPOINT_DIR / STATE_JSON).read_text())
    assert doc["meta"]["replay_complete"] is False and doc["banks"]["host"]["entities"]
    return {"state": directory / "state", "config": cfg}


# A daemon per kind costs seconds. Every structural kind is a CheckpointError of
# load_checkpoint (tested above), and the daemon handles every CheckpointError on one path,
# so the daemon is shown a few of those (a damaged JSON, damaged tensors, the crash between
# the renames) and every kind found only when the states meet the model.
AT_START_UP = {"state.json not JSON", "tensors damaged", "a crash between the renames left a damaged old one"}


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in BAD_CHECKPOINTS if c.on_restore or c.kind in AT_START_UP], ids=lambda c: c.kind)
def test_the_daemon_moves_a_bad_checkpoint_aside_and_starts_fresh(tmp_path: Path, real_state: dict, case: BadCheckpoint):
    state = damaged_copy(real_state["state"], tmp_path / "state", case)
    config = write_config(tmp_path / "netad.yaml", {**real_state["config"], "state_dir": str(state)})
    d = DaemonProcess(config)
    try:
        _, warned = d.wait_log("checkpoint_moved_aside", timeout_s=60)
        _, started = d.wait_log("daemon_started", timeout_s=60)
        assert "warning" == warned["level"] and case.reason in warned["reason"], warned
        assert not d.events("checkpoint_restored")  # fresh: nothing of it was kept
        moved = Path(warned["moved_to"])
        assert moved.parent == state and moved.name.split(".bad-")[0] in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old")
        assert any(moved.iterdir()), "the damaged files were not kept"
        d.signal(signal.SIGTERM)
        assert 0 == d.wait(timeout_s=30)
    finally:
        d.kill()
    assert_no_traceback("".join(d.stderr), "".join(d.other_stdout), "\n".join(json.dumps(r) for r in d.log.snapshot()))
    assert load_checkpoint(state / CHECKPOINT_DIR) is not None  # the fresh run's own checkpoint
    shutil.rmtree(state)
