"""Retry detection: a user asking the same thing again, soon, is a retry on the answer they got first."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from shadowtap.config import RetrySettings
from shadowtap.proxy.retry import Exchange, RetryDetector, last_user_text
from tests.helpers import wait_for

QUESTION = [{"role": "user", "content": "Why was I charged twice this month?"}]


def chat(proxy: Any, user: str, messages: list[dict[str, Any]], segment: str = "billing") -> str:
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-user", max_retries=0)
    answer = client.chat.completions.create(
        model="m", messages=messages, user=user, extra_headers={"X-Shadow-Segment": segment}
    )
    return answer.id


@pytest.fixture
def retry_proxy(proxy_factory: Any, primary: Any, candidate: Any) -> Any:
    return proxy_factory(
        primary.base_url,
        candidate.base_url,
        candidate={"model": "candidate-model"},
        tags={"segments": ["billing"]},
    )


def test_asking_the_same_question_again_is_a_retry_on_the_first_answer(retry_proxy):
    first = chat(retry_proxy, "user-7", QUESTION)
    [pair] = retry_proxy.pairs(expected=1)
    chat(retry_proxy, "user-7", QUESTION)

    wait_for(lambda: retry_proxy.metric("shadowtap_retries_total", segment="billing") == 1, what="the retry")
    path = retry_proxy.data_dir / "feedback.jsonl"
    rows = wait_for(
        lambda: path.exists() and [json.loads(x) for x in path.read_text().splitlines()], what="record"
    )
    assert [(r["signal"], r["response_id"], r["pair_id"], r["source"]) for r in rows] == [
        ("retry", first, pair["id"], "proxy")
    ]


def test_a_new_question_another_user_or_a_streamed_answer_are_told_apart(retry_proxy):
    chat(retry_proxy, "user-1", QUESTION)
    chat(retry_proxy, "user-2", QUESTION)  # another conversation
    chat(
        retry_proxy,
        "user-1",
        [*QUESTION, {"role": "assistant", "content": "..."}, {"role": "user", "content": "ok"}],
    )
    retry_proxy.pairs(expected=3)
    assert retry_proxy.metric("shadowtap_retries_total", segment="billing") == 0

    client = openai.OpenAI(base_url=retry_proxy.base_url, api_key="sk-user", max_retries=0)
    for _ in range(2):  # the same last message as a stream, twice: a retry on the first stream
        list(client.chat.completions.create(model="m", messages=QUESTION, user="user-3", stream=True))
    wait_for(
        lambda: retry_proxy.metric("shadowtap_retries_total", segment="none") == 1, what="the streamed retry"
    )


@pytest.mark.parametrize("sample_key", ["body:user", "header:x-conversation"])
def test_a_large_question_asked_again_is_a_retry_too(proxy_factory, primary, candidate, sample_key):
    # Bodies over shadow.offload_bytes are parsed for retries in the offload worker, off the event loop.
    proxy = proxy_factory(
        primary.base_url,
        candidate.base_url,
        candidate={"model": "candidate-model"},
        shadow={"offload_bytes": 4096, "sample_key": sample_key},
        tags={"segments": ["billing"]},
    )
    long_question = [{"role": "user", "content": "Here is my whole invoice history: " + "x, " * 5000}]
    other = [{"role": "user", "content": "And here is another one: " + "y, " * 5000}]
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-user", max_retries=0)
    ids = []
    for messages in (long_question, long_question, other):
        answer = client.chat.completions.create(
            model="m",
            messages=messages,
            user="user-9",
            extra_headers={"X-Shadow-Segment": "billing", "X-Conversation": "conv-9"},
        )
        ids.append(answer.id)
        proxy.pairs(expected=len(ids))  # in order: each one's retry check has run before the next is sent

    wait_for(lambda: proxy.metric("shadowtap_retries_total", segment="billing") == 1, what="the retry")
    path = proxy.data_dir / "feedback.jsonl"
    rows = wait_for(
        lambda: path.exists() and [json.loads(x) for x in path.read_text().splitlines()], what="record"
    )
    assert [(r["signal"], r["response_id"]) for r in rows] == [("retry", ids[0])]


@pytest.mark.unit
def test_a_repeat_after_the_window_is_not_a_retry_and_memory_stays_bounded():
    detector = RetryDetector(RetrySettings(window_s=60, max_conversations=3))
    body = {"messages": QUESTION}
    first = Exchange(segment="billing", response_id="chatcmpl-1")
    assert detector.observe("u", "/v1/chat/completions", body, first, now=0.0) is None
    assert detector.observe("u", "/v1/chat/completions", body, Exchange(None), now=30.0) is first
    assert detector.observe("u", "/v1/chat/completions", body, Exchange(None), now=200.0) is None
    for n in range(10):
        detector.observe(f"user-{n}", "/v1/chat/completions", body, Exchange(None), now=300.0)
    assert len(detector) == 3


@pytest.mark.unit
def test_the_last_user_text_of_each_api():
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert last_user_text("/v1/chat/completions", {"messages": parts}) == "a\nb"
    assert last_user_text("/v1/completions", {"prompt": "p"}) == "p"
    assert last_user_text("/v1/responses", {"input": "hi"}) == "hi"
    assert last_user_text("/v1/responses", {"input": [{"role": "user", "content": "x"}]}) == "x"
    assert last_user_text("/v1/chat/completions", {"messages": [{"role": "system", "content": "s"}]}) is None
