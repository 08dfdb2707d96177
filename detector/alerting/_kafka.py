"""Kafka transport: incident records produced to a topic, the way Logstash, Vector or Fluent
Bit pick them up (their Kafka inputs read one JSON document per message).

Where it stands: under sinks.py, like _syslog.py and _http.py. A `send` produces the batch
and waits for the broker's acknowledgement of every record (acks=all, idempotent producer);
anything unacknowledged when `timeout_s` runs out is a DeliveryError, so the Sink keeps the
batch spooled and retries (records delivered before the failure may then arrive twice:
at-least-once, and every event carries its stable event.id). A topic the broker says does not
exist, or credentials it refuses, are an EndpointError: retried slowly until fixed.
"""

from __future__ import annotations

from typing import Any

from detector.alerting._transport import DeliveryError, EndpointError, Transport, unresolvable
from detector.logging import library_logger

BATCH_MAX = 500


class KafkaTransport(Transport):
    batch_max = BATCH_MAX

    def __init__(self, *, servers: str, topic: str, client: dict[str, str], timeout_s: float) -> None:
        self.servers = servers
        self.topic = topic
        self.client = dict(client)
        self.timeout_s = timeout_s
        self._producer: Any = None

    def check(self) -> str | None:
        """Every bootstrap server resolves (librdkafka connects lazily, so nothing is sent)."""
        for server in self.servers.split(","):
            host, _, port = server.strip().rpartition(":")
            problem = unresolvable(host.strip("[]") or server, int(port) if port.isdigit() else None)
            if problem:
                return problem
        return None

    def _connect(self) -> Any:
        if self._producer is None:
            from confluent_kafka import Producer

            self._producer = Producer({"linger.ms": 5, **self.client, "bootstrap.servers": self.servers,
                                       "enable.idempotence": True, "message.timeout.ms": max(int(self.timeout_s * 1000), 1000),
                                       "logger": library_logger("netad.kafka", "kafka_client_said")})
        return self._producer

    def send(self, records: list[bytes]) -> None:
        from confluent_kafka import KafkaError

        producer = self._connect()
        errors: list[Any] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(err)

        for record in records:
            while True:
                try:
                    producer.produce(self.topic, record, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.1)
        left = producer.flush(self.timeout_s)
        if errors:
            err = errors[0]
            if err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC, KafkaError.TOPIC_AUTHORIZATION_FAILED,
                              KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._AUTHENTICATION):
                raise EndpointError(f"kafka {self.topic}: {err.str()}")
            raise DeliveryError(f"kafka {self.topic}: {len(errors)} of {len(records)} records not delivered: {err.str()}")
        if left:
            raise DeliveryError(f"kafka {self.topic}: {left} of {len(records)} records not acknowledged within {self.timeout_s} s")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(1.0)
            self._producer = None
