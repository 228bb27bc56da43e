"""Head-to-head judging: each answer of a run against the baseline run's answer to the same example.

The judge sees both answers in both orders (scorers/judge.py). A verdict that changes with the order is
a flip: a failure of the judge, not a tie. Flips are left out of `judge_vs_baseline`, counted, kept in
the run, and the run is flagged (its judge mode goes to human review, not the gate) when they are more
than `sentinel.judge_max_flip_share` of the verdicts. Never judged against a reference production wrote
itself: a baseline replayed against its own answer would tie with itself by construction.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from typing import Any, TypedDict

from shadowtap.errors import JudgeError
from shadowtap.scorers.calibration import family_warnings
from shadowtap.scorers.judge import JudgeScorer
from shadowtap.sentinel.sets import SetRow
from shadowtap.sentinel.summary import Example, JudgeVerdict

__all__ = ["HeadToHead", "judge_head_to_head"]

MODE = "judge_vs_baseline"
_VALUES = {"candidate_win": 1.0, "primary_win": -1.0, "tie": 0.0}
_NAMES = {"candidate_win": "candidate_win", "primary_win": "baseline_win", "tie": "tie"}


class HeadToHead(TypedDict):
    """What a run keeps of its head-to-head judging (`head_to_head` in the run record)."""

    baseline_run: str
    baseline_model: str
    judge_model: str
    prompt_template_hash: str
    judged: int
    wins: int
    losses: int
    ties: int
    flips: int
    flip_share: float
    max_flip_share: float
    flagged: bool
    errors: int
    calibration: str
    warnings: list[str]


async def _one(
    judge: JudgeScorer, row: SetRow, example: Example, baseline_answer: str
) -> JudgeVerdict | None:
    answer = example["answer"]
    if answer is None:
        return None
    segment = (row.get("tags") or {}).get("segment")
    try:
        score = await judge.compare(row["request"], baseline_answer, answer, segment=segment)
    except JudgeError:
        return {"outcome": "error", "length_ratio": None, "identical": False}
    flipped = bool(score.detail.get("position_inconsistent"))
    example["outcomes"][MODE] = None if flipped else _VALUES[score.outcome]
    return {
        "outcome": "flip" if flipped else _NAMES[score.outcome],
        "length_ratio": score.detail.get("length_ratio"),
        "identical": bool(score.detail.get("identical")),
    }


async def judge_head_to_head(
    judge: JudgeScorer,
    rows: Mapping[str, SetRow],
    examples: list[Example],
    baseline: Mapping[str, Any],
    *,
    max_flip_share: float,
    calibration: str,
    candidate_model: str,
) -> HeadToHead:
    """Judge every answered example (reasoning probes aside: those have exact answers) against the
    baseline run's answer; sets each example's `judge_vs_baseline` and `judge`, returns the summary."""
    before = {e["id"]: e.get("answer") for e in baseline["examples"]}
    todo = [
        e
        for e in examples
        if e["id"] in rows
        and not e.get("probe")
        and e["answer"] is not None
        and before.get(e["id"]) is not None
    ]
    verdicts = await asyncio.gather(*(_one(judge, rows[e["id"]], e, str(before[e["id"]])) for e in todo))
    counts: Counter[str] = Counter()
    for example, verdict in zip(todo, verdicts, strict=True):
        example["judge"] = verdict
        if verdict is not None:
            counts[verdict["outcome"]] += 1
    judged = sum(counts[k] for k in ("candidate_win", "baseline_win", "tie", "flip"))
    flip_share = counts["flip"] / judged if judged else 0.0
    warnings = family_warnings(
        judge.config.model,
        {"baseline": str(baseline.get("model")), "candidate": candidate_model},
        judge.config.model_families,
    )
    return {
        "baseline_run": str(baseline["run_id"]),
        "baseline_model": str(baseline.get("model")),
        "judge_model": judge.config.model,
        "prompt_template_hash": judge.template_hash,
        "judged": judged,
        "wins": counts["candidate_win"],
        "losses": counts["baseline_win"],
        "ties": counts["tie"],
        "flips": counts["flip"],
        "flip_share": round(flip_share, 6),
        "max_flip_share": max_flip_share,
        "flagged": judged > 0 and flip_share > max_flip_share,
        "errors": counts["error"],
        "calibration": calibration,
        "warnings": warnings,
    }
