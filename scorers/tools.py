"""Tool calls: is each one valid for the tools the request offered, and do the two sides call the same?

Per side and per choice, every call in the answer must name a function the request's `tools` list has,
its `arguments` must parse as JSON, and they must validate against that function's `parameters` schema
(with `strict: true`, as OpenAI's strict mode guarantees, an object schema that does not say otherwise
allows no properties beyond its own). Per pair: the same calls, a different tool, different arguments,
or only one side calling a tool at all. A request without `tools` gets no score.

Calls come from the pair/v2 `outputs` of each side (chat `tool_calls`, Responses API `function_call`
items); a v1 record has none.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from shadowtap.metrics import ScoringMetrics
from shadowtap.records import SIDES, PairRecord, Score, SideName, is_truncated, side_of, side_outputs
from shadowtap.scorers.base import NoConfig, validate_config

__all__ = ["ToolsScorer", "offered_tools", "side_calls"]

SIDE_OUTCOMES = frozenset({"pass", "unknown_tool", "bad_json", "schema_violation"})
PAIR_OUTCOMES = frozenset(
    {"same_calls", "different_arguments", "different_tool", "only_primary_called", "only_candidate_called"}
)
MAX_ERROR_CHARS = 200


@dataclass(frozen=True, slots=True)
class Tool:
    """One function the request offered."""

    name: str
    parameters: dict[str, Any] | None
    strict: bool


@dataclass(frozen=True, slots=True)
class Call:
    """One tool call an answer made."""

    choice: int
    name: str
    arguments: str


def offered_tools(request: Mapping[str, Any]) -> dict[str, Tool]:
    """The functions a request offers, by name: chat's `tools[].function` and the Responses API's
    `tools[]` items of type `function`."""
    tools: dict[str, Tool] = {}
    for item in request.get("tools") or []:
        if not isinstance(item, dict) or item.get("type", "function") != "function":
            continue
        nested = item.get("function")
        spec: dict[str, Any] = nested if isinstance(nested, dict) else item
        name = spec.get("name")
        if isinstance(name, str):
            params = spec.get("parameters")
            tools[name] = Tool(name, params if isinstance(params, dict) else None, spec.get("strict") is True)
    return tools


def side_calls(pair: PairRecord, side: SideName) -> list[Call]:
    """Every tool call of one side, choice by choice (none for a failed side, a v1 record, or a side cut
    at the recording limit, whose last call may be cut mid-arguments)."""
    part = side_of(pair, side)
    if is_truncated(part):
        return []
    calls = []
    for output in side_outputs(part):
        for call in output.get("tool_calls") or []:
            name = call.get("name") if isinstance(call, dict) else None
            if isinstance(name, str):
                calls.append(Call(int(output.get("index") or 0), name, _as_text(call.get("arguments"))))
    return calls


def _as_text(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments
    return "" if arguments is None else json.dumps(arguments)


def _strict(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on every object schema that does not set it."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if out.get("type") == "object" or "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


def _validator(tool: Tool) -> Draft202012Validator | None:
    """A validator for the tool's parameters, or None when it offered no (valid) schema."""
    if tool.parameters is None:
        return None
    schema = _strict(copy.deepcopy(tool.parameters)) if tool.strict else tool.parameters
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError:
        return None
    return Draft202012Validator(schema)


def check_call(call: Call, tools: Mapping[str, Tool]) -> tuple[str, dict[str, Any]]:
    """The outcome for one call and what explains it."""
    tool = tools.get(call.name)
    if tool is None:
        return "unknown_tool", {"tool": call.name[:MAX_ERROR_CHARS], "offered": sorted(tools)[:20]}
    try:
        arguments = json.loads(call.arguments) if call.arguments.strip() else {}
    except json.JSONDecodeError as exc:
        return "bad_json", {"tool": call.name, "error": f"{exc.msg} at column {exc.colno}"}
    validator = _validator(tool)
    if validator is not None:
        error = next(iter(sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))), None)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            message = f"{where}: {error.message}"
            return "schema_violation", {"tool": call.name, "error": message[:MAX_ERROR_CHARS]}
    return "pass", {"tool": call.name}


