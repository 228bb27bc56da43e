"""The report on a recorded run: what the candidate does differently from the primary, per failure mode
and segment, with 95% intervals, and which differences are regressions.

Reads a data directory (`pairs.jsonl`, `scores.jsonl`, `review.jsonl`), as written by the embedded
default or by `shadowtap score --input/--output`, into a `Report`. `report_text.print_report` prints it
as rich tables; `report_html.write_html` writes it as one self-contained HTML page with inline plots.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shadowtap.records import score_key
from shadowtap.stats import wilson

RECORD_FILES = ("pairs.jsonl", "scores.jsonl", "review.jsonl")
DEMO_MARKER = "demo.json"
SIDES = ("primary", "candidate")

# A judge regression needs the primary preferred this much more often than the candidate, on top of
# non-overlapping intervals.
JUDGE_MARGIN = 0.10
# A difference too small to call a regression is still mentioned from this gap and this many failures.
WATCH_GAP = 0.05
WATCH_MIN_COUNT = 3
# Overall latency and length changes worth a line in "What changed" (ratios of medians).
SLOWER_RATIO = 1.25
LONGER_RATIO = 1.25
MIN_SAMPLES = 10

FORMAT_REASONS = {
    "not_json": "not JSON",
    "schema_violation": "schema violation",
    "too_long": "too long",
    "pattern_missing": "missing a required pattern",
    "pattern_forbidden": "with a forbidden pattern",
}


# --------------------------------------------------------------------------------------------------
# Numbers


@dataclass(frozen=True, slots=True)
class Rate:
    """k of n, with its 95% Wilson interval."""

    k: int
    n: int

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.k, self.n)

    def text(self) -> str:
        """`27/90  30% [22–40]`: count, rate and its 95% interval in percent."""
        if not self.n:
            return "–"
        low, high = self.interval or (0.0, 0.0)
        return f"{self.k}/{self.n}  {self.k / self.n:.0%} [{low * 100:.0f}–{high * 100:.0f}]"


def clearly_above(a: Rate, b: Rate) -> bool:
    """`a`'s rate is above `b`'s with non-overlapping 95% intervals."""
    ia, ib = a.interval, b.interval
    return ia is not None and ib is not None and ia[0] > ib[1]


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of `values`, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def format_ms(value: float | None, unit: str = " ms") -> str:
    return "–" if value is None else f"{value:,.0f}{unit}"


# --------------------------------------------------------------------------------------------------
# Building the report


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


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing that changed. `regression` findings are what a reviewer must look at."""

    kind: str
    segment: str | None
    sentence: str
    regression: bool = True


