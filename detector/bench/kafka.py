"""`netad bench kafka`: entity windows per second end to end through Kafka, 1 and 2 scorers.

What is measured, in one run against librdkafka's mock cluster (a real broker protocol on
loopback; no broker can be installed here):

- the sensor side alone: WindowPublisher encoding and producing the windows (acknowledged);
- end to end with N scorer processes (`netad run` with role scorer, each a real process in
  one consumer group): from the first window published until every entity window's score
  is written, each scorer going through its whole cycle (decode, score with carried state,
  incidents, fsynced scores, entity states to the state topic, offset commit).

The windows are synthetic (random feature vectors for `--hosts` hosts over `--windows`
windows) and the model has random weights: scoring cost does not depend on what it learnt.
On this 2-core machine the sensor, the mock brokers and two scorers share two cores, so two
scorers can show little gain; the figure to size by is the single scorer's rate per core.
The mock cluster keeps only about 5 MB per partition (older records are dropped, and a
consumer that has not read them yet resets to the oldest kept): the default run (30,000
entity windows over 4 partitions) stays well under that.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml

from detector.bench.model import _batches, _setup
from detector.config import Config

WINDOWS_TOPIC, STATE_TOPIC = "bench.windows.{run}", "bench.state.{run}"
PARTITIONS = 4  # the mock cluster's partitions per auto-created topic
_STALL_S = 30.0


def _start_cluster(topics: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "detector.bench._kafka_mock", "1", *topics], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def _scorer_config(work: Path, name: str, run: int, bootstrap: str, model: Path) -> Path:
    cfg = {
        "role": "scorer",
        "model": {"path": str(model), "device": "cpu", "threads": 1},
        "kafka": {"bootstrap_servers": bootstrap, "windows_topic": WINDOWS_TOPIC.format(run=run),
                  "state_topic": STATE_TOPIC.format(run=run), "group_id": f"bench-{run}",
                  "client": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 300}},
        "sinks": [{"url": f"jsonl:{work / f'{name}-incidents.jsonl'}"}],
        "outputs": {"scores": str(work / f"{name}-scores.jsonl"), "summary": False},
        "state_dir": str(work / f"state-{name}"),
        "logging": {"format": "json"},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _assigned(log: Path) -> set[int]:
    owned: set[int] = set()
    if log.exists():
        for line in log.read_text().splitlines():
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if r.get("event") == "partitions_assigned":
                owned |= set(r["partitions"])
            elif r.get("event") == "partitions_revoked":
                owned -= set(r["partitions"])
    return owned


def _run(work: Path, run: int, scorers: int, bootstrap: str, model: Path, batches: list, timeout_s: float) -> dict[str, float]:
    from detector.service.kafka.sensor import WindowPublisher

    names = [f"run{run}-scorer{i}" for i in range(scorers)]
    procs, logs = [], []
    for name in names:
        log = work / f"{name}.log"
        with open(log, "w") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "detector.cli", "run", "-c",
                                           str(_scorer_config(work, name, run, bootstrap, model))],
                                          stdout=out, stderr=subprocess.STDOUT))
        logs.append(log)
    try:
        deadline = time.monotonic() + timeout_s
        while not (all(_assigned(log) for log in logs) and set().union(*map(_assigned, logs)) == set(range(PARTITIONS))):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"the scorers did not form a group: see {work}")
            time.sleep(0.2)
        time.sleep(1.0)  # let a late rebalance settle
        cfg = Config.model_validate({"kafka": {"bootstrap_servers": bootstrap, "windows_topic": WINDOWS_TOPIC.format(run=run),
                                               "state_topic": STATE_TOPIC.format(run=run)}})
        publisher = WindowPublisher(cfg)
        total = sum(len(b) for b in batches)
        t0 = time.perf_counter()
        for wb in batches:
            publisher.publish(wb)
        left = publisher.flush(60)
        t_published = time.perf_counter() - t0
        scores = [work / f"{name}-scores.jsonl" for name in names]
        last, last_change = -1, time.monotonic()
        while (done := sum(_lines(p) for p in scores)) < total:
            now = time.monotonic()
            if done != last:
                last, last_change = done, now
            if now - last_change > _STALL_S or now > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{done} of {total} windows scored, none for {now - last_change:.0f} s (the mock cluster "
                                   f"keeps about 5 MB per partition: use fewer --hosts x --windows); see {work}")
            time.sleep(0.05)
        t_scored = time.perf_counter() - t0
        return {"entity_windows": total, "publish_s": t_published, "end_to_end_s": t_scored, "not_acknowledged": left}
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def run_kafka_bench(hosts: int = 2000, windows: int = 15, repeats: int = 1, hidden: int = 32,
                    progress: Callable[[str], None] | None = None, workdir: Path | None = None) -> dict[str, Any]:
    setup = _setup(hidden, 6, hosts, windows)
    batches = _batches(setup, hosts)
    plan = [(scorers, rep) for rep in range(repeats) for scorers in (1, 2)]
    topics = [t.format(run=run) for run in range(len(plan)) for t in (WINDOWS_TOPIC, STATE_TOPIC)]
    with tempfile.TemporaryDirectory(prefix="netad-bench-kafka-") as tmp:
        work = workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = setup.bundle.save(work / "model")
        cluster, bootstrap = _start_cluster(topics)
        try:
            results: dict[int, list[dict[str, float]]] = {1: [], 2: []}
            for run, (scorers, _rep) in enumerate(plan):
                if progress:
                    progress(f"run {run + 1}/{len(plan)}: {scorers} scorer(s), {hosts * windows:,} entity windows")
                results[scorers].append(_run(work, run, scorers, bootstrap, model, batches, timeout_s=600))
        finally:
            cluster.kill()
            cluster.wait()
    out: dict[str, Any] = {"hosts": hosts, "windows": windows, "entity_windows": hosts * windows, "repeats": repeats,
                           "cpu_count": os.cpu_count(), "hidden": hidden}
    for scorers, runs in results.items():
        out[f"scorers_{scorers}"] = {
            "end_to_end_windows_per_s": statistics.median(r["entity_windows"] / r["end_to_end_s"] for r in runs),
            "publish_windows_per_s": statistics.median(r["entity_windows"] / r["publish_s"] for r in runs),
            "runs": runs,
        }
    out["ratio_2_vs_1"] = out["scorers_2"]["end_to_end_windows_per_s"] / out["scorers_1"]["end_to_end_windows_per_s"]
    return out


def format_kafka_bench(r: dict[str, Any]) -> str:
    lines = [f"netad bench kafka: {r['entity_windows']:,} entity windows ({r['hosts']:,} hosts x {r['windows']} windows), "
             f"mock cluster, {r['cpu_count']} cores, median of {r['repeats']}"]
    for n in (1, 2):
        s = r[f"scorers_{n}"]
        lines.append(f"  {n} scorer{'s' if n > 1 else ' '}  end to end {s['end_to_end_windows_per_s']:>10,.0f} entity windows/s   "
                     f"(sensor publishing alone {s['publish_windows_per_s']:,.0f}/s)")
    lines.append(f"  2 vs 1 scorers: x{r['ratio_2_vs_1']:.2f}")
    return "\n".join(lines)



@click.command("kafka")
@click.option("--hosts", type=click.IntRange(min=1), default=2000, show_default=True, help="Entities per window.")
@click.option("--windows", type=click.IntRange(min=1), default=15, show_default=True,
              help="Windows per run (the mock cluster keeps about 5 MB per partition: stay under ~40,000 entity windows).")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True, help="Runs per figure (median).")
@click.option("--workdir", type=click.Path(file_okay=False), default=None, help="Keep configs, logs and scores here.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def kafka(hosts: int, windows: int, repeats: int, workdir: str | None, as_json: bool) -> None:
    """Entity windows/s end to end through Kafka (mock cluster) with 1 and 2 scorer processes."""
    result = run_kafka_bench(hosts, windows, repeats, progress=None if as_json else lambda m: click.echo(m, err=True),
                             workdir=Path(workdir) if workdir else None)
    click.echo(json.dumps(result, indent=2) if as_json else format_kafka_bench(result))
