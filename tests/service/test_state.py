"""Checkpoints and the state directory's lock."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from detector.service.state import (
    STATE_JSON,
    Checkpoint,
    CheckpointMeta,
    EntityStates,
    StateDirBusyError,
    load_checkpoint,
    lock_state_dir,
    save_checkpoint,
)


def _scorer_state(n: int) -> dict[str, EntityStates]:
    return {"host": EntityStates([f"10.0.0.{i}" for i in range(n)], torch.rand(n, 4), torch.rand(n, 4),
                                 list(range(n)), [i * 60_000_000_000 for i in range(n)])}


def test_checkpoint_round_trips_states_incidents_and_meta(tmp_path):
    states = _scorer_state(3)
    incidents = {"10.0.0.1": {"streak": 0, "streak_start_ns": 0, "incident": None}}
    save_checkpoint(tmp_path / "checkpoint", Checkpoint(states, incidents, CheckpointMeta(resume_ns=42)))
    back = load_checkpoint(tmp_path / "checkpoint")
    assert states["host"].entities == back.states["host"].entities
    assert torch.equal(states["host"].h, back.states["host"].h)
    assert incidents == back.incidents and 42 == back.meta.resume_ns


def test_checkpoint_round_trips_carried_evidence_and_loads_one_from_before_it(tmp_path):
    """What each entity carries into its next window (model.scorer) comes back; a checkpoint
    written before there was any loads with nothing carried."""
    states = _scorer_state(3)
    states["host"].carried = [0.0, 0.25, 0.5]
    save_checkpoint(tmp_path / "checkpoint", Checkpoint(states, {}, CheckpointMeta()))
    assert [0.0, 0.25, 0.5] == load_checkpoint(tmp_path / "checkpoint").states["host"].carried
    doc = json.loads((tmp_path / "checkpoint" / STATE_JSON).read_text())
    del doc["banks"]["host"]["carried"]
    (tmp_path / "checkpoint" / STATE_JSON).write_text(json.dumps(doc))
    old = load_checkpoint(tmp_path / "checkpoint").states["host"]
    assert old.carried is None and old.entities == states["host"].entities


def test_checkpoint_round_trips_the_peer_history(tmp_path):
    """The window stage's peer history (uint64 keys) comes back exactly; a checkpoint written
    without one reads as None (the daemon then warms its history up again)."""
    from detector.capture.windows._history import PeerHistory

    history = PeerHistory(3600, 0)
    u = np.uint64
    for t in range(1, 4):
        history.observe(np.array([1, 2], u), (np.array([0, 1]), np.zeros(2, u), np.array([7, 8 + t], u)),
                        (np.array([0]), np.array([6], u), np.zeros(1, u), np.ones(1, u), np.zeros(1, u), np.array([7], u),
                         np.array([40000 + t], u), np.array([443], u)), t * 60_000_000_000)
    save_checkpoint(tmp_path / "checkpoint", Checkpoint(_scorer_state(1), {}, CheckpointMeta(), history=history.state_dict()))
    back = load_checkpoint(tmp_path / "checkpoint").history
    assert back.keys() == history.state_dict().keys()
    assert all(np.array_equal(v, back[k]) and v.dtype == back[k].dtype for k, v in history.state_dict().items())
    save_checkpoint(tmp_path / "old", Checkpoint(_scorer_state(1), {}, CheckpointMeta()))
    assert load_checkpoint(tmp_path / "old").history is None


def test_checkpoint_round_trips_what_was_counted_of_long_connections(tmp_path):
    """A conn.log reader's LongConnections comes back whole, uids of any length and order
    kept; one that cannot be read back is refused with the reason, and the ledger it was to
    fill is left as it was; a checkpoint written without one reads as None."""
    from detector.capture.flowrecords.zeeklog import LongConnections

    ledger = LongConnections()
    ledger.open.update({b"CHhAvVGS1DHFjwGM9": (5 * 10**18, 1, 2, 3, 4), b"C1": (7, 0, 0, 10**12, 0)})
    ledger.ended.update(dict.fromkeys([b"Cq", b"CmES5u32sYpV7JYN"]))
    save_checkpoint(tmp_path / "checkpoint", Checkpoint(_scorer_state(1), {}, CheckpointMeta(), long_connections=ledger.state_dict()))
    back = LongConnections()
    back.load_state_dict(load_checkpoint(tmp_path / "checkpoint").long_connections)
    assert list(ledger.open.items()) == list(back.open.items()) and list(ledger.ended) == list(back.ended)
    bad = {**ledger.state_dict(), "open.totals": np.zeros((2, 3), np.int64)}
    with pytest.raises(ValueError, match="wrong shape"):
        back.load_state_dict(bad)
    with pytest.raises(ValueError, match="ended.uid missing"):
        back.load_state_dict({k: v for k, v in ledger.state_dict().items() if k != "ended.uid"})
    with pytest.raises(ValueError, match="repeated uid"):
        back.load_state_dict({**ledger.state_dict(), "open.uid": np.zeros((2, 3), np.uint8) + 67})
    assert list(ledger.open.items()) == list(back.open.items())
    save_checkpoint(tmp_path / "old", Checkpoint(_scorer_state(1), {}, CheckpointMeta()))
    assert load_checkpoint(tmp_path / "old").long_connections is None


def test_a_crash_between_the_two_renames_leaves_the_old_checkpoint_usable(tmp_path):
    save_checkpoint(tmp_path / "checkpoint", Checkpoint(_scorer_state(2), {}, CheckpointMeta(resume_ns=1)))
    os.rename(tmp_path / "checkpoint", tmp_path / ".checkpoint.old")  # as if killed right after it
    assert 1 == load_checkpoint(tmp_path / "checkpoint").meta.resume_ns
    assert load_checkpoint(tmp_path / "elsewhere") is None


def test_one_daemon_per_state_directory(tmp_path):
    fd = lock_state_dir(tmp_path / "state")
    try:
        with pytest.raises(StateDirBusyError, match=f"pid {os.getpid()}"):
            lock_state_dir(tmp_path / "state")
    finally:
        os.close(fd)
    os.close(lock_state_dir(tmp_path / "state"))  # released with the descriptor
