"""Production signals in the report: per segment, how often users retried or disliked the primary's answer,
and, on the pairs users disliked, how often the judge preferred the candidate's.

Rates are per mirrored request (a pair): a pair is retried when a retry record names its primary answer,
disliked when a thumbs-down does. Feedback on answers that were not mirrored is counted, not rated (the
data directory holds no count of the requests it came from).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shadowtap.feedback import RETRY_SIGNAL
from shadowtap.records import PairRecord, jsonl_lines
from shadowtap.report.numbers import Rate

__all__ = ["FeedbackStats", "feedback_stats", "read_feedback_rows"]

THUMBS_DOWN = "thumbs_down"
ALL = "all"


@dataclass(slots=True)
class FeedbackStats:
    segment: str
    pairs: int = 0
    retried: set[str] = field(default_factory=set)  # pair ids
    disliked: set[str] = field(default_factory=set)  # pair ids
    signals: Counter[str] = field(default_factory=Counter)  # every record, mirrored or not
    unmirrored: int = 0  # records on answers that are no pair here
    disliked_judged: int = 0
    disliked_candidate_wins: int = 0

    @property
    def retry_rate(self) -> Rate:
        return Rate(len(self.retried), self.pairs)

    @property
    def thumbs_down_rate(self) -> Rate:
        return Rate(len(self.disliked), self.pairs)

    @property
    def candidate_wins_when_disliked(self) -> Rate:
        return Rate(self.disliked_candidate_wins, self.disliked_judged)


def read_feedback_rows(path: Path) -> list[dict[str, Any]]:
    """Feedback records as the report reads any file: what parses, with fallbacks for each field."""
    if not path.exists():
        return []
    rows = []
    with path.open("rb") as handle:
        for _, line in jsonl_lines(handle):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("signal"), str):
                rows.append(row)
    return rows


def _segment(pair: PairRecord) -> str:
    return str((pair.get("tags") or {}).get("segment") or "none")


def _stats(table: dict[str, FeedbackStats], segment: str) -> FeedbackStats:
    if segment not in table:
        table[segment] = FeedbackStats(segment)
    return table[segment]


def _count_record(table: dict[str, FeedbackStats], row: Mapping[str, Any], pair: PairRecord | None) -> None:
    signal = str(row["signal"])
    segment = _segment(pair) if pair is not None else str(row.get("segment") or "none")
    for stats in (_stats(table, segment), _stats(table, ALL)):
        stats.signals[signal] += 1
        if pair is None:
            stats.unmirrored += 1
        elif signal == RETRY_SIGNAL:
            stats.retried.add(pair["id"])
        elif signal == THUMBS_DOWN:
            stats.disliked.add(pair["id"])


def feedback_stats(
    pairs: list[PairRecord], feedback: Iterable[Mapping[str, Any]], judge_outcomes: Mapping[str, str]
) -> dict[str, FeedbackStats]:
    """Per segment (and `all`): the rates above. `judge_outcomes` is the judge's pair verdict by pair id."""
    table: dict[str, FeedbackStats] = {}
    by_id = {str(p.get("id")): p for p in pairs}
    by_response = {p["primary"].get("response_id"): p for p in pairs if isinstance(p.get("primary"), dict)}
    by_response.pop(None, None)
    for pair in pairs:
        for stats in (_stats(table, _segment(pair)), _stats(table, ALL)):
            stats.pairs += 1
    for row in feedback:
        matched = by_id.get(str(row.get("pair_id"))) or by_response.get(row.get("response_id"))
        _count_record(table, row, matched)
    for stats in table.values():
        verdicts = [judge_outcomes[p] for p in stats.disliked if p in judge_outcomes]
        stats.disliked_judged = len(verdicts)
        stats.disliked_candidate_wins = verdicts.count("candidate_win")
    return table if any(s.signals for s in table.values()) else {}
