"""The record contracts shared by the proxy, the scorers and the sentinel.

`shadowtap.pair/v2` and `shadowtap.score/v1` are the wire formats on Kafka and in the JSONL files; their
JSON Schemas live in `shadowtap/schemas/` and are what tests validate against. Readers accept pair/v1 too:
`side_outputs` and `pair_api` give a v1 record's outputs and API as v2 names them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any, Literal, NotRequired, TypedDict

import jsonschema

PAIR_SCHEMA = "shadowtap.pair/v2"
PAIR_SCHEMA_V1 = "shadowtap.pair/v1"
SCORE_SCHEMA = "shadowtap.score/v1"
# Each pair record version readers accept, and the bundled JSON Schema that checks it.
PAIR_SCHEMA_FILES = {PAIR_SCHEMA_V1: "pair.v1", PAIR_SCHEMA: "pair.v2"}

Api = Literal["chat", "completions", "responses"]
APIS: tuple[Api, ...] = ("chat", "completions", "responses")

Side = Literal["primary", "candidate", "pair"]
SideName = Literal["primary", "candidate"]
SIDES: tuple[SideName, SideName] = ("primary", "candidate")


class SideError(TypedDict):
    """Why a side has no (complete) answer: `kind` is a small closed set (timeout, http_5xx, ...)."""

    kind: str
    message: str


class ToolCall(TypedDict):
    """One tool call of an output; `arguments` exactly as the model sent it (a JSON string, unparsed)."""

    id: str | None
    name: str | None
    arguments: str


class Output(TypedDict):
    """One choice of an answer (chat and completions: `choices[].index`; Responses API: the one answer)."""

    index: int
    text: str | None
    tool_calls: list[ToolCall]
    refusal: str | None  # the API's refusal field, not a refusal found in the text
    reasoning: str | None  # vLLM's `reasoning` / `reasoning_content`, or the Responses reasoning summary
    finish_reason: str | None  # Responses API: the response's status


class SideRecord(TypedDict):
    """One upstream's answer in a pair record (`primary` or `candidate`). pair/v2 writes every key; the
    NotRequired ones are absent from v1 records, whose `text` and `finish_reason` are their one output."""

    model: str | None
    response_id: NotRequired[str | None]  # the `id` the upstream returned
    status: int | None
    latency_ms: float | None
    ttft_ms: float | None  # to the first generated token of any kind: text, tool call, reasoning, refusal
    text: str | None  # output 0's, for v1 readers
    finish_reason: str | None  # output 0's, for v1 readers
    outputs: NotRequired[list[Output]]
    usage: dict[str, Any] | None
    error: SideError | None
    truncated: NotRequired[bool]  # the recorded body hit shadow.max_record_bytes


class Masked(TypedDict):
    """How many values masking changed, in the request and in each side's answer."""

    request: int
    primary: int
    candidate: int


class PairRecord(TypedDict):
    """One mirrored request with both answers: `shadowtap.pair/v2` (v1 lacks `api` and `masked`).
    Later versions only add keys."""

    schema: str
    id: str
    ts: str
    route: str
    api: NotRequired[Api]
    stream: NotRequired[bool]
    request: dict[str, Any]
    tags: dict[str, str]
    masked: NotRequired[Masked]
    primary: SideRecord
    candidate: SideRecord


class ScoreRecord(TypedDict):
    """`shadowtap.score/v1`: one scorer's verdict on one side of a pair, as written and sent."""

    schema: str
    pair_id: str
    scorer: str
    side: Side
    outcome: str
    value: float | None
    detail: dict[str, Any]
    tags: dict[str, str]
    ts: str
    choice: NotRequired[int]  # the output index the verdict is on, when not 0


class ReviewItem(TypedDict):
    """A pair queued for a human, with why and what the scorers said of it."""

    pair_id: str
    reason: str
    tags: dict[str, str]
    pair: PairRecord
    scores: list[ScoreRecord]


def side_of(pair: PairRecord, side: SideName) -> SideRecord:
    """One side of a pair, by name."""
    return pair["primary"] if side == "primary" else pair["candidate"]


def is_truncated(side: SideRecord) -> bool:
    """Whether the recorded answer was cut at `shadow.max_record_bytes`: the record holds only its start
    (a stream's first events; a plain body's first bytes, unparsed), so no scorer judges its content."""
    return side.get("truncated") is True


