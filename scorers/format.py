"""Format and instruction checks on each answer: JSON asked for, schema, length limits, patterns. No LLM.

What is expected comes from the request itself (`response_format`) and from configured rules that
apply per route and/or segment. A side with nothing expected of it gets no score, so that answers
nobody constrained do not inflate the pass rate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema_specifications import (  # type: ignore[import-untyped]  # the package ships no type hints
    REGISTRY as METASCHEMAS,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shadowtap.errors import ConfigError
from shadowtap.metrics import ScoringMetrics
from shadowtap.records import SIDES, PairRecord, Score, SideName, is_truncated, side_of, side_outputs
from shadowtap.scorers.base import ScorerConfig, config_key, side_text, validate_config

__all__ = ["FormatConfig", "FormatRule", "FormatScorer"]

CONFIG_KEY = config_key("format")
REASONS = (
    "not_json",
    "schema_violation",
    "not_a_choice",
    "regex_mismatch",
    "too_long",
    "pattern_missing",
    "pattern_forbidden",
)
MAX_DETAIL_CHARS = 200

# A whole answer wrapped in one Markdown code fence, optionally labelled json.
_FENCE = re.compile(r"\A\s*```[ \t]*(?:json|JSON)?[ \t]*\r?\n(?P<body>.*?)\r?\n?[ \t]*```\s*\Z", re.DOTALL)


class FormatRule(BaseModel):
    """What answers on one route/segment must look like. A rule naming neither applies everywhere."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    segment: str | None = None
    route: str | None = None
    expect_json: bool = Field(default=False, alias="json")
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    schema_file: str | None = None
    max_words: int | None = Field(default=None, gt=0)
    max_chars: int | None = Field(default=None, gt=0)
    must_match: str | None = None
    must_not_match: str | None = None

    @model_validator(mode="after")
    def _one_schema_source(self) -> FormatRule:
        if self.json_schema is not None and self.schema_file is not None:
            raise ValueError("give either schema or schema_file, not both")
        return self

    def applies_to(self, route: str | None, segment: str | None) -> bool:
        return (self.segment is None or self.segment == segment) and (
            self.route is None or self.route == route
        )


class FormatConfig(ScorerConfig):
    """`scoring.scorers.format`: the rules, and whether a JSON answer may come in a Markdown fence."""

    rules: list[FormatRule] = Field(default_factory=list)
    allow_code_fence: bool = False


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    rule: FormatRule
    schema: dict[str, Any] | None
    must_match: re.Pattern[str] | None
    must_not_match: re.Pattern[str] | None


@dataclass(slots=True)
class _Expectation:
    """Everything one answer is held to, merged from the request and the rules that apply."""

    json: bool = False
    json_object: bool = False
    schema: dict[str, Any] | None = None
    schema_source: str | None = None
    max_words: int | None = None
    max_chars: int | None = None
    must_match: list[re.Pattern[str]] = field(default_factory=list)
    must_not_match: list[re.Pattern[str]] = field(default_factory=list)
    # vLLM structured outputs: the whole answer is one of `choices`, or matches `regex` whole.
    choices: list[str] | None = None
    regex: re.Pattern[str] | None = None

    def empty(self) -> bool:
        return not (
            self.json
            or self.max_words
            or self.max_chars
            or self.must_match
            or self.must_not_match
            or self.choices is not None
            or self.regex is not None
        )

    @classmethod
    def of_request(cls, request: dict[str, Any]) -> _Expectation:
        """What the request itself asks for: `response_format` (chat, completions), `text.format`
        (responses), or vLLM's structured outputs (`structured_outputs: {json|regex|choice}`, and the
        `guided_json`/`guided_regex`/`guided_choice` fields older vLLM took)."""
        wants_json, wants_object, schema = _request_json_expectation(request)
        expect = cls(json=wants_json, json_object=wants_json and wants_object)
        if schema is not None:
            expect.schema, expect.schema_source = schema, "request"
        expect._add_structured_outputs(request)
        return expect

    def _add_structured_outputs(self, request: dict[str, Any]) -> None:
        nested = request.get("structured_outputs")
        wanted = dict(nested) if isinstance(nested, dict) else {}
        for field_name in ("json", "regex", "choice"):
            if field_name not in wanted and f"guided_{field_name}" in request:
                wanted[field_name] = request[f"guided_{field_name}"]
        schema = wanted.get("json")
        if isinstance(schema, str):
            with contextlib.suppress(ValueError):
                schema = json.loads(schema)
        if isinstance(schema, dict) and self.schema is None:
            self.json, self.schema, self.schema_source = True, schema, "request"
        choices = wanted.get("choice")
        if isinstance(choices, list) and all(isinstance(c, str) for c in choices):
            self.choices = choices
        regex = wanted.get("regex")
        if isinstance(regex, str):
            with contextlib.suppress(re.error):
                self.regex = re.compile(regex)

    def add_rule(self, compiled: _CompiledRule) -> None:
        """Hold the answer to one more configured rule as well: the tighter limit wins, patterns add up,
        and the request's own schema comes before a configured one."""
        rule = compiled.rule
        if rule.expect_json or compiled.schema is not None:
            self.json = True
        if compiled.schema is not None and self.schema is None:
            self.schema, self.schema_source = compiled.schema, "config"
        self.max_words = _tighter(self.max_words, rule.max_words)
        self.max_chars = _tighter(self.max_chars, rule.max_chars)
        if compiled.must_match is not None:
            self.must_match.append(compiled.must_match)
        if compiled.must_not_match is not None:
            self.must_not_match.append(compiled.must_not_match)


