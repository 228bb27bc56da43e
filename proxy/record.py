"""The pair record: assembling each side's answer (plain JSON or an SSE stream) and building the record.

Assembly happens beside the user's stream, never in front of it: the proxy hands every chunk to the
client first and feeds a copy to a `SideAssembler`, which parses it afterwards. The copy is capped
(`shadow.max_record_bytes` of decoded bytes); past the cap a side is recorded as `truncated`, with what
was whole before the cap. The route names the API: a chat or completions answer is its `choices`, kept
apart by `index`; a Responses API answer is one output assembled from its `output` items.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from shadowtap.config import ShadowSettings
from shadowtap.proxy.spool import Spooled
from shadowtap.records import (
    APIS,
    PAIR_SCHEMA,
    Api,
    Output,
    PairRecord,
    SideError,
    SideRecord,
    ToolCall,
    api_of_route,
    side_outputs,
)

# The record keeps this many decoded bytes of a side unless told otherwise: the config's default.
MAX_RECORD_BYTES: int = ShadowSettings.model_fields["max_record_bytes"].default

# Responses API stream events whose `delta` is generated output, and the part of its item each builds.
_RESPONSES_DELTAS = {
    "response.output_text.delta": "output_text",
    "response.refusal.delta": "refusal",
    "response.reasoning_summary_text.delta": "summary",
    "response.reasoning_text.delta": "reasoning_text",
    "response.function_call_arguments.delta": "arguments",
}
# The events that end a Responses stream; each carries the whole final response.
_RESPONSES_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_UNFINISHED = {
    "chat": "stream ended without a finish_reason or [DONE]",
    "completions": "stream ended without a finish_reason or [DONE]",
    "responses": "stream ended without response.completed",
}
# Every event that carries a generated token has one of these; only those are parsed for the first token.
_TOKEN_MARKERS = (b"delta", b'"text"', b"output_item.added")
# A plain (not streamed) answer is kept up to max_bytes // PLAIN_SHARE: about as long an answer as a
# stream of max_bytes holds.
PLAIN_SHARE = 4
# A plain answer cut at the cap cannot be parsed: the record keeps this much of it, as text.
CUT_TEXT_BYTES = 8 * 1024
# One `feed` inflates at most this much of a gzip or deflate body; the rest waits for the next chunk (or
# `finish`), so no single call holds the event loop for long.
INFLATE_STEP_BYTES = 256 * 1024


@dataclass(slots=True)
class Unparsed:
    """An answer body whose parsing was left for later (`settle`), off the event loop when it is large."""

    body: bytes | Spooled  # a large one is left in shared memory for the offload worker (spool.py)
    streaming: bool
    truncated: bool
    route: str


@dataclass(slots=True)
class SideResult:
    """What one upstream answered, as the pair record's `primary`/`candidate` object."""

    model: str | None = None
    response_id: str | None = None
    status: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    text: str | None = None  # output 0's (v1 readers); a plain body cut at the cap: what of it came
    finish_reason: str | None = None  # output 0's
    outputs: list[Output] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    error: SideError | None = None
    truncated: bool = False  # the recorded body hit its cap; the rest of the answer was not kept
    unparsed: Unparsed | None = None  # the body, until `settle` parses it into the fields above

    def to_dict(self) -> SideRecord:
        record: SideRecord = {
            "model": self.model,
            "response_id": self.response_id,
            "status": self.status,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 3),
            "usage": self.usage,
            "error": self.error,
            "truncated": self.truncated,
            "text": self.text,
            "finish_reason": self.finish_reason,
        }
        # A side given only a text (a sentinel reference, a cut plain body) is that text's one output.
        record["outputs"] = self.outputs or side_outputs(record)
        return record

    def settle(self) -> SideResult:
        """Parse a body left unparsed (`SideAssembler.finish` with `parse_inline_bytes`) into the result."""
        pending, self.unparsed = self.unparsed, None
        if pending is not None:
            assert isinstance(pending.body, bytes), "the offload worker reads a spooled body back first"
            _parse_body(pending.body, self, pending.streaming, pending.truncated, pending.route)
        return self

    def fail(self, kind: str, message: str) -> SideResult:
        if self.error is None:
            self.error = {"kind": kind, "message": message[:500]}
        return self

    async def amask(self, mask: Callable[[str], Awaitable[str]]) -> int:
        """Mask every generated string (texts, refusals, reasoning, tool-call arguments) with `mask`, and
        say how many values it changed; `text` stays output 0's."""
        masker = _Masker(mask)
        for output in self.outputs:
            await masker.output(output)
        if self.outputs:
            self.text = self.outputs[0]["text"]
        elif self.text:
            self.text = await masker(self.text)
        return masker.changed


