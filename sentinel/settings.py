"""The `sentinel` section of the config, validated once into a frozen object.

Every key has a default, so a sentinel runs with no config at all. Scorers default to the production
ones (`scoring.scorers`), less those that make no sense against a recorded reference (latency) or that
the sentinel calls in its own way (the judge, which compares each answer with the reference).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shadowtap.config import Settings, section_error
from shadowtap.errors import ConfigError

CONFIG_KEY = "sentinel"
# Scorers the sentinel never runs through the pipeline: latency compares against the recorded
# reference's latency (meaningless on a replay), the judge is asked against the reference instead.
NOT_IN_PIPELINE = frozenset({"latency", "judge"})
DEFAULT_PIPELINE_SCORERS: dict[str, Any] = {"format": {}, "refusal": {}}


class SentinelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Building a set
    strata: list[str] = Field(default_factory=lambda: ["segment", "length_bucket"], min_length=1)
    size: int = Field(default=150, ge=1)
    min_per_cell: int = Field(default=30, ge=0)
    near_duplicate_threshold: float = Field(default=0.9, gt=0, le=1)
    shingle_words: int = Field(default=3, ge=1)
    seed: int = 1234
    sets_dir: str | None = None

    # Running
    api_key: str | None = None
    concurrency: int = Field(default=8, ge=1)
    retries: int = Field(default=3, ge=0)
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    timeout_s: float = Field(default=120.0, gt=0)
    max_tokens: int | None = Field(default=None, gt=0)
    scorers: dict[str, Any] | None = None
    judge: dict[str, Any] | None = None
    bootstrap_samples: int = Field(default=2000, ge=100)

    # History, gate, metrics
    history: str | None = None
    review_queue: str | None = None
    threshold_points: float = Field(default=5.0, ge=0)
    thresholds: dict[str, float] = Field(default_factory=dict)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    pushgateway: str | None = None
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("thresholds")
    @classmethod
    def _points(cls, thresholds: dict[str, float]) -> dict[str, float]:
        for mode, points in thresholds.items():
            if points < 0:
                raise ValueError(f"threshold for {mode} must be >= 0 points, got {points}")
        return thresholds

    def threshold_for(self, failure_mode: str) -> float:
        """The regression threshold of one failure mode, in points (5 = 0.05 on a 0..1 rate)."""
        return self.thresholds.get(failure_mode, self.threshold_points)


class SentinelConfig:
    """The sentinel's settings together with what it borrows from the rest of the config."""

    def __init__(self, settings: Settings) -> None:
        try:
            self.sentinel = SentinelSettings.model_validate(settings.sentinel)
        except ValidationError as exc:
            raise ConfigError(section_error(CONFIG_KEY, exc)) from None
        self.settings = settings

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def history_path(self) -> Path:
        return Path(self.sentinel.history) if self.sentinel.history else self.data_dir / "sentinel.sqlite"

    @property
    def review_path(self) -> Path:
        return (
            Path(self.sentinel.review_queue) if self.sentinel.review_queue else self.data_dir / "review.jsonl"
        )

    @property
    def sets_dir(self) -> Path:
        return Path(self.sentinel.sets_dir) if self.sentinel.sets_dir else self.data_dir / "sentinel-sets"

    @property
    def segments(self) -> frozenset[str]:
        return frozenset(self.settings.tags.segments)

    def pipeline_scorers(self) -> dict[str, Any]:
        """`sentinel.scorers`, else the production `scoring.scorers` less latency and judge."""
        if self.sentinel.scorers is not None:
            wanted = dict(self.sentinel.scorers)
        else:
            configured = self.settings.scoring.get("scorers")
            wanted = dict(configured) if isinstance(configured, dict) else dict(DEFAULT_PIPELINE_SCORERS)
        return {name: cfg for name, cfg in wanted.items() if name not in NOT_IN_PIPELINE and cfg is not False}

    def judge_config(self) -> dict[str, Any] | None:
        """`sentinel.judge`, else a judge under `sentinel.scorers` or `scoring.scorers`, else None (no judge
        comparisons)."""
        if self.sentinel.judge is not None:
            return dict(self.sentinel.judge)
        for scorers in (self.sentinel.scorers, self.settings.scoring.get("scorers")):
            if isinstance(scorers, dict) and "judge" in scorers:
                judge = scorers["judge"]
                return dict(judge) if isinstance(judge, dict) else None
        return None
