"""The pair record v2: every choice, tool call, refusal and reasoning of an answer, from all three APIs.

The wire formats below follow the OpenAI API reference as the official SDK encodes it (openai-python
`types/chat/chat_completion.py`, `chat_completion_chunk.py`, `types/completion.py`, `types/responses/`)
and vLLM's OpenAI-compatible server (`vllm/entrypoints/openai/chat_completion/protocol.py`,
`vllm/entrypoints/generate/base/protocol.py`, `docs/features/reasoning_outputs.md`). Each test names
the part of the format it relies on. The in-process tests are `unit`; the last ones read the answers
of a simulated upstream served on loopback and compare the record with what the OpenAI SDK reads.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from shadowtap.proxy.record import SideAssembler, SideResult, build_pair
from shadowtap.records import (
    PAIR_SCHEMA,
    PairRecord,
    SideRecord,
    api_of_route,
    pair_api,
    side_outputs,
    validate_pair,
)
from shadowtap.testing.upstreams import (
    Reply,
    ServerHandle,
    SimulatedLLM,
    default_policy,
    fixed,
    serve_in_thread,
)

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
RESPONSES = "/v1/responses"
STARTED = 100.0


# ------------------------------------------------------------------------------------------ helpers


def sse(*events: dict[str, Any] | str) -> list[bytes]:
    """Chat and completions streams: one `data:` line per event, one network chunk each."""
    return [
        f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n".encode() for event in events
    ]


def typed_sse(*events: dict[str, Any]) -> list[bytes]:
    """Responses API streams: each event named on an `event:` line, its `type` repeated in the data."""
    return [f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode() for event in events]


def assemble(chunks: list[bytes], route: str, *, streaming: bool, max_bytes: int | None = None) -> SideResult:
    """Feed the chunks 0.1 s apart after the request went out; the answer ends 0.1 s after the last."""
    extra = {} if max_bytes is None else {"max_bytes": max_bytes}
    assembler = SideAssembler(streaming=streaming, started=STARTED, **extra)
    now = STARTED
    for chunk in chunks:
        now += 0.1
        assembler.feed(chunk, now)
    return assembler.finish(SideResult(status=200), now + 0.1, route)


def plain(doc: dict[str, Any], route: str) -> SideResult:
    return assemble([json.dumps(doc).encode()], route, streaming=False)


def chunk(*choices: dict[str, Any], usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `chat.completion.chunk`; `usage` is null on every chunk but the last (stream_options.include_usage)."""
    return {
        "id": "chatcmpl-42",
        "object": "chat.completion.chunk",
        "model": "served-model",
        "choices": list(choices),
        "usage": usage,
    }


def delta(index: int = 0, finish: str | None = None, **piece: Any) -> dict[str, Any]:
    return {"index": index, "delta": piece, "finish_reason": finish}


def call_delta(
    index: int, *, arguments: str, call_id: str | None = None, name: str | None = None
) -> dict[str, Any]:
    """A tool-call delta: `id`, `type` and `function.name` only in a call's first delta, then arguments."""
    piece: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        piece |= {"id": call_id, "type": "function"}
        piece["function"]["name"] = name
    return piece


def record(primary: SideResult, candidate: SideResult, route: str = CHAT, **extra: Any) -> PairRecord:
    return build_pair(
        pair_id="p1",
        ts="2026-01-01T00:00:00.000Z",
        route=route,
        stream=False,
        request={"model": "m", "messages": [{"role": "user", "content": "Weather in Lisbon?"}]},
        tags={"route": route, "segment": "none", "length_bucket": "0-500"},
        primary=primary,
        candidate=candidate,
        **extra,
    )


def output(side: SideResult, index: int = 0) -> dict[str, Any]:
    [found] = [o for o in side.outputs if o["index"] == index]
    return dict(found)


# ------------------------------------------------------------------------------- chat, plain answers

WEATHER_CALLS = [
    {
        "id": "call_lisbon",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Lisbon", "unit": "c"}'},
    },
    {
        "id": "call_porto",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Porto"}'},
    },
]


def chat_completion(*choices: dict[str, Any]) -> dict[str, Any]:
    """A `chat.completion` object (OpenAI API reference, "The chat completion object")."""
    return {
        "id": "chatcmpl-42",
        "object": "chat.completion",
        "model": "served-model",
        "choices": list(choices),
        "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
    }


def message(index: int = 0, finish: str = "stop", **fields: Any) -> dict[str, Any]:
    return {"index": index, "message": {"role": "assistant", **fields}, "finish_reason": finish}


@pytest.mark.unit
def test_a_plain_chat_answer_with_n_choices_keeps_each_and_its_response_id_and_usage():
    doc = chat_completion(
        message(0, content="Sunny."),
        message(1, content="Warm and sunny.", finish="length"),
        message(2, content="22C."),
    )
    side = plain(doc, CHAT)
    assert side.error is None
    assert side.response_id == "chatcmpl-42"
    assert side.usage == {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}
    assert [(o["index"], o["text"], o["finish_reason"]) for o in side.outputs] == [
        (0, "Sunny.", "stop"),
        (1, "Warm and sunny.", "length"),
        (2, "22C.", "stop"),
    ]
    assert (side.text, side.finish_reason) == ("Sunny.", "stop")  # output 0, for v1 readers


