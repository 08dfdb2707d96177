"""The incident page's score history (service.explain.history): bounded in time and memory,
oldest overwritten first, saved and restored, and what it costs with 50,000 hosts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detector.service.explain import history as H
from detector.service.explain.history import CHUNK_ROWS, ROW_BYTES, ScoreHistory

FEATURES = ("syn_out", "rst_in", "flows_out")
MiB = 2**20


def _add(h: ScoreHistory, minute: int, entities: list[str], scope: str = "s1", score: float | None = None) -> None:
    n = len(entities)
    scores = np.full(n, float(minute) if score is None else score, np.float32)
    h.add((1_700_000_000 + 60 * minute) * 10**9, scope, entities, scores, np.full(n, 2.0, np.float32), scores > 2,
          np.ones(n, bool), np.zeros(n, np.int64), scores, np.zeros(n, np.float32))


def test_an_entitys_rows_come_back_oldest_first_within_the_horizon():
    """series(): one entity's windows in time order; rows older than history_s before the
    newest are not shown; scopes (sensors) keep their entities apart."""
    h = ScoreHistory(history_s=600, max_bytes=8 * MiB, features=FEATURES, units=("packets",) * 3)
    for minute in range(30):
        _add(h, minute, ["global", "10.0.0.1", "10.0.0.2"])
    _add(h, 29, ["10.0.0.1"], scope="s2", score=99.0)
    s = h.series("s1", "10.0.0.1")
    assert list(range(20, 30)) == s.score.astype(int).tolist()  # 600 s: the last 10 windows (and the newest's own)
    assert ["syn_out"] * 10 == s.top
    assert [99.0] == h.series("s2", "10.0.0.1").score.tolist()
    assert 0 == len(h.series("s1", "10.9.9.9"))


def test_the_memory_cap_holds_and_the_oldest_rows_go_first():
    """At the cap the ring turns: memory stays within max_bytes and each entity keeps its
    newest windows."""
    h = ScoreHistory(history_s=1e9, max_bytes=3 * CHUNK_ROWS * ROW_BYTES + 1_200_000, features=FEATURES, units=("packets",) * 3)
    hosts = [f"10.0.{i // 256}.{i % 256}" for i in range(5000)]
    for minute in range(200):
        _add(h, minute, hosts)
        assert h.nbytes() <= h.max_bytes
    s = h.series("s1", hosts[17])
    assert 3 * CHUNK_ROWS // 5000 - 1 <= len(s) <= 3 * CHUNK_ROWS // 5000 + 1
    assert 199 == int(s.score[-1]) and (np.diff(s.end_s.astype(np.int64)) == 60).all()


def test_names_no_row_uses_are_forgotten():
    """Hosts come and go (DHCP, spoofing): the table of names is compacted to what the rows use."""
    h = ScoreHistory(history_s=1e9, max_bytes=CHUNK_ROWS * ROW_BYTES + 600_000, features=FEATURES, units=("packets",) * 3)
    for minute in range(40):
        _add(h, minute, [f"10.{minute}.{i // 256}.{i % 256}" for i in range(2000)])
    assert h.nbytes() <= h.max_bytes
    assert len(h._names) <= 2 * (CHUNK_ROWS // 2000 + 2) * 2000


def test_save_and_restore_round_trip_and_a_resumed_replay_drops_what_comes_again(tmp_path: Path):
    """save() writes the rows within the horizon (npz, no pickles); restore() appends them,
    cut at a replay's resume point; another feature schema is refused."""
    h = ScoreHistory(history_s=1e9, max_bytes=8 * MiB, features=FEATURES, units=("packets",) * 3, bin_s=10)
    for minute in range(50):
        _add(h, minute, ["global", "10.0.0.1"])
    path = tmp_path / "history.npz"
    assert 100 == h.save(path)
    back = ScoreHistory(history_s=1e9, max_bytes=8 * MiB, features=FEATURES, units=("packets",) * 3)
    assert 60 == back.restore(path, until_s=1_700_000_000 + 60 * 29)
    assert list(range(30)) == back.series("s1", "10.0.0.1").score.astype(int).tolist()
    loaded = ScoreHistory.from_file(path)
    assert 10.0 == loaded.bin_s and 50 == len(loaded.series("s1", "global"))
    with pytest.raises(ValueError, match="another feature schema"):
        ScoreHistory(1e9, 8 * MiB, ("pkts_out",), ("packets",)).restore(path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises((ValueError, OSError)):
        back.restore(tmp_path / "junk.npz")


def test_with_50000_hosts_the_history_costs_what_the_readme_says():
    """The README's figure, measured: 50,000 hosts and the link, a window a minute for 140
    minutes, in the default cap of 128 MiB: the rows and the names (traced by tracemalloc) stay
    within the cap, and the last 94 minutes are kept."""
    m = H.measure(hosts=50_000, windows=140, max_bytes=128 * MiB)
    assert m["traced_bytes"] <= 128 * MiB
    assert m["nbytes"] <= 128 * MiB
    assert 90 <= m["minutes_kept"] <= 98


@pytest.mark.parametrize("damage", ["cut in half", "cut after its first bytes", "empty", "a block zeroed"])
def test_a_damaged_history_file_is_a_value_error_the_daemon_and_explain_take_as_unusable(tmp_path: Path, damage: str):
    """A bad block or a file cut short raises what np.load raises for a broken zip
    (BadZipFile, EOFError); the daemon's restore and `netad explain` take a ValueError as "not
    used, start fresh". Before, the daemon that restored such a file exited 1, at every
    restart systemd made (probed: rc 1, a BadZipFile traceback)."""
    h = ScoreHistory(history_s=1e9, max_bytes=8 * MiB, features=FEATURES, units=("packets",) * 3, bin_s=10)
    for minute in range(50):
        _add(h, minute, ["global", "10.0.0.1"])
    path = tmp_path / "history.npz"
    h.save(path)
    data = bytearray(path.read_bytes())
    damaged = {"cut in half": data[: len(data) // 2], "cut after its first bytes": data[:30], "empty": b"",
               "a block zeroed": data[:64] + bytes(512) + data[576:]}[damage]
    path.write_bytes(bytes(damaged))
    back = ScoreHistory(history_s=1e9, max_bytes=8 * MiB, features=FEATURES, units=("packets",) * 3)
    with pytest.raises(ValueError):
        back.restore(path)
    with pytest.raises(ValueError):
        ScoreHistory.from_file(path)
