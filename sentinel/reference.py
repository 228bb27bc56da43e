"""The scorer that compares an answer with the set's labelled expected answer, beside the production scorers.

Where a human has filled in an example's `expected` answer (or a reasoning probe knows it by
construction), `ReferenceMatchScorer` checks the answer against it (exact, normalised, contains, or
numeric match), so factual and reasoning errors are measured where ground truth exists. The judge is
not asked against the reference production wrote itself (that reference ties with itself by
construction); it compares runs head to head (headtohead.py).

It reads a sentinel pair: a pair record whose `primary` side is the reference, whose `candidate` side
is the replayed answer, and whose `sentinel` object carries `expected`, `match` and `tolerance`.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

from shadowtap.records import PairRecord, Score
from shadowtap.scorers.base import side_text
from shadowtap.sentinel.dedup import normalise_text
from shadowtap.sentinel.replay import sentinel_labels

MATCH_METHODS = ("exact", "normalised", "contains", "numeric", "last_line")
DEFAULT_REL_TOLERANCE = 1e-6
DEFAULT_ABS_TOLERANCE = 1e-9

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_NUMBER = re.compile(
    r"(?<![\w.])[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|(?<![\w.])[-+]?\.\d+"
)


def normalise_answer(text: str) -> str:
    """Case, punctuation, articles and spacing removed (the usual exact-match normalisation)."""
    return " ".join(_ARTICLES.sub(" ", normalise_text(text)).split())


def parse_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        cleaned = value.strip().replace(",", "").replace("−", "-").removeprefix("$").removesuffix("%")
        try:
            number = float(cleaned)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def numbers_in(text: str) -> list[float]:
    found = []
    for match in _NUMBER.finditer(text):
        number = parse_number(match.group(0))
        if number is not None:
            found.append(number)
    return found


def default_method(expected: Any) -> str:
    """Numeric when the expected answer is a number, normalised otherwise."""
    return "numeric" if parse_number(expected) is not None else "normalised"


def matches(
    answer: str, expected: Any, method: str, tolerance: float | None = None
) -> tuple[bool, dict[str, Any]]:
    """Whether `answer` matches `expected` by `method`, with what was compared (for the score detail).

    numeric: the last number in the answer (where a worked answer ends) equals the expected number
    within `tolerance` (absolute), or a relative 1e-6 when none is given. last_line: the last non-empty
    line, normalised and without a leading "answer:", equals the expected answer.
    """
    if method == "exact":
        return answer.strip() == str(expected).strip(), {}
    if method == "normalised":
        return normalise_answer(answer) == normalise_answer(str(expected)), {}
    if method == "last_line":
        lines = [line for line in answer.splitlines() if line.strip()]
        final = normalise_answer(lines[-1]) if lines else ""
        final = final.removeprefix("final answer ").removeprefix("answer ")
        return final == normalise_answer(str(expected)), {}
    if method == "contains":
        wanted = normalise_answer(str(expected))
        return bool(wanted) and f" {wanted} " in f" {normalise_answer(answer)} ", {}
    if method == "numeric":
        target = parse_number(expected)
        if target is None:
            return False, {"error": f"expected {expected!r} is not a number"}
        found = numbers_in(answer)
        if not found:
            return False, {"found": None}
        last = found[-1]
        allowed = (
            tolerance
            if tolerance is not None
            else max(DEFAULT_ABS_TOLERANCE, DEFAULT_REL_TOLERANCE * abs(target))
        )
        return abs(last - target) <= allowed, {"found": last}
    raise ValueError(f"unknown match method {method!r} (one of {', '.join(MATCH_METHODS)})")


class ReferenceMatchScorer:
    """Does the answer match the human-labelled `expected` answer? Examples without one get no score."""

    name: ClassVar[str] = "reference_match"
    outcomes: ClassVar[frozenset[str]] = frozenset({"match", "mismatch"})

    async def score(self, pair: PairRecord) -> list[Score]:
        labels = sentinel_labels(pair)
        expected = labels.get("expected") if labels is not None else None
        answer = side_text(pair, "candidate")
        if labels is None or expected is None or answer is None:
            return []
        method = labels.get("match") or default_method(expected)
        ok, detail = matches(answer, expected, method, labels.get("tolerance"))
        outcome = "match" if ok else "mismatch"
        return [Score(self.name, "candidate", outcome, 1.0 if ok else 0.0, {"method": method, **detail})]
