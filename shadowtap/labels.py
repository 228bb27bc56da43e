"""Human labels on pairs: the `shadowtap.label/v1` record the review page writes to `labels.jsonl`.

A reviewer sees a pair blind, its sides as A and B in a random order; `shown` records which side was A,
and every verdict in the record is already unblinded to primary/candidate. `judge calibrate` and the
refusal detector's evaluation read these records.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypedDict, cast

import jsonschema

from shadowtap.errors import ShadowtapError
from shadowtap.records import SideName, jsonl_lines, schema

__all__ = [
    "BETTER",
    "LABEL_SCHEMA",
    "Better",
    "Label",
    "LabelError",
    "PerSide",
    "append_label",
    "read_labels",
    "validate_label",
]

LABEL_SCHEMA = "shadowtap.label/v1"

Better = Literal["primary", "candidate", "tie", "both_bad"]
BETTER: tuple[Better, ...] = ("primary", "candidate", "tie", "both_bad")


class PerSide(TypedDict):
    """One yes/no verdict for each side; null where the reviewer did not judge it."""

    primary: bool | None
    candidate: bool | None


class Label(TypedDict):
    """`shadowtap.label/v1`: one reviewer's verdict on one pair."""

    schema: str
    pair_id: str
    reviewer: str
    ts: str
    shown: SideName  # the side shown as A
    better: Better
    refused: PerSide
    format_ok: PerSide
    note: str | None
    reason: str  # why the pair was queued: a review reason, thumbs_down or calibration


class LabelError(ShadowtapError, ValueError):
    """A labels file holds a line that is not a valid label record; the message names file and line."""


@cache
def _validator() -> jsonschema.protocols.Validator:
    doc = schema("label.v1")
    cls = jsonschema.validators.validator_for(doc)
    return cls(doc, format_checker=cls.FORMAT_CHECKER)


def validate_label(record: Any) -> Label:
    """The record as a `Label`; raises `jsonschema.ValidationError` when it is not one."""
    _validator().validate(record)
    return cast(Label, record)


def _problem(exc: jsonschema.ValidationError) -> str:
    where = "/".join(str(p) for p in exc.absolute_path)
    return f"{where}: {exc.message}" if where else exc.message


def read_labels(path: str | os.PathLike[str]) -> list[Label]:
    """Every label in a JSONL file, in file order. A line that is not JSON or not a valid label is a
    `LabelError` naming the file and the line; an unfinished last line (still being written) is left out."""
    file = Path(path)
    labels: list[Label] = []
    with file.open("rb") as handle:
        for number, line in jsonl_lines(handle):
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise LabelError(f"{file}:{number}: not JSON ({exc})") from None
            try:
                labels.append(validate_label(record))
            except jsonschema.ValidationError as exc:
                raise LabelError(f"{file}:{number}: not a {LABEL_SCHEMA} record: {_problem(exc)}") from None
    return labels


def append_label(path: str | os.PathLike[str], label: Label) -> None:
    """Validate one label and append it as one line (one write, so concurrent readers see whole lines)."""
    try:
        validate_label(label)
    except jsonschema.ValidationError as exc:
        raise LabelError(f"not a {LABEL_SCHEMA} record: {_problem(exc)}") from None
    line = json.dumps(label, ensure_ascii=False, separators=(",", ":")) + "\n"
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("a", encoding="utf-8") as handle:
        handle.write(line)
