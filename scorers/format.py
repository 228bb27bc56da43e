"""Format and instruction checks on each answer: JSON asked for, schema, length limits, patterns. No LLM.

What is expected comes from the request itself (`response_format`) and from configured rules that
apply per route and/or segment. A side with nothing expected of it gets no score, so that answers
nobody constrained do not inflate the pass rate.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema_specifications import REGISTRY as METASCHEMAS
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shadowtap.config import section_error
from shadowtap.metrics import ScoringMetrics
from shadowtap.records import Score
from shadowtap.scorers.base import side_text

CONFIG_KEY = "scoring.scorers.format"
REASONS = ("not_json", "schema_violation", "too_long", "pattern_missing", "pattern_forbidden")
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


class FormatConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

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

    def empty(self) -> bool:
        return not (self.json or self.max_words or self.max_chars or self.must_match or self.must_not_match)


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
        holder = fmt.get("json_schema") if isinstance(fmt.get("json_schema"), dict) else fmt
        schema = holder.get("schema")
        return True, False, schema if isinstance(schema, dict) else None
    return False, False, None


class FormatScorer:
    """Does each answer have the format that was asked for? `pass`/`fail`, the first failed check as reason."""

    name: ClassVar[str] = "format"
    outcomes: ClassVar[frozenset[str]] = frozenset({"pass", "fail"})

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        *,
        metrics: ScoringMetrics | None = None,
        segments: frozenset[str] = frozenset(),
    ) -> None:
        try:
            self.config = FormatConfig.model_validate(config or {})
        except ValidationError as exc:
            raise ValueError(section_error(CONFIG_KEY, exc)) from None
        self.metrics = metrics
        self.segments = segments
        self._rules = [self._compile(i, rule) for i, rule in enumerate(self.config.rules)]

    @staticmethod
    def _compile(index: int, rule: FormatRule) -> _CompiledRule:
        key = f"{CONFIG_KEY}.rules.{index}"
        schema = rule.json_schema
        if rule.schema_file is not None:
            try:
                schema = json.loads(Path(rule.schema_file).read_text())
            except OSError as exc:
                raise ValueError(
                    f"{key}.schema_file: cannot read {rule.schema_file}: {exc.strerror}"
                ) from None
            except json.JSONDecodeError as exc:
                raise ValueError(f"{key}.schema_file: {rule.schema_file} is not JSON: {exc}") from None
            if not isinstance(schema, dict):
                raise ValueError(f"{key}.schema_file: {rule.schema_file} must hold a JSON object")
        if schema is not None:
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                name = "schema_file" if rule.schema_file else "schema"
                raise ValueError(f"{key}.{name}: not a valid JSON Schema: {exc.message}") from None
        patterns: dict[str, re.Pattern[str] | None] = {}
        for name in ("must_match", "must_not_match"):
            source = getattr(rule, name)
            try:
                patterns[name] = re.compile(source) if source is not None else None
            except re.error as exc:
                raise ValueError(f"{key}.{name}: not a valid regular expression: {exc}") from None
        return _CompiledRule(rule, schema, patterns["must_match"], patterns["must_not_match"])

    def expectation(self, pair: dict[str, Any]) -> _Expectation:
        """What answers to this pair's request are held to (the same for both sides)."""
        tags = pair.get("tags") or {}
        route = pair.get("route") or tags.get("route")
        segment = tags.get("segment")
        expect = _Expectation()
        wants_json, wants_object, schema = _request_json_expectation(pair.get("request") or {})
        if wants_json:
            expect.json, expect.json_object = True, wants_object
        if schema is not None:
            expect.schema, expect.schema_source = schema, "request"
        for compiled in self._rules:
            rule = compiled.rule
            if not rule.applies_to(route, segment):
                continue
            if rule.expect_json or compiled.schema is not None:
                expect.json = True
            if compiled.schema is not None and expect.schema is None:
                expect.schema, expect.schema_source = compiled.schema, "config"
            if rule.max_words is not None:
                expect.max_words = min(filter(None, (expect.max_words, rule.max_words)))
            if rule.max_chars is not None:
                expect.max_chars = min(filter(None, (expect.max_chars, rule.max_chars)))
            if compiled.must_match is not None:
                expect.must_match.append(compiled.must_match)
            if compiled.must_not_match is not None:
                expect.must_not_match.append(compiled.must_not_match)
        return expect

    async def score(self, pair: dict[str, Any]) -> list[Score]:
        expect = self.expectation(pair)
        if expect.empty():
            return []
        scores = []
        for side in ("primary", "candidate"):
            text = side_text(pair, side)
            if text is not None:
                scores.append(self.check(text, expect, side))
        return scores

    def check(self, text: str, expect: _Expectation, side: str) -> Score:
        """Run the checks in order; the first that fails is the reason."""
        detail: dict[str, Any] = {}
        reason = self._first_failure(text, expect, detail)
        if reason is None:
            return Score(self.name, side, "pass", 1.0, detail)  # type: ignore[arg-type]
        detail = {"reason": reason, **detail}
        return Score(self.name, side, "fail", 0.0, detail)  # type: ignore[arg-type]

    def _first_failure(self, text: str, expect: _Expectation, detail: dict[str, Any]) -> str | None:
        if expect.json:
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
            if expect.schema is not None:
                detail["schema_source"] = expect.schema_source
                validator = _validator(_canonical(expect.schema))
                if validator is None:
                    detail["schema_unusable"] = True
                else:
                    try:
                        error = next(validator.iter_errors(document), None)
                    except Exception as exc:  # e.g. a $ref that cannot be resolved offline
                        detail["schema_unusable"] = True
                        detail["schema_error"] = _short(str(exc))
                        error = None
                    if error is not None:
                        detail["error"] = _short(error.message)
                        detail["path"] = _short(error.json_path)
                        return "schema_violation"
        if expect.max_words is not None:
            words = len(text.split())
            if words > expect.max_words:
                detail.update(words=words, max_words=expect.max_words)
                return "too_long"
        if expect.max_chars is not None and len(text) > expect.max_chars:
            detail.update(chars=len(text), max_chars=expect.max_chars)
            return "too_long"
        for pattern in expect.must_match:
            if pattern.search(text) is None:
                detail["pattern"] = _short(pattern.pattern)
                return "pattern_missing"
        for pattern in expect.must_not_match:
            if pattern.search(text) is not None:
                detail["pattern"] = _short(pattern.pattern)
                return "pattern_forbidden"
        return None
