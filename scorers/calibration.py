"""Judge calibration: how often the configured judge agrees with human labels, and where it does not.

`calibrate` runs the judge in both orders on labelled pairs (`shadowtap.label/v1` records joined with
their pair records) and measures agreement, Cohen's kappa, the confusion matrix, the flip rate (verdicts
that change with the order), length bias and agreement per segment, each with an interval and its n.
The result is a calibration record (`shadowtap.judge_calibration/v1`, a JSON file) that the report and
the sentinel show beside every judge figure, and whose per-segment agreement routes the sentinel's
judge-decided regressions to human review where it is below the configured floor.

Human labels are primary / candidate / tie; `both_bad` counts as a tie (neither is better).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

from shadowtap.errors import JudgeError
from shadowtap.labels import Label
from shadowtap.records import PairRecord, utc_now_rfc3339
from shadowtap.scorers.judge import JudgeScorer, render_answer
from shadowtap.stats import Z_95, wilson

__all__ = [
    "CALIBRATION_SCHEMA",
    "DEFAULT_FAMILIES",
    "Calibration",
    "Estimate",
    "LabelledVerdict",
    "calibrate",
    "calibration_status",
    "family_warnings",
    "load_calibration",
    "low_agreement_segments",
    "model_family",
    "summarise_calibration",
]

CALIBRATION_SCHEMA = "shadowtap.judge_calibration/v1"
VERDICTS = ("primary", "candidate", "tie")
_FROM_OUTCOME = {"primary_win": "primary", "candidate_win": "candidate", "tie": "tie"}
# Model-name prefixes (lower case) to families; `judge.model_families` adds to or overrides these.
DEFAULT_FAMILIES: dict[str, str] = {
    "gpt": "openai",
    "o1": "openai",
    "o3": "openai",
    "o4": "openai",
    "claude": "anthropic",
    "llama": "meta",
    "meta-llama": "meta",
    "qwen": "qwen",
    "mistral": "mistral",
    "mixtral": "mistral",
    "gemma": "google",
    "gemini": "google",
    "deepseek": "deepseek",
    "phi": "microsoft",
}


class Estimate(TypedDict):
    value: float | None
    lower: float | None
    upper: float | None
    n: int


class Calibration(TypedDict):
    """`shadowtap.judge_calibration/v1`: the judge's agreement with human labels."""

    schema: str
    created_at: str
    judge_model: str
    prompt_template_hash: str
    labels_file: str
    labels: int
    judged: int
    agreement: Estimate
    kappa: Estimate
    flip_rate: Estimate
    length_bias: Estimate
    confusion: dict[str, dict[str, int]]
    segments: dict[str, Estimate]
    agreement_floor: float
    below_floor: list[str]
    skipped: dict[str, int]


@dataclass(frozen=True)
class LabelledVerdict:
    """One labelled pair: the human's verdict, the judge's (None when it flipped with the order)."""

    human: str
    judge: str | None
    segment: str
    length_ratio: float | None  # candidate's answer length / primary's


def model_family(model: str | None, families: Mapping[str, str] | None = None) -> str | None:
    """The family of a model name by its longest matching prefix (after any `org/`), or None."""
    if not model:
        return None
    table = {**DEFAULT_FAMILIES, **{k.lower(): v for k, v in (families or {}).items()}}
    name = model.lower()
    candidates = [name, name.rsplit("/", 1)[-1]]
    best: tuple[int, str] | None = None
    for text in candidates:
        for prefix, family in table.items():
            if text.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), family)
    return best[1] if best else None


def family_warnings(
    judge_model: str, sides: Mapping[str, str | None], families: Mapping[str, str] | None = None
) -> list[str]:
    """A warning for each side whose model is of the judge's own family (a judge favours its own)."""
    family = model_family(judge_model, families)
    if family is None:
        return []
    return [
        f"judge {judge_model} is of the {family} family, as the {side} ({model}) is: it may favour its "
        "own family; prefer a judge of a third family"
        for side, model in sides.items()
        if model and model_family(model, families) == family
    ]


# --------------------------------------------------------------------------------------------------
# The statistics