@dataclass(slots=True)
class _Masker:
    mask: Callable[[str], Awaitable[str]]
    changed: int = 0

    async def __call__(self, value: str) -> str:
        masked = await self.mask(value)
        self.changed += masked != value
        return masked

    async def _some(self, value: str | None) -> str | None:
        return await self(value) if value else value

    async def output(self, output: Output) -> None:
        output["text"] = await self._some(output["text"])
        output["refusal"] = await self._some(output["refusal"])
        output["reasoning"] = await self._some(output["reasoning"])
        for call in output["tool_calls"]:
            if call["arguments"]:
                call["arguments"] = await self(call["arguments"])


class _Decoder(Protocol):
    """A streaming decoder of a content coding (what `zlib.decompressobj` returns)."""

    @property
    def unconsumed_tail(self) -> bytes: ...

    def decompress(self, data: bytes, /, max_length: int = 0) -> bytes: ...


def _decompressor(content_encoding: str | None) -> _Decoder | None:
    enc = (content_encoding or "").strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if enc == "deflate":
        return zlib.decompressobj()
    raise ValueError(f"content-encoding {enc!r} is not decoded for recording")


@dataclass(slots=True)
class SideAssembler:
    """Collects an upstream's answer bytes and turns them into a `SideResult`.

    `feed` is cheap (it only keeps references and, for streams, notes when content first arrived);
    parsing is done once, in `finish` — or, for a body over `parse_inline_bytes`, later, by the result's
    `settle` (in the offload worker). At most `cap` decoded bytes are kept (a gzip or deflate body
    is never inflated much past them, and at most INFLATE_STEP_BYTES a call); past them the side is
    `truncated` and `feed` keeps nothing more.
    """

    streaming: bool
    started: float
    content_encoding: str | None = None
    max_bytes: int = MAX_RECORD_BYTES
    parse_inline_bytes: int | None = None  # None: `finish` always parses
    chunks: list[bytes] = field(default_factory=list)
    first_chunk_at: float | None = None
    truncated: bool = False
    _kept: int = 0
    _sse_partial: list[bytes] = field(default_factory=list)  # a line whose end has not come yet
    _first_content_at: float | None = None
    _decoder: _Decoder | None = None

    def __post_init__(self) -> None:
        self._decoder = _decompressor(self.content_encoding)

    @property
    def cap(self) -> int:
        """Bytes kept of this body: `max_bytes` of a stream, a quarter of it of a plain JSON body, which
        carries no per-token framing (the same answer is several times longer as SSE events)."""
        return self.max_bytes if self.streaming else self.max_bytes // PLAIN_SHARE

    def set_content_encoding(self, content_encoding: str) -> None:
        """Decode what `feed` gets from now on (gzip, deflate); raises ValueError for other codings."""
        self.content_encoding = content_encoding
        self._decoder = _decompressor(content_encoding)

    def feed(self, chunk: bytes, now: float) -> None:
        if not chunk or self.truncated:
            return
        if self._decoder is not None:
            chunk = self._inflate(self._decoder.unconsumed_tail + chunk)
        self._keep(chunk)
        if self.first_chunk_at is None:
            self.first_chunk_at = now
        if self.streaming and self._first_content_at is None and chunk:
            self._scan_for_first_content(chunk, now)

    def _inflate(self, data: bytes) -> bytes:
        """Decode what fits (one byte past the room tells it is full), at most INFLATE_STEP_BYTES."""
        assert self._decoder is not None
        room = self.cap - self._kept
        return self._decoder.decompress(data, min(room + 1, INFLATE_STEP_BYTES))

    def _keep(self, chunk: bytes) -> None:
        room = self.cap - self._kept
        if len(chunk) > room:
            chunk = chunk[:room]
            self.truncated = True
            self._decoder = None
        self._kept += len(chunk)
        self.chunks.append(chunk)

    def _inflate_rest(self) -> None:
        """At the end of the body: decode what earlier steps left, up to the cap."""
        while self._decoder is not None and self._decoder.unconsumed_tail and not self.truncated:
            self._keep(self._inflate(self._decoder.unconsumed_tail))

    def _scan_for_first_content(self, chunk: bytes, now: float) -> None:
        # Time to first token = the first event with a generated token of any kind (text, a tool call,
        # reasoning, a refusal), not the role-only chunk or `response.created`. Each line is read once,
        # when its end arrives, and parsed only when it has a marker of such an event.
        if b"\n" not in chunk:
            self._sse_partial.append(chunk)
            return
        *lines, rest = b"".join([*self._sse_partial, chunk]).split(b"\n")
        self._sse_partial = [rest]
        for line in lines:
            payload = _data_payload(line)
            if payload is None or not any(marker in payload for marker in _TOKEN_MARKERS):
                continue
            event = _sse_event(payload)
            if event is not None and _carries_token(event):
                self._first_content_at = now
                self._sse_partial = []
                return

    def finish(self, result: SideResult, ended: float, route: str) -> SideResult:
        """The timings, and the parsed answer: now, or (a body over `parse_inline_bytes`) by `settle`."""
        self._inflate_rest()
        result.latency_ms = (ended - self.started) * 1000.0
        result.truncated = self.truncated
        body = b"".join(self.chunks)
        if self._first_content_at is not None:
            result.ttft_ms = (self._first_content_at - self.started) * 1000.0
        if self.parse_inline_bytes is not None and len(body) > self.parse_inline_bytes:
            result.unparsed = Unparsed(body, self.streaming, self.truncated, route)
            return result
        return _parse_body(body, result, self.streaming, self.truncated, route)


