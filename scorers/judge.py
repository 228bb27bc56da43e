"""Pairwise LLM-as-judge: which answer is better, asked in both orders so position bias shows up as a tie.

The judge is any OpenAI-compatible chat endpoint. Calls are rate limited, retried with backoff on
429/5xx/connection errors, bounded by a rolling token budget, and counted (calls, tokens, cost). A reply
that is not a valid verdict is corrected once and otherwise raised: a verdict is never made up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar

import openai
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client import CollectorRegistry
from pydantic import AfterValidator, Field, field_validator

from shadowtap.config import check_secret, check_url
from shadowtap.errors import BudgetExhausted, ConfigError, JudgeError, MalformedVerdict
from shadowtap.metrics import ScoringMetrics, segment_label
from shadowtap.records import SIDES, PairRecord, Score, SideName, is_truncated, side_of
from shadowtap.request_text import content_text
from shadowtap.scorers.base import ScorerConfig, config_key, side_text, validate_config
from shadowtap.scorers.pacing import RateLimiter, TokenBudget, backoff_s, retry_after_s

__all__ = ["JudgeConfig", "JudgeScorer", "parse_verdict", "render_request"]

CONFIG_KEY = config_key("judge")
# The variable the judge's API key is read from unless `api_key_env` names another.
DEFAULT_API_KEY_ENV = "SHADOWTAP_JUDGE_API_KEY"
MAX_REASON_CHARS = 300

SYSTEM_MESSAGE = (
    "You are a careful, impartial evaluator of AI assistant answers. Reply with one JSON object only."
)
CORRECTION = (
    "Your reply could not be used: {problem}. Reply again with only a JSON object of the form "
    '{{"winner": "A" | "B" | "tie", "reason": "..."}}.'
)
_PLACEHOLDER = re.compile(r"\{\{(request|answer_a|answer_b)\}\}")
_WINNERS = {"a": "A", "b": "B", "tie": "tie"}
# Which side each raw verdict names, for the two orders: (primary, candidate) shown as (A, B), then (B, A).
_AB = {"A": "primary", "B": "candidate", "tie": "tie"}
_BA = {"A": "candidate", "B": "primary", "tie": "tie"}
_OUTCOMES = {"candidate": ("candidate_win", 1.0), "primary": ("primary_win", -1.0), "tie": ("tie", 0.0)}


class JudgeConfig(ScorerConfig):
    """`scoring.scorers.judge` (and `sentinel.judge`): the judge endpoint, its pacing, budget and prompt."""

    env_vars: ClassVar[frozenset[str]] = frozenset({DEFAULT_API_KEY_ENV})

    base_url: str
    model: str = Field(min_length=1)
    api_key: Annotated[str | None, AfterValidator(check_secret)] = None
    api_key_env: str = DEFAULT_API_KEY_ENV
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    concurrency: int = Field(default=4, ge=1)
    requests_per_second: float = Field(default=5.0, gt=0)
    max_retries: int = Field(default=4, ge=0)
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    timeout_s: float = Field(default=60.0, gt=0)
    max_tokens: int | None = Field(default=None, gt=0)
    budget_tokens_per_hour: int | None = Field(default=None, gt=0)
    budget_tokens_per_day: int | None = Field(default=None, gt=0)
    price_per_1k_prompt_tokens: float = Field(default=0.0, ge=0)
    price_per_1k_completion_tokens: float = Field(default=0.0, ge=0)
    rubric_file: str | None = None
    # Model-name prefixes to families, beside the built-in ones (scorers/calibration.py): a warning when
    # the judge is of either side's family.
    model_families: dict[str, str] = Field(default_factory=dict)
    max_answer_chars: int = Field(default=8000, gt=0)
    max_request_chars: int = Field(default=12000, gt=0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_url(value)


# --------------------------------------------------------------------------------------------------
# Prompt


def _render_content(content: Any) -> str:
    return content_text(content, placeholders=True)


def _render_messages(messages: list[Any]) -> str:
    lines = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        text = _render_content(message.get("content"))
        for call in message.get("tool_calls") or []:
            function = (call.get("function") or {}) if isinstance(call, dict) else {}
            text += f"\n[tool call: {function.get('name')}({function.get('arguments', '')})]"
        lines.append(f"[{message.get('role') or message.get('type', 'message')}]\n{text}")
    return "\n\n".join(lines)


def render_request(request: dict[str, Any], limit: int) -> str:
    """The conversation the answers respond to, as plain text for the judge, at most about `limit` chars."""
    if isinstance(request.get("messages"), list):
        text = _render_messages(request["messages"])
    elif "prompt" in request:
        prompt = request["prompt"]
        text = prompt if isinstance(prompt, str) else "\n".join(map(str, prompt))
    elif "input" in request:
        given = request["input"]
        text = _render_messages(given) if isinstance(given, list) else _render_content(given)
        if request.get("instructions"):
            text = f"[system]\n{request['instructions']}\n\n{text}"
    else:
        text = json.dumps(request, ensure_ascii=False)
    fmt = request.get("response_format")
    if fmt:
        text += f"\n\n[required response format: {json.dumps(fmt, ensure_ascii=False)[:2000]}]"
    tools = render_tools(request)
    if tools:
        text += f"\n\n[tools the assistant may call]\n{tools}"
    if len(text) > limit:
        head, tail = limit // 4, limit - limit // 4
        text = f"{text[:head]}\n[… {len(text) - limit} characters left out …]\n{text[-tail:]}"
    return text


def render_tools(request: Mapping[str, Any], per_tool: int = 600) -> str:
    """The functions a request offers (chat `tools[].function`, Responses API `tools[]`), one a line:
    name, description and parameters schema, each line at most about `per_tool` characters."""
    lines = []
    for item in request.get("tools") or []:
        if not isinstance(item, dict):
            continue
        nested = item.get("function")
        spec: Mapping[str, Any] = nested if isinstance(nested, dict) else item
        if not isinstance(spec.get("name"), str):
            continue
        params = json.dumps(spec.get("parameters") or {}, ensure_ascii=False)
        line = f"- {spec['name']}: {spec.get('description') or ''} parameters {params}"
        lines.append(line if len(line) <= per_tool else line[: per_tool - 1] + "…")
    return "\n".join(lines)


def render_answer(pair: PairRecord, side: SideName) -> str | None:
    """One side's whole answer as the judge reads it: each choice apart, with its text, its tool calls
    (name and arguments as sent) and the API's refusal field; None when that side failed or gave
    nothing, or was cut at the recording limit. A v1 record's side is its text."""
    part: Mapping[str, Any] = side_of(pair, side)
    if is_truncated(side_of(pair, side)):
        return None
    outputs = [o for o in part.get("outputs") or [] if isinstance(o, dict)]
    if not outputs:
        return side_text(pair, side)
    if part.get("error") is not None and not any(_output_text(o) for o in outputs):
        return None
    rendered = [_output_text(o) for o in outputs]
    if len(rendered) == 1:
        return rendered[0]
    return "\n\n".join(
        f"[choice {o.get('index', i)}]\n{text}"
        for i, (o, text) in enumerate(zip(outputs, rendered, strict=True))
    )


