"""The pipeline hands the C heap's freed pages back once the process has grown (glibc's
heap keeps them resident otherwise: after a flood, for good). Measured in a fresh Python
process, on the real allocator: a heap spread wide by many blocks, most of them freed with
a few kept (as a flood's arrays leave it), the kept ones holding the heap's top so that
glibc's own trimming of the top cannot give anything back."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json
    from detector.service.heap import FreedHeap, _malloc_trim, resident_bytes

    MiB = 1 << 20
    heap = FreedHeap()
    out = {"glibc": _malloc_trim() is not None, "start": resident_bytes() / MiB}
    heap.check()
    out["trims_at_rest"] = heap.trims
    blocks = [bytearray(64 * 1024) for _ in range(6 * 1024)]  # 384 MiB of heap blocks, each touched
    kept = blocks[::64]  # one in 64 stays: the heap cannot shrink from its top
    del blocks
    out["freed"] = resident_bytes() / MiB
    heap.check()
    out["trims_after_growth"] = heap.trims
    out["handed_back"] = resident_bytes() / MiB
    heap.check()
    out["trims_again"] = heap.trims
    print(json.dumps(out))
    del kept
""")


def test_pages_a_flood_freed_are_handed_back_once_the_process_grew_and_not_at_rest():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    out = json.loads(run.stdout)
    if not out["glibc"]:
        pytest.skip("not glibc: no malloc_trim, nothing to hand back")
    assert out["trims_at_rest"] == 0  # nothing grew: no trim
    assert out["freed"] - out["start"] > 300  # the freed blocks' pages stayed resident
    assert out["trims_after_growth"] == 1
    assert out["freed"] - out["handed_back"] > 250  # ... until the check handed them back
    assert out["trims_again"] == 1  # and it does not trim again until the process grows again
