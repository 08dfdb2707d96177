"""The daemon as systemd runs it: a real `netad run` process, real signals, a real notify
socket, a real metrics endpoint.

Each test replays the demo capture (tests/service/_daemon.py) paced at 120x, so the daemon
is still running when it is signalled; every wait is bounded and every process killed at the
end of its test.
"""

from __future__ import annotations

import json
import platform
import signal
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from detector import __version__
from tests.service._daemon import DaemonProcess, NotifySocket, base_config, read_events, write_config

pytestmark = pytest.mark.slow  # `demo`: the session's demo capture and model (tests/conftest.py)


@pytest.fixture
def start(tmp_path):
    """start(config_path, env) -> DaemonProcess; all of them are killed after the test."""
    started: list[DaemonProcess] = []

    def _start(config: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        d = DaemonProcess(config, env)
        started.append(d)
        return d

    yield _start
    for d in started:
        d.kill()


def _config(tmp_path: Path, demo: dict, **overrides) -> Path:
    cfg = base_config(tmp_path, demo["pcap"], demo["model"], **overrides)
    return write_config(tmp_path / "netad.yaml", cfg)


def _metrics(port: int) -> dict[str, list]:
    """name -> samples, from a scrape parsed by prometheus_client's own parser."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(body)}


def _status(port: int, path: str) -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code


def _metrics_port(d: DaemonProcess) -> int:
    _, record = d.wait_log("metrics_started", timeout_s=30)
    return int(record["address"].rsplit(":", 1)[1])


def test_notify_sequence_through_reload_and_stop(tmp_path, demo, start):
    """READY once up; STATUS and WATCHDOG while running; RELOADING (with MONOTONIC_USEC) then
    READY around a SIGHUP; STOPPING at SIGTERM; in that order, and exit 0."""
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        config = _config(tmp_path, demo, service={"status_interval_s": 0.5})
        d = start(config, {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
        ready = notify.wait_for("READY", "1", timeout_s=60)
        status = notify.wait_for("STATUS", timeout_s=10, start=ready + 1)
        watchdog = notify.wait_for("WATCHDOG", "1", timeout_s=10, start=ready + 1)
        d.signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING", "1", timeout_s=10, start=max(status, watchdog) + 1)
        ready_again = notify.wait_for("READY", "1", timeout_s=10, start=reloading + 1)
        d.wait_log("config_reloaded", timeout_s=10)
        d.signal(signal.SIGTERM)
        stopping = notify.wait_for("STOPPING", "1", timeout_s=10, start=ready_again + 1)
        assert 0 == d.wait(timeout_s=30)
        messages = [m for _, m in notify.messages.snapshot()]
    finally:
        notify.close()
    assert ready < status and ready < watchdog < reloading < ready_again < stopping
    assert int(messages[reloading]["MONOTONIC_USEC"]) > 0
    assert "pkt/s" in messages[status]["STATUS"] and "open incidents" in messages[status]["STATUS"]
    # no watchdog ping before READY, none after STOPPING
    assert not any("WATCHDOG" in m for m in messages[:ready])
    assert not any("WATCHDOG" in m for m in messages[stopping + 1 :])


def test_sigterm_drains_checkpoints_and_exits_within_the_deadline(tmp_path, demo, start):
    """SIGTERM with a sink that cannot deliver: the daemon drains its windows, checkpoints,
    leaves the undelivered events in the spool and exits 0 within shutdown_timeout_s."""
    dead_port = 9  # discard: nothing listens there
    config = _config(tmp_path, demo, service={"shutdown_timeout_s": 3},
                     sinks=[{"url": f"jsonl://{tmp_path / 'incidents.jsonl'}"},
                            {"url": f"syslog+tcp://127.0.0.1:{dead_port}?backoff_s=0.2&backoff_max_s=0.5", "name": "siem"}])
    d = start(config)
    d.wait_log("daemon_started", timeout_s=60)
    _wait_for_events(tmp_path / "incidents.jsonl", 1, timeout_s=40)
    d.signal(signal.SIGTERM)
    signalled, signalled_at = time.monotonic(), time.time()
    assert 0 == d.wait(timeout_s=30)
    _, stopped = d.wait_log("daemon_stopped", timeout_s=1)
    # the shutdown itself keeps its deadline; the interpreter's exit after it (torch's
    # teardown: about a second here) comes on top
    drain_s = _ns(stopped["timestamp"]) / 1e9 - signalled_at
    assert drain_s < 3 + 1.5, f"shutdown took {drain_s:.1f} s"
    assert time.monotonic() - signalled < 3 + 5
    assert "signal:SIGTERM" == stopped["reason"]
    assert stopped["sinks_drained"] is False and stopped["left_in_spool"]["siem"] >= 1
    spool = tmp_path / "state" / "spool" / "siem"
    assert len(list(spool.glob("*.json"))) == stopped["left_in_spool"]["siem"]
    _, saved = d.wait_log("checkpoint_saved", timeout_s=1, reason="shutdown")
    state = json.loads((tmp_path / "state" / "checkpoint" / "state.json").read_text())
    assert state["meta"]["replay_complete"] is False and saved["entities"] > 0


def test_sighup_with_a_bad_config_keeps_running_and_says_why(tmp_path, demo, start):
    """A config with an unknown key: config_reload_failed names it, the daemon goes on with
    the old config, and the metrics count one failed and then one successful reload."""
    config = _config(tmp_path, demo, service={"metrics_address": "127.0.0.1:0"})
    good = config.read_text()
    d = start(config)
    port = _metrics_port(d)
    d.wait_log("daemon_started", timeout_s=60)
    config.write_text(good + "\nincidents_typo: {}\n")
    d.signal(signal.SIGHUP)
    _, failed = d.wait_log("config_reload_failed", timeout_s=10)
    assert "incidents_typo" in failed["reason"] and "unknown key" in failed["reason"]
    time.sleep(1.0)
    assert d.alive()
    config.write_text(good)
    d.signal(signal.SIGHUP)
    d.wait_log("config_reloaded", timeout_s=10)
    time.sleep(1.2)  # the metrics snapshot is at most a second old
    reloads = {s.labels["outcome"]: s.value for s in _metrics(port)["netad_config_reloads"] if s.name.endswith("_total")}
    assert {"failure": 1.0, "success": 1.0} == reloads
    d.signal(signal.SIGTERM)
    assert 0 == d.wait(timeout_s=30)


def test_a_second_daemon_on_the_same_state_dir_is_refused(tmp_path, demo, start):
    """Two daemons would overwrite each other's checkpoints: the second exits 78 (a config
    error: restarting does not help) and says which process holds the directory."""
    config = _config(tmp_path, demo)
    first = start(config)
    _, started = first.wait_log("daemon_started", timeout_s=60)
    second = start(config)
    assert 78 == second.wait(timeout_s=60)
    assert f"in use by another netad (pid {started['pid']})" in "".join(second.stderr)
    assert first.alive()
    first.signal(signal.SIGTERM)
    assert 0 == first.wait(timeout_s=30)


def test_a_window_scores_file_that_cannot_be_made_exits_78_naming_the_key(tmp_path, demo, start):
    """outputs.scores under a file: a config error (78, which the unit does not restart),
    said with the config's line, the path and why. It ended in a traceback from the mkdir."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    config = _config(tmp_path, demo, outputs={"scores": str(blocker / "scores.jsonl"), "summary": False})
    d = start(config)
    assert 78 == d.wait(timeout_s=60)
    said = "".join(d.stderr)
    assert "Traceback" not in said
    assert f"outputs.scores: {blocker}/scores.jsonl: cannot write the window scores: {blocker}: " in said


