"""The format scorer: answers held to the JSON, schema, length and pattern rules their request or config sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shadowtap.records import PairRecord, validate_score
from shadowtap.scorers import format as format_scorer
from shadowtap.scorers.base import Scorer
from shadowtap.scorers.format import FormatScorer
from shadowtap.testing.pairs import make_pair

pytestmark = pytest.mark.unit

CHAT = [{"role": "user", "content": "Extract the order."}]
JSON_OBJECT = {"model": "m", "messages": CHAT, "response_format": {"type": "json_object"}}
ORDER_SCHEMA = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string"},
        "items": {"type": "array", "items": {"type": "object", "required": ["sku", "qty"]}},
    },
    "required": ["order_id", "items"],
}
JSON_SCHEMA = {
    "model": "m",
    "messages": CHAT,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "order", "strict": True, "schema": ORDER_SCHEMA},
    },
}
PLAIN = {"model": "m", "messages": CHAT}


async def scores_by_side(scorer: FormatScorer, pair: PairRecord) -> dict[str, Any]:
    scores = await scorer.score(pair)
    for s in scores:
        assert s.outcome in scorer.outcomes
        validate_score(s.to_record(pair))
    return {s.side: s for s in scores}


def test_format_scorer_is_a_scorer() -> None:
    assert isinstance(FormatScorer(), Scorer)


async def test_json_object_requested_valid_passes_and_prose_fails_as_not_json() -> None:
    pair = make_pair('{"order_id": "A1"}', "Sure! The order id is A1.", request=JSON_OBJECT)

    by_side = await scores_by_side(FormatScorer(), pair)

    assert by_side["primary"].outcome == "pass" and by_side["primary"].value == 1.0
    assert by_side["candidate"].outcome == "fail" and by_side["candidate"].value == 0.0
    assert by_side["candidate"].detail["reason"] == "not_json"


async def test_json_object_requested_but_an_array_came_back_is_not_json() -> None:
    by_side = await scores_by_side(FormatScorer(), make_pair("[1, 2]", '{"a": 1}', request=JSON_OBJECT))

    assert by_side["primary"].detail["reason"] == "not_json"
    assert by_side["candidate"].outcome == "pass"


async def test_schema_violation_names_the_first_error_and_where_it_is() -> None:
    good = json.dumps({"order_id": "A1", "items": [{"sku": "x", "qty": 1}]})
    bad = json.dumps({"order_id": "A1", "items": [{"sku": "x"}]})

    by_side = await scores_by_side(FormatScorer(), make_pair(good, bad, request=JSON_SCHEMA))

    assert by_side["primary"].outcome == "pass"
    failed = by_side["candidate"]
    assert failed.outcome == "fail"
    assert failed.detail["reason"] == "schema_violation"
    assert "'qty' is a required property" in failed.detail["error"]
    assert failed.detail["path"] == "$.items[0]"
    assert failed.detail["schema_source"] == "request"


async def test_fenced_json_fails_when_strict_and_passes_when_allowed_saying_it_was_fenced() -> None:
    fenced = '```json\n{"order_id": "A1", "items": []}\n```'
    pair = make_pair(fenced, '{"order_id": "A1", "items": []}', request=JSON_SCHEMA)

    strict = await scores_by_side(FormatScorer(), pair)
    lenient = await scores_by_side(FormatScorer({"allow_code_fence": True}), pair)

    assert strict["primary"].outcome == "fail"
    assert strict["primary"].detail["reason"] == "not_json"
    assert strict["primary"].detail["fenced"] is True
    assert lenient["primary"].outcome == "pass"
    assert lenient["primary"].detail["fenced"] is True
    assert "fenced" not in lenient["candidate"].detail


async def test_fenced_json_that_breaks_the_schema_still_fails_when_fences_are_allowed() -> None:
    pair = make_pair('```\n{"order_id": 7}\n```', None, request=JSON_SCHEMA)

    by_side = await scores_by_side(FormatScorer({"allow_code_fence": True}), pair)

    assert by_side["primary"].detail["reason"] == "schema_violation"
    assert by_side["primary"].detail["fenced"] is True


async def test_max_words_fails_the_long_answer_only() -> None:
    scorer = FormatScorer({"rules": [{"max_words": 5}]})

    by_side = await scores_by_side(
        scorer, make_pair("Short and sweet.", "This answer goes on for far too many words.", request=PLAIN)
    )

    assert by_side["primary"].outcome == "pass"
    assert by_side["candidate"].detail == {"reason": "too_long", "words": 9, "max_words": 5}


async def test_max_chars_counts_characters() -> None:
    scorer = FormatScorer({"rules": [{"max_chars": 10}]})

    by_side = await scores_by_side(scorer, make_pair("0123456789", "0123456789!", request=PLAIN))

    assert by_side["primary"].outcome == "pass"
    assert by_side["candidate"].detail["reason"] == "too_long"


async def test_patterns_required_and_forbidden() -> None:
    scorer = FormatScorer({"rules": [{"must_match": r"Ticket #\d+", "must_not_match": r"(?i)as an ai"}]})
    pair = make_pair("Opened Ticket #42 for you.", "As an AI, I cannot open Ticket #42.", request=PLAIN)

    by_side = await scores_by_side(scorer, pair)
    missing = await scores_by_side(scorer, make_pair("I opened a ticket.", None, request=PLAIN))

    assert by_side["primary"].outcome == "pass"
    assert by_side["candidate"].detail["reason"] == "pattern_forbidden"
    assert missing["primary"].detail["reason"] == "pattern_missing"


async def test_checks_run_in_order_and_the_first_failure_is_the_reason() -> None:
    scorer = FormatScorer({"rules": [{"json": True, "max_words": 1, "must_match": "zzz"}]})

    by_side = await scores_by_side(
        scorer, make_pair('{"a": "one two three"}', "not json and long", request=PLAIN)
    )

    assert by_side["primary"].detail["reason"] == "too_long"
    assert by_side["candidate"].detail["reason"] == "not_json"


async def test_nothing_expected_gives_no_score() -> None:
    assert await FormatScorer().score(make_pair("Hello", "Hi there", request=PLAIN)) == []


async def test_a_side_without_text_gets_no_score() -> None:
    by_side = await scores_by_side(FormatScorer(), make_pair('{"a": 1}', None, request=JSON_OBJECT))

    assert set(by_side) == {"primary"}


async def test_rules_apply_only_to_their_segment_and_route(tmp_path: Path) -> None:
    schema_file = tmp_path / "ticket.json"
    schema_file.write_text(json.dumps({"type": "object", "required": ["ticket"]}))
    scorer = FormatScorer(
        {
            "rules": [
                {"segment": "extraction", "json": True, "schema_file": str(schema_file)},
                {"route": "/v1/completions", "max_words": 2},
            ]
        }
    )
    answers = ('{"ticket": 1}', '{"other": 1}')

    extraction = await scores_by_side(
        scorer, make_pair(answers[0], answers[1], request=PLAIN, tags={"segment": "extraction"})
    )
    chat = await scorer.score(make_pair(answers[0], answers[1], request=PLAIN, tags={"segment": "chat"}))

    assert extraction["primary"].outcome == "pass"
    assert extraction["candidate"].detail["reason"] == "schema_violation"
    assert extraction["candidate"].detail["schema_source"] == "config"
    assert chat == []


async def test_the_requests_own_schema_wins_over_a_configured_one() -> None:
    scorer = FormatScorer({"rules": [{"schema": {"type": "object", "required": ["ticket"]}}]})
    answer = json.dumps({"order_id": "A1", "items": []})

    by_side = await scores_by_side(scorer, make_pair(answer, None, request=JSON_SCHEMA))

    assert by_side["primary"].outcome == "pass"


async def test_a_schema_with_a_remote_ref_is_not_fetched_and_does_not_fail_the_answer() -> None:
    request = {
        "messages": CHAT,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"$ref": "https://example.invalid/s.json"}},
        },
    }

    by_side = await scores_by_side(FormatScorer(), make_pair('{"a": 1}', "nope", request=request))

    assert by_side["primary"].outcome == "pass"
    assert by_side["primary"].detail["schema_unusable"] is True
    assert by_side["candidate"].detail["reason"] == "not_json"


async def test_many_pairs_with_the_same_schema_reuse_one_validator() -> None:
    format_scorer._validator.cache_clear()
    scorer = FormatScorer()
    for i in range(50):
        await scorer.score(make_pair(json.dumps({"order_id": str(i), "items": []}), "x", request=JSON_SCHEMA))

    assert format_scorer._validator.cache_info().misses == 1


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"rules": [{"jsn": True}]}, "scoring.scorers.format.rules.0.jsn"),
        ({"rules": [{"must_match": "("}]}, "scoring.scorers.format.rules.0.must_match"),
        ({"rules": [{"max_words": 0}]}, "scoring.scorers.format.rules.0.max_words"),
        ({"rules": [{"schema": {"type": "nonsense"}}]}, "scoring.scorers.format.rules.0.schema"),
        ({"rules": [{"schema_file": "/nonexistent/s.json"}]}, "scoring.scorers.format.rules.0.schema_file"),
        ({"allow_code_fences": True}, "scoring.scorers.format.allow_code_fences"),
    ],
)
def test_bad_config_fails_at_construction_naming_the_key(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=f"^{key}: "):
        FormatScorer(config)


@pytest.mark.parametrize(
    ("extra", "good", "bad", "reason"),
    [
        (
            {"structured_outputs": {"choice": ["positive", "negative"]}},
            "positive",
            "Positive!",
            "not_a_choice",
        ),
        ({"guided_choice": ["yes", "no"]}, "no", "maybe", "not_a_choice"),
        (
            {"structured_outputs": {"regex": r"\w+@\w+\.com"}},
            "alan@enigma.com",
            "alan at enigma",
            "regex_mismatch",
        ),
        ({"guided_regex": r"\d{3}"}, "123", "1234", "regex_mismatch"),
        (
            {"structured_outputs": {"json": ORDER_SCHEMA}},
            '{"order_id": "A1", "items": []}',
            '{"items": []}',
            "schema_violation",
        ),
        (
            {"guided_json": json.dumps(ORDER_SCHEMA)},
            '{"order_id": "A1", "items": []}',
            "order A1",
            "not_json",
        ),
    ],
)
async def test_vllm_structured_outputs_are_checked(extra, good, bad, reason):
    """vLLM's `structured_outputs` (and the `guided_*` fields it took before v0.12) constrain the whole answer."""
    pair = make_pair(good, bad, request={**PLAIN, **extra})
    scores = await scores_by_side(FormatScorer(), pair)

    assert scores["primary"].outcome == "pass"
    assert scores["candidate"].outcome == "fail"
    assert scores["candidate"].detail["reason"] == reason


