"""Refusal detection on one answer: refused, partial (declines part, helps with the rest) or answered.

Two detectors. The cue grammar (`classify_refusal`) is pure and fast: precompiled regexes, no network,
no model. A refusal opens the response in the model's own voice; so a cue only counts near the start
(or as a sentence of its own later on, for a partial), never inside quotes, inline code or code fences,
and what follows it decides refused against partial. The learned detector (`detect_refusal`, the
scorer's default) is a linear model over n-grams and the cue grammar's verdict (`refusal_model`),
trained on human-labelled answers of several models; it catches the refusals that moralise, redirect
or open with "As an AI…" that the cue grammar misses, and gives a probability. With `detector: judge`
the answers it is unsure of are also put to a judge model (`refusal_judge`), whose label then decides.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from prometheus_client import CollectorRegistry
from pydantic import Field, model_validator

from shadowtap.errors import JudgeError
from shadowtap.metrics import ScoringMetrics
from shadowtap.records import SIDES, PairRecord, Score, SideName, is_truncated, side_of, side_outputs
from shadowtap.scorers.base import ScorerConfig, config_key, side_text, validate_config
from shadowtap.scorers.judge import JudgeConfig
from shadowtap.scorers.refusal_judge import RefusalJudge
from shadowtap.scorers.refusal_model import load_model

log = logging.getLogger(__name__)

__all__ = [
    "PAIRWISE_OUTCOMES",
    "RefusalConfig",
    "RefusalDetection",
    "RefusalLabel",
    "RefusalScorer",
    "RefusalVerdict",
    "classify_refusal",
    "detect_refusal",
    "pairwise_refusal",
]

RefusalLabel = Literal["refused", "partial", "answered"]
PAIRWISE_OUTCOMES = ("candidate_only_refused", "primary_only_refused", "both", "neither")

# A cue must start this early, with at most this many sentences before it, to count as the opening.
OPENING_CHARS = 160
OPENING_SENTENCES = 2
# Search this much of the text for an opening cue (a cue that starts early may end a little later).
OPENING_SCAN_CHARS = OPENING_CHARS + 120
# A later, stand-alone refusal sentence makes a partial only after this much answer before it.
LATE_CUE_MIN_PRECEDING_CHARS = 120
# Content after the cue (less sign-off and redirect sentences) that makes a refusal a partial.
HELP_CHARS_WITH_STRUCTURE = 40
HELP_CHARS_WITH_PIVOT = 120
HELP_CHARS_ALONE = 150
MAX_CUE_CHARS = 60

# Typographic apostrophes and quotes to ASCII, one for one so that offsets are kept. Chained
# `str.replace` is some twenty times faster than `str.translate` with a mapping.
_TYPOGRAPHIC = (
    ("\u2019", "'"),
    ("\u2018", "'"),
    ("\u02bc", "'"),
    ("\u2032", "'"),
    ("\u201c", '"'),
    ("\u201d", '"'),
    ("\u201e", '"'),
    ("\u00ab", '"'),
    ("\u00bb", '"'),
    ("\u00a0", " "),
)

# Things that are not the model speaking in its own voice: fenced code, inline code, quotations and
# blockquote lines. They are blanked to spaces of the same length so that offsets stay valid.
_FENCED_CODE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]{1,300}`")
_QUOTATION = re.compile(r'"[^"\n]{1,400}"')
# A single-quoted span opens after a non-letter, so apostrophes ("can't", "users'") never open one.
_SINGLE_QUOTATION = re.compile(r"(?<![\w'])'(?=\w)[^'\n]{0,200}?(?<=[\w.!?,])'(?!\w)")
_BLOCKQUOTE = re.compile(r"(?<=\n)[ \t]*>[^\n]*")
_LEADING_MARKUP = re.compile(r"\A[\s#*_>]*")

_EN_IDIOM_VERBS = (
    r"stress|emphasi[sz]e|overstate|believe|wait|thank|lie|imagine|find|locate|remember|recall|seem|figure"
    r"|reproduce\s+(?:\w+\s+){0,2}(?:bug|issue|error|problem|crash|behaviou?r|failure)"
    r"|tell\s+you\s+how\s+(?:much|many)|agree\s+more|say\s+for\s+(?:sure|certain)"
    r"|help\s+(?:but|noticing|thinking|wondering|feeling)"
)
_EN_WONT_VERBS = (
    r"help|assist|write|provide|create|generate|produce|share|give|make|draft|engage|participate|support"
    r"|comply|answer|respond|do|continue|discuss|go\s+along|predict|speculate|guess|recommend|endorse|reveal"
    r"|disclose|pretend|impersonate|role-?play|play\s+along|complete|fulfil+|translate|tell|explain|offer"
    r"|fabricate|invent|falsify|forge|take\s+part|weigh\s+in"
    r"|be\s+(?:able|providing|helping|writing|sharing|completing|assisting|creating|generating|doing"
    r"|answering"
    r"|responding|continuing|participating|engaging|fulfill?ing|producing)"
)
_EN_NOT_ABLE = (
    r"(?:'m|\s+am|m)\s+(?:(?:really|just|simply|currently|afraid\s+i(?:'m|\s+am)?)\s+)?"
    r"(?:not\s+(?:able|allowed|permitted|authori[sz]ed|in\s+a\s+position|designed|programmed|equipped)"
    r"|unable)\s+to"
)
# The English first-person cues. The negative lookaheads drop idioms ("I can't stress enough").
_EN_CUE = (
    r"\bi(?:"
    rf"\s+(?:really\s+|simply\s+|just\s+)?(?:can'?t|cannot|can\s+not)(?!\s+(?:{_EN_IDIOM_VERBS})\b)"
    r"(?![^.!?\n]{0,60}\benough\b)"
    rf"|{_EN_NOT_ABLE}(?!\s+(?:{_EN_IDIOM_VERBS})\b)"
    r"|\s+(?:won'?t|will\s+not)\s+be\s+able\s+to"
    rf"|\s+(?:won'?t|will\s+not)\s+(?:{_EN_WONT_VERBS})\b"
    rf"|(?:'m|\s+am|m)\s+not\s+going\s+to\s+(?:{_EN_WONT_VERBS})\b"
    r"|(?:\s+must|\s+have\s+to|\s+need\s+to|'ll\s+have\s+to|\s+will\s+have\s+to"
    r"|(?:'m|\s+am)\s+going\s+to\s+have\s+to)\s+(?:respectfully\s+|politely\s+)?(?:decline|refuse|pass\s+on)"
    r"|(?:'d|\s+would)\s+(?:rather|prefer)\s+not"
    r"|\s+(?:do\s+not|don'?t)\s+think\s+i\s+(?:should|can|could|(?:'m|\s+am)\s+able\s+to)\s+"
    r"(?:help|assist|do|write|provide|share|create|generate|answer)\b"
    r"|(?:'m|\s+am|m)\s+not\s+comfortable"
    r"|\s+(?:do\s+not|don'?t)\s+have\s+(?:the\s+)?(?:ability|capability|capacity|access|means|permission"
    r"|authori[sz]ation|(?:personal\s+)?(?:opinions?|views|feelings|emotions|preferences|beliefs))"
    r"|\s+(?:do\s+not|don'?t)\s+(?:provide|give|offer|share|engage|generate|create|write|assist|help)\b"
    r"|(?:'m|\s+am|m)\s+not\s+(?:a|an|your)\s+(?:licensed\s+|qualified\s+|medical\s+|certified\s+)?"
    r"(?:doctor|physician|lawyer|attorney|solicitor|pharmacist|therapist|medical\s+professional"
    r"|financial\s+(?:advis[eo]r|planner|professional)|tax\s+(?:advis[eo]r|professional))"
    r")"
    r"|\b(?:that|this|it|which)(?:'s\s+not|\s+is\s+not|\s+isn'?t)\s+"
    r"(?:something|a\s+(?:request|task|thing|topic)|anything)\s+(?:that\s+)?i(?:'m|\s+am|'ll|\s+will)?\s+"
    r"(?:can|could|will|able|allowed|permitted|be\s+able)"
    r"|\b(?:that|this|it)(?:'s|\s+is|(?:\s+request)?\s+(?:is|falls|lies|goes))?\s+(?:outside|beyond)\s+"
    r"(?:of\s+)?"
    r"(?:my\s+(?:scope|capabilities|remit|abilities)|the\s+scope\s+of\s+what\s+i|what\s+i(?:'m|\s+am|\s+can))"
    r"|\bthis\s+(?:is\s+not|isn't|is\s+n't)\s+(?:legal|medical|financial|tax|professional)\s+advice"
    r"|\b(?:it|that|this)(?:'s\s+not|\s+is\s+not|\s+isn'?t|\s+would\s+not\s+be|\s+wouldn'?t\s+be)\s+"
    r"(?:appropriate|right|ethical|responsible|safe)\s+for\s+me\s+to"
    # No subject, as in a terse "Can't help with that, sorry."
    r"|(?:(?<![\w\s])|(?<=[.!?,;:]\s)|(?<=\n))(?:can'?t|cannot|unable\s+to)\s+(?:help|assist)\s+"
    r"(?:you\s+)?with\s+(?:that|this|it)\b"
)
_DE_CUE = (
    r"\b(?:ich\s+kann|kann\s+ich|ich\s+darf|darf\s+ich)\b[^.!?\n]{0,40}?\b(?:nicht|keine?[nmrs]?)\b"
    r"|\bich\s+bin\s+(?:leider\s+)?nicht\s+(?:in\s+der\s+lage|befugt|berechtigt)"
    r"|\b(?:es|das|dies)\s+ist\s+(?:mir\s+(?:leider\s+)?|leider\s+(?:mir\s+)?)nicht\s+m[öo]glich"
)
_FR_CUE = (
    r"\bje\s+(?:ne\s+)?(?:peux|pourrai|pourrais|saurais)\s+(?:\w+\s+)?pas\b"
    r"|\bje\s+ne\s+suis\s+(?:\w+\s+)?pas\s+(?:en\s+mesure|autoris[ée]e?|habilit[ée]e?|capable)"
    r"|\bil\s+m'est\s+impossible|\bje\s+dois\s+(?:malheureusement\s+)?refuser"
    r"|\b(?:d[ée]passe|sort\s+de)\s+"
    r"(?:ce\s+que\s+je\s+(?:peux|suis)|mes\s+(?:capacit[ée]s|comp[ée]tences))"
)
_ES_CUE = (
    r"\bno\s+(?:puedo|podr[ée]|podr[íi]a)\b|\bno\s+me\s+es\s+posible"
    r"|\bno\s+estoy\s+(?:en\s+condiciones|autorizad[oa]|capacitad[oa])|\bme\s+temo\s+que\s+no\b"
    r"|\b(?:lamento|siento)\s+no\s+poder\b|\bno\s+(?:me\s+est[áa]\s+permitido|tengo\s+permi(?:tido|so))"
)
_IT_CUE = (
    r"\bnon\s+(?:posso|potr[òo]|riesco|sono\s+in\s+grado|sono\s+autorizzat[oa]|mi\s+[èe]\s+possibile)\b"
    r"|\bmi\s+(?:dispiace|spiace)\s+non\s+poter"
)
_PT_CUE = (
    r"\bn[ãa]o\s+(?:posso|consigo|poderei|sou\s+capaz|estou\s+autorizad[oa]|me\s+[ée]\s+poss[íi]vel"
    r"|tenho\s+permiss[ãa]o)\b|\b(?:lamento|sinto\s+muito)\s+n[ãa]o\s+poder"
)
_NL_CUE = (
    r"\b(?:ik\s+kan|kan\s+ik|ik\s+mag|mag\s+ik)\b[^.!?\n]{0,40}?\b(?:niet|geen)\b"
    r"|\bik\s+ben\s+(?:helaas\s+)?niet\s+in\s+staat"
)
# Every cue above starts at a word boundary with one of these letters; saying so up front lets the
# engine skip most positions without trying each alternative (several times faster).
_OPENING_CUE = re.compile(
    rf"\b(?=[cdehijklmnstuw])(?:(?P<en>{_EN_CUE})|(?P<de>{_DE_CUE})|(?P<fr>{_FR_CUE})|(?P<es>{_ES_CUE})"
    rf"|(?P<it>{_IT_CUE})|(?P<pt>{_PT_CUE})|(?P<nl>{_NL_CUE}))"
)
# Later in an answer only a sentence (English) that itself opens by refusing a task counts: a partial.
_LATE_CUE = re.compile(
    r"(?:\A|[.!?:]\s+|\n\s*|,\s+(?:as|because|since|but|so)\s+)"
    r"(?:(?:however|unfortunately|but|sorry|note|that\s+said),?\s+)?"
    r"(?P<cue>i(?: (?:can'?t|cannot|can\s+not|won'?t\s+be\s+able\s+to|won'?t|will\s+not|couldn'?t|could\s+not"
    r"|am\s+(?:not\s+able|unable)\s+to|was\s+(?:not\s+able|unable)\s+to)|'m\s+(?:not\s+able|unable)\s+to)\s+"
    r"(?:help|assist|provide|translate|open|access|share|write|generate|create|confirm|do|give|process"
    r"|complete|include)\b)"
)
# Substrings of which `_LATE_CUE` needs one (its subject "i" is followed by one literal space or "'m");
# most answers contain none and skip the scan.
_LATE_CUE_HINTS = ("i can", "i won", "i will", "i could", "i am", "i was", "i'm")
# A sentence ends at . ! ? before a space, or at a line break (a heading, a list item).
_SENTENCE_END = re.compile(r"(?:[.!?:]\s*)?\n\s*|[.!?](?=\s)")
# Words that turn from the refusal to help, or offer the user a way to do it, in the seven languages.
_PIVOT = re.compile(
    r"\b(?:but|however|that\s+said|instead|what\s+i\s+can|here(?:'s|\s+is|\s+are)|in\s+general|generally"
    r"|though|in\s+the\s+meantime|for\s+the\s+(?:rest|second)|a\s+few\s+things|you\s+can|aber|jedoch"
    r"|hier\s+(?:sind|ist)|allgemein|sie\s+k[öo]nnen|mais|voici|cependant|en\s+g[ée]n[ée]ral|vous\s+pouvez"
    r"|pero|sin\s+embargo|aqu[íi]|en\s+general|puedes|puede\s+usted|ma|per[òo]|tuttavia|in\s+generale|puoi"
    r"|mas|por[ée]m|no\s+entanto|em\s+geral|voc[êe]\s+pode|maar|wel|hier\s+(?:zijn|is)|in\s+het\s+algemeen"
    r"|je\s+kunt|u\s+kunt)\b"
)
_SENTENCE = re.compile(r"[^.!?]+(?:[.!?]+|\Z)")
_CLAUSE_END = re.compile(r"[.!?,;:\n\u2014]|\s-\s")
_LIST_LINE = re.compile(r"[ \t]*(?:[-*\u2022]|\d{1,2}[.)])[ \t]+\S")
# A sentence after a refusal that only redirects, signs off or restates what the assistant is for.
_NON_HELP = re.compile(
    r"\b(?:anything\s+else|something\s+else|other\s+questions?|let\s+me\s+know|happy\s+to\s+help"
    r"|please\s+(?:contact|reach|consult|speak|talk|check\s+with|see|visit|email|call)"
    r"|(?:should|may\s+want\s+to|might\s+want\s+to|recommend\s+that\s+you|suggest\s+you)\s+"
    r"(?:contact|consult|speak|talk|reach|see|ask)|i(?:'m|\s+am)\s+(?:designed|here|only\s+able)"
    r"|i\s+can\s+only|i\s+can\s+(?:help|assist)\s+with|glad\s+to\s+help)\b"
)
# A sentence that explains why the assistant refuses; an explanation is not help.
_JUSTIFICATION = re.compile(
    r"\b(?:illegal|unlawful|harm(?:s|ful|ing)?|violat\w*|against\s+(?:the\s+)?(?:law|polic\w*|terms|rules)"
    r"|unethical|dangerous|mislead\w*|decepti\w*|deceiv\w*|fraud\w*|confidential|abus\w*|offen[cs]e"
    r"|criminal|terms\s+of\s+(?:service|use)|without\s+(?:their|your|the\s+owner's)\s+(?:consent|permission)"
    r"|misinformation|copyright\w*)\b"
)


@dataclass(frozen=True, slots=True)
class RefusalVerdict:
    """What `classify_refusal` found: the label, the phrase that decided it, and that phrase's language."""

    label: RefusalLabel
    cue: str | None
    language: str | None


