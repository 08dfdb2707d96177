"""The network runs at a bounded set of batch sizes, whatever number of windows closes at
once. oneDNN, which runs torch's LSTM on CPU, caches a primitive (about 160 KiB of heap) for
every batch size it has run, up to 1,024 of them: a daemon meeting a new number of closing
windows every minute, or a flood's thousands of entities, held up to 160 MiB more for good
(issue 19's flood bench). Measured in a fresh process on the real allocator (glibc's
mallinfo2): scored at 300 different batch sizes, the heap's live bytes must not grow by
more than what a handful of sizes cost."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from detector.model.scorer import SCORING_STEP, padded_rows

SCRIPT = textwrap.dedent("""
    import ctypes, json
    import numpy as np, torch
    from detector.model.lstm import LSTMAutoencoder
    from detector.model.scaler import FeatureScaler
    from detector.model.scorer import reconstruct

    try:
        libc = ctypes.CDLL(None)
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        print(json.dumps({"glibc": False}))
        raise SystemExit(0)
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
    mallinfo2.restype = MallInfo2
    torch.set_num_threads(1)
    torch.manual_seed(0)
    network = LSTMAutoencoder(24, 32, 6).eval()
    rng = np.random.default_rng(0)
    scaler = FeatureScaler.fit(rng.gamma(2.0, 20.0, size=(64, 6, 24)).astype(np.float32))
    windows = rng.gamma(2.0, 20.0, size=(700, 6, 24)).astype(np.float32)
    def score(n):
        reconstruct(network, scaler, windows[:n], network.initial_state(n), torch.zeros(n, dtype=torch.long))
    for n in (1, 9, 70):
        score(n)
    before = mallinfo2().uordblks
    for n in range(400, 700):
        score(n)
    print(json.dumps({"glibc": True, "grown_mib": (mallinfo2().uordblks - before) / 2**20}))
""")


def test_three_hundred_batch_sizes_leave_the_heap_as_a_few_do():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True)
    out = json.loads(run.stdout)
    if not out["glibc"]:
        pytest.skip("not glibc: no mallinfo2")
    # 300 sizes unpadded: about 48 MiB (160 KiB each); padded they are 4 sizes (448 to 768)
    assert out["grown_mib"] < 8, out


def test_padded_batch_sizes_are_few_and_close_to_what_was_asked():
    sizes = [padded_rows(n) for n in range(1, SCORING_STEP + 1)]
    assert all(s >= n for n, s in enumerate(sizes, 1))
    assert len(set(sizes)) <= 27
    assert max(s / n for n, s in enumerate(sizes, 1) if n > 64) <= 1.25
    # from 4 rows on each row's result is the same at any batch size, so padding changes no
    # score; 1 to 3 rows take another kernel, and stay as they are
    assert sizes[:3] == [1, 2, 3] and min(sizes[3:]) >= 4


def test_padding_changes_no_score():
    """Run at its padded size, every window's reconstruction and carried state are the ones
    the network gives at the window's own batch size, bit for bit (from 4 rows on oneDNN's
    rows do not depend on the batch size; 1 to 3 are not padded)."""
    import torch

    from detector.model.lstm import LSTMAutoencoder
    from detector.model.scorer import _network

    torch.manual_seed(0)
    network = LSTMAutoencoder(24, 32, 6).eval()
    for n in [*range(1, 70), 100, 129, 700]:
        x, h, c = torch.randn(n, 6, 24), torch.randn(n, 32), torch.randn(n, 32)
        phase = torch.randint(0, 60, (n,))
        with torch.inference_mode():
            recon, (h1, c1) = network(x, (h, c), phase)
            padded, (h2, c2) = _network(network, x, (h, c), phase)
        assert torch.equal(recon, padded) and torch.equal(h1, h2) and torch.equal(c1, c2), n
