"""The daemon on a live interface (lo): READY once the capture is open, windows closing on
the wall clock while the link is quiet (and WATCHDOG=1 going on because they do), and the
last window, which SIGTERM came into before its last bin, let go unscored, as the first is
when the capture opened past its first bin. Needs root
(AF_PACKET) and pcapy-ng."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from tests.service._daemon import DaemonProcess, NotifySocket, base_config, netad, write_config

pytestmark = [pytest.mark.root, pytest.mark.slow]

WINDOWS = {"bin_s": 1.0, "bins": 2, "lateness_s": 0.5}  # 2 s windows: the test sees several close
HOME_NET = ["10.20.0.0/16", "127.0.0.0/8"]  # the office it trains on, and lo it captures (a model runs with its own)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("live capture needs root (AF_PACKET sockets)")
    try:
        import pcapy  # noqa: F401
    except ImportError:
        pytest.skip("pcapy-ng is not installed")
    d = tmp_path_factory.mktemp("live-model")
    pcap = d / "benign.pcap"
    netad("synth", "--out", str(pcap), "--benign-s", "300", "--attack-s", "0")
    cfg = base_config(d, pcap, d / "model", windows=WINDOWS, home_net=HOME_NET)
    write_config(d / "train.yaml", cfg)
    netad("train", "-c", str(d / "train.yaml"), "--pcap", str(pcap), "--out", str(d / "model"))
    return d / "model"


def _closed_udp_port() -> int:
    """A UDP port nothing listens on, this test's own: tests/capture/packets/test_live.py
    captures lo's UDP to port 9 too, and under pytest-xdist it may run at the same time."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _send_udp(n: int, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(n):
            s.sendto(b"netad-test %d" % i, ("127.0.0.1", port))


@pytest.mark.parametrize("workers", [1, 2])
def test_live_windows_close_on_the_wall_clock_and_the_partial_one_is_let_go(tmp_path, model, workers):
    """Also with 2 capture workers on a fanout group and 2 flow workers (source.workers)."""
    port = _closed_udp_port()
    cfg = base_config(tmp_path, tmp_path / "unused.pcap", model, windows=WINDOWS, home_net=HOME_NET,
                      source={"type": "interface", "interface": "lo", "bpf": f"udp port {port}", "promisc": False, "path": None,
                              "workers": workers},
                      service={"heartbeat_interval_s": 0.5})
    config = write_config(tmp_path / "netad.yaml", cfg)
    notify = NotifySocket(tmp_path / "notify.sock")
    d = DaemonProcess(config, {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
    try:
        ready = notify.wait_for("READY", "1", timeout_s=60)
        _, started = d.wait_log("daemon_started", timeout_s=5)
        assert {"type": "interface", "interface": "lo"} == started["source"]
        # the first packets' window: handed on only if the capture opened in its first bin
        # (watch_from), else let go as the last one is
        span_ns, bin_ns = int(WINDOWS["bin_s"] * WINDOWS["bins"] * 1e9), int(WINDOWS["bin_s"] * 1e9)
        if span_ns - time.time_ns() % span_ns < 50_000_000:  # not astride two windows
            time.sleep(0.1)
        first_window_ns = time.time_ns() // span_ns * span_ns
        assert first_window_ns + span_ns > started["watched_from_ns"]
        partial_first = int(first_window_ns + bin_ns <= started["watched_from_ns"])
        _send_udp(20, port)
        time.sleep(1.0)
        i, first = d.wait_log("heartbeat", timeout_s=5, start=len(d.log.snapshot()))
        assert first["packets"] >= 20
        time.sleep(4.0)  # quiet link: windows must go on closing by the clock
        _, later = d.wait_log("heartbeat", timeout_s=5, start=len(d.log.snapshot()))
        assert later["windows_closed"] >= first["windows_closed"] + 1
        assert later["packets"] == first["packets"]
        pings = [m for _, m in notify.messages.snapshot()[ready + 1 :] if "WATCHDOG" in m]
        assert len(pings) >= 4, "no watchdog pings while the quiet link's windows kept closing"
        # the last packets at the start of a window (windows are aligned on the epoch), so
        # that it is still open at SIGTERM even on a loaded machine: 2.5 s, not 0-2.5 s
        span_s = WINDOWS["bin_s"] * WINDOWS["bins"]
        time.sleep(span_s - time.time() % span_s + 0.02)
        _send_udp(5, port)
        time.sleep(0.3)
        d.signal(signal.SIGTERM)
        assert 0 == d.wait(timeout_s=30)
        _, stopped = d.wait_log("daemon_stopped", timeout_s=1)
        # the window the stop came 0.3 s into (before its last bin) is let go, not scored:
        # its empty tail would read as the link falling quiet (EntityWindows.stop)
        assert 1 + partial_first == stopped["windows_partial"]
        assert stopped["packets"] == first["packets"] + 5
        assert "kernel_drops" in later
    finally:
        d.kill()
        notify.close()