def _parsed(arguments: str) -> Any:
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        return arguments


def compare(primary: list[Call], candidate: list[Call]) -> tuple[str, dict[str, Any]] | None:
    """How the two sides' calls (of choice 0) relate; None when neither called a tool."""
    if not primary and not candidate:
        return None
    if not candidate:
        return "only_primary_called", {"primary": [c.name for c in primary]}
    if not primary:
        return "only_candidate_called", {"candidate": [c.name for c in candidate]}
    names = ([c.name for c in primary], [c.name for c in candidate])
    if names[0] != names[1]:
        return "different_tool", {"primary": names[0], "candidate": names[1]}
    if [_parsed(c.arguments) for c in primary] != [_parsed(c.arguments) for c in candidate]:
        return "different_arguments", {"tools": names[0]}
    return "same_calls", {"tools": names[0]}


class ToolsScorer:
    """Valid tool calls per side (`pass`, or the first failure's kind), and the pair's comparison.

    Review reasons: `tool_call_invalid` when the primary's calls pass and the candidate's do not;
    `tool_call_dropped` when only the primary called a tool; `different_tool` when they called
    different functions.
    """

    name: ClassVar[str] = "tools"
    outcomes: ClassVar[frozenset[str]] = SIDE_OUTCOMES | PAIR_OUTCOMES
    config_model: ClassVar[type[NoConfig]] = NoConfig
    review_reasons: ClassVar[frozenset[str]] = frozenset(
        {"tool_call_invalid", "tool_call_dropped", "different_tool"}
    )

    def __init__(
        self,
        config: Mapping[str, Any] | NoConfig | None = None,
        *,
        metrics: ScoringMetrics | None = None,
        segments: frozenset[str] = frozenset(),
    ) -> None:
        self.config = validate_config(NoConfig, self.name, config)
        self.metrics = metrics
        self.segments = segments

    async def score(self, pair: PairRecord) -> list[Score]:
        tools = offered_tools(pair.get("request") or {})
        if not tools:
            return []
        calls = {side: side_calls(pair, side) for side in SIDES}
        scores = [self._side_score(side, calls[side], tools) for side in SIDES if calls[side]]
        if all(
            side_of(pair, side).get("error") is None and not is_truncated(side_of(pair, side))
            for side in SIDES
        ):
            first = {side: [c for c in calls[side] if c.choice == 0] for side in SIDES}
            compared = compare(first["primary"], first["candidate"])
            if compared is not None:
                scores.append(Score(self.name, "pair", compared[0], None, compared[1]))
        return scores

    def _side_score(self, side: SideName, calls: list[Call], tools: Mapping[str, Tool]) -> Score:
        """`pass` when every call is valid; otherwise the first failure, with every call's outcome."""
        checked = [(call, *check_call(call, tools)) for call in calls]
        failures = [(call, outcome, detail) for call, outcome, detail in checked if outcome != "pass"]
        detail: dict[str, Any] = {"calls": len(calls), "failed": len(failures)}
        if not failures:
            return Score(self.name, side, "pass", 1.0, detail)
        call, outcome, why = failures[0]
        detail.update(why)
        if call.choice:
            detail["choice"] = call.choice
        return Score(self.name, side, outcome, 1.0 - len(failures) / len(calls), detail)

    def reasons_for_review(self, scores: list[Score]) -> list[str]:
        mine = {s.side: s.outcome for s in scores if s.scorer == self.name}
        reasons = []
        if mine.get("primary") == "pass" and mine.get("candidate") not in (None, "pass"):
            reasons.append("tool_call_invalid")
        if mine.get("pair") == "only_primary_called":
            reasons.append("tool_call_dropped")
        if mine.get("pair") == "different_tool":
            reasons.append("different_tool")
        return reasons
