"""Every API surface real traffic holds, through the proxy with the OpenAI SDK: what the user gets is the
primary's answer; the pair/v2 record keeps what each side returned (every choice, tool calls, refusal,
reasoning); the scorers' verdicts follow from it; nothing personal is written unmasked.

The upstreams are the simulated models of `shadowtap.testing`, speaking OpenAI's and vLLM's wire formats.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from shadowtap.records import validate_pair
from shadowtap.testing.pairs import WEATHER_TOOL as WEATHER
from shadowtap.testing.upstreams import Reply
from tests.helpers import wait_for

ASK = [{"role": "user", "content": "What's the weather in Paris?"}]
GOOD_ARGS = '{"city": "Paris", "unit": "celsius"}'
BAD_ARGS = '{"city": 42, "unit": "kelvin"}'


@pytest.fixture(params=["recorded on the loop", "recorded by the offload worker"])
def proxy(request, proxy_factory, primary, candidate):
    """Every surface, recorded both ways: small pairs on the proxy's loop, and (with shadow.offload_bytes
    at 0) every pair parsed, masked and encoded in the offload worker process, as large ones are."""
    offload = {"offload_bytes": 0} if request.param == "recorded by the offload worker" else {}
    return proxy_factory(
        primary.base_url, candidate.base_url, candidate={"model": "candidate-model"}, shadow=offload
    )


@pytest.fixture
def client(proxy) -> Any:
    sdk = openai.OpenAI(base_url=proxy.base_url, api_key="sk-user", max_retries=0)
    yield sdk
    sdk.close()


def scores_of(proxy, pair_id: str, expected: int) -> dict[tuple[str, str], dict[str, Any]]:
    """The score records of one pair, by (scorer, side), once `expected` of them are written."""
    path = proxy.data_dir / "scores.jsonl"

    def read() -> dict[tuple[str, str], dict[str, Any]] | None:
        if not path.exists():
            return None
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        mine = {(r["scorer"], r["side"]): r for r in rows if r["pair_id"] == pair_id}
        return mine if len(mine) >= expected else None

    return wait_for(read, 10, what=f"{expected} scores of pair {pair_id}")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_candidate_tool_call_that_breaks_a_strict_schema_fails_on_the_candidate_only(
    proxy, primary, candidate, client, stream
):
    primary.sim.policy = lambda route, body: Reply(text="", tool_calls=[("get_weather", GOOD_ARGS)])
    candidate.sim.policy = lambda route, body: Reply(text="", tool_calls=[("get_weather", BAD_ARGS)])

    if stream:
        calls: dict[int, str] = {}
        for chunk in client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER], stream=True):
            for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                calls[delta_call.index] = calls.get(delta_call.index, "") + (
                    delta_call.function.arguments or ""
                )
        user_args = calls[0]
    else:
        answer = client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER])
        user_args = answer.choices[0].message.tool_calls[0].function.arguments

    assert user_args == GOOD_ARGS  # the primary's call, as it sent it
    [pair] = proxy.pairs(1)
    validate_pair(pair)
    assert pair["schema"] == "shadowtap.pair/v2" and pair["api"] == "chat"
    for side, args in (("primary", GOOD_ARGS), ("candidate", BAD_ARGS)):
        [call] = pair[side]["outputs"][0]["tool_calls"]
        assert (call["name"], call["arguments"]) == ("get_weather", args)
        assert pair[side]["outputs"][0]["finish_reason"] == "tool_calls"
    if stream:
        assert pair["primary"]["ttft_ms"] is not None  # the first tool-call delta is the first token
    scores = scores_of(proxy, pair["id"], 3)
    assert scores[("tools", "primary")]["outcome"] == "pass"
    assert scores[("tools", "candidate")]["outcome"] == "schema_violation"
    assert scores[("tools", "pair")]["outcome"] == "different_arguments"


def test_three_streamed_choices_are_kept_apart(proxy, primary, candidate, client):
    primary.sim.policy = lambda route, body: Reply(choices=["Sunny.", "Rainy.", "Windy."])
    candidate.sim.policy = lambda route, body: Reply(choices=["Sunny.", "Sunny.", "Cold."])

    texts = {0: "", 1: "", 2: ""}
    for chunk in client.chat.completions.create(model="m", messages=ASK, n=3, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""

    assert texts == {0: "Sunny.", 1: "Rainy.", 2: "Windy."}
    [pair] = proxy.pairs(1)
    assert [o["text"] for o in pair["primary"]["outputs"]] == ["Sunny.", "Rainy.", "Windy."]
    assert [o["index"] for o in pair["candidate"]["outputs"]] == [0, 1, 2]
    assert [o["text"] for o in pair["candidate"]["outputs"]] == ["Sunny.", "Sunny.", "Cold."]


def test_reasoning_is_recorded_apart_from_the_answer(proxy, primary, candidate, client):
    primary.sim.policy = lambda route, body: Reply(text="42.", reasoning="Six times seven.")
    candidate.sim.policy = lambda route, body: Reply(text="41.", reasoning="Guessing.")

    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "6*7?"}])

    assert answer.choices[0].message.content == "42."
    [pair] = proxy.pairs(1)
    assert pair["primary"]["outputs"][0]["reasoning"] == "Six times seven."
    assert pair["candidate"]["outputs"][0]["reasoning"] == "Guessing."
    assert pair["primary"]["text"] == "42."


def test_the_refusal_field_is_recorded_and_scored(proxy, primary, candidate, client):
    primary.sim.policy = lambda route, body: Reply(text='{"city": "Paris"}')
    candidate.sim.policy = lambda route, body: Reply(refusal="I can't help with that.")
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "w", "strict": True, "schema": {"type": "object"}},
    }

    answer = client.chat.completions.create(model="m", messages=ASK, response_format=schema)

    assert answer.choices[0].message.content == '{"city": "Paris"}'
    [pair] = proxy.pairs(1)
    assert pair["candidate"]["outputs"][0]["refusal"] == "I can't help with that."
    scores = scores_of(proxy, pair["id"], 4)
    assert scores[("refusal", "candidate")]["outcome"] == "refused"
    assert scores[("refusal", "pair")]["outcome"] == "candidate_only_refused"


def test_a_completions_prompt_array_keeps_each_prompt_apart(proxy, primary, candidate, client):
    primary.sim.policy = lambda route, body: Reply(choices=["one", "two"])
    candidate.sim.policy = lambda route, body: Reply(choices=["uno", "dos"])

    answer = client.completions.create(model="m", prompt=["Say one", "Say two"])

    assert sorted((c.index, c.text) for c in answer.choices) == [(0, "one"), (1, "two")]
    [pair] = proxy.pairs(1)
    assert pair["api"] == "completions"
    assert [(o["index"], o["text"]) for o in pair["candidate"]["outputs"]] == [(0, "uno"), (1, "dos")]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_the_responses_api_is_mirrored_with_store_off_and_recorded(proxy, primary, candidate, client, stream):
    primary.sim.policy = lambda route, body: Reply(text="Paris is sunny.")
    candidate.sim.policy = lambda route, body: Reply(text="It rains in Paris.")

    if stream:
        with client.responses.stream(model="m", input="Weather in Paris?") as events:
            text = events.get_final_response().output_text
    else:
        text = client.responses.create(model="m", input="Weather in Paris?").output_text

    assert text == "Paris is sunny."
    [pair] = proxy.pairs(1)
    validate_pair(pair)
    assert (pair["route"], pair["api"]) == ("/v1/responses", "responses")
    assert pair["primary"]["outputs"][0]["text"] == "Paris is sunny."
    assert pair["candidate"]["outputs"][0]["text"] == "It rains in Paris."
    assert pair["primary"]["response_id"].startswith("resp_")
    [sent] = [r for r in candidate.sim.received if r.path == "/v1/responses"]
    assert sent.json["store"] is False and sent.json["model"] == "candidate-model"
    scores = scores_of(proxy, pair["id"], 4)
    assert scores[("refusal", "primary")]["outcome"] == "answered"
    assert scores[("refusal", "pair")]["outcome"] == "neither"
    assert scores[("latency", "pair")]["outcome"] in {"candidate_faster", "candidate_slower", "same"}


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response"),
        ({"conversation": "conv_123"}, "conversation"),
        ({"background": True}, "background"),
    ],
)
def test_responses_requests_that_depend_on_the_primarys_state_are_not_mirrored(
    proxy, primary, candidate, client, extra, reason
):
    client.responses.create(model="m", input="And tomorrow?", **extra)

    wait_for(
        lambda: proxy.metric("shadowtap_shadow_skipped_total", route="/v1/responses", reason=reason) == 1,
        what=f"the request skipped as {reason}",
    )
    assert not [r for r in candidate.sim.received if r.path == "/v1/responses"]


def test_personal_data_is_masked_everywhere_in_the_record_and_timestamps_are_not(
    proxy, primary, candidate, client
):
    args = '{"email": "jane.doe@example.com", "when": "2026-05-01T10:30:00"}'
    primary.sim.policy = lambda route, body: Reply(text="", tool_calls=[("book", args)])
    candidate.sim.policy = lambda route, body: Reply(text="Call +44 20 7946 0958 at 2026-05-01 10:30:00.")
    history = [
        {"role": "user", "content": "Book me in; I'm jane.doe@example.com.", "name": "jane"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"phone": "+1-555-123-4567"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "found"},
    ]
    tool = {"type": "function", "function": {"name": "book", "parameters": {"type": "object"}}}

    client.chat.completions.create(model="m", messages=history, tools=[tool], user="jane.doe@example.com")

    [pair] = proxy.pairs(1)
    written = json.dumps(pair)
    for secret in ("jane.doe@example.com", "+1-555-123-4567", "+44 20 7946 0958"):
        assert secret not in written
    assert "2026-05-01T10:30:00" in written and "2026-05-01 10:30:00" in written
    masked_args = json.loads(pair["primary"]["outputs"][0]["tool_calls"][0]["arguments"])  # still JSON
    assert masked_args == {"email": "[EMAIL]", "when": "2026-05-01T10:30:00"}
    assert (
        pair["masked"]["request"] >= 3 and pair["masked"]["primary"] == 1 and pair["masked"]["candidate"] == 1
    )
