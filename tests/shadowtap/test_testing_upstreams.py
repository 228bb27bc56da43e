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
import openai
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from shadowtap.testing.upstreams import (
    Reply,
    ServerHandle,
    SimulatedLLM,
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


def stream_raw(handle: ServerHandle, body: dict[str, Any]) -> tuple[list[bytes], Exception | None]:
    """The raw pieces of a streamed answer as httpx reads them, and the error that ended it, if any."""
    pieces: list[bytes] = []
    try:
        with httpx.stream("POST", handle.base_url + "/chat/completions", json=body, timeout=10) as response:
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
