"""The memory new processes may take (model._memory): the machine's, and no more than a memory
cgroup this process is in leaves; member_workers counts with it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from detector.model._memory import available_memory, cgroup_room

REPO = Path(__file__).resolve().parents[2]
GIB = 1 << 30
MIB = 1 << 20


def _proc(tmp_path: Path, mountinfo: str, cgroup: str, available_kib: int = 16 * GIB // 1024) -> Path:
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "meminfo").write_text(f"MemTotal: 33554432 kB\nMemAvailable: {available_kib} kB\n")
    (tmp_path / "proc" / "self" / "mountinfo").write_text(mountinfo)
    (tmp_path / "proc" / "self" / "cgroup").write_text(cgroup)
    return tmp_path / "proc" / "self"


def _group(directory: Path, **files: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("_", ".", 1)).write_text(text + "\n")


def test_a_v2_service_group_leaves_its_lowest_limit_less_what_it_uses_but_inactive_files(tmp_path):
    """netad.service's MemoryHigh=2560M under MemoryMax=3G, 1 GiB used of which 100 MiB are
    inactive file pages: 2560 - 924 MiB left, less than the machine's 16 GiB; a slice above
    it without a limit changes nothing, one with a tighter room wins."""
    cg = tmp_path / "cg"
    proc = _proc(tmp_path, f"41 31 0:38 / {cg} rw,relatime - cgroup2 cgroup2 rw\n", "0::/system.slice/netad.service\n")
    service = cg / "system.slice" / "netad.service"
    _group(service, memory_max=str(3 * GIB), memory_high=str(2560 * MIB), memory_current=str(GIB),
           memory_stat=f"anon 900000000\ninactive_file {100 * MIB}\nactive_file 1000")
    _group(cg / "system.slice", memory_max="max", memory_current=str(5 * GIB))
    assert (2560 - 924) * MIB == cgroup_room(proc) == available_memory(proc)
    _group(cg / "system.slice", memory_max=str(6 * GIB), memory_current=str(5 * GIB))  # 1 GiB left
    assert GIB == cgroup_room(proc) == available_memory(proc)


def test_no_limit_or_no_cgroups_leaves_the_machines_memory(tmp_path):
    cg = tmp_path / "cg"
    proc = _proc(tmp_path, f"41 31 0:38 / {cg} rw,relatime - cgroup2 cgroup2 rw\n", "0::/user.slice\n", available_kib=4 * 1024 * 1024)
    _group(cg / "user.slice", memory_max="max", memory_current=str(GIB))
    assert cgroup_room(proc) is None and 4 * GIB == available_memory(proc)
    other = tmp_path / "other"
    other.mkdir()
    (other / "meminfo").write_text("MemAvailable: 1024 kB\n")
    assert cgroup_room(other / "self") is None and 1024 * 1024 == available_memory(other / "self")


def test_a_v1_memory_hierarchy_mounted_beside_others(tmp_path):
    """A hybrid system: v1's memory controller (limit_in_bytes, usage_in_bytes and the
    hierarchy's total_inactive_file), a v2 tree without it, and v1's "no limit" value."""
    v1, v2 = tmp_path / "memory", tmp_path / "unified"
    mountinfo = (f"32 31 0:29 / {tmp_path / 'cpu'} rw,relatime - cgroup cgroup rw,cpu\n"
                 f"35 31 0:32 / {v1} rw,relatime - cgroup cgroup rw,memory\n"
                 f"41 31 0:38 / {v2} rw,relatime - cgroup2 cgroup2 rw\n")
    proc = _proc(tmp_path, mountinfo, "4:memory:/docker/abc\n2:cpu:/docker/abc\n0::/\n")
    _group(v1 / "docker" / "abc", memory_limit_in_bytes=str(2 * GIB), memory_usage_in_bytes=str(GIB),
           memory_stat=f"inactive_file 1\ntotal_inactive_file {GIB // 2}")
    _group(v1 / "docker", memory_limit_in_bytes="9223372036854771712", memory_usage_in_bytes=str(8 * GIB))
    _group(v2, memory_current=str(9 * GIB))  # no memory controller in the v2 tree
    assert GIB + GIB // 2 == cgroup_room(proc)


def _real_memory_cgroup() -> tuple[Path, str, str] | None:
    """A writable memory hierarchy of this machine: (where to make a group, the limit file,
    the usage file), or None."""
    if os.geteuid() != 0:
        return None
    v2 = Path("/sys/fs/cgroup")
    if "memory" in (v2 / "cgroup.controllers").read_text().split() if (v2 / "cgroup.controllers").is_file() else False:
        return v2, "memory.max", "memory.current"
    v1 = Path("/sys/fs/cgroup/memory")
    if (v1 / "memory.limit_in_bytes").is_file():
        return v1, "memory.limit_in_bytes", "memory.usage_in_bytes"
    return None


@pytest.mark.skipif(_real_memory_cgroup() is None, reason="needs root and a writable memory cgroup hierarchy")
def test_member_workers_in_a_real_memory_cgroup_fit_its_limit_not_the_machines():
    """A process put in a real memory cgroup of 1 GiB (as systemd puts the daemon in its
    MemoryMax=): an interpreter with torch, ~450 MB per worker and half of what is left, so
    one member at a time, where outside it as many as the CPUs hold."""
    where, limit_file, _ = _real_memory_cgroup() or (Path(), "", "")
    group = where / f"netad-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        if not (group / limit_file).exists():  # v2 with memory not in the parent's cgroup.subtree_control
            pytest.skip(f"no {limit_file} in a new group under {where}")
        (group / limit_file).write_text(str(GIB))
        code = ("from detector.model.training import member_workers; from detector.model._memory import cgroup_room; "
                "print(member_workers(3, 1, 1), cgroup_room())")

        def run(inside: bool) -> list[str]:
            def enter() -> None:
                (group / "cgroup.procs").write_text(str(os.getpid()))

            out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                                 preexec_fn=enter if inside else None, check=True)
            return out.stdout.split()

        workers, room = run(inside=True)
        assert 1 == int(workers) and 0 < int(room) < GIB
        cpus = len(os.sched_getaffinity(0))
        assert min(3, cpus) == int(run(inside=False)[0])
    finally:
        group.rmdir()