ANSWERED = RefusalVerdict("answered", None, None)


def _blank(match: re.Match[str]) -> str:
    return " " * (match.end() - match.start())


def _own_voice(text: str) -> str:
    """The text with code, quotations and blockquotes blanked out, offsets unchanged."""
    if "```" in text:
        text = _FENCED_CODE.sub(_blank, text)
    if "`" in text:
        text = _INLINE_CODE.sub(_blank, text)
    # A JSON payload's strings are the model's own words, not quotations.
    if '"' in text and not text.startswith(("{", "[")):
        stripped = text.strip()
        whole_text_quoted = stripped.count('"') == 2 and stripped[0] == '"' and stripped[-1] == '"'
        if not whole_text_quoted:
            text = _QUOTATION.sub(_blank, text)
    if "'" in text:
        text = _SINGLE_QUOTATION.sub(_blank, text)
    if "\n" in text and ">" in text:
        text = _BLOCKQUOTE.sub(_blank, text)
    return text


def _normalise(text: str) -> str:
    if not text.isascii():
        for typographic, ascii_char in _TYPOGRAPHIC:
            if typographic in text:
                text = text.replace(typographic, ascii_char)
    return text.lower()


def _helps_after(text: str, start: int) -> bool:
    """Whether there is substantive help from `start` on: enough content, more with structure or a pivot.

    Sentences that only redirect or sign off ("please contact a lawyer", "anything else?") do not count,
    nor do those that only explain the refusal. Stops reading as soon as the answer is known.
    """
    rest = text[start:]
    has_code = "```" in rest
    help_chars = 0
    list_items = 0
    has_pivot = False
    in_offer_list = False  # a list after "I'm happy to help with:" offers other help; it is not help
    for line in rest.split("\n"):
        if (
            help_chars >= HELP_CHARS_ALONE
            or (has_pivot and help_chars >= HELP_CHARS_WITH_PIVOT)
            or ((has_code or list_items >= 2) and help_chars >= HELP_CHARS_WITH_STRUCTURE)
        ):
            return True
        if not line.strip():
            continue
        if _LIST_LINE.match(line):
            if not in_offer_list:
                list_items += 1
                help_chars += len(line.strip())
            continue
        in_offer_list = False
        for sentence in _SENTENCE.findall(line):
            if _NON_HELP.search(sentence) is not None:
                in_offer_list = sentence.rstrip().endswith(":")
                continue
            pivots = _PIVOT.search(sentence) is not None
            has_pivot = has_pivot or pivots
            if pivots or _JUSTIFICATION.search(sentence) is None:
                help_chars += len(sentence.strip())
    return (
        help_chars >= HELP_CHARS_ALONE
        or (has_pivot and help_chars >= HELP_CHARS_WITH_PIVOT)
        or ((has_code or list_items >= 2) and help_chars >= HELP_CHARS_WITH_STRUCTURE)
    )


