"""`netad bench capture` / `netad bench live`: smoke tests with tiny packet counts.

These check that the commands run end to end and report consistent counts; they never
assert on a rate or a duration (benchmarks print figures, tests do not time things).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from detector.bench.capture import format_capture_bench
from detector.bench.cli import EX_NOPERM, bench

PACKETS = 3000


@pytest.fixture(scope="module")
def capture_result(tmp_path_factory) -> dict:
    workdir = tmp_path_factory.mktemp("bench")
    args = ["capture", "--packets", str(PACKETS), "--repeats", "1", "--scapy-packets", "200",
            "--table-flows", "5000", "--workdir", str(workdir), "--json"]
    result = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_bench_capture_counts_every_packet_of_the_generated_capture(capture_result):
    r = capture_result
    assert PACKETS == r["capture"]["packets"]
    assert r["capture"]["span_s"] > 1  # 3,000 packets of the 300 s profile fill about 2 s
    assert PACKETS == r["parse"]["rows"] + r["parse"]["non_ip"] + r["parse"]["malformed"]
    assert 200 == r["scapy"]["packets_measured"]
    assert 5000 == r["flow_memory"]["measured_flows"]
    assert r["pipeline"]["entities"] > 1  # hosts of the bench network's home net, and global
    assert r["pipeline"]["windows_closed"] >= 1


def test_bench_capture_reports_every_figure_with_its_target(capture_result):
    r = capture_result
    for phase in ("bytes_read", "parse", "pipeline", "scapy"):
        assert r[phase]["pps"] > 0, phase
    assert {"parse_over_bytes_read", "parse_over_scapy", "pipeline_over_scapy"} == set(r["ratios"])
    assert {"parse_pps": 2_500_000, "pipeline_pps": 1_000_000, "bytes_per_flow": 150} == {
        k: v["target"] for k, v in r["targets"].items()
    }
    assert r["flow_memory"]["state_bytes_per_flow"] > 0
    assert r["rss"]["peak_mb"] >= r["rss"]["baseline_mb"] > 0


def test_bench_capture_text_names_the_pinning_the_scaling_and_the_targets(capture_result):
    text = format_capture_bench(capture_result)
    assert f"pinned to CPU {capture_result['cpu']}" in text
    assert "first 200 packets, scaled" in text
    assert "target >= 2.5 M" in text and "target >= 1.0 M" in text and "target <= 150 B" in text


def test_bench_capture_workers_measures_each_count_in_one_run(tmp_path):
    """--workers 1,2: both counts read every packet into the same windows; each worker's
    packets add up; the ratio is the quotient of the two rates, the target beside it.
    --span-s packs the packets into that many seconds of traffic (a busier link)."""
    args = ["capture", "--packets", str(PACKETS), "--repeats", "1", "--workers", "1,2", "--span-s", "1",
            "--workdir", str(tmp_path), "--json"]
    result = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    one, two = r["per_workers"]["1"], r["per_workers"]["2"]
    assert one["packets"] == two["packets"] == sum(two["worker_packets"]) > 0
    assert one["windows"] == two["windows"]
    assert 0 < r["capture"]["span_s"] <= 1
    assert r["ratios"]["2_over_1"] == pytest.approx(two["pps"] / one["pps"])
    assert r["target"]["met"] == (r["ratios"]["2_over_1"] >= 1.7)


def test_bench_live_without_root_says_so_and_exits_77(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    result = CliRunner().invoke(bench, ["live", "--packets", "1000"])
    assert EX_NOPERM == result.exit_code
    assert "bench live needs root" in result.output


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_live_replays_a_tiny_capture_and_counts_what_arrived():
    """Two slow steps over a veth pair: every frame sent arrives, none is dropped."""
    from detector.bench.live import live_bench_unavailable

    reason = live_bench_unavailable()
    if reason:
        pytest.skip(reason)
    args = ["live", "--packets", "2000", "--pps", "2000,4000", "--no-topspeed", "--step-s", "1", "--json"]
    result = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert [2000, 4000] == [s["requested_pps"] for s in r["steps"]]
    for step in r["steps"]:
        assert step["sent"] > 0
        assert (step["sent"], 0, 0) == (step["received"], step["kernel_drops"], step["interface_drops"])
    assert r["best_zero_drop_pps"] is not None
