"""The spill file: what Kafka has not acknowledged stays on disk, oldest first, within its size bound."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shadowtap.proxy.spill import SpillFile

pytestmark = pytest.mark.unit


def records(start: int, stop: int) -> list[bytes]:
    return [
        json.dumps({"id": str(n), "text": "Your invoice for March."}).encode() for n in range(start, stop)
    ]


def pending(spill: SpillFile) -> list[bytes]:
    return [line for _, line in spill.oldest(max_records=10_000)]


def test_records_come_back_oldest_first_across_appends(tmp_path: Path):
    spill = SpillFile(tmp_path / "spill.jsonl", max_bytes=100_000)
    assert spill.append(records(0, 3)) == 3
    assert spill.append(records(3, 5)) == 2
    assert pending(spill) == records(0, 5)
    assert [line for _, line in spill.oldest(max_records=2)] == records(0, 2)
    assert spill.pending_bytes == sum(len(line) + 1 for line in records(0, 5))


def test_delivered_records_are_not_read_back_and_an_all_delivered_file_is_emptied(tmp_path: Path):
    path = tmp_path / "spill.jsonl"
    spill = SpillFile(path, max_bytes=100_000)
    spill.append(records(0, 6))
    oldest = spill.oldest(max_records=3)
    spill.discard(oldest[:2])  # 0 and 1 delivered, 2 failed
    assert pending(spill) == records(2, 6)
    spill.discard(spill.oldest(max_records=100))
    assert pending(spill) == []
    assert spill.pending_bytes == 0
    assert path.stat().st_size == 0


def test_a_full_spill_file_keeps_what_fits_and_says_how_many_it_kept(tmp_path: Path):
    path = tmp_path / "spill.jsonl"
    line_size = len(records(0, 1)[0]) + 1
    spill = SpillFile(path, max_bytes=line_size * 3 + line_size // 2)
    assert spill.append(records(0, 2)) == 2
    assert spill.append(records(2, 5)) == 1  # room for one more: the other two are not kept
    assert spill.append(records(5, 6)) == 0
    assert pending(spill) == records(0, 3)
    assert path.stat().st_size <= spill.max_bytes


def test_room_taken_by_delivered_records_is_reclaimed_for_new_ones(tmp_path: Path):
    path = tmp_path / "spill.jsonl"
    line_size = len(records(0, 1)[0]) + 1
    spill = SpillFile(path, max_bytes=line_size * 4)
    assert spill.append(records(0, 4)) == 4
    spill.discard(spill.oldest(max_records=2))  # 0 and 1 delivered: their bytes are blanks now
    assert spill.append(records(4, 6)) == 2
    assert pending(spill) == [*records(2, 4), *records(4, 6)]
    assert path.stat().st_size <= spill.max_bytes


def test_undelivered_records_survive_a_reopen_in_order(tmp_path: Path):
    path = tmp_path / "spill.jsonl"
    spill = SpillFile(path, max_bytes=100_000)
    spill.append(records(0, 5))
    oldest = spill.oldest(max_records=5)
    spill.discard([oldest[0], oldest[3]])

    reopened = SpillFile(path, max_bytes=100_000)  # the next process
    assert pending(reopened) == [*records(1, 3), *records(4, 5)]
    assert reopened.pending_bytes == spill.pending_bytes
    assert reopened.append(records(5, 6)) == 1
    assert pending(reopened) == [*records(1, 3), *records(4, 6)]


def test_spill_file_keeps_undelivered_records_across_a_crash(tmp_path: Path):
    path = tmp_path / "spill.jsonl"
    spill = SpillFile(path, max_bytes=10_000)
    lines = [json.dumps({"id": str(n)}).encode() for n in range(10)]
    assert spill.append(lines) == 10
    oldest = spill.oldest(max_records=4)
    assert [line for _, line in oldest] == lines[:4]
    spill.discard([oldest[0], oldest[2]])  # delivered; 1 and 3 failed and stay
    with path.open("ab") as f:
        f.write(b'{"id": "half-writ')  # the process died in the middle of an append

    reopened = SpillFile(path, max_bytes=10_000)
    remaining = [line for _, line in reopened.oldest(max_records=100)]
    assert remaining == [lines[1], *lines[3:]]
    assert reopened.pending_bytes == sum(len(line) + 1 for line in remaining)

    # Room taken by delivered records is reclaimed when new ones need it.
    full = SpillFile(path, max_bytes=reopened.size + 10)
    assert full.append([b'{"id": "new"}']) == 1
    assert [line for _, line in full.oldest(max_records=100)] == [*remaining, b'{"id": "new"}']
    full.discard(full.oldest(max_records=100))
    assert path.stat().st_size == 0 and full.pending_bytes == 0


def test_a_spill_file_left_with_only_delivered_records_starts_empty(tmp_path: Path):
    path = tmp_path / "spill.jsonl"
    path.write_bytes(b"   \n      \n")  # two records, both delivered before the process stopped
    spill = SpillFile(path, max_bytes=1_000)
    assert pending(spill) == []
    assert path.stat().st_size == 0
