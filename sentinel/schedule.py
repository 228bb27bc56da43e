"""Running the sentinel on a schedule in a plain long-lived process (`sentinel run --every 7d`).

A run that fails (the target is down) is logged and the schedule goes on. SIGTERM or SIGINT stops the
process cleanly: an interval being waited out ends at once, a run in progress is cancelled and not
recorded (a half-replayed set is not a measurement).
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("shadowtap.sentinel")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in `7d`, `12h`, `1h30m`, `90s`."""
    cleaned = text.strip().lower()
    parts = list(_DURATION.finditer(cleaned))
    if not parts or "".join(p.group(0) for p in parts) != cleaned.replace(" ", ""):
        raise ValueError(f"not a duration like 7d, 12h, 1h30m or 90s: {text!r}")
    seconds = sum(float(p.group(1)) * _UNIT_SECONDS[p.group(2)] for p in parts)
    if seconds <= 0:
        raise ValueError(f"the interval must be positive, got {text!r}")
    return seconds


async def run_every(
    interval_s: float,
    run_once: Callable[[], Awaitable[Any]],
    *,
    max_runs: int | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Call `run_once` now and then every `interval_s` (start to start) until stopped; returns runs done."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals
            pass
    done = 0
    try:
        while not stop.is_set():
            started = loop.time()
            task = asyncio.ensure_future(run_once())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                log.info("sentinel stopped during a run; that run was not recorded")
                break
            error = task.exception()
            if error is not None:
                log.error("sentinel run failed: %s: %s", type(error).__name__, error)
            else:
                done += 1
            if max_runs is not None and done >= max_runs:
                break
            wait = max(0.0, interval_s - (loop.time() - started))
            log.info("next sentinel run in %.0fs", wait)
            try:
                await asyncio.wait_for(stop.wait(), timeout=wait)
            except TimeoutError:
                pass
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return done
