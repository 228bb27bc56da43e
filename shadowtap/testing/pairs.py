"""Pair records made to order, for tests and benchmarks: one factory instead of one per test file.

`make_pair(primary_text="...", candidate_text="...")` gives a valid `shadowtap.pair/v2` record; a
text of None makes that side a failed call (status 502 and an error), as the proxy records one. A side
with tool calls, several choices, a refusal or reasoning takes `outputs` (see `make_output`).
"""

from __future__ import annotations

import itertools
from typing import Any

from shadowtap.records import PAIR_SCHEMA, Output, PairRecord, SideError, SideRecord, ToolCall, api_of_route

__all__ = ["CHAT_ROUTE", "WEATHER_TOOL", "make_output", "make_pair", "make_side"]

CHAT_ROUTE = "/v1/chat/completions"
# A tool as a chat request offers it, in strict mode (no property beyond its own is allowed).
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
_ids = itertools.count(1)


def make_output(
    text: str | None = None,
    *,
    index: int = 0,
    tool_calls: list[tuple[str, str]] | None = None,
    refusal: str | None = None,
    reasoning: str | None = None,
    finish_reason: str | None = None,
) -> Output:
    """One choice of a v2 side; `tool_calls` as (name, arguments-as-sent) pairs."""
    calls: list[ToolCall] = [
        {"id": f"call_{index}_{i}", "name": name, "arguments": arguments}
        for i, (name, arguments) in enumerate(tool_calls or [])
    ]
    return {
        "index": index,
        "text": text,
        "tool_calls": calls,
        "refusal": refusal,
        "reasoning": reasoning,
        "finish_reason": finish_reason or ("tool_calls" if calls else "stop"),
    }


def make_side(
    text: str | None,
    *,
    model: str = "m",
    latency_ms: float = 10.0,
    ttft_ms: float | None = None,
    finish_reason: str | None = "stop",
    usage: dict[str, Any] | None = None,
    error: SideError | None = None,
    status: int | None = None,
    outputs: list[Output] | None = None,
    truncated: bool = False,
) -> SideRecord:
    """One side; `text=None` (and no `error` given) is a failed upstream call. `outputs` default to the
    one output `text` makes; given, `text` and `finish_reason` are taken from output 0 when not set."""
    if outputs:
        text = outputs[0]["text"] if text is None else text
        finish_reason = outputs[0]["finish_reason"]
    if text is None and error is None and not outputs:
        error = {"kind": "http_5xx", "message": "upstream failed"}
    failed = error is not None and text is None and not outputs
    if outputs is None:
        outputs = [] if failed or text is None else [make_output(text, finish_reason=finish_reason)]
    return {
        "model": model,
        "response_id": None,
        "status": status if status is not None else (502 if failed else 200),
        "latency_ms": latency_ms,
        "ttft_ms": ttft_ms,
        "text": text,
        "finish_reason": None if failed else finish_reason,
        "usage": usage,
        "error": error,
        "truncated": truncated,
        "outputs": outputs,
    }


def make_pair(
    primary_text: str | None = "The answer.",
    candidate_text: str | None = "The answer.",
    *,
    request: dict[str, Any] | None = None,
    prompt: str = "What is the answer?",
    tags: dict[str, str] | None = None,
    pair_id: str | None = None,
    route: str = CHAT_ROUTE,
    stream: bool = False,
    ts: str = "2026-01-01T00:00:00.000Z",
    primary: SideRecord | None = None,
    candidate: SideRecord | None = None,
) -> PairRecord:
    """A pair whose request is `request` (default: one user message, `prompt`), tagged like the proxy
    tags one (`route`, `segment` "none", `length_bucket` "0-500", then `tags` on top)."""
    body = (
        request if request is not None else {"model": "m", "messages": [{"role": "user", "content": prompt}]}
    )
    return {
        "schema": PAIR_SCHEMA,
        "id": pair_id if pair_id is not None else f"pair-{next(_ids)}",
        "ts": ts,
        "route": route,
        "api": api_of_route(route),
        "stream": stream,
        "request": body,
        "tags": {"route": route, "segment": "none", "length_bucket": "0-500", **(tags or {})},
        "masked": {"request": 0, "primary": 0, "candidate": 0},
        "primary": primary if primary is not None else make_side(primary_text),
        "candidate": candidate if candidate is not None else make_side(candidate_text),
    }
