"""Redaction applied before anything is written: PII masking of message contents and answer texts.

Secret headers never reach a record at all (records carry no headers); this module masks personal data
inside the texts: e-mail addresses, phone numbers, payment card numbers (Luhn-checked, so order numbers
and timestamps survive) and any configured patterns.
"""

from __future__ import annotations

import re
from typing import Any

from shadowtap.config import PiiSettings

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# 13-19 digits, optionally grouped by spaces or dashes.
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
# International or national numbers with at least 9 digits, common separators, optional extension.
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){2,4}(?![\w])"
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


class Redactor:
    """Masks PII in strings; `redact_request` walks a request body and masks every message text."""

    def __init__(self, settings: PiiSettings) -> None:
        self.enabled = settings.enabled
        self.settings = settings
        self.custom = [(name, re.compile(p)) for name, p in settings.patterns.items()]

    def text(self, value: str) -> str:
        if not self.enabled or not value:
            return value
        s = self.settings
        if s.emails and "@" in value:
            value = EMAIL.sub("[EMAIL]", value)
        if s.cards:
            value = CARD.sub(_mask_card, value)
        if s.phones:
            value = PHONE.sub(_mask_phone, value)
        for name, pattern in self.custom:
            value = pattern.sub(f"[{name.upper()}]", value)
        return value

    def redact_request(self, body: dict[str, Any]) -> dict[str, Any]:
        if not self.enabled:
            return body
        out = dict(body)
        if isinstance(out.get("messages"), list):
            out["messages"] = [self._message(m) for m in out["messages"]]
        if "prompt" in out:
            out["prompt"] = self._value(out["prompt"])
        if "input" in out:
            out["input"] = self._value(out["input"])
        return out

    def _message(self, message: Any) -> Any:
        if not isinstance(message, dict):
            return message
        m = dict(message)
        if "content" in m:
            m["content"] = self._value(m["content"])
        return m

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self._value(v) for v in value]
        if isinstance(value, dict):
            return {k: (self._value(v) if k in ("text", "content") else v) for k, v in value.items()}
        return value


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    if 13 <= len(digits) <= 19 and luhn_ok(digits):
        return "[CARD]"
    return match.group(0)


def _mask_phone(match: re.Match[str]) -> str:
    raw = match.group(0)
    digits = sum(ch.isdigit() for ch in raw)
    # Dates and versions (2024-01-15, 1.2.3) are not phone numbers; real ones have 9-15 digits.
    if digits < 9 or digits > 15:
        return raw
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw.strip()):
        return raw
    if raw.isdigit() and digits > 12:  # a bare long run of digits is an id, not a phone number
        return raw
    return "[PHONE]"
