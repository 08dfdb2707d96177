"""Live capture: LiveCapture on real interfaces, a real capture replayed over a veth pair.

The replay test builds a private network namespace with a veth pair (both ends inside it,
loopback-range addresses only, IPv6 off), captures on one end in a separate process while
tcpreplay sends ../shared/data/westermo/right.pcap (35,067 frames) on the other, and checks:

- every frame arrives (IP rows + non-IP + malformed = the file's frames), zero drops;
- the rows are the file's rows, field for field, except the timestamps;
- with the timestamps put back (live row i gets file row i's time: tcpreplay sends in
  file order and one veth keeps it), the windows computed from the live batches equal the
  windows computed from the file, every entity, bin and feature. This is the
  "live and replay agree" contract of DESIGN.md with the clock as the only difference;
  the live timestamps themselves are checked to be capture times of this run.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from detector.bench._capture_worker import CaptureWorker
from detector.bench._netns import VethNamespace, missing_requirements
from detector.capture.packets.pcap import CaptureFile, read_capture
from detector.config import load_config
from detector.contracts import PACKET_COLUMNS, PacketBatch
from detector.errors import CaptureError
from detector.service.pipeline import window_stream
from tests.conftest import REPO, shared_file

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]
replay = pytest.mark.shared_data  # the veth tests below replay ../shared/data/westermo


def _pcapy_missing() -> str | None:
    try:
        import pcapy  # noqa: F401
    except ImportError:
        return "pcapy-ng is not installed (pip install pcapy-ng)"
    return None


def _skip_unless_capture_possible(tools: tuple[str, ...] = ()) -> None:
    reason = _pcapy_missing() or missing_requirements(tools)
    if reason:
        pytest.skip(reason)


# --------------------------------------------------------------------- on the host's lo
@pytest.fixture
def idle_lo_capture():
    """A capture on lo whose filter only passes UDP to port 9 (discard), which nothing here
    sends unless the test does."""
    _skip_unless_capture_possible()
    from detector.capture.packets.live import LiveCapture

    capture = LiveCapture("lo", bpf="udp dst port 9 and dst host 127.0.0.1", poll_s=0.1, buffer_mb=4)
    yield capture
    capture.close()


def test_idle_link_yields_empty_batches_on_the_clock_and_stops_on_request(idle_lo_capture):
    """With no traffic, an empty batch comes every poll_s; setting stop ends iteration
    within poll_s and closes the handle."""
    capture = idle_lo_capture
    started = time.monotonic()
    seen = []
    for batch in capture:
        seen.append((time.monotonic() - started, len(batch)))
        if len(seen) == 5:
            capture.stop = True
    elapsed = time.monotonic() - started
    assert [n for _, n in seen] == [0] * 5
    assert 0.4 <= elapsed < 3.0  # five polls of 0.1 s, generous for a loaded CI machine
    assert capture.stats()["packets"] == 0


def test_packets_on_lo_arrive_in_a_batch_with_their_ports(idle_lo_capture):
    """Datagrams sent to 127.0.0.1:9 are captured (BPF filter applied), parsed, counted."""
    import socket

    capture = idle_lo_capture
    got: list[PacketBatch] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for batch in capture:
            if not got:
                for _ in range(3):
                    sock.sendto(b"netad", ("127.0.0.1", 9))
            got.append(batch)
            if sum(len(b) for b in got) >= 3 or len(got) > 50:
                capture.stop = True
    rows = PacketBatch.concat(got)
    assert 3 == len(rows)
    assert [9, 9, 9] == rows.dport.tolist()
    assert [17, 17, 17] == rows.proto.tolist()
    assert 3 == capture.stats()["packets"]
    now_ns = time.time_ns()
    assert np.all(np.abs(rows.ts_ns - now_ns) < 60 * 10**9)  # capture times, not zero or file times


def test_kernel_drops_are_counted_and_logged_when_they_change():
    """A 1 MiB ring that nobody reads overflows: the drops appear in stats() and in one
    capture_drops_changed log line. (On lo every datagram passes the ring twice, outgoing
    and incoming, and libpcap discards the outgoing copy after the ring: the kernel's drop
    count covers both copies, so received + dropped is not the number sent.)"""
    import socket

    from structlog.testing import capture_logs

    _skip_unless_capture_possible()
    from detector.capture.packets.live import LiveCapture

    sent = 3000
    capture = LiveCapture("lo", bpf="udp dst port 9 and dst host 127.0.0.1", poll_s=0.05, buffer_mb=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(sent):
            sock.sendto(b"x" * 1400, ("127.0.0.1", 9))
    started = time.monotonic()
    with capture_logs() as logs:
        for _batch in capture:
            if time.monotonic() - started > 1.5:  # drops are polled about once a second
                capture.stop = True
    st = capture.stats()
    changed = [e for e in logs if e["event"] == "capture_drops_changed"]
    assert st["kernel_drops"] > 0
    assert 0 < st["packets"] < sent
    assert 1 == len(changed)
    assert {"interface": "lo", "kernel_drops": st["kernel_drops"], "new_kernel_drops": st["kernel_drops"]} == {
        k: changed[0][k] for k in ("interface", "kernel_drops", "new_kernel_drops")
    }


def test_missing_interface_is_a_capture_error_naming_it():
    _skip_unless_capture_possible()
    from detector.capture.packets.live import LiveCapture

    with pytest.raises(CaptureError, match=r"interface 'netad-nosuch0' does not exist \(interfaces here: .*lo"):
        LiveCapture("netad-nosuch0")


def test_bad_bpf_filter_is_a_capture_error_naming_it():
    _skip_unless_capture_possible()
    from detector.capture.packets.live import LiveCapture

    with pytest.raises(CaptureError, match=r"BPF filter 'udp port banana'"):
        LiveCapture("lo", bpf="udp port banana", buffer_mb=1)


def test_permission_denied_is_a_capture_error_saying_what_to_grant():
    """Without CAP_NET_RAW (root with the capability dropped) opening fails clearly."""
    _skip_unless_capture_possible()
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop CAP_NET_RAW")
    code = (
        "from detector.capture.packets.live import LiveCapture\n"
        "from detector.errors import CaptureError\n"
        "try:\n    LiveCapture('lo', buffer_mb=1)\n"
        "except CaptureError as exc:\n    print(exc)\n"
    )
    done = subprocess.run(
        ["setpriv", "--bounding-set", "-net_raw,-net_admin", "--inh-caps", "-net_raw,-net_admin", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert done.returncode == 0, done.stderr
    assert "permission denied capturing on interface 'lo'" in done.stdout
    assert "CAP_NET_RAW" in done.stdout


# ------------------------------------------------------- an interface lost while captured
_CAPTURE_UNTIL_TOLD = r"""
import json, os, sys
import structlog.testing
from detector.capture.packets.live import LiveCapture

