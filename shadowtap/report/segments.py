"""The tallies behind the report: every count, rate and latency of one segment (or of all pairs),
added up from pair and score records."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from shadowtap.records import SIDES, PairRecord, ScoreRecord
from shadowtap.report.numbers import Rate

__all__ = ["FORMAT_REASONS", "Mode", "SegmentStats", "add_pair", "add_score", "reasons_text", "sub_record"]

# The failure modes the report compares the candidate on.
Mode = Literal["refusal", "format", "judge"]

FORMAT_REASONS = {
    "not_json": "not JSON",
    "schema_violation": "schema violation",
    "too_long": "too long",
    "pattern_missing": "missing a required pattern",
    "pattern_forbidden": "with a forbidden pattern",
}


@dataclass(slots=True)
class SegmentStats:
    """Every number the report shows for one segment (or for all pairs)."""

    segment: str
    pairs: int = 0
    streamed: int = 0
    long_inputs: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    format_checked: Counter[str] = field(default_factory=Counter)
    format_passed: Counter[str] = field(default_factory=Counter)
    format_reasons: dict[str, Counter[str]] = field(default_factory=lambda: {s: Counter() for s in SIDES})
    refusal_scored: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    pairwise_refusal: Counter[str] = field(default_factory=Counter)
    judge: Counter[str] = field(default_factory=Counter)
    judge_inconsistent: int = 0
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    ttft_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SIDES})
    length_ratios: list[float] = field(default_factory=list)

    def format_rate(self, side: str) -> Rate:
        return Rate(self.format_passed[side], self.format_checked[side])

    def refusal_rate(self, side: str) -> Rate:
        return Rate(self.refused[side], self.refusal_scored[side])

    def candidate_only_refusals(self) -> Rate:
        """Candidate refusals among the requests the primary answered."""
        p = self.pairwise_refusal
        return Rate(p["candidate_only_refused"], p["candidate_only_refused"] + p["neither"])

    @property
    def judged(self) -> int:
        return sum(self.judge.values())

    def judge_rate(self, outcome: str) -> Rate:
        return Rate(self.judge[outcome], self.judged)

    def failure_rates(self, mode: Mode) -> tuple[Rate, Rate]:
        """(candidate, primary) rates of the bad outcome of a failure mode; for the judge, the share of
        pairs each side lost."""
        if mode == "refusal":
            return self.refusal_rate("candidate"), self.refusal_rate("primary")
        if mode == "format":
            c, p = self.format_rate("candidate"), self.format_rate("primary")
            return Rate(c.n - c.k, c.n), Rate(p.n - p.k, p.n)
        return self.judge_rate("primary_win"), self.judge_rate("candidate_win")


def sub_record(record: Mapping[str, object], key: str) -> Mapping[str, Any]:
    """A record's object-valued field, or an empty one where a record read from a file lacks it."""
    value = record.get(key)
    return value if isinstance(value, dict) else {}


def add_pair(stats: SegmentStats, pair: PairRecord) -> None:
    """Count one pair record; its fields are read with fallbacks, as a record from a file may lack some."""
    stats.pairs += 1
    stats.streamed += bool(pair.get("stream"))
    bucket = str((pair.get("tags") or {}).get("length_bucket") or "")
    stats.long_inputs += bool(bucket) and not bucket.startswith("0-")
    texts: dict[str, str] = {}
    for side in SIDES:
        part = sub_record(pair, side)
        if part.get("error") is not None:
            stats.errors[side] += 1
            continue
        latency, ttft = part.get("latency_ms"), part.get("ttft_ms")
        if isinstance(latency, (int, float)):
            stats.latency_ms[side].append(float(latency))
        if isinstance(ttft, (int, float)):
            stats.ttft_ms[side].append(float(ttft))
        texts[side] = part.get("text") or ""
    if len(texts) == 2 and texts["primary"]:
        stats.length_ratios.append(len(texts["candidate"]) / len(texts["primary"]))


def add_score(stats: SegmentStats, score: ScoreRecord) -> None:
    """Count one score record of the format, refusal or judge scorer (others add nothing)."""
    scorer, side, outcome = score.get("scorer"), score.get("side"), score.get("outcome")
    detail = sub_record(score, "detail")
    if scorer == "format" and side in SIDES:
        stats.format_checked[side] += 1
        if outcome == "pass":
            stats.format_passed[side] += 1
        else:
            stats.format_reasons[side][str(detail.get("reason", "other"))] += 1
    elif scorer == "refusal" and side in SIDES:
        stats.refusal_scored[side] += 1
        stats.refused[side] += outcome in ("refused", "partial")
    elif scorer == "refusal" and side == "pair":
        stats.pairwise_refusal[str(outcome)] += 1
    elif scorer == "judge" and side == "pair":
        stats.judge[str(outcome)] += 1
        stats.judge_inconsistent += bool(detail.get("position_inconsistent"))


def reasons_text(reasons: Counter[str]) -> str:
    """`15 schema violations, 4 not JSON`."""
    words = []
    for reason, n in reasons.most_common():
        text = FORMAT_REASONS.get(reason, reason)
        words.append(f"{n} {text}s" if reason == "schema_violation" and n != 1 else f"{n} {text}")
    return ", ".join(words)
