"""How late the event loop runs a timer: the delay every request on this process waits behind.

A blocking call on the loop (a synchronous library, a long parse, CPU starvation) delays every request
the process serves, and the request timings cannot see it: a request's bytes wait in the socket buffer
before any timestamp is taken, and a stall while the primary answers reads as the primary being slow. A
timer that should fire every `interval` seconds and fires late measures exactly that delay.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time

from shadowtap.metrics import Metrics

# The gauge holds the largest lag of the samples taken over this many seconds, so a stall between two
# scrapes is still seen by the next scrape (a single last sample would miss most of them).
WINDOW_S = 10.0


class LoopLagSampler:
    """Samples the loop's lag every `interval` seconds into `shadowtap_event_loop_lag_seconds` (the worst
    of the last 10 s) and `shadowtap_event_loop_delay_seconds` (every sample)."""

    def __init__(self, metrics: Metrics, interval: float = 0.1) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.metrics = metrics
        self.interval = interval
        self._recent: collections.deque[float] = collections.deque(maxlen=max(1, round(WINDOW_S / interval)))
        self._task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop sampled, once started

    def start(self) -> None:
        """Start sampling on the running loop (call from the app's start-up)."""
        if self._task is None:
            self.loop = asyncio.get_running_loop()
            self._task = self.loop.create_task(self._run(), name="shadowtap-loop-lag")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + self.interval
            await asyncio.sleep(self.interval)
            self.record(max(0.0, time.perf_counter() - due))

    def record(self, lag: float) -> None:
        """One sample: the gauge shows the worst of the last WINDOW_S seconds, the histogram every one."""
        self._recent.append(lag)
        self.metrics.loop_lag.set(max(self._recent))
        self.metrics.loop_delay.observe(lag)