batches = []  # (rows, whether the interface was lost as it came)
with structlog.testing.capture_logs() as logs:
    capture = LiveCapture(sys.argv[1], poll_s=0.1, buffer_mb=4)
    print("ready", flush=True)
    for batch in capture:
        batches.append((len(batch), capture._handle is None))
        if os.path.exists(sys.argv[2]):
            capture.stop = True
print(json.dumps({"logs": logs, "batches": batches, "stats": capture.stats()}), flush=True)
"""


def test_an_interface_that_goes_down_or_away_is_captured_again_once_it_is_back(tmp_path):
    """Down as the capture starts (a cable unplugged at boot), then up; `ip link set down`;
    then the veth pair deleted and made again (a NIC pulled and put back). Each time libpcap
    said "The interface went down", which ended the capture (and the daemon, whose every
    restart then failed while the link stayed down), and an interface down at the start was a
    CaptureError. Now the capture says so, goes on handing out empty batches (windows close on
    the clock), opens the interface again once it is back, and the frames sent after that all
    arrive."""
    _skip_unless_capture_possible(("ip", "tcpreplay"))
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    frames = tmp_path / "fifty.pcap"
    wrpcap(str(frames), [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.9.0.1", dst="10.9.0.2")
                         / UDP(sport=40000 + i, dport=9) / b"x" for i in range(50)])
    told = tmp_path / "stop"
    with VethNamespace("netad-test") as ns:
        ip = ["ip", "-n", ns.name, "link"]
        subprocess.run([*ip, "set", ns.capture_iface, "down"], check=True)  # a cable unplugged at boot
        with subprocess.Popen(ns.exec_argv([sys.executable, "-c", _CAPTURE_UNTIL_TOLD, ns.capture_iface, str(told)]),
                              cwd=REPO, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO))) as proc:
            assert proc.stdout is not None
            try:  # a failure on the way must not leave the capture waiting to be told
                assert "ready" == proc.stdout.readline().strip()  # the interface is down: started all the same
                for step in (["set", ns.capture_iface, "up"], ["set", ns.capture_iface, "down"],
                             ["set", ns.capture_iface, "up"], ["del", ns.capture_iface]):  # del: both ends go
                    time.sleep(2.5)
                    subprocess.run([*ip, *step], check=True)
                time.sleep(2.5)
                ns._setup()  # the pair made again, with the same names
                time.sleep(2.5)
                sent = subprocess.run(ns.exec_argv(["tcpreplay", "-i", ns.send_iface, str(frames)]), capture_output=True,
                                      text=True, timeout=60)
                assert sent.returncode == 0, sent.stderr
                time.sleep(1.0)
            finally:
                told.touch()
            out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    result = json.loads(out.strip().splitlines()[-1])
    said = [e["event"] for e in result["logs"] if e["event"].startswith("capture_interface")]
    assert said == ["capture_interface_lost", "capture_interface_back"] * 3, result["logs"]
    reasons = [e["reason"] for e in result["logs"] if e["event"] == "capture_interface_lost"]
    assert f"interface '{ns.capture_iface}' is down" in reasons[0] and all("went down" in r for r in reasons[1:])
    assert any(lost for _, lost in result["batches"]), "no batch came while the interface was away"
    assert 50 == sum(rows for rows, _ in result["batches"])  # nothing else is sent on the pair
    assert 3 == result["stats"]["interface_lost"]


# --------------------------------------------------------------- replay over a veth pair
@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> dict:
    pcap = shared_file("westermo/right.pcap")
    _skip_unless_capture_possible(("ip", "tcpreplay"))
    out = tmp_path_factory.mktemp("live") / "live.npz"
    with VethNamespace("netad-test") as ns:
        with CaptureWorker(ns.exec_argv([]), ns.capture_iface, out=out, idle_s=1.0, max_s=120) as worker:
            worker.wait_for("ready", timeout_s=60)
            before_ns = time.time_ns()
            sent = subprocess.run(
                ns.exec_argv(["tcpreplay", "-i", ns.send_iface, "--topspeed", "--preload-pcap", str(pcap)]),
                capture_output=True, text=True, timeout=60,
            )
            assert sent.returncode == 0, sent.stderr
            worker.wait_for("idle", timeout_s=60)
            after_ns = time.time_ns()
            final = worker.finish(timeout_s=30)
    data = np.load(out)
    live = PacketBatch(**{name: data[name] for name in PACKET_COLUMNS}, malformed=int(data["malformed"]), non_ip=int(data["non_ip"]))
    return {"pcap": pcap, "stats": final, "live": live, "before_ns": before_ns, "after_ns": after_ns, "tcpreplay": sent.stdout}


@replay
def test_every_frame_of_the_capture_arrives_without_drops(replayed):
    """IP rows + non-IP + malformed frames = the file's frame count; zero kernel and
    interface drops."""
    offline = CaptureFile(replayed["pcap"])
    rows = sum(len(b) for b in offline)
    st = replayed["stats"]
    assert 35_067 == offline.packets
    assert {"packets": offline.packets, "kernel_drops": 0, "interface_drops": 0, "malformed": offline.malformed,
            "non_ip": offline.non_ip} == {k: st[k] for k in ("packets", "kernel_drops", "interface_drops", "malformed", "non_ip")}
    assert rows == len(replayed["live"]) == st["rows"]


@replay
def test_live_rows_equal_the_files_rows_except_timestamps(replayed):
    offline = read_capture(replayed["pcap"])
    live = replayed["live"]
    for name in PACKET_COLUMNS:
        if name != "ts_ns":
            assert np.array_equal(getattr(offline, name), getattr(live, name)), name


@replay
def test_live_timestamps_are_this_runs_capture_times_in_order(replayed):
    ts = replayed["live"].ts_ns
    assert replayed["before_ns"] - 10**9 <= int(ts.min())
    assert int(ts.max()) <= replayed["after_ns"] + 10**9
    assert np.all(np.diff(ts) >= 0)


def _retimed_live_rows(replayed: dict) -> PacketBatch:
    """The live rows with the file's timestamps: live row i is file row i (checked above)."""
    live = replayed["live"]
    file_ts = read_capture(replayed["pcap"]).ts_ns
    return PacketBatch(**{**live.columns(), "ts_ns": file_ts}, malformed=live.malformed, non_ip=live.non_ip)