@pytest.mark.unit
def test_a_plain_chat_answer_with_two_tool_calls_keeps_both_with_their_arguments_as_sent():
    # message.tool_calls[]: {id, type: "function", function: {name, arguments (a JSON string)}}
    side = plain(chat_completion(message(content=None, tool_calls=WEATHER_CALLS, finish="tool_calls")), CHAT)
    assert side.outputs == [
        {
            "index": 0,
            "text": "",
            "tool_calls": [
                {"id": "call_lisbon", "name": "get_weather", "arguments": '{"city": "Lisbon", "unit": "c"}'},
                {"id": "call_porto", "name": "get_weather", "arguments": '{"city":"Porto"}'},
            ],
            "refusal": None,
            "reasoning": None,
            "finish_reason": "tool_calls",
        }
    ]


@pytest.mark.unit
def test_a_plain_chat_refusal_is_its_own_field_not_the_text():
    # Structured outputs: message.refusal carries the refusal and content is null.
    side = plain(chat_completion(message(content=None, refusal="I can't help with that.")), CHAT)
    assert output(side)["refusal"] == "I can't help with that."
    assert output(side)["text"] == ""


@pytest.mark.unit
@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_a_plain_chat_answer_keeps_vllms_reasoning_under_either_name(field: str):
    # vLLM's reasoning parsers put it in message.reasoning; before the rename, message.reasoning_content.
    side = plain(chat_completion(message(content="Take an umbrella.", **{field: "Rain is forecast."})), CHAT)
    assert output(side)["reasoning"] == "Rain is forecast."
    assert output(side)["text"] == "Take an umbrella."


@pytest.mark.unit
def test_a_vllm_message_that_sends_both_reasoning_names_is_not_recorded_twice():
    side = plain(
        chat_completion(message(content="Yes.", reasoning="Think.", reasoning_content="Think.")), CHAT
    )
    assert output(side)["reasoning"] == "Think."


# ------------------------------------------------------------------------------ chat, streamed answers


