"""Scoring for the embedded default: `shadowtap serve` scores pairs in a process of its own.

The proxy writes each pair to `DATA_DIR/pairs.jsonl` (its sink) and does nothing more for scoring. A
scoring process started beside it follows that file from where it ended when the proxy started, scores
each new pair and appends to `scores.jsonl` and `review.jsonl`. Scoring (parsing records of megabytes,
the refusal model, schema checks, the judge's client) thus never holds the proxy's GIL, and the proxy's
event loop never waits for it.

Its figures reach the proxy's `/metrics`: the scoring process leaves a snapshot of its registry in a
file (in shared memory) a few times a second while they change, and the proxy's registry reads the
latest at each scrape (`ScoringProcessMetrics`; `metrics.MergingRegistry` joins the families both
processes export).

Bounded like the shadow queue: the pairs read and not yet scored are at most `scoring.queue_size`;
beyond that a pair is dropped from scoring (it is still in pairs.jsonl, so `shadowtap score --input` can
score it later) and counted. A scoring process that ends unasked is counted and started again (backing
off), from the first pair it had not finished: none is lost, and one it finished after its last
snapshot may be scored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from shadowtap.config import Settings
from shadowtap.metrics import Metrics, ScoringMetrics, SinkMetrics
from shadowtap.proxy import spool
from shadowtap.proxy.offload import WORKER_NICENESS, helper_context, scoring_view
from shadowtap.proxy.sinks import JsonlSink
from shadowtap.records import PairRecord, ReviewItem, ScoreRecord
from shadowtap.scorers.runner import ScoringPipeline, build_scorers

__all__ = [
    "EMBEDDED_CONCURRENCY",
    "EmbeddedScoring",
    "PairsFile",
    "ScoringProcessMetrics",
    "scoring_metrics",
]

# Pairs scored at once in the scoring process unless `scoring.concurrency` says otherwise.
EMBEDDED_CONCURRENCY = 8
# How often the scoring process looks for new lines in pairs.jsonl, and leaves a snapshot of its metrics.
POLL_INTERVAL_S = 0.02
# How often scored pairs are flushed: the metrics snapshot first, then their records to the files. A
# snapshot of the default registry takes about 5 ms of CPU; at 100 pairs/s, flushing every 50 ms cost a
# quarter of the process's CPU (2.8 ms per pair against 2.1 ms at this interval).
FLUSH_INTERVAL_S = 0.25
# The scoring process's name in ps and top (at most 15 characters).
PROCESS_NAME = "shadowtap-score"
# Bytes of pairs.jsonl read at a time (a longer line is read on in the next call).
READ_BYTES = 16 * 1024 * 1024
# A scoring process that ends unasked is started again after this long, doubling up to the maximum
# while it keeps ending within RESTART_STEADY_S of its start.
RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
RESTART_STEADY_S = 60.0
# After a SIGTERM the scoring process waits for the proxy to stop it, and stops by itself only after the
# proxy's shutdown (requests, then shadows, each within `shutdown_grace_s`; then the sink's flush) and
# this margin.
SIGTERM_MARGIN_S = 15.0
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger("shadowtap.scoring")


# The scoring metrics of each proxy registry: a registry takes each metric name once.
_SCORING_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, ScoringMetrics] = weakref.WeakKeyDictionary()


def scoring_metrics(metrics: Metrics) -> ScoringMetrics:
    """One ScoringMetrics per proxy registry: the series the proxy starts at zero (and the restarts and
    drops it counts itself), beside which the scoring process's figures are summed."""
    existing = _SCORING_METRICS.get(metrics.registry)
    if existing is None:
        existing = _SCORING_METRICS[metrics.registry] = ScoringMetrics(metrics.registry)
    return existing


# ------------------------------------------------------------------------------- the proxy's side


