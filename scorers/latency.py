"""Latency and length comparisons per pair: candidate/primary ratios, exported as histograms."""

from __future__ import annotations

from typing import Any, ClassVar

from shadowtap.metrics import ScoringMetrics, segment_label
from shadowtap.records import Score


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

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        *,
        metrics: ScoringMetrics | None = None,
        segments: frozenset[str] = frozenset(),
    ) -> None:
        config = dict(config or {})
        self.tolerance = float(config.pop("tolerance", 0.1))
        if config:
            raise ValueError(f"scoring.scorers.latency: unknown key(s) {sorted(config)}")
        if not 0 <= self.tolerance < 1:
            raise ValueError("scoring.scorers.latency.tolerance: must be in [0, 1)")
        self.metrics = metrics
        self.segments = segments

    async def score(self, pair: dict[str, Any]) -> list[Score]:
        primary, candidate = pair.get("primary") or {}, pair.get("candidate") or {}
        if primary.get("error") is not None or candidate.get("error") is not None:
            return []
        ratios = {
            "latency": _ratio(candidate.get("latency_ms"), primary.get("latency_ms")),
            "ttft": _ratio(candidate.get("ttft_ms"), primary.get("ttft_ms")),
            "length": _ratio(len(candidate.get("text") or ""), len(primary.get("text") or "")),
        }
        if self.metrics is not None:
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
