"""The tallies behind the report: every count, rate and latency of one segment (or of all pairs),
added up from pair and score records."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from shadowtap.records import SIDES, PairRecord, ScoreRecord
from shadowtap.report.numbers import Rate

__all__ = [
    "FORMAT_REASONS",
    "TOOL_OUTCOMES",
    "TOOL_PAIR_OUTCOMES",
    "Mode",
    "SegmentStats",
    "add_pair",
    "add_score",
    "reasons_text",
    "sub_record",
]

# The failure modes the report compares the candidate on.
Mode = Literal["refusal", "format", "tools", "judge"]

FORMAT_REASONS = {
    "not_json": "not JSON",
    "schema_violation": "schema violation",
    "too_long": "too long",
    "pattern_missing": "missing a required pattern",
    "pattern_forbidden": "with a forbidden pattern",
}
# Why the tools scorer failed one side's calls, and how a pair's calls differed.
TOOL_OUTCOMES = {
    "schema_violation": "schema violation",
    "bad_json": "bad JSON",
    "unknown_tool": "unknown tool",
}
TOOL_PAIR_OUTCOMES = {
    "different_arguments": "different arguments",
    "different_tool": "different tool",
    "only_primary_called": "only the primary called",
    "only_candidate_called": "only the candidate called",
}
# The names that read as a count of several.
_PLURALS = {"schema violation": "schema violations", "unknown tool": "unknown tools"}


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
    tools_checked: Counter[str] = field(default_factory=Counter)
    tools_passed: Counter[str] = field(default_factory=Counter)
    tool_failures: dict[str, Counter[str]] = field(default_factory=lambda: {s: Counter() for s in SIDES})
    # The first failure of each kind per side, as `function: what is wrong`.
    tool_examples: dict[str, dict[str, str]] = field(default_factory=lambda: {s: {} for s in SIDES})
    tool_pairs: Counter[str] = field(default_factory=Counter)
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

    def tools_rate(self, side: str) -> Rate:
        """Answers whose tool calls all fit the offered tools, of the answers that called one."""
        return Rate(self.tools_passed[side], self.tools_checked[side])

    def tool_disagreements(self) -> Rate:
        """Pairs where the two sides did not make the same calls, of the pairs where one called a tool."""
        total = sum(self.tool_pairs.values())
        return Rate(total - self.tool_pairs["same_calls"], total)

    def tool_example(self, side: str) -> str | None:
        """An invalid call of the side's most frequent kind of failure."""
        for outcome, _ in self.tool_failures[side].most_common():
            if outcome in self.tool_examples[side]:
                return self.tool_examples[side][outcome]
        return None

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
        if mode in ("format", "tools"):
            rate = self.format_rate if mode == "format" else self.tools_rate
            c, p = rate("candidate"), rate("primary")
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
    """Count one score record of the format, tools, refusal or judge scorer (others add nothing)."""
    scorer, side, outcome = score.get("scorer"), score.get("side"), score.get("outcome")
    detail = sub_record(score, "detail")
    if scorer == "format" and side in SIDES:
        stats.format_checked[side] += 1
        if outcome == "pass":
            stats.format_passed[side] += 1
        else:
            stats.format_reasons[side][str(detail.get("reason", "other"))] += 1
    elif scorer == "tools":
        _add_tools_score(stats, str(side), str(outcome), detail)
    elif scorer == "refusal" and side in SIDES:
        stats.refusal_scored[side] += 1
        stats.refused[side] += outcome in ("refused", "partial")
    elif scorer == "refusal" and side == "pair":
        stats.pairwise_refusal[str(outcome)] += 1
    elif scorer == "judge" and side == "pair":
        stats.judge[str(outcome)] += 1
        stats.judge_inconsistent += bool(detail.get("position_inconsistent"))


def _tool_example(outcome: str, detail: Mapping[str, Any]) -> str:
    """One invalid call in words: `book_engineer_visit: slot: 'am' is not one of [...]`."""
    tool = str(detail.get("tool", "?"))
    if outcome == "unknown_tool":
        offered = ", ".join(str(name) for name in detail.get("offered") or []) or "none"
        return f"{tool}, which the request does not offer (offered: {offered})"
    if outcome == "bad_json":
        return f"{tool}: arguments are not JSON ({detail.get('error', '?')})"
    return f"{tool}: {detail.get('error', '?')}"


def _add_tools_score(stats: SegmentStats, side: str, outcome: str, detail: Mapping[str, Any]) -> None:
    if side == "pair":
        stats.tool_pairs[outcome] += 1
        return
    if side not in SIDES:
        return
    stats.tools_checked[side] += 1
    if outcome == "pass":
        stats.tools_passed[side] += 1
        return
    stats.tool_failures[side][outcome] += 1
    stats.tool_examples[side].setdefault(outcome, _tool_example(outcome, detail))


def reasons_text(reasons: Counter[str], names: Mapping[str, str] = FORMAT_REASONS) -> str:
    """`15 schema violations, 4 not JSON`: each reason's count, by its name in `names`."""
    words = []
    for reason, n in reasons.most_common():
        text = names.get(reason, reason)
        words.append(f"{n} {_PLURALS.get(text, text) if n != 1 else text}")
    return ", ".join(words)
