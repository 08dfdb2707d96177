"""Shared fixtures: the real captures in ../shared/data and a small packet-batch builder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from detector.contracts import PACKET_COLUMNS, PacketBatch, addr_to_pair

# The property tests draw the same examples on every run of `make test` ("repeatable"), so
# that CI passes or fails on the code, not on the draw; `make fuzz` draws new ones each run,
# where new findings belong. A finding becomes an @example on its test.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("fuzz", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file from ../shared/data, or skip: a user's fresh clone does not have that folder."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"../shared/data/{relative} not present (fresh clone without the shared captures; CI has them)")
    return path


def can_unshare_mounts() -> bool:
    """Whether this process may make a private mount namespace (root and unshare(1)): the
    tests that mount a read-only or a full file system do it there, not on this machine."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return 0 == subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True).returncode


_FULL_DISK = """
set -e
mount -t tmpfs -o size=1m tmpfs "$FULL_DISK"
dd if=/dev/zero of="$FULL_DISK/filler" bs=4k 2>/dev/null || true
truncate -s "-$FULL_DISK_LEAVE" "$FULL_DISK/filler"
exec "$@"
"""


def on_a_full_disk(directory: Path, argv: list[str], leave_bytes: int = 0, env: dict[str, str] | None = None,
                   timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """`argv` run in a mount namespace of its own (can_unshare_mounts) with a 1 MiB tmpfs on
    `directory`, filled but for `leave_bytes`: a full disk there, and only for that process."""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", _FULL_DISK, "sh", *argv],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout_s,
                          env={**(os.environ if env is None else env), "FULL_DISK": str(directory),
                               "FULL_DISK_LEAVE": str(leave_bytes)})


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present (fresh clone without the shared captures; CI has them)")
    return SHARED_DATA


def make_batch(rows: list[dict]) -> PacketBatch:
    """A PacketBatch from dicts: ts_s, src, dst, sport, dport, proto, flags, ip_len."""
    cols: dict[str, list] = {name: [] for name in PACKET_COLUMNS}
    for r in rows:
        s_hi, s_lo = addr_to_pair(r["src"])
        d_hi, d_lo = addr_to_pair(r["dst"])
        values = {
            "ts_ns": int(round(r["ts_s"] * 1e9)),
            "ip_version": 6 if ":" in r["src"] else 4,
            "src_hi": s_hi,
            "src_lo": s_lo,
            "dst_hi": d_hi,
            "dst_lo": d_lo,
            "sport": r.get("sport", 0),
            "dport": r.get("dport", 0),
            "proto": r.get("proto", 6),
            "ip_len": r.get("ip_len", 60),
            "tcp_flags": r.get("flags", 0),
            "vlan": r.get("vlan", 0),
            "frag": r.get("frag", 0),
        }
        for k, v in values.items():
            cols[k].append(v)
    return PacketBatch(**{k: np.asarray(v, dtype=PACKET_COLUMNS[k]) for k, v in cols.items()})


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests run small batches on a 2-core machine: one torch thread (as the daemon uses)."""
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> dict[str, Path]:
    """The demo capture and the model trained on its benign part (tests/service/_daemon.py:
    `netad synth` + `netad train`), built once per test run and shared, read-only, by every
    test that replays it ({"pcap", "truth", "model", "dir"}). Only slow tests use it.
    tests/service/test_end_to_end.py keeps its own, longer demo. Under pytest-xdist the
    workers share one build, the first to need it building it under a lock in the run's
    common temporary directory (pytest-xdist's documented way): each worker built its own,
    10 s of a 10-minute suite."""
    from filelock import FileLock

    from tests.service._daemon import build_demo

    if worker_id == "master":  # not under xdist
        return build_demo(tmp_path_factory.mktemp("demo"))
    shared = tmp_path_factory.getbasetemp().parent
    built = shared / "demo" / "built.json"
    with FileLock(str(shared / "demo.lock")):
        if not built.is_file():
            (shared / "demo").mkdir(exist_ok=True)
            paths = build_demo(shared / "demo")
            built.write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    return {k: Path(v) for k, v in json.loads(built.read_text()).items()}


@pytest.fixture
def kafka_cluster():
    """A 3-broker librdkafka mock cluster in its own process, with the topics netad.windows,
    netad.state and netad.incidents (4 partitions each); yields the bootstrap servers."""
    import subprocess
    import sys

    topics = ["netad.windows", "netad.state", "netad.incidents"]
    proc = subprocess.Popen([sys.executable, "-m", "detector.bench._kafka_mock", "3", *topics], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        bootstrap = proc.stdout.readline().strip()
        assert bootstrap.count(":") == 3, f"mock cluster did not start: {bootstrap!r}"
        yield bootstrap
    finally:
        proc.kill()
        proc.wait(timeout=10)
        for pipe in (proc.stdin, proc.stdout):
            pipe.close()  # type: ignore[union-attr]