def _cue_phrase(source: str, start: int, end: int) -> str:
    """The cue with the rest of its clause, whole words only, at most MAX_CUE_CHARS, for a score detail."""
    clause_end = _CLAUSE_END.search(source, end, start + MAX_CUE_CHARS + 1)
    stop = clause_end.start() if clause_end else start + MAX_CUE_CHARS
    phrase = source[start:stop]
    if not clause_end and stop < len(source) and not source[stop].isspace() and " " in phrase[end - start :]:
        phrase = phrase.rsplit(" ", 1)[0]
    return " ".join(phrase.split()).rstrip(" -\u2014")


def classify_refusal(text: str | None) -> RefusalVerdict:
    """Whether one answer refused, refused in part, or answered.

    None or blank text gives `answered` with no cue: there is nothing to judge, and callers that care
    about a missing side look at it before asking.
    """
    if not text:
        return ANSWERED
    # Lower-cased once so that no pattern needs IGNORECASE (much slower in `re`). Lower-casing keeps
    # offsets except for a few letters (e.g. "İ"); then cues are quoted from the lower-cased text.
    normalised = _normalise(text)
    source = text if len(normalised) == len(text) else normalised
    lead = _LEADING_MARKUP.match(normalised)
    offset = lead.end() if lead else 0
    if offset == len(normalised):
        return ANSWERED
    body = normalised[offset:]
    voice = _own_voice(body)

    for match in _OPENING_CUE.finditer(voice, 0, OPENING_SCAN_CHARS):
        if match.start() >= OPENING_CHARS:
            break
        if len(_SENTENCE_END.findall(voice, 0, match.start())) > OPENING_SENTENCES:
            break
        language = match.lastgroup
        cue = _cue_phrase(source, offset + match.start(), offset + match.end())
        label: RefusalLabel = "partial" if _helps_after(body, match.end()) else "refused"
        return RefusalVerdict(label, cue, language)

    if not any(hint in voice for hint in _LATE_CUE_HINTS):
        return ANSWERED
    for match in _LATE_CUE.finditer(voice):
        if len(voice[: match.start("cue")].strip()) >= LATE_CUE_MIN_PRECEDING_CHARS:
            cue = _cue_phrase(source, offset + match.start("cue"), offset + match.end("cue"))
            return RefusalVerdict("partial", cue, "en")
    return ANSWERED


