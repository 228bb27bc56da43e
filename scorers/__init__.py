"""Scorer plug-ins (format, refusal, judge, latency/length) and the pipeline that runs them.

A scorer is a class with a `name`, its `outcomes`, its `config_model` and `review_reasons`, and one
`async def score(pair) -> list[Score]` (see `ScorerPlugin`); it is registered under the
`shadowtap.scorers` entry point group and enabled under `scoring.scorers` in the config. The workers
that run the pipeline are `shadowtap.scorers.embedded` (the embedded default's scoring process, beside
the proxy) and `shadowtap.scorers.worker` (Kafka, and files offline).
"""

from shadowtap.records import Score
from shadowtap.scorers.base import NoConfig, Scorer, ScorerConfig, ScorerPlugin, side_text
from shadowtap.scorers.format import FormatConfig, FormatScorer
from shadowtap.scorers.judge import JudgeConfig, JudgeScorer
from shadowtap.scorers.latency import LatencyConfig, LatencyLengthScorer
from shadowtap.scorers.refusal import RefusalScorer, classify_refusal
from shadowtap.scorers.runner import DEFAULT_SCORERS, ScoringPipeline, available_scorers, build_scorers

__all__ = [
    "DEFAULT_SCORERS",
    "FormatConfig",
    "FormatScorer",
    "JudgeConfig",
    "JudgeScorer",
    "LatencyConfig",
    "LatencyLengthScorer",
    "NoConfig",
    "RefusalScorer",
    "Score",
    "Scorer",
    "ScorerConfig",
    "ScorerPlugin",
    "ScoringPipeline",
    "available_scorers",
    "build_scorers",
    "classify_refusal",
    "side_text",
]
