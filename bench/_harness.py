"""What the benchmarks share: starting the simulated upstreams and `shadowtap serve` as processes on
loopback (and stopping them), the request they send, a lean load-generating client, and a percentile.

The scripts import it as a sibling module (`python bench/<script>.py` puts bench/ on the path).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import httpx

REQUEST = {
    "model": "bench",
    "messages": [{"role": "user", "content": "Summarise the refund policy in one line."}],
}
CONTENT = re.compile(rb'"content": ?"[^"]')
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mb(pid: int) -> float:
    """A process's resident memory, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU time the process (or one of its threads: the main thread's id is the pid) has
    used so far. A thread's is read from the scheduler's own count (`schedstat`, in nanoseconds) where the
    kernel keeps one; a process's, with its ended threads, in clock ticks."""
    if tid is not None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / 1e9
    stat = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(stat).read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every process started by `pid`, at any depth (children of any of its threads)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in children.read_text().split()]
                found += kids
                todo += kids
    return found


def children_cpu_seconds(pid: int) -> float:
    """CPU time used so far by the processes `pid` started that are still running."""
    total = 0.0
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(child)
    return total


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def start(
    cmd: list[str],
    url: str,
    log: Path,
    env: Mapping[str, str] | None = None,
    cpus: set[int] | None = None,
    niceness: int = 0,
) -> subprocess.Popen[bytes]:
    """Start `cmd` with its output in `log` (on `cpus` only, when given, and at `niceness`: it and what it
    starts); return once `url` answers (exit if it never does)."""

    def placed() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        if niceness:
            os.nice(niceness)

    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, preexec_fn=placed)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[:3]} exited; see {log}") from None
            time.sleep(0.1)
    raise SystemExit(f"{cmd[:3]} did not come up; see {log}")


def start_simulated(
    port: int, name: str, log: Path, *extra: str, niceness: int = 0
) -> subprocess.Popen[bytes]:
    """A simulated model (`python -m shadowtap.testing.upstreams`), e.g. `"--profile", "slow"`."""
    cmd = [sys.executable, "-m", "shadowtap.testing.upstreams", "--port", str(port), "--name", name, *extra]
    return start(cmd, f"http://127.0.0.1:{port}/v1/models", log, niceness=niceness)


def start_proxy(
    primary_port: int,
    candidate_port: int,
    port: int,
    workdir: Path,
    settings: Mapping[str, str],
    cpus: set[int] | None = None,
) -> subprocess.Popen[bytes]:
    """`shadowtap serve` in front of the two upstreams, its pairs in `workdir/data`; `settings` are
    SHADOWTAP_* environment variables on top of this process's environment."""
    cmd = [
        sys.executable,
        "-m",
        "shadowtap.cli",
        "serve",
        "--primary",
        f"http://127.0.0.1:{primary_port}/v1",
        "--candidate",
        f"http://127.0.0.1:{candidate_port}/v1",
        "--port",
        str(port),
        "--data-dir",
        str(workdir / "data"),
    ]
    env = {**os.environ, **settings}
    return start(cmd, f"http://127.0.0.1:{port}/healthz", workdir / "proxy.log", env, cpus)


@contextlib.contextmanager
def processes(grace_s: float) -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list to put started processes in; on exit each is terminated, and killed past `grace_s`."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    The load generator shares the 2-core machine with the servers it measures; httpx would spend more
    CPU per request than the proxy does, so the generator would be the first thing to saturate.
    Connections idle for longer than `KEEPALIVE_S` are closed rather than reused: the servers (uvicorn)
    close theirs after 5 s, and a request sent on one they are closing fails for either arm.
    """

    KEEPALIVE_S = 4.0

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname, parts.port, parts.path
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = time.monotonic()
        while self.idle:
            reader, writer, since = self.idle.pop()
            if now - since < self.KEEPALIVE_S:
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    async def _read_chunked(self, reader: asyncio.StreamReader) -> float | None:
        """Read a chunked body; the time its first content arrived, if any did."""
        first_content = None
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if first_content is None and CONTENT.search(chunk):
                first_content = time.perf_counter()
            if size == 0:
                return first_content

    async def request(self, body: bytes, stream: bool) -> float:
        """Send one request; milliseconds to the whole answer, or to its first content when streamed."""
        reader, writer = await self.connection()
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        t0 = time.perf_counter()
        writer.write(head + body)
        headers = (await reader.readuntil(b"\r\n\r\n")).lower()
        if not headers.startswith(b"http/1.1 200"):
            raise RuntimeError(headers[:40])
        first_content = None
        if b"transfer-encoding: chunked" in headers:
            first_content = await self._read_chunked(reader)
        else:
            length = int(headers.split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        done = time.perf_counter()
        self.idle.append((reader, writer, time.monotonic()))
        if stream:
            if first_content is None:
                raise RuntimeError("stream carried no content")
            return (first_content - t0) * 1000
        return (done - t0) * 1000

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
