"""The pipeline hands the C heap's freed pages back once the process has grown, or once its
heap has freed much since the last time (glibc's heap keeps them resident otherwise: after a
flood, for good; after a burst's window closed, until the next burst). Measured in a fresh
Python process, on the real allocator: a heap spread wide by many blocks, most of them freed
with a few kept (as a flood's arrays leave it), the kept ones holding the heap's top so that
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


BURST = textwrap.dedent("""
    import json
    from detector.service.heap import FreedHeap, _heap_live, _malloc_trim, resident_bytes

    MiB = 1 << 20
    heap = FreedHeap()
    out = {"glibc": _malloc_trim() is not None and _heap_live() is not None}
    blocks = [bytearray(64 * 1024) for _ in range(6 * 1024)]  # a burst: 384 MiB of heap blocks, live
    heap.check()  # the process grew: the trim runs amid the burst, with nothing free to give
    out["trims_amid_burst"] = heap.trims
    kept = blocks[::64]  # the burst's window closes; one block in 64 stays and holds the top
    del blocks
    out["freed"] = resident_bytes() / MiB
    heap.check()  # the process did not grow since that trim, but its heap freed 378 MiB
    out["trims_after_burst"] = heap.trims
    out["handed_back"] = resident_bytes() / MiB
    heap.check()
    out["trims_again"] = heap.trims
    print(json.dumps(out))
    del kept
""")


def test_pages_a_burst_freed_are_handed_back_though_the_trim_ran_amid_it():
    """The trim the burst's growth asked for ran while its blocks were live, so the least
    size since is the burst's: growth alone would keep the freed pages resident until the
    process grew again (on the 5 h demo, 96 MiB a replay)."""
    run = subprocess.run([sys.executable, "-c", BURST], capture_output=True, text=True, timeout=120, check=True)
    out = json.loads(run.stdout)
    if not out["glibc"]:
        pytest.skip("not glibc 2.33 or later: no malloc_trim or mallinfo2")
    assert out["trims_amid_burst"] == 1
    assert out["trims_after_burst"] == 2  # the heap's live bytes fell by far more than a sixteenth
    assert out["freed"] - out["handed_back"] > 250  # and the freed pages went back
    assert out["trims_again"] == 2  # nothing freed since: no trim
