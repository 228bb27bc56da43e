"""On every API surface, mirrored or not, the user gets the primary's answer byte for byte: each choice,
tool calls, reasoning, refusals and the Responses API's typed events are passed through untouched while
their copy is recorded. Read with the OpenAI SDK's raw and streaming responses, compared with the bytes
the primary sent."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from shadowtap.testing.pairs import WEATHER_TOOL
from shadowtap.testing.server import SimulatedLLM
from shadowtap.testing.serving import serve_in_thread
from shadowtap.testing.upstreams import Reply

ASK = [{"role": "user", "content": "What's the weather in Paris? I'm jane.doe@example.com."}]
ARGS = '{"city": "Paris", "unit": "celsius"}'
RESPONSES_TOOL = {"type": "function", **WEATHER_TOOL["function"]}  # the Responses API's flat shape


class AnswerLog:
    """Wraps an upstream app and keeps the body of every answer it sends, exactly as sent."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks: list[bytes] = []

        async def keep(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, keep)
        finally:
            self.bodies.append(b"".join(chunks))


@pytest.fixture
def logged() -> Iterator[tuple[SimulatedLLM, AnswerLog, str]]:
    sim = SimulatedLLM("primary-model")
    log = AnswerLog(sim.app)
    with serve_in_thread(log) as handle:
        yield sim, log, handle.base_url


@pytest.fixture(params=["mirrored", "not mirrored"])
def client(request, proxy_factory, logged, candidate) -> Iterator[openai.OpenAI]:
    rate = 1.0 if request.param == "mirrored" else 0.0
    proxy = proxy_factory(
        logged[2], candidate.base_url, candidate={"model": "candidate-model"}, shadow={"sample_rate": rate}
    )
    sdk = openai.OpenAI(base_url=proxy.base_url, api_key="sk-user", max_retries=0)
    yield sdk
    sdk.close()


def plain(call: Callable[..., Any], **kwargs: Any) -> bytes:
    return bytes(call.with_raw_response.create(**kwargs).http_response.content)  # type: ignore[attr-defined]


def streamed(call: Callable[..., Any], **kwargs: Any) -> bytes:
    with call.with_streaming_response.create(stream=True, **kwargs) as response:  # type: ignore[attr-defined]
        return b"".join(response.iter_bytes())


SURFACES: dict[str, tuple[Reply, str, Callable[[openai.OpenAI], bytes]]] = {
    "chat, three choices": (
        Reply(choices=["Sunny.", "Rainy.", "Cloudy."]),
        "chat",
        lambda c: plain(c.chat.completions, model="m", messages=ASK, n=3),
    ),
    "chat, three choices, streamed": (
        Reply(choices=["Sunny.", "Rainy.", "Cloudy."]),
        "chat",
        lambda c: streamed(c.chat.completions, model="m", messages=ASK, n=3),
    ),
    "chat, a tool call": (
        Reply(text="", tool_calls=[("get_weather", ARGS)]),
        "chat",
        lambda c: plain(c.chat.completions, model="m", messages=ASK, tools=[WEATHER_TOOL]),
    ),
    "chat, a tool call, streamed": (
        Reply(text="", tool_calls=[("get_weather", ARGS)]),
        "chat",
        lambda c: streamed(c.chat.completions, model="m", messages=ASK, tools=[WEATHER_TOOL]),
    ),
    "chat, reasoning, streamed": (
        Reply(text="Sunny.", reasoning="Paris in May is usually mild."),
        "chat",
        lambda c: streamed(c.chat.completions, model="m", messages=ASK),
    ),
    "chat, a refusal": (
        Reply(refusal="I can't help with that."),
        "chat",
        lambda c: plain(c.chat.completions, model="m", messages=ASK),
    ),
    "completions, a prompt array": (
        Reply(choices=["One.", "Two."]),
        "completions",
        lambda c: plain(c.completions, model="m", prompt=["Say one", "Say two"]),
    ),
    "completions, streamed": (
        Reply(text="One two three."),
        "completions",
        lambda c: streamed(c.completions, model="m", prompt="Count"),
    ),
    "responses, reasoning and a tool call": (
        Reply(text="", tool_calls=[("get_weather", ARGS)], reasoning="Look it up."),
        "responses",
        lambda c: plain(c.responses, model="m", input="Weather in Paris?", tools=[RESPONSES_TOOL]),
    ),
    "responses, streamed": (
        Reply(text="Sunny in Paris.", reasoning="Easy."),
        "responses",
        lambda c: streamed(c.responses, model="m", input="Weather in Paris?"),
    ),
    "responses, a refusal, streamed": (
        Reply(refusal="I can't help with that."),
        "responses",
        lambda c: streamed(c.responses, model="m", input="Weather in Paris?"),
    ),
}


@pytest.mark.parametrize("surface", list(SURFACES))
def test_the_user_gets_the_primarys_answer_byte_for_byte(client, logged, surface):
    sim, log, _ = logged
    reply, _, send = SURFACES[surface]
    sim.policy = lambda route, body: reply

    received = send(client)

    [sent] = log.bodies
    assert received == sent
    assert len(received) > 0