@dataclass(slots=True)
class Report:
    data_dir: Path
    paths: dict[str, Path]
    lines: dict[str, int]
    invalid_lines: int
    review_reasons: Counter[str]
    models: dict[str, Counter[str]]
    simulated: bool
    # Characters of input up to which a request counts as short (the first length bucket's bound).
    short_input_chars: int | None
    first_ts: str | None
    last_ts: str | None
    segments: list[SegmentStats]
    overall: SegmentStats
    findings: list[Finding]
    # (segment, failure mode) -> "worse" or "better", only where the difference is clear.
    verdicts: dict[tuple[str, str], str]
    clean_segments: list[str]


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    if not path.exists():
        return [], 0
    rows, invalid = [], 0
    with path.open("rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                invalid += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                invalid += 1
    return rows, invalid


def _segment_of(record: dict[str, Any]) -> str:
    return str((record.get("tags") or {}).get("segment") or "none")


def _add_pair(stats: SegmentStats, pair: dict[str, Any]) -> None:
    stats.pairs += 1
    stats.streamed += bool(pair.get("stream"))
    bucket = str((pair.get("tags") or {}).get("length_bucket") or "")
    stats.long_inputs += bool(bucket) and not bucket.startswith("0-")
    texts = {}
    for side in SIDES:
        part = pair.get(side) or {}
        if part.get("error") is not None:
            stats.errors[side] += 1
            continue
        if isinstance(part.get("latency_ms"), (int, float)):
            stats.latency_ms[side].append(float(part["latency_ms"]))
        if isinstance(part.get("ttft_ms"), (int, float)):
            stats.ttft_ms[side].append(float(part["ttft_ms"]))
        texts[side] = part.get("text") or ""
    if len(texts) == 2 and texts["primary"]:
        stats.length_ratios.append(len(texts["candidate"]) / len(texts["primary"]))


def _add_score(stats: SegmentStats, score: dict[str, Any]) -> None:
    scorer, side, outcome = score.get("scorer"), score.get("side"), score.get("outcome")
    detail = score.get("detail") or {}
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


def _short_input_chars(pairs: list[dict[str, Any]]) -> int | None:
    for pair in pairs:
        bucket = str((pair.get("tags") or {}).get("length_bucket") or "")
        low, _, high = bucket.partition("-")
        if low == "0" and high.isdigit():
            return int(high)
    return None


def _ordered_segments(counts: Counter[str]) -> list[str]:
    return sorted(counts, key=lambda s: (-counts[s], s))


def build_report(data_dir: str | Path) -> Report:
    """Read a data directory and compute every table and finding of the report."""
    data_dir = Path(data_dir)
    paths = {name.removesuffix(".jsonl"): data_dir / name for name in RECORD_FILES}
    pairs, bad_pairs = _read_jsonl(paths["pairs"])
    raw_scores, bad_scores = _read_jsonl(paths["scores"])
    review, bad_review = _read_jsonl(paths["review"])
    scores = {score_key(s): s for s in raw_scores if {"pair_id", "scorer", "side"} <= s.keys()}
    segment_by_pair = {str(p.get("id")): _segment_of(p) for p in pairs}
    counts = Counter(segment_by_pair.values())
    for s in scores.values():
        counts.setdefault(segment_by_pair.get(str(s["pair_id"]), _segment_of(s)), 0)
    by_segment = {name: SegmentStats(name) for name in _ordered_segments(counts)}
    overall = SegmentStats("all")
    models: dict[str, Counter[str]] = {"primary": Counter(), "candidate": Counter(), "judge": Counter()}
    for pair in pairs:
        for target in (by_segment[_segment_of(pair)], overall):
            _add_pair(target, pair)
        for side in SIDES:
            model = (pair.get(side) or {}).get("model")
            if model:
                models[side][str(model)] += 1
    for score in scores.values():
        segment = segment_by_pair.get(str(score["pair_id"]), _segment_of(score))
        for target in (by_segment[segment], overall):
            _add_score(target, score)
        judge_model = (score.get("detail") or {}).get("judge_model") if score["scorer"] == "judge" else None
        if judge_model:
            models["judge"][str(judge_model)] += 1
    stamps = sorted(str(p["ts"]) for p in pairs if p.get("ts"))
    segments = list(by_segment.values())
    findings, verdicts = _findings(segments, overall)
    flagged = {segment for (segment, _), v in verdicts.items() if v == "worse"}
    return Report(
        data_dir=data_dir,
        paths=paths,
        lines={"pairs": len(pairs), "scores": len(raw_scores), "review": len(review)},
        invalid_lines=bad_pairs + bad_scores + bad_review,
        review_reasons=Counter(str(r.get("reason", "other")) for r in review),
        models=models,
        simulated=(data_dir / DEMO_MARKER).exists(),
        short_input_chars=_short_input_chars(pairs),
        first_ts=stamps[0] if stamps else None,
        last_ts=stamps[-1] if stamps else None,
        segments=segments,
        overall=overall,
        findings=findings,
        verdicts=verdicts,
        clean_segments=[s.segment for s in segments if s.segment not in flagged],
    )


def reasons_text(reasons: Counter[str]) -> str:
    """`15 schema violations, 4 not JSON`."""
    words = []
    for reason, n in reasons.most_common():
        text = FORMAT_REASONS.get(reason, reason)
        words.append(f"{n} {text}s" if reason == "schema_violation" and n != 1 else f"{n} {text}")
    return ", ".join(words)


def _failure_rates(s: SegmentStats, mode: str) -> tuple[Rate, Rate]:
    """(candidate, primary) rates of the bad outcome of a failure mode; for the judge, the share of
    pairs each side lost."""
    if mode == "refusal":
        return s.refusal_rate("candidate"), s.refusal_rate("primary")
    if mode == "format":
        c, p = s.format_rate("candidate"), s.format_rate("primary")
        return Rate(c.n - c.k, c.n), Rate(p.n - p.k, p.n)
    return s.judge_rate("primary_win"), s.judge_rate("candidate_win")


def _describe(s: SegmentStats, mode: str) -> str:
    """What the candidate did, in words, for a finding on one segment and failure mode."""
    name = s.segment
    if mode == "refusal":
        only, primary = s.candidate_only_refusals(), s.refusal_rate("primary")
        return (
            f"the candidate refused {only.value or 0:.0%} of {name} requests the primary answered "
            f"({only.k} of {only.n}; primary {primary.value or 0:.0%})"
        )
    if mode == "format":
        failed, primary_failed = _failure_rates(s, "format")
        return (
            f"{failed.value or 0:.0%} of the candidate's {name} answers broke the required format "
            f"({failed.k} of {failed.n}: {reasons_text(s.format_reasons['candidate'])}; primary "
            f"{primary_failed.value or 0:.0%})"
        )
    loss, win = _failure_rates(s, "judge")
    return (
        f"on {name} the judge preferred the primary's answer {loss.value or 0:.0%} of the time and the "
        f"candidate's {win.value or 0:.0%} ({s.judged} pairs judged in both orders)"
    )


MODES = {"refusal": "Refusals", "format": "Format", "judge": "Judge"}


def _findings(
    segments: list[SegmentStats], overall: SegmentStats
) -> tuple[list[Finding], dict[tuple[str, str], str]]:
    """Per segment and failure mode: a regression where the candidate fails clearly more often (95%
    intervals apart; for the judge also by JUDGE_MARGIN), a note where it may but the intervals still
    overlap; then the overall latency and length changes."""
    findings: list[Finding] = []
    verdicts: dict[tuple[str, str], str] = {}
    for s in segments:
        for mode, label in MODES.items():
            candidate, primary = _failure_rates(s, mode)
            margin = JUDGE_MARGIN if mode == "judge" else 0.0
            gap = (candidate.value or 0.0) - (primary.value or 0.0)
            if clearly_above(candidate, primary) and gap >= margin:
                verdicts[(s.segment, mode)] = "worse"
                findings.append(Finding(mode, s.segment, f"{label}: {_describe(s, mode)}."))
            elif clearly_above(primary, candidate) and -gap >= margin:
                verdicts[(s.segment, mode)] = "better"
            elif gap >= WATCH_GAP and candidate.k >= WATCH_MIN_COUNT:
                findings.append(
                    Finding(
                        "watch",
                        s.segment,
                        f"{label}, not yet clear: {_describe(s, mode)}; the 95% intervals still overlap, "
                        "so more traffic is needed to tell.",
                        regression=False,
                    )
                )
    for s in segments:
        better = [mode for (seg, mode), v in verdicts.items() if seg == s.segment and v == "better"]
        if better:
            findings.append(
                Finding(
                    "improvement",
                    s.segment,
                    f"Better: on {s.segment} the candidate beats the primary on {', '.join(better)}.",
                    regression=False,
                )
            )
    findings.extend(_overall_changes(overall))
    return findings, verdicts


def _overall_changes(overall: SegmentStats) -> list[Finding]:
    changes: list[Finding] = []
    for label, values in (("to first token", overall.ttft_ms), ("end to end", overall.latency_ms)):
        p, c = values["primary"], values["candidate"]
        if len(p) < MIN_SAMPLES or len(c) < MIN_SAMPLES:
            continue
        p50, c50 = percentile(p, 50) or 0.0, percentile(c, 50) or 0.0
        if p50 <= 0:
            continue
        ratio = c50 / p50
        p95, c95 = percentile(p, 95), percentile(c, 95)
        numbers = f"p50 {format_ms(c50)} vs {format_ms(p50)} ({ratio:.1f}x), p95 {format_ms(c95)} vs {format_ms(p95)}"
        if ratio >= SLOWER_RATIO:
            changes.append(Finding("latency", None, f"Latency: the candidate is slower {label}: {numbers}."))
        elif ratio <= 1 / SLOWER_RATIO:
            changes.append(
                Finding("latency", None, f"Latency: the candidate is faster {label}: {numbers}.", False)
            )
    if len(overall.length_ratios) >= MIN_SAMPLES:
        ratio = percentile(overall.length_ratios, 50) or 1.0
        if ratio >= LONGER_RATIO or ratio <= 1 / LONGER_RATIO:
            changes.append(
                Finding(
                    "length",
                    None,
                    f"Length: the candidate's answers are {ratio:.2f}x as long as the primary's (median per "
                    "pair).",
                    regression=False,
                )
            )
    if overall.judged >= MIN_SAMPLES and overall.judge_inconsistent / overall.judged > 0.1:
        changes.append(
            Finding(
                "judge",
                None,
                f"Judge: {overall.judge_inconsistent / overall.judged:.0%} of verdicts flipped when the "
                "answers were swapped (counted as ties); read the judge's results with care.",
                regression=False,
            )
        )
    return changes
