"""A Kafka cluster for tests and `netad bench kafka`: librdkafka's built-in mock cluster,
which speaks the real wire protocol on loopback ports. Run as a process; it prints the
bootstrap servers on one line, then keeps the cluster up until killed or its stdin closes.

    python -m detector.bench._kafka_mock BROKERS TOPIC [TOPIC ...]

Topics are created by asking for their metadata (the mock cluster auto-creates a topic with
4 partitions); its CreateTopics needs a controller the mock cluster does not have.
"""

import sys

import confluent_kafka


def main() -> None:
    brokers, topics = int(sys.argv[1]), sys.argv[2:]
    producer = confluent_kafka.Producer({"bootstrap.servers": "mock", "test.mock.num.brokers": brokers, "log_level": 3})
    for topic in topics:
        producer.list_topics(topic, timeout=10)
    meta = producer.list_topics(timeout=10)
    print(",".join(f"{b.host}:{b.port}" for b in meta.brokers.values()), flush=True)
    sys.stdin.read()  # until the test closes our stdin (or kills us)


if __name__ == "__main__":
    main()