def api_of_route(route: str) -> Api:
    """The OpenAI API a route speaks; a route none of the three names is read as chat completions."""
    path = route.rstrip("/")
    if path.endswith("/responses"):
        return "responses"
    if path.endswith("/completions") and not path.endswith("/chat/completions"):
        return "completions"
    return "chat"


# `tags.comparison` of a noise-floor pair: the primary's answer against a second answer of the primary to
# the same request (`shadow.noise_floor_rate`); a pair without the tag compares the candidate.
NOISE_FLOOR = "noise_floor"


def is_noise_floor(pair: Mapping[str, Any]) -> bool:
    """Whether a pair is a noise-floor (primary against primary) pair, not a candidate's."""
    tags = pair.get("tags")
    return isinstance(tags, dict) and tags.get("comparison") == NOISE_FLOOR


def pair_api(pair: PairRecord) -> Api:
    """The API of a pair: as v2 records it, or (v1) as its route names it."""
    return pair.get("api") or api_of_route(pair["route"])


def side_outputs(side: SideRecord) -> list[Output]:
    """A side's outputs, one per choice: v2's `outputs`, or a v1 side's one answer from its `text` and
    `finish_reason` (none when it has no text: a failed call)."""
    outputs = side.get("outputs")
    if outputs is not None:
        return outputs
    if side.get("text") is None:
        return []
    return [
        {
            "index": 0,
            "text": side["text"],
            "tool_calls": [],
            "refusal": None,
            "reasoning": None,
            "finish_reason": side.get("finish_reason"),
        }
    ]


def utc_now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc3339(epoch_s: float) -> str:
    """A Unix time as an RFC 3339 UTC timestamp with milliseconds, like `utc_now_rfc3339`."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@cache
def schema(name: str) -> dict[str, Any]:
    """Load a bundled JSON Schema: `pair.v1`, `pair.v2` or `score.v1`."""
    text = resources.files("shadowtap").joinpath("schemas", f"{name}.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    doc = schema(name)
    cls = jsonschema.validators.validator_for(doc)
    return cls(doc, format_checker=cls.FORMAT_CHECKER)


def validate_pair(record: Any) -> None:
    """Raise `jsonschema.ValidationError` when `record` is not a valid pair record of a version readers
    accept: checked against the schema its own `schema` field names (v2's when it names none known)."""
    version = record.get("schema") if isinstance(record, dict) else None
    name = PAIR_SCHEMA_FILES.get(version, "pair.v2") if isinstance(version, str) else "pair.v2"
    _validator(name).validate(record)


def validate_score(record: Any) -> None:
    """Raise `jsonschema.ValidationError` when `record` is not a valid score record."""
    _validator("score.v1").validate(record)


@dataclass(frozen=True, slots=True)
class Score:
    """One scorer's verdict on one side of a pair, or on the pair as a whole."""

    scorer: str
    side: Side
    outcome: str
    value: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    choice: int = 0  # the output (choice) index the verdict is on

    def to_record(self, pair: PairRecord) -> ScoreRecord:
        record: ScoreRecord = {
            "schema": SCORE_SCHEMA,
            "pair_id": pair["id"],
            "scorer": self.scorer,
            "side": self.side,
            "outcome": self.outcome,
            "value": self.value,
            "detail": self.detail,
            "tags": dict(pair.get("tags") or {}),
            "ts": utc_now_rfc3339(),
        }
        if self.choice:
            record["choice"] = self.choice
        return record


def score_key(record: ScoreRecord) -> str:
    """The identity of a score record: a re-delivered pair yields the same keys, so nothing double-counts.
    A verdict on choice k > 0 has its own key."""
    key = f"{record['pair_id']}/{record['scorer']}/{record['side']}"
    choice = record.get("choice")
    return f"{key}/{choice}" if choice else key


def jsonl_lines(handle: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for each complete, non-blank line of a JSONL file that may still be appended
    to. A last line without its newline is a record the writer has not finished, not a malformed one: it
    is left out, and read once it is whole."""
    for number, line in enumerate(handle, 1):
        if not line.endswith(b"\n"):
            return
        if line.strip():
            yield number, line