def _estimate(successes: float, n: int) -> Estimate:
    interval = wilson(successes, n)
    return {
        "value": successes / n if n else None,
        "lower": interval[0] if interval else None,
        "upper": interval[1] if interval else None,
        "n": n,
    }


def cohen_kappa(confusion: Mapping[str, Mapping[str, int]]) -> Estimate:
    """Cohen's kappa over the verdicts, with Cohen's (1960) large-sample 95% interval."""
    n = sum(sum(row.values()) for row in confusion.values())
    if n == 0:
        return {"value": None, "lower": None, "upper": None, "n": 0}
    observed = sum(confusion.get(v, {}).get(v, 0) for v in VERDICTS) / n
    human = {v: sum(confusion.get(v, {}).values()) / n for v in VERDICTS}
    judge = {v: sum(confusion.get(h, {}).get(v, 0) for h in VERDICTS) / n for v in VERDICTS}
    chance = sum(human[v] * judge[v] for v in VERDICTS)
    if chance >= 1:
        return {"value": None, "lower": None, "upper": None, "n": n}
    kappa = (observed - chance) / (1 - chance)
    se = math.sqrt(observed * (1 - observed) / (n * (1 - chance) ** 2))
    return {
        "value": kappa,
        "lower": max(-1.0, kappa - Z_95 * se),
        "upper": min(1.0, kappa + Z_95 * se),
        "n": n,
    }


def _prefers_longer(verdict: str, ratio: float) -> int:
    """+1 when the verdict picks the longer answer, -1 the shorter, 0 a tie."""
    if verdict == "tie":
        return 0
    candidate_longer = ratio > 1
    return 1 if (verdict == "candidate") == candidate_longer else -1


def length_bias(verdicts: Sequence[LabelledVerdict]) -> Estimate:
    """Mean over pairs of unequal length of (judge's preference for the longer answer) minus (the human's),
    each +1 longer, 0 tie, -1 shorter: how far the judge leans to length beyond what the label says."""
    diffs = [
        _prefers_longer(v.judge, v.length_ratio) - _prefers_longer(v.human, v.length_ratio)
        for v in verdicts
        if v.judge is not None and v.length_ratio is not None and v.length_ratio != 1
    ]
    n = len(diffs)
    if n == 0:
        return {"value": None, "lower": None, "upper": None, "n": 0}
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 4.0
    # A variance floor of one discordant pair in n+2 keeps the interval from collapsing at all-equal values.
    half = Z_95 * math.sqrt(max(var, 1 / (n + 2)) / n)
    return {"value": mean, "lower": max(-2.0, mean - half), "upper": min(2.0, mean + half), "n": n}


def summarise_calibration(
    verdicts: Sequence[LabelledVerdict],
    *,
    judge_model: str,
    prompt_template_hash: str,
    labels_file: str,
    floor: float,
    skipped: Mapping[str, int] | None = None,
) -> Calibration:
    consistent = [v for v in verdicts if v.judge is not None]
    confusion: dict[str, dict[str, int]] = {h: {j: 0 for j in VERDICTS} for h in VERDICTS}
    for v in consistent:
        confusion[v.human][cast(str, v.judge)] += 1
    agree = sum(1 for v in consistent if v.judge == v.human)
    by_segment: dict[str, list[LabelledVerdict]] = defaultdict(list)
    for v in consistent:
        by_segment[v.segment].append(v)
    segments = {
        seg: _estimate(sum(1 for v in vs if v.judge == v.human), len(vs))
        for seg, vs in sorted(by_segment.items())
    }
    below = [seg for seg, est in segments.items() if est["value"] is not None and est["value"] < floor]
    return {
        "schema": CALIBRATION_SCHEMA,
        "created_at": utc_now_rfc3339(),
        "judge_model": judge_model,
        "prompt_template_hash": prompt_template_hash,
        "labels_file": labels_file,
        "labels": len(verdicts) + sum((skipped or {}).values()),
        "judged": len(verdicts),
        "agreement": _estimate(agree, len(consistent)),
        "kappa": cohen_kappa(confusion),
        "flip_rate": _estimate(len(verdicts) - len(consistent), len(verdicts)),
        "length_bias": length_bias(consistent),
        "confusion": confusion,
        "segments": segments,
        "agreement_floor": floor,
        "below_floor": below,
        "skipped": dict(skipped or {}),
    }


