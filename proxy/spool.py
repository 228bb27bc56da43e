"""Large bytes between the proxy and its offload worker, as files in shared memory (`/dev/shm`).

Through the executor's pipe, a body of megabytes is copied whole into fresh memory in the proxy's own
threads — pickled by the one that sends, unpickled by the one that receives — each copy holding the GIL
for as long as it takes (about 4 ms for 5 MB), so the event loop waits that long. Through a file, the
kernel copies a body in, in pieces, with the GIL released (the proxy calls these functions from a helper
thread), and the proxy maps what the worker wrote without copying it: the kernel moves those bytes on to
a socket or a file, the GIL released again.
Only what is over SPOOL_BYTES goes this way; without a shared-memory directory nothing does (prompts
are not written to a disk).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Bytes this many or more go through a file; fewer cost less through the executor's pipe.
SPOOL_BYTES = 256 * 1024
# Files are written and read this much a call, so that either process's call holds its core for no longer
# than one step takes (a kernel built without preemption runs a system call to its end, and a 5 MB one
# makes the proxy's loop, woken meanwhile on that core, wait ~5 ms).
STEP_BYTES = 256 * 1024
SHARED_MEMORY = Path("/dev/shm")


@dataclass(frozen=True, slots=True)
class Spooled:
    """Bytes left in a file for the other process: its path and length."""

    path: str
    size: int


def make_dir(prefix: str = "shadowtap-offload-") -> str | None:
    """A private directory in shared memory for one proxy process's files; None where there is none."""
    if not (SHARED_MEMORY.is_dir() and os.access(SHARED_MEMORY, os.W_OK)):
        return None
    try:
        return tempfile.mkdtemp(prefix=prefix, dir=SHARED_MEMORY)
    except OSError:
        return None


def write(path: str, data: bytes) -> Spooled:
    """Write `data` to a new file, a step a call (off the proxy's event loop)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[:STEP_BYTES]) :]
    except BaseException:
        discard(path)
        raise
    finally:
        os.close(fd)
    return Spooled(path, len(data))


def read(spooled: Spooled) -> bytes:
    """The file's bytes, a step a call (in the worker); the file is left for whoever wrote it to remove."""
    data = bytearray(spooled.size)
    view = memoryview(data)
    with open(spooled.path, "rb", buffering=0) as file:
        while view:
            got = file.readinto(view[:STEP_BYTES])
            if not got:
                raise OSError(f"{spooled.path}: shorter than the {spooled.size} bytes written")
            view = view[got:]
    return bytes(data)


def mapped(spooled: Spooled) -> mmap.mmap:
    """The file's bytes mapped read-only, not copied (in the proxy); the file is removed at once, its
    memory freed when the mapping is no longer referenced."""
    fd = os.open(spooled.path, os.O_RDONLY)
    try:
        view = mmap.mmap(fd, spooled.size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
        discard(spooled.path)
    return view


def discard(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
