"""Scale-out over Kafka: the `sensor` and `scorer` roles of `netad run` (config key `role`).

    sensor(s)                      Kafka                               scorers (one group)
    capture -> flows -> windows ─► windows topic, keyed sensor/entity ─► scorer -> incidents -> sinks
                                   state topic (compacted)         ◄──► hidden state per entity

Where it stands: the service layer, beside the all-in-one daemon (daemon.py); it wires the
same stages with Kafka in the middle: the sensor (kafka.sensor) the window stages of
service.pipeline, the scorer (kafka.scorer) one Scoring stage (service.scoring) per sensor.
Both run under the process lifecycle the daemon has (service.lifecycle). Records are encoded
by service.wire; this module holds what both roles share: the client settings, the topic
check and `run_role`.

Sensor: publishes every closed entity window to `kafka.windows_topic`, keyed `sensor/entity`,
so one entity's windows land on one partition, in order.

Scorer: a member of consumer group `kafka.group_id`; it scores the entities of the partitions
it owns, one Scoring stage (scorer and incident tracker) per sensor. One cycle:

1. take up to `kafka.batch_windows` windows; group them by window and score each group in
   event-time order (an entity's windows arrive in order: one partition);
2. write the scores (flushed and fsynced) and hand the incident events to the sinks (durable
   in their spools when publish returns);
3. write the new state of every entity it scored (hidden state, warm-up count, end of the
   last window scored, streak and open incident) to `kafka.state_topic`, into the partition
   number its windows come from, and wait for the broker's acknowledgement;
4. only then commit the consumed offsets.

So state is checkpointed every cycle, not only when a partition is revoked: a scorer that is
SIGKILLed gets no revoke callback, yet its partitions' new owner finds each entity's state
as of the last committed offset. The new owner reads the assigned partitions of the state
topic before it scores them. Windows redelivered after a crash between steps 3 and 4 are
recognised (their end is not after the entity's last window scored) and skipped; windows
redelivered after a crash between steps 2 and 3 are scored again from the same state, so
their scores and incident events repeat with the same ids (at-least-once, duplicates
recognisable). Offsets start at the earliest window for a group that has none.

SIGHUP (systemctl reload): a scorer reloads as the daemon does (service._reload): rules,
incident settings, sinks and logging from the new file, validated before anything is
swapped; a new model path is refused with config_restart_required, since the members of a
group must score with one model (roll them). A sensor has nothing it can change while
running (its capture and windows need a restart): it says so and goes on.
"""

from __future__ import annotations

import logging
from typing import Any

from detector.config import Config, KafkaConfig
from detector.errors import ConfigError, NetadError
from detector.logging import library_logger

POLL_S = 0.2


class KafkaDeliveryError(NetadError):
    """The broker did not acknowledge what must be durable before offsets are committed."""


def client_config(kafka: KafkaConfig, defaults: dict[str, Any] | None = None, forced: dict[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka settings: our defaults, then the config's `kafka.client`, then what this
    role cannot work without."""
    return {**(defaults or {}), "bootstrap.servers": kafka.bootstrap_servers, **kafka.client, **(forced or {}),
            "logger": kafka_logger()}


def kafka_logger() -> logging.Logger:
    """Where librdkafka's log lines go (confluent-kafka's `logger`, served by poll): JSON
    events `kafka_client_said`, a repeated one once a minute (detector.logging)."""
    return library_logger("netad.kafka", "kafka_client_said")


def check_topics(client: Any, kafka: KafkaConfig) -> int:
    """Both topics exist with the same partition count (an entity's state lives in the
    partition number of its windows); returns it. ConfigError otherwise."""
    from confluent_kafka import KafkaException

    try:
        topics = client.list_topics(timeout=15).topics
    except KafkaException as exc:
        raise ConfigError(f"kafka.bootstrap_servers: cannot reach {kafka.bootstrap_servers}: {exc}") from None
    counts = {}
    for key, name in (("windows_topic", kafka.windows_topic), ("state_topic", kafka.state_topic)):
        meta = topics.get(name)
        if meta is None or meta.error is not None:
            raise ConfigError(f"kafka.{key}: topic {name!r} does not exist on {kafka.bootstrap_servers} (create it: README, scaling out)")
        counts[key] = len(meta.partitions)
    if counts["windows_topic"] != counts["state_topic"]:
        raise ConfigError(f"kafka.state_topic: {kafka.state_topic!r} has {counts['state_topic']} partitions, "
                          f"{kafka.windows_topic!r} has {counts['windows_topic']}; they must have the same count")
    return counts["windows_topic"]


def run_role(cfg: Config, extra_sinks: list[str] | None = None, config_path: str | None = None) -> int:
    if cfg.role == "sensor":
        from detector.service.kafka.sensor import run_sensor

        return run_sensor(cfg)
    from detector.service.kafka.scorer import ScorerRole

    return ScorerRole(cfg, extra_sinks, config_path).run()