def _output_text(output: Mapping[str, Any]) -> str:
    lines = [output["text"]] if isinstance(output.get("text"), str) and output["text"] else []
    for call in output.get("tool_calls") or []:
        if isinstance(call, dict):
            lines.append(f"[tool call: {call.get('name')}({call.get('arguments') or ''})]")
    if output.get("refusal"):
        lines.append(f"[refusal: {output['refusal']}]")
    return "\n".join(lines)


def _truncate(answer: str, limit: int) -> str:
    if len(answer) <= limit:
        return answer
    return f"{answer[:limit]}\n[… {len(answer) - limit} more characters not shown]"


def json_reply(reply: str) -> tuple[dict[str, Any] | None, str]:
    """A judge's reply as a JSON object, else (None, what is wrong with it)."""
    try:
        doc = json.loads(reply)
    except json.JSONDecodeError:
        return None, "it is not valid JSON"
    if not isinstance(doc, dict):
        return None, "it is not a JSON object"
    return doc, ""


def short_reason(reason: str, limit: int = MAX_REASON_CHARS) -> str:
    """A judge's reason, cut to `limit` characters."""
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


def parse_verdict(reply: str) -> tuple[dict[str, Any] | None, str]:
    """(verdict, "") for a valid reply, else (None, what is wrong with it)."""
    doc, problem = json_reply(reply)
    if doc is None:
        return None, problem
    winner = doc.get("winner")
    if not isinstance(winner, str) or winner.strip().lower() not in _WINNERS:
        return None, 'the "winner" field must be "A", "B" or "tie"'
    reason = doc.get("reason")
    reason = "" if reason is None else reason if isinstance(reason, str) else json.dumps(reason)
    return {"winner": _WINNERS[winner.strip().lower()], "reason": short_reason(reason)}, ""