@pytest.mark.unit
def test_a_stream_of_three_interleaved_choices_keeps_them_apart():
    # n=3: every chunk names its choice by `index`; the last chunk has `choices: []` and the usage.
    events = sse(
        chunk(
            delta(0, role="assistant", content=""),
            delta(1, role="assistant", content=""),
            delta(2, role="assistant"),
        ),
        chunk(delta(1, content="Warm")),
        chunk(delta(0, content="Sun")),
        chunk(delta(2, content="22")),
        chunk(delta(0, content="ny.")),
        chunk(delta(1, content=" and sunny.")),
        chunk(delta(2, content="C.", finish="length")),
        chunk(delta(0, finish="stop"), delta(1, finish="stop")),
        chunk(usage={"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}),
        "[DONE]",
    )
    side = assemble(events, CHAT, streaming=True)
    assert side.error is None
    assert [(o["index"], o["text"], o["finish_reason"]) for o in side.outputs] == [
        (0, "Sunny.", "stop"),
        (1, "Warm and sunny.", "stop"),
        (2, "22C.", "length"),
    ]
    assert side.usage == {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
    assert side.response_id == "chatcmpl-42"
    assert (side.text, side.finish_reason) == ("Sunny.", "stop")


@pytest.mark.unit
def test_streamed_tool_call_arguments_are_joined_per_call_index():
    # tool_calls deltas carry `index` within the message's calls; id and name come in a call's first delta.
    events = sse(
        chunk(delta(role="assistant", content=None)),
        chunk(delta(tool_calls=[call_delta(0, arguments="", call_id="call_lisbon", name="get_weather")])),
        chunk(delta(tool_calls=[call_delta(0, arguments='{"city": ')])),
        chunk(delta(tool_calls=[call_delta(1, arguments="", call_id="call_porto", name="get_weather")])),
        chunk(delta(tool_calls=[call_delta(0, arguments='"Lisbon", "unit": "c"}')])),
        chunk(delta(tool_calls=[call_delta(1, arguments='{"city":'), call_delta(1, arguments='"Porto"}')])),
        chunk(delta(finish="tool_calls")),
        "[DONE]",
    )
    side = assemble(events, CHAT, streaming=True)
    assert side.error is None
    assert output(side)["tool_calls"] == [
        {"id": "call_lisbon", "name": "get_weather", "arguments": '{"city": "Lisbon", "unit": "c"}'},
        {"id": "call_porto", "name": "get_weather", "arguments": '{"city":"Porto"}'},
    ]
    assert output(side)["finish_reason"] == "tool_calls"


@pytest.mark.unit
def test_the_first_token_of_a_tool_call_only_stream_is_its_first_call_delta():
    events = sse(
        chunk(delta(role="assistant", content=None)),  # at 0.1 s: nothing generated yet
        chunk(delta(tool_calls=[call_delta(0, arguments="", call_id="call_1", name="get_weather")])),  # 0.2 s
        chunk(delta(tool_calls=[call_delta(0, arguments='{"city":"Lisbon"}')])),
        chunk(delta(finish="tool_calls")),
        "[DONE]",
    )
    side = assemble(events, CHAT, streaming=True)
    assert side.ttft_ms == pytest.approx(200.0)


@pytest.mark.unit
def test_a_stream_dripped_a_byte_at_a_time_times_its_first_token_when_that_event_is_whole():
    whole = b"".join(sse(chunk(delta(role="assistant")), chunk(delta(reasoning="Hm")), "[DONE]"))
    end = whole.index(b"\n", whole.index(b"Hm"))  # the reasoning event's line ends here
    assembler = SideAssembler(streaming=True, started=STARTED)
    for at in range(len(whole)):
        assembler.feed(whole[at : at + 1], STARTED + at / 1000)
    side = assembler.finish(SideResult(status=200), STARTED + 1, CHAT)
    assert side.ttft_ms == pytest.approx(end)
    assert output(side)["reasoning"] == "Hm"


@pytest.mark.unit
def test_a_streamed_refusal_is_joined_and_counts_as_the_first_token():
    # ChoiceDelta.refusal (openai-python chat_completion_chunk.py) streams in pieces like content.
    events = sse(
        chunk(delta(role="assistant", content="", refusal=None)),
        chunk(delta(refusal="I can't ")),
        chunk(delta(refusal="help with that.")),
        chunk(delta(finish="stop")),
        "[DONE]",
    )
    side = assemble(events, CHAT, streaming=True)
    assert output(side)["refusal"] == "I can't help with that."
    assert output(side)["text"] == ""
    assert side.ttft_ms == pytest.approx(200.0)


@pytest.mark.unit
@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_streamed_reasoning_is_joined_and_its_first_piece_is_the_first_token(field: str):
    # vLLM's DeltaMessage.reasoning (formerly reasoning_content), before the content deltas.
    events = sse(
        chunk(delta(role="assistant", content="")),
        chunk(delta(**{field: "Rain is "})),
        chunk(delta(**{field: "forecast."})),
        chunk(delta(content="Take an umbrella.")),
        chunk(delta(finish="stop")),
        "[DONE]",
    )
    side = assemble(events, CHAT, streaming=True)
    assert output(side)["reasoning"] == "Rain is forecast."
    assert output(side)["text"] == "Take an umbrella."
    assert side.ttft_ms == pytest.approx(200.0)


@pytest.mark.unit
def test_a_stream_cut_short_in_one_of_its_choices_is_truncated():
    events = sse(chunk(delta(0, content="Done.", finish="stop")), chunk(delta(1, content="Still go")))
    side = assemble(events, CHAT, streaming=True)
    assert side.error is not None and side.error["kind"] == "truncated_stream"
    assert [o["text"] for o in side.outputs] == ["Done.", "Still go"]


# --------------------------------------------------------------------------------------- completions


def completion_choice(index: int, text: str, finish: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}


@pytest.mark.unit
def test_a_plain_completion_of_a_prompt_array_keeps_each_prompts_choice():
    # A prompt array answers with one choice per prompt, `index` 0..n-1 (OpenAI completions reference).
    doc = {
        "id": "cmpl-7",
        "object": "text_completion",
        "model": "served-model",
        "choices": [completion_choice(1, " Porto.", "stop"), completion_choice(0, " Lisbon.", "length")],
        "usage": {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12},
    }
    side = plain(doc, COMPLETIONS)
    assert side.error is None
    assert side.response_id == "cmpl-7"
    assert [(o["index"], o["text"], o["finish_reason"]) for o in side.outputs] == [
        (0, " Lisbon.", "length"),
        (1, " Porto.", "stop"),
    ]
    assert side.outputs[0]["tool_calls"] == [] and side.outputs[0]["refusal"] is None
    assert side.text == " Lisbon."
    assert side.usage == {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12}


@pytest.mark.unit
def test_a_streamed_completion_of_a_prompt_array_keeps_each_prompts_text():
    def piece(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "cmpl-7",
            "object": "text_completion",
            "model": "m",
            "choices": [completion_choice(index, text, finish)],
        }

    events = sse(
        piece(0, " Lis"),
        piece(1, " Por"),
        piece(1, "to.", "stop"),
        piece(0, "bon.", "stop"),
        {
            "id": "cmpl-7",
            "object": "text_completion",
            "model": "m",
            "choices": [],
            "usage": {"total_tokens": 12},
        },
        "[DONE]",
    )
    side = assemble(events, COMPLETIONS, streaming=True)
    assert side.error is None
    assert [(o["index"], o["text"], o["finish_reason"]) for o in side.outputs] == [
        (0, " Lisbon.", "stop"),
        (1, " Porto.", "stop"),
    ]
    assert side.usage == {"total_tokens": 12}
    assert side.ttft_ms == pytest.approx(100.0)


# -------------------------------------------------------------------------------------- Responses API

USAGE = {"input_tokens": 20, "output_tokens": 15, "total_tokens": 35}


def response(status: str = "completed", *output: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A `response` object (openai-python types/responses/response.py)."""
    return {
        "id": "resp_9",
        "object": "response",
        "model": "served-model",
        "status": status,
        "error": None,
        "output": list(output),
        "usage": USAGE if status != "in_progress" else None,
        **extra,
    }


REASONING_ITEM = {
    "id": "rs_1",
    "type": "reasoning",
    "summary": [{"type": "summary_text", "text": "Checked the forecast."}],
}
MESSAGE_ITEM = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "status": "completed",
    "content": [
        {"type": "output_text", "text": "Take an umbrella", "annotations": []},
        {"type": "output_text", "text": " in Lisbon.", "annotations": []},
    ],
}
CALL_ITEM = {
    "id": "fc_1",
    "type": "function_call",
    "call_id": "call_lisbon",
    "name": "get_weather",
    "arguments": '{"city": "Lisbon"}',
    "status": "completed",
}


@pytest.mark.unit
def test_a_plain_responses_answer_is_one_output_assembled_from_its_items():
    side = plain(response("completed", REASONING_ITEM, MESSAGE_ITEM, CALL_ITEM), RESPONSES)
    assert side.error is None
    assert (side.response_id, side.model, side.usage) == ("resp_9", "served-model", USAGE)
    assert side.outputs == [
        {
            "index": 0,
            "text": "Take an umbrella in Lisbon.",
            "tool_calls": [{"id": "call_lisbon", "name": "get_weather", "arguments": '{"city": "Lisbon"}'}],
            "refusal": None,
            "reasoning": "Checked the forecast.",
            "finish_reason": "completed",  # the response's status
        }
    ]
    assert (side.text, side.finish_reason) == ("Take an umbrella in Lisbon.", "completed")


@pytest.mark.unit
def test_a_plain_responses_refusal_part_is_the_refusal():
    refused = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "refusal", "refusal": "I can't."}],
    }
    side = plain(response("completed", refused), RESPONSES)
    assert output(side)["refusal"] == "I can't."
    assert output(side)["text"] == ""


@pytest.mark.unit
def test_vllms_responses_reasoning_text_is_kept_when_there_is_no_summary():
    # vLLM's Responses server writes reasoning items with `summary: []` and `content: [reasoning_text]`.
    item = {
        "id": "rs_1",
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "Hmm."}],
    }
    side = plain(response("completed", item, MESSAGE_ITEM), RESPONSES)
    assert output(side)["reasoning"] == "Hmm."


@pytest.mark.unit
def test_a_plain_failed_response_is_recorded_as_failed_with_its_message():
    failed = response("failed", error={"code": "server_error", "message": "The model crashed."})
    side = plain(failed, RESPONSES)
    assert side.error == {"kind": "response_failed", "message": "The model crashed."}
    assert side.finish_reason == "failed"


def streamed_response_events() -> list[dict[str, Any]]:
    """A whole Responses stream: reasoning summary, a message in two parts, a function call, completed."""
    call_added = CALL_ITEM | {"arguments": "", "status": "in_progress"}
    message_added = MESSAGE_ITEM | {"content": [], "status": "in_progress"}
    return [
        {"type": "response.created", "sequence_number": 0, "response": response("in_progress")},
        {"type": "response.in_progress", "sequence_number": 1, "response": response("in_progress")},
        {"type": "response.output_item.added", "output_index": 0, "item": REASONING_ITEM | {"summary": []}},
        {
            "type": "response.reasoning_summary_text.delta",
            "output_index": 0,
            "summary_index": 0,
            "delta": "Checked ",
        },
        {
            "type": "response.reasoning_summary_text.delta",
            "output_index": 0,
            "summary_index": 0,
            "delta": "the forecast.",
        },
        {"type": "response.output_item.done", "output_index": 0, "item": REASONING_ITEM},
        {"type": "response.output_item.added", "output_index": 1, "item": message_added},
        {"type": "response.output_text.delta", "output_index": 1, "content_index": 0, "delta": "Take an "},
        {"type": "response.output_text.delta", "output_index": 1, "content_index": 0, "delta": "umbrella"},
        {"type": "response.output_text.delta", "output_index": 1, "content_index": 1, "delta": " in Lisbon."},
        {"type": "response.output_item.added", "output_index": 2, "item": call_added},
        {
            "type": "response.function_call_arguments.delta",
            "output_index": 2,
            "item_id": "fc_1",
            "delta": '{"city": ',
        },
        {
            "type": "response.function_call_arguments.delta",
            "output_index": 2,
            "item_id": "fc_1",
            "delta": '"Lisbon"}',
        },
        {
            "type": "response.function_call_arguments.done",
            "output_index": 2,
            "arguments": '{"city": "Lisbon"}',
        },
        {
            "type": "response.completed",
            "sequence_number": 20,
            "response": response("completed", REASONING_ITEM, MESSAGE_ITEM, CALL_ITEM),
        },
    ]


@pytest.mark.unit
def test_a_streamed_responses_answer_is_recorded_from_its_completed_event():
    side = assemble(typed_sse(*streamed_response_events()), RESPONSES, streaming=True)
    assert side.error is None
    assert (
        side.outputs
        == plain(response("completed", REASONING_ITEM, MESSAGE_ITEM, CALL_ITEM), RESPONSES).outputs
    )
    assert (side.response_id, side.usage) == ("resp_9", USAGE)


@pytest.mark.unit
def test_the_completed_event_is_preferred_to_the_deltas():
    events = streamed_response_events()
    events[-1]["response"]["output"][1] = MESSAGE_ITEM | {
        "content": [{"type": "output_text", "text": "Final."}]
    }
    side = assemble(typed_sse(*events), RESPONSES, streaming=True)
    assert side.text == "Final."


@pytest.mark.unit
def test_a_responses_stream_cut_short_keeps_what_its_deltas_gave_and_is_truncated():
    events = streamed_response_events()[:-2]  # no arguments.done, no response.completed
    side = assemble(typed_sse(*events), RESPONSES, streaming=True)
    assert side.error is not None and side.error["kind"] == "truncated_stream"
    assert side.response_id == "resp_9"
    assert side.outputs == [
        {
            "index": 0,
            "text": "Take an umbrella in Lisbon.",
            "tool_calls": [{"id": "call_lisbon", "name": "get_weather", "arguments": '{"city": "Lisbon"}'}],
            "refusal": None,
            "reasoning": "Checked the forecast.",
            "finish_reason": None,
        }
    ]


@pytest.mark.unit
def test_a_responses_stream_of_deltas_alone_is_assembled():
    # Without output_item events (a lean server): the delta events name their item by output_index.
    events = [
        {"type": "response.created", "response": response("in_progress")},
        {"type": "response.reasoning_text.delta", "output_index": 0, "content_index": 0, "delta": "Hmm."},
        {"type": "response.output_text.delta", "output_index": 1, "content_index": 0, "delta": "Yes"},
        {"type": "response.refusal.delta", "output_index": 2, "content_index": 0, "delta": "But no."},
        {"type": "response.function_call_arguments.delta", "output_index": 3, "delta": "{}"},
    ]
    side = assemble(typed_sse(*events), RESPONSES, streaming=True)
    assert output(side) | {"finish_reason": None} == {
        "index": 0,
        "text": "Yes",
        "tool_calls": [{"id": None, "name": None, "arguments": "{}"}],
        "refusal": "But no.",
        "reasoning": "Hmm.",
        "finish_reason": None,
    }


@pytest.mark.unit
def test_the_first_token_of_a_responses_stream_is_its_first_delta_not_the_created_event():
    events = typed_sse(*streamed_response_events())  # at 0.4 s: the reasoning summary's first delta
    side = assemble(events, RESPONSES, streaming=True)
    assert side.ttft_ms == pytest.approx(400.0)


@pytest.mark.unit
def test_the_first_token_of_a_function_call_only_responses_stream_is_the_call():
    events = typed_sse(
        {"type": "response.created", "response": response("in_progress")},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": CALL_ITEM | {"arguments": ""},
        },  # 0.2 s
        {"type": "response.function_call_arguments.delta", "output_index": 0, "delta": "{}"},
        {"type": "response.completed", "response": response("completed", CALL_ITEM | {"arguments": "{}"})},
    )
    side = assemble(events, RESPONSES, streaming=True)
    assert side.ttft_ms == pytest.approx(200.0)
    assert output(side)["tool_calls"] == [{"id": "call_lisbon", "name": "get_weather", "arguments": "{}"}]


@pytest.mark.unit
def test_a_failed_responses_stream_is_recorded_as_failed_with_its_message():
    events = typed_sse(
        {"type": "response.created", "response": response("in_progress")},
        {"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": "Par"},
        {
            "type": "response.failed",
            "response": response("failed", error={"code": "server_error", "message": "The model crashed."}),
        },
    )
    side = assemble(events, RESPONSES, streaming=True)
    assert side.error == {"kind": "response_failed", "message": "The model crashed."}
    assert side.finish_reason == "failed"


@pytest.mark.unit
def test_an_error_event_in_a_responses_stream_is_a_stream_error():
    # ResponseErrorEvent: {type: "error", code, message, param} at the top level.
    events = typed_sse(
        {"type": "response.created", "response": response("in_progress")},
        {"type": "error", "code": "rate_limit_exceeded", "message": "Slow down.", "param": None},
    )
    side = assemble(events, RESPONSES, streaming=True)
    assert side.error == {"kind": "stream_error", "message": "Slow down."}


@pytest.mark.unit
def test_an_incomplete_response_finishes_as_incomplete_without_an_error():
    events = typed_sse(
        {"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": "Take an"},
        {"type": "response.incomplete", "response": response("incomplete", MESSAGE_ITEM)},
    )
    side = assemble(events, RESPONSES, streaming=True)
    assert side.error is None
    assert side.finish_reason == "incomplete"


@pytest.mark.unit
def test_a_responses_stream_with_crlf_lines_is_read():
    events = [e.replace(b"\n", b"\r\n") for e in typed_sse(*streamed_response_events())]
    side = assemble(events, RESPONSES, streaming=True)
    assert side.error is None and side.text == "Take an umbrella in Lisbon."


# ------------------------------------------------------------------------------------- the record's cap


@pytest.mark.unit
def test_a_responses_stream_past_the_cap_keeps_the_events_before_it():
    events = typed_sse(
        {"type": "response.created", "response": response("in_progress")},
        *(
            {"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": f"w{i} "}
            for i in range(400)
        ),
    )
    side = assemble(events, RESPONSES, streaming=True, max_bytes=4096)
    assert side.truncated is True
    assert side.error is None
    assert side.text is not None and side.text.startswith("w0 w1 ")
    assert len(side.text) < 400 * len("wNNN ")


@pytest.mark.unit
def test_a_chat_stream_past_the_cap_keeps_its_tool_call_pieces_before_it():
    pieces = [chunk(delta(tool_calls=[call_delta(0, arguments="", call_id="call_1", name="f")]))]
    pieces += [chunk(delta(tool_calls=[call_delta(0, arguments=f"{i},")])) for i in range(300)]
    side = assemble(sse(*pieces), CHAT, streaming=True, max_bytes=4096)
    assert side.truncated is True and side.error is None
    [call] = output(side)["tool_calls"]
    assert call["id"] == "call_1" and call["arguments"].startswith("0,1,2,")


@pytest.mark.unit
@pytest.mark.parametrize("route", [CHAT, COMPLETIONS, RESPONSES])
def test_a_plain_answer_past_the_cap_keeps_its_first_bytes_as_output_0(route: str):
    body = json.dumps(chat_completion(message(content="x" * 9000))).encode()
    side = assemble([body], route, streaming=False, max_bytes=4096)
    assert side.truncated is True and side.error is None
    written = side.to_dict()
    assert written["text"] == body[: 4096 // 4].decode()  # a plain body's cap: a quarter of a stream's
    assert side_outputs(written)[0]["text"] == written["text"]


# ------------------------------------------------------------------------------------ v1 compatibility


@pytest.mark.unit
def test_output_0_is_also_written_as_the_v1_text_and_finish_reason():
    side = plain(chat_completion(message(0, content="A."), message(1, content="B.", finish="length")), CHAT)
    written = side.to_dict()
    assert (written["text"], written["finish_reason"]) == ("A.", "stop")
    assert written["outputs"] == side.outputs


@pytest.mark.unit
def test_a_side_given_only_a_text_writes_it_as_its_one_output():
    # As the sentinel writes its reference answers.
    written = SideResult(model="ref", status=200, text="The reference.", finish_reason="stop").to_dict()
    assert written["outputs"] == [
        {
            "index": 0,
            "text": "The reference.",
            "tool_calls": [],
            "refusal": None,
            "reasoning": None,
            "finish_reason": "stop",
        }
    ]
    assert SideResult().fail("timeout", "too slow").to_dict()["outputs"] == []


V1_SIDE: SideRecord = {
    "model": "m",
    "status": 200,
    "latency_ms": 10.0,
    "ttft_ms": None,
    "text": "The answer.",
    "finish_reason": "stop",
    "usage": None,
    "error": None,
}
V1_PAIR: PairRecord = {
    "schema": "shadowtap.pair/v1",
    "id": "p1",
    "ts": "2026-01-01T00:00:00.000Z",
    "route": COMPLETIONS,
    "stream": False,
    "request": {"prompt": "Q"},
    "tags": {"route": COMPLETIONS},
    "primary": V1_SIDE,
    "candidate": V1_SIDE
    | {"text": None, "status": 502, "finish_reason": None, "error": {"kind": "http_5xx", "message": "x"}},
}


@pytest.mark.unit
def test_a_v1_side_reads_as_one_output_and_a_failed_one_as_none():
    assert side_outputs(V1_PAIR["primary"]) == [
        {
            "index": 0,
            "text": "The answer.",
            "tool_calls": [],
            "refusal": None,
            "reasoning": None,
            "finish_reason": "stop",
        }
    ]
    assert side_outputs(V1_PAIR["candidate"]) == []


@pytest.mark.unit
def test_a_v2_side_reads_as_its_outputs():
    side = plain(chat_completion(message(0, content="A."), message(1, content="B.")), CHAT).to_dict()
    assert [o["text"] for o in side_outputs(side)] == ["A.", "B."]


@pytest.mark.unit
def test_a_v1_record_still_validates_and_its_api_comes_from_its_route():
    validate_pair(V1_PAIR)
    assert pair_api(V1_PAIR) == "completions"


@pytest.mark.unit
def test_a_record_that_calls_itself_v2_must_carry_the_v2_fields():
    v2_named = V1_PAIR | {"schema": PAIR_SCHEMA}
    with pytest.raises(jsonschema.ValidationError):
        validate_pair(v2_named)
    with pytest.raises(jsonschema.ValidationError):
        validate_pair(V1_PAIR | {"schema": "shadowtap.pair/v9"})


@pytest.mark.unit
@pytest.mark.parametrize(
    ("route", "api"),
    [
        (CHAT, "chat"),
        (COMPLETIONS, "completions"),
        (RESPONSES, "responses"),
        ("/v1/chat/completions/", "chat"),
    ],
)
def test_the_api_is_named_by_the_route(route: str, api: str):
    assert api_of_route(route) == api


# --------------------------------------------------------------------------------- the written record


@pytest.mark.unit
@pytest.mark.parametrize("route", [CHAT, COMPLETIONS, RESPONSES])
def test_build_pair_writes_a_v2_record_that_its_schema_accepts(route: str):
    primary = plain(chat_completion(message(content=None, tool_calls=WEATHER_CALLS, reasoning="R.")), CHAT)
    candidate = assemble(typed_sse(*streamed_response_events()), RESPONSES, streaming=True)
    written = record(primary, candidate, route)
    validate_pair(written)
    assert written["schema"] == "shadowtap.pair/v2"
    assert written["api"] == api_of_route(route)
    assert written["masked"] == {"request": 0, "primary": 0, "candidate": 0}
    assert written["primary"]["response_id"] == "chatcmpl-42"
    assert written["candidate"]["outputs"][0]["reasoning"] == "Checked the forecast."
    json.dumps(written)


@pytest.mark.unit
def test_build_pair_writes_the_masked_counts_and_the_api_it_is_given():
    side = plain(chat_completion(message(content="A.")), CHAT)
    written = record(side, side, api="responses", masked={"request": 2, "candidate": 1})
    validate_pair(written)
    assert written["api"] == "responses"
    assert written["masked"] == {"request": 2, "primary": 0, "candidate": 1}
    with pytest.raises(ValueError, match="api"):
        record(side, side, api="embeddings")


@pytest.mark.unit
def test_failed_and_cut_short_sides_make_valid_records():
    assembler = SideAssembler(streaming=False, started=STARTED)
    assembler.feed(b'{"error": {"message": "overloaded"}}', STARTED + 0.5)
    failed = assembler.finish(SideResult(status=503), STARTED + 1, CHAT)
    assert failed.error is not None and failed.outputs == []
    cut = assemble(typed_sse(*streamed_response_events()[:5]), RESPONSES, streaming=True)
    validate_pair(record(failed, cut, RESPONSES))


@pytest.mark.unit
async def test_masking_a_side_masks_every_generated_string_and_counts_them():
    side = plain(
        chat_completion(
            message(
                0,
                content="Call 555-0100.",
                refusal="no 555-0100",
                tool_calls=WEATHER_CALLS,
                reasoning="555-0100",
            ),
            message(1, content="Nothing here."),
        ),
        CHAT,
    )

    async def mask(value: str) -> str:
        return value.replace("555-0100", "[PHONE]").replace("Lisbon", "[CITY]")

    changed = await side.amask(mask)
    assert changed == 4  # text, refusal, reasoning, one call's arguments
    first = output(side)
    assert (first["text"], first["refusal"], first["reasoning"]) == ("Call [PHONE].", "no [PHONE]", "[PHONE]")
    assert first["tool_calls"][0]["arguments"] == '{"city": "[CITY]", "unit": "c"}'
    assert side.text == "Call [PHONE]."
    assert output(side, 1)["text"] == "Nothing here."


@pytest.mark.unit
async def test_masking_a_side_with_only_a_text_masks_the_text():
    side = SideResult(status=200, text="Call 555-0100.")

    async def mask(value: str) -> str:
        return value.replace("555-0100", "[PHONE]")

    assert await side.amask(mask) == 1
    assert side.to_dict()["outputs"][0]["text"] == "Call [PHONE]."


# ----------------------------------------------------------------------------------------------- fuzz

_keys = st.sampled_from(
    [
        "id", "model", "choices", "index", "delta", "message", "content", "text", "refusal", "reasoning",
        "reasoning_content", "tool_calls", "function", "name", "arguments", "finish_reason", "usage", "error",
        "type", "response", "output", "output_index", "content_index", "summary_index", "summary", "item",
        "call_id", "status", "message",
    ]
)  # fmt: skip
_types = st.sampled_from(
    [
        "response.created", "response.output_text.delta", "response.refusal.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.added", "response.output_item.done", "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta", "response.completed", "response.failed", "response.incomplete",
        "error", "message", "function_call", "reasoning", "output_text", "refusal", "summary_text",
    ]
)  # fmt: skip
_leaves = st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=8) | _types
_json = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=25,
)


def _stream(events: list[Any], done: bool) -> bytes:
    lines = [f"data: {json.dumps(e)}\n\n" for e in events] + (["data: [DONE]\n\n"] if done else [])
    return "".join(lines).encode()


@pytest.mark.unit
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(_json, max_size=6),
    route=st.sampled_from([CHAT, COMPLETIONS, RESPONSES, "/v1/other"]),
    streaming=st.booleans(),
    done=st.booleans(),
    cut=st.integers(0, 2000),
    data=st.data(),
)
def test_fuzz_any_answer_makes_a_valid_record(events, route, streaming, done, cut, data):
    body = _stream(events, done) if streaming else json.dumps(events[0] if events else {}).encode()
    cap = max(1, min(cut, len(body) + 1))
    splits = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=4)))
    pieces = [body[a:b] for a, b in zip([0, *splits], [*splits, len(body)], strict=True)]
    side = assemble(pieces, route, streaming=streaming, max_bytes=cap)
    before = copy.deepcopy(side.outputs)
    written = record(side, SideResult().fail("missing", ""), route)
    validate_pair(written)
    assert written["primary"]["outputs"] == (before or side_outputs(written["primary"] | {"outputs": None}))
    assert written["primary"]["text"] == (before[0]["text"] if before else side.text)
    json.dumps(written)


# ------------------------------------------------- a served upstream, read as the OpenAI SDK reads it
# The simulated upstream (shadowtap.testing) on loopback answers in OpenAI's and vLLM's wire formats;
# what the record assembles from its bytes is what the real OpenAI SDK parses from the same bytes.


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[SimulatedLLM, ServerHandle]]:
    sim = SimulatedLLM("sim-model")
    with serve_in_thread(sim.app) as handle:
        yield sim, handle


def served(
    upstream: tuple[SimulatedLLM, ServerHandle], route: str, body: dict[str, Any]
) -> tuple[SideResult, bytes]:
    """The side the record assembles from the upstream's answer, and the answer's bytes."""
    _, handle = upstream
    assembler = SideAssembler(streaming=bool(body.get("stream")), started=time.perf_counter())
    url = handle.base_url + route.removeprefix("/v1")
    with httpx.stream("POST", url, json={"model": "m", **body}, timeout=10) as response:
        for piece in response.iter_raw():
            assembler.feed(piece, time.perf_counter())
        status = response.status_code
    side = assembler.finish(SideResult(status=status), time.perf_counter(), route)
    return side, b"".join(assembler.chunks)


def data_events(body: bytes) -> list[bytes]:
    lines = [line.strip() for line in body.split(b"\n")]
    return [line[5:].strip() for line in lines if line.startswith(b"data:") and line[5:].strip() != b"[DONE]"]


def sdk_chat(body: bytes, streamed: bool) -> list[dict[str, Any]]:
    """The choices as the SDK has them: parsed, or accumulated from the chunks by its stream state."""
    if streamed:
        state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
        for payload in data_events(body):
            state.handle_chunk(ChatCompletionChunk.model_validate_json(payload))
        completion: ChatCompletion = state.get_final_completion()
    else:
        completion = ChatCompletion.model_validate_json(body)
    outputs = []
    for choice in completion.choices:
        message, extra = choice.message, choice.message.model_extra or {}
        calls = [call for call in message.tool_calls or [] if call.type == "function"]
        outputs.append(
            {
                "index": choice.index,
                "text": message.content or "",
                "tool_calls": [
                    {"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in calls
                ],
                "refusal": message.refusal or None,
                "reasoning": extra.get("reasoning") or extra.get("reasoning_content"),
                "finish_reason": choice.finish_reason,
            }
        )
    return outputs


def sdk_response(body: bytes, streamed: bool) -> dict[str, Any]:
    """The Responses answer as the SDK has it: parsed, or the final response of `response.completed`."""
    if streamed:
        events = [TypeAdapter(ResponseStreamEvent).validate_json(payload) for payload in data_events(body)]
        [final] = [e.response for e in events if e.type in ("response.completed", "response.incomplete")]
    else:
        final = Response.model_validate_json(body)
    items = final.output
    reasoning = [part.text for i in items if i.type == "reasoning" for part in (i.summary or i.content or [])]
    return {
        "index": 0,
        "text": final.output_text,
        "tool_calls": [
            {"id": i.call_id, "name": i.name, "arguments": i.arguments}
            for i in items
            if i.type == "function_call"
        ],
        "refusal": "".join(
            p.refusal for i in items if i.type == "message" for p in i.content if p.type == "refusal"
        )
        or None,
        "reasoning": "\n\n".join(reasoning) or None,
        "finish_reason": final.status,
    }


TOOLS = Reply(
    text="",
    tool_calls=[("get_weather", '{"city": "Lisbon", "unit": "c"}'), ("get_time", '{"tz":"Europe/Lisbon"}')],
    reasoning="Two lookups are needed.",
)
REFUSAL = Reply(refusal="I'm sorry, but I can't help with that.")
THREE = Reply(text="fallback", choices=["Sunny.", "Warm and sunny, 22C.", "Take a hat."])
CHAT_BODY = {"messages": [{"role": "user", "content": "Weather and time in Lisbon?"}]}


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(
    ("reply", "extra"),
    [
        (TOOLS, {}),
        (dataclasses.replace(TOOLS, reasoning_field="reasoning_content"), {}),
        (REFUSAL, {}),
        (THREE, {"n": 3}),
    ],
    ids=["tool calls and reasoning", "reasoning_content", "refusal", "n=3"],
)
def test_a_served_chat_answer_is_recorded_as_the_sdk_reads_it(upstream, reply, extra, streamed):
    sim, _ = upstream
    sim.policy = fixed(reply)
    body = (
        CHAT_BODY | extra | ({"stream": True, "stream_options": {"include_usage": True}} if streamed else {})
    )
    side, raw = served(upstream, CHAT, body)
    assert side.error is None
    assert side.outputs == sdk_chat(raw, streamed)
    first = side.outputs[0]
    assert (first["reasoning"], first["refusal"]) == (reply.reasoning, reply.refusal)
    assert [call["name"] for call in first["tool_calls"]] == [call.name for call in reply.calls()]
    assert side.response_id and side.usage
    if streamed:
        assert side.ttft_ms is not None


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
def test_a_served_completion_of_a_prompt_array_is_recorded_per_prompt(upstream, streamed):
    sim, _ = upstream
    sim.policy = default_policy
    prompts = ["The capital of France is", "The capital of Italy is"]
    side, raw = served(upstream, COMPLETIONS, {"prompt": prompts, "n": 2, "stream": streamed})
    if streamed:
        texts: dict[int, str] = {}
        for payload in data_events(raw):
            # The SDK builds stream chunks without validating them (a chunk's finish_reason is null).
            for choice in json.loads(payload)["choices"]:
                texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    else:
        texts = {c.index: c.text for c in Completion.model_validate_json(raw).choices}
    assert side.error is None
    assert {o["index"]: o["text"] for o in side.outputs} == texts
    assert sorted(texts) == [0, 1, 2, 3]


@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize(
    "reply",
    [TOOLS, dataclasses.replace(TOOLS, reasoning_item="text"), REFUSAL, Reply(text="Take an umbrella.")],
    ids=["tool calls and a reasoning summary", "vLLM reasoning text", "refusal", "text"],
)
def test_a_served_responses_answer_is_recorded_as_the_sdk_reads_it(upstream, reply, streamed):
    sim, _ = upstream
    sim.policy = fixed(reply)
    side, raw = served(upstream, RESPONSES, {"input": "Weather and time in Lisbon?", "stream": streamed})
    assert side.error is None
    assert side.outputs == [sdk_response(raw, streamed)]
    first = side.outputs[0]
    assert (first["reasoning"], first["refusal"]) == (reply.reasoning, reply.refusal)
    assert [call["name"] for call in first["tool_calls"]] == [call.name for call in reply.calls()]
    assert side.response_id and side.usage


def test_a_served_responses_stream_cut_before_its_end_gives_what_its_end_would_have():
    sim = SimulatedLLM("sim-model")
    sim.policy = fixed(TOOLS)
    with serve_in_thread(sim.app) as handle:
        side, raw = served((sim, handle), RESPONSES, {"input": "Weather and time in Lisbon?", "stream": True})
    whole = sdk_response(raw, streamed=True)
    end = raw.rindex(b"event: response.completed")
    cut = assemble([raw[:end]], RESPONSES, streaming=True)
    assert cut.error is not None and cut.error["kind"] == "truncated_stream"
    assert cut.outputs == [whole | {"finish_reason": None}]


@pytest.mark.parametrize("route", [CHAT, RESPONSES])
def test_a_served_stream_cut_short_is_truncated_with_what_came(upstream, route):
    sim, _ = upstream
    sim.policy = fixed(Reply(text="Unplug the router, wait ten seconds, plug it back in.", fault="truncate"))
    body = CHAT_BODY if route == CHAT else {"input": "How do I reset my router?"}
    side, _ = served(upstream, route, body | {"stream": True})
    assert side.error is not None and side.error["kind"] == "truncated_stream"
    assert side.text and "Unplug the router, wait ten seconds, plug it back in.".startswith(side.text)
