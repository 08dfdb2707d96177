"""The metrics endpoint against clients that hold connections: it is reachable by whatever
can reach its address (a scanner, a load balancer's half-open checks), and each connection
is served by a thread of the daemon. Before, each idle client held a thread for as long as it
liked: 300 of them, 300 threads more in the daemon."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

from detector.service.metrics import Metrics


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return b"" == sock.recv(64)
    except TimeoutError:
        return False


def _serving() -> int:
    """The threads serving a connection (named by the server's target), whatever else runs."""
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def _serving_comes_to(count: int) -> int:
    deadline = time.monotonic() + 10
    while _serving() != count and time.monotonic() < deadline:
        time.sleep(0.01)
    return _serving()


@contextmanager
def _idle_clients(address: tuple[str, int], n: int) -> Iterator[list[socket.socket]]:
    """n connections that never finish a request: half send nothing, half half a request."""
    socks = []
    try:
        for i in range(n):
            sock = socket.create_connection(address)
            if i % 2:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def test_past_its_connections_the_server_closes_a_new_one_unanswered_and_counts_it():
    metrics = Metrics(lambda: {})
    metrics.http_connections = 4  # the timeout stays long: nothing here waits for it
    address = metrics.serve("127.0.0.1:0")
    try:
        with structlog.testing.capture_logs() as logs, _idle_clients(address, 4):
            assert 4 == _serving_comes_to(4)
            for _ in range(3):
                with socket.create_connection(address) as another:
                    assert _closed_by_server(another, within_s=5.0)
            assert 4 == _serving()
        assert 3.0 == metrics.registry.get_sample_value("netad_http_connections_refused_total")
        refused = [e for e in logs if e["log_level"] == "warning"]  # once a minute, not once a connection
        assert ["http_connections_refused"] == [e["event"] for e in refused] and 1 == refused[0]["refused"]
        assert 0 == _serving_comes_to(0)  # the four gone with their clients
        with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/healthz", timeout=5) as answer:
            assert 200 == answer.status
    finally:
        metrics.close()


def test_a_client_that_sends_nothing_for_the_timeout_is_closed_and_its_thread_ends():
    metrics = Metrics(lambda: {})
    metrics.http_timeout_s = 0.5
    address = metrics.serve("127.0.0.1:0")
    try:
        with _idle_clients(address, 6) as idle:
            assert all(_closed_by_server(sock, within_s=10.0) for sock in idle)
            assert 0 == _serving_comes_to(0)  # while the clients hold on
        with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/healthz", timeout=5) as answer:
            assert 200 == answer.status
        assert metrics.registry.get_sample_value("netad_http_connections_refused_total") == 0.0
    finally:
        metrics.close()