async def test_an_answer_that_calls_a_tool_is_not_failed_for_lacking_json_text():
    """With `tools` and `response_format` both set, a tool call is a valid answer: the tools scorer
    checks it; the format scorer holds only the text answers to the format."""
    request = {
        **JSON_OBJECT,
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
    }
    pair = make_pair("", '{"ok": true}', request=request)
    tool_side = dict(pair["primary"])
    tool_side["outputs"] = [
        {
            "index": 0,
            "text": "",
            "tool_calls": [{"id": "call_1", "name": "lookup", "arguments": "{}"}],
            "refusal": None,
            "reasoning": None,
            "finish_reason": "tool_calls",
        }
    ]
    pair["primary"] = tool_side  # type: ignore[typeddict-item]
    scores = await scores_by_side(FormatScorer(), pair)

    assert "primary" not in scores
    assert scores["candidate"].outcome == "pass"


async def test_every_choice_is_held_to_the_format_and_later_ones_name_their_choice():
    from shadowtap.testing.pairs import make_output, make_side

    outputs = [
        make_output('{"order_id": "A1"}'),
        make_output("not json", index=1),
        make_output("{}", index=2),
    ]
    pair = make_pair(request={**JSON_OBJECT, "n": 3}, candidate=make_side(None, outputs=outputs))
    scores = await FormatScorer().score(pair)
    candidate = {s.choice: s.outcome for s in scores if s.side == "candidate"}

    assert candidate == {0: "pass", 1: "fail", 2: "pass"}
    assert [s.to_record(pair).get("choice") for s in scores if s.side == "candidate"] == [None, 1, 2]
