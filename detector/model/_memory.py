"""How much memory new processes may take here: the system's, and the memory cgroups' this
process is in (systemd's MemoryMax= and MemoryHigh=, a container's limit).

Why the cgroups: /proc/meminfo speaks for the whole machine. The daemon runs in
netad.service's MemoryMax=3G, and its retraining child starts member workers of about 450 MB
each (model.training.member_workers): counted against the machine's free memory they would
pass the service's limit, and the kernel's OOM killer would pick the largest process in the
group, which may be the daemon itself.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_NO_LIMIT = 1 << 62  # cgroup v1 writes "no limit" as the largest page-aligned 64-bit value


def available_memory(proc: Path = Path("/proc/self")) -> int:
    """Bytes of memory new processes may take without swapping or passing a limit: the
    machine's MemAvailable (the free memory and the page cache the kernel can reclaim), or
    its free memory where there is no /proc/meminfo, and no more than the tightest memory
    cgroup of this process (`proc`) leaves (cgroup_room)."""
    free = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in (proc.parent / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                break
    if free is None:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    room = cgroup_room(proc)
    return free if room is None else min(free, room)


def cgroup_room(proc: Path = Path("/proc/self")) -> int | None:
    """What the memory cgroups of process `proc` leave under their limits, the tightest from
    its own group up to the hierarchy's root: the limit (v2: memory.max and memory.high; v1:
    memory.limit_in_bytes) less what the group uses, its inactive file pages not counted (the
    kernel reclaims them before it kills). None where no group sets a limit, or where cgroups
    cannot be read."""
    rooms = [room for directory, top, v2 in _memory_groups(proc) for room in _rooms(directory, top, v2)]
    return max(0, min(rooms)) if rooms else None


def _memory_groups(proc: Path) -> list[tuple[Path, Path, bool]]:
    """(the group's directory, its hierarchy's mount point, cgroup v2?) for each memory
    hierarchy process `proc` is in (a hybrid system has both)."""
    try:
        memberships = (proc / "cgroup").read_text().splitlines()
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in mounts:
        fields, _, tail = line.partition(" - ")
        parts, kind = fields.split(), tail.split()
        if len(parts) < 5 or len(kind) < 3:
            continue
        root, mount_point = parts[3], Path(parts[4])
        v2 = kind[0] == "cgroup2"
        if not v2 and not (kind[0] == "cgroup" and "memory" in kind[2].split(",")):
            continue
        for membership in memberships:
            hierarchy, controllers, path = (membership.split(":", 2) + ["", ""])[:3]
            mine = (hierarchy == "0" and not controllers) if v2 else "memory" in controllers.split(",")
            if mine and (path == root or path.startswith(root.rstrip("/") + "/")):
                out.append((mount_point / path[len(root.rstrip("/")):].lstrip("/"), mount_point, v2))
    return out


def _rooms(directory: Path, top: Path, v2: bool) -> list[int]:
    """What each group from `directory` up to `top` leaves under its limits."""
    out = []
    for group in (directory, *(p for p in directory.parents if p.is_relative_to(top))):
        limits = [_number(group / name) for name in (("memory.max", "memory.high") if v2 else ("memory.limit_in_bytes",))]
        limit = min((v for v in limits if v is not None and v < _NO_LIMIT), default=None)
        used = _number(group / ("memory.current" if v2 else "memory.usage_in_bytes"))
        if limit is None or used is None:
            continue
        out.append(limit - max(0, used - _stat(group / "memory.stat", "inactive_file" if v2 else "total_inactive_file")))
    return out


def _number(path: Path) -> int | None:
    """A cgroup file's number; None for "max" (no limit) or a file that is not there."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat(path: Path, key: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0
