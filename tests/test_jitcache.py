"""numba's cache of compiled kernels, damaged (a power cut mid-write, a bad block): netad's
command line removes what cannot be read before any kernel runs, says so, and numba compiles
those kernels again. Before, every command, and the daemon at each restart systemd made,
stopped at the first kernel with `UnpicklingError: pickle data was truncated`
(numba/numba#10434)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

_KERNEL = """
import numba

@numba.njit(cache=True)
def add_one(x):
    return x + 1
"""


def _python(code: str, cache: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": f"{cwd}{os.pathsep}{REPO}"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_damaged_cache_files_are_removed_said_and_compiled_again(tmp_path: Path):
    (tmp_path / "kern.py").write_text(_KERNEL)
    cache = tmp_path / "numba-cache"
    first = _python("import kern; print(kern.add_one(1))", cache, tmp_path)
    assert "2" == first.stdout.strip(), first.stderr
    files = sorted(cache.rglob("*.nb[ic]"))
    assert {".nbi", ".nbc"} == {f.suffix for f in files}
    for f in files:  # each cut short, as a write the power cut stopped leaves it
        f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])

    config = tmp_path / "netad.yaml"
    config.write_text("logging: {format: json, level: info}\n")
    checked = _python(f"import sys; from detector.cli import main; sys.argv = ['netad', 'check-config', '-c', {str(config)!r}]; main()",
                      cache, tmp_path)
    said = [json.loads(line) for line in checked.stderr.splitlines() if line.startswith("{")]
    repaired = [e for e in said if e["event"] == "jit_cache_repaired"]
    assert 1 == len(repaired) and "warning" == repaired[0]["level"], checked.stderr
    assert sorted(map(str, files)) == sorted(repaired[0]["removed"])
    assert not any(f.exists() for f in files)

    again = _python("import kern; print(kern.add_one(41))", cache, tmp_path)
    assert "42" == again.stdout.strip(), again.stderr
    assert sorted(cache.rglob("*.nbi"))  # compiled and written anew


def test_whole_cache_files_are_left_as_they_are(tmp_path: Path):
    (tmp_path / "kern.py").write_text(_KERNEL)
    cache = tmp_path / "numba-cache"
    assert "2" == _python("import kern; print(kern.add_one(1))", cache, tmp_path).stdout.strip()
    before = {f: f.stat().st_mtime_ns for f in cache.rglob("*.nb[ic]")}
    removed = _python("from detector import jitcache; print(jitcache.repair())", cache, tmp_path)
    assert "[]" == removed.stdout.strip(), removed.stderr
    assert before == {f: f.stat().st_mtime_ns for f in cache.rglob("*.nb[ic]")}
