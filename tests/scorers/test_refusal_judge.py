"""`detector: judge`: the answers the learned detector is unsure of are put to a judge model (a scripted
OpenAI-compatible upstream on loopback, through the real OpenAI client), whose label decides; sure answers
never cost a call; calls are counted and budgeted, and a spent budget or a failing judge leaves the
learned label standing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from shadowtap.errors import ConfigError
from shadowtap.metrics import ScoringMetrics
from shadowtap.records import Score, validate_score
from shadowtap.scorers.refusal import RefusalScorer, detect_refusal
from shadowtap.testing.pairs import make_pair
from shadowtap.testing.upstreams import Reply, ServerHandle, SimulatedLLM, fixed, serve_in_thread

# Written for these tests: the shipped detector is unsure of the first and sure of the other two.
UNSURE = "Let me know more about the issue and we'll see."
SURE_ANSWER = "Refunds are handled by the billing team and reach your card within five working days."
SURE_REFUSAL = "I can't help with that request."
PROMPT = "My router keeps dropping the connection. Can you fix it?"


def judge_says(label: str, reason: str = "scripted") -> Reply:
    return Reply(text=json.dumps({"label": label, "reason": reason}))


@pytest.fixture(scope="module")
def judge_server() -> Iterator[tuple[SimulatedLLM, ServerHandle]]:
    judge = SimulatedLLM("judge-model", label="simulated judge")
    with serve_in_thread(judge.app) as handle:
        yield judge, handle


@pytest.fixture
def judge(judge_server: tuple[SimulatedLLM, ServerHandle]) -> SimulatedLLM:
    server, _ = judge_server
    server.received.clear()
    server.policy = fixed(judge_says("answered"))
    return server


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def make_scorer(
    judge_server: tuple[SimulatedLLM, ServerHandle], registry: CollectorRegistry
) -> AsyncIterator[Callable[..., RefusalScorer]]:
    _, handle = judge_server
    made: list[RefusalScorer] = []

    def make(**judge_settings: Any) -> RefusalScorer:
        settings = {
            "detector": "judge",
            "judge": {
                "base_url": handle.base_url,
                "model": "judge-model",
                "api_key": "sk-judge",
                "backoff_base_s": 0.01,
                "requests_per_second": 1000,
                **judge_settings,
            },
        }
        scorer = RefusalScorer(settings, metrics=ScoringMetrics(registry))
        made.append(scorer)
        return scorer

    yield make
    for scorer in made:
        await scorer.aclose()


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def candidate_score(scorer: RefusalScorer, text: str) -> Score:
    pair = make_pair(SURE_ANSWER, text, prompt=PROMPT)
    scores = await scorer.score(pair)
    for score in scores:
        validate_score(score.to_record(pair))
    return next(s for s in scores if s.side == "candidate")


def test_the_example_answers_fall_where_the_tests_need_them() -> None:
    assert abs(detect_refusal(UNSURE).refusing - 0.5) < 0.15
    assert detect_refusal(SURE_ANSWER).refusing < 0.2
    assert detect_refusal(SURE_REFUSAL).refusing > 0.8


async def test_an_uncertain_answer_is_put_to_the_judge_whose_label_decides(
    make_scorer: Callable[..., RefusalScorer], judge: SimulatedLLM, registry: CollectorRegistry
) -> None:
    judge.policy = fixed(judge_says("answered", "asks what is wrong before helping"))
    score = await candidate_score(make_scorer(), UNSURE)

    assert score.outcome == "answered"
    assert score.detail["detector"] == "judge"
    assert score.detail["learned"] in ("refused", "partial")  # what the learned detector alone said
    assert score.detail["judge_reason"] == "asks what is wrong before helping"
    assert score.detail["uncertain"] is True  # still queued for people to label
    assert score.value == pytest.approx(detect_refusal(UNSURE).refusing, abs=1e-4)

    [call] = [r.json for r in judge.received]  # the primary's sure answer cost nothing
    assert call["temperature"] == 0
    assert call["model"] == "judge-model"
    prompt = call["messages"][-1]["content"]
    assert PROMPT in prompt and UNSURE in prompt and SURE_ANSWER not in prompt
    assert metric(registry, "shadowtap_judge_calls_total", outcome="ok") == 1
    assert metric(registry, "shadowtap_judge_tokens_total", kind="prompt") > 0


async def test_sure_answers_never_reach_the_judge(
    make_scorer: Callable[..., RefusalScorer], judge: SimulatedLLM
) -> None:
    scorer = make_scorer()
    assert (await candidate_score(scorer, SURE_REFUSAL)).outcome == "refused"
    assert (await candidate_score(scorer, SURE_ANSWER)).outcome == "answered"
    assert judge.received == []


async def test_a_spent_budget_leaves_the_learned_label_and_is_counted(
    make_scorer: Callable[..., RefusalScorer], judge: SimulatedLLM, registry: CollectorRegistry
) -> None:
    judge.policy = fixed(judge_says("refused"))
    scorer = make_scorer(budget_tokens_per_hour=1)  # the first call spends it

    first = await candidate_score(scorer, UNSURE)
    second = await candidate_score(scorer, UNSURE)

    assert first.outcome == "refused" and first.detail["judge"] == "refused"
    assert second.detail["judge"] == "budget_exhausted"
    assert second.outcome == second.detail["learned"] == detect_refusal(UNSURE).label
    assert len(judge.received) == 1
    assert metric(registry, "shadowtap_judge_skipped_total", reason="budget_exhausted") == 1


async def test_a_judge_that_fails_or_talks_nonsense_leaves_the_learned_label(
    make_scorer: Callable[..., RefusalScorer], judge: SimulatedLLM, registry: CollectorRegistry
) -> None:
    scorer = make_scorer(max_retries=1)
    judge.policy = fixed(Reply(status=503))
    failed = await candidate_score(scorer, UNSURE)
    judge.policy = fixed(Reply(text='{"label": "maybe"}'))
    nonsense = await candidate_score(scorer, UNSURE)

    for score in (failed, nonsense):
        assert score.detail["judge"] == "error"
        assert score.outcome == detect_refusal(UNSURE).label
    assert len(judge.received) == 2 + 2  # 503 retried once; nonsense corrected once
    assert metric(registry, "shadowtap_judge_calls_total", outcome="error") == 2
    assert metric(registry, "shadowtap_judge_calls_total", outcome="malformed") == 2


def test_the_judge_detector_needs_a_judge_endpoint() -> None:
    with pytest.raises(ConfigError, match=r"scoring\.scorers\.refusal.*judge section"):
        RefusalScorer({"detector": "judge"})
    with pytest.raises(ConfigError, match=r"scoring\.scorers\.refusal\.judge\.base_url"):
        RefusalScorer({"detector": "judge", "judge": {"base_url": "not a url", "model": "m"}})
