"""The simulated upstreams as the real OpenAI SDK and httpx see them: answers, streams, errors and faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from shadowtap.testing.policies import COUNTED_CHARS, count_tokens
from shadowtap.testing.upstreams import (
    Reply,
    ServerHandle,
    SimulatedLLM,
    ToolCall,
    default_policy,
    fixed,
    keyword_policy,
    openai_error,
    sequence,
    serve_in_thread,
    split_chunks,
)
from tests.helpers import wait_for

CHAT = [{"role": "user", "content": "How do I reset my router?"}]
LONG = "Unplug the router, wait ten seconds, plug it back in and wait for the lights to settle."


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[SimulatedLLM, ServerHandle]]:
    sim = SimulatedLLM("sim-model")
    with serve_in_thread(sim.app) as handle:
        yield sim, handle


@pytest.fixture
def sim(served: tuple[SimulatedLLM, ServerHandle]) -> SimulatedLLM:
    sim, _ = served
    sim.policy = default_policy
    sim.received.clear()
    return sim


@pytest.fixture
def handle(served: tuple[SimulatedLLM, ServerHandle], sim: SimulatedLLM) -> ServerHandle:
    return served[1]


@pytest.fixture(scope="module")
def client(served: tuple[SimulatedLLM, ServerHandle]) -> Iterator[openai.OpenAI]:
    base_url = served[1].base_url
    with openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, timeout=10) as client:
        yield client


def stream_raw(
    handle: ServerHandle, body: dict[str, Any], route: str = "/chat/completions"
) -> tuple[list[bytes], Exception | None]:
    """The raw pieces of a streamed answer as httpx reads them, and the error that ended it, if any."""
    pieces: list[bytes] = []
    try:
        with httpx.stream("POST", handle.base_url + route, json=body, timeout=10) as response:
            for piece in response.iter_raw():
                pieces.append(piece)
    except httpx.HTTPError as exc:
        return pieces, exc
    return pieces, None


def test_chat_completion_parses_with_the_sdk(sim, client):
    answer = client.chat.completions.create(model="prod-model", messages=CHAT)

    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    assert answer.model == "prod-model"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == "Answer to: How do I reset my router?"
    assert answer.choices[0].finish_reason == "stop"
    usage = answer.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_text_completion_parses_with_the_sdk(sim, client):
    sim.policy = fixed(Reply(text="Paris.", finish_reason="length"))

    answer = client.completions.create(model="text-model", prompt="The capital of France is")

    assert answer.object == "text_completion"
    assert answer.choices[0].text == "Paris." and answer.choices[0].finish_reason == "length"
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_streamed_chat_assembles_to_the_full_text_and_ends_with_usage(sim, client):
    sim.policy = fixed(Reply(text=LONG))

    chunks = list(
        client.chat.completions.create(
            model="m", messages=CHAT, stream=True, stream_options={"include_usage": True}
        )
    )

    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(content) == LONG
    assert len(content) >= 4  # a few words a chunk, not the whole text at once
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_streamed_text_completion_assembles_and_ends_with_done(sim, handle, client):
    sim.policy = fixed(Reply(text=LONG))

    chunks = list(client.completions.create(model="m", prompt="Reset?", stream=True))
    pieces, error = stream_raw(handle, {"model": "m", "messages": CHAT, "stream": True})

    assert "".join(c.choices[0].text for c in chunks) == LONG
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert error is None and b"".join(pieces).endswith(b"data: [DONE]\n\n")


def test_stream_pieces_join_back_to_the_exact_text():
    for text in ["", "one", "  leading and  double  spaces ", "line one\nline two\n\nend", LONG]:
        assert "".join(split_chunks(text)) == text


def test_rate_limit_reply_raises_rate_limit_error_with_its_message(sim, client):
    body = openai_error("Slow down (simulated).", "requests", "rate_limit_exceeded")
    sim.policy = fixed(Reply(status=429, error_body=body, headers={"retry-after": "1"}))

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=CHAT)

    assert "Slow down (simulated)." in caught.value.message
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"] == "1"


def test_server_error_reply_has_the_openai_error_shape(sim, client):
    sim.policy = fixed(Reply(status=503))

    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="m", messages=CHAT, stream=True)

    assert caught.value.status_code == 503 and caught.value.type == "server_error"


@pytest.mark.parametrize("stream", [False, True])
def test_garbage_makes_the_sdk_raise(sim, client, stream):
    sim.policy = fixed(Reply(fault="garbage"))

    with pytest.raises(Exception):  # noqa: B017 - any failure to parse will do
        result = client.chat.completions.create(model="m", messages=CHAT, stream=stream)
        if stream:
            list(result)


def test_connection_dropped_midstream_is_seen_by_httpx(sim, handle):
    sim.policy = fixed(Reply(text=LONG, fault="close_midstream"))

    pieces, error = stream_raw(handle, {"model": "m", "messages": CHAT, "stream": True})

    assert isinstance(error, httpx.RemoteProtocolError | httpx.ReadError)
    assert b"".join(pieces).count(b"data: ") >= 2  # some chunks arrived before the drop
    assert b"[DONE]" not in b"".join(pieces)


def test_connection_dropped_mid_body_breaks_a_plain_answer_too(sim, handle):
    sim.policy = fixed(Reply(text=LONG, fault="close_midstream"))

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.post(handle.base_url + "/chat/completions", json={"model": "m", "messages": CHAT})


def test_reset_closes_the_connection_before_any_response(sim, client):
    sim.policy = fixed(Reply(fault="reset"))

    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=CHAT)


def test_truncated_stream_closes_cleanly_without_finish_reason_or_done(sim, handle):
    sim.policy = fixed(Reply(text=LONG, fault="truncate"))

    pieces, error = stream_raw(handle, {"model": "m", "messages": CHAT, "stream": True})

    raw = b"".join(pieces)
    assert error is None
    assert b'"content":"Unplug' in raw
    assert b"[DONE]" not in raw and b'"finish_reason":"stop"' not in raw


def test_hang_lasts_until_the_client_gives_up_and_the_server_stays_usable(sim, handle, client):
    sim.policy = fixed(Reply(fault="hang"))

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            handle.base_url + "/chat/completions",
            json={"model": "m", "messages": CHAT},
            timeout=httpx.Timeout(5, read=0.1),
        )

    # The hung handler ends with the client's connection, so nothing holds up the server's shutdown.
    wait_for(lambda: not handle.server.server_state.tasks, timeout=5, what="the hung request to end")
    sim.policy = default_policy
    assert client.chat.completions.create(model="m", messages=CHAT).choices[0].message.content


def test_received_records_every_request_with_its_headers(sim, client):
    client.chat.completions.create(model="m", messages=CHAT, extra_headers={"X-Segment": "billing"})

    [request] = sim.received
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.headers["x-segment"] == "billing"
    assert request.json["messages"] == CHAT
    assert json.loads(request.body) == request.json


def test_policy_can_be_swapped_at_runtime(sim, client):
    first = client.chat.completions.create(model="m", messages=CHAT).choices[0].message.content
    sim.policy = fixed(Reply(text="Swapped."))
    second = client.chat.completions.create(model="m", messages=CHAT).choices[0].message.content

    assert first.startswith("Answer to:") and second == "Swapped."


def test_keyword_and_sequence_policies(sim, client):
    def ask(text: str) -> str:
        messages = [{"role": "user", "content": text}]
        return client.chat.completions.create(model="m", messages=messages).choices[0].message.content

    sim.policy = keyword_policy({"REFUND": Reply(text="I can't help with that.")})
    assert ask("I want a refund") == "I can't help with that."
    assert ask("Hello there") == "Answer to: Hello there"

    sim.policy = sequence(Reply(status=503), Reply(text="Recovered."))
    with pytest.raises(openai.InternalServerError):
        ask("first try")
    assert ask("second try") == ask("third try") == "Recovered."


def test_ttft_delays_the_first_chunk(sim, client):
    ttft = 0.2
    sim.policy = fixed(Reply(text=LONG, ttft_s=ttft))

    started = time.perf_counter()
    stream = client.chat.completions.create(model="m", messages=CHAT, stream=True)
    first_content = next(c for c in stream if c.choices and c.choices[0].delta.content)
    waited = time.perf_counter() - started
    stream.close()

    assert first_content.choices[0].delta.content
    assert waited >= 0.9 * ttft


def test_ttft_delays_a_plain_answer(sim, client):
    ttft = 0.1
    sim.policy = fixed(Reply(text="Late.", ttft_s=ttft))

    started = time.perf_counter()
    client.chat.completions.create(model="m", messages=CHAT)

    assert time.perf_counter() - started >= 0.9 * ttft


async def test_async_sdk_streams_concurrently(sim, handle):
    sim.policy = fixed(Reply(text=LONG, token_delay_s=0.005))

    async with openai.AsyncOpenAI(base_url=handle.base_url, api_key="sk-test", max_retries=0) as client:

        async def one() -> str:
            stream = await client.chat.completions.create(model="m", messages=CHAT, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        texts = await asyncio.gather(*(one() for _ in range(20)))

    assert texts == [LONG] * 20
    assert len(sim.received) == 20


def test_json_response_formats_get_json_from_the_default_policy(sim, client):
    plain = client.chat.completions.create(model="m", messages=CHAT, response_format={"type": "json_object"})
    schema = {
        "type": "object",
        "properties": {
            "order_id": {"type": "integer", "minimum": 1},
            "status": {"type": "string", "enum": ["shipped", "pending"]},
            "items": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "note": {"type": "string"},
        },
        "required": ["order_id", "status", "items"],
    }
    shaped = client.chat.completions.create(
        model="m",
        messages=CHAT,
        response_format={"type": "json_schema", "json_schema": {"name": "order", "schema": schema}},
    )

    assert json.loads(plain.choices[0].message.content) == {"answer": "Answer to: How do I reset my router?"}
    assert json.loads(shaped.choices[0].message.content) == {
        "order_id": 1,
        "status": "shipped",
        "items": ["Answer to: How do I reset my router?"],
    }


def test_invalid_json_and_unknown_routes_get_openai_errors(sim, handle):
    bad = httpx.post(
        handle.base_url + "/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    missing = httpx.get(handle.base_url + "/assistants")

    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert missing.status_code == 404 and "/v1/assistants" in missing.json()["error"]["message"]
    assert [r.path for r in sim.received] == ["/v1/chat/completions", "/v1/assistants"]
    assert sim.received[0].json is None and sim.received[0].body == b"{not json"


def test_models_and_embeddings(sim, client):
    assert [m.id for m in client.models.list()] == ["sim-model"]

    first = client.embeddings.create(model="e", input=["refund policy", "router reset"])
    again = client.embeddings.create(model="e", input="refund policy", encoding_format="float")

    a, b = first.data[0].embedding, first.data[1].embedding
    assert len(a) == len(b) == 16 and a != b
    assert again.data[0].embedding == pytest.approx(a, abs=1e-6)
    assert sum(v * v for v in a) == pytest.approx(1.0, abs=1e-4)


def test_a_failing_policy_answers_a_readable_500(sim, client):
    def broken(route: str, body: dict[str, Any]) -> Reply:
        raise KeyError("no script for this")

    sim.policy = broken

    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="m", messages=CHAT)
    assert "no script for this" in caught.value.message


def test_serve_in_thread_runs_an_app_with_its_lifespan_and_stops_it():
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        events.append("startup")
        yield
        events.append("shutdown")

    async def ping(request):
        return PlainTextResponse("pong")

    app = Starlette(routes=[Route("/ping", ping)], lifespan=lifespan)
    with serve_in_thread(app) as handle:
        assert handle.base_url == handle.url + "/v1" and handle.url.endswith(f":{handle.port}")
        assert httpx.get(handle.url + "/ping").text == "pong"
        assert events == ["startup"]

    assert events == ["startup", "shutdown"]
    assert not handle.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(handle.url + "/ping")


def test_a_failing_startup_is_reported():
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        raise RuntimeError("no database")
        yield

    with pytest.raises(RuntimeError, match="did not start"):
        serve_in_thread(Starlette(lifespan=lifespan))


def test_command_line_serves_a_model_labelled_simulated():
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shadowtap.testing.upstreams",
            "--port",
            "0",
            "--name",
            "cli-sim",
            "--profile",
            "refuser",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        banner = process.stdout.readline()
        assert "SIMULATED" in banner and "cli-sim" in banner
        base_url = banner.split()[-1]
        deadline = time.monotonic() + 10
        while True:
            try:
                models = httpx.get(base_url + "/models", timeout=1)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "the simulated server did not come up"
                time.sleep(0.02)
        client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)
        answer = client.chat.completions.create(model="cli-sim", messages=CHAT)
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()
    assert models.json()["data"][0]["id"] == "cli-sim"
    assert "can't help" in answer.choices[0].message.content


def test_the_testing_package_exports_its_public_api():
    import shadowtap.testing

    assert set(shadowtap.testing.__all__) == {
        "SimulatedLLM",
        "Reply",
        "Policy",
        "default_policy",
        "serve_in_thread",
        "ServerHandle",
        "make_pair",
        "make_side",
    }
    assert all(hasattr(shadowtap.testing, name) for name in shadowtap.testing.__all__)


# ------------------------------------------------------------------------------------ tool calls

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
PARIS = json.dumps({"city": "Paris", "days": 3})


def test_a_tool_call_parses_with_the_sdk(sim, client):
    sim.policy = fixed(Reply(text="", tool_calls=[("get_weather", PARIS)]))

    answer = client.chat.completions.create(model="m", messages=CHAT, tools=TOOLS)

    choice = answer.choices[0]
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather" and call.function.arguments == PARIS
    assert choice.message.content is None and choice.finish_reason == "tool_calls"


def test_streamed_tool_calls_accumulate_by_index(sim, handle, client):
    second = ToolCall("get_weather", json.dumps({"city": "Lyon", "days": 1}), id="call_fixed")
    sim.policy = fixed(Reply(text="", tool_calls=[("get_weather", PARIS), second]))
    body = {"model": "m", "messages": CHAT, "tools": TOOLS, "stream": True}

    chunks = list(client.chat.completions.create(**body))
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            if delta.id is not None:  # a call's first delta: id, type, name and empty arguments
                assert delta.type == "function" and delta.function.arguments == ""
                calls[delta.index] = {"id": delta.id, "name": delta.function.name, "arguments": ""}
            else:  # later deltas: only the index and a piece of the arguments
                assert delta.function.name is None and delta.type is None
                calls[delta.index]["arguments"] += delta.function.arguments
    with client.chat.completions.stream(model="m", messages=CHAT, tools=TOOLS) as stream:
        final = stream.get_final_completion()

    assert [c["arguments"] for c in calls.values()] == [PARIS, second.arguments]
    assert calls[0]["id"].startswith("call_") and calls[1]["id"] == "call_fixed"
    assert sum(len(c.choices[0].delta.tool_calls or []) for c in chunks) > 4  # arguments come in pieces
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert [c.function.arguments for c in final.choices[0].message.tool_calls] == [PARIS, second.arguments]
    assert final.choices[0].finish_reason == "tool_calls"


def test_a_named_tool_choice_finishes_with_stop_and_default_policy_fills_the_schema(sim, client):
    named = {"type": "function", "function": {"name": "get_weather"}}
    forced = client.chat.completions.create(model="m", messages=CHAT, tools=TOOLS, tool_choice=named)
    required = client.chat.completions.create(model="m", messages=CHAT, tools=TOOLS, tool_choice="required")
    free = client.chat.completions.create(model="m", messages=CHAT, tools=TOOLS)

    [call] = forced.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    assert forced.choices[0].finish_reason == "stop"  # OpenAI and vLLM: named tool choice → "stop"
    assert required.choices[0].finish_reason == "tool_calls"
    assert free.choices[0].message.tool_calls is None and free.choices[0].message.content


def test_a_truncated_tool_call_ends_with_partial_arguments_and_length(sim, client):
    sim.policy = fixed(Reply(text="", tool_calls=[("get_weather", PARIS)], fault="truncate"))

    answer = client.chat.completions.create(model="m", messages=CHAT, tools=TOOLS)

    arguments = answer.choices[0].message.tool_calls[0].function.arguments
    assert answer.choices[0].finish_reason == "length"
    assert arguments and PARIS.startswith(arguments) and arguments != PARIS


def test_a_scripted_tool_call_regression_breaks_the_schema_on_some_requests(sim, handle):
    """How a test scripts a candidate whose tool calls regress: refund questions get arguments that do
    not fit the schema (a string where an integer goes, a required field missing), the rest valid."""
    order = {
        "type": "object",
        "properties": {"order_id": {"type": "integer"}, "reason": {"type": "string"}},
        "required": ["order_id", "reason"],
    }
    tools = [{"type": "function", "function": {"name": "refund_order", "parameters": order}}]
    regressed = Reply(text="", tool_calls=[("refund_order", json.dumps({"order_id": "A-17"}))])
    sim.policy = keyword_policy({"refund": regressed})  # everything else: default_policy, which fits

    def arguments(question: str) -> Any:
        messages = [{"role": "user", "content": question}]
        with openai.OpenAI(base_url=handle.base_url, api_key="sk-test", max_retries=0) as client:
            answer = client.chat.completions.create(
                model="candidate", messages=messages, tools=tools, tool_choice="required"
            )
        return json.loads(answer.choices[0].message.tool_calls[0].function.arguments)

    jsonschema.validate(arguments("Where is my order?"), order)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(arguments("I want a refund for order 17"), order)


# ------------------------------------------------------------------------------------ n, reasoning, refusal


def test_n_choices_each_with_its_index_plain_and_streamed(sim, client):
    sim.policy = fixed(
        Reply(text="fallback", choices=["First answer here.", "Second one, longer than that.", "Third."])
    )

    plain = client.chat.completions.create(model="m", messages=CHAT, n=3)
    chunks = list(
        client.chat.completions.create(
            model="m", messages=CHAT, n=3, stream=True, stream_options={"include_usage": True}
        )
    )
    texts: dict[int, str] = {}
    finished: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    four = client.chat.completions.create(model="m", messages=CHAT, n=4)

    assert [(c.index, c.message.content) for c in plain.choices] == [
        (0, "First answer here."),
        (1, "Second one, longer than that."),
        (2, "Third."),
    ]
    assert texts == {0: "First answer here.", 1: "Second one, longer than that.", 2: "Third."}
    assert finished == {0: "stop", 1: "stop", 2: "stop"}
    assert [c.choices[0].index for c in chunks[:3]] == [0, 1, 2]  # a role chunk for each choice first
    assert {c.choices[0].index for c in chunks[3:6]} == {0, 1, 2}  # then the choices interleave
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert [c.message.content for c in four.choices][3] == "fallback"


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content", "both"])
def test_reasoning_goes_out_where_vllm_puts_it(sim, client, field):
    thought = "The user wants router steps. Keep it short."
    sim.policy = fixed(Reply(text="Unplug it.", reasoning=thought, reasoning_field=field))
    names = ["reasoning", "reasoning_content"] if field == "both" else [field]

    plain = client.chat.completions.create(model="m", messages=CHAT)
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, stream=True))
    streamed = {
        name: "".join(getattr(c.choices[0].delta, name, None) or "" for c in chunks) for name in names
    }
    first_reasoning = next(i for i, c in enumerate(chunks) if getattr(c.choices[0].delta, names[0], None))
    first_content = next(i for i, c in enumerate(chunks) if c.choices[0].delta.content)

    message = plain.choices[0].message
    assert message.content == "Unplug it."
    assert {name: message.model_extra[name] for name in names} == {name: thought for name in names}
    assert getattr(message, names[0]) == thought  # SDK models keep extra fields as attributes
    assert streamed == {name: thought for name in names}
    assert first_reasoning < first_content  # reasoning streams before the answer
    assert plain.usage.completion_tokens_details.reasoning_tokens > 0


def test_a_refusal_has_null_content_plain_and_streamed(sim, handle, client):
    refusal = "I'm sorry, but I can't assist with that request."
    sim.policy = fixed(Reply(refusal=refusal))
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}

    plain = client.chat.completions.create(model="m", messages=CHAT, response_format=response_format)
    chunks = list(client.chat.completions.create(model="m", messages=CHAT, stream=True))
    with client.chat.completions.stream(model="m", messages=CHAT) as stream:
        final = stream.get_final_completion()

    assert plain.choices[0].message.refusal == refusal and plain.choices[0].message.content is None
    first = chunks[0].choices[0].delta
    assert (first.role, first.content, first.refusal) == ("assistant", None, "")  # as OpenAI streams it
    assert "".join(c.choices[0].delta.refusal or "" for c in chunks) == refusal
    assert all(c.choices[0].delta.content is None for c in chunks)
    assert final.choices[0].message.refusal == refusal and final.choices[0].message.content is None


# ------------------------------------------------------------------------------------ completions


def test_a_prompt_array_gets_a_choice_per_prompt_and_sample(sim, client):
    prompts = ["The capital of France is", "The capital of Italy is"]

    plain = client.completions.create(model="m", prompt=prompts, n=2)
    chunks = list(client.completions.create(model="m", prompt=prompts, stream=True))
    streamed: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + choice.text

    assert [(c.index, c.text) for c in plain.choices] == [
        (0, "Answer to: The capital of France is"),
        (1, "Answer to: The capital of France is"),
        (2, "Answer to: The capital of Italy is"),
        (3, "Answer to: The capital of Italy is"),
    ]
    assert streamed == {0: "Answer to: The capital of France is", 1: "Answer to: The capital of Italy is"}
    assert [c.choices[0].finish_reason for c in chunks[-2:]] == ["stop", "stop"]


def test_a_scripted_prompt_array_answers_each_choice_its_own(sim, client):
    sim.policy = fixed(Reply(choices=["Paris.", "Rome."], finish_reason="length"))

    answer = client.completions.create(model="m", prompt=["France?", "Italy?"])
    tokens = client.completions.create(model="m", prompt=[1, 2, 3])  # token ids: one prompt

    assert [(c.index, c.text, c.finish_reason) for c in answer.choices] == [
        (0, "Paris.", "length"),
        (1, "Rome.", "length"),
    ]
    assert [c.text for c in tokens.choices] == ["Paris."]


# ------------------------------------------------------------------------------------ Responses API


def test_a_response_parses_with_the_sdk(sim, client):
    answer = client.responses.create(
        model="resp-model", input="How do I reset my router?", instructions="Be brief."
    )

    assert answer.object == "response" and answer.id.startswith("resp_")
    assert answer.status == "completed" and answer.model == "resp-model"
    assert answer.output_text == "Answer to: How do I reset my router?"
    [message] = answer.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert answer.instructions == "Be brief."
    usage = answer.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_a_response_answers_the_last_user_item_and_asks_for_json(sim, client):
    items = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi, how can I help?"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Track my parcel"}]},
    ]
    schema = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
    text_format = {"format": {"type": "json_schema", "name": "parcel", "schema": schema}}

    plain = client.responses.create(model="m", input=items)
    shaped = client.responses.create(model="m", input=items, text=text_format)

    assert plain.output_text == "Answer to: Track my parcel"
    assert json.loads(shaped.output_text) == {"status": "Answer to: Track my parcel"}
    assert shaped.text.format.type == "json_schema"  # the request's settings are echoed


def test_a_response_with_reasoning_refusal_and_calls_has_their_items(sim, client):
    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    sim.policy = fixed(Reply(text="", reasoning="Look it up.", tool_calls=[("get_weather", PARIS)]))
    called = client.responses.create(model="m", input="Weather in Paris?", tools=tools)
    sim.policy = fixed(Reply(refusal="I can't help with that."))
    refused = client.responses.create(model="m", input="Something bad")

    reasoning, call = called.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].type == "summary_text"
    assert reasoning.summary[0].text == "Look it up."
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == PARIS
    assert call.call_id.startswith("call_") and call.id.startswith("fc_") and call.status == "completed"
    assert called.output_text == "" and called.usage.output_tokens_details.reasoning_tokens > 0
    [part] = refused.output[0].content
    assert part.type == "refusal" and part.refusal == "I can't help with that." and refused.output_text == ""


def test_a_streamed_response_has_the_typed_events_and_the_whole_response_at_the_end(sim, handle, client):
    sim.policy = fixed(Reply(text=LONG, reasoning="Routers need a power cycle."))
    body = {"model": "m", "input": "How do I reset my router?", "stream": True}

    with client.responses.stream(model="m", input="How do I reset my router?") as stream:
        events = list(stream)
        final = stream.get_final_response()
    pieces, error = stream_raw(handle, body, "/responses")
    raw = b"".join(pieces).decode()

    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert types.index("response.reasoning_summary_part.added") < types.index(
        "response.reasoning_summary_text.delta"
    )
    assert types.count("response.output_item.added") == types.count("response.output_item.done") == 2
    for kind in ["content_part.added", "output_text.delta", "output_text.done", "content_part.done"]:
        assert f"response.{kind}" in types
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == LONG and len(deltas) >= 4
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert final.output_text == LONG and final.status == "completed"
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert error is None and "event: response.created\ndata: {" in raw and "[DONE]" not in raw


def test_a_streamed_response_calls_functions_and_refuses(sim, client):
    sim.policy = fixed(Reply(text="", tool_calls=[("get_weather", PARIS), ("get_weather", "{}")]))
    with client.responses.stream(model="m", input="Weather?") as stream:
        called = list(stream)
        final = stream.get_final_response()
    sim.policy = fixed(Reply(refusal="I can't help with that."))
    refused = list(client.responses.create(model="m", input="Something bad", stream=True))

    done = [e for e in called if e.type == "response.function_call_arguments.done"]
    assert [(e.name, e.arguments) for e in done] == [("get_weather", PARIS), ("get_weather", "{}")]
    deltas = "".join(e.delta for e in called if e.type == "response.function_call_arguments.delta")
    assert deltas == PARIS + "{}"
    added = [e.item for e in called if e.type == "response.output_item.added"]
    assert [(i.type, i.status, i.arguments) for i in added] == [("function_call", "in_progress", "")] * 2
    assert [item.arguments for item in final.output] == [PARIS, "{}"]
    assert (
        "".join(e.delta for e in refused if e.type == "response.refusal.delta") == "I can't help with that."
    )
    assert [e.refusal for e in refused if e.type == "response.refusal.done"] == ["I can't help with that."]
    assert refused[-1].response.output[0].content[0].type == "refusal"


def test_a_streamed_response_can_carry_reasoning_as_vllm_does(sim, client):
    sim.policy = fixed(Reply(text="Done.", reasoning="Think first.", reasoning_item="text"))

    events = list(client.responses.create(model="m", input="Go", stream=True))

    types = [e.type for e in events]
    assert "response.reasoning_summary_text.delta" not in types
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == "Think first."
    reasoning = events[-1].response.output[0]
    assert reasoning.summary == [] and reasoning.content[0].text == "Think first."


def test_faults_apply_to_the_responses_api(sim, handle, client):
    body = {"model": "m", "input": "Reset?", "stream": True}
    sim.policy = fixed(Reply(text=LONG, fault="truncate"))
    truncated, truncated_error = stream_raw(handle, body, "/responses")
    cut_short = client.responses.create(model="m", input="Reset?")
    sim.policy = fixed(Reply(text=LONG, fault="close_midstream"))
    dropped, dropped_error = stream_raw(handle, body, "/responses")
    sim.policy = fixed(Reply(text=LONG, finish_reason="length"))
    incomplete = list(client.responses.create(model="m", input="Reset?", stream=True))
    sim.policy = fixed(Reply(status=429))

    assert truncated_error is None and b"response.output_text.delta" in b"".join(truncated)
    assert b"response.completed" not in b"".join(truncated)
    assert cut_short.status == "incomplete" and cut_short.incomplete_details.reason == "max_output_tokens"
    assert cut_short.output_text and LONG.startswith(cut_short.output_text) and cut_short.output_text != LONG
    assert isinstance(dropped_error, httpx.RemoteProtocolError | httpx.ReadError)
    assert b"response.completed" not in b"".join(dropped)
    assert incomplete[-1].type == "response.incomplete" and incomplete[-1].response.status == "incomplete"
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="m", input="Reset?")
    sim.policy = fixed(Reply(fault="garbage"))
    with pytest.raises(Exception):  # noqa: B017 - any failure to parse will do
        list(client.responses.create(model="m", input="Reset?", stream=True))


def test_a_long_prompts_usage_is_estimated_from_its_head_within_a_few_percent():
    short = "Where is my order? " * 10
    assert count_tokens(short) == 52  # 40 words, counted
    prose = "The customer asked about the refund policy for an order placed last spring. " * 20_000
    assert len(prose) > 10 * COUNTED_CHARS
    exact = len(prose.split()) * 1.3
    assert abs(count_tokens(prose) - exact) / exact < 0.02
