"""The Responses API on the wire (`POST /v1/responses`): the `response` object and its typed events.

Shapes follow OpenAI's API reference (the `response` object, "Responses streaming events") and the
types of the openai SDK (`types/responses/`); vLLM's server emits the same events
(vllm/entrypoints/openai/responses/simple_streaming_events.py), `event: <type>` and `data: {...}` with
a `sequence_number`, and no `[DONE]`. Items: `reasoning` (OpenAI's `summary` of `summary_text`, or
vLLM's `content` of `reasoning_text`), one `message` (an `output_text` part, or a `refusal` part),
then one `function_call` per call.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from shadowtap.testing.policies import ReasoningItem, count_tokens, prompt_text
from shadowtap.testing.script import Choice, Piece, random_id, usage

__all__ = ["ResponseStream", "response_document"]

# Request fields a response echoes, with what it says when the request left them out.
ECHOED: dict[str, Any] = {
    "instructions": None,
    "max_output_tokens": None,
    "max_tool_calls": None,
    "metadata": {},
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": {"effort": None, "summary": None},
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_logprobs": 0,
    "top_p": 1.0,
    "truncation": "disabled",
    "user": None,
}


@dataclass
class _Item:
    """One output item: its kind, id, and the item when done (`done`)."""

    kind: str  # reasoning, message or function_call
    id: str
    done: dict[str, Any]
    part: str = ""  # the message's part type (output_text or refusal), the reasoning's (summary or text)


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _items(choice: Choice, reasoning_item: ReasoningItem) -> list[_Item]:
    items = []
    if choice.reasoning is not None:
        item: dict[str, Any] = {
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": choice.reasoning}],
        }
        if reasoning_item == "text":
            item = {
                "type": "reasoning",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": choice.reasoning}],
            }
        rs_id = random_id("rs_", 32)
        items.append(_Item("reasoning", rs_id, {"id": rs_id, **item}, reasoning_item))
    if choice.refusal is not None or choice.text or not choice.calls:
        refused = choice.refusal is not None
        part: dict[str, Any] = {"type": "refusal", "refusal": choice.refusal}
        if not refused:
            part = _text_part(choice.text)
        msg_id = random_id("msg_", 32)
        message = {
            "id": msg_id,
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }
        items.append(_Item("message", msg_id, message, "refusal" if refused else "output_text"))
    for call in choice.calls:
        fc_id = random_id("fc_", 32)
        done = {"id": fc_id, "type": "function_call", "status": "completed"}
        done |= {"arguments": call.arguments, "call_id": call.id, "name": call.name}
        items.append(_Item("function_call", fc_id, done))
    return items


def _usage(body: dict[str, Any], choice: Choice) -> dict[str, Any]:
    prompt, completion, reasoning = usage(count_tokens(prompt_text(body)), [choice])
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


class _Envelope:
    """What every `response` object of one answer shares: its id, time, model and echoed request."""

    def __init__(self, body: dict[str, Any], model: str) -> None:
        self.id = random_id("resp_", 32)
        self.created_at = int(time.time())
        self.model = model
        self.echoed = {key: body.get(key, default) for key, default in ECHOED.items()}

    def document(
        self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None
    ) -> dict[str, Any]:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": None,
            "incomplete_details": incomplete,
            "model": self.model,
            "output": output,
            "service_tier": "default",
            "usage": usage,
            **self.echoed,
        }


def _status(choice: Choice) -> str:
    return "incomplete" if choice.finish_reason == "length" else "completed"


def response_document(
    body: dict[str, Any], model: str, choice: Choice, reasoning_item: ReasoningItem
) -> dict[str, Any]:
    """A whole `response` object."""
    output = [item.done for item in _items(choice, reasoning_item)]
    return _Envelope(body, model).document(_status(choice), output, _usage(body, choice))


class ResponseStream:
    """The typed events of one streamed response: each item opened when its first piece comes (and
    the one before it closed), deltas, and the whole response at the end."""

    def __init__(
        self, body: dict[str, Any], model: str, choice: Choice, reasoning_item: ReasoningItem
    ) -> None:
        self.body = body
        self.choice = choice
        self.envelope = _Envelope(body, model)
        self.items = _items(choice, reasoning_item)
        self.sequence = 0
        self.opened = 0  # items opened so far; all but the last of them are closed

    def _event(self, kind: str, **fields: Any) -> bytes:
        doc = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: ".encode() + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"

    def opening(self) -> bytes:
        started = self.envelope.document("in_progress", [], None)
        return self._event("response.created", response=started) + self._event(
            "response.in_progress", response=started
        )

    def _item_of(self, piece: Piece) -> int:
        kind = {"reasoning": "reasoning", "content": "message", "refusal": "message"}.get(
            piece.kind, "function_call"
        )
        matching = [i for i, item in enumerate(self.items) if item.kind == kind]
        return matching[piece.call] if kind == "function_call" else matching[0]

    def _open_through(self, index: int) -> bytes:
        events = b""
        while self.opened <= index:
            if self.opened:
                events += self._close(self.opened - 1)
            events += self._open(self.opened)
            self.opened += 1
        return events

    def _open(self, index: int) -> bytes:
        item = self.items[index]
        where = {"item_id": item.id, "output_index": index}
        if item.kind == "function_call":
            started = {**item.done, "status": "in_progress", "arguments": ""}
            return self._event("response.output_item.added", output_index=index, item=started)
        if item.kind == "reasoning":
            started = {"id": item.id, "type": "reasoning", "summary": []}
            added = self._event("response.output_item.added", output_index=index, item=started)
            if item.part == "summary":
                part = {"type": "summary_text", "text": ""}
                return added + self._event(
                    "response.reasoning_summary_part.added", **where, summary_index=0, part=part
                )
            part = {"type": "reasoning_text", "text": ""}
            return added + self._event("response.content_part.added", **where, content_index=0, part=part)
        started = {**item.done, "status": "in_progress", "content": []}
        added = self._event("response.output_item.added", output_index=index, item=started)
        part = {"type": "refusal", "refusal": ""} if item.part == "refusal" else _text_part("")
        return added + self._event("response.content_part.added", **where, content_index=0, part=part)

    def _close(self, index: int) -> bytes:
        """The item's closing events, in order: its text (or arguments) done, its part done, itself."""
        item = self.items[index]
        return self._finish_part(index, item) + self._event(
            "response.output_item.done", output_index=index, item=item.done
        )

    def _finish_part(self, index: int, item: _Item) -> bytes:
        where = {"item_id": item.id, "output_index": index}
        if item.kind == "function_call":
            name, arguments = item.done["name"], item.done["arguments"]
            return self._event(
                "response.function_call_arguments.done", **where, arguments=arguments, name=name
            )
        if item.kind == "reasoning" and item.part == "summary":
            part = item.done["summary"][0]
            text = self._event(
                "response.reasoning_summary_text.done", **where, summary_index=0, text=part["text"]
            )
            return text + self._event(
                "response.reasoning_summary_part.done", **where, summary_index=0, part=part
            )
        part = item.done["content"][0]
        if part["type"] == "refusal":
            text = self._event("response.refusal.done", **where, content_index=0, refusal=part["refusal"])
        elif part["type"] == "reasoning_text":
            text = self._event("response.reasoning_text.done", **where, content_index=0, text=part["text"])
        else:
            text = self._event(
                "response.output_text.done", **where, content_index=0, text=part["text"], logprobs=[]
            )
        return text + self._event("response.content_part.done", **where, content_index=0, part=part)

    def piece(self, piece: Piece) -> bytes:
        index = self._item_of(piece)
        events = self._open_through(index)
        item = self.items[index]
        where = {"item_id": item.id, "output_index": index}
        if piece.kind == "tool":
            return events
        if piece.kind == "arguments":
            return events + self._event("response.function_call_arguments.delta", **where, delta=piece.text)
        if piece.kind == "refusal":
            return events + self._event("response.refusal.delta", **where, content_index=0, delta=piece.text)
        if piece.kind == "content":
            delta = self._event(
                "response.output_text.delta", **where, content_index=0, delta=piece.text, logprobs=[]
            )
            return events + delta
        if item.part == "summary":
            return events + self._event(
                "response.reasoning_summary_text.delta", **where, summary_index=0, delta=piece.text
            )
        return events + self._event(
            "response.reasoning_text.delta", **where, content_index=0, delta=piece.text
        )

    def closing(self) -> bytes:
        """Open what has not been (an item with nothing to stream), close the last, then the response."""
        events = self._open_through(len(self.items) - 1) + (
            self._close(len(self.items) - 1) if self.items else b""
        )
        status = _status(self.choice)
        whole = self.envelope.document(
            status, [item.done for item in self.items], _usage(self.body, self.choice)
        )
        return events + self._event(f"response.{status}", response=whole)
