"""Large pairs are parsed, masked and encoded by the offload worker process, and recorded just as small
ones are: the whole masked request in the record, the candidate asked under its own name, sampling on a
body field deciding alike, a 5 MB prompt mirrored with the user's answer untouched and nothing of it left
in shared memory, and a worker that dies losing only the pair it held (counted)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from shadowtap.proxy.record import CUT_TEXT_BYTES
from shadowtap.proxy.shadow import Sampler
from shadowtap.proxy.spool import SHARED_MEMORY
from shadowtap.records import validate_pair
from shadowtap.testing.server import SimulatedLLM
from shadowtap.testing.serving import serve_in_thread
from shadowtap.testing.upstreams import Reply
from tests.helpers import wait_for
from tests.proxy.test_surface_bytes import AnswerLog

CHAT_ROUTE = "/v1/chat/completions"
EMAIL, PHONE = "jane.doe@example.com", "+1 415 555 0134"
PROSE = "The order placed on 2026-05-01T10:30:00 was refunded in full. "


def large_prompt(chars: int = 300_000) -> str:
    """About `chars` characters of prose with an email and a phone number in the middle."""
    half = PROSE * (chars // len(PROSE) // 2)
    return f"{half}Reach me at {EMAIL} or {PHONE}. {half}"


@pytest.fixture
def client(proxy) -> Any:
    sdk = openai.OpenAI(base_url=proxy.base_url, api_key="sk-user", max_retries=0)
    yield sdk
    sdk.close()


def test_a_large_prompt_is_recorded_whole_and_masked(proxy, primary, candidate, client):
    prompt = large_prompt()
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}])

    assert answer.choices[0].message.content  # the primary's own answer
    [pair] = proxy.pairs(1)
    validate_pair(pair)
    recorded = pair["request"]["messages"][0]["content"]
    assert recorded == prompt.replace(EMAIL, "[EMAIL]").replace(PHONE, "[PHONE]")  # whole; timestamps kept
    assert pair["masked"]["request"] == 1
    assert pair["tags"]["length_bucket"].endswith("+")
    [sent] = [r for r in candidate.sim.received if r.path == CHAT_ROUTE]
    assert sent.json["model"] == "candidate-model"
    assert sent.json["messages"][0]["content"] == prompt  # the candidate is asked what the user asked
    scores = proxy.data_dir / "scores.jsonl"

    def scored() -> set[str]:
        lines = scores.read_text().splitlines() if scores.exists() else []
        return {json.loads(line)["pair_id"] for line in lines if line.strip()}

    assert wait_for(scored, what="the pair scored in-process") == {pair["id"]}


def test_a_large_answer_is_parsed_off_the_loop_and_masked(proxy, primary, candidate, client):
    long_text = large_prompt(200_000)
    candidate.sim.policy = lambda route, body: Reply(text=long_text)

    for stream in (False, True):
        kwargs: dict[str, Any] = {"stream": True} if stream else {}
        result = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Hi"}], **kwargs
        )
        if stream:
            list(result)

    pairs = proxy.pairs(2)
    for pair in pairs:
        validate_pair(pair)
        [output] = pair["candidate"]["outputs"]
        assert output["text"] == long_text.replace(EMAIL, "[EMAIL]").replace(PHONE, "[PHONE]")
        assert output["finish_reason"] == "stop"
        assert pair["masked"]["candidate"] == 1
        assert pair["candidate"]["error"] is None
    assert [p["stream"] for p in sorted(pairs, key=lambda p: p["ts"])] == [False, True]


@pytest.fixture
def logged_primary() -> Iterator[tuple[AnswerLog, str]]:
    log = AnswerLog(SimulatedLLM("primary-model").app)
    with serve_in_thread(log) as handle:
        yield log, handle.base_url


def left_in_shared_memory(pair_id: str) -> list[Path]:
    return list(SHARED_MEMORY.glob(f"shadowtap-offload-*/{pair_id}.*"))


def test_a_5_mb_prompt_is_mirrored_whole_and_its_answer_recorded_within_the_cap(
    proxy_factory, logged_primary, candidate
):
    answers, primary_url = logged_primary
    proxy = proxy_factory(primary_url, candidate.base_url, candidate={"model": "candidate-model"})
    long_answer = large_prompt(1_500_000)  # over a plain answer's share of shadow.max_record_bytes
    candidate.sim.policy = lambda route, body: Reply(text=long_answer)
    prompt = large_prompt(5_000_000)
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}]}).encode()

    answer = httpx.post(
        proxy.url + CHAT_ROUTE, content=raw, headers={"content-type": "application/json"}, timeout=60
    )

    assert answer.status_code == 200
    assert answer.content == answers.bodies[-1]  # the primary's bytes, untouched
    [pair] = proxy.pairs(1, timeout=60)
    validate_pair(pair)
    assert pair["request"]["messages"][0]["content"] == prompt.replace(EMAIL, "[EMAIL]").replace(
        PHONE, "[PHONE]"
    )
    assert pair["primary"]["truncated"] is False
    assert pair["candidate"]["truncated"] is True  # cut at the cap, as the answer of a small prompt is
    kept = pair["candidate"]["text"]  # a cut JSON answer: its start, as it came
    assert len(kept) == CUT_TEXT_BYTES and kept.startswith('{"id":') and long_answer[:1000] in kept
    assert proxy.metric("shadowtap_records_truncated_total", side="candidate") == 1
    [sent] = [r for r in candidate.sim.received if r.path == CHAT_ROUTE]
    assert sent.json["model"] == "candidate-model"
    assert sent.json["messages"][0]["content"] == prompt  # every byte of the prompt reached the candidate
    assert left_in_shared_memory(pair["id"]) == []  # no copy of the prompt outlives its record


def test_sampling_on_a_body_field_decides_a_large_body_as_it_does_a_small_one(
    proxy_factory, primary, candidate
):
    proxy = proxy_factory(
        primary.base_url,
        candidate.base_url,
        candidate={"model": "candidate-model"},
        shadow={"sample_rate": 0.5, "sample_key": "body:user"},
    )
    users = [f"user-{i}" for i in range(16)]
    body = {"model": "m", "messages": [{"role": "user", "content": large_prompt(100_000)}]}
    for user in users:
        httpx.post(proxy.url + CHAT_ROUTE, json={**body, "user": user}, timeout=30).raise_for_status()

    sampler = Sampler(proxy.settings)
    chosen = {user for user in users if sampler.chosen(CHAT_ROUTE, [], {"user": user})}
    assert 0 < len(chosen) < len(users)
    pairs = proxy.pairs(len(chosen))
    assert {p["request"]["user"] for p in pairs} == chosen
    wait_for(
        lambda: (
            proxy.metric("shadowtap_shadow_skipped_total", route=CHAT_ROUTE, reason="not_sampled")
            == len(users) - len(chosen)
        ),
        what="every large body not chosen counted as not sampled",
    )
    assert proxy.metric("shadowtap_shadow_sampled_total", route=CHAT_ROUTE) == len(chosen)


def test_a_worker_that_dies_loses_only_the_pair_it_held_and_is_replaced(proxy, primary, candidate):
    body = {"model": "m", "messages": [{"role": "user", "content": large_prompt(100_000)}]}
    post = lambda: httpx.post(proxy.url + CHAT_ROUTE, json=body, timeout=30)  # noqa: E731
    assert post().status_code == 200
    proxy.pairs(1)
    [worker] = [p for p in multiprocessing.active_children() if p.name != "shadowtap-scoring"]
    os.kill(worker.pid, signal.SIGKILL)
    wait_for(lambda: not worker.is_alive(), what="the worker gone")

    assert post().status_code == 200  # the user never notices
    wait_for(
        lambda: (
            proxy.metric("shadowtap_shadow_dropped_total", route=CHAT_ROUTE, reason="offload_failed") == 1
        ),
        what="the pair the dead worker would have held, counted",
    )
    assert post().status_code == 200
    assert len(proxy.pairs(2)) == 2  # a new worker recorded the next one
