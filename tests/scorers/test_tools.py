"""The tools scorer: each side's calls checked against the request's tools; the two sides compared."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from shadowtap.scorers.tools import ToolsScorer
from shadowtap.testing.pairs import WEATHER_TOOL as WEATHER
from shadowtap.testing.pairs import make_pair, make_side

pytestmark = pytest.mark.unit

LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
    },
}
REQUEST = {
    "model": "m",
    "messages": [{"role": "user", "content": "Weather in Paris?"}],
    "tools": [WEATHER, LOOKUP],
}


def calling(*calls: tuple[str, Any], index: int = 0, text: str | None = None) -> dict[str, Any]:
    """A v2 side whose output `index` makes `calls` (arguments given as a dict are sent as JSON)."""
    side: dict[str, Any] = dict(make_side(text or ""))
    tool_calls = [
        {"id": f"call_{i}", "name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}
        for i, (name, args) in enumerate(calls)
    ]
    output = {"index": index, "text": text, "tool_calls": tool_calls, "refusal": None, "reasoning": None}
    side["outputs"] = [output]
    side["finish_reason"] = output["finish_reason"] = "tool_calls" if calls else "stop"
    return side


def score(
    primary: dict[str, Any], candidate: dict[str, Any], request: dict[str, Any] = REQUEST
) -> dict[str, Any]:
    pair = make_pair(request=request, primary=primary, candidate=candidate)  # type: ignore[arg-type]
    scorer = ToolsScorer()
    scores = asyncio.run(scorer.score(pair))
    return {
        "by_side": {s.side: (s.outcome, s.detail) for s in scores},
        "review": scorer.reasons_for_review(scores),
    }


PARIS = {"city": "Paris", "unit": "celsius"}


def test_the_same_valid_call_on_both_sides_passes_and_matches():
    result = score(
        calling(("get_weather", PARIS)), calling(("get_weather", {"unit": "celsius", "city": "Paris"}))
    )

    assert result["by_side"]["primary"][0] == "pass"
    assert result["by_side"]["candidate"][0] == "pass"
    assert result["by_side"]["pair"][0] == "same_calls"  # the same arguments, in another order
    assert result["review"] == []


def test_candidate_arguments_that_break_a_strict_schema_fail_on_the_candidate_only():
    result = score(calling(("get_weather", PARIS)), calling(("get_weather", {"city": 42, "unit": "kelvin"})))

    assert result["by_side"]["primary"][0] == "pass"
    outcome, detail = result["by_side"]["candidate"]
    assert outcome == "schema_violation"
    assert detail["tool"] == "get_weather" and "city" in detail["error"]
    assert result["by_side"]["pair"][0] == "different_arguments"
    assert result["review"] == ["tool_call_invalid"]


def test_strict_mode_refuses_properties_the_schema_does_not_name():
    result = score(calling(("get_weather", PARIS)), calling(("get_weather", {**PARIS, "country": "FR"})))

    assert result["by_side"]["candidate"][0] == "schema_violation"
    assert "country" in result["by_side"]["candidate"][1]["error"]


def test_a_non_strict_tool_allows_extra_properties():
    result = score(
        calling(("lookup_order", {"id": "A1"})), calling(("lookup_order", {"id": "A1", "note": "x"}))
    )

    assert result["by_side"]["candidate"][0] == "pass"
    assert result["by_side"]["pair"][0] == "different_arguments"


@pytest.mark.parametrize(
    ("call", "outcome"),
    [
        (("get_wether", PARIS), "unknown_tool"),
        (("get_weather", '{"city": "Paris", "unit": '), "bad_json"),
        (("get_weather", {"city": "Paris"}), "schema_violation"),  # a required property missing
    ],
)
def test_each_kind_of_invalid_call_has_its_own_outcome(call, outcome):
    assert score(calling(("get_weather", PARIS)), calling(call))["by_side"]["candidate"][0] == outcome


def test_a_side_that_answers_in_text_where_the_other_calls_a_tool():
    dropped = score(calling(("get_weather", PARIS)), calling(text="It is sunny in Paris."))
    extra = score(calling(text="It is sunny in Paris."), calling(("get_weather", PARIS)))

    assert dropped["by_side"]["pair"][0] == "only_primary_called"
    assert "candidate" not in dropped["by_side"]  # no calls, nothing to validate
    assert dropped["review"] == ["tool_call_dropped"]
    assert extra["by_side"]["pair"][0] == "only_candidate_called"


def test_different_functions_are_a_different_tool():
    result = score(calling(("get_weather", PARIS)), calling(("lookup_order", {"id": "A1"})))

    assert result["by_side"]["pair"][0] == "different_tool"
    assert "different_tool" in result["review"]


def test_one_bad_call_among_several_fails_the_side_and_says_how_many():
    result = score(
        calling(("get_weather", PARIS), ("lookup_order", {"id": "A1"})),
        calling(("get_weather", PARIS), ("lookup_order", {"id": 7})),
    )

    outcome, detail = result["by_side"]["candidate"]
    assert outcome == "schema_violation"
    assert (detail["calls"], detail["failed"], detail["tool"]) == (2, 1, "lookup_order")


def test_a_call_in_a_later_choice_names_its_choice():
    result = score(calling(("get_weather", PARIS)), calling(("get_wether", PARIS), index=2))

    assert result["by_side"]["candidate"][1]["choice"] == 2


def test_responses_api_tools_are_read_too():
    request = {
        "model": "m",
        "input": "Weather in Paris?",
        "tools": [
            {
                "type": "function",
                "name": "get_weather",
                "strict": True,
                "parameters": WEATHER["function"]["parameters"],
            }
        ],
    }
    result = score(
        calling(("get_weather", PARIS)), calling(("get_weather", {"city": "Paris", "unit": "K"})), request
    )

    assert result["by_side"]["candidate"][0] == "schema_violation"


def test_no_tools_offered_no_score_and_v1_records_have_no_calls():
    assert (
        score(
            calling(("get_weather", PARIS)), calling(("get_weather", PARIS)), {"model": "m", "messages": []}
        )["by_side"]
        == {}
    )
    v1 = make_pair(request=REQUEST)
    assert asyncio.run(ToolsScorer().score(v1)) == []