class EmbeddedScoring:
    """The proxy's handle on its scoring process: starts it, starts it again if it ends unasked, and
    stops it once the proxy's sink has written its last pair."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        config = settings.scoring
        self.settings = settings
        self.metrics = scoring_metrics(metrics)
        # Built here as well, so that a bad scorer setting stops `serve` at once, and the series each
        # scorer exports can start at zero on the proxy's registry.
        self.scorers = build_scorers(config, self.metrics, frozenset(settings.tags.segments))
        self.pairs_path = Path(settings.sink.data_dir) / "pairs.jsonl"
        self.collected = ScoringProcessMetrics()
        metrics.registry.register(self.collected)
        self._lock = threading.Lock()
        self._stopping = False
        self._wake = threading.Event()
        self._process: Any = None
        self._control: multiprocessing.connection.Connection | None = None
        self._thread: threading.Thread | None = None
        self._state_dir: str | None = None
        self._resume: tuple[int | None, int] = (None, 0)

    @property
    def pid(self) -> int | None:
        """The scoring process's pid while it runs."""
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    def start_soon(self) -> None:
        """Called as the proxy starts, before its sink has written anything: the scoring process begins at
        the file's present end. The process is started from a thread (the first start of the fork server
        takes a while), so the proxy starts serving at once."""
        try:
            stat = self.pairs_path.stat()
            self._resume = (stat.st_ino, stat.st_size)
        except FileNotFoundError:
            self._resume = (None, 0)
        self._state_dir = spool.make_dir("shadowtap-scoring-") or tempfile.mkdtemp(
            prefix="shadowtap-scoring-"
        )
        self.collected.path = Path(self._state_dir) / "metrics.json"
        self._thread = threading.Thread(target=self._supervise, name="shadowtap-scoring", daemon=True)
        self._thread.start()

    def _spawn(self) -> bool:
        """Start the scoring process, unless the proxy is stopping; whether it was started."""
        assert self.collected.path is not None
        with self._lock:
            if self._stopping:
                return False
            context = helper_context()
            reader, writer = context.Pipe(duplex=False)
            process = context.Process(
                target=run_scoring_process,
                args=(
                    self.settings,
                    str(self.pairs_path),
                    self._resume,
                    str(self.collected.path),
                    reader,
                    logging.getLogger().getEffectiveLevel(),
                ),
                name="shadowtap-scoring",
                daemon=True,
            )
            process.start()
            reader.close()
            self._process, self._control = process, writer
        log.info("scoring in process %d (pairs.jsonl from byte %d)", process.pid, self._resume[1])
        return True

    def _supervise(self) -> None:
        backoff = RESTART_BACKOFF_S
        while True:
            started = time.monotonic()
            try:
                if not self._spawn():
                    return
            except Exception:
                log.exception("could not start the scoring process; trying again in %.0f s", backoff)
            else:
                process = self._process
                multiprocessing.connection.wait([process.sentinel])
                with self._lock:
                    if self._stopping:
                        return
                last = self.collected.retire()
                if last is not None and isinstance(last.get("resume"), list):
                    inode, offset = last["resume"]
                    self._resume = (inode, int(offset))
                self.metrics.scoring_restarts.inc()
                log.error(
                    "the scoring process ended unasked (exit code %s); starting it again in %.0f s, from byte "
                    "%d of pairs.jsonl",
                    process.exitcode,
                    backoff,
                    self._resume[1],
                )
            if time.monotonic() - started > RESTART_STEADY_S:
                backoff = RESTART_BACKOFF_S
            if self._wake.wait(backoff):
                return
            backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)

    async def close(self, deadline_s: float = 10.0) -> None:
        """Stop the scoring process: called after the sink has written its last pair, so that the pairs
        the proxy recorded are read to the end and scored within `deadline_s` (what is not is counted as
        dropped from scoring by the process, and stays in pairs.jsonl)."""
        with self._lock:
            self._stopping = True
            process, control = self._process, self._control
        self._wake.set()
        if process is not None and control is not None:
            with contextlib.suppress(OSError):
                control.send(("stop", deadline_s))
            await asyncio.to_thread(process.join, deadline_s + 5.0)
            if process.is_alive():
                log.error("the scoring process did not stop within %.1f s; killing it", deadline_s + 5.0)
                process.kill()
                await asyncio.to_thread(process.join, 5.0)
            control.close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        self.collected.freeze()  # its last figures stay on /metrics once its file is gone
        if self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
        await ScoringPipeline(self.scorers, self.metrics, frozenset()).aclose()


