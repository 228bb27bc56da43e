"""The Kafka sink: pair records to a topic (acks=all, compression, batching, key = pair id).

Whatever the broker does not acknowledge (down at start, down mid-traffic, too slow) goes to a bounded
local spill file and is delivered, oldest first, once the broker answers again, also by the next process
if this one stops first. Only a record that cannot even be spilled is lost, and that is counted and logged
at ERROR. Delivery is at least once: a record whose acknowledgement was lost in an outage can arrive twice,
which is why consumers dedupe by pair id.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from kafka import codec as kafka_codec
from kafka.errors import (
    InvalidRecordError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NoBrokersAvailable,
    RecordListTooLargeError,
)

from shadowtap.config import KafkaSettings
from shadowtap.metrics import Metrics
from shadowtap.proxy.sinks import STOP, ThreadedSink, encode_record
from shadowtap.proxy.spill import SpillFile

log = logging.getLogger("shadowtap.sink.kafka")

# The broker will never take these records, however often they are retried.
UNDELIVERABLE = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError)

# Records per delivery attempt from the spill file (after a failure, one record probes the broker first).
DRAIN_RECORDS = 1000

_CODECS = {
    "gzip": (kafka_codec.has_gzip, "gzip"),
    "snappy": (kafka_codec.has_snappy, "python-snappy"),
    "lz4": (kafka_codec.has_lz4, "lz4"),
    "zstd": (kafka_codec.has_zstd, "zstandard"),
}


def _describe(exc: BaseException | None) -> str:
    text = str(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}"


def _transient(error: Exception | None) -> bool:
    """Errors that say only that the broker is away or slow, not that the producer is broken."""
    return isinstance(error, (KafkaTimeoutError, NoBrokersAvailable, KafkaConnectionError))


def _accepts_connections(bootstrap_servers: str, timeout: float = 1.0) -> bool:
    """Whether any of the bootstrap servers accepts a TCP connection."""
    for server in bootstrap_servers.split(","):
        server = server.strip()
        host, sep, port = server.rpartition(":")
        if not sep or "]" in port:
            host, port = server, "9092"
        if not port.isdigit():
            return True  # an address this check cannot read: let the producer try it
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
        except OSError:
            continue
        return True
    return False


@dataclass
class _Attempt:
    delivered: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    rejected: list[tuple[int, Exception]] = field(default_factory=list)
    error: Exception | None = None


def producer_config(settings: KafkaSettings) -> dict[str, Any]:
    """KafkaProducer options for the pairs topic; every wait is bounded so the writer never hangs."""
    delivery_timeout_ms = max(
        int(settings.delivery_timeout_s * 1000), settings.linger_ms + settings.request_timeout_ms
    )
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": "shadowtap-proxy",
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": None if settings.compression == "none" else settings.compression,
        "linger_ms": settings.linger_ms,
        "batch_size": settings.batch_size,
        "request_timeout_ms": settings.request_timeout_ms,
        "delivery_timeout_ms": delivery_timeout_ms,
        # send() waits this long at most for metadata or buffer space; the constructor this long at
        # most for a broker to answer (it raises NoBrokersAvailable when none does).
        "max_block_ms": min(5000, delivery_timeout_ms),
        "api_version_auto_timeout_ms": min(5000, settings.request_timeout_ms),
        "reconnect_backoff_max_ms": 1000,
    }


class KafkaSink(ThreadedSink):
    """Pair records to a Kafka topic from one writer thread, with a spill file for what Kafka cannot take."""

    name = "kafka"

    def __init__(
        self,
        settings: KafkaSettings,
        metrics: Metrics,
        spill_path: Path,
        queue_size: int = 10_000,
        *,
        topic: str | None = None,
        key_field: str = "id",
        name: str = "kafka",
    ) -> None:
        if not settings.bootstrap_servers:
            raise ValueError("sink.kafka.bootstrap_servers: not set; the Kafka sink needs a broker")
        if settings.compression in _CODECS:
            available, package = _CODECS[settings.compression]
            if not available():
                raise ValueError(
                    f"sink.kafka.compression: {settings.compression!r} needs the Python package "
                    f"{package!r}; install it or choose gzip"
                )
        self.name = name
        super().__init__(metrics, queue_size)
        self.settings = settings
        self.bootstrap_servers: str = settings.bootstrap_servers
        self.topic = topic or settings.topic
        self.key_field = key_field
        self.spill = SpillFile(spill_path, settings.spill_max_bytes)
        self._config = producer_config(settings)
        # kafka-python reports a record by delivery_timeout_ms, but with idempotence one that was in
        # flight when the broker went away can take much longer. Past this bound it is given up on (and
        # the producer replaced): a record delivered twice is better than a writer stuck while the
        # queue behind it overflows.
        self._report_within_s = (self._config["delivery_timeout_ms"] + settings.request_timeout_ms) / 1000 + 5
        self.idle_interval = min(settings.retry_interval_s, 1.0)
        self._producer: KafkaProducer | None = None
        self._retry_at = 0.0
        self._probe = True
        self._close_by: float | None = None
        self._outage_since: float | None = None
        self._dropped = 0
        self._drop_logged_at = 0.0
        self._drops_unlogged = 0
        self._records = metrics.sink_records
        metrics.sink_spill_bytes.labels(sink=self.name).set_function(lambda: self.spill.pending_bytes)
        if self.spill.pending_bytes:
            log.info(
                "%d bytes of undelivered records in %s from an earlier run; delivering them first",
                self.spill.pending_bytes,
                self.spill.path,
            )

    # ------------------------------------------------------------------ ThreadedSink hooks

    def write(self, records: list[Mapping[str, Any]]) -> None:
        lines = [encode_record(r) for r in records]
        if self._waiting() or (self.spill.pending_bytes and not self._drain_chunk()):
            self._keep(lines)  # the broker is still away: behind what is already waiting
            return
        keys = [self._key(r.get(self.key_field)) for r in records]
        attempt = self._deliver(keys, lines)
        self._count("written", len(attempt.delivered))
        self._count("failed", len(attempt.failed))
        self._reject([(lines[i], exc) for i, exc in attempt.rejected])
        self._keep([lines[i] for i in attempt.failed])

    def idle(self) -> None:
        while self.spill.pending_bytes and self._queue.empty() and self._drain_chunk():
            pass

    def finish(self) -> None:
        while self.spill.pending_bytes and self._drain_chunk():
            pass
        self._close_producer(timeout=self._time_left(default=5.0))
        if self.spill.pending_bytes:
            log.warning(
                "%d bytes of records not delivered to Kafka are kept in %s for the next start",
                self.spill.pending_bytes,
                self.spill.path,
            )

    def start(self) -> None:
        self._close_by = None
        super().start()

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued, or spill it, and return within `timeout` seconds.

        The writer notices the deadline between steps; the longest step it cannot cut short is one
        `send()` or connection attempt (5 s at most), so `timeout` should leave room for that."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        # Deliveries stop a little before the deadline so that what is left can still be spilled.
        self._close_by = deadline - min(1.0, timeout / 4)
        try:
            self._queue.put(STOP, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            log.error("%s sink: queue still full at shutdown", self.name)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.error(
                "%s sink did not finish within %.1fs; %d queued records may be lost",
                self.name,
                timeout,
                self._queue.qsize(),
            )
        self._thread = None

    # ------------------------------------------------------------------ delivery

    def _key(self, value: Any) -> bytes | None:
        return None if value is None else str(value).encode("utf-8")

    def _waiting(self) -> bool:
        """True while a failed attempt's back-off runs, or once shutdown leaves no time to deliver."""
        now = time.monotonic()
        return now < self._retry_at or (self._close_by is not None and now >= self._close_by)

    def _time_left(self, default: float) -> float:
        if self._close_by is None:
            return default
        return max(0.0, min(default, self._close_by - time.monotonic()))

    def _connect(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(**self._config)  # NoBrokersAvailable if none answers
        elif self._probe and not _accepts_connections(self.bootstrap_servers):
            # Do not hold a probe for the whole delivery timeout when no broker is even listening.
            raise NoBrokersAvailable(f"no broker at {self.bootstrap_servers} accepts connections")
        return self._producer

    def _deliver(self, keys: list[bytes | None], lines: list[bytes]) -> _Attempt:
        """Send the records and wait for the broker's acknowledgements (or failures)."""
        attempt = _Attempt()
        futures = []
        try:
            producer = self._connect()
            for i, (key, line) in enumerate(zip(keys, lines, strict=True)):
                try:
                    futures.append((i, producer.send(self.topic, key=key, value=line)))
                except UNDELIVERABLE as exc:
                    attempt.rejected.append((i, exc))
        except Exception as exc:  # NoBrokersAvailable, KafkaTimeoutError (no metadata, buffer full), ...
            attempt.error = exc
            sent = {i for i, _ in futures} | {i for i, _ in attempt.rejected}
            attempt.failed = [i for i in range(len(lines)) if i not in sent]
        # Wait for each record's outcome: one given up on while the producer may still deliver it would
        # be spilled and then delivered twice. Only shutdown (or a producer that stopped reporting) cuts
        # the wait short.
        wait_until = time.monotonic() + self._time_left(default=self._report_within_s)
        unreported = False
        for i, future in futures:
            try:
                future.get(timeout=max(0.0, wait_until - time.monotonic()))
            except UNDELIVERABLE as exc:
                attempt.rejected.append((i, exc))
            except Exception as exc:  # KafkaTimeoutError (expired), NotLeaderForPartition, ... after retries
                attempt.error = exc
                attempt.failed.append(i)
                unreported = unreported or not future.is_done
            else:
                attempt.delivered.append(i)
        if attempt.failed:
            self._broker_failed(attempt.error, replace_producer=unreported or not _transient(attempt.error))
        elif attempt.delivered:
            self._broker_ok()
        return attempt

    def _broker_failed(self, error: Exception | None, *, replace_producer: bool) -> None:
        self._retry_at = time.monotonic() + self.settings.retry_interval_s
        self._probe = True
        # The producer is kept through outages: its retries of records the broker may already have
        # written carry the same producer id and sequence numbers, so the broker drops the duplicates.
        # One in an unknown or fatal state (fenced, out of sequence, not reporting) is replaced.
        if replace_producer:
            self._close_producer(timeout=0.0)
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "Kafka at %s is not taking records (%s); keeping them in %s and retrying every %.1fs",
                self.bootstrap_servers,
                _describe(error),
                self.spill.path,
                self.settings.retry_interval_s,
            )

    def _broker_ok(self) -> None:
        if self._outage_since is not None:
            log.warning(
                "Kafka at %s takes records again after %.1fs",
                self.bootstrap_servers,
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None

    def _close_producer(self, timeout: float) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=timeout)
        except KafkaError as exc:
            # kafka-python's close() flushes first and, when that times out, raises without stopping
            # its sender thread (which would then retry the broker forever): stop it without waiting.
            log.debug("closing the Kafka producer: %s", exc)
            sender = getattr(producer, "_sender", None)
            if sender is not None:
                sender.force_close()

    def _drain_chunk(self) -> bool:
        """Deliver the oldest spilled records (one alone after a failure); True when all of them went."""
        if self._waiting():
            return False
        entries = self.spill.oldest(1 if self._probe else DRAIN_RECORDS)
        if not entries:
            return True
        lines = [line for _, line in entries]
        attempt = self._deliver([self._spilled_key(line) for line in lines], lines)
        self.spill.discard(
            [entries[i] for i in attempt.delivered] + [entries[i] for i, _ in attempt.rejected]
        )
        self._count("written", len(attempt.delivered))
        self._reject([(lines[i], exc) for i, exc in attempt.rejected])
        if attempt.failed:
            self._count("failed", len(attempt.failed))
            return False
        self._probe = False
        return True

    def _spilled_key(self, line: bytes) -> bytes | None:
        try:
            return self._key(json.loads(line).get(self.key_field))
        except (ValueError, AttributeError):
            return None

    # ------------------------------------------------------------------ keeping and losing records

    def _count(self, outcome: str, n: int) -> None:
        if n:
            self._records.labels(sink=self.name, outcome=outcome).inc(n)

    def _keep(self, lines: list[bytes]) -> None:
        if not lines:
            return
        try:
            kept = self.spill.append(lines)
        except OSError as exc:
            self._drop(len(lines), f"cannot write the spill file {self.spill.path}: {exc}")
            return
        self._count("spilled", kept)
        if kept < len(lines):
            self._drop(
                len(lines) - kept,
                f"the spill file {self.spill.path} is full ({self.spill.max_bytes} bytes, "
                "sink.kafka.spill_max_bytes) while Kafka is not taking records",
            )

    def _reject(self, rejected: list[tuple[bytes, Exception]]) -> None:
        for line, exc in rejected:
            self._drop(1, f"Kafka refuses the record ({len(line)} bytes): {_describe(exc)}")

    def _drop(self, n: int, why: str) -> None:
        self._count("dropped", n)
        self._dropped += n
        self._drops_unlogged += n
        now = time.monotonic()
        # Every loss is counted; the log says so at most once a second, with the totals.
        if now - self._drop_logged_at >= 1.0:
            log.error(
                "%s sink DROPPED %d records (%d since start): %s",
                self.name,
                self._drops_unlogged,
                self._dropped,
                why,
            )
            self._drop_logged_at = now
            self._drops_unlogged = 0
