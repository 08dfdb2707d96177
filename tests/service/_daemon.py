"""Test helpers for the daemon tests: the real `netad run` as a subprocess, a notify socket
standing in for systemd, a syslog TCP receiver, and the demo capture + model they all use.

Every wait has a timeout; every process a test starts is killed at the end of the test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO

# The demo capture every daemon test replays: 20 minutes of benign office traffic, then 40
# with a port scan, an SSH brute force and a SYN flood (netad synth), and a model trained
# on the benign part. At speed 120 a 60 s window closes every 0.5 s of wall time.
BENIGN_S = 1200
ATTACK_S = 2400
SPEED = 120.0


def netad(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "detector.cli", *args], capture_output=True, text=True,
                         timeout=timeout_s, cwd=REPO)
    assert 0 == res.returncode, f"netad {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res


def build_demo(directory: Path) -> dict[str, Path]:
    """synth + train (about 10 s): the session fixture `demo` in tests/conftest.py builds it once."""
    pcap, truth, model = directory / "demo.pcap", directory / "truth.csv", directory / "model"
    netad("synth", "--out", str(pcap), "--truth", str(truth), "--benign-s", str(BENIGN_S), "--attack-s", str(ATTACK_S))
    cfg = directory / "train.yaml"
    cfg.write_text(yaml.safe_dump(base_config(directory, pcap, model)))
    netad("train", "-c", str(cfg), "--pcap", str(pcap), "--truth", str(truth), "--before-first-attack", "--out", str(model))
    return {"pcap": pcap, "truth": truth, "model": model, "dir": directory}


def base_config(directory: Path, pcap: Path, model: Path, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "sensor": {"id": "test-sensor", "hostname": "sensor-1"},
        "home_net": ["10.20.0.0/16"],
        "source": {"type": "pcap", "path": str(pcap), "speed": SPEED},
        "model": {"path": str(model), "device": "cpu"},
        # one network per class: the daemon's tests are about the daemon, and three (the
        # default) cost the suite a minute; test_end_to_end trains and runs the default
        "training": {"epochs": 3, "members": 1},
        "incidents": {"rules": [str(REPO / "rules" / "default.yaml")]},
        "sinks": [{"url": f"jsonl://{directory / 'incidents.jsonl'}"}],
        "outputs": {"scores": None, "summary": False},
        "state_dir": str(directory / "state"),
        "logging": {"format": "json", "level": "info"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Collector:
    """Lines or datagrams collected by a thread, waited on with a timeout."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def add(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, match: Callable[[Any], bool], timeout_s: float, start: int = 0, what: str = "") -> tuple[int, Any]:
        """(index, item) of the first item from `start` on that matches."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for i in range(start, len(self.items)):
                    if match(self.items[i]):
                        return i, self.items[i]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout_s} s waiting for {what or match}")
                self._cond.wait(remaining)

    def snapshot(self) -> list[Any]:
        with self._cond:
            return list(self.items)


class DaemonProcess:
    """`python -m detector.cli run -c CONFIG`, its JSON log lines (stderr) parsed as they come;
    what it writes to stdout (a replay's summary, a stdout sink) is kept apart."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_", "NETAD_"))}
        full_env.update(env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "detector.cli", "run", "-c", str(config)], cwd=REPO,
                                     env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.log = _Collector()
        self.other_stdout: list[str] = []
        self.stderr: list[str] = []
        self._threads = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.other_stdout.append(line)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "event" in record:
                self.log.add(record)

    def wait_log(self, event: str, timeout_s: float = 30.0, start: int = 0, **fields: Any) -> tuple[int, dict]:
        def match(r: dict) -> bool:
            return r.get("event") == event and all(r.get(k) == v for k, v in fields.items())

        try:
            return self.log.wait_for(match, timeout_s, start, what=f"log event {event} {fields or ''}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- log tail:\n{self.tail()}") from None

    def events(self, name: str) -> list[dict]:
        return [r for r in self.log.snapshot() if r.get("event") == name]

    def tail(self, n: int = 30) -> str:
        return "".join(["--- stderr (logs):\n"] + self.stderr[-n:] + ["--- stdout:\n"] + self.other_stdout[-n:])

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        rc = self.proc.wait(timeout=timeout_s)
        self._finish()
        return rc

    def _finish(self) -> None:
        for t in self._threads:
            t.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._finish()


class NotifySocket:
    """A Unix datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages = _Collector()  # (monotonic time, {VAR: value})
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.add((time.monotonic(), fields))

    def wait_for(self, var: str, value: str | None = None, timeout_s: float = 30.0, start: int = 0) -> int:
        index, _ = self.messages.wait_for(lambda m: var in m[1] and (value is None or m[1][var] == value), timeout_s,
                                          start, what=f"notify {var}={value}")
        return index

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self.sock.close()


class SyslogReceiver:
    """A TCP syslog receiver (RFC 6587 octet counting) that records the eventIds it got."""

    def __init__(self, port: int) -> None:
        self.server = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.server.settimeout(0.2)
        self.event_ids = _Collector()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(0.2)
        with conn:
            while not self._stop:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while b" " in buf:
                    length, _, rest = buf.partition(b" ")
                    if len(rest) < int(length):
                        break
                    message, buf = rest[: int(length)], rest[int(length) :]
                    found = re.search(rb'eventId="([^"]+)"', message)
                    if found:
                        self.event_ids.add(found.group(1).decode())

    def close(self) -> None:
        self._stop = True
        self.server.close()
        self._thread.join(timeout=2)


def read_events(path: Path) -> list[dict]:
    """The ECS incident events a jsonl sink wrote (a line cut by a SIGKILL is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)
