"""The text of an OpenAI-style request: what the user wrote, read the same way everywhere.

The proxy buckets requests by their input length, the sentinel de-duplicates them by their text, the
judge shows them to a model and the simulated upstreams answer them: all read the text here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["content_text", "input_chars", "last_user_text", "request_parts", "request_text"]


def content_text(content: Any, *, placeholders: bool = False, sep: str = "\n") -> str:
    """A message's `content`: a string, or the `text` of its content parts joined by `sep`.

    With `placeholders`, a non-text part (an image, audio) stands as `[its type]`, and content of any
    other shape as its JSON, so a reader sees that something was there.
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif placeholders:
                parts.append(f"[{part.get('type', 'part')}]" if isinstance(part, dict) else str(part))
        return sep.join(parts)
    if content is None or not placeholders:
        return ""
    return json.dumps(content, ensure_ascii=False)


def request_parts(body: Mapping[str, Any]) -> list[str]:
    """Every piece of input text of a chat or completions request: message contents, then the prompt."""
    parts: list[str] = []
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(
                    p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        parts.append(prompt)
    elif isinstance(prompt, list):
        parts.extend(p for p in prompt if isinstance(p, str))
    return parts


def request_text(body: Mapping[str, Any]) -> str:
    """The input text of a request, its pieces one per line."""
    return "\n".join(request_parts(body))


def input_chars(body: Mapping[str, Any]) -> int:
    """Characters of input text in a request (what its length bucket is cut on)."""
    return sum(len(part) for part in request_parts(body))


def last_user_text(body: Mapping[str, Any]) -> str:
    """The last user message of a chat request, or the (last) prompt of a completions request."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return content_text(message.get("content"), sep=" ")
        return ""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], str):
        return prompt[-1]
    return prompt if isinstance(prompt, str) else ""
