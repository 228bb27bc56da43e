"""Building the configured scorers and asking them why a pair needs a human: what a plug-in declares."""

from __future__ import annotations

import re
from typing import Any, ClassVar

import pytest
from prometheus_client import CollectorRegistry

import shadowtap.scorers
from shadowtap.config import ENV_PREFIX, load_settings
from shadowtap.errors import ConfigError
from shadowtap.metrics import ScoringMetrics
from shadowtap.records import PairRecord, Score
from shadowtap.scorers import (
    FormatScorer,
    JudgeScorer,
    LatencyLengthScorer,
    RefusalScorer,
    ScorerPlugin,
    ScoringPipeline,
    build_scorers,
)
from shadowtap.testing.pairs import make_pair, make_side

pytestmark = pytest.mark.unit

BUILT_IN = (FormatScorer, RefusalScorer, JudgeScorer, LatencyLengthScorer)
REFUSAL = "I'm sorry, but I can't help with that."
JSON_ASKED = {
    "model": "m",
    "messages": [{"role": "user", "content": "JSON, please."}],
    "response_format": {"type": "json_object"},
}


def pipeline_for(scorers: dict[str, Any]) -> ScoringPipeline:
    metrics = ScoringMetrics(CollectorRegistry())
    return ScoringPipeline(build_scorers({"scorers": scorers}, metrics, frozenset()), metrics, frozenset())


@pytest.mark.parametrize(
    ("scorers", "message"),
    [
        ({"latency": {"tolerence": 0.2}}, "scoring.scorers.latency.tolerence: unknown key"),
        ({"latency": {"tolerance": 1.5}}, "scoring.scorers.latency.tolerance: "),
        ({"refusal": {"strict": True}}, "scoring.scorers.refusal.strict: unknown key"),
        ({"format": {"rules": [{"jsn": True}]}}, "scoring.scorers.format.rules.0.jsn: unknown key"),
        ({"judge": {"base_url": "http://127.0.0.1:9/v1"}}, "scoring.scorers.judge.model: required"),
        (
            {"judge": {"base_url": "ftp://x", "model": "j"}},
            "scoring.scorers.judge.base_url: must be an http(s) URL",
        ),
        ({"spelling": {}}, "scoring.scorers.spelling: no such scorer"),
    ],
)
def test_a_scorer_setting_is_checked_by_that_scorer_naming_its_key(
    scorers: dict[str, Any], message: str
) -> None:

    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        build_scorers({"scorers": scorers}, None, frozenset())


def test_the_configured_scorers_are_built_from_a_loaded_config_and_false_disables_one() -> None:
    settings = load_settings(
        overrides={"scoring": {"scorers": {"format": None, "refusal": {}, "latency": False}}}, environ={}
    )

    scorers = build_scorers(settings.scoring, None, frozenset())

    assert [type(s) for s in scorers] == [FormatScorer, RefusalScorer]


def test_every_built_in_scorer_declares_its_contract() -> None:
    for cls in BUILT_IN:
        assert cls.name and cls.outcomes
        assert cls.config_model.model_config.get("frozen") is True
        assert cls.config_model.model_config.get("extra") == "forbid"
        # The variables a scorer reads itself lie under the prefix the config loader leaves to it.
        assert all(v.startswith(f"{ENV_PREFIX}{cls.name.upper()}_") for v in cls.config_model.env_vars)
    scorers = build_scorers({}, None, frozenset())
    assert all(isinstance(s, ScorerPlugin) for s in scorers)


def test_the_public_api_is_exported() -> None:
    for name in ("Scorer", "Score", "build_scorers", "ScoringPipeline", "FormatScorer", "JudgeScorer"):
        assert name in shadowtap.scorers.__all__
        assert getattr(shadowtap.scorers, name) is not None


async def test_a_candidate_refusing_what_the_primary_answered_is_queued_for_review() -> None:
    pipeline = pipeline_for({"format": {}, "refusal": {}, "latency": {}})
    pair = make_pair("Your invoice is attached.", REFUSAL)

    records, review = await pipeline.score_pair(pair)

    assert [item["reason"] for item in review] == ["candidate_refused"]
    assert review[0]["pair_id"] == pair["id"] and review[0]["scores"] == records


