"""The scoring worker: pair records in, score records out, exactly once per pair.

On Kafka it runs as a consumer group over the pairs topic (several workers share its partitions). Each
polled batch is scored, then its score records, review items and the consumed offsets are committed in
one Kafka transaction: a worker killed mid-batch leaves nothing visible to `read_committed` readers, and
its replacement re-scores the batch, so no pair is lost or counted twice. Score records are keyed by
`pair_id/scorer/side`. Offline, `score_file` does the same for a JSONL file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import jsonschema
from prometheus_client import CollectorRegistry

from shadowtap.config import Settings
from shadowtap.errors import ConfigError
from shadowtap.metrics import ScoringMetrics, register_process_metrics
from shadowtap.proxy.sinks import encode_record
from shadowtap.records import PairRecord, ReviewItem, ScoreRecord, jsonl_lines, score_key, validate_pair
from shadowtap.scorers.runner import ScoringPipeline, build_scorers

__all__ = ["KafkaWorker", "SeenPairs", "make_pipeline", "parse_pair", "score_file", "score_many"]

log = logging.getLogger("shadowtap.worker")


def make_pipeline(settings: Settings, metrics: ScoringMetrics) -> ScoringPipeline:
    segments = frozenset(settings.tags.segments)
    return ScoringPipeline(build_scorers(settings.scoring, metrics, segments), metrics, segments)


Scored = tuple[list[ScoreRecord], list[ReviewItem]]
# Pairs a Kafka worker scores at once unless `scoring.concurrency` says otherwise.
KAFKA_CONCURRENCY = 16


async def score_many(pipeline: ScoringPipeline, pairs: list[PairRecord], concurrency: int) -> list[Scored]:
    gate = asyncio.Semaphore(concurrency)

    async def one(pair: PairRecord) -> Scored:
        async with gate:
            return await pipeline.score_pair(pair)

    return await asyncio.gather(*(one(p) for p in pairs))


class SeenPairs:
    """Pair ids already scored by this process (bounded), so a re-delivered pair is not counted twice."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def discard(self, pair_id: str) -> None:
        """Forget a pair (its scores were not stored), so that it is scored again when re-delivered."""
        self._ids.pop(pair_id, None)

    def add(self, pair_id: str) -> bool:
        if pair_id in self._ids:
            self._ids.move_to_end(pair_id)
            return False
        self._ids[pair_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True


def parse_pair(raw: bytes | str) -> tuple[PairRecord | None, str | None]:
    """A pair record, or None and why not."""
    try:
        pair: PairRecord = json.loads(raw)
    except ValueError as exc:
        return None, f"not JSON: {exc}"
    try:
        validate_pair(pair)
    except jsonschema.ValidationError as exc:
        path = "/".join(str(p) for p in exc.absolute_path) or "(record)"
        version = pair.get("schema") if isinstance(pair, dict) else None
        return None, f"not a valid {version or 'pair'} record at {path}: {exc.message}"
    return pair, None


# ------------------------------------------------------------------------------------------ offline


def score_file(
    settings: Settings,
    input_path: Path,
    output_path: Path,
    review_path: Path | None,
    *,
    concurrency: int = 16,
    progress: Any = None,
) -> dict[str, Any]:
    """Score every pair in `input_path` into `output_path`; returns counts for the summary."""
    registry = CollectorRegistry()
    metrics = ScoringMetrics(registry)
    pipeline = make_pipeline(settings, metrics)
    with input_path.open("rb") as handle:
        lines = list(jsonl_lines(handle))
    pairs: list[PairRecord] = []
    invalid: list[tuple[int, str]] = []
    seen = SeenPairs()
    duplicates = 0
    for number, line in lines:
        pair, why = parse_pair(line)
        if pair is None:
            invalid.append((number, why or ""))
            continue
        if not seen.add(pair["id"]):
            duplicates += 1
            continue
        pairs.append(pair)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    outcomes: dict[tuple[str, str, str], int] = {}
    review_count = 0
    with (
        output_path.open("wb") as out,
        review_path.open("wb") if review_path else open(os.devnull, "wb") as rev,
    ):
        batch_size = 64

        async def run() -> None:
            nonlocal review_count
            for start in range(0, len(pairs), batch_size):
                batch = pairs[start : start + batch_size]
                results = await score_many(pipeline, batch, concurrency)
                for pair, (records, review) in zip(batch, results, strict=True):
                    out.write(b"".join(encode_record(r) + b"\n" for r in records))
                    rev.write(b"".join(encode_record(i) + b"\n" for i in review))
                    review_count += len(review)
                    pipeline.count(pair, records, review, source="file")
                    for r in records:
                        key = (r["scorer"], r["side"], r["outcome"])
                        outcomes[key] = outcomes.get(key, 0) + 1
                if progress is not None:
                    progress(len(batch))
            await pipeline.aclose()

        asyncio.run(run())
    errors = {
        s.labels["scorer"]: int(s.value)
        for m in registry.collect()
        if m.name == "shadowtap_scorer_errors"
        for s in m.samples
        if s.name.endswith("_total")
    }
    return {
        "pairs": len(pairs),
        "invalid": invalid,
        "duplicates": duplicates,
        "outcomes": outcomes,
        "review": review_count,
        "scorer_errors": errors,
    }


# ------------------------------------------------------------------------------------------ Kafka


class KafkaWorker:
    """A member of the scoring consumer group."""

    def __init__(
        self, settings: Settings, registry: CollectorRegistry, *, worker_id: str | None = None
    ) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        kafka = settings.sink.kafka
        if not kafka.bootstrap_servers:
            raise ConfigError("sink.kafka.bootstrap_servers: the Kafka worker needs a broker")
        self.settings = settings
        self.kafka = kafka
        self.metrics = ScoringMetrics(registry)
        register_process_metrics(registry)
        self.pipeline = make_pipeline(settings, self.metrics)
        self.metrics.initialise_scorers(
            self.pipeline.scorers, settings.tags.segments, noise_floor=settings.shadow.noise_floor_rate > 0
        )
        heartbeat = settings.scoring.heartbeat_file
        self.heartbeat = Path(heartbeat) if heartbeat else None
        self.concurrency = settings.scoring.concurrency or KAFKA_CONCURRENCY
        self.batch_size = settings.scoring.batch_size
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.seen = SeenPairs()
        self.stopping = False
        self.consumer = KafkaConsumer(
            kafka.topic,
            bootstrap_servers=kafka.bootstrap_servers,
            group_id=kafka.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=self.batch_size,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            client_id=f"shadowtap-worker-{self.worker_id}",
        )
        # A stable transactional id per worker slot: a restarted worker fences its dead predecessor and
        # aborts whatever batch it left half-written.
        self.producer = KafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers,
            transactional_id=f"shadowtap-scorer-{self.worker_id}",
            transaction_timeout_ms=15_000,
            acks="all",
            compression_type=None if kafka.compression == "none" else kafka.compression,
            linger_ms=kafka.linger_ms,
        )
        self.producer.init_transactions()
        self.invalid_topic = f"{kafka.topic}.invalid"

    def run(self, *, max_idle_s: float | None = None) -> None:
        """Consume until SIGTERM/SIGINT (or `max_idle_s` without records, for batch use)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())
        loop = asyncio.new_event_loop()
        idle_since = time.monotonic()
        try:
            while not self.stopping:
                polled = self.consumer.poll(timeout_ms=500, max_records=self.batch_size)
                self._beat()
                self._update_lag()
                if not polled:
                    if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                        break
                    continue
                idle_since = time.monotonic()
                self._process(loop, polled)
        finally:
            self.close()
            loop.run_until_complete(self.pipeline.aclose())
            loop.close()

    def stop(self) -> None:
        self.stopping = True

    def _beat(self) -> None:
        """Touch scoring.heartbeat_file: a liveness probe's sign that the consume loop still turns (a
        worker stuck in a poll or a batch stops touching it)."""
        if self.heartbeat is not None:
            try:
                self.heartbeat.touch()
            except OSError as exc:
                log.warning("cannot touch scoring.heartbeat_file %s: %s", self.heartbeat, exc)

    def _process(self, loop: asyncio.AbstractEventLoop, polled: dict[Any, list[Any]]) -> None:
        """Score one polled batch and commit its records with its offsets, or rewind to score it again."""
        fresh, invalid, duplicates, offsets = self._sort(polled)
        results = loop.run_until_complete(score_many(self.pipeline, fresh, self.concurrency))
        self.producer.begin_transaction()
        try:
            self._commit(results, invalid, offsets)
        except Exception:
            log.exception("could not commit the scores of %d pairs; they will be re-delivered", len(fresh))
            self._rewind(fresh, offsets)
            return
        for pair, (records, review) in zip(fresh, results, strict=True):
            self.pipeline.count(pair, records, review, source="kafka")
        if duplicates:
            self.metrics.pairs_duplicate.labels(source="kafka").inc(duplicates)

    def _sort(self, polled: dict[Any, list[Any]]) -> tuple[list[PairRecord], list[Any], int, dict[Any, Any]]:
        """(pairs to score, messages that are no pair record, duplicates, offsets to commit)."""
        from kafka.structs import OffsetAndMetadata

        fresh: list[PairRecord] = []
        invalid: list[Any] = []
        duplicates = 0
        offsets = {}
        for tp, messages in polled.items():
            for message in messages:
                pair, why = parse_pair(message.value)
                if pair is None:
                    log.error(
                        "partition %s offset %d: %s (kept on %s)", tp, message.offset, why, self.invalid_topic
                    )
                    invalid.append(message)
                elif self.seen.add(pair["id"]):
                    fresh.append(pair)
                else:
                    duplicates += 1
            offsets[tp] = OffsetAndMetadata(messages[-1].offset + 1, "", -1)
        return fresh, invalid, duplicates, offsets

    def _commit(self, results: list[Scored], invalid: list[Any], offsets: dict[Any, Any]) -> None:
        """Scores, review items, invalid messages and the consumed offsets, in the open transaction."""
        for records, review in results:
            for r in records:
                self.producer.send(self.kafka.scores_topic, key=score_key(r).encode(), value=encode_record(r))
            for item in review:
                self.producer.send(
                    self.kafka.review_topic, key=item["pair_id"].encode(), value=encode_record(item)
                )
        for message in invalid:
            self.producer.send(self.invalid_topic, key=message.key, value=message.value)
        self.producer.send_offsets_to_transaction(offsets, self.kafka.group_id)
        self.producer.commit_transaction()

    def _rewind(self, fresh: list[PairRecord], offsets: dict[Any, Any]) -> None:
        """Abort the transaction and seek back to the last committed offsets: the batch is scored again."""
        for pair in fresh:
            self.seen.discard(pair["id"])
        try:
            self.producer.abort_transaction()
        except Exception:
            log.exception("abort failed")
        for tp in offsets:
            committed = self.consumer.committed(tp)
            self.consumer.seek(tp, committed if committed is not None else 0)

    def _update_lag(self) -> None:
        try:
            assigned = self.consumer.assignment()
            self.metrics.assigned_partitions.labels(topic=self.kafka.topic).set(len(assigned))
            if not assigned:
                return
            ends = self.consumer.end_offsets(list(assigned))
            lag = sum(max(0, ends[tp] - self.consumer.position(tp)) for tp in assigned)
            self.metrics.consumer_lag.labels(topic=self.kafka.topic).set(lag)
        except Exception:  # lag is informational; never stop scoring for it
            log.debug("could not compute consumer lag", exc_info=True)

    def close(self) -> None:
        try:
            self.consumer.close()
        finally:
            self.producer.close(timeout=10)
