"""Chat and text completions on the wire: the plain documents and the server-sent chunks.

Shapes follow vLLM's OpenAI-compatible server (`ChatMessage`, `DeltaMessage`, `DeltaToolCall` in
vllm/entrypoints/openai/chat_completion/protocol.py and generate/base/protocol.py; the stream of
chat_completion/serving.py: a role chunk per choice, deltas, a finish chunk per choice, the usage
chunk, `[DONE]`) and OpenAI's recorded streams (a refusal's role chunk `content: null, refusal: ""`;
a tool call's first delta with its id, type, name and empty arguments).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from shadowtap.testing.policies import ReasoningField, count_tokens, prompt_text
from shadowtap.testing.script import Api, Choice, Piece, usage

__all__ = ["CompletionStream", "completion_document", "sse"]


def sse(doc: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


def _choice(index: int, key: str, value: Any, finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": index, key: value, "logprobs": None, "finish_reason": finish_reason}


def _envelope(api: Api, model: str, *, stream: bool) -> dict[str, Any]:
    if api == "chat":
        prefix, obj = "chatcmpl-", "chat.completion.chunk" if stream else "chat.completion"
    else:
        prefix, obj = "cmpl-", "text_completion"
    return {"id": prefix + uuid.uuid4().hex[:24], "object": obj, "created": int(time.time()), "model": model}


def _usage(body: dict[str, Any], choices: list[Choice]) -> dict[str, Any]:
    prompt, completion, reasoning = usage(count_tokens(prompt_text(body)), choices)
    doc: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if reasoning:
        doc["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return doc


def _reasoning(field: ReasoningField, text: str) -> dict[str, str]:
    names = ("reasoning", "reasoning_content") if field == "both" else (field,)
    return {name: text for name in names}


def _message(choice: Choice, field: ReasoningField) -> dict[str, Any]:
    content: str | None = choice.text
    if choice.refusal is not None or (choice.calls and not choice.text):
        content = None
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": choice.refusal}
    if choice.calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in choice.calls
        ]
    if choice.reasoning is not None:
        message.update(_reasoning(field, choice.reasoning))
    return message


def completion_document(
    api: Api, body: dict[str, Any], model: str, choices: list[Choice], field: ReasoningField
) -> dict[str, Any]:
    """A whole chat completion or text completion."""
    if api == "chat":
        listed = [_choice(c.index, "message", _message(c, field), c.finish_reason) for c in choices]
    else:
        listed = [_choice(c.index, "text", c.text, c.finish_reason) for c in choices]
    return {**_envelope(api, model, stream=False), "choices": listed, "usage": _usage(body, choices)}


class CompletionStream:
    """The server-sent events of one streamed completion; every chunk repeats the same envelope."""

    def __init__(
        self, api: Api, body: dict[str, Any], model: str, choices: list[Choice], field: ReasoningField
    ) -> None:
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True
        self.chat = api == "chat"
        self.body = body
        self.choices = choices
        self.field = field
        self.head = _envelope(api, model, stream=True)
        if self.include_usage:
            self.head["usage"] = None

    def _chunk(self, choice: dict[str, Any]) -> bytes:
        return sse({**self.head, "choices": [choice]})

    def opening(self) -> bytes:
        """A chat stream's role chunk for each choice (a refusal's says so); nothing for completions."""
        if not self.chat:
            return b""
        roles = []
        for choice in self.choices:
            delta: dict[str, Any] = {"role": "assistant", "content": ""}
            if choice.refusal is not None:
                delta = {"role": "assistant", "content": None, "refusal": ""}
            roles.append(self._chunk(_choice(choice.index, "delta", delta)))
        return b"".join(roles)

    def _delta(self, piece: Piece) -> dict[str, Any]:
        if piece.kind == "reasoning":
            return _reasoning(self.field, piece.text)
        if piece.kind == "tool":
            call = self.choices[piece.choice].calls[piece.call]
            function = {"name": call.name, "arguments": ""}
            return {
                "tool_calls": [{"index": piece.call, "id": call.id, "type": "function", "function": function}]
            }
        if piece.kind == "arguments":
            return {"tool_calls": [{"index": piece.call, "function": {"arguments": piece.text}}]}
        return {piece.kind: piece.text}  # content or refusal

    def piece(self, piece: Piece) -> bytes:
        if not self.chat:
            return self._chunk(_choice(piece.choice, "text", piece.text))
        return self._chunk(_choice(piece.choice, "delta", self._delta(piece)))

    def closing(self) -> bytes:
        """A finish chunk for each choice, the usage chunk when asked for, and `[DONE]`."""
        key, empty = ("delta", {}) if self.chat else ("text", "")
        chunks = [self._chunk(_choice(c.index, key, empty, c.finish_reason)) for c in self.choices]
        if self.include_usage:
            chunks.append(sse({**self.head, "choices": [], "usage": _usage(self.body, self.choices)}))
        return b"".join([*chunks, b"data: [DONE]\n\n"])
