"""Live capture with 2 workers on one AF_PACKET fanout group (capture.packets.fanout),
beside one plain socket, both on the receiving end of a veth pair in a private network
namespace while tcpreplay sends westermo/right.pcap at top speed."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest

from detector.bench._capture_worker import CaptureWorker
from detector.bench._netns import VethNamespace
from detector.capture.packets.pcap import CaptureFile, read_capture
from detector.config import load_config
from detector.contracts import PACKET_COLUMNS, PacketBatch
from detector.service.pipeline import window_stream
from tests.capture.packets.test_live import _by_entity, _skip_unless_capture_possible
from tests.conftest import REPO, shared_file

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]


def _load(path) -> PacketBatch:
    data = np.load(path)
    return PacketBatch(**{name: data[name] for name in PACKET_COLUMNS}, malformed=int(data["malformed"]),
                       non_ip=int(data["non_ip"]))


@pytest.fixture(scope="module")
def captured(tmp_path_factory) -> dict:
    """One replay, received at once by a plain socket and by 2 fanout workers (whose
    batches also go through 2 flow workers, as the daemon runs them)."""
    pcap = shared_file("westermo/right.pcap")
    _skip_unless_capture_possible(("ip", "tcpreplay"))
    d = tmp_path_factory.mktemp("fanout")
    with VethNamespace("netad-fanout") as ns:
        with CaptureWorker(ns.exec_argv([]), ns.capture_iface, out=d / "one.npz", max_s=120) as one, \
             CaptureWorker(ns.exec_argv([]), ns.capture_iface, out=d / "two.npz", max_s=120, workers=2,
                           stages="pipeline", home_net=["198.18.134.0/24"]) as two:
            one.wait_for("ready", timeout_s=60)
            two.wait_for("ready", timeout_s=60)
            sent = subprocess.run(ns.exec_argv(["tcpreplay", "-i", ns.send_iface, "--topspeed", "--preload-pcap", str(pcap)]),
                                  capture_output=True, text=True, timeout=60)
            assert sent.returncode == 0, sent.stderr
            one.wait_for("idle", timeout_s=60)
            idle = two.wait_for("idle", timeout_s=60)
            time.sleep(0.1)
            finals = one.finish(timeout_s=30), two.finish(timeout_s=30)
    return {"pcap": pcap, "one": _load(d / "one.npz"), "two": _load(d / "two.npz"), "finals": finals, "idle": idle}


def test_two_fanout_workers_share_every_frame_without_drops(captured):
    """The workers' frames add up to the file's, each worker got some, no kernel or
    interface drops in either ring; the flow workers behind them got every IP row."""
    one, two = captured["finals"]
    frames = CaptureFile(captured["pcap"])
    rows = sum(len(b) for b in frames)
    per = two["capture_workers"]
    assert 2 == len(per) and all(w["packets"] > 0 for w in per)
    assert frames.packets == one["packets"] == two["packets"] == sum(w["packets"] for w in per)
    assert 0 == sum(w["kernel_drops"] + w["interface_drops"] for w in per) + one["kernel_drops"] + one["interface_drops"]
    assert rows == sum(w["packets"] for w in captured["idle"]["flow_workers"])
    assert all(w["busy_s"] > 0 for w in per)


def _keys(batch: PacketBatch) -> tuple[np.ndarray, np.ndarray]:
    """Per row: a number for its columns other than the timestamp, and how many rows with
    those columns came before it."""
    cols = np.stack([getattr(batch, n).astype(np.uint64) for n in PACKET_COLUMNS if n != "ts_ns"], axis=1)
    _, group = np.unique(cols, axis=0, return_inverse=True)
    group = group.ravel()
    order = np.argsort(group, kind="stable")
    starts = np.concatenate([[0], np.flatnonzero(np.diff(group[order])) + 1])
    sizes = np.diff(np.concatenate([starts, [len(group)]]))
    rank = np.empty(len(group), np.int64)
    rank[order] = np.arange(len(group)) - np.repeat(starts, sizes)
    return group, rank


def test_windows_from_the_fanout_rows_equal_one_process_windows(captured):
    """The fanout workers' rows are the file's rows, each flow's in the file's order (rows
    alike in every column but time are one flow's, so one worker's: the k-th such live row
    is the k-th such file row). With the file's timestamps, in time order, 2 capture workers'
    rows through 2 flow workers give the windows and features of the file through one process."""
    file_rows, two = read_capture(captured["pcap"]), captured["two"]
    f_group, f_rank = _keys(file_rows)
    t_group, t_rank = _keys(PacketBatch(**{**two.columns(), "ts_ns": np.zeros(len(two), np.int64)}))
    f_at = {(g, r): i for i, (g, r) in enumerate(zip(f_group.tolist(), f_rank.tolist(), strict=True))}
    # the group numbers of both come from np.unique over the same set of rows: equal sets, equal numbers
    at = np.array([f_at[(g, r)] for g, r in zip(t_group.tolist(), t_rank.tolist(), strict=True)])
    assert sorted(at.tolist()) == list(range(len(file_rows)))
    retimed = PacketBatch(**{**two.columns(), "ts_ns": file_rows.ts_ns[at]}, malformed=two.malformed, non_ip=two.non_ip)
    retimed = retimed.take(np.argsort(retimed.ts_ns, kind="stable"))
    cfg = load_config(REPO / "configs" / "westermo.yaml", env={})
    two_workers = cfg.model_copy(update={"source": cfg.source.model_copy(update={"workers": 2})})
    expected = _by_entity(list(window_stream(cfg, CaptureFile(captured["pcap"]))))
    actual = _by_entity(list(window_stream(two_workers, [retimed.take(slice(i, i + 4096)) for i in range(0, len(retimed), 4096)])))
    assert len(expected) > 500
    assert expected == actual
