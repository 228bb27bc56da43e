"""The record contracts shared by the proxy, the scorers and the sentinel.

`shadowtap.pair/v1` and `shadowtap.score/v1` are the wire formats on Kafka and in the JSONL files; their
JSON Schemas live in `shadowtap/schemas/` and are what tests validate against.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any, Literal, NotRequired, TypedDict

import jsonschema

PAIR_SCHEMA = "shadowtap.pair/v1"
SCORE_SCHEMA = "shadowtap.score/v1"

Side = Literal["primary", "candidate", "pair"]
SideName = Literal["primary", "candidate"]
SIDES: tuple[SideName, SideName] = ("primary", "candidate")


class SideError(TypedDict):
    """Why a side has no (complete) answer: `kind` is a small closed set (timeout, http_5xx, ...)."""

    kind: str
    message: str


class SideRecord(TypedDict):
    """One upstream's answer in a pair record (`primary` or `candidate`)."""

    model: str | None
    status: int | None
    latency_ms: float | None
    ttft_ms: float | None
    text: str | None
    finish_reason: str | None
    usage: dict[str, Any] | None
    error: SideError | None
    truncated: NotRequired[bool]  # the recorded body hit shadow.max_record_bytes (pair/v2)


class PairRecord(TypedDict):
    """`shadowtap.pair/v1`: one mirrored request with both answers. Later versions only add keys."""

    schema: str
    id: str
    ts: str
    route: str
    stream: NotRequired[bool]
    request: dict[str, Any]
    tags: dict[str, str]
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


def utc_now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc3339(epoch_s: float) -> str:
    """A Unix time as an RFC 3339 UTC timestamp with milliseconds, like `utc_now_rfc3339`."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@cache
def schema(name: str) -> dict[str, Any]:
    """Load a bundled JSON Schema: `pair.v1` or `score.v1`."""
    text = resources.files("shadowtap").joinpath("schemas", f"{name}.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    doc = schema(name)
    cls = jsonschema.validators.validator_for(doc)
    return cls(doc, format_checker=cls.FORMAT_CHECKER)


def validate_pair(record: Any) -> None:
    """Raise `jsonschema.ValidationError` when `record` is not a valid pair record."""
    _validator("pair.v1").validate(record)


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

    def to_record(self, pair: PairRecord) -> ScoreRecord:
        return {
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


def score_key(record: ScoreRecord) -> str:
    """The identity of a score record: a re-delivered pair yields the same keys, so nothing double-counts."""
    return f"{record['pair_id']}/{record['scorer']}/{record['side']}"


def jsonl_lines(handle: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for each complete, non-blank line of a JSONL file that may still be appended
    to. A last line without its newline is a record the writer has not finished, not a malformed one: it
    is left out, and read once it is whole."""
    for number, line in enumerate(handle, 1):
        if not line.endswith(b"\n"):
            return
        if line.strip():
            yield number, line