def _parse_body(body: bytes, result: SideResult, streaming: bool, truncated: bool, route: str) -> SideResult:
    if result.status is not None and result.status >= 400:
        result.text = None
        detail = _error_message(body)
        return result.fail(_http_error_kind(result.status), f"HTTP {result.status}: {detail}")
    api = api_of_route(route)
    if streaming:
        # Cut at the cap: the events whole before it are the record; the one it cut is not.
        return _parse_sse(body[: body.rfind(b"\n") + 1] if truncated else body, result, api)
    if truncated:  # a cut JSON document cannot be parsed: the start of what came is kept as it came
        result.text = body[:CUT_TEXT_BYTES].decode("utf-8", "replace")
        return result
    return _parse_json(body, result, api)


def _http_error_kind(status: int) -> str:
    if status == 429:
        return "http_429"
    return "http_5xx" if status >= 500 else "http_4xx"


def _error_message(body: bytes) -> str:
    try:
        doc = json.loads(body)
        msg = doc.get("error", {}).get("message") if isinstance(doc.get("error"), dict) else doc.get("error")
        if msg:
            return str(msg)[:300]
    except (ValueError, AttributeError, RecursionError):
        pass
    return body[:300].decode("utf-8", "replace")


# ----------------------------------------------------------------------------------- the first token


def _carries_token(event: dict[str, Any]) -> bool:
    kind = event.get("type")
    if isinstance(kind, str) and kind.startswith("response."):
        if kind == "response.output_item.added":  # a function call's name is the model's first output
            item = event.get("item")
            return isinstance(item, dict) and item.get("type") == "function_call"
        return kind in _RESPONSES_DELTAS and bool(event.get("delta"))
    choices = event.get("choices")
    return isinstance(choices, list) and any(_choice_carries_token(choice) for choice in choices)


def _choice_carries_token(choice: Any) -> bool:
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return bool(
            delta.get("content") or delta.get("tool_calls") or delta.get("refusal") or _reasoning(delta)
        )
    return bool(choice.get("text"))


# --------------------------------------------------------------------------------- reading the body


def _data_payload(line: bytes) -> bytes | None:
    """What an SSE `data:` line carries; None for other lines (`event:`, comments, blank)."""
    line = line.strip()
    return line[5:].strip() if line.startswith(b"data:") else None


def _data_payloads(body: bytes) -> Iterator[bytes]:
    for line in body.split(b"\n"):
        payload = _data_payload(line)
        if payload is not None:
            yield payload


def _sse_event(payload: bytes) -> dict[str, Any] | None:
    """The JSON object an SSE `data:` line carries, or None (`[DONE]`, not JSON, not an object)."""
    try:
        event = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


def _parse_json(body: bytes, result: SideResult, api: Api) -> SideResult:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    if api == "responses":
        if not isinstance(doc, dict) or not isinstance(doc.get("output"), list):
            return _not_an_answer(body, result, "an OpenAI response")
        return _responses_plain(doc, result)
    if not isinstance(doc, dict) or not isinstance(doc.get("choices"), list) or not doc["choices"]:
        return _not_an_answer(body, result, "an OpenAI completion")
    answer = _ChoicesAnswer()
    answer.take(doc, result)
    _settle(result, answer.outputs())
    return result


