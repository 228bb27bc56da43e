"""The report on a recorded run: what the candidate does differently from the primary, per failure mode
and segment, with 95% intervals, and which differences are regressions.

Reads a data directory (`pairs.jsonl`, `scores.jsonl`, `review.jsonl`), as written by the embedded
default or by `shadowtap score --input/--output`, into a `Report`. `view.build_view` turns it into the
rows and sentences a reader sees, which `text.print_report` prints as rich tables and
`html.write_html` writes as one self-contained HTML page with inline plots.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard, cast

from shadowtap.records import SIDES, PairRecord, ScoreRecord, is_noise_floor, jsonl_lines, score_key
from shadowtap.report.feedback import FeedbackStats, feedback_stats, read_feedback_rows
from shadowtap.report.findings import Finding, Verdict, find_changes
from shadowtap.report.numbers import Rate
from shadowtap.report.segments import Mode, SegmentStats, add_pair, add_score, sub_record

__all__ = ["DEMO_MARKER", "RECORD_FILES", "Finding", "Rate", "Report", "SegmentStats", "build_report"]

RECORD_FILES = ("pairs.jsonl", "scores.jsonl", "review.jsonl")
DEMO_MARKER = "demo.json"


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
    verdicts: dict[tuple[str, Mode], Verdict]
    clean_segments: list[str]
    # Production signals per segment (and "all"); empty without feedback.jsonl records.
    feedback: dict[str, FeedbackStats] = field(default_factory=dict)
    # The noise-floor pairs (the primary against its own second answer), all segments together; None when
    # there are none. They are counted here only, never in the candidate's figures above.
    noise_floor: SegmentStats | None = None


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    if not path.exists():
        return [], 0
    rows, invalid = [], 0
    with path.open("rb") as handle:
        for _, line in jsonl_lines(handle):
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


def _as_pairs(rows: list[dict[str, Any]]) -> list[PairRecord]:
    """The rows of pairs.jsonl, taken as pair records without validating them: a report reads what it
    can, so every field is read with a fallback (see `segments.add_pair`)."""
    return cast(list[PairRecord], rows)


def _is_score(row: dict[str, Any]) -> TypeGuard[ScoreRecord]:
    """A row that names its pair, scorer and side: enough to count it (other fields are read with
    fallbacks)."""
    return {"pair_id", "scorer", "side"} <= row.keys()


def _segment_of(record: PairRecord | ScoreRecord) -> str:
    return str((record.get("tags") or {}).get("segment") or "none")


def _short_input_chars(pairs: list[PairRecord]) -> int | None:
    for pair in pairs:
        bucket = str((pair.get("tags") or {}).get("length_bucket") or "")
        low, _, high = bucket.partition("-")
        if low == "0" and high.isdigit():
            return int(high)
    return None


def _ordered_segments(counts: Counter[str]) -> list[str]:
    return sorted(counts, key=lambda s: (-counts[s], s))


def _models(pairs: Iterable[PairRecord], scores: Iterable[ScoreRecord]) -> dict[str, Counter[str]]:
    """How many pairs each primary and candidate model answered, and how many verdicts each judge gave."""
    models: dict[str, Counter[str]] = {"primary": Counter(), "candidate": Counter(), "judge": Counter()}
    for pair in pairs:
        for side in SIDES:
            model = sub_record(pair, side).get("model")
            if model:
                models[side][str(model)] += 1
    for score in scores:
        judge_model = sub_record(score, "detail").get("judge_model") if score["scorer"] == "judge" else None
        if judge_model:
            models["judge"][str(judge_model)] += 1
    return models


def _tally(pairs: list[PairRecord], scores: Iterable[ScoreRecord]) -> tuple[list[SegmentStats], SegmentStats]:
    """The stats of every segment (largest first) and of all pairs."""
    segment_by_pair = {str(p.get("id")): _segment_of(p) for p in pairs}
    counts = Counter(segment_by_pair.values())
    scored = [(segment_by_pair.get(str(s["pair_id"]), _segment_of(s)), s) for s in scores]
    for segment, _ in scored:
        counts.setdefault(segment, 0)
    by_segment = {name: SegmentStats(name) for name in _ordered_segments(counts)}
    overall = SegmentStats("all")
    for pair in pairs:
        for target in (by_segment[_segment_of(pair)], overall):
            add_pair(target, pair)
    for segment, score in scored:
        for target in (by_segment[segment], overall):
            add_score(target, score)
    return list(by_segment.values()), overall


def build_report(data_dir: str | Path) -> Report:
    """Read a data directory and compute every table and finding of the report."""
    data_dir = Path(data_dir)
    paths = {name.removesuffix(".jsonl"): data_dir / name for name in RECORD_FILES}
    pair_rows, bad_pairs = _read_jsonl(paths["pairs"])
    raw_scores, bad_scores = _read_jsonl(paths["scores"])
    review, bad_review = _read_jsonl(paths["review"])
    every_pair = _as_pairs(pair_rows)
    noise_pairs = [p for p in every_pair if is_noise_floor(p)]
    noise_ids = {str(p.get("id")) for p in noise_pairs}
    pairs = [p for p in every_pair if not is_noise_floor(p)]
    every_score = {score_key(s): s for s in raw_scores if _is_score(s)}
    scores = {key: s for key, s in every_score.items() if str(s["pair_id"]) not in noise_ids}
    segments, overall = _tally(pairs, scores.values())
    noise_floor = (
        _tally(noise_pairs, [s for s in every_score.values() if str(s["pair_id"]) in noise_ids])[1]
        if noise_pairs
        else None
    )
    stamps = sorted(str(p["ts"]) for p in pairs if p.get("ts"))
    findings, verdicts = find_changes(segments, overall)
    flagged = {segment for (segment, _), v in verdicts.items() if v == "worse"}
    judged = {
        str(s["pair_id"]): str(s["outcome"])
        for s in scores.values()
        if (s["scorer"], s["side"]) == ("judge", "pair")
    }
    return Report(
        data_dir=data_dir,
        paths=paths,
        lines={"pairs": len(pairs), "scores": len(raw_scores), "review": len(review)},
        invalid_lines=bad_pairs + bad_scores + bad_review,
        review_reasons=Counter(str(r.get("reason", "other")) for r in review),
        models=_models(pairs, scores.values()),
        simulated=(data_dir / DEMO_MARKER).exists(),
        short_input_chars=_short_input_chars(pairs),
        first_ts=stamps[0] if stamps else None,
        last_ts=stamps[-1] if stamps else None,
        segments=segments,
        overall=overall,
        findings=findings,
        verdicts=verdicts,
        clean_segments=[s.segment for s in segments if s.segment not in flagged],
        feedback=feedback_stats(pairs, read_feedback_rows(data_dir / "feedback.jsonl"), judged),
        noise_floor=noise_floor,
    )
