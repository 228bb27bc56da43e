"""The signals the user-facing SLO and the on-call alerts read, measured on a real proxy.

A blocked event loop shows in the loop-lag gauge while the per-request timings blame the primary; the
added latency is measured end to end and reaches seconds; every bounded label value exists at zero
before its first event, so `increase()` sees a first burst.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from shadowtap.metrics import OVERHEAD_BUCKETS, REJECTION_REASONS, SHADOW_DROP_REASONS
from tests.conftest import RunningProxy, Upstream
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


@pytest.fixture
def served(
    upstream_factory: Callable[..., Upstream], proxy_factory: Callable[..., RunningProxy]
) -> Iterator[tuple[RunningProxy, openai.OpenAI]]:
    primary = upstream_factory("primary-model")
    candidate = upstream_factory("candidate-model")
    proxy = proxy_factory(
        primary.base_url,
        candidate.base_url,
        candidate={"model": "candidate-model"},
        tags={"segments": ["billing"]},
    )
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-user", max_retries=0, timeout=30)
    yield proxy, client
    client.close()


def ask(client: openai.OpenAI, n: int) -> None:
    client.chat.completions.create(
        model="primary-model", messages=[{"role": "user", "content": f"Question {n}?"}], user=f"u{n}"
    )


def mean_lag_over(proxy: RunningProxy, client: openai.OpenAI, samples: int) -> float:
    """The mean sampled lag over the next `samples` samples, with requests going through meanwhile."""
    delay0 = proxy.metric("shadowtap_event_loop_delay_seconds_total")
    taken0 = proxy.metric("shadowtap_event_loop_lag_samples_total")
    n = 0

    def enough() -> bool:
        nonlocal n
        ask(client, n)
        n += 1
        return proxy.metric("shadowtap_event_loop_lag_samples_total") - taken0 >= samples

    wait_for(enough, timeout=30, what=f"{samples} loop-lag samples")
    taken = proxy.metric("shadowtap_event_loop_lag_samples_total") - taken0
    return (proxy.metric("shadowtap_event_loop_delay_seconds_total") - delay0) / taken


def test_a_blocked_event_loop_shows_in_the_loop_lag_gauge(served: tuple[RunningProxy, openai.OpenAI]) -> None:
    proxy, client = served
    loop = proxy_loop(proxy)
    healthy = mean_lag_over(proxy, client, 20)
    with LoopBlocker(loop):
        blocked = mean_lag_over(proxy, client, 20)
        gauge = wait_for(
            lambda: proxy.metric("shadowtap_event_loop_lag_seconds") >= 0.15 or None,
            timeout=10,
            what="the lag gauge to show the blocked loop",
        )
    assert gauge
    # Blocked 0.2 s every 0.5 s: about one sample in four is up to 0.2 s late.
    assert blocked > healthy + 0.02, f"mean lag {blocked:.3f} s blocked against {healthy:.3f} s healthy"


def test_added_latency_is_observed_per_answered_request_with_buckets_into_seconds(
    served: tuple[RunningProxy, openai.OpenAI],
) -> None:
    proxy, client = served
    for n in range(4):
        ask(client, n)
    route = "/v1/chat/completions"
    count = wait_for(
        lambda: proxy.metric("shadowtap_added_latency_seconds_count", route=route) >= 4 or None,
        timeout=10,
        what="four added-latency observations",
    )
    assert count
    assert max(OVERHEAD_BUCKETS) >= 5, "buckets stop short of seconds"
    # A streamed answer is observed too, once its last byte is sent.
    for _ in client.chat.completions.create(
        model="primary-model", messages=[{"role": "user", "content": "Stream?"}], stream=True
    ):
        pass
    wait_for(
        lambda: proxy.metric("shadowtap_added_latency_seconds_count", route=route) >= 5,
        timeout=10,
        what="the streamed answer's observation",
    )


def test_bounded_label_values_are_exported_at_zero_before_their_first_event(
    served: tuple[RunningProxy, openai.OpenAI],
) -> None:
    proxy, _ = served
    text = httpx.get(f"{proxy.url}/metrics", timeout=10).text
    for reason in REJECTION_REASONS:
        assert f'shadowtap_requests_rejected_total{{reason="{reason}"}} 0.0' in text
    for reason in SHADOW_DROP_REASONS:
        assert f'shadowtap_shadow_dropped_total{{reason="{reason}",route="/v1/chat/completions"}} 0.0' in text
    assert 'shadowtap_sink_records_total{outcome="dropped",sink="jsonl"} 0.0' in text
    assert 'shadowtap_proxy_errors_total{route="/v1/chat/completions"} 0.0' in text
    assert (
        'shadowtap_scores_total{outcome="candidate_only_refused",scorer="refusal",segment="billing",side="pair"} 0.0'
        in text
    )
    assert 'shadowtap_build_info{python="' in text
    assert "process_resident_memory_bytes" in text and "python_gc_collections_total" in text
