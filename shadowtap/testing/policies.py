"""What a simulated model answers: the `Reply` to one request, and policies that choose it.

A policy is `(route, body) -> Reply`. `default_policy` answers the last user message (in JSON when the
request asks for JSON); `fixed`, `keyword_policy` and `sequence` build the scripted ones tests need.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from shadowtap.errors import openai_error_body
from shadowtap.request_text import content_text, last_user_text

__all__ = [
    "Fault",
    "Policy",
    "Reply",
    "count_tokens",
    "default_policy",
    "error_for",
    "fixed",
    "keyword_policy",
    "openai_error",
    "prompt_text",
    "schema_instance",
    "sequence",
    "split_chunks",
]

Fault = Literal[None, "hang", "garbage", "truncate", "close_midstream", "reset"]

WORDS_PER_CHUNK = 3


@dataclass
class Reply:
    """What the simulated model answers to one request.

    `ttft_s` delays the first chunk (the whole answer when not streamed); `token_delay_s` spaces the
    chunks. Faults: "hang" never answers; "garbage" is a 200 that does not parse; "truncate" ends a
    stream cleanly but without finish_reason or [DONE] (a plain answer gets half the text and "length");
    "close_midstream" drops the connection part-way through the body; "reset" drops it before any reply.
    """

    text: str = "Hello!"
    status: int = 200
    error_body: dict[str, Any] | None = None
    ttft_s: float = 0.0
    token_delay_s: float = 0.0
    finish_reason: str = "stop"
    fault: Fault = None
    headers: dict[str, str] = field(default_factory=dict)


Policy = Callable[[str, dict[str, Any]], Reply]


def openai_error(
    message: str, type_: str = "invalid_request_error", code: str | None = None
) -> dict[str, Any]:
    """An error body in the shape OpenAI's SDKs parse."""
    return openai_error_body(message, type_, code)


_STANDARD_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request (simulated).", "invalid_request_error", None),
    401: ("Incorrect API key provided (simulated).", "authentication_error", "invalid_api_key"),
    403: ("You are not allowed to use this model (simulated).", "permission_error", None),
    404: ("The model does not exist (simulated).", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests (simulated).", "requests", "rate_limit_exceeded"),
}
_SERVER_ERROR = ("The server had an error while processing your request (simulated).", "server_error", None)


def error_for(status: int) -> dict[str, Any]:
    """The error body a real server sends with `status`."""
    message, type_, code = _STANDARD_ERRORS.get(status, _SERVER_ERROR)
    return openai_error(message, type_, code)


def prompt_text(body: dict[str, Any]) -> str:
    """All the text of a request's messages (or its prompt), for the usage estimate."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return " ".join(content_text(m.get("content"), sep=" ") for m in messages if isinstance(m, dict))
    return last_user_text(body)


def count_tokens(text: str) -> int:
    """A token estimate good enough for usage fields: about 1.3 tokens a word."""
    return math.ceil(len(text.split()) * 1.3)


# ------------------------------------------------------------------------------------ JSON schema


def _schema_type(schema: dict[str, Any]) -> str:
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return str(kind)


def _object_instance(schema: dict[str, Any], answer: str) -> Any:
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        return {"answer": answer}
    wanted = schema.get("required") or list(properties)
    return {name: schema_instance(properties.get(name, {}), answer) for name in wanted}


def _typed_instance(schema: dict[str, Any], answer: str) -> Any:
    kind = _schema_type(schema)
    if kind == "object":
        return _object_instance(schema, answer)
    if kind == "array":
        return [schema_instance(schema.get("items", {}), answer) for _ in range(schema.get("minItems", 0))]
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    return {"string": answer, "boolean": True, "null": None}.get(kind, answer)


def schema_instance(schema: Any, answer: str) -> Any:
    """A small value that satisfies the common parts of a JSON schema, so format checks have a target."""
    if not isinstance(schema, dict):
        return {"answer": answer}
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return schema_instance(schema[key][0], answer)
    return _typed_instance(schema, answer)


# ------------------------------------------------------------------------------------ policies


def default_policy(route: str, body: dict[str, Any]) -> Reply:
    """A short deterministic answer to the last user message; JSON when the request asks for JSON."""
    answer = "Answer to: " + " ".join(last_user_text(body).split()[:8])
    response_format = body.get("response_format")
    if not isinstance(response_format, dict):
        return Reply(text=answer)
    kind = response_format.get("type")
    if kind == "json_object":
        return Reply(text=json.dumps({"answer": answer}))
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return Reply(text=json.dumps(schema_instance(schema, answer)))
    return Reply(text=answer)


def fixed(reply: Reply) -> Policy:
    """Every request gets `reply`."""
    return lambda route, body: reply


def keyword_policy(rules: dict[str, Reply], default: Policy = default_policy) -> Policy:
    """The first rule whose keyword appears in the last user message (case-insensitive) answers."""
    lowered = [(keyword.lower(), reply) for keyword, reply in rules.items()]

    def policy(route: str, body: dict[str, Any]) -> Reply:
        text = last_user_text(body).lower()
        return next((reply for keyword, reply in lowered if keyword in text), None) or default(route, body)

    return policy


def sequence(*replies: Reply) -> Policy:
    """Replies in order, one per request; the last one repeats (e.g. fail once, then answer)."""
    if not replies:
        raise ValueError("sequence() needs at least one reply")
    served = 0

    def policy(route: str, body: dict[str, Any]) -> Reply:
        nonlocal served
        served += 1
        return replies[min(served, len(replies)) - 1]

    return policy


def split_chunks(text: str, words_per_chunk: int = WORDS_PER_CHUNK) -> list[str]:
    """Stream pieces of a few words each; joined they give back `text` exactly."""
    words = re.findall(r"\S+\s*", text)
    if words:
        words[0] = text[: len(text) - len(text.lstrip())] + words[0]
    elif text:
        words = [text]
    return ["".join(words[i : i + words_per_chunk]) for i in range(0, len(words), words_per_chunk)]
