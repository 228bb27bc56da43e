"""Latency and length comparisons per pair: candidate/primary ratios, exported as histograms."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field

from shadowtap.metrics import ScoringMetrics, segment_label
from shadowtap.records import PairRecord, Score, is_noise_floor, is_truncated
from shadowtap.scorers.base import ScorerConfig, validate_config

__all__ = ["LatencyConfig", "LatencyLengthScorer"]


class LatencyConfig(ScorerConfig):
    """`scoring.scorers.latency`: within `tolerance` of the primary's latency counts as the same."""

    tolerance: float = Field(default=0.1, ge=0, lt=1)


def _ratio(candidate: float | None, primary: float | None) -> float | None:
    if candidate is None or primary is None or primary <= 0:
        return None
    return candidate / primary


class LatencyLengthScorer:
    """How much slower (latency, TTFT) and longer (answer characters) the candidate is than the primary.

    Outcomes say which side was faster; the ratios go in `detail` and in `shadowtap_pair_ratio`.
    """

    name: ClassVar[str] = "latency"
    outcomes: ClassVar[frozenset[str]] = frozenset({"candidate_faster", "candidate_slower", "same"})
    config_model: ClassVar[type[LatencyConfig]] = LatencyConfig
    review_reasons: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        config: Mapping[str, Any] | LatencyConfig | None = None,
        *,
        metrics: ScoringMetrics | None = None,
        segments: frozenset[str] = frozenset(),
    ) -> None:
        self.config = validate_config(LatencyConfig, self.name, config)
        self.tolerance = self.config.tolerance
        self.metrics = metrics
        self.segments = segments

    def reasons_for_review(self, scores: list[Score]) -> list[str]:
        """Latency alone never calls for a human."""
        return []

    async def score(self, pair: PairRecord) -> list[Score]:
        primary, candidate = pair["primary"], pair["candidate"]
        if primary.get("error") is not None or candidate.get("error") is not None:
            return []
        # A side cut at the recording limit has only the start of its text; the candidate's connection is
        # dropped there, so its latency is not that of its whole answer either.
        cut = is_truncated(primary) or is_truncated(candidate)
        ratios = {
            "latency": None
            if is_truncated(candidate)
            else _ratio(candidate.get("latency_ms"), primary.get("latency_ms")),
            "ttft": _ratio(candidate.get("ttft_ms"), primary.get("ttft_ms")),
            "length": None
            if cut
            else _ratio(len(candidate.get("text") or ""), len(primary.get("text") or "")),
        }
        if self.metrics is not None and not is_noise_floor(pair):  # the candidate's ratios only
            segment = segment_label((pair.get("tags") or {}).get("segment"), self.segments)
            for metric, value in ratios.items():
                if value is not None:
                    self.metrics.ratio.labels(metric=metric, segment=segment).observe(value)
        latency = ratios["latency"]
        if latency is None:
            return []
        if latency > 1 + self.tolerance:
            outcome = "candidate_slower"
        elif latency < 1 - self.tolerance:
            outcome = "candidate_faster"
        else:
            outcome = "same"
        detail = {k: (None if v is None else round(v, 4)) for k, v in ratios.items()}
        return [Score(self.name, "pair", outcome, round(latency, 4), detail)]
