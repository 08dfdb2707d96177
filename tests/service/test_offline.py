"""`netad score` as a Unix tool: data on stdout, logs on stderr, so a replay pipes into jq."""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.service._daemon import base_config, write_config

pytestmark = pytest.mark.slow  # `demo`: the session's demo capture and model (tests/conftest.py)


def _score(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detector.cli", "score", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO)


def _attacks(truth: Path) -> list[tuple[float, float, str, str]]:
    """The demo's attacks: (start, end epoch s, attacker or "spoofed", victim)."""
    out = []
    with truth.open() as f:
        for row in csv.DictReader(f):
            found = re.search(r"attacker=(\S+) target=(\S+)", row["description"])
            if row["is_attack_or_fault"] == "1" and found:
                out.append((float(row["start_epoch_pcap"]), float(row["end_epoch_pcap"]), found.group(1), found.group(2)))
    return out


def _epoch_s(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_incidents_on_stdout_are_json_lines_and_logs_on_stderr(demo, tmp_path: Path, fmt: str):
    """`netad score ... --incidents -`: every stdout line is an ECS incident (what `| jq -c .`
    needs), whatever `logging.format` is; the logs and the summary are on stderr. The demo's
    victims are the destinations, their attackers the sources (a spoofed flood has none)."""
    cfg = base_config(tmp_path, demo["pcap"], demo["model"], logging={"format": fmt, "level": "info"})
    res = _score("-c", str(write_config(tmp_path / "score.yaml", cfg)), "--pcap", str(demo["pcap"]), "--incidents", "-")
    assert 0 == res.returncode, res.stderr[-3000:]
    events = [json.loads(line) for line in res.stdout.splitlines()]
    assert events and all("alert" == e["event"]["kind"] for e in events)
    errors = res.stderr.splitlines()
    assert errors[-1].startswith("packets=")  # the summary, after the logs
    if fmt == "json":
        assert all(json.loads(line)["event"] for line in errors[:-1])
    assert any("sink_started" in line for line in errors)

    seen = set()
    for start_s, end_s, attacker, victim in _attacks(demo["truth"]):
        read: dict[str, dict] = {}  # the victim's incidents over the attack, as last read
        for e in events:  # the victim is the destination of every one of their events
            if e["netad"]["entity"] != victim or not start_s - 60 <= _epoch_s(e["event"]["start"]) <= end_s:
                continue
            seen.add(victim)
            assert ("target", victim) == (e["netad"]["role"], e["destination"]["ip"]), e["message"]
            assert e["threat"]["technique"]["id"] and victim in e["related"]["ip"], e["message"]
            read[e["netad"]["incident_id"]] = e  # stdout is in the order the events were sent
        # each incident's last event names the attacker as its source: a scan's first few
        # probes may share a window with a file server's busier clients, and that window's
        # reading names no one (the next window's update names the scanner)
        for last in read.values():
            source = last.get("source", {}).get("ip")
            assert (None if attacker == "spoofed" else attacker) == source, last["message"]  # no one host spoofs a flood
    assert {victim for *_, victim in _attacks(demo["truth"])} == seen  # every attack was seen from its victim


def test_scores_on_stdout(demo, tmp_path: Path):
    """`--scores -` writes the window scores to stdout, one JSON line per entity and window;
    both outputs on stdout at once is refused."""
    cfg = str(write_config(tmp_path / "score.yaml", base_config(tmp_path, demo["pcap"], demo["model"])))
    res = _score("-c", cfg, "--pcap", str(demo["pcap"]), "--scores", "-")
    assert 0 == res.returncode, res.stderr[-3000:]
    scores = [json.loads(line) for line in res.stdout.splitlines()]
    assert scores and all({"entity", "score", "threshold", "window_start"} <= s.keys() for s in scores)
    both = _score("-c", cfg, "--pcap", str(demo["pcap"]), "--scores", "-", "--incidents", "-")
    assert 2 == both.returncode and "only one of --scores and --incidents" in both.stderr


@pytest.mark.parametrize("output", ["--incidents", "--scores"])
def test_a_reader_that_closes_stdout_stops_the_scoring_quietly(demo, tmp_path: Path, output: str):
    """`netad score --incidents - | head -1`: once the reader has closed the pipe, scoring
    stops, as any Unix filter does, and exits 1 (click's way with EPIPE) with no traceback;
    the events the pipe could not take are said once, as a warning, not as each one lost.
    Before, an incident reader that left made the command score to the end and log every
    later incident as lost at error level, then exit 0."""
    cfg = str(write_config(tmp_path / "score.yaml", base_config(tmp_path, demo["pcap"], demo["model"])))
    with subprocess.Popen([sys.executable, "-m", "detector.cli", "score", "-c", cfg, "--pcap", str(demo["pcap"]),
                           output, "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        first = json.loads(proc.stdout.readline())  # `head -1`: one whole line, then the pipe is closed
        proc.stdout.close()
        stderr = proc.stderr.read()
        assert 1 == proc.wait(timeout=600), stderr[-3000:]
    assert "Traceback" not in stderr and "Error" not in stderr, stderr[-3000:]
    assert not any(line.startswith("packets=") for line in stderr.splitlines())  # stopped: no summary of a whole run
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    if output == "--incidents":
        assert "alert" == first["event"]["kind"]
        gone = [e for e in logs if e["event"] == "sink_reader_gone"]
        assert 1 == len(gone) and "warning" == gone[0]["level"]
        assert not [e for e in logs if e["level"] == "error"], logs
        lost = [e for e in logs if e["event"] == "sink_events_lost"]
        assert all("its reader had closed it" in e["reason"] for e in lost)
    else:
        assert {"entity", "score", "threshold"} <= first.keys()