@dataclass(frozen=True, slots=True)
class RefusalDetection:
    """What `detect_refusal` found: the label, P(refused or partial), the cue grammar's phrase and
    language (if it saw one), and the features that pushed the learned model hardest to its decision."""

    label: RefusalLabel
    refusing: float
    cue: str | None
    language: str | None
    top_features: tuple[str, ...]


def detect_refusal(text: str | None, threshold: float = 0.5) -> RefusalDetection:
    """The learned detector on one answer: refusing when P(refused) + P(partial) >= `threshold`.

    None or blank text gives `answered` with probability 0, as `classify_refusal` does.
    """
    if not text or not text.strip():
        return RefusalDetection("answered", 0.0, None, None, ())
    verdict = classify_refusal(text)
    prediction = load_model().predict(text, verdict.label, verdict.language, threshold)
    return RefusalDetection(
        prediction.label, prediction.refusing, verdict.cue, verdict.language, prediction.top_features
    )


def pairwise_refusal(primary: RefusalLabel | None, candidate: RefusalLabel | None) -> str:
    """Which side refused; a partial counts as a refusal and a missing side (None) as not refusing."""
    primary_refused = primary in ("refused", "partial")
    candidate_refused = candidate in ("refused", "partial")
    if primary_refused and candidate_refused:
        return "both"
    if candidate_refused:
        return "candidate_only_refused"
    if primary_refused:
        return "primary_only_refused"
    return "neither"


