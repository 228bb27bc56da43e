"""What the production signals cost each mirrorable request on the proxy's event loop, in-process.

Per request: `ProductionSignals.watch` wraps the ASGI send (noting the primary's response id from its first
bytes) and queues the retry check (a JSON parse, the sampling key, a digest, a bounded map). Timed over a
chat request of a few messages and a one-chunk answer, against the bare send, median of 5 runs; then the
retry map's memory at its bound. Runs in a few seconds.

    python bench/signals_overhead.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import tracemalloc
from typing import Any

from shadowtap.config import RetrySettings, load_settings
from shadowtap.metrics import Metrics
from shadowtap.proxy.feedback import ProductionSignals
from shadowtap.proxy.retry import Exchange, RetryDetector

MESSAGES = [
    {"role": "system", "content": "You are the helpdesk of Northwind Broadband. Answer briefly."},
    {"role": "user", "content": "My router blinks red since this morning."},
    {"role": "assistant", "content": "Unplug it for ten seconds, then plug it back in."},
    {"role": "user", "content": "Done, it still blinks red. What now?"},
]
ANSWER = json.dumps(
    {
        "id": "chatcmpl-8f1c2d",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"content": "x" * 400}}],
    }
).encode()


async def sink(message: dict[str, Any]) -> None:
    return None


async def one_run(signals: ProductionSignals | None, requests: int) -> float:
    start_message = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json")],
    }
    body_message = {"type": "http.response.body", "body": ANSWER, "more_body": False}
    started = time.perf_counter()
    for n in range(requests):
        last = {"role": "user", "content": f"Done, it still blinks red (try {n}). What now?"}
        body = json.dumps(
            {"model": "m", "messages": [*MESSAGES[:-1], last], "user": f"user-{n % 5000}"}
        ).encode()
        scope = {
            "method": "POST",
            "path": "/v1/chat/completions",
            "headers": [(b"x-shadow-segment", b"billing")],
        }
        send = sink if signals is None else signals.watch(scope, body, sink)
        await send(start_message)
        await send(body_message)
        if n % 256 == 0:
            await asyncio.sleep(0)  # let the queued retry checks run, as the loop would
    await asyncio.sleep(0)
    return (time.perf_counter() - started) / requests * 1e6


def memory_at_bound(conversations: int) -> float:
    detector = RetryDetector(RetrySettings(max_conversations=conversations))
    body = {"messages": MESSAGES}
    tracemalloc.start()
    for n in range(conversations):
        detector.observe(
            f"user-{n:08d}", "/v1/chat/completions", body, Exchange("billing", f"chatcmpl-{n}"), 0.0
        )
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return current / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix="signals-bench-")  # a retry would be recorded here
    settings = load_settings(
        overrides={"tags": {"segments": ["billing"]}, "sink": {"data_dir": data_dir}}, environ={}
    )
    signals = ProductionSignals(settings, Metrics())
    bare, watched = [], []
    for _ in range(5):
        bare.append(asyncio.run(one_run(None, args.requests)))
        watched.append(asyncio.run(one_run(signals, args.requests)))
    base, with_signals = statistics.median(bare), statistics.median(watched)
    print(f"{args.requests} chat requests, median of 5 runs (the loop's own time per request, in-process)")
    print(f"  baseline (request body encoded, bare send):   {base:6.1f} us")
    print(
        f"  with feedback + retry signals:                {with_signals:6.1f} us  (+{with_signals - base:.1f} us)"
    )
    signals.close()
    print(
        f"  retry map entries now: {len(signals.retries or [])}, response ids remembered: {len(signals.index)}"
    )
    bound = 100_000
    print(f"  retry map memory at its bound ({bound:,} conversations): {memory_at_bound(bound):.1f} MB")


if __name__ == "__main__":
    main()
