"""The sentinel's failure modes: each a score where higher is better, fed by one scorer.

| failure mode        | kind | fed by                                    | 1 (good) / 0 (bad); examples not counted                       |
| ------------------- | ---- | ----------------------------------------- | -------------------------------------------------------------- |
| `no_error`          | rate | the replay itself                         | an answer came back (after retries) / none did                 |
| `format_pass`       | rate | `format` scorer (scorers/format.py)       | the answer has the format asked for / not; no format asked: -  |
| `not_refused`       | rate | `refusal` scorer (scorers/refusal.py)     | answered / refused or partly refused; reference refused too: - |
| `reference_match`   | rate | `reference_match` (sentinel/reference.py) | matches the labelled `expected` answer / not; unlabelled: -    |
| `reasoning_correct` | rate | `reference_match` on a reasoning probe    | the exact known answer / not; traffic examples: -              |
| `judge_vs_baseline` | net  | the judge, this answer vs the baseline    | +1 better, 0 tie, -1 worse than the baseline run's answer;     |
|                     |      | run's answer, both orders (headtohead.py) | a verdict that flips with the order: - (counted as a flip)     |

A tie is worth 0 in `judge_vs_baseline` (half a win and half a loss) everywhere it is shown. Rates get
Wilson intervals; a net score the Agresti-Min interval of wins minus losses (shadowtap/stats.py). A
failed replay counts only against `no_error`: the other modes measure answers, and there is none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from shadowtap.records import ScoreRecord, Side

Kind = Literal["rate", "net"]


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
        "reasoning_correct",
        "rate",
        "reference_match",
        "the exact known answer to a generated reasoning probe",
    ),
    FailureMode(
        "judge_vs_baseline",
        "net",
        "judge",
        "+1 better than the baseline run's answer, 0 as good, -1 worse (the judge, both orders)",
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


def example_outcomes(
    records: Sequence[ScoreRecord], answered: bool, *, probe: bool = False
) -> dict[str, float | None]:
    """Each failure mode's value for one example, from its score records; None where it does not apply.

    On a reasoning probe (`probe`) the reference match is `reasoning_correct`. `judge_vs_baseline` is
    filled in later, by the head-to-head judge (sentinel/headtohead.py)."""
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
        outcomes["reasoning_correct" if probe else "reference_match"] = (
            1.0 if match["outcome"] == "match" else 0.0
        )
    return outcomes
