"""The `sentinel` section of the config (`SentinelSettings`, validated with the rest at load time) and
what the sentinel borrows from the other sections.

Every key has a default, so a sentinel runs with no config at all. Scorers default to the production
ones (`scoring.scorers`), less those that make no sense against a recorded reference (latency) or that
the sentinel calls in its own way (the judge, which compares each answer with the reference).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shadowtap.config import SentinelSettings, Settings

__all__ = ["CONFIG_KEY", "DEFAULT_PIPELINE_SCORERS", "NOT_IN_PIPELINE", "SentinelConfig", "SentinelSettings"]

CONFIG_KEY = "sentinel"
# Scorers the sentinel never runs through the pipeline: latency compares against the recorded
# reference's latency (meaningless on a replay), the judge is asked against the reference instead.
NOT_IN_PIPELINE = frozenset({"latency", "judge"})
DEFAULT_PIPELINE_SCORERS: dict[str, Any] = {"format": {}, "refusal": {}}


class SentinelConfig:
    """The sentinel's settings together with what it borrows from the rest of the config."""

    def __init__(self, settings: Settings) -> None:
        self.sentinel: SentinelSettings = settings.sentinel  # validated with the rest at load time
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
    def calibration_path(self) -> Path:
        """The judge calibration record (`shadowtap judge calibrate` writes it)."""
        configured = self.sentinel.judge_calibration
        return Path(configured) if configured else self.data_dir / "judge-calibration.json"

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
            configured = self.settings.scoring.scorers
            wanted = dict(configured) if configured is not None else dict(DEFAULT_PIPELINE_SCORERS)
        return {name: cfg for name, cfg in wanted.items() if name not in NOT_IN_PIPELINE and cfg is not False}

    def judge_config(self) -> dict[str, Any] | None:
        """`sentinel.judge`, else a judge under `sentinel.scorers` or `scoring.scorers`, else None (no judge
        comparisons)."""
        if self.sentinel.judge is not None:
            return dict(self.sentinel.judge)
        for scorers in (self.sentinel.scorers, self.settings.scoring.scorers):
            if isinstance(scorers, dict) and "judge" in scorers:
                judge = scorers["judge"]
                return dict(judge) if isinstance(judge, dict) else None
        return None
