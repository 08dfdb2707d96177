"""The incident page in a real browser: the daemon replays the demo (a port scan, an SSH brute
force, a SYN flood), headless Chromium opens the list and the port scan's page, and what it
shows is checked: the entity, the category, the top features, and an evidence Community ID
that is a scan flow's. Then the daemon is stopped: `netad explain` reads its state directory,
and after a restart the page still has the history.

Chromium comes from the distribution (`apt-get install chromium`; .ci/run installs it); where
it is missing these tests are skipped, saying so, unless NETAD_TEST_REQUIRE_CHROMIUM is set
(.ci/run sets it: CI must run them).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from detector.capture.flows import community_id
from tests.conftest import REPO
from tests.service._daemon import DaemonProcess, base_config, read_events, wait_until, write_config

pytestmark = pytest.mark.slow  # `demo`: the session's demo capture and model (tests/conftest.py)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SPEED = 40.0  # the scan starts 26 min into the demo: 40 s of wall time, then 50 s more to look at it


def _need_chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("NETAD_TEST_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is not installed, and NETAD_TEST_REQUIRE_CHROMIUM says this run must have it")
        pytest.skip("chromium is not installed (apt-get install chromium; CI installs it in .ci/run)")
    return CHROMIUM


def _chromium(url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The DOM Chromium built from `url` (--dump-dom), or a screenshot of it."""
    chromium = _need_chromium()
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--disable-background-networking", "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1280,2600"]
    args += [f"--screenshot={screenshot}"] if screenshot is not None else ["--dump-dom"]
    res = subprocess.run([*args, url], capture_output=True, text=True, timeout=90)
    assert 0 == res.returncode, res.stderr[-2000:]
    return res.stdout


def _scan(truth: Path) -> tuple[str, str]:
    """(attacker, target) of the demo's port scan."""
    with truth.open() as f:
        for row in csv.DictReader(f):
            if row["event"] == "ATTACK-PORTSCAN":
                found = re.search(r"attacker=(\S+) target=(\S+)", row["description"])
                assert found is not None
                return found.group(1), found.group(2)
    raise AssertionError("no port scan in the demo's truth")


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return struct.unpack(">II", data[16:24])


def test_the_port_scan_seen_in_a_browser_explained_after_a_stop_and_kept_across_a_restart(demo, tmp_path):
    _need_chromium()
    attacker, target = _scan(demo["truth"])
    cfg = base_config(tmp_path, demo["pcap"], demo["model"], source={"speed": SPEED},
                      service={"metrics_address": "127.0.0.1:0", "incident_page": {"enabled": True}})
    config = write_config(tmp_path / "netad.yaml", cfg)
    d = DaemonProcess(config)
    try:
        _, started = d.wait_log("metrics_started", timeout_s=60)
        base = f"http://{started['address']}"

        def opened() -> dict | None:
            return next((e for e in read_events(tmp_path / "incidents.jsonl")
                         if e["netad"]["entity"] == attacker and e["event"]["action"] == "incident-opened"), None)

        event = wait_until(opened, 120, "the port scan's incident")
        incident_id, category = event["netad"]["incident_id"], event["netad"]["category"]
        assert "scan" == category

        listing = _chromium(f"{base}/incidents", tmp_path / "chromium")
        assert f'href="/incidents/{incident_id}"' in listing and f">{attacker}</a>" in listing and ">scan<" in listing

        page = _chromium(f"{base}/incidents/{incident_id}", tmp_path / "chromium")
        assert f"scan on {attacker}" in page
        for feature in event["netad"]["top_features"]:
            assert f"<td>{feature['name']}</td>" in page
        rows = re.findall(r'<code class="cid">([^<]+)</code></td><td>([\d.]+):(\d+) \u2192 ([\d.]+):(\d+)</td><td>(\w+)</td>', page)
        assert rows, page[:3000]
        cid, src, sport, dst, dport, proto = rows[0]
        assert {src, dst} == {attacker, target} and "tcp" == proto  # the first evidence flow is the scan's ...
        assert cid == community_id(6, src, dst, int(sport), int(dport))  # ... and its Community ID is that flow's
        assert sum({r[1], r[3]} == {attacker, target} for r in rows[:10]) == min(10, len(rows))

        shot = tmp_path / "incident.png"
        _chromium(f"{base}/incidents/{incident_id}", tmp_path / "chromium", screenshot=shot)
        assert (1280, 2600) == _png_size(shot.read_bytes())
        timeline = urllib.request.urlopen(f"{base}/incidents/{incident_id}/timeline.png", timeout=30).read()
        assert (960, 340) == _png_size(timeline)
        before = int(re.search(r"(\d+) window scores of", page).group(1))  # type: ignore[union-attr]

        d.signal(signal.SIGTERM)
        assert 0 == d.wait(60), d.tail()
    finally:
        d.kill()

    # a stopped daemon's files: `netad explain` finds the incident, its flows and its history
    res = subprocess.run([sys.executable, "-m", "detector.cli", "explain", incident_id[:8], "--state-dir", str(tmp_path / "state"),
                          "--png", str(tmp_path / "explain.png")], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert 0 == res.returncode, res.stderr
    assert f"scan on host {attacker}" in res.stdout and "window scores from" in res.stdout
    assert (960, 340) == _png_size((tmp_path / "explain.png").read_bytes())

    # a restart resumes the replay; the page still shows the incident and the history before it
    again = DaemonProcess(config)
    try:
        _, started = again.wait_log("metrics_started", timeout_s=60)
        with urllib.request.urlopen(f"http://{started['address']}/incidents/{incident_id}", timeout=30) as r:
            after = r.read().decode()
        assert f"scan on {attacker}" in after
        assert int(re.search(r"(\d+) window scores of", after).group(1)) >= before  # type: ignore[union-attr]
    finally:
        again.kill()
