"""Where a sentinel set's pairs come from: the proxy's JSONL log, or the Kafka pairs topic.

Both yield `(where, record)`, with None for a record that is not a JSON object, so the builder can
count what it skipped. Reading Kafka commits nothing and stops at the end offsets seen at the start.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shadowtap.records import jsonl_lines

# A record as read: where it was, and the JSON object (None when the line or message is not one).
Read = tuple[str, dict[str, Any] | None]


def _decode(data: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def iter_jsonl(path: Path) -> Iterator[Read]:
    """(where, record or None when the line is not JSON) for each line of a pairs.jsonl."""
    with path.open("rb") as lines:
        for number, line in jsonl_lines(lines):
            yield f"{path}:{number}", _decode(line)


def _assign_from_start(consumer: Any, topic: str) -> dict[Any, int]:
    """Read every partition of `topic` from its start; returns the end offsets still to reach."""
    from kafka import TopicPartition

    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise ValueError(f"Kafka topic {topic!r} does not exist or has no partitions")
    assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    consumer.seek_to_beginning(*assigned)
    end = {tp: offset for tp, offset in consumer.end_offsets(assigned).items() if offset > 0}
    return {tp: offset for tp, offset in end.items() if consumer.position(tp) < offset}


def iter_kafka(bootstrap_servers: str, topic: str, *, timeout_s: float = 30.0) -> Iterator[Read]:
    """Every record on `topic` from the beginning to the end offsets seen at the start; commits nothing."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        consumer_timeout_ms=int(timeout_s * 1000),
    )
    try:
        end = _assign_from_start(consumer, topic)
        while end:
            batches = consumer.poll(timeout_ms=int(timeout_s * 1000))
            if not batches:
                raise TimeoutError(
                    f"no records from Kafka topic {topic!r} for {timeout_s:.0f}s before its end"
                )
            for tp, messages in batches.items():
                if tp not in end:
                    continue
                for message in messages:
                    if message.offset < end[tp]:
                        yield f"kafka:{topic}/{tp.partition}@{message.offset}", _decode(message.value)
                if consumer.position(tp) >= end[tp]:
                    del end[tp]
    finally:
        consumer.close()