@dataclass(slots=True)
class _Usage:
    prompt: int = 0
    completion: int = 0


# --------------------------------------------------------------------------------------------------
# The scorer


class JudgeScorer:
    """Asks a judge model which answer is better, once per order; a verdict that flips with the order is a tie.

    `value` is +1 when the candidate wins, -1 when the primary wins, 0 for a tie. A verdict that flips
    raises the review reason `judge_inconsistent`.
    """

    name: ClassVar[str] = "judge"
    outcomes: ClassVar[frozenset[str]] = frozenset({"candidate_win", "primary_win", "tie"})
    config_model: ClassVar[type[JudgeConfig]] = JudgeConfig
    review_reasons: ClassVar[frozenset[str]] = frozenset({"judge_inconsistent"})

    def __init__(
        self,
        config: Mapping[str, Any] | JudgeConfig | None = None,
        *,
        metrics: ScoringMetrics | None = None,
        segments: frozenset[str] = frozenset(),
        api_key: str | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`api_key` wins over the config's; otherwise the variable named by `api_key_env` is read from
        `environ` (default: the process environment) here, once. `clock` drives the budget windows."""
        self.config = validate_config(JudgeConfig, self.name, config)
        cfg = self.config
        self.metrics = metrics if metrics is not None else ScoringMetrics(CollectorRegistry())
        self.segments = segments
        self.template = self._load_rubric(cfg.rubric_file)
        if api_key is None:
            api_key = cfg.api_key or self._key_from_environment(environ)
        self.client = openai.AsyncOpenAI(
            base_url=cfg.base_url, api_key=api_key or "EMPTY", timeout=cfg.timeout_s, max_retries=0
        )
        self.rate_limiter = RateLimiter(cfg.requests_per_second)
        self.budget = TokenBudget(cfg.budget_tokens_per_hour, cfg.budget_tokens_per_day, clock)
        self._slots = asyncio.Semaphore(cfg.concurrency)

    def _key_from_environment(self, environ: Mapping[str, str] | None) -> str | None:
        name = self.config.api_key_env
        try:
            return check_secret((os.environ if environ is None else environ).get(name))
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    @staticmethod
    def _load_rubric(path: str | None) -> str:
        if path is None:
            return resources.files(__package__).joinpath("prompts", "judge_pairwise.md").read_text()
        try:
            template = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{CONFIG_KEY}.rubric_file: cannot read {path}: {exc.strerror}") from None
        missing = {"request", "answer_a", "answer_b"} - set(_PLACEHOLDER.findall(template))
        if missing:
            names = ", ".join("{{" + m + "}}" for m in sorted(missing))
            raise ConfigError(f"{CONFIG_KEY}.rubric_file: {path} lacks the placeholder(s) {names}")
        return template

    @property
    def template_hash(self) -> str:
        """The rubric's hash (16 hex digits): runs and calibrations name the prompt by it."""
        return hashlib.sha256(self.template.encode()).hexdigest()[:16]

    async def aclose(self) -> None:
        await self.client.close()

    # -- entry points -------------------------------------------------------------------------------

    def reasons_for_review(self, scores: list[Score]) -> list[str]:
        """`judge_inconsistent` when the verdict flipped with the order the answers were shown in."""
        flipped = any(
            s.scorer == self.name and s.side == "pair" and s.detail.get("position_inconsistent")
            for s in scores
        )
        return ["judge_inconsistent"] if flipped else []

    async def score(self, pair: PairRecord) -> list[Score]:
        if not self.sampled(str(pair.get("id", ""))):
            self.metrics.judge_skipped.labels(reason="not_sampled").inc()
            return []
        if any(is_truncated(side_of(pair, side)) for side in SIDES):  # half an answer is not judged
            self.metrics.judge_skipped.labels(reason="truncated").inc()
            return []
        primary, candidate = render_answer(pair, "primary"), render_answer(pair, "candidate")
        if primary is None or candidate is None:
            self.metrics.judge_skipped.labels(reason="missing_answer").inc()
            return []
        if not self._budget_allows():
            return []
        segment = (pair.get("tags") or {}).get("segment")
        return [await self.compare(pair.get("request") or {}, primary, candidate, segment=segment)]

    async def judge_against_reference(
        self, request: dict[str, Any], reference: str, answer: str, *, segment: str | None = None
    ) -> Score:
        """Judge `answer` against `reference` (in the primary's place): `candidate_win` means the answer is
        better. Raises `BudgetExhausted` while the budget is spent; sampling does not apply."""
        if not self._budget_allows():
            raise BudgetExhausted("judge token budget is spent for the current window")
        return await self.compare(request, reference, answer, segment=segment)

    def sampled(self, pair_id: str) -> bool:
        """Deterministic per pair id, so a re-delivered pair gets the same decision."""
        rate = self.config.sample_rate
        if rate >= 1.0:
            return True
        digest = hashlib.sha256(pair_id.encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < rate

    def _budget_allows(self) -> bool:
        if self.budget.exhausted():
            self.metrics.judge_paused.set(1)
            self.metrics.judge_skipped.labels(reason="budget_exhausted").inc()
            return False
        self.metrics.judge_paused.set(0)
        return True

    # -- judging ------------------------------------------------------------------------------------

    async def compare(
        self, request: dict[str, Any], primary: str, candidate: str, *, segment: str | None = None
    ) -> Score:
        """Both orders, concurrently; agreement wins, disagreement is a position-inconsistent tie.

        Identical answers are a tie without asking the judge."""
        length_ratio = round(len(candidate) / len(primary), 4) if primary else None
        usage = _Usage()
        if primary.strip() == candidate.strip():
            return Score(
                self.name,
                "pair",
                "tie",
                0.0,
                self._detail([], False, length_ratio, usage) | {"identical": True},
            )
        conversation = render_request(request, self.config.max_request_chars)
        try:
            async with asyncio.TaskGroup() as group:
                ab = group.create_task(self._verdict(self._prompt(conversation, primary, candidate), usage))
                ba = group.create_task(self._verdict(self._prompt(conversation, candidate, primary), usage))
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None
        verdict_ab, verdict_ba = ab.result(), ba.result()
        side_ab, side_ba = _AB[verdict_ab["winner"]], _BA[verdict_ba["winner"]]
        inconsistent = side_ab != side_ba
        if inconsistent:
            self.metrics.judge_inconsistent.labels(segment=segment_label(segment, self.segments)).inc()
        outcome, value = _OUTCOMES["tie" if inconsistent else side_ab]
        detail = self._detail([verdict_ab, verdict_ba], inconsistent, length_ratio, usage)
        return Score(self.name, "pair", outcome, value, detail)

    def _detail(
        self, verdicts: list[dict[str, Any]], inconsistent: bool, length_ratio: float | None, usage: _Usage
    ) -> dict[str, Any]:
        return {
            "verdicts": verdicts,
            "position_inconsistent": inconsistent,
            "length_ratio": length_ratio,
            "judge_model": self.config.model,
            "tokens": {"prompt": usage.prompt, "completion": usage.completion},
        }

    def _prompt(self, conversation: str, answer_a: str, answer_b: str) -> str:
        limit = self.config.max_answer_chars
        values = {
            "request": conversation,
            "answer_a": _truncate(answer_a, limit),
            "answer_b": _truncate(answer_b, limit),
        }
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.template)

    async def _verdict(self, prompt: str, usage: _Usage) -> dict[str, Any]:
        """One order's verdict; a malformed reply is answered with one correction, then given up on."""
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": SYSTEM_MESSAGE},
            {"role": "user", "content": prompt},
        ]
        problem = ""
        for attempt in range(2):
            reply = await self._call(messages, usage)
            verdict, problem = parse_verdict(reply)
            if verdict is not None:
                self.metrics.judge_calls.labels(outcome="ok").inc()
                return verdict
            self.metrics.judge_calls.labels(outcome="malformed").inc()
            if attempt == 0:
                messages += [
                    {"role": "assistant", "content": reply},
                    {"role": "user", "content": CORRECTION.format(problem=problem)},
                ]
        raise MalformedVerdict(
            f"judge {self.config.model} gave no valid verdict after one correction: {problem}"
        )

    async def _call(self, messages: list[ChatCompletionMessageParam], usage: _Usage) -> str:
        """One chat completion, retried on 429, 5xx and connection errors with backoff and jitter."""
        cfg = self.config
        extra: dict[str, Any] = {} if cfg.max_tokens is None else {"max_tokens": cfg.max_tokens}
        failure: Exception | None = None
        for attempt in range(cfg.max_retries + 1):
            await self.rate_limiter.acquire()
            retry_after: float | None = None
            async with self._slots:
                try:
                    response = await self.client.chat.completions.create(
                        model=cfg.model,
                        messages=messages,
                        temperature=0,
                        response_format={"type": "json_object"},
                        **extra,
                    )
                except openai.RateLimitError as exc:
                    self.metrics.judge_calls.labels(outcome="rate_limited").inc()
                    failure = exc
                    retry_after = retry_after_s(exc.response)
                except openai.APIStatusError as exc:
                    self.metrics.judge_calls.labels(outcome="error").inc()
                    if exc.status_code < 500 and exc.status_code not in (408, 409):
                        raise JudgeError(
                            f"judge endpoint refused the call: HTTP {exc.status_code}: {exc.message}"
                        ) from exc
                    failure = exc
                    retry_after = retry_after_s(exc.response)
                except openai.APIConnectionError as exc:
                    self.metrics.judge_calls.labels(outcome="error").inc()
                    failure = exc
                else:
                    self._count_usage(response.usage, usage)
                    return (response.choices[0].message.content or "") if response.choices else ""
            if attempt == cfg.max_retries:
                break
            delay = retry_after
            if delay is None:
                delay = backoff_s(attempt, cfg.backoff_base_s, cfg.backoff_max_s)
            elif delay > cfg.backoff_max_s:
                raise JudgeError(
                    f"judge endpoint asks to retry after {delay:.0f}s (more than backoff_max_s)"
                ) from failure
            await asyncio.sleep(delay)
        raise JudgeError(f"judge call failed after {cfg.max_retries + 1} attempts: {failure}") from failure

    def _count_usage(self, reported: Any, usage: _Usage) -> None:
        prompt = int(getattr(reported, "prompt_tokens", 0) or 0)
        completion = int(getattr(reported, "completion_tokens", 0) or 0)
        usage.prompt += prompt
        usage.completion += completion
        self.metrics.judge_tokens.labels(kind="prompt").inc(prompt)
        self.metrics.judge_tokens.labels(kind="completion").inc(completion)
        cost = (
            prompt * self.config.price_per_1k_prompt_tokens
            + completion * self.config.price_per_1k_completion_tokens
        ) / 1000
        if cost:
            self.metrics.judge_cost.inc(cost)
        self.budget.add(prompt + completion)
