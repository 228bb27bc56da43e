"""The label record: what the review page appends is what `read_labels` (and judge calibrate) reads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shadowtap.labels import LABEL_SCHEMA, Label, LabelError, append_label, read_labels

pytestmark = pytest.mark.unit


def a_label(**changes: object) -> Label:
    label: Label = {
        "schema": LABEL_SCHEMA,
        "pair_id": "pair-1",
        "reviewer": "ana",
        "ts": "2026-12-02T15:00:00.000Z",
        "shown": "candidate",
        "better": "primary",
        "refused": {"primary": False, "candidate": True},
        "format_ok": {"primary": True, "candidate": None},
        "note": None,
        "reason": "refusal_disagreement",
    }
    label.update(changes)  # type: ignore[typeddict-item]
    return label


def test_appended_labels_read_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    append_label(path, a_label())
    append_label(path, a_label(pair_id="pair-2", better="both_bad", note="both wrong"))
    labels = read_labels(path)
    assert [(x["pair_id"], x["better"], x["note"]) for x in labels] == [
        ("pair-1", "primary", None),
        ("pair-2", "both_bad", "both wrong"),
    ]
    assert labels[0]["refused"] == {"primary": False, "candidate": True}


def test_a_bad_line_is_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    append_label(path, a_label())
    bad = dict(a_label(), better="A")
    with path.open("a") as handle:
        handle.write(json.dumps(bad) + "\n")
    with pytest.raises(LabelError, match=r"labels\.jsonl:2: .*better"):
        read_labels(path)


def test_a_line_that_is_not_json_is_named(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text("{nope\n")
    with pytest.raises(LabelError, match=r"labels\.jsonl:1: not JSON"):
        read_labels(path)


def test_an_invalid_label_is_not_appended(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    with pytest.raises(LabelError, match="refused"):
        append_label(path, a_label(refused={"primary": "yes", "candidate": None}))
    assert not path.exists()
