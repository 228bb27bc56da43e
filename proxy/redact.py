"""Redaction applied before anything is written: PII masking of message contents and answer texts.

Secret headers never reach a record at all (records carry no headers); this module masks personal data
inside the texts: e-mail addresses, phone numbers, payment card numbers (Luhn-checked, so order numbers
and timestamps survive) and any configured patterns.
"""

from __future__ import annotations

import asyncio
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


_DIGIT = re.compile(r"\d")
# Long texts are masked a piece at a time, so that masking never holds the event loop for long.
SLICE_CHARS = 16 * 1024
# Where a text may be cut without changing what a built-in pattern matches: after a character none of
# them can contain, after a letter followed by whitespace (only an e-mail ends in a letter, and no
# pattern matches across whitespace after one), or between two whitespace characters (card and phone
# numbers allow one separator at a time). Lookarounds see the same on either side of such a cut.
_CUT = re.compile(r"[^\w\s.%+\-@()]|[^\W\d_](?=\s)|\s(?=\s)")


def pieces(value: str, size: int = SLICE_CHARS) -> list[str]:
    """`value` cut into pieces of about `size` characters at points where masking each piece equals
    masking the whole (a text with nowhere to cut stays whole)."""
    out: list[str] = []
    start = 0
    while len(value) - start > size:
        cut = _CUT.search(value, start + size)
        if cut is None:
            break
        out.append(value[start : cut.end()])
        start = cut.end()
    out.append(value[start:])
    return out


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
        if len(value) > SLICE_CHARS:
            value = "".join(self._builtin(piece) for piece in pieces(value))
        else:
            value = self._builtin(value)
        return self._custom(value)

    async def atext(self, value: str) -> str:
        """`text`, letting the event loop run between the pieces of a long text. Configured patterns,
        which may match across any cut, run over the whole text."""
        if not self.enabled or len(value) <= SLICE_CHARS:
            return self.text(value)
        masked = []
        for piece in pieces(value, SLICE_CHARS):
            masked.append(self._builtin(piece))
            await asyncio.sleep(0)
        return self._custom("".join(masked))

    def _builtin(self, value: str) -> str:
        s = self.settings
        if s.emails and "@" in value:
            value = EMAIL.sub("[EMAIL]", value)
        # Card and phone numbers need digits; finding none is ~100x cheaper than trying the patterns at
        # every position (which a long answer of prose, whitespace or padding would make them do).
        if (s.cards or s.phones) and _DIGIT.search(value) is not None:
            if s.cards:
                value = CARD.sub(_mask_card, value)
            if s.phones:
                value = PHONE.sub(_mask_phone, value)
        return value

    def _custom(self, value: str) -> str:
        for name, pattern in self.custom:
            value = pattern.sub(f"[{name.upper()}]", value)
        return value

    async def redact_request(self, body: dict[str, Any]) -> dict[str, Any]:
        """The request body with every message text masked (`atext`: long prompts in pieces)."""
        if not self.enabled:
            return body
        out = dict(body)
        if isinstance(out.get("messages"), list):
            out["messages"] = [await self._message(m) for m in out["messages"]]
        if "prompt" in out:
            out["prompt"] = await self._value(out["prompt"])
        if "input" in out:
            out["input"] = await self._value(out["input"])
        return out

    async def _message(self, message: Any) -> Any:
        if not isinstance(message, dict):
            return message
        m = dict(message)
        if "content" in m:
            m["content"] = await self._value(m["content"])
        return m

    async def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return await self.atext(value)
        if isinstance(value, list):
            return [await self._value(v) for v in value]
        if isinstance(value, dict):
            return {k: (await self._value(v) if k in ("text", "content") else v) for k, v in value.items()}
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