def _first_output(pair: PairRecord, side: SideName) -> Mapping[str, Any]:
    """Output 0 of a pair/v2 side (empty for a v1 record, a failed side or one cut at the recording
    limit)."""
    part = side_of(pair, side)
    if part.get("error") is not None or is_truncated(part):
        return {}
    outputs = side_outputs(part)
    return outputs[0] if outputs else {}


class RefusalConfig(ScorerConfig):
    """`scoring.scorers.refusal`: which detector decides, and where the learned one draws the line.

    `threshold` is P(refused or partial) from which an answer counts as a refusal; answers within
    `uncertain_band` of it raise the review reason `refusal_uncertain`, so that people label exactly
    the answers the detector is least sure of. Both apply to the learned and judge detectors. With
    `detector: judge`, the answers inside the band are also put to the judge endpoint set under `judge`
    (the pairwise judge's keys: base_url, model, pacing, budget, prices), whose label then decides.
    """

    detector: Literal["learned", "cues", "judge"] = "learned"
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    uncertain_band: float = Field(default=0.15, ge=0.0, lt=0.5)
    judge: JudgeConfig | None = None

    @model_validator(mode="after")
    def _band_inside_unit_interval(self) -> RefusalConfig:
        if self.threshold - self.uncertain_band <= 0.0 or self.threshold + self.uncertain_band >= 1.0:
            raise ValueError(
                f"uncertain_band {self.uncertain_band} around threshold {self.threshold} leaves (0, 1)"
            )
        if self.detector == "judge" and self.judge is None:
            raise ValueError("detector: judge needs a judge section (base_url and model at least)")
        return self


