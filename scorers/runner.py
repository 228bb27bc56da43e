"""Running the enabled scorers on a pair: plug-in discovery, per-scorer isolation, metrics, review queue.

Scorers come from the `shadowtap.scorers` entry point group (the built-ins are registered there too),
enabled and configured under `scoring.scorers` in the YAML config. One scorer failing on a pair is
counted and logged; the others still run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from shadowtap.metrics import ScoringMetrics, segment_label
from shadowtap.records import Score
from shadowtap.scorers.base import Scorer

log = logging.getLogger("shadowtap.scoring")

ENTRY_POINT_GROUP = "shadowtap.scorers"
# Scorers enabled when the config names none: the ones that need no outside service.
DEFAULT_SCORERS: dict[str, dict[str, Any]] = {"format": {}, "refusal": {}, "latency": {}}


def available_scorers() -> dict[str, Callable[..., Scorer]]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}  # type: ignore[misc]


def build_scorers(
    scoring_config: dict[str, Any], metrics: ScoringMetrics | None, segments: frozenset[str]
) -> list[Scorer]:
    """Instantiate the scorers named under `scoring.scorers` (default: format, refusal, latency)."""
    wanted = scoring_config.get("scorers")
    if wanted is None:
        wanted = DEFAULT_SCORERS
    if not isinstance(wanted, dict):
        raise ValueError("scoring.scorers: must be a mapping of scorer name to its settings")
    found = available_scorers()
    scorers: list[Scorer] = []
    for name, config in wanted.items():
        if config is False:
            continue
        if name not in found:
            raise ValueError(
                f"scoring.scorers.{name}: no such scorer (available: {', '.join(sorted(found))})"
            )
        cls = found[name].load()  # type: ignore[attr-defined]
        try:
            scorer = cls(config if isinstance(config, dict) else {}, metrics=metrics, segments=segments)
        except ValueError as exc:
            msg = str(exc)
            raise ValueError(
                msg if msg.startswith("scoring.") else f"scoring.scorers.{name}: {msg}"
            ) from None
        scorers.append(scorer)
    return scorers


REVIEW_REASONS = ("candidate_refused", "judge_inconsistent", "format_regression")


def review_reasons(scores: list[Score]) -> list[str]:
    """Why a human should look at this pair, from its scores."""
    reasons = []
    by_key = {(s.scorer, s.side): s for s in scores}
    refusal = by_key.get(("refusal", "pair"))
    if refusal is not None and refusal.outcome == "candidate_only_refused":
        reasons.append("candidate_refused")
    judge = by_key.get(("judge", "pair"))
    if judge is not None and judge.detail.get("position_inconsistent"):
        reasons.append("judge_inconsistent")
    fmt_p, fmt_c = by_key.get(("format", "primary")), by_key.get(("format", "candidate"))
    if fmt_p is not None and fmt_c is not None and fmt_p.outcome == "pass" and fmt_c.outcome == "fail":
        reasons.append("format_regression")
    return reasons


class ScoringPipeline:
    """Scores one pair with every enabled scorer, concurrently, and reports what it found."""

    def __init__(self, scorers: list[Scorer], metrics: ScoringMetrics, segments: frozenset[str]) -> None:
        self.scorers = scorers
        self.metrics = metrics
        self.segments = segments

    async def score_pair(self, pair: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Returns (score records, review items). Metrics are not touched here: see `count`."""
        results = await asyncio.gather(*(self._run(s, pair) for s in self.scorers))
        scores = [score for batch in results for score in batch]
        records = [s.to_record(pair) for s in scores]
        review = [
            {
                "pair_id": pair["id"],
                "reason": reason,
                "tags": pair.get("tags") or {},
                "pair": pair,
                "scores": records,
            }
            for reason in review_reasons(scores)
        ]
        return records, review

    def count(
        self, pair: dict[str, Any], records: list[dict[str, Any]], review: list[dict[str, Any]], source: str
    ) -> None:
        """Export the outcomes of one scored pair; called once the records are safely stored."""
        segment = segment_label((pair.get("tags") or {}).get("segment"), self.segments)
        for r in records:
            self.metrics.scores.labels(
                scorer=r["scorer"], side=r["side"], outcome=r["outcome"], segment=segment
            ).inc()
        for item in review:
            self.metrics.review_items.labels(reason=item["reason"]).inc()
        self.metrics.pairs_scored.labels(source=source).inc()

    async def _run(self, scorer: Scorer, pair: dict[str, Any]) -> list[Score]:
        started = time.perf_counter()
        try:
            scores = await scorer.score(pair)
            for s in scores:
                if s.outcome not in scorer.outcomes:
                    raise ValueError(f"outcome {s.outcome!r} is not one of {sorted(scorer.outcomes)}")
            return scores
        except Exception as exc:  # one scorer's failure must not stop the others
            self.metrics.scorer_errors.labels(scorer=scorer.name).inc()
            log.warning(
                "scorer %s failed on pair %s: %s: %s", scorer.name, pair.get("id"), type(exc).__name__, exc
            )
            return []
        finally:
            self.metrics.scoring_latency.labels(scorer=scorer.name).observe(time.perf_counter() - started)
