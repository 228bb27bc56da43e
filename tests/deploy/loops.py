"""A blocked event loop, as a test makes one: a blocking call scheduled on a running proxy's loop."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from tests.conftest import RunningProxy
from tests.helpers import wait_for


def proxy_loop(proxy: RunningProxy) -> asyncio.AbstractEventLoop:
    app: Any = proxy.handle.server.config.app  # the app `build` made, with the sampler it started
    sampler = app.state.loop_lag
    loop = wait_for(lambda: sampler.loop, timeout=10, what="the loop-lag sampler to start")
    assert isinstance(loop, asyncio.AbstractEventLoop)
    return loop


class LoopBlocker:
    """A blocking call on the proxy's event loop, 0.2 s every 0.5 s (a synchronous library in a handler)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, block_s: float = 0.2, every_s: float = 0.5) -> None:
        self.loop = loop
        self.block_s = block_s
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-blocker", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.loop.call_soon_threadsafe(time.sleep, self.block_s)

    def __enter__(self) -> LoopBlocker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