def _by_entity(windows: list) -> list[tuple[int, int, dict[str, bytes]]]:
    """Windows as (start, end, {entity: feature bytes}): entity order is slot order, an
    implementation detail of the aggregator."""
    return [(w.window_start_ns, w.window_end_ns, {e: w.features[i].tobytes() for i, e in enumerate(w.entities)}) for w in windows]


@replay
def test_windows_from_live_rows_equal_offline_windows_after_retiming(replayed):
    """Same windows, entities (in the same order) and features, exactly, as the offline
    read of the file, once live row i carries file row i's timestamp and the rows are cut
    into batches where the file reader cuts them."""
    cfg = load_config(REPO / "configs" / "westermo.yaml", env={})  # home net 198.18.134.0/24, 5 x 2 s bins
    retimed = _retimed_live_rows(replayed)
    cuts = np.cumsum([0] + [len(b) for b in CaptureFile(replayed["pcap"])])
    live_batches = [retimed.take(slice(a, b)) for a, b in itertools.pairwise(cuts)]
    expected = list(window_stream(cfg, CaptureFile(replayed["pcap"])))
    actual = list(window_stream(cfg, live_batches))
    assert len(expected) > 500  # 5,444 s of traffic in 10 s windows
    assert [(w.window_start_ns, w.window_end_ns, w.entities) for w in expected] == [
        (w.window_start_ns, w.window_end_ns, w.entities) for w in actual
    ]
    for e, a in zip(expected, actual, strict=True):
        assert np.array_equal(e.features, a.features), (e.window_start_ns, e.entities)


@replay
def test_windows_do_not_depend_on_how_live_batches_are_cut(replayed):
    """A live source cuts batches by time, not where the file reader does: 4,096-row
    batches must give the same windows and per-entity features as the file read."""
    cfg = load_config(REPO / "configs" / "westermo.yaml", env={})
    retimed = _retimed_live_rows(replayed)
    live_batches = [retimed.take(slice(i, i + 4096)) for i in range(0, len(retimed), 4096)]
    expected = _by_entity(list(window_stream(cfg, CaptureFile(replayed["pcap"]))))
    assert expected == _by_entity(list(window_stream(cfg, live_batches)))
