"""Where pair records go: the `Sink` interface, the embedded JSONL file, and the factory.

A sink's `submit` is called from the event loop and must never block or raise: it hands the record to
a bounded queue that a background thread drains. Whatever cannot be delivered is counted (and, for
Kafka, kept in a bounded spill file and retried) — never dropped silently.
"""

from __future__ import annotations

import logging
import mmap
import queue
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Protocol

from shadowtap import fastjson
from shadowtap.metrics import Metrics

log = logging.getLogger("shadowtap.sink")

# A line this long is written by itself, not joined with others (a copy that would hold the GIL), and a
# piece this long a call: a kernel built without preemption runs a system call to its end, and one that
# copies megabytes holds its core (the proxy's loop, woken there meanwhile, waits) for milliseconds.
LARGE_LINE_BYTES = 256 * 1024
# Put on a sink's queue after the last record: the writer thread finishes and exits.
STOP: Final = object()


class Sink(Protocol):
    """Accepts records from the request path without ever slowing it down."""

    name: str

    def start(self) -> None: ...

    def submit(self, record: Mapping[str, Any]) -> None:
        """Queue one record for delivery; never blocks, never raises."""

    def close(self, timeout: float = 10.0) -> None:
        """Deliver (or spill) what is queued, within `timeout` seconds."""


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One record as compact UTF-8 JSON (a line of a JSONL file, a Kafka message's value); a record the
    offload worker encoded already (`offload.EncodedRecord`) is its line as it is (copied out of
    shared memory when the worker left it there)."""
    line = getattr(record, "line", None)
    if isinstance(line, (bytes, bytearray, mmap.mmap)):
        return bytes(line)
    return fastjson.dumps(record)


class ThreadedSink:
    """Base for sinks that write from one background thread fed by a bounded queue."""

    name = "base"

    def __init__(self, metrics: Metrics, queue_size: int = 10_000) -> None:
        self.metrics = metrics
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        metrics.sink_queue_depth.labels(sink=self.name).set_function(self._queue.qsize)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"shadowtap-sink-{self.name}", daemon=True)
            self._thread.start()

    def submit(self, record: Mapping[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.metrics.sink_records.labels(sink=self.name, outcome="dropped").inc()
            log.error(
                "%s sink queue is full (%d records): record %s dropped",
                self.name,
                self._queue.maxsize,
                record.get("id"),
            )

    def close(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put(STOP, timeout=timeout)
        except queue.Full:
            log.error("%s sink did not drain within %.1fs", self.name, timeout)
        self._thread.join(timeout)
        self._thread = None

    # Seconds the writer thread waits for a record before calling `idle()` (retries, housekeeping).
    idle_interval: float | None = None

    def idle(self) -> None:
        """Called on the writer thread when no record arrived for `idle_interval` seconds."""

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.idle_interval)
            except queue.Empty:
                try:
                    self.idle()
                except Exception:
                    log.exception("%s sink housekeeping failed", self.name)
                continue
            batch = [item]
            # Drain what is already waiting, so a burst costs one write/flush.
            while len(batch) < 512:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(r is STOP for r in batch)
            records = [r for r in batch if r is not STOP]
            if records:
                try:
                    self.write(records)
                except Exception:
                    log.exception("%s sink failed to write %d records", self.name, len(records))
                    self.metrics.sink_records.labels(sink=self.name, outcome="failed").inc(len(records))
            if stop:
                self.finish()
                return

    def write(self, records: list[Mapping[str, Any]]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Called once on the writer thread after the last record."""


class JsonlSink(ThreadedSink):
    """Append-only JSON Lines file, one record a line: the embedded default (`DATA_DIR/pairs.jsonl`)."""

    name = "jsonl"

    def __init__(
        self, path: Path, metrics: Metrics, queue_size: int = 10_000, *, name: str = "jsonl"
    ) -> None:
        self.name = name
        super().__init__(metrics, queue_size)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")

    def write(self, records: list[Mapping[str, Any]]) -> None:
        small: list[bytes] = []
        for record in records:
            line = getattr(record, "line", None)
            if isinstance(line, (bytes, bytearray, mmap.mmap)) and len(line) >= LARGE_LINE_BYTES:
                # A large line from the offload worker: written as it is (from the shared memory the
                # worker left it in: the kernel copies it, the GIL released), never copied into a join.
                self._file.write(b"".join(small))
                small = []
                view = memoryview(line)
                for start in range(0, len(view), LARGE_LINE_BYTES):
                    self._file.write(view[start : start + LARGE_LINE_BYTES])
                self._file.write(b"\n")
            else:
                small.append(encode_record(record) + b"\n")
        self._file.write(b"".join(small))
        self._file.flush()
        self.metrics.sink_records.labels(sink=self.name, outcome="written").inc(len(records))

    def finish(self) -> None:
        self._file.close()