class ScoringProcessMetrics:
    """A collector on the proxy's registry: the scoring process's latest snapshot, plus the counts of any
    earlier scoring process of this proxy (one that ended unasked), so that totals never go back."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._lock = threading.Lock()
        self._key: tuple[int, int, int] | None = None
        self._latest: dict[str, Any] | None = None
        self._frozen = False
        # Counter, histogram and summary samples of earlier processes: family -> header, sample -> value.
        self._base: dict[str, tuple[str, str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}

    def snapshot(self) -> dict[str, Any] | None:
        """The latest snapshot, read again only when its file changed."""
        with self._lock:
            return self._read()

    def _read(self) -> dict[str, Any] | None:
        if self._frozen or self.path is None:
            return self._latest
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return self._latest
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if key != self._key:
            try:
                latest = json.loads(self.path.read_bytes())
            except (OSError, ValueError):  # replaced between the stat and the read: the next read has it
                return self._latest
            self._key, self._latest = key, latest
        return self._latest

    def retire(self) -> dict[str, Any] | None:
        """The process whose snapshot this is has ended: keep its counts, forget its levels; its last
        snapshot."""
        with self._lock:
            latest = self._read()
            for name, typ, documentation, unit, samples in (latest or {}).get("families", []):
                if typ not in ("counter", "histogram", "summary"):
                    continue
                header = self._base.setdefault(name, (typ, documentation, unit, {}))
                for sample_name, labels, value in samples:
                    key = (sample_name, tuple(sorted(labels.items())))
                    header[3][key] = header[3].get(key, 0.0) + value
            self._latest, self._key = None, None
            if self.path is not None:
                with contextlib.suppress(OSError):
                    self.path.unlink()
            return latest

    def freeze(self) -> None:
        """Read the last snapshot and keep it: the file is about to be removed."""
        with self._lock:
            self._read()
            self._frozen = True

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            latest = self._read()
            base = list(self._base.items())
        for name, (typ, documentation, unit, samples) in base:
            family = Metric(name, documentation, typ, unit)
            for (sample_name, labels), value in samples.items():
                family.add_sample(sample_name, dict(labels), value)
            yield family
        for name, typ, documentation, unit, samples in (latest or {}).get("families", []):
            family = Metric(name, documentation, typ, unit)
            for sample_name, labels, value in samples:
                family.add_sample(sample_name, labels, value)
            yield family


# ------------------------------------------------------------------------------- the scoring process


class PairsFile:
    """The complete lines appended to a JSONL file from a byte offset on; a line still being written is
    read once it is whole. A file replaced (rotated) or cut shorter is read again from its start."""

    def __init__(self, path: Path, inode: int | None, offset: int) -> None:
        self.path = path
        self.inode = inode
        self.offset = offset  # just past the last complete line handed out
        self._file: Any = None
        self._partial = b""

    def read(self, max_bytes: int = READ_BYTES) -> tuple[list[tuple[int, bytes]], bool]:
        """(start offset, line) for each complete line now readable (up to about `max_bytes`), and
        whether more may be waiting."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return [], False
        if self._file is None or stat.st_ino != self.inode or stat.st_size < self.offset + len(self._partial):
            self._reopen(stat)
        chunk = self._file.read(max_bytes)
        if not chunk:
            return [], False
        data = self._partial + chunk
        end = data.rfind(b"\n")
        if end < 0:
            self._partial = data
            return [], len(chunk) == max_bytes
        self._partial = data[end + 1 :]
        lines: list[tuple[int, bytes]] = []
        start = 0
        while start <= end:
            stop = data.index(b"\n", start)
            line = data[start:stop]
            if line.strip():
                lines.append((self.offset + start, line))
            start = stop + 1
        self.offset += end + 1
        return lines, len(chunk) == max_bytes

    def _reopen(self, stat: os.stat_result) -> None:
        if self._file is not None:
            self._file.close()
            log.warning("%s was replaced or cut shorter: reading it from its start", self.path)
            self.offset = 0
        elif stat.st_ino != self.inode or stat.st_size < self.offset:
            self.offset = 0  # not the file the proxy started with
        self._file = open(self.path, "rb")  # noqa: SIM115  # kept open while it is followed
        self._file.seek(self.offset)
        self.inode = stat.st_ino
        self._partial = b""

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def run_scoring_process(
    settings: Settings,
    pairs_path: str,
    resume: tuple[int | None, int],
    snapshot_path: str,
    control: multiprocessing.connection.Connection,
    log_level: int,
) -> None:
    """The scoring process's main function."""
    logging.basicConfig(level=log_level, format=_LOG_FORMAT, stream=sys.stderr, force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Ctrl-C reaches every process of the terminal's group: the proxy stops this one once its sink is done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Scoring is background work: where CPU is short, the kernel serves the proxy's users first.
    os.nice(WORKER_NICENESS)
    with contextlib.suppress(OSError):  # its name in ps and top (Linux)
        Path("/proc/self/comm").write_text(PROCESS_NAME)
    asyncio.run(ScoringProcess(settings, Path(pairs_path), resume, Path(snapshot_path), control).run())


class ScoringProcess:
    """Follows pairs.jsonl, scores each new pair, and every FLUSH_INTERVAL_S snapshots its metrics for the
    proxy and writes the score and review records of the pairs it finished."""

    def __init__(
        self,
        settings: Settings,
        pairs_path: Path,
        resume: tuple[int | None, int],
        snapshot_path: Path,
        control: multiprocessing.connection.Connection,
    ) -> None:
        config = settings.scoring
        self.grace_s = settings.server.shutdown_grace_s
        self.registry = CollectorRegistry()
        self.metrics = ScoringMetrics(self.registry)
        segments = frozenset(settings.tags.segments)
        self.pipeline = ScoringPipeline(build_scorers(config, self.metrics, segments), self.metrics, segments)
        self.metrics.initialise_scorers(
            self.pipeline.scorers, settings.tags.segments, noise_floor=settings.shadow.noise_floor_rate > 0
        )
        self.sink_metrics = SinkMetrics()
        data_dir = Path(settings.sink.data_dir)
        sink_metrics = cast(Metrics, self.sink_metrics)  # the two sink metrics are all a sink uses
        self.scores_sink = JsonlSink(data_dir / "scores.jsonl", sink_metrics, name="scores")
        self.review_sink = JsonlSink(data_dir / "review.jsonl", sink_metrics, name="review")
        for name in ("scores", "review"):
            self.sink_metrics.initialise_sink(name)
        self.pairs = PairsFile(pairs_path, *resume)
        self.snapshot_path = snapshot_path
        self.control = control
        self.concurrency = config.concurrency or EMBEDDED_CONCURRENCY
        self.queue_size = config.queue_size
        self.queue: asyncio.Queue[tuple[tuple[int, int], PairRecord]] = asyncio.Queue()
        # Pairs read and not yet finished, by (file inode, start offset), in the order they were read.
        self.in_hand: dict[tuple[int, int], None] = {}
        self.metrics.scoring_queue_depth.set_function(lambda: len(self.in_hand))
        # Pairs scored since the last flush, with their records.
        self._done: list[tuple[tuple[int, int], list[ScoreRecord], list[ReviewItem]]] = []
        self._changes = 0
        self._stop: asyncio.Future[float | None] | None = None
        self._sigterm_stop: asyncio.TimerHandle | None = None

    # Where a process started after this one would begin: the first pair not finished, or the read point.
    def resume_point(self) -> list[int | None]:
        inode = self.pairs.inode
        for first_inode, first_offset in self.in_hand:
            return [inode, first_offset if first_inode == inode else 0]
        return [inode, self.pairs.offset]

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        loop.add_reader(self.control.fileno(), self._on_control)
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        self.scores_sink.start()
        self.review_sink.start()
        workers = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
        follow = asyncio.create_task(self._follow())
        flushes = asyncio.create_task(self._flushes())
        self.write_snapshot()
        deadline_s = await self._stop
        follow.cancel()
        flushes.cancel()
        await asyncio.gather(follow, flushes, return_exceptions=True)
        loop.remove_reader(self.control.fileno())
        if deadline_s is None:
            log.warning("the proxy is gone: the scoring process stops (unscored pairs are in pairs.jsonl)")
            deadline_s = 0.0
        else:
            self._read_all()  # the proxy's sink has written its last pair
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline_s):
                await self.queue.join()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for key, _, _ in self._done:
            self.in_hand.pop(key, None)
        unscored = len(self.in_hand)
        if unscored:
            self.metrics.scoring_dropped.inc(unscored)
            log.warning(
                "shutdown: %d pairs left unscored at the deadline (they are in pairs.jsonl)", unscored
            )
            self.in_hand.clear()
        await self.pipeline.aclose()
        self.flush()
        self.scores_sink.close()
        self.review_sink.close()
        self.pairs.close()
        self.write_snapshot()  # the sinks' last counts

    def _on_control(self) -> None:
        try:
            message = self.control.recv()
        except (EOFError, OSError):
            self._request_stop(None)  # the proxy's end closed: it is gone
            return
        if isinstance(message, tuple) and message[:1] == ("stop",):
            self._request_stop(float(message[1]))

    def _on_sigterm(self) -> None:
        # A SIGTERM to the proxy's process group reaches this process too, while the proxy drains its
        # requests and shadows and its sink writes the pairs they make: the proxy stops this process once
        # the last is written, so that it is scored. One sent to this process alone is obeyed after a
        # while (and the proxy starts a new scoring process, as for any that ends unasked).
        if self._sigterm_stop is None:
            after_s = 2 * self.grace_s + SIGTERM_MARGIN_S
            log.info("SIGTERM: scoring goes on until the proxy stops it (by itself in %.0f s)", after_s)
            loop = asyncio.get_running_loop()
            self._sigterm_stop = loop.call_later(after_s, self._request_stop, self.grace_s)

    def _request_stop(self, deadline_s: float | None) -> None:
        assert self._stop is not None
        if not self._stop.done():
            self._stop.set_result(deadline_s)
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.control.fileno())

    async def _follow(self) -> None:
        while True:
            more = self._read_some()
            await asyncio.sleep(0 if more else POLL_INTERVAL_S)

    def _read_all(self) -> None:
        while self._read_some():
            pass

    def _read_some(self) -> bool:
        """Take the lines now in the file; whether more may be waiting."""
        lines, more = self.pairs.read()
        inode = self.pairs.inode or 0
        for start, line in lines:
            self._changes += 1
            if len(self.in_hand) >= self.queue_size:
                self.metrics.scoring_dropped.inc()
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                log.warning("pairs.jsonl byte %d: not a JSON record (%s); not scored", start, exc)
                self.metrics.scoring_dropped.inc()
                continue
            if not isinstance(record, dict):
                log.warning("pairs.jsonl byte %d: not a pair record; not scored", start)
                self.metrics.scoring_dropped.inc()
                continue
            key = (inode, start)
            self.in_hand[key] = None
            self.queue.put_nowait((key, scoring_view(record)))  # type: ignore[arg-type]
        return more

    async def _worker(self) -> None:
        while True:
            key, pair = await self.queue.get()
            records: list[ScoreRecord] = []
            review: list[ReviewItem] = []
            try:
                records, review = await self.pipeline.score_pair(pair)
                self.pipeline.count(pair, records, review, source="embedded")
            except Exception:
                log.exception("scoring failed on pair %s", pair.get("id"))
            finally:
                self._done.append((key, records, review))
                self._changes += 1
                self.queue.task_done()

    async def _flushes(self) -> None:
        written, files = self._changes, self.sink_metrics.state()
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            if self._changes != written:
                written = self._changes
                self.flush()
                files = self.sink_metrics.state()
            elif (now := self.sink_metrics.state()) != files:  # the files' writes since
                files = now
                self.write_snapshot()

    def flush(self) -> None:
        """Snapshot the metrics, then write the finished pairs' records: a score in scores.jsonl is on the
        proxy's /metrics already, and a process started after this one resumes past these pairs."""
        done, self._done = self._done, []
        for key, _, _ in done:
            self.in_hand.pop(key, None)
        self.write_snapshot()
        for _, records, review in done:
            for r in records:
                self.scores_sink.submit(r)
            for item in review:
                self.review_sink.submit(item)

    def write_snapshot(self) -> None:
        """The registry's samples (creation times left out) and where to resume, for the proxy."""
        families: list[list[Any]] = []
        for family in self.registry.collect():
            samples = [[s.name, s.labels, s.value] for s in family.samples if not s.name.endswith("_created")]
            families.append([family.name, family.type, family.documentation, family.unit, samples])
        for family in self.sink_metrics.registry.collect():
            samples = [[s.name, s.labels, s.value] for s in family.samples if not s.name.endswith("_created")]
            families.append([family.name, family.type, family.documentation, family.unit, samples])
        body = json.dumps({"pid": os.getpid(), "resume": self.resume_point(), "families": families})
        temporary = self.snapshot_path.with_suffix(".tmp")
        try:
            temporary.write_text(body)
            os.replace(temporary, self.snapshot_path)
        except OSError as exc:
            log.warning("could not write the scoring metrics snapshot: %s", exc)
