"""State survives a SIGKILL: hidden states and open incidents come back from the checkpoint
(the same incident ids go on: a window that emits incident events is checkpointed at once,
not at the next periodic checkpoint), and events that were spooled for an unreachable SIEM
are delivered once it is back.

The proof for incidents: an incident opened before the kill receives an `updated` event
after the restart, and no second `opened` for it (a daemon that forgot its incidents would
open a new one). The proof for delivery: a syslog TCP receiver that is down during the first
run gets, after the restart, every event the first run emitted (the jsonl sink, written
synchronously, is the record of what was emitted). A jsonl sink alone could not prove it:
local sinks deliver synchronously and never spool.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.service._daemon import (
    DaemonProcess,
    SyslogReceiver,
    base_config,
    free_port,
    read_events,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow  # `demo`: the session's demo capture and model (tests/conftest.py)


def _opened(events: list[dict]) -> dict[str, dict]:
    return {e["netad"]["incident_id"]: e for e in events if e["event"]["action"] == "incident-opened"}


def test_sigkill_then_restart_restores_incidents_and_delivers_the_spool(tmp_path, demo):
    port = free_port()  # nothing listens there during the first run
    jsonl = tmp_path / "incidents.jsonl"
    cfg = base_config(
        tmp_path, demo["pcap"], demo["model"],
        # incidents stay open through the whole capture, so one opened before the kill
        # is still open when its entity is anomalous again after the restart
        incidents={"resolve_after_windows": 1000},
        # no periodic checkpoint within the test: the incident's window asks for one itself
        service={"checkpoint_interval_s": 3600},
        sinks=[{"url": f"jsonl://{jsonl}", "name": "record"},
               {"url": f"syslog+tcp://127.0.0.1:{port}?backoff_s=0.1&backoff_max_s=0.5", "name": "siem"}],
    )
    config = write_config(tmp_path / "netad.yaml", cfg)
    first = DaemonProcess(config)
    receiver = None
    second = None
    try:
        first.wait_log("daemon_started", timeout_s=60)
        # an incident of the link as a whole: it opens with the port scan, and the SSH brute
        # force and the SYN flood later make `global` anomalous again
        opened = wait_until(lambda: [e for e in _opened(read_events(jsonl)).values() if e["netad"]["entity"] == "global"],
                            timeout_s=60, what="an incident of `global` to open")[0]
        opened_window_end = opened["event"]["end"]
        # a checkpoint that covers the window the incident opened in, asked for by its events
        first.log.wait_for(lambda r: r.get("event") == "checkpoint_saved" and r["open_incidents"] >= 1
                           and (r["window_end"] or "") >= opened_window_end and r["reason"] == "incident_events",
                           timeout_s=10, what="a checkpoint")
        first.kill()  # SIGKILL: no drain, no final checkpoint, sinks cut off
        before = read_events(jsonl)
        opened_before = _opened(before)
        assert opened["netad"]["incident_id"] in opened_before
        spool = tmp_path / "state" / "spool" / "siem"
        assert list(spool.glob("*.json")), "nothing was spooled for the unreachable receiver"

        receiver = SyslogReceiver(port)
        second = DaemonProcess(config)
        _, restored = second.wait_log("checkpoint_restored", timeout_s=60)
        assert restored["open_incidents"] >= 1 and restored["resume_at"] is not None
        assert restored["history_rows"] > 0  # each entity's peers and ports came back with it
        # every event of the first run reaches the receiver (at least once, same event ids)
        wanted = {e["event"]["id"] for e in before}
        wait_until(lambda: wanted <= set(receiver.event_ids.snapshot()), timeout_s=30,
                   what="the first run's spooled events at the receiver")

        def updated_after_restart() -> list[dict]:
            after = read_events(jsonl)[len(before):]
            return [e for e in after if e["event"]["action"] == "incident-updated" and e["netad"]["incident_id"] in opened_before]

        updates = wait_until(updated_after_restart, timeout_s=60, what="an update of an incident opened before the kill")
        after = read_events(jsonl)[len(before):]
        continued = {e["netad"]["incident_id"] for e in updates}
        assert not [e for e in after if e["event"]["action"] == "incident-opened" and e["netad"]["incident_id"] in continued]
        second.signal(signal.SIGTERM)
        assert 0 == second.wait(timeout_s=30)
        time.sleep(0.2)
    finally:
        for d in (first, second):
            if d is not None:
                d.kill()
        if receiver is not None:
            receiver.close()


def test_a_live_restart_inside_a_minute_lets_its_first_window_go(tmp_path, demo):
    """A live link stopped at a minute's end and started again 20 s into the next (in
    process: the first run's hidden states and peer history restored, as the daemon's
    checkpoint does). Told where it began watching (watch_from, as the daemon tells it when
    its capture opens), the restart lets that minute go, counted, and opens no incident.
    Told the minute's start instead, as netad took it before, the same minute, its first
    20 s empty, is scored against restored states past their warm-up: the link alarms on a
    benign minute."""
    from detector.capture.packets.pcap import CaptureFile
    from detector.config import load_config
    from detector.eval.evaluate import _Collector
    from detector.model.bundle import ModelBundle
    from detector.service.pipeline import Pipeline

    cfg = load_config(write_config(tmp_path / "netad.yaml", base_config(tmp_path, demo["pcap"], demo["model"])))
    bundle = ModelBundle.load(demo["model"])
    packets = [b for b in CaptureFile(demo["pcap"]) if len(b)]
    t0 = min(int(b.ts_ns.min()) for b in packets)
    assert 0 == t0 % (60 * 10**9)  # the demo begins on a minute

    def part(lo_s: float, hi_s: float) -> list:
        cut = [b.take((b.ts_ns >= t0 + lo_s * 1e9) & (b.ts_ns < t0 + hi_s * 1e9)) for b in packets]
        return [b for b in cut if len(b)]

    def run(batches: list, restored: Pipeline | None = None, watched_from_ns: int | None = None) -> tuple[Pipeline, list]:
        sink = _Collector()
        pipeline = Pipeline(cfg, bundle, sinks=[sink])
        if restored is not None:
            pipeline.scoring.load_entity_states(restored.scoring.entity_states())
            pipeline.windows.history.load_state_dict(restored.windows.history.state_dict())
        if watched_from_ns is not None:
            pipeline.windows.watch_from(watched_from_ns)
        for batch in batches:
            pipeline.push(batch)
        pipeline.stop()
        return pipeline, sink.opened

    first, opened = run(part(0, 600))  # benign: the model was trained on these minutes
    assert [] == opened and 0 == first.windows.windows_partial
    second = part(620, 900)
    told, opened_told = run(second, first, watched_from_ns=t0 + 620 * 10**9)
    whole, opened_whole = run(second, first, watched_from_ns=t0 + 600 * 10**9)
    assert [] == opened_told and 1 == told.windows.windows_partial
    assert (told.windows.windows_closed + 1, 0) == (whole.windows.windows_closed, whole.windows.windows_partial)
    assert [t0 + 600 * 10**9] == sorted({e.first_seen_ns for e in opened_whole}), "the artefact this guards against"