# --------------------------------------------------------------------------------------------------
# Running the judge on labelled pairs


def _human(label: Label) -> str:
    return "tie" if label["better"] == "both_bad" else label["better"]


async def _judge_one(judge: JudgeScorer, pair: PairRecord, label: Label) -> LabelledVerdict | str:
    primary, candidate = render_answer(pair, "primary"), render_answer(pair, "candidate")
    if primary is None or candidate is None:
        return "missing_answer"
    segment = (pair.get("tags") or {}).get("segment") or "none"
    score = await judge.compare(pair.get("request") or {}, primary, candidate, segment=segment)
    flipped = bool(score.detail.get("position_inconsistent"))
    ratio = score.detail.get("length_ratio")
    return LabelledVerdict(_human(label), None if flipped else _FROM_OUTCOME[score.outcome], segment, ratio)


async def calibrate(
    judge: JudgeScorer,
    labels: Sequence[Label],
    pairs: Mapping[str, PairRecord],
    *,
    labels_file: str,
    prompt_template_hash: str,
    floor: float,
) -> Calibration:
    """Judge every labelled pair (both orders) and measure the agreement. The latest label of a pair wins."""
    latest = {label["pair_id"]: label for label in labels}
    skipped: Counter[str] = Counter()
    jobs = []
    for pair_id, label in latest.items():
        pair = pairs.get(pair_id)
        if pair is None:
            skipped["pair_not_found"] += 1
            continue
        jobs.append(_judge_one(judge, pair, label))
    results = await asyncio.gather(*jobs, return_exceptions=True)
    verdicts: list[LabelledVerdict] = []
    for result in results:
        if isinstance(result, JudgeError):
            skipped["judge_error"] += 1
        elif isinstance(result, BaseException):
            raise result
        elif isinstance(result, str):
            skipped[result] += 1
        else:
            verdicts.append(result)
    return summarise_calibration(
        verdicts,
        judge_model=judge.config.model,
        prompt_template_hash=prompt_template_hash,
        labels_file=labels_file,
        floor=floor,
        skipped=skipped,
    )


# --------------------------------------------------------------------------------------------------
# Reading it back


def load_calibration(path: str | Path) -> Calibration | None:
    """The calibration record at `path`, or None when there is none (or it is not one)."""
    file = Path(path)
    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("schema") != CALIBRATION_SCHEMA:
        return None
    return cast(Calibration, doc)


def _applies(record: Calibration | None, judge_model: str | None, prompt_hash: str | None) -> bool:
    if record is None or judge_model is None:
        return False
    if record["judge_model"] != judge_model:
        return False
    return prompt_hash is None or record["prompt_template_hash"] == prompt_hash


def calibration_status(record: Calibration | None, judge_model: str | None, prompt_hash: str | None) -> str:
    """One line for beside a judge figure: "calibrated on N labels, agreement X [a, b]" or "uncalibrated"."""
    if record is None or not _applies(record, judge_model, prompt_hash):
        reason = (
            "" if record is None else f" (the calibration is of {record['judge_model']} or another prompt)"
        )
        return f"uncalibrated{reason}"
    agreement = record["agreement"]
    if agreement["value"] is None:
        return "uncalibrated (no consistent verdicts on the labels)"
    return (
        f"calibrated on {agreement['n']} labels, agreement {agreement['value']:.2f} "
        f"[{agreement['lower']:.2f}, {agreement['upper']:.2f}]"
    )


def low_agreement_segments(
    record: Calibration | None, judge_model: str | None, prompt_hash: str | None, floor: float
) -> frozenset[str]:
    """Segments whose agreement with humans is under `floor` (their judge verdicts go to human review)."""
    if not _applies(record, judge_model, prompt_hash):
        return frozenset()
    assert record is not None  # checked by _applies
    return frozenset(
        seg for seg, est in record["segments"].items() if est["value"] is not None and est["value"] < floor
    )


def pair_index(records: Sequence[Any]) -> dict[str, PairRecord]:
    """Pair records by id (the last of an id wins)."""
    return {str(r["id"]): cast(PairRecord, r) for r in records if isinstance(r, dict) and "id" in r}
