"""The Kafka sink: pair records to a topic (acks=all, compression, batching, key = pair id).

Whatever the broker cannot take — down at start, down mid-traffic, slow — is appended to a bounded local
spill file and delivered, oldest first, once the broker is back (also after a restart of the process).
Only a record that cannot even be spilled is lost, and that is counted and logged at ERROR.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from shadowtap.proxy.sinks import ThreadedSink, encode_record

from shadowtap.config import KafkaSettings
from shadowtap.metrics import Metrics

log = logging.getLogger("shadowtap.sink.kafka")


class SpillFile:
    """An append-only JSONL file of undelivered records, bounded in bytes, rewritten atomically."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = self.path.stat().st_size if self.path.exists() else 0

    def append(self, lines: list[bytes]) -> int:
        """Append what fits; returns how many lines were kept."""
        kept = []
        for line in lines:
            if self.size + len(line) + 1 > self.max_bytes:
                break
            kept.append(line + b"\n")
            self.size += len(line) + 1
        if kept:
            with self.path.open("ab") as f:
                f.write(b"".join(kept))
                f.flush()
                os.fsync(f.fileno())
        return len(kept)

    def read(self) -> list[bytes]:
        if not self.path.exists():
            return []
        return [line for line in self.path.read_bytes().splitlines() if line.strip()]

    def replace(self, lines: list[bytes]) -> None:
        """Keep only `lines` (the ones still undelivered): write a temp file, then rename over."""
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        data = b"".join(line + b"\n" for line in lines)
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.size = len(data)


class KafkaSink(ThreadedSink):
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
        self.name = name
        super().__init__(metrics, queue_size)
        self.settings = settings
        self.topic = topic or settings.topic
        self.key_field = key_field
        self.spill = SpillFile(spill_path, settings.spill_max_bytes)
        self.idle_interval = settings.retry_interval_s
        self._producer: Any = None
        self._next_attempt = 0.0
        self._dropped = 0
        metrics.sink_spill_bytes.labels(sink=self.name).set_function(lambda: self.spill.size)

    # ------------------------------------------------------------------ producer

    def _get_producer(self) -> Any:
        if self._producer is not None:
            return self._producer
        if time.monotonic() < self._next_attempt:
            return None
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        s = self.settings
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=s.bootstrap_servers,
                acks="all",
                compression_type=None if s.compression == "none" else s.compression,
                linger_ms=s.linger_ms,
                batch_size=s.batch_size,
                request_timeout_ms=s.request_timeout_ms,
                delivery_timeout_ms=int(s.delivery_timeout_s * 1000),
                max_block_ms=min(5000, int(s.delivery_timeout_s * 1000)),
                reconnect_backoff_max_ms=2000,
                client_id="shadowtap-proxy",
            )
        except (KafkaError, OSError) as exc:
            log.warning(
                "Kafka at %s unreachable (%s); keeping records in %s",
                s.bootstrap_servers,
                exc,
                self.spill.path,
            )
            self._next_attempt = time.monotonic() + s.retry_interval_s
            return None
        return self._producer

    def _deliver(self, lines: list[bytes], keys: list[bytes | None]) -> list[int]:
        """Send and wait for acknowledgement; returns the indexes that were NOT delivered."""
        from kafka.errors import KafkaError

        producer = self._get_producer()
        if producer is None:
            return list(range(len(lines)))
        futures: list[Any] = []
        failed: list[int] = []
        for i, (line, key) in enumerate(zip(lines, keys, strict=True)):
            try:
                futures.append((i, producer.send(self.topic, key=key, value=line)))
            except (KafkaError, OSError) as exc:
                log.warning("Kafka send failed: %s", exc)
                failed.extend(range(i, len(lines)))
                break
        deadline = time.monotonic() + self.settings.delivery_timeout_s + 1
        for i, future in futures:
            try:
                future.get(timeout=max(0.1, deadline - time.monotonic()))
            except Exception as exc:  # KafkaError, timeouts: the record is kept for later
                log.debug("delivery of record %d failed: %s", i, exc)
                failed.append(i)
        if failed:
            self._next_attempt = time.monotonic() + self.settings.retry_interval_s
        return sorted(set(failed))

    # ------------------------------------------------------------------ ThreadedSink hooks

    def write(self, records: list[dict[str, Any]]) -> None:
        lines = [encode_record(r) for r in records]
        keys = [str(r.get(self.key_field, "")).encode() or None for r in records]
        if self.spill.size and not self._drain_spill():
            self._keep(lines)  # the broker is still away: keep order behind what is waiting
            return
        failed = self._deliver(lines, keys)
        self.metrics.sink_records.labels(sink=self.name, outcome="written").inc(len(lines) - len(failed))
        if failed:
            self.metrics.sink_records.labels(sink=self.name, outcome="failed").inc(len(failed))
            self._keep([lines[i] for i in failed])

    def idle(self) -> None:
        if self.spill.size:
            self._drain_spill()

    def finish(self) -> None:
        if self.spill.size:
            self._drain_spill()
        if self._producer is not None:
            try:
                self._producer.flush(timeout=5)
                self._producer.close(timeout=5)
            except Exception:
                log.exception("closing the Kafka producer failed")
        if self.spill.size:
            log.warning(
                "%d bytes of records left in %s; they are delivered at the next start",
                self.spill.size,
                self.spill.path,
            )

    def _keep(self, lines: list[bytes]) -> None:
        kept = self.spill.append(lines)
        self.metrics.sink_records.labels(sink=self.name, outcome="spilled").inc(kept)
        lost = len(lines) - kept
        if lost:
            self._dropped += lost
            self.metrics.sink_records.labels(sink=self.name, outcome="dropped").inc(lost)
            log.error(
                "spill file %s is full (%d bytes): %d records DROPPED (%d since start); Kafka at %s is unreachable",
                self.spill.path,
                self.spill.max_bytes,
                lost,
                self._dropped,
                self.settings.bootstrap_servers,
            )

    def _drain_spill(self) -> bool:
        """Deliver the spill, oldest first; True once it is empty."""
        if time.monotonic() < self._next_attempt:
            return False
        lines = self.spill.read()
        if not lines:
            self.spill.replace([])
            return True
        keys = []
        for line in lines:
            try:
                keys.append(str(json.loads(line).get(self.key_field, "")).encode() or None)
            except ValueError:
                keys.append(None)
        failed = self._deliver(lines, keys)
        delivered = len(lines) - len(failed)
        if delivered:
            self.metrics.sink_records.labels(sink=self.name, outcome="written").inc(delivered)
            log.info("delivered %d spilled records to %s", delivered, self.topic)
        self.spill.replace([lines[i] for i in failed])
        return not failed
