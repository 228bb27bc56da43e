"""The spill file: records a sink could not deliver yet, kept on disk, oldest first, within a size bound.

A delivered record is blanked in place, never rewritten, so a process that dies at any step leaves every
undelivered record in the file; the next process that opens the file delivers them first.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["MAX_READ_BYTES", "SpillFile"]

# The spill file is the Kafka sink's: its messages go to the sink's log.
log = logging.getLogger("shadowtap.sink.kafka")

# At most this many bytes of records are read back per `oldest()` call.
MAX_READ_BYTES = 8 * 1024 * 1024


def _is_record(line: bytes) -> bool:
    """False for blank lines and for records blanked out once delivered."""
    return line[:1] not in (b" ", b"\n", b"")


class SpillFile:
    """Records the broker has not acknowledged: JSON lines, oldest first, at most `max_bytes` on disk.

    A delivered record is blanked in place (overwritten with spaces); the file is emptied once everything
    in it is delivered, and compacted (temp file, renamed over) only when blanked records take the room
    new ones need. So no step rewrites an undelivered record in place: if the process dies at any point,
    each one is still in the file, and at worst a record delivered just before is delivered again.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = 0  # bytes in the file, blanked records included
        self.pending_bytes = 0  # bytes of undelivered records
        self.offset = 0  # where the oldest undelivered record starts
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        first: int | None = None
        pos = 0
        with self.path.open("rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    log.warning(
                        "%s ends with a partly written record (%d bytes); cutting it off",
                        self.path,
                        len(line),
                    )
                    os.truncate(self.path, pos)
                    break
                if _is_record(line):
                    self.pending_bytes += len(line)
                    if first is None:
                        first = pos
                pos += len(line)
        self.size = pos
        self.offset = pos if first is None else first
        if self.pending_bytes == 0 and self.size:
            self._empty()

    def append(self, lines: list[bytes]) -> int:
        """Append the records that fit; returns how many were kept."""
        need = sum(len(line) + 1 for line in lines)
        if self.size + need > self.max_bytes and self.pending_bytes < self.size:
            self._compact()
        room = self.max_bytes - self.size
        kept: list[bytes] = []
        for line in lines:
            if len(line) + 1 <= room:
                kept.append(line + b"\n")
                room -= len(line) + 1
        if kept:
            data = b"".join(kept)
            with self.path.open("ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self.size += len(data)
            self.pending_bytes += len(data)
        return len(kept)

    def oldest(self, max_records: int, max_bytes: int = MAX_READ_BYTES) -> list[tuple[int, bytes]]:
        """Up to `max_records` undelivered records as (position, line), oldest first."""
        entries: list[tuple[int, bytes]] = []
        if not self.pending_bytes:
            return entries
        total = 0
        with self.path.open("rb") as f:
            f.seek(self.offset)
            pos = self.offset
            for line in f:
                if _is_record(line):
                    entries.append((pos, line[:-1]))
                    total += len(line)
                    if len(entries) >= max_records or total >= max_bytes:
                        break
                pos += len(line)
        return entries

    def discard(self, entries: list[tuple[int, bytes]]) -> None:
        """Blank out records that were delivered (or can never be)."""
        if not entries:
            return
        runs: list[tuple[int, bytearray]] = []
        for pos, line in sorted(entries):
            if runs and runs[-1][0] + len(runs[-1][1]) == pos:
                runs[-1][1].extend(b" " * len(line) + b"\n")
            else:
                runs.append((pos, bytearray(b" " * len(line) + b"\n")))
        with self.path.open("r+b") as f:
            for pos, blank in runs:
                f.seek(pos)
                f.write(blank)
            f.flush()
            os.fsync(f.fileno())
        self.pending_bytes -= sum(len(line) + 1 for _, line in entries)
        if self.pending_bytes <= 0:
            self._empty()
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            for line in f:
                if _is_record(line):
                    break
                self.offset += len(line)

    def _empty(self) -> None:
        os.truncate(self.path, 0)
        self.size = self.pending_bytes = self.offset = 0

    def _compact(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        size = 0
        with self.path.open("rb") as src, tmp.open("wb") as dst:
            src.seek(self.offset)
            for line in src:
                if _is_record(line):
                    dst.write(line)
                    size += len(line)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.size = self.pending_bytes = size
        self.offset = 0