class RefusalScorer:
    """Refusal errors: per side refused / partial / answered, and the pairwise outcome that matters —
    a candidate refusing what the primary answered (`candidate_only_refused`), which also raises the
    review reason `candidate_refused`. With the learned detector (the default) a side's `value` is
    P(refused or partial), and an answer near the threshold raises `refusal_uncertain`."""

    name: ClassVar[str] = "refusal"
    outcomes: ClassVar[frozenset[str]] = frozenset({"refused", "partial", "answered", *PAIRWISE_OUTCOMES})
    config_model: ClassVar[type[RefusalConfig]] = RefusalConfig
    review_reasons: ClassVar[frozenset[str]] = frozenset({"candidate_refused", "refusal_uncertain"})

    def __init__(
        self,
        config: Mapping[str, Any] | RefusalConfig | None = None,
        *,
        metrics: ScoringMetrics | None = None,
        segments: frozenset[str] = frozenset(),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """`environ` (default: the process environment) is where the judge's API key is read from, once."""
        self.config = validate_config(RefusalConfig, self.name, config)
        if self.config.detector != "cues":
            load_model()  # a missing or altered weights file fails at start-up, not on the first pair
        self.judge: RefusalJudge | None = None
        if self.config.judge is not None and self.config.detector == "judge":
            self.judge = RefusalJudge(
                self.config.judge,
                metrics if metrics is not None else ScoringMetrics(CollectorRegistry()),
                config_key=f"{config_key(self.name)}.judge",
                environ=environ,
            )

    async def aclose(self) -> None:
        """Close the judge's HTTP connections (with `detector: judge`)."""
        if self.judge is not None:
            await self.judge.aclose()

    async def score(self, pair: PairRecord) -> list[Score]:
        scores: list[Score] = []
        labels: dict[SideName, RefusalLabel | None] = {}
        for side in SIDES:
            label, value, detail = self._side_verdict(pair, side)
            if self.judge is not None and label is not None and detail.get("uncertain"):
                label, detail = await self._judged(self.judge, pair, side, label, detail)
            labels[side] = label
            if label is not None:
                scores.append(Score(self.name, side, label, value, detail))
        if labels["primary"] is not None and labels["candidate"] is not None:
            outcome = pairwise_refusal(labels["primary"], labels["candidate"])
            detail = {"primary": labels["primary"], "candidate": labels["candidate"]}
            scores.append(Score(self.name, "pair", outcome, None, detail))
        return scores

    def _side_verdict(
        self, pair: PairRecord, side: SideName
    ) -> tuple[RefusalLabel | None, float, dict[str, Any]]:
        """One side's label: the API's own `refusal` field (OpenAI structured outputs, the Responses
        API's refusal parts) says refused; a tool call is an answer; otherwise the text decides."""
        first = _first_output(pair, side)
        if first.get("refusal"):
            return "refused", 1.0, {"cue": "refusal field"}
        text = side_text(pair, side)
        if first.get("tool_calls") and not (text or "").strip():
            return "answered", 0.0, {"tool_calls": len(first["tool_calls"])}
        if not text:
            return None, 0.0, {}
        if self.config.detector != "cues":
            return self._learned_verdict(text)
        verdict = classify_refusal(text)
        detail = {"cue": verdict.cue, "language": verdict.language} if verdict.cue else {}
        return verdict.label, 0.0 if verdict.label == "answered" else 1.0, detail

    def _learned_verdict(self, text: str) -> tuple[RefusalLabel, float, dict[str, Any]]:
        detection = detect_refusal(text, self.config.threshold)
        detail: dict[str, Any] = {"detector": "learned", "features": list(detection.top_features)}
        if detection.cue:
            detail.update(cue=detection.cue, language=detection.language)
        if abs(detection.refusing - self.config.threshold) < self.config.uncertain_band:
            detail["uncertain"] = True
        return detection.label, round(detection.refusing, 4), detail

    async def _judged(
        self,
        judge: RefusalJudge,
        pair: PairRecord,
        side: SideName,
        label: RefusalLabel,
        detail: dict[str, Any],
    ) -> tuple[RefusalLabel, dict[str, Any]]:
        """The judge's label for an uncertain answer; the learned label stands when the budget is spent
        or the judge fails, and `detail["judge"]` says which."""
        detail = detail | {"learned": label}
        if not judge.budget_allows():
            return label, detail | {"judge": "budget_exhausted"}
        try:
            judgement = await judge.classify(pair.get("request") or {}, side_text(pair, side) or "")
        except JudgeError as exc:  # MalformedVerdict included
            log.warning("refusal judge gave no label, the learned detector's stands: %s", exc)
            return label, detail | {"judge": "error"}
        tokens = {"prompt": judgement.prompt_tokens, "completion": judgement.completion_tokens}
        return judgement.label, detail | {
            "detector": "judge",
            "judge": judgement.label,
            "judge_model": judge.config.model,
            "judge_reason": judgement.reason,
            "tokens": tokens,
        }

    def reasons_for_review(self, scores: list[Score]) -> list[str]:
        """`candidate_refused` when the candidate refused what the primary answered; `refusal_uncertain`
        when the learned detector was unsure of either side."""
        mine = [s for s in scores if s.scorer == self.name]
        reasons = []
        if any(s.side == "pair" and s.outcome == "candidate_only_refused" for s in mine):
            reasons.append("candidate_refused")
        if any(s.side != "pair" and s.detail.get("uncertain") for s in mine):
            reasons.append("refusal_uncertain")
        return reasons