async def test_a_format_regression_is_queued_for_review_and_a_format_fix_is_not() -> None:
    pipeline = pipeline_for({"format": {}, "refusal": {}})

    _, regressed = await pipeline.score_pair(make_pair('{"ok": true}', "Sure: ok", request=JSON_ASKED))
    _, fixed = await pipeline.score_pair(make_pair("Sure: ok", '{"ok": true}', request=JSON_ASKED))

    assert [item["reason"] for item in regressed] == ["format_regression"]
    assert fixed == []


async def test_a_scorer_that_is_not_enabled_raises_no_review_reason() -> None:
    pipeline = pipeline_for({"format": {}})

    _, review = await pipeline.score_pair(make_pair("Your invoice is attached.", REFUSAL))

    assert review == []


class SlowCandidate:
    """A plug-in with a review reason of its own, which the pipeline knows nothing about."""

    name: ClassVar[str] = "slow"
    outcomes: ClassVar[frozenset[str]] = frozenset({"slow", "ok"})
    config_model: ClassVar[type[Any]] = LatencyLengthScorer.config_model
    review_reasons: ClassVar[frozenset[str]] = frozenset({"candidate_too_slow"})

    async def score(self, pair: PairRecord) -> list[Score]:
        slow = (pair["candidate"]["latency_ms"] or 0) > 10 * (pair["primary"]["latency_ms"] or 0)
        return [Score(self.name, "pair", "slow" if slow else "ok")]

    def reasons_for_review(self, scores: list[Score]) -> list[str]:
        slow = any(s.scorer == self.name and s.outcome == "slow" for s in scores)
        return ["candidate_too_slow"] if slow else []


async def test_review_reasons_come_from_the_scorers_including_a_plug_ins_own() -> None:
    metrics = ScoringMetrics(CollectorRegistry())
    scorers = [SlowCandidate(), *build_scorers({"scorers": {"refusal": {}}}, metrics, frozenset())]
    pipeline = ScoringPipeline(scorers, metrics, frozenset())
    slow_refusal = make_pair("Your invoice is attached.", candidate=make_side(REFUSAL, latency_ms=500.0))

    _, review = await pipeline.score_pair(slow_refusal)

    assert [item["reason"] for item in review] == ["candidate_too_slow", "candidate_refused"]


async def test_an_answer_cut_at_the_recording_limit_is_not_scored_on_its_content() -> None:
    # A plain body over shadow.max_record_bytes is recorded as its first bytes, unparsed: judged as an
    # answer it would read as a format failure and, here, a refusal.
    registry = CollectorRegistry()
    metrics = ScoringMetrics(registry)
    scorers = {
        "format": {},
        "refusal": {"detector": "cues"},
        "tools": {},
        "latency": {},
        # Nothing listens there: a judge call fails (and is counted) at once.
        "judge": {"base_url": "http://127.0.0.1:9/v1", "model": "judge", "max_retries": 0, "timeout_s": 2},
    }
    pipeline = ScoringPipeline(
        build_scorers({"scorers": scorers}, metrics, frozenset()), metrics, frozenset()
    )
    cut = '{"id": "chatcmpl-1", "choices": [{"message": {"content": "I\'m sorry, but I can\'t help with th'

    def pair(truncated: bool) -> PairRecord:
        return make_pair(
            primary=make_side('{"ok": true}', latency_ms=100.0),
            candidate=make_side(cut, outputs=[], truncated=True, latency_ms=900.0)
            if truncated
            else make_side(cut, latency_ms=900.0),
            request=JSON_ASKED,
        )

    whole, whole_review = await pipeline.score_pair(pair(truncated=False))
    assert {(r["scorer"], r["side"], r["outcome"]) for r in whole} >= {
        ("format", "candidate", "fail"),
        ("refusal", "pair", "candidate_only_refused"),
        ("latency", "pair", "candidate_slower"),
    }
    assert {item["reason"] for item in whole_review} >= {"format_regression", "candidate_refused"}

    records, review = await pipeline.score_pair(pair(truncated=True))
    assert [(r["scorer"], r["side"]) for r in records if r["side"] != "primary"] == []
    assert ("format", "primary", "pass") in {(r["scorer"], r["side"], r["outcome"]) for r in records}
    assert review == []
    assert registry.get_sample_value("shadowtap_judge_skipped_total", {"reason": "truncated"}) == 1
