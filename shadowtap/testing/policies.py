"""What a simulated model answers: the `Reply` to one request, and policies that choose it.

A policy is `(route, body) -> Reply`. `default_policy` answers the last user message (in JSON when the
request asks for JSON, with a call when the request forces a tool); `fixed`, `keyword_policy` and
`sequence` build the scripted ones tests need. The request readers here (`user_text`, `prompts`,
`requested_n`) see chat, completions and Responses API bodies alike.
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
    "ReasoningField",
    "ReasoningItem",
    "Reply",
    "ToolCall",
    "count_tokens",
    "default_policy",
    "error_for",
    "fixed",
    "keyword_policy",
    "openai_error",
    "prompt_text",
    "prompts",
    "requested_n",
    "schema_instance",
    "sequence",
    "split_chunks",
    "user_text",
]

Fault = Literal[None, "hang", "garbage", "truncate", "close_midstream", "reset"]
# Where chat answers carry reasoning: current vLLM's `reasoning` (renamed in vllm-project/vllm#27752,
# the old name dropped in #33402), the older `reasoning_content` (DeepSeek's name, older vLLM), or both.
ReasoningField = Literal["reasoning", "reasoning_content", "both"]
# How the Responses API carries reasoning: OpenAI's `summary` of `summary_text` parts, or vLLM's
# `content` of `reasoning_text` parts (with an empty summary).
ReasoningItem = Literal["summary", "text"]

WORDS_PER_CHUNK = 3
MAX_CHOICES = 128


@dataclass(frozen=True)
class ToolCall:
    """One function call in a reply. `arguments` goes on the wire exactly as given, so a broken call
    is a string that does not parse or does not fit the schema; `id` is drawn per request (`call_...`)
    when None."""

    name: str
    arguments: str = "{}"
    id: str | None = None


@dataclass
class Reply:
    """What the simulated model answers to one request.

    `text` is the answer (chat `content`, completions `text`, Responses `output_text`); `choices` gives
    choice i its own text (chat with `n`, completions with a prompt array: index = prompt * n + sample),
    the rest get `text`. `tool_calls` are (name, arguments) pairs or `ToolCall`s; with calls, `text=""`
    sends `content: null`, and finish_reason "stop" becomes "tool_calls" (not for a named tool_choice).
    `reasoning` goes out as `reasoning_field` says (chat) and as `reasoning_item` says (Responses).
    `refusal` replaces the text: `message.refusal` with `content: null`, a Responses `refusal` part.
    Completions answers carry only text.

    `ttft_s` delays the first chunk (the whole answer when not streamed); `token_delay_s` spaces the
    chunks. Faults: "hang" never answers; "garbage" is a 200 that does not parse; "truncate" ends a
    stream cleanly but without finish_reason or [DONE] (or `response.completed`); a plain answer gets
    the first half of what would have streamed and "length" (Responses: status "incomplete");
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
    tool_calls: list[ToolCall | tuple[str, str]] = field(default_factory=list)
    choices: list[str] | None = None
    reasoning: str | None = None
    reasoning_field: ReasoningField = "reasoning"
    reasoning_item: ReasoningItem = "summary"
    refusal: str | None = None

    def calls(self) -> list[ToolCall]:
        """The tool calls as `ToolCall`s."""
        return [call if isinstance(call, ToolCall) else ToolCall(*call) for call in self.tool_calls]

    def choice_text(self, index: int) -> str:
        """The text of choice `index`."""
        if self.choices is not None and index < len(self.choices):
            return self.choices[index]
        return self.text


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


# ------------------------------------------------------------------------------------ reading requests


def _input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A Responses API request's `input` as a list of items (a string is one user message)."""
    items = body.get("input")
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def user_text(body: dict[str, Any]) -> str:
    """The last user message of a chat or Responses API request, or the (last) prompt of a completion."""
    if "input" in body and "messages" not in body:
        users = [item for item in _input_items(body) if item.get("role") == "user"]
        return content_text(users[-1].get("content"), sep=" ") if users else ""
    return last_user_text(body)


