"""The sentinel's failure modes: each a score where higher is better, fed by one scorer.

| failure mode       | kind | fed by                                         | 1 (good) / 0 (bad); examples not counted                         |
| ------------------ | ---- | ---------------------------------------------- | ---------------------------------------------------------------- |
| `no_error`         | rate | the replay itself                              | an answer came back (after retries) / none did                   |
| `format_pass`      | rate | `format` scorer (scorers/format.py)            | the answer has the format asked for / not; no format asked: -    |
| `not_refused`      | rate | `refusal` scorer (scorers/refusal.py)          | answered / refused or partly refused; reference refused too: -   |
| `reference_match`  | rate | `reference_match` (sentinel/reference.py)      | matches the labelled `expected` answer / not; unlabelled: -      |
| `judge_not_worse`  | rate | `judge_reference` (judge model vs reference)   | better than or as good as the reference / worse; labelled: -     |
| `judge_preference` | mean | `judge_reference`                              | +1 better, 0 tie, -1 worse than the reference                    |

Rates get Wilson intervals, means bootstrap intervals (shadowtap/stats.py). A failed replay counts only
against `no_error`: the other modes measure answers, and there is none to measure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from shadowtap.records import ScoreRecord, Side

Kind = Literal["rate", "mean"]


@dataclass(frozen=True)
class FailureMode:
    name: str
    kind: Kind
    scorer: str
    description: str


FAILURE_MODES: tuple[FailureMode, ...] = (
    FailureMode("no_error", "rate", "replay", "the target answered (after retries)"),
    FailureMode("format_pass", "rate", "format", "the answer has the format that was asked for"),
    FailureMode("not_refused", "rate", "refusal", "the answer does not refuse what the reference answered"),
    FailureMode(
        "reference_match", "rate", "reference_match", "the answer matches the labelled expected answer"
    ),
    FailureMode(
        "judge_not_worse",
        "rate",
        "judge_reference",
        "the judge finds the answer at least as good as the reference",
    ),
    FailureMode(
        "judge_preference", "mean", "judge_reference", "+1 better than the reference, 0 as good, -1 worse"
    ),
)
BY_NAME = {mode.name: mode for mode in FAILURE_MODES}

_REFUSED = frozenset({"refused", "partial"})


def _refusal(by_key: dict[tuple[str, Side], ScoreRecord]) -> float | None:
    pair = by_key.get(("refusal", "pair"))
    if pair is not None:
        return {"neither": 1.0, "candidate_only_refused": 0.0}.get(pair["outcome"])
    answer, reference = by_key.get(("refusal", "candidate")), by_key.get(("refusal", "primary"))
    if answer is None or answer["outcome"] not in _REFUSED | {"answered"}:
        return None
    if reference is not None and reference["outcome"] in _REFUSED:
        return None
    return 0.0 if answer["outcome"] in _REFUSED else 1.0


def example_outcomes(records: Sequence[ScoreRecord], answered: bool) -> dict[str, float | None]:
    """Each failure mode's value for one example, from its score records; None where it does not apply."""
    outcomes: dict[str, float | None] = {mode.name: None for mode in FAILURE_MODES}
    outcomes["no_error"] = 1.0 if answered else 0.0
    if not answered:
        return outcomes
    by_key = {(r["scorer"], r["side"]): r for r in records}
    fmt = by_key.get(("format", "candidate"))
    if fmt is not None:
        outcomes["format_pass"] = 1.0 if fmt["outcome"] == "pass" else 0.0
    outcomes["not_refused"] = _refusal(by_key)
    match = by_key.get(("reference_match", "candidate"))
    if match is not None:
        outcomes["reference_match"] = 1.0 if match["outcome"] == "match" else 0.0
    judged = by_key.get(("judge_reference", "pair"))
    if judged is not None:
        outcomes["judge_not_worse"] = 0.0 if judged["outcome"] == "reference_better" else 1.0
        value = judged["value"]
        outcomes["judge_preference"] = float(value) if value is not None else None
    return outcomes
