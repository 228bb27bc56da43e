"""The signals the user-facing SLO and the on-call alerts read, measured on a real proxy.

A blocked event loop shows in the loop-lag gauge while the per-request timings blame the primary; the
added latency is measured end to end and reaches seconds; every bounded label value exists at zero
before its first event, so `increase()` sees a first burst.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from shadowtap.metrics import OVERHEAD_BUCKETS, REJECTION_REASONS, SHADOW_DROP_REASONS
from tests.conftest import RunningProxy, Upstream
from tests.deploy.loops import LoopBlocker, proxy_loop
from tests.helpers import wait_for


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
    delay0 = proxy.metric("shadowtap_event_loop_delay_seconds_sum")
    taken0 = proxy.metric("shadowtap_event_loop_delay_seconds_count")
    n = 0

    def enough() -> bool:
        nonlocal n
        ask(client, n)
        n += 1
        return proxy.metric("shadowtap_event_loop_delay_seconds_count") - taken0 >= samples

    wait_for(enough, timeout=30, what=f"{samples} loop-lag samples")
    taken = proxy.metric("shadowtap_event_loop_delay_seconds_count") - taken0
    return (proxy.metric("shadowtap_event_loop_delay_seconds_sum") - delay0) / taken


def test_a_blocked_event_loop_shows_in_the_loop_lag_gauge(served: tuple[RunningProxy, openai.OpenAI]) -> None:
    proxy, client = served
    loop = proxy_loop(proxy)
    healthy = mean_lag_over(proxy, client, 20)
    late0 = late_samples(proxy)
    with LoopBlocker(loop):
        blocked = mean_lag_over(proxy, client, 20)
        late = late_samples(proxy)
        gauge = wait_for(
            lambda: proxy.metric("shadowtap_event_loop_lag_seconds") >= 0.15 or None,
            timeout=10,
            what="the lag gauge to show the blocked loop",
        )
    assert gauge
    # Blocked 0.2 s every 0.5 s: about one sample in four is up to 0.2 s late.
    assert blocked > healthy + 0.02, f"mean lag {blocked:.3f} s blocked against {healthy:.3f} s healthy"
    # What ShadowProxyEventLoopBlocked reads: more than one sample in ten over 100 ms late.
    share = (late[0] - late0[0]) / (late[1] - late0[1])
    assert share > 0.1, f"only {share:.0%} of the samples were over 100 ms late"


def late_samples(proxy: RunningProxy) -> tuple[float, float]:
    """(samples over 100 ms late, samples) so far."""
    count = proxy.metric("shadowtap_event_loop_delay_seconds_count")
    on_time = proxy.metric("shadowtap_event_loop_delay_seconds_bucket", le="0.1")
    return count - on_time, count


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
