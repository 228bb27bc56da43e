"""In-process scoring for the embedded default: `shadowtap serve` scores pairs off the request path.

Bounded like the shadow queue: a full queue drops the pair from scoring (it is still in pairs.jsonl,
so `shadowtap score --input` can score it later) and counts it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import weakref
from pathlib import Path

from prometheus_client import CollectorRegistry

from shadowtap.config import Settings
from shadowtap.metrics import Metrics, ScoringMetrics
from shadowtap.proxy.sinks import JsonlSink
from shadowtap.records import PairRecord
from shadowtap.scorers.runner import ScoringPipeline, build_scorers

__all__ = ["EMBEDDED_CONCURRENCY", "EmbeddedScoring", "scoring_metrics"]

# Pairs scored at once in-process unless `scoring.concurrency` says otherwise.
EMBEDDED_CONCURRENCY = 8

log = logging.getLogger("shadowtap.scoring")


# The scoring metrics of each proxy registry: a registry takes each metric name once.
_SCORING_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, ScoringMetrics] = weakref.WeakKeyDictionary()


def scoring_metrics(metrics: Metrics) -> ScoringMetrics:
    """One ScoringMetrics per registry (the proxy and the scorers share /metrics in the embedded mode)."""
    existing = _SCORING_METRICS.get(metrics.registry)
    if existing is None:
        existing = _SCORING_METRICS[metrics.registry] = ScoringMetrics(metrics.registry)
    return existing


class EmbeddedScoring:
    """Scores pairs on a thread with its own event loop, so scoring never holds up the proxy's loop."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        config = settings.scoring
        self.metrics = scoring_metrics(metrics)
        segments = frozenset(settings.tags.segments)
        self.pipeline = ScoringPipeline(build_scorers(config, self.metrics, segments), self.metrics, segments)
        data_dir = Path(settings.sink.data_dir)
        self.scores_sink = JsonlSink(data_dir / "scores.jsonl", metrics, name="scores")
        self.review_sink = JsonlSink(data_dir / "review.jsonl", metrics, name="review")
        self.concurrency = config.concurrency or EMBEDDED_CONCURRENCY
        self.queue_size = config.queue_size
        self.queue: asyncio.Queue[PairRecord] | None = None
        # The proxy's loop appends here and never wakes the scoring thread: waking it costs a syscall and a
        # GIL hand-over on the request path. The scoring loop collects what has arrived every few ms.
        self._inbox: collections.deque[PairRecord] = collections.deque()
        self.poll_interval_s = 0.02
        # Each counter is written by one thread only: handed over (the proxy's loop), finished (scoring).
        self.handed_over = 0
        self.finished = 0
        self.metrics.scoring_queue_depth.set_function(lambda: self.waiting)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="shadowtap-scoring", daemon=True)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def waiting(self) -> int:
        return self.handed_over - self.finished

    def start_soon(self) -> None:
        self.scores_sink.start()
        self.review_sink.start()
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    async def _start(self) -> None:
        self.queue = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
        self._tasks.append(asyncio.create_task(self._collect()))

    async def _collect(self) -> None:
        while True:
            self._take_inbox()
            await asyncio.sleep(self.poll_interval_s)

    def _take_inbox(self) -> None:
        inbox, queue = self._inbox, self.queue
        assert queue is not None
        while inbox:
            queue.put_nowait(inbox.popleft())

    def submit(self, pair: PairRecord) -> None:
        """Called on the proxy's loop: one counter check and a hand-over, never a wait."""
        if self.waiting >= self.queue_size:
            self.metrics.scoring_dropped.inc()
            return
        self.handed_over += 1
        self._inbox.append(pair)

    async def _worker(self) -> None:
        assert self.queue is not None
        while True:
            pair = await self.queue.get()
            try:
                records, review = await self.pipeline.score_pair(pair)
                for r in records:
                    self.scores_sink.submit(r)
                for item in review:
                    self.review_sink.submit(item)
                self.pipeline.count(pair, records, review, source="embedded")
            except Exception:
                log.exception("scoring failed on pair %s", pair.get("id"))
            finally:
                self.finished += 1
                self.queue.task_done()

    async def _drain(self, deadline_s: float) -> int:
        assert self.queue is not None
        self._take_inbox()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline_s):
                await self.queue.join()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pipeline.aclose()
        return self.queue.qsize() + len(self._inbox)

    async def close(self, deadline_s: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        unscored = await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._drain(deadline_s), self._loop)
        )
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
        if unscored:
            # Still in pairs.jsonl: `shadowtap score --input` can score them later.
            self.metrics.scoring_dropped.inc(unscored)
            log.warning(
                "shutdown: %d pairs left unscored at the deadline (they are in pairs.jsonl)", unscored
            )
        self.scores_sink.close()
        self.review_sink.close()
