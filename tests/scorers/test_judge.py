"""The judge scorer against a scripted judge on loopback, through the real OpenAI client."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shadowtap.errors import JudgeError, MalformedVerdict
from shadowtap.metrics import ScoringMetrics
from shadowtap.records import PairRecord, validate_score
from shadowtap.scorers.base import Scorer
from shadowtap.scorers.judge import JudgeScorer
from shadowtap.testing.pairs import WEATHER_TOOL, make_pair

CHAT = [{"role": "user", "content": "How do I reset my router?"}]
REQUEST = {"model": "prod", "messages": CHAT}
BILLING = {"segment": "billing"}
SHORT = "Unplug it."
LONG = "Unplug the router, wait ten seconds, plug it back in and wait for the lights to settle."
PROMPT_TOKENS, COMPLETION_TOKENS = 120, 15

# What the judge stand-in sends back: (HTTP status, reply text, extra headers).
Answer = tuple[int, str, dict[str, str]]


def verdict(winner: str, reason: str = "scripted") -> Answer:
    return 200, json.dumps({"winner": winner, "reason": reason}), {}


def answers_shown(body: dict[str, Any]) -> tuple[str, str]:
    """The answers the judge was shown as A and B, read from its prompt."""
    prompt = next(m["content"] for m in body["messages"] if m["role"] == "user")
    a = re.search(r"\[The Start of Answer A\]\n(.*?)\n\[The End of Answer A\]", prompt, re.DOTALL)
    b = re.search(r"\[The Start of Answer B\]\n(.*?)\n\[The End of Answer B\]", prompt, re.DOTALL)
    assert a is not None and b is not None, "answers not found in the judge prompt"
    return a.group(1), b.group(1)


class ScriptedJudge:
    """An OpenAI-compatible chat endpoint whose every answer comes from `policy(body)`; keeps what it received."""

    def __init__(self) -> None:
        self.policy: Callable[[dict[str, Any]], Answer] = lambda body: verdict("tie")
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])

    async def _chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        with self._lock:
            self.received.append(body)
        status, text, headers = self.policy(body)
        if status != 200:
            error = {"error": {"message": text, "type": "scripted_error", "code": str(status)}}
            return JSONResponse(error, status_code=status, headers=headers)
        completion = {
            "id": f"chatcmpl-{len(self.received)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            },
        }
        return JSONResponse(completion, headers=headers)


@pytest.fixture(scope="module")
def judge_server() -> Iterator[tuple[ScriptedJudge, str]]:
    judge = ScriptedJudge()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(judge.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "judge stand-in did not start"
        time.sleep(0.01)
    yield judge, f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=5)
    sock.close()


@pytest.fixture
def judge(judge_server: tuple[ScriptedJudge, str]) -> ScriptedJudge:
    server, _ = judge_server
    server.received.clear()
    server.policy = lambda body: verdict("tie")
    return server


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def make_scorer(
    judge_server: tuple[ScriptedJudge, str], registry: CollectorRegistry
) -> AsyncIterator[Callable[..., JudgeScorer]]:
    _, base_url = judge_server
    made: list[JudgeScorer] = []

    def make(**config: Any) -> JudgeScorer:
        clock = config.pop("clock", time.monotonic)
        settings = {
            "base_url": base_url,
            "model": "judge-model",
            "api_key": "sk-judge",
            "backoff_base_s": 0.01,
            "requests_per_second": 1000,
            **config,
        }
        scorer = JudgeScorer(
            settings, metrics=ScoringMetrics(registry), segments=frozenset({"billing"}), clock=clock
        )
        made.append(scorer)
        return scorer

    yield make
    for scorer in made:
        await scorer.aclose()


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def judged(scorer: JudgeScorer, pair: PairRecord) -> Any:
    [score] = await scorer.score(pair)
    assert score.outcome in scorer.outcomes
    validate_score(score.to_record(pair))
    return score


def test_judge_scorer_is_a_scorer(make_scorer: Callable[..., JudgeScorer]) -> None:
    assert isinstance(make_scorer(), Scorer)


async def test_a_judge_that_always_prefers_the_first_answer_shown_gives_an_inconsistent_tie(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer], registry: CollectorRegistry
) -> None:
    judge.policy = lambda body: verdict("A", "A is better")

    score = await judged(make_scorer(), make_pair(SHORT, LONG, request=REQUEST, tags=BILLING))

    assert score.outcome == "tie" and score.value == 0.0
    assert score.detail["position_inconsistent"] is True
    assert [v["winner"] for v in score.detail["verdicts"]] == ["A", "A"]
    assert metric(registry, "shadowtap_judge_position_inconsistent_total", segment="billing") == 1


async def test_a_judge_that_prefers_the_longer_answer_is_consistent_and_the_length_ratio_shows_it(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer], registry: CollectorRegistry
) -> None:
    def longer(body: dict[str, Any]) -> Answer:
        a, b = answers_shown(body)
        return verdict("A" if len(a) > len(b) else "B")

    judge.policy = longer
    scorer = make_scorer()

    candidate_longer = await judged(scorer, make_pair(SHORT, LONG, request=REQUEST, tags=BILLING))
    primary_longer = await judged(scorer, make_pair(LONG, SHORT, request=REQUEST, tags=BILLING))

    assert candidate_longer.outcome == "candidate_win" and candidate_longer.value == 1.0
    assert candidate_longer.detail["position_inconsistent"] is False
    assert candidate_longer.detail["length_ratio"] == round(len(LONG) / len(SHORT), 4)
    assert primary_longer.outcome == "primary_win" and primary_longer.value == -1.0
    assert primary_longer.detail["length_ratio"] < 1
    assert metric(registry, "shadowtap_judge_position_inconsistent_total", segment="billing") == 0


async def test_both_orders_are_asked_with_the_answers_swapped(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer], registry: CollectorRegistry
) -> None:
    primary_text, candidate_text = "Primary says: reboot.", "Candidate says: reboot it twice."

    def prefers_candidate(body: dict[str, Any]) -> Answer:
        a, _ = answers_shown(body)
        return verdict("A" if a == candidate_text else "B", "the candidate is right")

    judge.policy = prefers_candidate

    score = await judged(
        make_scorer(), make_pair(primary_text, candidate_text, request=REQUEST, tags=BILLING)
    )

    assert score.outcome == "candidate_win"
    assert score.detail["verdicts"] == [
        {"winner": "B", "reason": "the candidate is right"},
        {"winner": "A", "reason": "the candidate is right"},
    ]
    assert score.detail["judge_model"] == "judge-model"
    assert score.detail["tokens"] == {"prompt": 2 * PROMPT_TOKENS, "completion": 2 * COMPLETION_TOKENS}
    assert len(judge.received) == 2
    shown = sorted(answers_shown(body) for body in judge.received)
    assert shown == sorted([(primary_text, candidate_text), (candidate_text, primary_text)])
    for body in judge.received:
        assert body["model"] == "judge-model"
        assert body["temperature"] == 0
        assert body["response_format"] == {"type": "json_object"}
        assert "How do I reset my router?" in body["messages"][-1]["content"]
    assert metric(registry, "shadowtap_judge_calls_total", outcome="ok") == 2


async def test_a_malformed_verdict_is_corrected_once_and_the_corrected_verdict_holds(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer], registry: CollectorRegistry
) -> None:
    def malformed_at_first(body: dict[str, Any]) -> Answer:
        a, _ = answers_shown(body)
        if a == SHORT and len(body["messages"]) == 2:
            return 200, "I think B is better.", {}
        return verdict("B" if a == SHORT else "A")

    judge.policy = malformed_at_first

    score = await judged(make_scorer(), make_pair(SHORT, LONG, request=REQUEST, tags=BILLING))

    assert score.outcome == "candidate_win"
    assert len(judge.received) == 3
    [retry] = [body for body in judge.received if len(body["messages"]) > 2]
    assert retry["messages"][-2] == {"role": "assistant", "content": "I think B is better."}
    assert retry["messages"][-1]["role"] == "user" and "JSON" in retry["messages"][-1]["content"]
    assert metric(registry, "shadowtap_judge_calls_total", outcome="malformed") == 1
    assert metric(registry, "shadowtap_judge_calls_total", outcome="ok") == 2


async def test_a_judge_that_never_gives_a_valid_verdict_makes_score_raise(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer], registry: CollectorRegistry
) -> None:
    judge.policy = lambda body: (200, json.dumps({"winner": "C"}), {})

    with pytest.raises(MalformedVerdict):
        await make_scorer().score(make_pair(SHORT, LONG, request=REQUEST, tags=BILLING))

    assert metric(registry, "shadowtap_judge_calls_total", outcome="malformed") >= 2
    assert metric(registry, "shadowtap_judge_calls_total", outcome="ok") == 0


async def test_a_rate_limited_call_is_retried_after_the_delay_the_judge_asks_for(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer], registry: CollectorRegistry
) -> None:
    seen = {"n": 0}

    def limited_once(body: dict[str, Any]) -> Answer:
        seen["n"] += 1
        if seen["n"] == 1:
            return 429, "slow down", {"retry-after": "0.05"}
        return verdict("tie")

    judge.policy = limited_once

    score = await judged(make_scorer(), make_pair(SHORT, LONG, request=REQUEST, tags=BILLING))

    assert score.outcome == "tie"
    assert len(judge.received) == 3
    assert metric(registry, "shadowtap_judge_calls_total", outcome="rate_limited") == 1
    assert metric(registry, "shadowtap_judge_calls_total", outcome="ok") == 2


async def test_a_judge_that_keeps_failing_raises_after_the_configured_retries(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer], registry: CollectorRegistry
) -> None:
    judge.policy = lambda body: (503, "overloaded", {})

    with pytest.raises(JudgeError):
        await make_scorer(max_retries=2).score(make_pair(SHORT, LONG, request=REQUEST, tags=BILLING))

    assert len(judge.received) <= 6
    assert metric(registry, "shadowtap_judge_calls_total", outcome="error") >= 3


async def test_a_request_the_judge_refuses_is_not_retried(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer], registry: CollectorRegistry
) -> None:
    judge.policy = lambda body: (400, "bad request", {})

    with pytest.raises(JudgeError, match="HTTP 400"):
        await make_scorer(max_retries=3).score(make_pair(SHORT, LONG, request=REQUEST, tags=BILLING))

    assert len(judge.received) <= 2


async def test_when_the_token_budget_is_spent_judging_pauses_until_the_window_frees(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer], registry: CollectorRegistry
) -> None:
    now = [1000.0]
    scorer = make_scorer(budget_tokens_per_hour=100, clock=lambda: now[0])

    first = await scorer.score(make_pair(SHORT, LONG, request=REQUEST, tags=BILLING, pair_id="p1"))
    second = await scorer.score(make_pair(SHORT, LONG, request=REQUEST, tags=BILLING, pair_id="p2"))

    assert len(first) == 1 and second == []
    assert len(judge.received) == 2
    assert metric(registry, "shadowtap_judge_skipped_total", reason="budget_exhausted") == 1
    assert metric(registry, "shadowtap_judge_budget_paused") == 1

    now[0] += 3601
    third = await scorer.score(make_pair(SHORT, LONG, request=REQUEST, tags=BILLING, pair_id="p3"))

    assert len(third) == 1
    assert metric(registry, "shadowtap_judge_budget_paused") == 0


async def test_sample_rate_zero_judges_nothing(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer], registry: CollectorRegistry
) -> None:
    assert await make_scorer(sample_rate=0).score(make_pair(SHORT, LONG, request=REQUEST, tags=BILLING)) == []

    assert judge.received == []
    assert metric(registry, "shadowtap_judge_skipped_total", reason="not_sampled") == 1


def test_sampling_is_deterministic_by_pair_id(make_scorer: Callable[..., JudgeScorer]) -> None:
    scorer = make_scorer(sample_rate=0.3)
    ids = [f"pair-{i}" for i in range(2000)]

    first = [scorer.sampled(i) for i in ids]

    assert first == [scorer.sampled(i) for i in ids]
    assert 0.25 < sum(first) / len(ids) < 0.35


async def test_a_pair_with_a_failed_side_is_skipped_as_missing_answer(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer], registry: CollectorRegistry
) -> None:
    assert await make_scorer().score(make_pair(SHORT, None, request=REQUEST, tags=BILLING)) == []

    assert judge.received == []
    assert metric(registry, "shadowtap_judge_skipped_total", reason="missing_answer") == 1


async def test_tokens_and_cost_are_counted_from_the_reported_usage(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer], registry: CollectorRegistry
) -> None:
    scorer = make_scorer(price_per_1k_prompt_tokens=0.5, price_per_1k_completion_tokens=2.0)

    await judged(scorer, make_pair(SHORT, LONG, request=REQUEST, tags=BILLING))

    prompt, completion = 2 * PROMPT_TOKENS, 2 * COMPLETION_TOKENS
    assert metric(registry, "shadowtap_judge_tokens_total", kind="prompt") == prompt
    assert metric(registry, "shadowtap_judge_tokens_total", kind="completion") == completion
    assert metric(registry, "shadowtap_judge_cost_usd_total") == pytest.approx(
        prompt / 1000 * 0.5 + completion / 1000 * 2.0
    )


async def test_very_long_answers_are_cut_before_they_reach_the_judge(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer]
) -> None:
    score = await judged(
        make_scorer(max_answer_chars=50), make_pair(SHORT, "x" * 5000, request=REQUEST, tags=BILLING)
    )

    for body in judge.received:
        assert len(body["messages"][-1]["content"]) < 5000
    assert score.detail["length_ratio"] == round(5000 / len(SHORT), 4)


async def test_judging_against_a_reference_puts_the_reference_in_the_primarys_place(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer]
) -> None:
    reference, answer = "The reference answer.", "A worse answer."

    def prefers_reference(body: dict[str, Any]) -> Answer:
        a, _ = answers_shown(body)
        return verdict("A" if a == reference else "B")

    judge.policy = prefers_reference

    score = await make_scorer().judge_against_reference({"messages": CHAT}, reference, answer)

    assert score.scorer == "judge" and score.side == "pair"
    assert score.outcome == "primary_win" and score.value == -1.0
    assert len(judge.received) == 2


async def test_a_custom_rubric_file_is_used(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer], tmp_path: Path
) -> None:
    rubric = tmp_path / "rubric.md"
    rubric.write_text(
        "House rubric.\n{{request}}\n[The Start of Answer A]\n{{answer_a}}\n[The End of Answer A]\n"
        "[The Start of Answer B]\n{{answer_b}}\n[The End of Answer B]\n"
    )

    await judged(
        make_scorer(rubric_file=str(rubric)), make_pair("{{answer_b}}", LONG, request=REQUEST, tags=BILLING)
    )

    prompts = [body["messages"][-1]["content"] for body in judge.received]
    assert all(p.startswith("House rubric.") for p in prompts)
    assert sorted(answers_shown(body) for body in judge.received) == sorted(
        [("{{answer_b}}", LONG), (LONG, "{{answer_b}}")]
    )


def test_the_bundled_rubric_asks_for_the_verdict_and_warns_against_length_bias() -> None:
    scorer = JudgeScorer({"base_url": "http://127.0.0.1:9/v1", "model": "j"}, environ={})
    template = scorer.template.lower()

    assert '"winner"' in template and "tie" in template
    assert "longer" in template and "refus" in template


def test_the_api_key_comes_from_the_constructor_the_config_or_the_named_variable() -> None:
    base = {"base_url": "http://127.0.0.1:9/v1", "model": "j"}

    assert JudgeScorer(base, environ={"SHADOWTAP_JUDGE_API_KEY": "from-env"}).client.api_key == "from-env"
    assert JudgeScorer({**base, "api_key_env": "MY_KEY"}, environ={"MY_KEY": "mine"}).client.api_key == "mine"
    assert (
        JudgeScorer({**base, "api_key": "cfg"}, environ={"SHADOWTAP_JUDGE_API_KEY": "x"}).client.api_key
        == "cfg"
    )
    assert JudgeScorer({**base, "api_key": "cfg"}, api_key="arg", environ={}).client.api_key == "arg"


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"base_url": "http://127.0.0.1:9/v1"}, "scoring.scorers.judge.model"),
        ({"base_url": "ftp://x", "model": "j"}, "scoring.scorers.judge.base_url"),
        (
            {"base_url": "http://127.0.0.1:9/v1", "model": "j", "sample_rate": 1.5},
            "scoring.scorers.judge.sample_rate",
        ),
        (
            {"base_url": "http://127.0.0.1:9/v1", "model": "j", "concurency": 2},
            "scoring.scorers.judge.concurency",
        ),
        (
            {"base_url": "http://127.0.0.1:9/v1", "model": "j", "rubric_file": "/nonexistent.md"},
            "scoring.scorers.judge.rubric_file",
        ),
    ],
)
def test_bad_config_fails_at_construction_naming_the_key(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(key)}: "):
        JudgeScorer(config, environ={})


def test_a_rubric_without_the_placeholders_is_rejected(tmp_path: Path) -> None:
    rubric = tmp_path / "rubric.md"
    rubric.write_text("Judge these: {{answer_a}}")

    with pytest.raises(ValueError, match=r"rubric_file: .*\{\{answer_b\}\}, \{\{request\}\}"):
        JudgeScorer(
            {"base_url": "http://127.0.0.1:9/v1", "model": "j", "rubric_file": str(rubric)}, environ={}
        )


async def test_identical_answers_are_a_tie_without_asking_the_judge(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer]
) -> None:
    score = await judged(make_scorer(), make_pair(SHORT, SHORT + "\n", request=REQUEST, tags=BILLING))

    assert score.outcome == "tie" and score.detail["identical"] is True
    assert judge.received == []


def _v2(side: Any, *outputs: dict[str, Any]) -> Any:
    """A v2 side with `outputs` (each given text/tool_calls/refusal; the rest filled in)."""
    filled = [
        {
            "index": i,
            "text": None,
            "tool_calls": [],
            "refusal": None,
            "reasoning": None,
            "finish_reason": "stop",
            **o,
        }
        for i, o in enumerate(outputs)
    ]
    return {**side, "outputs": filled, "text": filled[0]["text"]}


async def test_tool_calls_and_the_offered_tools_are_shown_and_different_arguments_are_not_identical(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer]
) -> None:
    """Two answers that both call get_weather with different cities have the same (empty) text: the
    judge is still asked, and sees the tools on offer and each side's call."""
    request = {**REQUEST, "tools": [WEATHER_TOOL]}
    pair = make_pair("", "", request=request)
    call = {"id": "call_1", "name": "get_weather"}
    pair["primary"] = _v2(
        pair["primary"], {"text": "", "tool_calls": [{**call, "arguments": '{"city": "Paris"}'}]}
    )
    pair["candidate"] = _v2(
        pair["candidate"], {"text": "", "tool_calls": [{**call, "arguments": '{"city": 42}'}]}
    )

    score = await judged(make_scorer(), pair)

    assert score.detail.get("identical") is not True
    assert len(judge.received) == 2
    prompt = judge.received[0]["messages"][-1]["content"]
    assert "get_weather: Current weather in a city." in prompt
    shown = {a for body in judge.received for a in answers_shown(body)}
    assert shown == {'[tool call: get_weather({"city": "Paris"})]', '[tool call: get_weather({"city": 42})]'}


async def test_each_choice_is_shown_apart_never_merged(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer]
) -> None:
    pair = make_pair("Paris.", "Paris.", request=REQUEST)
    pair["primary"] = _v2(pair["primary"], {"text": "Paris."}, {"text": "Lyon."})
    pair["candidate"] = _v2(pair["candidate"], {"text": "Paris."}, {"text": "Paris, France."})

    await judged(make_scorer(), pair)

    shown = {a for body in judge.received for a in answers_shown(body)}
    assert shown == {
        "[choice 0]\nParis.\n\n[choice 1]\nLyon.",
        "[choice 0]\nParis.\n\n[choice 1]\nParis, France.",
    }


async def test_a_refusal_field_is_shown_to_the_judge(
    judge: ScriptedJudge, make_scorer: Callable[..., JudgeScorer]
) -> None:
    pair = make_pair("Here it is.", "", request=REQUEST)
    pair["candidate"] = _v2(pair["candidate"], {"text": None, "refusal": "I can't help with that."})

    await judged(make_scorer(), pair)

    shown = {a for body in judge.received for a in answers_shown(body)}
    assert "[refusal: I can't help with that.]" in shown
