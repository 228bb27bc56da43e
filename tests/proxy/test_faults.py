"""Faults on every side of the proxy: the user gets the primary's answer, the fault shows up in a metric.

Candidate, primary, scorer and judge faults, and a SIGTERM while a user's stream is in flight. What the
proxy promises under each is listed in docs/guarantees.md.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import httpx
import openai
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from shadowtap.metrics import ScoringMetrics
from shadowtap.proxy.record import SideResult, build_pair
from shadowtap.records import Score, utc_now_rfc3339, validate_pair
from shadowtap.scorers.runner import DEFAULT_SCORERS, ScoringPipeline, build_scorers
from shadowtap.testing.upstreams import Reply
from tests.helpers import free_port, healthy, start_serve, wait_for

CHAT_ROUTE = "/v1/chat/completions"
CHAT = [{"role": "user", "content": "Where is my parcel right now?"}]
LONG = (
    "Your parcel left the depot this morning and should reach you before six this evening, weather allowing."
)


def client_for(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="sk-user", max_retries=0, timeout=30)


def ask(base_url: str, stream: bool = False) -> str:
    """The answer text a user of the OpenAI SDK gets."""
    client = client_for(base_url)
    if stream:
        chunks = client.chat.completions.create(model="m", messages=CHAT, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return client.chat.completions.create(model="m", messages=CHAT).choices[0].message.content or ""


def sse_text(raw: bytes) -> str:
    """The content deltas carried by the complete SSE events in `raw`."""
    parts = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            event = json.loads(line[6:])
            parts.extend(c["delta"].get("content") or "" for c in event["choices"])
    return "".join(parts)


def pending_shadows(proxy: Any) -> set[Any]:
    """Shadow jobs the running proxy still holds (queued, at the candidate, or waiting for the primary)."""
    return proxy.handle.server.config.app.state.proxy.shadow.pending


# ------------------------------------------------------------------------------------ candidate faults


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("fault", ["close_midstream", "reset"])
def test_a_candidate_that_drops_the_connection_is_counted_and_the_user_gets_the_primarys_answer(
    proxy, primary, candidate, fault, stream
):
    candidate.sim.policy = lambda route, body: Reply(text=LONG, fault=fault)
    direct = ask(primary.base_url, stream)

    answer = ask(proxy.base_url, stream)

    assert answer == direct
    [pair] = proxy.pairs(expected=1)
    validate_pair(pair)
    assert pair["primary"]["text"] == direct and pair["primary"]["error"] is None
    assert pair["candidate"]["error"]["kind"] == "disconnected"
    if fault == "close_midstream" and stream:
        # What the candidate sent before it hung up is kept, so the record shows how far it got.
        assert pair["candidate"]["text"] and LONG.startswith(pair["candidate"]["text"])
    assert proxy.metric("shadowtap_candidate_errors_total", route=CHAT_ROUTE, kind="disconnected") == 1
    wait_for(lambda: not pending_shadows(proxy), what="no pending shadow")


def test_a_candidate_streaming_slowly_does_not_slow_the_users_stream(proxy, primary, candidate):
    candidate.sim.policy = lambda route, body: Reply(text=LONG, token_delay_s=0.1)
    primary.sim.policy = lambda route, body: Reply(text=LONG)

    answer = ask(proxy.base_url, stream=True)

    # The user has the whole answer while the candidate is still streaming its copy.
    assert answer == LONG
    assert proxy.metric("shadowtap_shadow_in_flight") == 1
    assert proxy.pairs() == []
    [pair] = proxy.pairs(expected=1)
    assert pair["candidate"]["text"] == LONG and pair["candidate"]["error"] is None
    assert pair["candidate"]["latency_ms"] > pair["primary"]["latency_ms"]
    primary_s = proxy.metric("shadowtap_upstream_latency_seconds_sum", route=CHAT_ROUTE, side="primary")
    candidate_s = proxy.metric("shadowtap_upstream_latency_seconds_sum", route=CHAT_ROUTE, side="candidate")
    assert candidate_s > primary_s > 0
    assert proxy.metric("shadowtap_ttft_seconds_count", route=CHAT_ROUTE, side="candidate") == 1


def test_a_candidate_stream_slower_than_its_timeout_is_cut_and_counted(proxy_factory, primary, candidate):
    candidate.sim.policy = lambda route, body: Reply(text=LONG, token_delay_s=0.2)
    proxy = proxy_factory(primary.base_url, candidate.base_url, candidate={"timeout_s": 0.4})
    direct = ask(primary.base_url, stream=True)

    assert ask(proxy.base_url, stream=True) == direct

    [pair] = proxy.pairs(expected=1)
    assert pair["candidate"]["error"]["kind"] == "timeout"
    assert proxy.metric("shadowtap_candidate_errors_total", route=CHAT_ROUTE, kind="timeout") == 1


# ------------------------------------------------------------------------------------ primary faults


def stream_until_broken(url: str) -> tuple[bytes, BaseException | None]:
    body = {"model": "m", "messages": CHAT, "stream": True}
    received = b""
    try:
        with httpx.stream("POST", url + "/chat/completions", json=body, timeout=10) as response:
            for chunk in response.iter_raw():
                received += chunk
    except httpx.HTTPError as exc:
        return received, exc
    return received, None


def test_a_primary_that_breaks_its_stream_breaks_the_users_stream_the_same_way(proxy, primary):
    primary.sim.policy = lambda route, body: Reply(text=LONG, fault="close_midstream")

    direct, direct_error = stream_until_broken(primary.base_url)
    via, via_error = stream_until_broken(proxy.base_url)

    # The user gets what the primary sent, then a broken connection, exactly as without the proxy:
    # never a cleanly ended stream that passes a cut-off answer for a whole one.
    assert isinstance(direct_error, httpx.RemoteProtocolError)
    assert isinstance(via_error, httpx.RemoteProtocolError)
    assert sse_text(via) == sse_text(direct) and sse_text(via)
    assert b"[DONE]" not in via
    [pair] = proxy.pairs(expected=1)
    assert pair["primary"]["error"]["kind"] == "disconnected"
    assert pair["primary"]["text"] == sse_text(via)
    assert proxy.metric("shadowtap_primary_errors_total", route=CHAT_ROUTE, kind="disconnected") == 1


def test_a_primary_that_breaks_a_plain_answer_gives_the_user_a_502_and_the_pair_records_it(proxy, primary):
    primary.sim.policy = lambda route, body: Reply(text=LONG, fault="close_midstream")

    response = httpx.post(proxy.base_url + "/chat/completions", json={"model": "m", "messages": CHAT})

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"
    [pair] = proxy.pairs(expected=1)
    assert pair["primary"]["error"]["kind"] == "protocol"
    assert pair["candidate"]["text"]
    assert proxy.metric("shadowtap_primary_errors_total", route=CHAT_ROUTE, kind="protocol") == 1


@pytest.mark.parametrize(
    ("reply", "status"), [(Reply(status=500), 500), (Reply(fault="reset"), 502)], ids=["http500", "reset"]
)
def test_with_on_primary_error_skip_a_failed_primary_leaves_no_pair(
    proxy_factory, primary, candidate, reply, status
):
    primary.sim.policy = lambda route, body: reply
    proxy = proxy_factory(primary.base_url, candidate.base_url, shadow={"on_primary_error": "skip"})
    request = {"model": "m", "messages": CHAT}

    response = httpx.post(proxy.base_url + "/chat/completions", json=request)

    assert response.status_code == status
    if status == 500:  # the primary's own error, byte for byte
        assert response.content == httpx.post(primary.base_url + "/chat/completions", json=request).content
    wait_for(
        lambda: proxy.metric("shadowtap_shadow_skipped_total", route=CHAT_ROUTE, reason="primary_error") == 1,
        what="the skipped shadow to be counted",
    )
    wait_for(lambda: not pending_shadows(proxy), what="no pending shadow")
    assert proxy.pairs() == []
    assert proxy.metric("shadowtap_pairs_total", route=CHAT_ROUTE) == 0


# ------------------------------------------------------------------------------------ scorer faults


class ExplodingScorer:
    name: ClassVar[str] = "exploding"
    outcomes: ClassVar[frozenset[str]] = frozenset({"pass"})

    async def score(self, pair: dict[str, Any]) -> list[Score]:
        raise RuntimeError("scorer bug")


class OffContractScorer:
    name: ClassVar[str] = "off_contract"
    outcomes: ClassVar[frozenset[str]] = frozenset({"pass"})

    async def score(self, pair: dict[str, Any]) -> list[Score]:
        return [Score(self.name, "pair", "maybe", None, {})]


def a_pair() -> dict[str, Any]:
    def side(text: str, latency: float) -> SideResult:
        return SideResult(model="m", status=200, latency_ms=latency, text=text, finish_reason="stop")

    return build_pair(
        pair_id="p-1",
        ts=utc_now_rfc3339(),
        route=CHAT_ROUTE,
        stream=False,
        request={"model": "m", "messages": CHAT, "response_format": {"type": "json_object"}},
        tags={"route": CHAT_ROUTE, "segment": "none", "length_bucket": "0-500"},
        primary=side('{"status": "on its way"}', 100.0),
        candidate=side('{"status": "arrives today"}', 300.0),
    )


async def test_a_scorer_that_raises_is_counted_and_the_others_still_score():
    registry = CollectorRegistry()
    metrics = ScoringMetrics(registry)
    segments: frozenset[str] = frozenset()
    scorers = [ExplodingScorer(), *build_scorers({}, metrics, segments), OffContractScorer()]
    pipeline = ScoringPipeline(scorers, metrics, segments)  # type: ignore[arg-type]

    records, _ = await pipeline.score_pair(a_pair())
    pipeline.count(a_pair(), records, [], source="embedded")

    assert {r["scorer"] for r in records} == set(DEFAULT_SCORERS) - {"tools"}  # the request offers no tools
    for name in ("exploding", "off_contract"):
        assert registry.get_sample_value("shadowtap_scorer_errors_total", {"scorer": name}) == 1
    for name in DEFAULT_SCORERS:
        assert registry.get_sample_value("shadowtap_scorer_errors_total", {"scorer": name}) is None
    assert registry.get_sample_value("shadowtap_pairs_scored_total", {"source": "embedded"}) == 1


def test_a_judge_that_cannot_be_reached_leaves_the_other_scores_in_place(proxy_factory, primary, candidate):
    candidate.sim.policy = lambda route, body: Reply(text='{"answer": "A different one."}')
    judge_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    scorers = {
        **DEFAULT_SCORERS,
        "judge": {"base_url": judge_url, "model": "judge", "max_retries": 1, "backoff_base_s": 0.0},
    }
    proxy = proxy_factory(primary.base_url, candidate.base_url, scoring={"scorers": scorers})

    def json_answer(base_url: str) -> str | None:
        completion = client_for(base_url).chat.completions.create(
            model="m", messages=CHAT, response_format={"type": "json_object"}
        )
        return completion.choices[0].message.content

    assert json_answer(proxy.base_url) == json_answer(primary.base_url)

    wait_for(lambda: proxy.metric("shadowtap_pairs_scored_total", source="embedded") == 1, what="scoring")
    scores_file = proxy.data_dir / "scores.jsonl"

    def scorers_seen() -> set[str]:
        lines = scores_file.read_text().splitlines() if scores_file.exists() else []
        return {json.loads(line)["scorer"] for line in lines}

    wait_for(lambda: scorers_seen() >= {"format", "refusal", "latency"}, what="the other scorers' records")
    assert "judge" not in scorers_seen()
    assert proxy.metric("shadowtap_scorer_errors_total", scorer="judge") == 1
    # The first order to fail was tried once more (max_retries: 1) before the judge gave up on the pair.
    assert proxy.metric("shadowtap_judge_calls_total", outcome="error") >= 2
    assert proxy.metric("shadowtap_judge_calls_total", outcome="ok") == 0


# ------------------------------------------------------------------------------------ graceful shutdown


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(url, timeout=5).text
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_sigterm_finishes_the_users_stream_and_accounts_for_every_queued_shadow(
    tmp_path: Path, upstream_factory
):
    def primary_policy(route: str, body: dict[str, Any]) -> Reply:
        if body.get("stream"):
            return Reply(text=LONG, token_delay_s=0.15)  # about 1.2 s from first to last chunk
        return Reply(text="Quick answer.")

    primary = upstream_factory("primary-model", primary_policy)
    candidate = upstream_factory("candidate-model", lambda route, body: Reply(text="Slow.", ttft_s=1.0))
    grace = 3.0
    port = free_port()
    data = tmp_path / "data"
    proc = start_serve(
        tmp_path,
        {
            "primary": {"url": primary.base_url},
            "candidate": {"url": candidate.base_url},
            "server": {"port": port, "shutdown_grace_s": grace},
            # One candidate call at a time at 1 s each: most shadows are still queued at SIGTERM.
            "shadow": {"concurrency": 1, "queue_size": 100},
            "sink": {"data_dir": str(data)},
        },
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: healthy(base), 30, interval=0.05, what="shadowtap serve to accept connections")
        client = client_for(base + "/v1")
        for _ in range(9):
            assert client.chat.completions.create(model="m", messages=CHAT).choices[0].message.content
        wait_for(lambda: (data / "pairs.jsonl").exists(), 10, what="the first pair")

        first_chunk = threading.Event()
        streamed: dict[str, Any] = {}

        def user_stream() -> None:
            text = []
            try:
                for chunk in client.chat.completions.create(model="m", messages=CHAT, stream=True):
                    if chunk.choices and chunk.choices[0].delta.content:
                        text.append(chunk.choices[0].delta.content)
                        first_chunk.set()
            except Exception as exc:  # reported by the assertion below
                streamed["error"] = exc
            streamed["text"] = "".join(text)
            first_chunk.set()

        reader = threading.Thread(target=user_stream)
        reader.start()
        assert first_chunk.wait(10)
        sampled = scrape(base + "/metrics")[f"shadowtap_shadow_sampled_total{[('route', CHAT_ROUTE)]}"]
        term_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        reader.join(15)
        output = proc.communicate(timeout=4 * grace + 10)[0].decode()
        exited_after = time.monotonic() - term_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert streamed == {"text": LONG}, output
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    # Requests drain within the grace, then queued shadows get the grace again; then the sink flushes.
    assert exited_after < 2 * grace + 3, output
    pairs = [json.loads(line) for line in (data / "pairs.jsonl").read_text().splitlines()]
    found = re.search(r"shutdown: (\d+) queued or in-flight shadow requests dropped", output)
    dropped = int(found.group(1)) if found else 0
    assert sampled == 10
    assert len(pairs) + dropped == sampled, output
    assert pairs and dropped, "the run should both finish some queued shadows and drop others"


def test_a_request_stuck_on_a_hung_primary_does_not_hold_shutdown_past_a_fractional_grace(
    tmp_path: Path, upstream_factory, candidate
):
    hung = upstream_factory("primary-model", lambda route, body: Reply(fault="hang"))
    grace = 0.5
    port = free_port()
    proc = start_serve(
        tmp_path,
        {
            "primary": {"url": hung.base_url},
            "candidate": {"url": candidate.base_url},
            "server": {"port": port, "shutdown_grace_s": grace},
            "sink": {"data_dir": str(tmp_path / "data")},
        },
    )
    base = f"http://127.0.0.1:{port}"
    outcome: dict[str, Any] = {}

    def user() -> None:
        try:
            outcome["status"] = httpx.post(
                base + "/v1/chat/completions", json={"model": "m", "messages": CHAT}, timeout=60
            ).status_code
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    try:
        wait_for(lambda: healthy(base), 30, interval=0.05, what="shadowtap serve to accept connections")
        waiting = threading.Thread(target=user)
        waiting.start()
        wait_for(lambda: len(hung.sim.received) == 1, what="the request to reach the hung primary")
        term_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
        exited_after = time.monotonic() - term_at
        waiting.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    # The primary would hold that request for its 300 s timeout; shutdown does not wait for it.
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert exited_after < 2 * grace + 3, output
    assert not waiting.is_alive()
    assert "error" in outcome or outcome["status"] >= 500
