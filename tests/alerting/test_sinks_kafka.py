"""The Kafka sink against librdkafka's mock cluster: ECS events as messages, an outage spools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detector.alerting.sinks import build_sink
from detector.errors import ConfigError


def _consume(bootstrap: str, topic: str, n: int, timeout_s: float = 30.0) -> list[dict]:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    out: list[dict] = []
    try:
        import time

        deadline = time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=n, timeout=0.5):
                if msg.error() is None:
                    out.append(json.loads(msg.value()))
    finally:
        consumer.close()
    return out


@pytest.mark.slow
def test_events_arrive_as_ecs_json(kafka_cluster: str, tmp_path: Path, make_event) -> None:
    sink = build_sink(f"kafka://{kafka_cluster}/netad.incidents?compression.type=lz4", spool_dir=tmp_path / "spool")
    events = [make_event(i) for i in range(30)]
    for ev in events:
        sink.publish(ev)
    assert sink.flush(timeout_s=30)
    sink.close()
    got = _consume(kafka_cluster, "netad.incidents", len(events))
    assert sorted(r["event"]["id"] for r in got) == sorted(e.event_id for e in events)
    assert all(r["event"]["kind"] == "alert" and r["observer"]["product"] == "netad" for r in got)


def test_an_unreachable_cluster_keeps_events_spooled(tmp_path: Path, make_event) -> None:
    url = "kafka://127.0.0.1:9/netad.incidents?timeout_s=1&backoff_s=0.2&socket.connection.setup.timeout.ms=1000"
    sink = build_sink(url, spool_dir=tmp_path / "spool")
    sink.publish(make_event(1))
    assert not sink.flush(timeout_s=2)
    assert sink.stats["backlog"] == 1
    sink.close(timeout_s=0.5)
    assert len(list((tmp_path / "spool").rglob("*.json*"))) >= 1, "the event left the spool without delivery"


@pytest.mark.parametrize("url", ["kafka://127.0.0.1:9092/", "kafka://127.0.0.1:9092/a/b", "kafka://127.0.0.1:9092/t?bogus=1"])
def test_bad_kafka_urls(url: str) -> None:
    with pytest.raises(ConfigError):
        build_sink(url)
