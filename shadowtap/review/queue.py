"""The review queue: which pairs a human should look at, and why.

Three sources, each pair once (the first reason wins): the review items the scorers wrote
(`review.jsonl`, by reason), the pairs users gave a thumbs-down (`feedback.jsonl`, matched by pair id or by
the primary's response id), and a random calibration sample of the other pairs (`review.calibration_share`
of them), so that the judge is calibrated on ordinary traffic too, not only on the cases that tripped a
threshold. The queue is shuffled: the order says nothing about why a pair is in it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shadowtap.feedback import read_feedback
from shadowtap.records import PairRecord, jsonl_lines

__all__ = ["CALIBRATION", "THUMBS_DOWN", "QueueItem", "ReviewQueue", "build_queue", "read_pairs"]

THUMBS_DOWN = "thumbs_down"
CALIBRATION = "calibration"


@dataclass(frozen=True, slots=True)
class QueueItem:
    pair_id: str
    reason: str


@dataclass
class ReviewQueue:
    """The queued pairs in review order, and every recorded pair by id."""

    items: list[QueueItem]
    pairs: dict[str, PairRecord] = field(default_factory=dict)

    def reasons(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.reason] = counts.get(item.reason, 0) + 1
        return counts


def _records(path: Path) -> Iterator[dict[str, object]]:
    if not path.exists():
        return
    with path.open("rb") as handle:
        for _, line in jsonl_lines(handle):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn line of a crashed writer; the pair is still in pairs.jsonl
            if isinstance(record, dict):
                yield record


def read_pairs(path: Path) -> dict[str, PairRecord]:
    """Pair records (v1 and v2) by id, in file order; a re-delivered pair keeps its first record."""
    pairs: dict[str, PairRecord] = {}
    for record in _records(path):
        pair_id = record.get("id")
        if isinstance(pair_id, str) and isinstance(record.get("primary"), dict):
            pairs.setdefault(pair_id, record)  # type: ignore[arg-type]  # a pair record, by its keys
    return pairs


def _flagged(data_dir: Path, pairs: dict[str, PairRecord]) -> list[QueueItem]:
    """Review items, then thumbs-down pairs; each pair once, with its first reason."""
    flagged: dict[str, str] = {}
    for item in _records(data_dir / "review.jsonl"):
        pair_id, reason = item.get("pair_id"), item.get("reason")
        if isinstance(pair_id, str) and isinstance(reason, str) and pair_id in pairs:
            flagged.setdefault(pair_id, reason)
    by_response = {p["primary"].get("response_id"): pair_id for pair_id, p in pairs.items()}
    for record in read_feedback(data_dir / "feedback.jsonl"):
        if record["signal"] != THUMBS_DOWN:
            continue
        pair_id = record["pair_id"] or by_response.get(record["response_id"])
        if pair_id is not None and pair_id in pairs:
            flagged.setdefault(pair_id, THUMBS_DOWN)
    return [QueueItem(pair_id, reason) for pair_id, reason in flagged.items()]


def build_queue(data_dir: Path, calibration_share: float, rng: random.Random) -> ReviewQueue:
    """The queue over a data directory: flagged pairs and a calibration sample, shuffled with `rng`."""
    pairs = read_pairs(data_dir / "pairs.jsonl")
    items = _flagged(data_dir, pairs)
    queued = {item.pair_id for item in items}
    others = [pair_id for pair_id in pairs if pair_id not in queued]
    sample = rng.sample(others, round(len(others) * calibration_share))
    items.extend(QueueItem(pair_id, CALIBRATION) for pair_id in sample)
    rng.shuffle(items)
    return ReviewQueue(items, pairs)
