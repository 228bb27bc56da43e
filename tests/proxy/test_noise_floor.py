"""The noise floor (A/A): with `shadow.noise_floor_rate`, a mirrored request is also sent again to the
primary, and that primary-against-primary pair is recorded and scored beside the candidate's, counted
apart from it, so what each scorer reports when nothing changed can be read next to the candidate's
difference."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from shadowtap.records import validate_pair
from shadowtap.testing.upstreams import Reply
from tests.helpers import wait_for

CHAT_ROUTE = "/v1/chat/completions"
ASK = [{"role": "user", "content": "Give me the order as JSON."}]
JSON_FORMAT = {"type": "json_object"}


@pytest.fixture
def proxy(proxy_factory, primary, candidate):
    return proxy_factory(
        primary.base_url,
        candidate.base_url,
        candidate={"model": "candidate-model"},
        shadow={"noise_floor_rate": 1.0},
    )


@pytest.fixture
def client(proxy) -> Any:
    sdk = openai.OpenAI(base_url=proxy.base_url, api_key="sk-user-secret", max_retries=0)
    yield sdk
    sdk.close()


def by_kind(pairs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    [candidate] = [p for p in pairs if "comparison" not in p["tags"]]
    [noise] = [p for p in pairs if p["tags"].get("comparison") == "noise_floor"]
    return candidate, noise


def test_a_mirrored_request_also_goes_to_the_primary_again_and_is_recorded_as_its_noise_floor(
    proxy, primary, candidate, client
):
    answers = iter(['{"order": 1}', '{"order": 1, "note": "same order"}'])
    primary.sim.policy = lambda route, body: Reply(text=next(answers))
    candidate.sim.policy = lambda route, body: Reply(text='{"order": 2}')

    answer = client.chat.completions.create(model="gpt-prod", messages=ASK, response_format=JSON_FORMAT)

    assert answer.choices[0].message.content == '{"order": 1}'  # the user's answer is the first one
    pair, noise = by_kind(proxy.pairs(2))
    for record in (pair, noise):
        validate_pair(record)
    assert noise["primary"] == pair["primary"]  # both compare against the user's answer
    assert noise["candidate"]["outputs"][0]["text"] == '{"order": 1, "note": "same order"}'
    assert noise["candidate"]["model"] == "gpt-prod"
    assert pair["candidate"]["outputs"][0]["text"] == '{"order": 2}'
    again = [r for r in primary.sim.received if r.path == CHAT_ROUTE]
    assert len(again) == 2
    assert again[1].json["model"] == "gpt-prod"  # asked under the client's name, with its credentials
    assert again[1].json["messages"] == ASK
    assert again[1].headers["authorization"] == "Bearer sk-user-secret"
    assert proxy.metric("shadowtap_pairs_total", route=CHAT_ROUTE) == 1
    assert proxy.metric("shadowtap_noise_floor_pairs_total", route=CHAT_ROUTE) == 1


def test_noise_floor_scores_are_counted_apart_from_the_candidates_and_never_queued_for_review(
    proxy, primary, candidate, client
):
    answers = iter(['{"order": 1}', "Here is your order: 1"])  # the second answer breaks the format
    primary.sim.policy = lambda route, body: Reply(text=next(answers))
    candidate.sim.policy = lambda route, body: Reply(text='{"order": 1}')

    client.chat.completions.create(model="gpt-prod", messages=ASK, response_format=JSON_FORMAT)

    pair, noise = by_kind(proxy.pairs(2))
    scores_path = proxy.data_dir / "scores.jsonl"

    def format_scores() -> dict[str, str] | None:
        rows = (
            [json.loads(line) for line in scores_path.read_text().splitlines()]
            if scores_path.exists()
            else []
        )
        found = {
            r["pair_id"]: r["outcome"] for r in rows if r["scorer"] == "format" and r["side"] == "candidate"
        }
        return found if len(found) == 2 else None

    outcomes = wait_for(format_scores, what="the format scores of both pairs")
    assert outcomes == {pair["id"]: "pass", noise["id"]: "fail"}
    labels = {"scorer": "format", "side": "candidate", "segment": "none"}
    assert proxy.metric("shadowtap_scores_total", outcome="pass", **labels) == 1
    assert proxy.metric("shadowtap_scores_total", outcome="fail", **labels) == 0
    assert proxy.metric("shadowtap_noise_floor_scores_total", outcome="fail", **labels) == 1
    review = proxy.data_dir / "review.jsonl"
    queued = (
        [json.loads(line)["pair_id"] for line in review.read_text().splitlines()] if review.exists() else []
    )
    assert noise["id"] not in queued


def test_the_responses_api_is_asked_again_with_store_off(proxy, primary, candidate, client):
    client.responses.create(model="gpt-prod", input="Weather in Paris?")

    by_kind(proxy.pairs(2))
    again = [r for r in primary.sim.received if r.path == "/v1/responses"]
    assert [r.json.get("store") for r in again] == [
        None,
        False,
    ]  # the user's request as sent; the echo stores nothing


def test_with_no_noise_floor_rate_nothing_is_sent_twice(proxy_factory, primary, candidate):
    proxy = proxy_factory(primary.base_url, candidate.base_url, candidate={"model": "candidate-model"})
    sdk = openai.OpenAI(base_url=proxy.base_url, api_key="sk-user", max_retries=0)
    for _ in range(20):
        sdk.chat.completions.create(model="m", messages=ASK)
    sdk.close()

    assert len(proxy.pairs(20)) == 20
    assert len([r for r in primary.sim.received if r.path == CHAT_ROUTE]) == 20
    assert proxy.metric("shadowtap_noise_floor_pairs_total", route=CHAT_ROUTE) == 0


def test_the_noise_floor_series_read_zero_before_the_first_twin_only_when_it_is_on(
    proxy_factory, primary, candidate
):
    labels = {"scorer": "refusal", "side": "pair", "outcome": "candidate_only_refused", "segment": "none"}
    on = proxy_factory(
        primary.base_url, candidate.base_url, candidate={"model": "m"}, shadow={"noise_floor_rate": 0.02}
    )
    off = proxy_factory(primary.base_url, candidate.base_url, candidate={"model": "m"})

    # The alert rules read a first noise-floor refusal as an increase from 0, not as a new series.
    assert on.metrics.registry.get_sample_value("shadowtap_noise_floor_scores_total", labels) == 0.0
    assert off.metrics.registry.get_sample_value("shadowtap_noise_floor_scores_total", labels) is None
    assert off.metrics.registry.get_sample_value("shadowtap_scores_total", labels) == 0.0
