"""Reading a Kafka topic back whole, for tests: what a sink or a worker wrote, duplicates included."""

from __future__ import annotations

import json
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

__all__ = ["read_all", "read_messages"]


def read_messages(bootstrap: str, topic: str, *, expected: int, timeout_s: float) -> list[ConsumerRecord]:
    """Every committed message on `topic` from its beginning: waits until there are at least `expected`
    (or `timeout_s` passes), then returns all there are, duplicates included."""
    deadline = time.monotonic() + timeout_s
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id="shadowtap-reader",
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    messages: list[ConsumerRecord] = []
    try:
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.1)
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return messages
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning()
        while time.monotonic() < deadline:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            batch = consumer.poll(timeout_ms=max(1, min(500, remaining_ms)))
            for records in batch.values():
                messages.extend(records)
            if len(messages) >= expected:
                ends = consumer.end_offsets(assigned)
                if not batch or all(consumer.position(tp) >= ends[tp] for tp in assigned):
                    break
    finally:
        consumer.close()
    return messages


def read_all(bootstrap: str, topic: str, *, expected: int, timeout_s: float) -> list[dict[str, Any]]:
    """The JSON records on `topic`, as `read_messages` finds them."""
    return [
        json.loads(m.value) for m in read_messages(bootstrap, topic, expected=expected, timeout_s=timeout_s)
    ]
