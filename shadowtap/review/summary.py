"""What the review page's summary says: progress through the queue, and how far reviewers agree.

Agreement is on `better` over the pairs two or more reviewers labelled (each reviewer's latest label on a
pair): the share of agreeing reviewer pairs per pair, averaged, and Fleiss' kappa, which discounts the
agreement chance alone would give.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from shadowtap.labels import Label
from shadowtap.review.queue import ReviewQueue

__all__ = ["Agreement", "Progress", "agreement", "latest_labels", "progress"]


def latest_labels(labels: list[Label]) -> dict[tuple[str, str], Label]:
    """Each reviewer's latest label on each pair, keyed (pair id, reviewer)."""
    return {(label["pair_id"], label["reviewer"]): label for label in labels}


@dataclass(frozen=True)
class Agreement:
    pairs: int  # pairs labelled by two or more reviewers
    reviewers: int
    observed: float | None  # mean share of agreeing reviewer pairs
    kappa: float | None  # Fleiss' kappa; None when it is undefined (a single category used)


def agreement(labels: list[Label]) -> Agreement:
    by_pair: dict[str, list[str]] = {}
    for (pair_id, _), label in latest_labels(labels).items():
        by_pair.setdefault(pair_id, []).append(label["better"])
    rated = {pair_id: verdicts for pair_id, verdicts in by_pair.items() if len(verdicts) >= 2}
    reviewers = len({label["reviewer"] for label in labels})
    if not rated:
        return Agreement(0, reviewers, None, None)
    shares = []
    totals: Counter[str] = Counter()
    for verdicts in rated.values():
        counts = Counter(verdicts)
        n = len(verdicts)
        shares.append(sum(c * (c - 1) for c in counts.values()) / (n * (n - 1)))
        totals.update(counts)
    observed = sum(shares) / len(shares)
    ratings = sum(totals.values())
    chance = sum((c / ratings) ** 2 for c in totals.values())
    kappa = None if chance >= 1.0 else (observed - chance) / (1.0 - chance)
    return Agreement(len(rated), reviewers, observed, kappa)


@dataclass(frozen=True)
class Progress:
    done: int
    left: int
    by_reason: dict[str, tuple[int, int]]  # reason -> (done, left)


def progress(queue: ReviewQueue, labels: list[Label], reviewer: str) -> Progress:
    labelled = {label["pair_id"] for label in labels if label["reviewer"] == reviewer}
    by_reason: dict[str, tuple[int, int]] = {}
    for item in queue.items:
        done, left = by_reason.get(item.reason, (0, 0))
        by_reason[item.reason] = (done + 1, left) if item.pair_id in labelled else (done, left + 1)
    done = sum(d for d, _ in by_reason.values())
    left = sum(n for _, n in by_reason.values())
    return Progress(done, left, dict(sorted(by_reason.items())))
