"""What one `Reply` becomes for one request, before any wire format: its choices, and the pieces they
stream in.

Chat, completions and the Responses API all stream the same pieces (reasoning, then the text or the
refusal, then each tool call: a head with its name, then its arguments a few characters at a time),
choices interleaved as a server decoding them together sends them. A plain answer cut short by the
"truncate" fault is put back together from the first half of those pieces, so streamed and plain
answers agree on what a cut-off model said.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from shadowtap.testing.policies import Reply, count_tokens, prompts, requested_n, split_chunks

__all__ = ["Call", "Choice", "Piece", "PieceKind", "choices_for", "count_pieces", "cut", "pieces", "usage"]

Api = Literal["chat", "text", "responses"]
PieceKind = Literal["reasoning", "content", "refusal", "tool", "arguments"]

ARGUMENT_CHARS = 8


def random_id(prefix: str, length: int = 24) -> str:
    return prefix + uuid.uuid4().hex[:length]


@dataclass(frozen=True)
class Call:
    """A tool call as it goes on the wire."""

    id: str
    name: str
    arguments: str


@dataclass
class Choice:
    """One choice of an answer (the only one for the Responses API)."""

    index: int
    text: str
    finish_reason: str
    reasoning: str | None = None
    refusal: str | None = None
    calls: list[Call] = field(default_factory=list)


@dataclass(frozen=True)
class Piece:
    """One streamed delta: which choice, what kind, its text, and for tool calls which call."""

    choice: int
    kind: PieceKind
    text: str = ""
    call: int = 0


def _named_tool_choice(body: dict[str, Any]) -> bool:
    return isinstance(body.get("tool_choice"), dict)


def _choice_count(api: Api, body: dict[str, Any]) -> int:
    if api == "responses":
        return 1
    per_prompt = requested_n(body)
    return per_prompt * len(prompts(body)) if api == "text" else per_prompt


def choices_for(api: Api, body: dict[str, Any], reply: Reply) -> list[Choice]:
    """The choices `reply` answers `body` with: as many as the request asks for, each call with its id.

    As in OpenAI's API and vLLM, a choice that calls tools finishes with "tool_calls" rather than
    "stop", unless the request named the function in `tool_choice`.
    """
    choices = []
    for index in range(_choice_count(api, body)):
        text = reply.choice_text(index)
        if api == "text":
            choices.append(Choice(index, text, reply.finish_reason))
            continue
        calls = [Call(c.id or random_id("call_"), c.name, c.arguments) for c in reply.calls()]
        finish_reason = reply.finish_reason
        if calls and finish_reason == "stop" and not _named_tool_choice(body):
            finish_reason = "tool_calls"
        choices.append(Choice(index, text, finish_reason, reply.reasoning, reply.refusal, calls))
    return choices


def _split_arguments(arguments: str) -> list[str]:
    return [arguments[i : i + ARGUMENT_CHARS] for i in range(0, len(arguments), ARGUMENT_CHARS)]


def _choice_pieces(choice: Choice) -> Iterator[Piece]:
    for piece in split_chunks(choice.reasoning or ""):
        yield Piece(choice.index, "reasoning", piece)
    if choice.refusal is not None:
        for piece in split_chunks(choice.refusal):
            yield Piece(choice.index, "refusal", piece)
    else:
        for piece in split_chunks(choice.text):
            yield Piece(choice.index, "content", piece)
    for number, call in enumerate(choice.calls):
        yield Piece(choice.index, "tool", call=number)
        for piece in _split_arguments(call.arguments):
            yield Piece(choice.index, "arguments", piece, number)


def pieces(choices: list[Choice]) -> list[Piece]:
    """Every choice's pieces in stream order: one from each choice in turn, as a batched server sends."""
    queues = [list(_choice_pieces(choice)) for choice in choices]
    ordered: list[Piece] = []
    for step in range(max((len(q) for q in queues), default=0)):
        ordered.extend(queue[step] for queue in queues if step < len(queue))
    return ordered


def count_pieces(choices: list[Choice]) -> int:
    return len(pieces(choices))


def _joined(pieces_of: list[Piece], kind: PieceKind, call: int | None = None) -> str:
    return "".join(p.text for p in pieces_of if p.kind == kind and (call is None or p.call == call))


def cut(choices: list[Choice], keep: int) -> list[Choice]:
    """The choices as far as the first `keep` pieces got, each finished by "length"."""
    kept = pieces(choices)[:keep]
    cut_choices = []
    for choice in choices:
        mine = [p for p in kept if p.choice == choice.index]
        started = {p.call for p in mine if p.kind == "tool"}
        calls = [
            replace(call, arguments=_joined(mine, "arguments", number))
            for number, call in enumerate(choice.calls)
            if number in started
        ]
        cut_choices.append(
            Choice(
                choice.index,
                _joined(mine, "content"),
                "length",
                None if choice.reasoning is None else _joined(mine, "reasoning"),
                None if choice.refusal is None else _joined(mine, "refusal"),
                calls,
            )
        )
    return cut_choices


def completion_tokens(choice: Choice) -> int:
    """The generated tokens of a choice: its reasoning, text or refusal, and call arguments."""
    spoken = choice.refusal if choice.refusal is not None else choice.text
    arguments = sum(count_tokens(call.arguments) + 1 for call in choice.calls)
    return count_tokens(choice.reasoning or "") + count_tokens(spoken) + arguments


def usage(prompt_tokens: int, choices: list[Choice]) -> tuple[int, int, int]:
    """(prompt, completion, reasoning) token counts over all choices."""
    completion = sum(completion_tokens(choice) for choice in choices)
    return prompt_tokens, completion, sum(count_tokens(choice.reasoning or "") for choice in choices)
