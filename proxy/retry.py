"""Retry detection: a user who asks the same thing again, soon, did not get what they needed.

The same conversation key (the sampling key, `shadow.sample_key`) sending the same last user message again
within `retry.window_s` is a retry on the earlier exchange. Memory is bounded: one entry per conversation
key, at most `retry.max_conversations` of them, the least recently seen forgotten first. Only a digest of
the message is kept, never its text.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from shadowtap.config import RetrySettings

__all__ = ["Exchange", "RetryDetector", "last_user_text", "message_digest"]


@dataclass(slots=True)
class Exchange:
    """What the proxy keeps of one primary exchange, for feedback and retries: filled in as it is learnt
    (the response id from the primary's first bytes, the pair id once the pair is recorded)."""

    segment: str | None
    response_id: str | None = None
    pair_id: str | None = None


@dataclass(slots=True)
class _Seen:
    digest: bytes
    at: float
    exchange: Exchange


def _content_text(content: Any) -> str | None:
    """A message's content as text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        texts = [t for t in parts if isinstance(t, str)]
        return "\n".join(texts) if texts else None
    return None


def _last_user_message(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role", "user") == "user":
            return _content_text(message.get("content"))
    return None


def last_user_text(route: str, body: dict[str, Any]) -> str | None:
    """The last thing the user said in a request: chat's last user message, the completions prompt, the
    Responses API's input (a string, or its last user item)."""
    if route.endswith("/chat/completions"):
        return _last_user_message(body.get("messages"))
    if route.endswith("/responses"):
        given = body.get("input")
        return given if isinstance(given, str) else _last_user_message(given)
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else None


def message_digest(route: str, body: dict[str, Any]) -> bytes | None:
    """What is remembered of a request's last user message: a digest of it and its route (None: it has
    none)."""
    text = last_user_text(route, body)
    if text is None:
        return None
    return hashlib.blake2b(f"{route}\0{text}".encode("utf-8", "replace"), digest_size=16).digest()


class RetryDetector:
    """Remembers each conversation key's last user message (as a digest) and when it was sent."""

    def __init__(self, settings: RetrySettings) -> None:
        self.window_s = settings.window_s
        self.max_conversations = settings.max_conversations
        self.max_body_bytes = settings.max_body_bytes
        self._last: OrderedDict[str, _Seen] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    @staticmethod
    def parse(raw_body: bytes) -> dict[str, Any] | None:
        try:
            body = json.loads(raw_body)
        except (ValueError, RecursionError):
            return None
        return body if isinstance(body, dict) else None

    def observe(
        self, key: str, route: str, body: dict[str, Any], exchange: Exchange, now: float
    ) -> Exchange | None:
        """Note this request; the earlier exchange it retries, if it is a retry."""
        digest = message_digest(route, body)
        return None if digest is None else self.observe_digest(key, digest, exchange, now)

    def observe_digest(self, key: str, digest: bytes, exchange: Exchange, now: float) -> Exchange | None:
        """`observe` for a request whose `message_digest` was taken elsewhere (a large body's, off the
        proxy's event loop)."""
        earlier = self._last.pop(key, None)
        self._last[key] = _Seen(digest, now, exchange)
        while len(self._last) > self.max_conversations:
            self._last.popitem(last=False)
        if earlier is not None and earlier.digest == digest and now - earlier.at <= self.window_s:
            return earlier.exchange
        return None
