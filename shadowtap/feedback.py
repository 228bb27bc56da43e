"""Production signals on the primary's answers: the `shadowtap.feedback/v1` record.

Users' thumbs, escalations and abandonments arrive at the proxy's `POST /shadowtap/v1/feedback`; retries
are seen by the proxy itself (`signal: "retry"`). Each names the answer by the response id the client got
and, when the request was mirrored, the pair id, so a report can ask how the candidate did on the pairs
users disliked.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypedDict, cast

import jsonschema

from shadowtap.errors import ShadowtapError
from shadowtap.records import jsonl_lines, schema

__all__ = [
    "FEEDBACK_SCHEMA",
    "RETRY_SIGNAL",
    "Feedback",
    "FeedbackFileError",
    "read_feedback",
    "validate_feedback",
]

FEEDBACK_SCHEMA = "shadowtap.feedback/v1"
# The signal of a retry the proxy detected (never one a client posts).
RETRY_SIGNAL = "retry"


class Feedback(TypedDict):
    """`shadowtap.feedback/v1`: one signal on the primary's answer to one request."""

    schema: str
    id: str
    ts: str
    response_id: str | None
    pair_id: str | None
    signal: str
    value: float | None
    comment: str | None
    segment: str | None  # None: the proxy no longer (or never) knew the exchange
    source: Literal["client", "proxy"]


class FeedbackFileError(ShadowtapError, ValueError):
    """A feedback file holds a line that is not a valid record; the message names file and line."""


@cache
def _validator() -> jsonschema.protocols.Validator:
    doc = schema("feedback.v1")
    cls = jsonschema.validators.validator_for(doc)
    return cls(doc, format_checker=cls.FORMAT_CHECKER)


def validate_feedback(record: Any) -> Feedback:
    """The record as `Feedback`; raises `jsonschema.ValidationError` when it is not one."""
    _validator().validate(record)
    return cast(Feedback, record)


def read_feedback(path: str | os.PathLike[str]) -> list[Feedback]:
    """Every feedback record of a JSONL file (none when it does not exist); a bad line is a
    `FeedbackFileError` naming file and line."""
    file = Path(path)
    if not file.exists():
        return []
    records: list[Feedback] = []
    with file.open("rb") as handle:
        for number, line in jsonl_lines(handle):
            try:
                records.append(validate_feedback(json.loads(line)))
            except (ValueError, jsonschema.ValidationError) as exc:
                problem = exc.message if isinstance(exc, jsonschema.ValidationError) else str(exc)
                raise FeedbackFileError(
                    f"{file}:{number}: not a {FEEDBACK_SCHEMA} record: {problem}"
                ) from None
    return records