def _not_an_answer(body: bytes, result: SideResult, what: str) -> SideResult:
    snippet = body[:120].decode("utf-8", "replace")
    return result.fail("invalid_response", f"not {what}: {snippet!r}")


def _parse_sse(body: bytes, result: SideResult, api: Api) -> SideResult:
    answer: _ChoicesAnswer | _ResponsesAnswer = _ResponsesAnswer() if api == "responses" else _ChoicesAnswer()
    bad = 0
    for payload in _data_payloads(body):
        if payload == b"[DONE]":
            answer.done = True
            continue
        event = _sse_event(payload)
        if event is None:
            bad += 1
            continue
        failure = _stream_failure(event, payload)
        if failure is not None:
            result.fail("stream_error", failure)
        answer.take(event, result)
    _settle(result, answer.outputs())
    if bad and not result.outputs:
        return result.fail("invalid_response", "stream carried no parseable events")
    if not answer.finished() and not result.truncated:
        return result.fail("truncated_stream", _UNFINISHED[api])
    return result


def _stream_failure(event: dict[str, Any], payload: bytes) -> str | None:
    """The message of an event that reports an error (`{"error": ...}`; Responses: `type: error`)."""
    if event.get("type") != "error" and not event.get("error"):
        return None
    message = event.get("message")
    return message if isinstance(message, str) and message else _error_message(payload)


def _take_envelope(doc: dict[str, Any], result: SideResult) -> None:
    """The answer's id, model and usage, from a completion, a chunk or a response object."""
    if result.response_id is None and isinstance(doc.get("id"), str):
        result.response_id = doc["id"]
    if isinstance(doc.get("model"), str) and doc["model"]:
        result.model = doc["model"]
    if isinstance(doc.get("usage"), dict):
        result.usage = doc["usage"]


def _settle(result: SideResult, outputs: list[Output]) -> None:
    result.outputs = sorted(outputs, key=lambda output: output["index"])
    if result.outputs:
        result.text = result.outputs[0]["text"]
        result.finish_reason = result.outputs[0]["finish_reason"]