def test_sighup_with_new_rules_takes_effect_from_the_next_window(tmp_path, demo, start):
    """Rules changed on disk + SIGHUP: from the next window on, the new allow rule drops every
    anomalous window, so only `resolved` events follow, though the model still flags the
    attacks (the window scores say so)."""
    rules = yaml.safe_load((Path(__file__).resolve().parents[2] / "rules" / "default.yaml").read_text()) or {}
    allow_all = tmp_path / "allow-all.yaml"
    allow_all.write_text(yaml.safe_dump({**rules, "allow": [*(rules.get("allow") or []), {"name": "test-allow-all"}]}))
    scores = tmp_path / "scores.jsonl"
    config = _config(tmp_path, demo, outputs={"scores": str(scores), "summary": False}, source={"speed": 240})
    d = start(config)
    d.wait_log("daemon_started", timeout_s=60)
    cfg = yaml.safe_load(config.read_text())
    cfg["incidents"]["rules"] = [str(allow_all)]
    write_config(config, cfg)
    d.signal(signal.SIGHUP)
    _, reloaded = d.wait_log("config_reloaded", timeout_s=10)
    assert [str(allow_all)] == reloaded["rules"]
    after_ns = reloaded["after_window_end_ns"] or 0
    assert 0 == d.wait(timeout_s=90)  # the replay runs to its end
    flagged = [s for s in map(json.loads, scores.read_text().splitlines()) if s["anomalous"] and _ns(s["window_end"]) > after_ns]
    assert flagged, "the model flagged nothing after the reload: the test proves nothing"
    later = [e for e in read_events(tmp_path / "incidents.jsonl") if _ns(e["@timestamp"]) > after_ns]
    assert {"incident-resolved"} >= {e["event"]["action"] for e in later}
    _, stopped = d.wait_log("daemon_stopped", timeout_s=1)
    assert stopped["rule_drops"]["allow:test-allow-all"] == len(flagged)


