"""The one exception tree: everything shadowtap raises on purpose is a `ShadowtapError`.

Catch `ShadowtapError` to handle any of them; the subclasses say which part gave up. A configuration
problem is also a `ValueError`, so code that validates input with `except ValueError` still sees it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "openai_error_body",
    "BudgetExhausted",
    "ConfigError",
    "DemoError",
    "GateError",
    "JudgeError",
    "MalformedVerdict",
    "PrimaryStreamBroken",
    "SetError",
    "SetExistsError",
    "ShadowtapError",
]


class ShadowtapError(Exception):
    """The base of every error shadowtap raises on purpose."""


class ConfigError(ShadowtapError, ValueError):
    """A configuration problem, phrased for the person who wrote the config: `key: problem`."""


class JudgeError(ShadowtapError):
    """The judge could not give a verdict (its endpoint failed, or kept failing)."""


class MalformedVerdict(JudgeError):
    """The judge's reply was not a valid verdict, even after one correction."""


class BudgetExhausted(JudgeError):
    """The judge's token budget for the rolling window is spent."""


class SetError(ShadowtapError):
    """A sentinel set that cannot be read, or one that was changed after it was built."""


class SetExistsError(SetError):
    """The output directory already holds a different set; sets are never overwritten."""


class GateError(ShadowtapError):
    """Two sentinel runs cannot be compared (different set, scorers or prompt)."""


class DemoError(ShadowtapError):
    """The demo cannot run as asked (e.g. its data directory holds someone else's records)."""


class PrimaryStreamBroken(ShadowtapError):
    """The primary's stream broke part-way; the client's response is cut short the same way, not ended
    cleanly, so the client sees a broken stream just as it would calling the primary directly."""


def openai_error_body(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    """An error body in the shape OpenAI's SDKs parse: `{"error": {message, type, param, code}}`."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}