def _index(value: Any, fallback: int) -> int:
    """A choice's or a call's index as sent, or its position when it came without a usable one."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else fallback


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _arguments(value: Any) -> str | None:
    """Tool-call arguments exactly as sent: a string; a server that sends an object gets it as JSON."""
    return value if isinstance(value, str) or value is None else json.dumps(value)


def _reasoning(message: dict[str, Any]) -> str | None:
    # vLLM's reasoning parsers write `reasoning`; releases before the rename wrote `reasoning_content`.
    reasoning = message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        return reasoning
    return _text(message.get("reasoning_content"))


# ------------------------------------------------------------------------ one output, piece by piece


@dataclass(slots=True)
class _CallParts:
    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)

    def take(self, piece: dict[str, Any]) -> None:
        """A chat tool call, or one delta of it: the id and name once, the arguments piece by piece."""
        if self.id is None:
            self.id = _text(piece.get("id"))
        function = piece.get("function") or piece.get("custom")  # a custom tool sends {name, input}
        if not isinstance(function, dict):
            return
        if self.name is None:
            self.name = _text(function.get("name"))
        arguments = _arguments(function["arguments"] if "arguments" in function else function.get("input"))
        if arguments is not None:
            self.arguments.append(arguments)

    def done(self) -> ToolCall:
        return {"id": self.id, "name": self.name, "arguments": "".join(self.arguments)}


@dataclass(slots=True)
class _OutputParts:
    index: int
    text: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: dict[int, _CallParts] = field(default_factory=dict)
    finish_reason: str | None = None

    def take_message(self, message: dict[str, Any]) -> None:
        """A chat message, or one delta of it."""
        content = message.get("content")
        if content is not None:
            self.text.append(content if isinstance(content, str) else json.dumps(content))
        _add(self.refusal, message.get("refusal"))
        _add(self.reasoning, _reasoning(message))
        calls = message.get("tool_calls")
        for position, piece in enumerate(calls if isinstance(calls, list) else []):
            if isinstance(piece, dict):
                self.calls.setdefault(_index(piece.get("index"), position), _CallParts()).take(piece)

    def done(self) -> Output:
        return {
            "index": self.index,
            "text": "".join(self.text),
            "tool_calls": [call.done() for _, call in sorted(self.calls.items())],
            "refusal": "".join(self.refusal) or None,
            "reasoning": "".join(self.reasoning) or None,
            "finish_reason": self.finish_reason,
        }


def _add(parts: list[str], value: Any) -> None:
    if isinstance(value, str) and value:
        parts.append(value)


# ------------------------------------------------------------------------------ chat and completions


@dataclass(slots=True)
class _ChoicesAnswer:
    """A chat or completions answer, plain or streamed: its choices kept apart by `index`."""

    choices: dict[int, _OutputParts] = field(default_factory=dict)
    done: bool = False  # the stream said [DONE]

    def take(self, doc: dict[str, Any], result: SideResult) -> None:
        _take_envelope(doc, result)
        choices = doc.get("choices")
        for position, choice in enumerate(choices if isinstance(choices, list) else []):
            if isinstance(choice, dict):
                self._take_choice(choice, position)

    def _take_choice(self, choice: dict[str, Any], position: int) -> None:
        index = _index(choice.get("index"), position)
        parts = self.choices.setdefault(index, _OutputParts(index))
        message = choice.get("message", choice.get("delta"))  # chat; a completion has `text`
        if isinstance(message, dict):
            parts.take_message(message)
        else:
            _add(parts.text, choice.get("text"))
        finish_reason = choice.get("finish_reason")
        if isinstance(finish_reason, str) and finish_reason:
            parts.finish_reason = finish_reason

    def outputs(self) -> list[Output]:
        return [parts.done() for parts in self.choices.values()]

    def finished(self) -> bool:
        return self.done or (bool(self.choices) and all(p.finish_reason for p in self.choices.values()))


# -------------------------------------------------------------------------------------- Responses API


def _responses_plain(doc: dict[str, Any], result: SideResult) -> SideResult:
    _take_envelope(doc, result)
    _settle(result, [_responses_output(doc["output"], doc.get("status"))])
    failure = _response_failure(doc)
    return result if failure is None else result.fail("response_failed", failure)


def _response_failure(response: dict[str, Any]) -> str | None:
    if response.get("status") != "failed":
        return None
    error = response.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return str(message) if message else "the response failed"


def _responses_output(items: list[Any], status: Any) -> Output:
    """A Responses API answer as one output: its messages' text and refusal parts, its function calls and
    its reasoning (the summary; vLLM writes the reasoning text itself), in the order of its items."""
    parts = _OutputParts(0, finish_reason=_text(status))
    reasoning: list[str] = []
    for item in items:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "message":
            _take_message_item(item, parts)
        elif kind == "function_call":
            call = _CallParts(
                id=_text(item.get("call_id")) or _text(item.get("id")), name=_text(item.get("name"))
            )
            _add(call.arguments, _arguments(item.get("arguments")))
            parts.calls[len(parts.calls)] = call
        elif kind == "reasoning":
            reasoning += _reasoning_texts(item)
    _add(parts.reasoning, "\n\n".join(reasoning))
    return parts.done()


def _take_message_item(item: dict[str, Any], parts: _OutputParts) -> None:
    content = item.get("content")
    for part in content if isinstance(content, list) else []:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "output_text":
            _add(parts.text, part.get("text"))
        elif kind == "refusal":
            _add(parts.refusal, part.get("refusal"))


def _reasoning_texts(item: dict[str, Any]) -> list[str]:
    for key in ("summary", "content"):
        parts = item.get(key)
        texts = (
            [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
            if isinstance(parts, list)
            else []
        )
        if any(texts):
            return texts
    return []


@dataclass(slots=True)
class _ResponsesAnswer:
    """A streamed Responses API answer: the final response when the event that ends the stream came, else
    its output items as the events before the cut built them."""

    final: dict[str, Any] | None = None
    items: dict[int, dict[str, Any]] = field(default_factory=dict)  # by output_index, as added or done
    whole: set[int] = field(default_factory=set)  # the items an output_item.done gave whole
    pieces: dict[int, dict[tuple[str, int], list[str]]] = field(default_factory=dict)
    done: bool = False

    def take(self, event: dict[str, Any], result: SideResult) -> None:
        kind = event.get("type")
        kind = kind if isinstance(kind, str) else ""
        response = event.get("response")
        if isinstance(response, dict):
            _take_envelope(response, result)
            if kind in _RESPONSES_ENDS:
                self._end(response, result)
        if kind in ("response.output_item.added", "response.output_item.done"):
            self._take_item(kind, event)
        elif kind in _RESPONSES_DELTAS:
            self._take_delta(_RESPONSES_DELTAS[kind], event)
        elif kind == "response.function_call_arguments.done" and isinstance(event.get("arguments"), str):
            self.pieces.setdefault(_index(event.get("output_index"), 0), {})[("arguments", 0)] = [
                event["arguments"]
            ]

    def _end(self, response: dict[str, Any], result: SideResult) -> None:
        self.done = True
        self.final = response
        failure = _response_failure(response)
        if failure is not None:
            result.fail("response_failed", failure)

    def _take_item(self, kind: str, event: dict[str, Any]) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            return
        index = _index(event.get("output_index"), len(self.items))
        if kind == "response.output_item.done":
            self.whole.add(index)
        elif index in self.whole:
            return
        self.items[index] = item

    def _take_delta(self, part: str, event: dict[str, Any]) -> None:
        delta = event.get("delta")
        if isinstance(delta, str):
            where = _index(event.get("summary_index", event.get("content_index")), 0)
            self.pieces.setdefault(_index(event.get("output_index"), 0), {}).setdefault(
                (part, where), []
            ).append(delta)

    def outputs(self) -> list[Output]:
        final = self.final
        if final is not None and isinstance(final.get("output"), list):
            return [_responses_output(final["output"], final.get("status"))]
        indices = sorted(self.items.keys() | self.pieces.keys())
        if not indices:
            return []
        status = None if final is None else final.get("status")
        return [_responses_output([self._item(index) for index in indices], status)]

    def _item(self, index: int) -> dict[str, Any]:
        item = self.items.get(index, {})
        if index in self.whole or index not in self.pieces:
            return item
        return _rebuilt_item(item, self.pieces[index])

    def finished(self) -> bool:
        return self.done


_MESSAGE_PARTS = {"output_text": "text", "refusal": "refusal"}


def _rebuilt_item(added: dict[str, Any], pieces: dict[tuple[str, int], list[str]]) -> dict[str, Any]:
    """An output item as its deltas built it (on `added`, the item as output_item.added gave it, if it came)."""
    texts = [(part, "".join(p)) for (part, _), p in sorted(pieces.items())]
    made = {part for part, _ in texts}
    kind = added.get("type") or (
        "function_call"
        if "arguments" in made
        else "reasoning"
        if made & {"summary", "reasoning_text"}
        else "message"
    )
    item = dict(added, type=kind)
    if kind == "function_call":
        item["arguments"] = "".join(text for part, text in texts if part == "arguments")
    elif kind == "reasoning":
        item["summary"] = [
            {"type": "summary_text", "text": text} for part, text in texts if part == "summary"
        ]
        item["content"] = [
            {"type": "reasoning_text", "text": text} for part, text in texts if part == "reasoning_text"
        ]
    else:
        item["content"] = [
            {"type": part, _MESSAGE_PARTS[part]: text} for part, text in texts if part in _MESSAGE_PARTS
        ]
    return item


# --------------------------------------------------------------------------------------- the record


def length_bucket(chars: int, bounds: list[int]) -> str:
    """Input-length bucket label, e.g. `0-500`, `500-2000`, `8000+`."""
    low = 0
    for high in bounds:
        if chars <= high:
            return f"{low}-{high}"
        low = high
    return f"{low}+"


def build_pair(
    *,
    pair_id: str,
    ts: str,
    route: str,
    stream: bool,
    request: dict[str, Any],
    tags: dict[str, str],
    primary: SideResult,
    candidate: SideResult,
    api: str | None = None,
    masked: dict[str, int] | None = None,
) -> PairRecord:
    """A `shadowtap.pair/v2` record; `api` defaults to the route's, `masked` (values masking changed in
    the request and in each side) to none."""
    counts = masked or {}
    return {
        "schema": PAIR_SCHEMA,
        "id": pair_id,
        "ts": ts,
        "route": route,
        "api": _api(api, route),
        "stream": stream,
        "request": request,
        "tags": tags,
        "masked": {
            "request": counts.get("request", 0),
            "primary": counts.get("primary", 0),
            "candidate": counts.get("candidate", 0),
        },
        "primary": primary.to_dict(),
        "candidate": candidate.to_dict(),
    }


def _api(api: str | None, route: str) -> Api:
    if api is None:
        return api_of_route(route)
    for known in APIS:
        if api == known:
            return known
    raise ValueError(f"api {api!r} is not one of {', '.join(APIS)}")