def _tighter(current: int | None, limit: int | None) -> int | None:
    if limit is None:
        return current
    return limit if current is None else min(current, limit)


def _canonical(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@functools.lru_cache(maxsize=512)
def _validator(canonical_schema: str) -> Draft202012Validator | None:
    """A compiled validator per distinct schema, or None when the schema itself is not valid.

    Only the bundled metaschemas are resolvable: a `$ref` to a remote URL is never fetched.
    """
    schema = json.loads(canonical_schema)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError:
        return None
    return Draft202012Validator(schema, registry=METASCHEMAS)


def _short(text: str) -> str:
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"


def _request_json_expectation(request: dict[str, Any]) -> tuple[bool, bool, dict[str, Any] | None]:
    """(json expected, object required, schema) from the request's `response_format`
    (chat/completions) or `text.format` (responses)."""
    fmt = request.get("response_format")
    if not isinstance(fmt, dict):
        text_opts = request.get("text")
        fmt = text_opts.get("format") if isinstance(text_opts, dict) else None
    if not isinstance(fmt, dict):
        return False, False, None
    kind = fmt.get("type")
    if kind == "json_object":
        return True, True, None
    if kind == "json_schema":
        nested = fmt.get("json_schema")
        holder: dict[str, Any] = nested if isinstance(nested, dict) else fmt
        schema = holder.get("schema")
        return True, False, schema if isinstance(schema, dict) else None
    return False, False, None


class FormatScorer:
    """Does each answer have the format that was asked for? `pass`/`fail`, the first failed check as reason.

    Raises the review reason `format_regression` when the primary's answer passes and the candidate's fails.
    """

    name: ClassVar[str] = "format"
    outcomes: ClassVar[frozenset[str]] = frozenset({"pass", "fail"})
    config_model: ClassVar[type[FormatConfig]] = FormatConfig
    review_reasons: ClassVar[frozenset[str]] = frozenset({"format_regression"})

    def __init__(
        self,
        config: Mapping[str, Any] | FormatConfig | None = None,
        *,
        metrics: ScoringMetrics | None = None,
        segments: frozenset[str] = frozenset(),
    ) -> None:
        self.config = validate_config(FormatConfig, self.name, config)
        self.metrics = metrics
        self.segments = segments
        self._rules = [_compile(i, rule) for i, rule in enumerate(self.config.rules)]

    def expectation(self, pair: PairRecord) -> _Expectation:
        """What answers to this pair's request are held to (the same for both sides)."""
        tags = pair.get("tags") or {}
        route = pair.get("route") or tags.get("route")
        segment = tags.get("segment")
        expect = _Expectation.of_request(pair.get("request") or {})
        for compiled in self._rules:
            if compiled.rule.applies_to(route, segment):
                expect.add_rule(compiled)
        return expect

    async def score(self, pair: PairRecord) -> list[Score]:
        expect = self.expectation(pair)
        if expect.empty():
            return []
        scores = []
        for side in SIDES:
            text = side_text(pair, side)
            if text is not None and not _answered_with_tool_calls(pair, side, text):
                scores.append(self.check(text, expect, side))
            scores.extend(self._later_choices(pair, side, expect))
        return scores

    def _later_choices(self, pair: PairRecord, side: SideName, expect: _Expectation) -> list[Score]:
        """Choices 1.. of an answer with several (`n`, a prompt array), each held to the same format."""
        part = side_of(pair, side)
        if part.get("error") is not None or is_truncated(part):
            return []
        scores = []
        for output in side_outputs(part)[1:]:
            text = output.get("text")
            if isinstance(text, str) and not (output.get("tool_calls") and not text.strip()):
                score = self.check(text, expect, side)
                scores.append(dataclasses.replace(score, choice=int(output.get("index") or 0)))
        return scores

    def reasons_for_review(self, scores: list[Score]) -> list[str]:
        """`format_regression` when the primary's answer passed and the candidate's failed."""
        outcome = {s.side: s.outcome for s in scores if s.scorer == self.name}
        if outcome.get("primary") == "pass" and outcome.get("candidate") == "fail":
            return ["format_regression"]
        return []

    def check(self, text: str, expect: _Expectation, side: SideName) -> Score:
        """Run the checks in order; the first that fails is the reason."""
        detail: dict[str, Any] = {}
        reason = self._first_failure(text, expect, detail)
        if reason is None:
            return Score(self.name, side, "pass", 1.0, detail)
        detail = {"reason": reason, **detail}
        return Score(self.name, side, "fail", 0.0, detail)

    def _first_failure(self, text: str, expect: _Expectation, detail: dict[str, Any]) -> str | None:
        """JSON (fence, syntax, object, schema), then length, then patterns; details go in `detail`."""
        if expect.json:
            reason = self._json_failure(text, expect, detail)
            if reason is not None:
                return reason
        return (
            _structured_failure(text, expect, detail)
            or _length_failure(text, expect, detail)
            or _pattern_failure(text, expect, detail)
        )

    def _json_failure(self, text: str, expect: _Expectation, detail: dict[str, Any]) -> str | None:
        body = text
        fence = _FENCE.match(text)
        if fence is not None:
            detail["fenced"] = True
            if not self.config.allow_code_fence:
                detail["error"] = "answer is wrapped in a Markdown code fence"
                return "not_json"
            body = fence.group("body")
        try:
            document = json.loads(body)
        except json.JSONDecodeError as exc:
            detail["error"] = _short(f"{exc.msg} at line {exc.lineno} column {exc.colno}")
            return "not_json"
        if expect.json_object and not isinstance(document, dict):
            detail["error"] = f"top level is a JSON {type(document).__name__}, not an object"
            return "not_json"
        if expect.schema is None:
            return None
        detail["schema_source"] = expect.schema_source
        return _schema_failure(document, expect.schema, detail)


def _compile(index: int, rule: FormatRule) -> _CompiledRule:
    """A rule with its schema loaded and checked and its patterns compiled; a problem names the key."""
    key = f"{CONFIG_KEY}.rules.{index}"
    schema = _rule_schema(key, rule)
    patterns: dict[str, re.Pattern[str] | None] = {}
    for name in ("must_match", "must_not_match"):
        source = getattr(rule, name)
        try:
            patterns[name] = re.compile(source) if source is not None else None
        except re.error as exc:
            raise ConfigError(f"{key}.{name}: not a valid regular expression: {exc}") from None
    return _CompiledRule(rule, schema, patterns["must_match"], patterns["must_not_match"])


def _rule_schema(key: str, rule: FormatRule) -> dict[str, Any] | None:
    schema = rule.json_schema
    if rule.schema_file is not None:
        try:
            schema = json.loads(Path(rule.schema_file).read_text())
        except OSError as exc:
            raise ConfigError(f"{key}.schema_file: cannot read {rule.schema_file}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{key}.schema_file: {rule.schema_file} is not JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise ConfigError(f"{key}.schema_file: {rule.schema_file} must hold a JSON object")
    if schema is not None:
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            name = "schema_file" if rule.schema_file else "schema"
            raise ConfigError(f"{key}.{name}: not a valid JSON Schema: {exc.message}") from None
    return schema


def _schema_failure(document: Any, schema: dict[str, Any], detail: dict[str, Any]) -> str | None:
    validator = _validator(_canonical(schema))
    if validator is None:
        detail["schema_unusable"] = True
        return None
    try:
        error = next(validator.iter_errors(document), None)
    except Exception as exc:  # e.g. a $ref that cannot be resolved offline
        detail["schema_unusable"] = True
        detail["schema_error"] = _short(str(exc))
        return None
    if error is None:
        return None
    detail["error"] = _short(error.message)
    detail["path"] = _short(error.json_path)
    return "schema_violation"


def _answered_with_tool_calls(pair: PairRecord, side: SideName, text: str) -> bool:
    """A side whose first output called tools and wrote no text: what it owes is valid calls (the
    tools scorer), not text in the requested format."""
    outputs = side_outputs(side_of(pair, side))
    return bool(outputs and outputs[0]["tool_calls"]) and not text.strip()


def _structured_failure(text: str, expect: _Expectation, detail: dict[str, Any]) -> str | None:
    """vLLM's `choice` and `regex` structured outputs: the whole answer, exactly."""
    if expect.choices is not None and text not in expect.choices:
        detail["choices"] = [_short(c) for c in expect.choices[:10]]
        return "not_a_choice"
    if expect.regex is not None and expect.regex.fullmatch(text) is None:
        detail["regex"] = _short(expect.regex.pattern)
        return "regex_mismatch"
    return None


def _length_failure(text: str, expect: _Expectation, detail: dict[str, Any]) -> str | None:
    if expect.max_words is not None:
        words = len(text.split())
        if words > expect.max_words:
            detail.update(words=words, max_words=expect.max_words)
            return "too_long"
    if expect.max_chars is not None and len(text) > expect.max_chars:
        detail.update(chars=len(text), max_chars=expect.max_chars)
        return "too_long"
    return None


def _pattern_failure(text: str, expect: _Expectation, detail: dict[str, Any]) -> str | None:
    for pattern in expect.must_match:
        if pattern.search(text) is None:
            detail["pattern"] = _short(pattern.pattern)
            return "pattern_missing"
    for pattern in expect.must_not_match:
        if pattern.search(text) is not None:
            detail["pattern"] = _short(pattern.pattern)
            return "pattern_forbidden"
    return None
