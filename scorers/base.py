"""The scorer plug-in contract: what a scorer declares about itself, and one async `score(pair)`.

A scorer class names itself (`name`), the outcomes it can give (`outcomes`), the frozen pydantic model
of its settings under `scoring.scorers.<name>` (`config_model`) and the review reasons it can raise
(`review_reasons`), and says which of them a pair's scores call for (`reasons_for_review`). The runner
reads these declarations; it never names a particular scorer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError

from shadowtap.config import section_error
from shadowtap.errors import ConfigError
from shadowtap.records import PairRecord, Score, SideName, is_truncated, side_of

__all__ = [
    "NoConfig",
    "Score",
    "Scorer",
    "ScorerConfig",
    "ScorerPlugin",
    "config_key",
    "side_text",
    "validate_config",
]


class ScorerConfig(BaseModel):
    """The base of a scorer's config model: frozen, unknown keys rejected.

    `env_vars` names the environment variables the scorer reads itself (secrets, say); they lie under
    `SHADOWTAP_<NAME>_`, which the config loader leaves to the plug-in of that name.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    env_vars: ClassVar[frozenset[str]] = frozenset()


class NoConfig(ScorerConfig):
    """The config model of a scorer that takes no settings."""


C = TypeVar("C", bound=ScorerConfig)


def config_key(name: str) -> str:
    """Where a scorer's settings live in the config: `scoring.scorers.<name>`."""
    return f"scoring.scorers.{name}"


def validate_config(model: type[C], name: str, config: Mapping[str, Any] | C | None) -> C:
    """`config` validated by a scorer's config model (an instance of it passes as is); a problem is a
    `ConfigError` naming the key, `scoring.scorers.<name>.<key>: problem`."""
    if isinstance(config, model):
        return config
    try:
        return model.model_validate(dict(config or {}))
    except ValidationError as exc:
        raise ConfigError(section_error(config_key(name), exc)) from None


@runtime_checkable
class Scorer(Protocol):
    """What the pipeline runs: a scorer judges one pair record and returns its verdicts.

    `score` is async so that a network-bound scorer (the judge) never blocks CPU-bound ones. It may
    return several `Score`s (one per side, and/or one for the pair); every outcome must be in `outcomes`.
    """

    name: ClassVar[str]
    outcomes: ClassVar[frozenset[str]]

    async def score(self, pair: PairRecord) -> list[Score]: ...


@runtime_checkable
class ScorerPlugin(Scorer, Protocol):
    """A scorer registered under the `shadowtap.scorers` entry point group, as `build_scorers` loads it:
    it also declares its config model and the review reasons it can raise. The class is called as
    `cls(config, metrics=..., segments=...)` with `config` already validated by `config_model`.

    `reasons_for_review` is given all the scores of one pair (every scorer's) and returns those of its
    `review_reasons` that call for a human to look at the pair.
    """

    config_model: ClassVar[type[ScorerConfig]]
    review_reasons: ClassVar[frozenset[str]]

    def reasons_for_review(self, scores: list[Score]) -> list[str]: ...


def side_text(pair: PairRecord, side: SideName) -> str | None:
    """The assembled output text of one side, or None when that side failed, gave no text, or was cut at
    the recording limit (only its start is in the record)."""
    part = side_of(pair, side)
    if (part.get("error") is not None and not part.get("text")) or is_truncated(part):
        return None
    return part.get("text")
