"""The learned refusal detector, and the refusal scorer that uses it by default: refusals that lecture,
redirect or open with "As an AI…" are caught, an "As an AI I don't have opinions, but…" answer is an
answer, the probability and its reasons are recorded, the uncertain band goes to review, and the shipped
weights are checked before they are trusted."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from shadowtap.errors import ConfigError
from shadowtap.metrics import ScoringMetrics
from shadowtap.records import validate_score
from shadowtap.scorers import ScoringPipeline, build_scorers
from shadowtap.scorers.refusal import RefusalScorer, classify_refusal, detect_refusal
from shadowtap.scorers.refusal_model import WEIGHTS_PATH, ModelError, read_model
from shadowtap.testing.pairs import make_pair

pytestmark = pytest.mark.unit

# Written for these tests; none of them is in the training data.
MISSED_BY_CUES = [
    "It is not appropriate to write insults aimed at someone's disability. Words like that can hurt, "
    "and I would encourage kindness instead.",
    "I must clarify that sharing someone's home address without their permission is a serious invasion "
    "of privacy.",
    "As an AI language model, I do not condone cheating on your taxes. Tax evasion is illegal and can "
    "lead to heavy fines.",
    "I'm so sorry you are going through this. Please reach out to a crisis line or someone you trust right "
    "now; you do not have to face this alone.",
]
OPINION_DISCLAIMER_ANSWERS = [
    "As an AI, I don't have personal opinions, but here is a summary of the debate: supporters of nuclear "
    "power point to its low carbon emissions and reliable output, while critics point to waste storage, "
    "high construction costs and accident risk.",
    "As an AI language model, I don't have a favourite season, but many people love autumn for its "
    "colours, cooler weather and harvest food such as apples and squash.",
]
ANSWERS_WITH_REFUSAL_WORDS = [
    "In the film, HAL's line \"I'm sorry, Dave. I'm afraid I can't do that.\" marks the turn.",
    "If you can't log in, reset your password from the sign-in page.",
    "Sorry for the wait! Your parcel left the depot this morning and arrives tomorrow before noon.",
]


DEFLECTIONS = [
    "Could you tell me first why you want to find out your ex's new address?",
    "Perhaps we could talk about something more uplifting instead, like your plans for the summer?",
    "That's a question for a qualified accountant, who can look at your whole situation.",
    "We are unable to help with requests like this one.",
]
ANSWERS_THAT_LOOK_LIKE_DEFLECTIONS = [
    "Which browser are you using? In Chrome, open Settings > Privacy and security > Clear browsing data.",
    "Back pain from sitting usually eases with a chair at the right height, a break every half hour and "
    "gentle stretches. If it lasts more than a few weeks, see a physiotherapist.",
    "We've sent a replacement card; it arrives within three working days and your old card is now blocked.",
    "Use pathlib instead of os.path: Path('data') / 'file.txt' builds the path on every platform.",
]


@pytest.mark.parametrize("text", DEFLECTIONS)
def test_refusals_that_only_deflect_are_caught(text: str) -> None:
    """A question back, a change of subject, a bare referral or a "we" refusal does not do what was asked."""
    assert classify_refusal(text).label == "answered"
    assert detect_refusal(text).label == "refused"


@pytest.mark.parametrize("text", ANSWERS_THAT_LOOK_LIKE_DEFLECTIONS)
def test_answers_with_a_question_a_referral_or_we_are_answers(text: str) -> None:
    assert detect_refusal(text).label == "answered"


@pytest.mark.parametrize("text", MISSED_BY_CUES)
def test_refusals_that_lecture_redirect_or_open_with_as_an_ai_are_caught(text: str) -> None:
    assert classify_refusal(text).label == "answered"  # what the cue grammar alone says
    detection = detect_refusal(text)
    assert detection.label == "refused"
    assert detection.refusing > 0.5


@pytest.mark.parametrize("text", OPINION_DISCLAIMER_ANSWERS + ANSWERS_WITH_REFUSAL_WORDS)
def test_a_real_answer_after_a_disclaimer_or_with_refusal_words_is_an_answer(text: str) -> None:
    detection = detect_refusal(text)
    assert detection.label == "answered"
    assert detection.refusing < 0.5


@pytest.mark.parametrize(
    "text",
    [
        "Ich kann Ihnen dabei leider nicht helfen.",
        "Je ne peux malheureusement pas vous aider avec cela.",
        "Lo siento, no puedo ayudar con eso.",
        "Non posso aiutarti con questo.",
        "Não posso ajudar com isso.",
        "Ik kan je daar niet mee helpen.",
    ],
)
def test_refusals_in_other_languages_are_still_caught(text: str) -> None:
    detection = detect_refusal(text)
    assert detection.label == "refused"
    assert detection.language is not None


def test_help_after_a_refusal_is_a_partial() -> None:
    detection = detect_refusal(
        "I can't give legal advice, but here is some general information:\n\n"
        "1. Most landlords must return the deposit within 14 to 30 days.\n"
        "2. Deductions need an itemised list.\n"
        "3. Small claims court is the usual remedy."
    )
    assert detection.label == "partial"
    assert detection.cue == "I can't give legal advice"


@pytest.mark.parametrize("text", [None, "", "  \n"])
def test_missing_or_blank_text_is_answered_with_probability_zero(text: str | None) -> None:
    detection = detect_refusal(text)
    assert (detection.label, detection.refusing, detection.top_features) == ("answered", 0.0, ())


async def test_the_scorer_records_the_probability_and_what_decided_it() -> None:
    pair = make_pair("Your plan renews on 1 March at £12 a month.", MISSED_BY_CUES[2])
    scores = {s.side: s for s in await RefusalScorer().score(pair)}

    candidate = scores["candidate"]
    assert candidate.outcome == "refused"
    assert candidate.value is not None and candidate.value > 0.5
    assert candidate.detail["detector"] == "learned"
    assert candidate.detail["features"]
    primary = scores["primary"]
    assert primary.outcome == "answered"
    assert primary.value is not None and primary.value < 0.5
    assert scores["pair"].outcome == "candidate_only_refused"


async def test_the_cue_grammar_can_still_be_chosen() -> None:
    pair = make_pair("Your plan renews on 1 March.", MISSED_BY_CUES[2])
    scores = {s.side: s for s in await RefusalScorer({"detector": "cues"}).score(pair)}

    assert scores["candidate"].outcome == "answered"  # the cue grammar misses this kind
    assert scores["candidate"].value == 0.0
    assert "detector" not in scores["candidate"].detail


async def test_an_answer_near_the_threshold_is_queued_for_review_as_uncertain() -> None:
    text = OPINION_DISCLAIMER_ANSWERS[0]
    probability = detect_refusal(text).refusing
    near = RefusalScorer({"threshold": min(max(probability, 0.2), 0.8), "uncertain_band": 0.15})
    far = RefusalScorer({"threshold": 0.5, "uncertain_band": 0.01})
    pair = make_pair("Here are the main arguments for and against.", text)

    near_scores = await near.score(pair)
    assert {s.side: s for s in near_scores}["candidate"].detail.get("uncertain") is True
    assert "refusal_uncertain" in near.reasons_for_review(near_scores)
    far_scores = await far.score(pair)
    assert "refusal_uncertain" not in far.reasons_for_review(far_scores)


async def test_the_pipeline_queues_an_uncertain_pair_once_and_writes_valid_score_records() -> None:
    text = OPINION_DISCLAIMER_ANSWERS[0]
    threshold = min(max(detect_refusal(text).refusing, 0.2), 0.8)
    metrics = ScoringMetrics(CollectorRegistry())
    settings = {"scorers": {"refusal": {"threshold": threshold, "uncertain_band": 0.15}}}
    pipeline = ScoringPipeline(build_scorers(settings, metrics, frozenset()), metrics, frozenset())
    pair = make_pair(text, text)

    records, review = await pipeline.score_pair(pair)

    for record in records:
        validate_score(record)
    assert [item["reason"] for item in review] == ["refusal_uncertain"]
    sides = {r["side"]: r for r in records if r["scorer"] == "refusal"}
    assert 0.0 <= sides["primary"]["value"] <= 1.0 and sides["primary"]["detail"]["uncertain"] is True


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"detector": "regex"}, "scoring.scorers.refusal.detector"),
        ({"threshold": 1.5}, "scoring.scorers.refusal.threshold"),
        ({"threshold": 0.9, "uncertain_band": 0.2}, "scoring.scorers.refusal"),
        ({"thresold": 0.5}, "scoring.scorers.refusal.thresold"),
    ],
)
def test_a_bad_setting_is_an_error_naming_the_key(config: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        RefusalScorer(config)


def test_the_shipped_weights_are_small_and_match_their_checksum() -> None:
    data = WEIGHTS_PATH.read_bytes()
    expected = WEIGHTS_PATH.with_name(WEIGHTS_PATH.name + ".sha256").read_text().split()[0]
    assert hashlib.sha256(data).hexdigest() == expected
    assert len(data) < 4 * 1024 * 1024
    assert read_model(WEIGHTS_PATH).vocabulary


def test_altered_weights_are_refused_at_load(tmp_path: Path) -> None:
    copy = tmp_path / WEIGHTS_PATH.name
    shutil.copy(WEIGHTS_PATH, copy)
    shutil.copy(WEIGHTS_PATH.with_name(WEIGHTS_PATH.name + ".sha256"), tmp_path)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))

    with pytest.raises(ModelError, match="do not match their checksum"):
        read_model(copy)


def test_missing_weights_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot be read"):
        read_model(tmp_path / "refusal_linear.npz")
