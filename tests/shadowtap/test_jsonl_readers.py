"""A JSONL file read while its writer is mid-line: the half line is not yet written, not malformed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from shadowtap.config import load_settings
from shadowtap.records import jsonl_lines
from shadowtap.report.model import build_report
from shadowtap.scorers.worker import score_file
from shadowtap.sentinel.sources import iter_jsonl
from shadowtap.testing.pairs import make_pair

pytestmark = pytest.mark.unit


def _file_being_written(path: Path, whole: int) -> list[str]:
    """`whole` complete pair lines, then the first half of one more, as a reader can catch a sink."""
    pairs = [make_pair(pair_id=f"p-{i}") for i in range(whole + 1)]
    lines = [json.dumps(p) for p in pairs]
    path.write_text("".join(line + "\n" for line in lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    return [p["id"] for p in pairs[:-1]]


def test_complete_lines_are_read_and_a_torn_last_line_is_left_for_later() -> None:
    data = b'{"a": 1}\n\n{"b": 2}\n{"c": '

    assert list(jsonl_lines(io.BytesIO(data))) == [(1, b'{"a": 1}\n'), (3, b'{"b": 2}\n')]
    assert list(jsonl_lines(io.BytesIO(data + b"3}\n")))[-1] == (4, b'{"c": 3}\n')


def test_offline_scoring_of_a_file_being_written_scores_the_whole_lines_and_flags_none(
    tmp_path: Path,
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    ids = _file_being_written(pairs, whole=3)

    summary = score_file(load_settings(environ={}), pairs, tmp_path / "scores.jsonl", None)

    assert summary["pairs"] == len(ids)
    assert summary["invalid"] == []


def test_the_report_and_the_sentinel_do_not_count_a_torn_last_line_as_invalid(tmp_path: Path) -> None:
    ids = _file_being_written(tmp_path / "pairs.jsonl", whole=2)

    assert build_report(tmp_path).invalid_lines == 0
    assert [record["id"] for _, record in iter_jsonl(tmp_path / "pairs.jsonl") if record] == ids