def prompts(body: dict[str, Any]) -> list[Any]:
    """The prompts of a completions request: a string, a list of token ids, or an array of either."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str | list) for p in prompt):
        return prompt
    return [prompt]


def requested_n(body: dict[str, Any]) -> int:
    """How many choices the request asks for per prompt (`n`, 1 when absent or not a count)."""
    n = body.get("n")
    return min(n, MAX_CHOICES) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def prompt_text(body: dict[str, Any]) -> str:
    """All the text of a request's messages, input and instructions (or its prompts), for usage."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return " ".join(content_text(m.get("content"), sep=" ") for m in messages if isinstance(m, dict))
    if "input" in body:
        texts = [content_text(item.get("content"), sep=" ") for item in _input_items(body)]
        instructions = body.get("instructions")
        return " ".join([instructions if isinstance(instructions, str) else "", *texts])
    return " ".join(p for p in prompts(body) if isinstance(p, str))


# Characters of a text whose words are counted; a longer text's count is scaled from theirs.
COUNTED_CHARS = 64 * 1024


def count_tokens(text: str) -> int:
    """A token estimate good enough for usage fields: about 1.3 tokens a word. A text over COUNTED_CHARS
    is estimated from its head (splitting 5 MB into words took 80-100 ms, a pause in which the simulated
    server answered nobody else)."""
    if len(text) <= COUNTED_CHARS:
        return math.ceil(len(text.split()) * 1.3)
    words = len(text[:COUNTED_CHARS].split()) * len(text) / COUNTED_CHARS
    return math.ceil(words * 1.3)


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


def _answer_to(text: str) -> str:
    # The first eight words, looked for in the text's head: a prompt of megabytes costs no more.
    return "Answer to: " + " ".join(text[:4096].split()[:8])


def _json_answer(body: dict[str, Any], answer: str) -> str | None:
    """The answer as JSON when the request asks for JSON (chat `response_format`, Responses
    `text.format`, whose schema sits in the format itself), else None."""
    chat_format, text = body.get("response_format"), body.get("text")
    response_format = chat_format if isinstance(chat_format, dict) else None
    if response_format is None and isinstance(text, dict) and isinstance(text.get("format"), dict):
        response_format = {**text["format"], "json_schema": text["format"]}
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return json.dumps({"answer": answer})
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        return json.dumps(schema_instance(spec.get("schema") if isinstance(spec, dict) else None, answer))
    return None


def _function(tool: Any) -> dict[str, Any]:
    """A tool's function definition: nested under `function` (chat) or flat (Responses API)."""
    if not isinstance(tool, dict):
        return {}
    function = tool.get("function", tool)
    return function if isinstance(function, dict) else {}


def _forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function the request makes the model call (`tool_choice` "required" or a named one)."""
    tools = [_function(tool) for tool in body.get("tools") or [] if _function(tool).get("name")]
    choice = body.get("tool_choice")
    if choice == "required" and tools:
        return tools[0]
    if isinstance(choice, dict):
        name = _function(choice).get("name")
        return next((tool for tool in tools if tool["name"] == name), None)
    return None


def default_policy(route: str, body: dict[str, Any]) -> Reply:
    """A short deterministic answer to the last user message; JSON when the request asks for JSON; a
    call with arguments that fit the schema when it forces a tool; one answer per prompt of an array."""
    answer = _answer_to(user_text(body))
    tool = _forced_tool(body)
    if tool is not None:
        arguments = json.dumps(schema_instance(tool.get("parameters") or {"type": "object"}, answer))
        return Reply(text="", tool_calls=[ToolCall(tool["name"], arguments)])
    texts = prompts(body) if "prompt" in body else []
    if len(texts) > 1:
        per_prompt = [_answer_to(p) if isinstance(p, str) else answer for p in texts]
        return Reply(text=answer, choices=[text for text in per_prompt for _ in range(requested_n(body))])
    return Reply(text=_json_answer(body, answer) or answer)


def fixed(reply: Reply) -> Policy:
    """Every request gets `reply`."""
    return lambda route, body: reply


def keyword_policy(rules: dict[str, Reply], default: Policy = default_policy) -> Policy:
    """The first rule whose keyword appears in the last user message (case-insensitive) answers."""
    lowered = [(keyword.lower(), reply) for keyword, reply in rules.items()]

    def policy(route: str, body: dict[str, Any]) -> Reply:
        text = user_text(body).lower()
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
