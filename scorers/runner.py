"""Running the enabled scorers on a pair: plug-in discovery, per-scorer isolation, metrics, review queue.

Scorers come from the `shadowtap.scorers` entry point group (the built-ins are registered there too),
enabled and configured under `scoring.scorers` in the YAML config. One scorer failing on a pair is
counted and logged; the others still run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pydantic import ValidationError

from shadowtap.config import SCORER_ENTRY_POINT_GROUP, ScorerEntry, ScoringSettings, section_error
from shadowtap.errors import ConfigError
from shadowtap.metrics import ScoringMetrics, segment_label
from shadowtap.records import PairRecord, ReviewItem, Score, ScoreRecord, is_noise_floor
from shadowtap.scorers.base import Scorer, ScorerPlugin, config_key, validate_config

__all__ = ["DEFAULT_SCORERS", "ENTRY_POINT_GROUP", "ScoringPipeline", "available_scorers", "build_scorers"]

log = logging.getLogger("shadowtap.scoring")

ENTRY_POINT_GROUP = SCORER_ENTRY_POINT_GROUP
# Scorers enabled when the config names none: the ones that need no outside service.
DEFAULT_SCORERS: dict[str, dict[str, Any]] = {"format": {}, "tools": {}, "refusal": {}, "latency": {}}


def available_scorers() -> dict[str, EntryPoint]:
    """The registered scorer plug-ins by name (not loaded yet)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _scoring_settings(scoring: ScoringSettings | Mapping[str, Any]) -> ScoringSettings:
    if isinstance(scoring, ScoringSettings):
        return scoring
    try:
        return ScoringSettings.model_validate(dict(scoring))
    except ValidationError as exc:
        raise ConfigError(section_error("scoring", exc)) from None


def _build_one(entry: EntryPoint, config: Mapping[str, Any], **context: Any) -> Scorer:
    """One plug-in, its config validated by the model it declares (a plug-in without one gets the
    mapping as it is and checks it itself)."""
    cls = entry.load()
    model = getattr(cls, "config_model", None)
    settings = validate_config(model, entry.name, config) if model is not None else dict(config)
    try:
        scorer: Scorer = cls(settings, **context)
    except ValueError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith("scoring.") else f"{config_key(entry.name)}: {msg}") from None
    return scorer


def build_scorers(
    scoring: ScoringSettings | Mapping[str, Any], metrics: ScoringMetrics | None, segments: frozenset[str]
) -> list[Scorer]:
    """Instantiate the scorers named under `scoring.scorers` (default: format, refusal, latency).

    `scoring` is the `scoring` section, or a mapping of its keys (validated here). A bad setting is a
    `ConfigError` naming its key, `scoring.scorers.<name>.<key>`."""
    settings = _scoring_settings(scoring)
    wanted: Mapping[str, ScorerEntry] = DEFAULT_SCORERS if settings.scorers is None else settings.scorers
    found = available_scorers()
    scorers: list[Scorer] = []
    for name, config in wanted.items():
        if config is False:
            continue
        if name not in found:
            raise ConfigError(f"{config_key(name)}: no such scorer (available: {', '.join(sorted(found))})")
        scorers.append(_build_one(found[name], config, metrics=metrics, segments=segments))
    return scorers


class ScoringPipeline:
    """Scores one pair with every enabled scorer, concurrently, and reports what it found."""

    def __init__(self, scorers: Sequence[Scorer], metrics: ScoringMetrics, segments: frozenset[str]) -> None:
        self.scorers = list(scorers)
        self.metrics = metrics
        self.segments = segments
        # The scorers that say which review reasons a pair's scores call for.
        self._reviewers = [s for s in self.scorers if isinstance(s, ScorerPlugin)]

    async def aclose(self) -> None:
        """Close what the scorers hold open (the judge's HTTP connections); call it on their event loop."""
        for scorer in self.scorers:
            close = getattr(scorer, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception as exc:  # closing one scorer must not keep the others open
                    log.warning("closing scorer %s failed: %s: %s", scorer.name, type(exc).__name__, exc)

    def review_reasons(self, scores: list[Score]) -> list[str]:
        """Why a human should look at a pair, as its scorers see its scores; each reason once."""
        reasons: list[str] = []
        for scorer in self._reviewers:
            reasons.extend(r for r in scorer.reasons_for_review(scores) if r not in reasons)
        return reasons

    async def score_pair(self, pair: PairRecord) -> tuple[list[ScoreRecord], list[ReviewItem]]:
        """Returns (score records, review items). Metrics are not touched here: see `count`."""
        results = await asyncio.gather(*(self._run(s, pair) for s in self.scorers))
        scores = [score for batch in results for score in batch]
        records = [s.to_record(pair) for s in scores]
        review: list[ReviewItem] = [
            {
                "pair_id": pair["id"],
                "reason": reason,
                "tags": pair.get("tags") or {},
                "pair": pair,
                "scores": records,
            }
            for reason in self.review_reasons(scores)
            if not is_noise_floor(pair)  # the primary against itself: nothing for a human to look into
        ]
        return records, review

    def count(
        self, pair: PairRecord, records: list[ScoreRecord], review: list[ReviewItem], source: str
    ) -> None:
        """Export the outcomes of one scored pair; called once the records are safely stored."""
        segment = segment_label((pair.get("tags") or {}).get("segment"), self.segments)
        counter = self.metrics.noise_floor_scores if is_noise_floor(pair) else self.metrics.scores
        for r in records:
            counter.labels(scorer=r["scorer"], side=r["side"], outcome=r["outcome"], segment=segment).inc()
        for item in review:
            self.metrics.review_items.labels(reason=item["reason"]).inc()
        self.metrics.pairs_scored.labels(source=source).inc()

    async def _run(self, scorer: Scorer, pair: PairRecord) -> list[Score]:
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
