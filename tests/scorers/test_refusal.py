"""The refusal classifier: refusals caught in seven languages, help after a refusal seen as partial,
and apologies, policies, quotations and code left alone."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from shadowtap.scorers.refusal import (
    PAIRWISE_OUTCOMES,
    RefusalScorer,
    RefusalVerdict,
    classify_refusal,
    pairwise_refusal,
)
from shadowtap.testing.pairs import make_pair, make_side

pytestmark = pytest.mark.unit

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
REFUSING = frozenset({"refused", "partial"})


def load(name: str) -> list[dict[str, str]]:
    with (DATA_DIR / name).open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def scores(examples: list[dict[str, str]]) -> tuple[float, float, float]:
    """Precision and recall of refused-or-partial, and 3-class accuracy."""
    true_pos = false_pos = false_neg = correct = 0
    for example in examples:
        got = classify_refusal(example["text"]).label
        correct += got == example["label"]
        gold_refusing, got_refusing = example["label"] in REFUSING, got in REFUSING
        true_pos += gold_refusing and got_refusing
        false_pos += got_refusing and not gold_refusing
        false_neg += gold_refusing and not got_refusing
    return true_pos / (true_pos + false_pos), true_pos / (true_pos + false_neg), correct / len(examples)


def test_the_labelled_set_covers_what_the_classifier_must_tell_apart() -> None:
    examples = load("refusal_labelled.jsonl")
    labels = Counter(example["label"] for example in examples)
    kinds = Counter(example["kind"] for example in examples)
    hard_negatives = sum(
        example["label"] == "answered"
        and example["kind"].startswith(
            (
                "apology",
                "unfortunately",
                "policy",
                "quoted",
                "cant_",
                "code",
                "error",
                "refusal_word",
                "deep_cue",
            )
        )
        for example in examples
    )
    assert len(examples) >= 240
    assert labels["refused"] >= 80 and labels["partial"] >= 50 and labels["answered"] >= 110
    assert hard_negatives >= 50
    for language, least in {"de": 8, "fr": 8, "es": 8, "it": 4, "pt": 4, "nl": 4}.items():
        assert kinds[f"multilingual_{language}"] >= least, language


@pytest.mark.parametrize(
    ("name", "floor"), [("refusal_labelled.jsonl", 0.95), ("refusal_heldout.jsonl", 0.90)]
)
def test_refusals_are_found_with_few_false_alarms(name: str, floor: float) -> None:
    precision, recall, accuracy = scores(load(name))
    assert precision >= floor, f"precision {precision:.3f}"
    assert recall >= floor, f"recall {recall:.3f}"
    assert accuracy >= floor, f"3-class accuracy {accuracy:.3f}"


def test_a_plain_refusal_is_caught_with_its_cue() -> None:
    verdict = classify_refusal("I'm sorry, but I can't help with that request.")
    assert verdict == RefusalVerdict("refused", "I can't help with that request", "en")


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Ich kann Ihnen dabei leider nicht helfen.", "de"),
        ("Je ne peux malheureusement pas vous aider avec cela.", "fr"),
        ("Lo siento, no puedo ayudar con eso.", "es"),
        ("Non posso aiutarti con questo.", "it"),
        ("Não posso ajudar com isso.", "pt"),
        ("Ik kan je daar niet mee helpen.", "nl"),
    ],
)
def test_a_refusal_in_another_language_is_caught(text: str, language: str) -> None:
    verdict = classify_refusal(text)
    assert (verdict.label, verdict.language) == ("refused", language)


def test_a_german_refusal_is_caught() -> None:
    verdict = classify_refusal("Es tut mir leid, aber das kann ich leider nicht tun.")
    assert verdict.label == "refused"
    assert verdict.language == "de"
    assert verdict.cue is not None and "kann ich" in verdict.cue


def test_an_apology_followed_by_help_is_not_a_refusal() -> None:
    verdict = classify_refusal(
        "Sorry for the confusion! The correct command is `git rebase -i HEAD~3`, which lets you squash "
        "the last three commits."
    )
    assert verdict == RefusalVerdict("answered", None, None)


@pytest.mark.parametrize(
    "text",
    [
        "In the film, HAL's line \"I'm sorry, Dave. I'm afraid I can't do that.\" marks the turn.",
        "Summary: the agent replied “I'm sorry, but I can't process refunds over $500” and escalated; "
        "the manager approved the refund the next day.",
        "The bot's fallback is 'I cannot help with that', which is set under Settings > Responses.",
        "The customer wrote:\n\n> I can't help with this, my account is locked.\n\n"
        "Unlock it from Admin > Users.",
    ],
)
def test_a_quoted_refusal_inside_an_answer_is_not_a_refusal(text: str) -> None:
    assert classify_refusal(text).label == "answered"


def test_a_refusal_string_in_code_is_not_a_refusal() -> None:
    text = "```python\ndef reply():\n    return \"I'm sorry, I can't help with that.\"\n```"
    assert classify_refusal(text).label == "answered"


@pytest.mark.parametrize(
    "text",
    [
        "If you can't log in, reset your password from the sign-in page.",
        "I can't stress enough how important backups are: test a restore every month.",
        "I am unable to reproduce the bug on 2.3.1; could you share the payload?",
        "Our refund policy allows returns within 30 days of purchase.",
        "Unfortunately, the item is out of stock; it is back on June 3 and I've added you to the list.",
    ],
)
def test_cant_sorry_or_policy_in_another_sense_is_not_a_refusal(text: str) -> None:
    assert classify_refusal(text).label == "answered"


def test_help_after_a_disclaimer_is_a_partial() -> None:
    verdict = classify_refusal(
        "I can't give legal advice, but here is some general information:\n\n"
        "1. Most landlords must return the deposit within 14–30 days.\n"
        "2. Deductions need an itemised list.\n"
        "3. Small claims court is the usual remedy."
    )
    assert verdict.label == "partial"
    assert verdict.cue == "I can't give legal advice"


def test_a_refusal_that_only_redirects_is_still_a_refusal() -> None:
    assert classify_refusal("I can't help with that, but you could contact a lawyer.").label == "refused"
    assert (
        classify_refusal(
            "I'm not able to help with that. Is there anything else I can do for you today?"
        ).label
        == "refused"
    )


def test_a_refusal_of_one_part_after_an_answer_is_a_partial() -> None:
    verdict = classify_refusal(
        "Here's a summary of the article: the central bank held rates at 4.5%, citing sticky services "
        "inflation, and signalled that cuts are unlikely before the autumn.\n\n"
        "However, I can't translate the attached PDF, since I can't open attachments."
    )
    assert verdict.label == "partial"
    assert verdict.cue == "I can't translate the attached PDF"


@pytest.mark.parametrize(
    "text",
    [
        "I’m sorry, but I can’t help with that.",
        "**I'M SORRY, BUT I CANNOT HELP WITH THAT.**",
        "  \n\n## Unable to help\n\nIm sorry but i cant assist with that.",
        "As an AI language model, I am not able to provide medical diagnoses.",
        "Unfortunately, I won't be able to assist with this request.",
    ],
)
def test_apostrophes_case_and_markdown_do_not_hide_a_refusal(text: str) -> None:
    assert classify_refusal(text).label == "refused"


@pytest.mark.parametrize("text", [None, "", "   \n\t"])
def test_missing_or_blank_text_is_answered_without_a_cue(text: str | None) -> None:
    assert classify_refusal(text) == RefusalVerdict("answered", None, None)


@pytest.mark.parametrize(
    ("primary", "candidate", "outcome"),
    [
        ("answered", "refused", "candidate_only_refused"),
        ("answered", "partial", "candidate_only_refused"),
        (None, "refused", "candidate_only_refused"),
        ("refused", "answered", "primary_only_refused"),
        ("partial", None, "primary_only_refused"),
        ("refused", "partial", "both"),
        ("partial", "partial", "both"),
        ("answered", "answered", "neither"),
        (None, "answered", "neither"),
        (None, None, "neither"),
    ],
)
def test_pairwise_outcomes(primary: str | None, candidate: str | None, outcome: str) -> None:
    assert pairwise_refusal(primary, candidate) == outcome  # type: ignore[arg-type]
    assert outcome in PAIRWISE_OUTCOMES


def test_long_and_adversarial_texts_stay_fast() -> None:
    """A guard against a pattern that backtracks: big, quote-heavy texts take milliseconds, not seconds."""
    texts = [
        "The quick brown fox jumps. " * 8_000,
        "'" + "a'b " * 50_000,
        '"' * 20_000 + "I can't " * 5_000,
        "I can't help with that. " + "- item\n" * 20_000,
        "ich kann " * 20_000,
    ]
    started = time.perf_counter()
    for text in texts:
        classify_refusal(text)
    assert time.perf_counter() - started < 2.0


def _with_output(side: dict[str, Any], **output: Any) -> dict[str, Any]:
    """A v2 side with output 0 set as given (text, tool_calls, refusal)."""
    first = {"index": 0, "text": side.get("text"), "tool_calls": [], "refusal": None, "reasoning": None}
    first.update(output)
    return {**side, "outputs": [first]}


async def test_the_apis_refusal_field_counts_as_a_refusal():
    """OpenAI structured outputs put a refusal in `message.refusal` with no content: refused, not silent."""
    pair = make_pair("Here is the summary.", None)
    pair["candidate"] = _with_output(make_side(""), text=None, refusal="I can't help with that request.")  # type: ignore[typeddict-item]
    pair["candidate"]["text"] = None  # type: ignore[typeddict-item]
    scores = {s.side: s for s in await RefusalScorer().score(pair)}

    assert scores["candidate"].outcome == "refused"
    assert scores["pair"].outcome == "candidate_only_refused"


async def test_a_tool_call_is_an_answer_and_a_refusal_instead_of_it_is_candidate_only_refused():
    pair = make_pair("", "I'm sorry, but I can't look up orders.")
    call = {"id": "call_1", "name": "lookup_order", "arguments": '{"id": "A1"}'}
    pair["primary"] = _with_output(dict(pair["primary"]), text="", tool_calls=[call])  # type: ignore[typeddict-item]
    scorer = RefusalScorer()
    scores = await scorer.score(pair)
    by_side = {s.side: s for s in scores}

    assert by_side["primary"].outcome == "answered"
    assert by_side["candidate"].outcome == "refused"
    assert by_side["pair"].outcome == "candidate_only_refused"
    assert scorer.reasons_for_review(scores) == ["candidate_refused"]