def test_metrics_health_and_readiness_endpoints(tmp_path, demo, start):
    """/metrics parses with prometheus_client's parser and carries the pipeline counters, the
    scoring latency, the sinks, the jobs' last runs and the model; /healthz and /readyz 200."""
    config = _config(tmp_path, demo, service={"metrics_address": "127.0.0.1:0", "heartbeat_interval_s": 0.5,
                                              "checkpoint_interval_s": 0.5})
    d = start(config)
    port = _metrics_port(d)
    d.wait_log("daemon_started", timeout_s=60)
    assert 200 == _status(port, "/readyz")
    d.wait_log("heartbeat", timeout_s=10)
    d.wait_log("checkpoint_saved", timeout_s=10, reason="scheduled")
    _wait_for_events(tmp_path / "incidents.jsonl", 1, timeout_s=40)
    time.sleep(1.2)
    m = _metrics(port)
    assert 200 == _status(port, "/healthz")

    def value(name: str, suffix: str = "_total", **labels: str) -> float:
        return sum(s.value for s in m[name] if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items()))

    assert value("netad_packets") > 0
    assert value("netad_windows_scored") > 0
    assert value("netad_scoring_latency_seconds", "_count") > 0
    assert value("netad_incident_events") >= 1
    assert value("netad_sink_delivered") >= 1
    jobs = {s.labels["job"]: (s.labels["outcome"], s.value) for s in m["netad_job_last_run_timestamp_seconds"]}
    assert "ok" == jobs["heartbeat"][0] and "ok" == jobs["checkpoint"][0]
    assert abs(time.time() - jobs["heartbeat"][1]) < 60
    assert 1 == len(m["netad_model_info"]) and m["netad_model_info"][0].labels["version"]
    assert value("netad_entities", "") > 0
    # the process's own (prometheus_client's process and platform collectors) and the build
    assert value("process_resident_memory_bytes", "") > 0 and value("process_cpu_seconds", "_total") > 0
    assert value("process_open_fds", "") > 0 and 1 == len(m["python_info"])
    import torch

    assert [{"version": __version__, "python": platform.python_version(), "torch": torch.__version__}] == [
        s.labels for s in m["netad_build_info"]]
    d.signal(signal.SIGTERM)
    assert 0 == d.wait(timeout_s=30)


def _ns(text: str) -> int:
    import datetime as dt

    return int(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1e9)


def _wait_for_events(path: Path, n: int, timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events = read_events(path)
        if len(events) >= n:
            return events
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} incident events in {path} after {timeout_s} s")


def test_sighups_from_start_to_exit_never_kill_the_daemon(tmp_path, demo, start):
    """`systemctl reload` sends SIGHUP whenever it is asked, and its default action ends a
    process. Sent every 20 ms from the process's first moments until it exits, through its
    start (seconds: torch's import) and past its clean stop, to a full-speed replay of the
    demo's first 5,000 packets: the daemon reloads and exits 0, three times over. Before,
    it was ended by the signal in every start and in half of the exits. The signals begin
    once the process catches SIGHUP at all (`netad run`'s first step), before torch loads."""
    short = tmp_path / "short.pcap"
    with open(demo["pcap"], "rb") as src, open(short, "wb") as out:
        out.write(src.read(24))
        for _ in range(5000):
            head = src.read(16)
            out.write(head + src.read(int.from_bytes(head[8:12], "little")))
    for run in range(3):
        state = tmp_path / f"state{run}"
        config = _config(tmp_path, demo, source={"path": str(short), "speed": 0}, state_dir=str(state))
        d = start(config)
        _wait_until_sighup_is_caught(d)  # the interpreter's own start (no Python code can answer yet) is not netad's
        while d.proc.poll() is None:
            d.signal(signal.SIGHUP)
            time.sleep(0.02)
        assert 0 == d.wait(timeout_s=30), d.tail()
        assert d.events("config_reloaded"), d.tail()
        assert d.events("daemon_stopped")[0]["reason"] == "source_ended"


def _wait_until_sighup_is_caught(d: DaemonProcess, timeout_s: float = 30.0) -> None:
    """Until the process has a handler for SIGHUP (its SigCgt mask in /proc)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and d.proc.poll() is None:
        for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:") and int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)):
                return
        time.sleep(0.005)
    raise AssertionError(f"SIGHUP not caught after {timeout_s} s\n{d.tail()}")
