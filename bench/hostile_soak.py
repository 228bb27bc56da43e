"""Hostile soak: normal users at a steady rate while hostile clients and a hostile candidate push every limit.

Starts a simulated primary, a candidate and `shadowtap serve` (100% of chat requests mirrored) as separate
processes on loopback; this process is the load generator. The candidate is a raw asyncio HTTP/1.1 server
(this script, `--serve-candidate PORT FLAGFILE`): while FLAGFILE is absent it answers a small chat
completion; while it exists it rotates per request through a header flood (header lines written until the
proxy drops the connection), a gzip bomb (a ~1 MiB body that inflates to 1 GiB) and an endless
close-delimited body.

Three phases of `--seconds` each: quiet, hostile, after. Normal users send plain chat requests open loop
at `--rate` throughout. In the hostile phase FLAGFILE exists and this process also runs slowloris
connections (a partial head, then a byte a second), clients streaming request heads without end, and
clients sending bodies over `server.max_body_bytes` (a declared 64 MiB, sent slowly; chunked past 32 MiB);
each goes on after the proxy refuses or closes it, until the phase ends. The proxy's RSS and open
descriptors are sampled every 0.5 s, and its refusal and candidate-error counters scraped at each phase
boundary. Prints a table per phase and a verdict, and writes both to bench/results/hostile_soak.txt.
Stops by itself: at most 100 s a phase. The proxy also takes any SHADOWTAP_* variable set for this script
(e.g. SHADOWTAP_SHADOW_MAX_RECORD_BYTES); the report names them.

    python bench/hostile_soak.py [--rate 40] [--seconds 30] [--slowloris 300] [--hostile all|clients|candidate]
        [--candidate-answers flood,bomb,endless] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    REQUEST,
    RawClient,
    cpu_seconds,
    free_port,
    open_fds,
    pct,
    processes,
    rss_mb,
    start,
    start_proxy,
    start_simulated,
)

MAX_PHASE_S = 100.0
PHASES = ("quiet", "hostile", "after")
SAMPLE_S = 0.5
USER_TIMEOUT_S = 10.0
P99_TARGET_MS = 5.0
RSS_TARGET_RATIO = 2.0

# ------------------------------------------------------------------------------------ the candidate

BLOCK = 64 * 1024
BOMB_INFLATED = 1 << 30
CHAT_PATH = b"/v1/chat/completions"


def gzip_bomb() -> bytes:
    """A gzip member of BOMB_INFLATED zero bytes (about 1 MiB), compressed a MiB at a time."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    parts = [compressor.compress(zeros) for _ in range(BOMB_INFLATED // len(zeros))]
    return b"".join([*parts, compressor.flush()])


def chat_answer(model: str) -> bytes:
    """A plain chat completion, in the shape of the OpenAI API (and of shadowtap.testing's upstreams)."""
    text = "Refunds are issued within 14 days of a return."
    doc = {
        "id": "chatcmpl-" + uuid.uuid4().hex[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def framed(body: bytes) -> bytes:
    """A 200 with a Content-Length framed JSON body, the connection kept."""
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )


async def read_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request's head, its body read and discarded; None when the connection ended first."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        lower = head.lower()
        length = re.search(rb"\r\ncontent-length: *(\d+)", lower)
        if b"\r\ntransfer-encoding: chunked" in lower:
            await read_chunked(reader)
        elif length:
            await reader.readexactly(int(length[1]))
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        return None
    return head


class HostileCandidate:
    """Answers normally while the flag file is absent; while it exists, each chat request gets the next
    hostile answer in turn, and its connection is not kept."""

    def __init__(self, flag: Path, answers: list[str]) -> None:
        self.flag = flag
        self.bomb = gzip_bomb() if "bomb" in answers else b""
        kinds = {"flood": self.header_flood, "bomb": self.send_bomb, "endless": self.endless_body}
        self.hostile: itertools.cycle[Callable[[asyncio.StreamWriter], Awaitable[None]]] = itertools.cycle(
            [kinds[name] for name in answers]
        )

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (head := await read_request(reader)) is not None:
                if not head.startswith(b"POST " + CHAT_PATH) or not self.flag.exists():
                    writer.write(framed(self.normal_body(head)))
                    await writer.drain()
                    continue
                await next(self.hostile)(writer)
                return
        except ConnectionError:
            pass  # the proxy dropped us: what a hostile answer is for
        finally:
            writer.close()

    def normal_body(self, head: bytes) -> bytes:
        if head.startswith(b"POST "):
            return chat_answer("hostile-candidate")
        return b'{"object":"list","data":[{"id":"hostile-candidate","object":"model","created":0,"owned_by":"bench"}]}'

    async def header_flood(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        lines = b"".join(b"X-Flood-%04d: %s\r\n" % (i, b"f" * 1000) for i in range(64))
        while True:
            writer.write(lines)
            await writer.drain()

    async def send_bomb(self, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: %d\r\n\r\n" % len(self.bomb)
        )
        for offset in range(0, len(self.bomb), BLOCK):
            writer.write(self.bomb[offset : offset + BLOCK])
            await writer.drain()

    async def endless_body(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        block = b'{"choices":[' + b" " * (BLOCK - 12)
        while True:
            writer.write(block)
            await writer.drain()


def serve_candidate(port: int, flag: Path, answers: list[str]) -> None:
    async def serve() -> None:
        candidate = HostileCandidate(flag, answers)
        server = await asyncio.start_server(candidate.handle, "127.0.0.1", port, limit=1 << 20)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


# ------------------------------------------------------------------------------------ hostile clients


def outcome_of(answer: asyncio.Future[bytes]) -> str:
    """What the proxy did to a hostile client: the status it answered, or how it ended the connection."""
    if not answer.done():
        return "no answer"
    if answer.cancelled() or answer.exception() is not None:
        return "reset"
    data = answer.result()
    if data.startswith(b"HTTP/1.1 "):
        return data[9:12].decode("ascii", "replace")
    return "closed" if not data else "other"


class HostileClients:
    """Clients that break the request-side limits, each starting over when the proxy refuses it."""

    def __init__(self, host: str, port: int, outcomes: Counter[str]) -> None:
        self.host, self.port = host, port
        self.outcomes = outcomes
        self.head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n".encode()

    async def push(self, kind: str, opening: bytes, piece: bytes, pause_s: float) -> None:
        """Open a connection, send `opening`, then `piece` every `pause_s` until the proxy answers or closes."""
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            self.outcomes[f"{kind}: connect failed"] += 1
            await asyncio.sleep(0.1)
            return
        answer = asyncio.ensure_future(reader.read(64))
        answer.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved: no warning
        try:
            writer.write(opening)
            while not answer.done():
                writer.write(piece)
                await writer.drain()
                await asyncio.wait([answer], timeout=pause_s)
        except ConnectionError:
            await asyncio.wait([answer], timeout=0.5)
        except asyncio.CancelledError:
            self.outcomes[f"{kind}: open at phase end"] += 1
            raise
        finally:
            writer.close()
        self.outcomes[f"{kind}: {outcome_of(answer)}"] += 1
        answer.cancel()

    async def forever(
        self, kind: str, opening: bytes, piece: bytes, pause_s: float, delay_s: float = 0
    ) -> None:
        await asyncio.sleep(delay_s)
        while True:
            await self.push(kind, opening, piece, pause_s)

    def slowloris(self, i: int, n: int) -> Awaitable[None]:
        return self.forever("slowloris", self.head + b"X-Slow: ", b"a", 1.0, delay_s=i / n)

    def huge_head(self) -> Awaitable[None]:
        """A head streamed at about 800 KiB/s, 16 header lines of 1 KiB at a time, that never ends."""
        lines = b"".join(b"X-Pad-%04d: %s\r\n" % (i, b"p" * 1000) for i in range(16))
        return self.forever("huge head", self.head, lines, 0.02)

    async def big_bodies(self, every_s: float) -> None:
        """One oversized-body client every `every_s`, alternately a declared 64 MiB sent slowly and a
        chunked body sent as fast as the proxy reads it."""
        declared = self.head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (64 << 20)
        chunked = self.head + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"%x\r\n%s\r\n" % (BLOCK, b"b" * BLOCK)
        kinds = itertools.cycle(
            [("64 MiB declared", declared, b"b" * BLOCK, 0.1), ("chunked > 32 MiB", chunked, chunk, 0.001)]
        )
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                task = asyncio.create_task(self.push(*next(kinds)))
                running.add(task)
                task.add_done_callback(running.discard)
                await asyncio.sleep(every_s)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)


# ------------------------------------------------------------------------------------ the soak


Counters = dict[str, Counter[str]]
COUNTERS = {"shadowtap_requests_rejected_total": "reason", "shadowtap_candidate_errors_total": "kind"}


def parse_counters(text: str) -> Counters:
    """The counters the soak reports, summed by their one label of interest (over routes)."""
    out: Counters = {name: Counter() for name in COUNTERS}
    out["shadowtap_shadow_dropped_total"] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in COUNTERS:
                out[sample.name][sample.labels[COUNTERS[sample.name]]] += int(sample.value)
            elif sample.name == "shadowtap_shadow_dropped_total":
                out[sample.name]["all"] += int(sample.value)
    return out


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # normal users: what went wrong, by kind
    non200: int = 0
    rss: list[float] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)
    counters: Counters | None = None  # deltas over the phase; None: /metrics did not answer
    hostile: Counter[str] = field(default_factory=Counter)
    lag_ms: list[float] = field(default_factory=list)  # how late the generator's sampler woke up
    proxy_cpu: float = 0.0  # shares of one core over the phase
    generator_cpu: float = 0.0


@dataclass
class Options:
    rate: float
    seconds: float
    slowloris: int
    head_clients: int
    body_every: float
    hostile: str
    candidate_answers: list[str]


class HostileSoak:
    """Normal users through all three phases; the hostile load in the second; the proxy sampled throughout."""

    def __init__(self, base: str, pid: int, flag: Path, options: Options) -> None:
        self.base = base
        self.pid = pid
        self.flag = flag
        self.options = options
        self.body = json.dumps(REQUEST).encode()
        self.client = RawClient(f"{base}/v1/chat/completions")
        self.scraper = httpx.AsyncClient(timeout=10)
        self.phases: list[Phase] = []
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def current(self) -> Phase:
        return self.phases[-1]

    async def run(self) -> list[Phase]:
        for _ in range(50):  # warm the connection and the proxy's upstream pools
            await self.client.request(self.body, False)
        self.phases.append(Phase("warm-up"))
        sampler = asyncio.create_task(self.sample())
        driver = asyncio.create_task(self.drive())
        try:
            await self.run_phases()
        finally:
            driver.cancel()
            sampler.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=USER_TIMEOUT_S + 1)
        self.client.close()
        await self.scraper.aclose()
        return [phase for phase in self.phases if phase.name in PHASES]

    async def scrape(self) -> Counters | None:
        try:
            return parse_counters((await self.scraper.get(f"{self.base}/metrics")).text)
        except httpx.HTTPError as exc:
            print(f"  /metrics did not answer: {type(exc).__name__}", flush=True)
            return None

    async def run_phases(self) -> None:
        """Each phase for `seconds`. Its counters are scraped at the start of the next one, the normal users
        already counting there, and the next phase's hostile load waits for the scrape."""
        before = await self.scrape()
        previous = None
        for name in PHASES:
            phase = Phase(name)
            self.phases.append(phase)
            ends = time.perf_counter() + self.options.seconds
            proxy_cpu, generator_cpu = cpu_seconds(self.pid), time.process_time()
            print(f"  {name}: {self.options.seconds:g} s", flush=True)
            if previous is not None:
                before = await self.settle(previous, before)
            await (
                self.hostile_phase(ends) if name == "hostile" else asyncio.sleep(ends - time.perf_counter())
            )
            elapsed = self.options.seconds + time.perf_counter() - ends
            phase.proxy_cpu = (cpu_seconds(self.pid) - proxy_cpu) / elapsed
            phase.generator_cpu = (time.process_time() - generator_cpu) / elapsed
            previous = phase
        self.phases.append(Phase("drain"))  # requests sent after the last phase: not reported
        if previous is not None:
            await self.settle(previous, before)

    async def settle(self, phase: Phase, before: Counters | None) -> Counters | None:
        """Scrape the counters now; `phase`'s deltas are the change since `before` (none if either failed)."""
        after = await self.scrape()
        if before is not None and after is not None:
            phase.counters = {key: after[key] - before[key] for key in after}
        return after

    async def hostile_phase(self, ends: float) -> None:
        host, port = self.client.host or "127.0.0.1", self.client.port or 80
        clients = HostileClients(host, port, self.current.hostile)
        jobs: list[Awaitable[None]] = []
        if self.options.hostile != "candidate":
            n = self.options.slowloris
            jobs = [clients.slowloris(i, n) for i in range(n)]
            jobs += [clients.huge_head() for _ in range(self.options.head_clients)]
            jobs.append(clients.big_bodies(self.options.body_every))
        if self.options.hostile != "clients":
            self.flag.touch()
        tasks = [asyncio.ensure_future(job) for job in jobs]
        try:
            await asyncio.sleep(ends - time.perf_counter())
        finally:
            self.flag.unlink(missing_ok=True)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def sample(self) -> None:
        """The proxy's RSS and descriptors every SAMPLE_S, and how late this process woke up to read them
        (a late wake-up means the generator, not the proxy, is short of CPU)."""
        while True:
            with contextlib.suppress(OSError):
                self.current.rss.append(rss_mb(self.pid))
                self.current.fds.append(open_fds(self.pid))
            woke = time.perf_counter() + SAMPLE_S
            await asyncio.sleep(SAMPLE_S)
            self.current.lag_ms.append((time.perf_counter() - woke) * 1000)

    async def drive(self) -> None:
        """Open loop: a request every 1/rate s, whatever the proxy's answer times."""
        interval = 1.0 / self.options.rate
        t0 = time.perf_counter()
        for i in itertools.count():
            delay = t0 + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.one(self.current))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def one(self, phase: Phase) -> None:
        try:
            phase.latencies.append(
                await asyncio.wait_for(self.client.request(self.body, False), USER_TIMEOUT_S)
            )
        except RuntimeError as exc:
            head = exc.args[0] if exc.args else b""
            if isinstance(head, bytes) and head.startswith(b"http/1.1 "):
                phase.non200 += 1
                phase.errors[f"HTTP {head[9:12].decode('ascii', 'replace')}"] += 1
            else:
                phase.errors[f"RuntimeError: {str(exc)[:40]}"] += 1
        except Exception as exc:
            phase.errors[type(exc).__name__] += 1


# ------------------------------------------------------------------------------------ the report

HEADER = (
    f"{'phase':<8} {'reqs':>6} {'err':>4} {'!200':>4} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>8} "
    f"{'RSS med':>8} {'RSS max':>8} {'fds max':>7} {'shadow drops':>12}  rejected (reason: delta) | candidate errors (kind: delta)"
)


def compact(counts: Counter[str] | None) -> str:
    items = [f"{key} {n}" for key, n in sorted((counts or Counter()).items()) if n]
    return ", ".join(items) or "-"


def figures(phase: Phase) -> dict[str, float]:
    lat, nan = phase.latencies, float("nan")
    return {
        "p50": statistics.median(lat) if lat else nan,
        "p99": pct(lat, 0.99) if lat else nan,
        "max": max(lat) if lat else nan,
        "rss_med": statistics.median(phase.rss) if phase.rss else nan,
        "rss_max": max(phase.rss) if phase.rss else nan,
        "fds_max": max(phase.fds) if phase.fds else 0,
    }


def format_row(phase: Phase) -> str:
    f = figures(phase)
    errors = sum(phase.errors.values())
    row = (
        f"{phase.name:<8} {len(phase.latencies) + errors:>6} {errors:>4} {phase.non200:>4} {f['p50']:>7.2f} "
        f"{f['p99']:>7.2f} {f['max']:>8.1f} {f['rss_med']:>8.1f} {f['rss_max']:>8.1f} {f['fds_max']:>7.0f} "
    )
    if phase.counters is None:
        return row + f"{'n/a':>12}  /metrics did not answer at a boundary"
    counters = phase.counters
    return (
        row + f"{counters['shadowtap_shadow_dropped_total']['all']:>12}  "
        f"{compact(counters['shadowtap_requests_rejected_total'])} | "
        f"{compact(counters['shadowtap_candidate_errors_total'])}"
    )


def verdict(phases: list[Phase]) -> list[str]:
    by_name = {phase.name: figures(phase) for phase in phases}
    quiet, hostile = by_name["quiet"], by_name["hostile"]
    added = hostile["p99"] - quiet["p99"]
    ratio = hostile["rss_max"] / quiet["rss_max"]
    failing = {phase.name: phase.non200 for phase in phases}
    errors = {phase.name: sum(phase.errors.values()) for phase in phases}

    def mark(ok: bool) -> str:
        return "pass" if ok else "FAIL"

    return [
        f"hostile p99 - quiet p99: {added:+.2f} ms ({hostile['p99']:.2f} vs {quiet['p99']:.2f}; target within "
        f"{P99_TARGET_MS:g} ms): {mark(added <= P99_TARGET_MS)}",
        f"hostile max RSS / quiet max RSS: {ratio:.2f}x ({hostile['rss_max']:.1f} vs {quiet['rss_max']:.1f} MiB; "
        f"target under {RSS_TARGET_RATIO:g}x): {mark(ratio < RSS_TARGET_RATIO)}",
        "normal users answered non-200: "
        + ", ".join(f"{name} {n}" for name, n in failing.items())
        + f" (target 0): {mark(not any(failing.values()))}",
        "normal users with any error (non-200, timeout after "
        f"{USER_TIMEOUT_S:g} s, reset): "
        + ", ".join(f"{name} {n}" for name, n in errors.items())
        + f" (target 0): {mark(not any(errors.values()))}",
    ]


def details(phases: list[Phase], pairs_bytes: int) -> list[str]:
    lines = []
    for phase in phases:
        if phase.errors:
            lines.append(f"normal-user errors, {phase.name}: {compact(phase.errors)}")
        if phase.hostile:
            lines.append(f"hostile clients, {phase.name} (outcome: count): {compact(phase.hostile)}")
    fds = ", ".join(f"{p.name} {p.fds[0]}/{max(p.fds)}/{p.fds[-1]}" for p in phases if p.fds)
    rss = ", ".join(f"{p.name} {p.rss[0]:.1f}/{max(p.rss):.1f}/{p.rss[-1]:.1f}" for p in phases if p.rss)
    cpu = ", ".join(f"{p.name} {p.proxy_cpu:.0%}/{p.generator_cpu:.0%}" for p in phases)
    lag = ", ".join(f"{p.name} {max(p.lag_ms, default=0):.0f}" for p in phases)
    lines += [
        f"proxy open fds (first/max/last sample): {fds}",
        f"proxy RSS MiB (first/max/last sample): {rss}",
        f"CPU, proxy/load generator (of one core): {cpu}",
        f"load generator's worst wake-up lag, ms: {lag}",
    ]
    lines.append(f"pairs.jsonl written by the proxy: {pairs_bytes / 2**20:.1f} MiB")
    return lines


def write_report(
    phases: list[Phase], options: Options, settings: dict[str, str], out: Path, pairs_bytes: int
) -> None:
    table = [HEADER, "-" * len(HEADER), *(format_row(phase) for phase in phases)]
    lines = [
        "shadowtap hostile soak: normal users beside slowloris, huge heads, oversized bodies and a hostile "
        "candidate (loopback)",
        f"command: python bench/hostile_soak.py {' '.join(sys.argv[1:])}".rstrip(),
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}; {options.rate:g} req/s of normal users, "
        f"{options.seconds:g} s a phase, {options.slowloris} slowloris, {options.head_clients} huge-head clients, "
        f"an oversized body every {options.body_every:g} s; 100% of chat requests mirrored",
        f"hostile phase: {options.hostile} hostile (clients, candidate or all); candidate answers in turn: "
        f"{','.join(options.candidate_answers)}",
        "proxy settings: " + " ".join(f"{key}={value}" for key, value in sorted(settings.items())),
        "latencies in ms of the normal users' answered requests, by the phase a request was sent in (errors, "
        "timeouts included, are counted apart); RSS in MiB; counters are deltas over the phase",
        "",
        *table,
        "",
        *verdict(phases),
        "",
        *details(phases, pairs_bytes),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)


CANDIDATE_ANSWERS = ("flood", "bomb", "endless")


def answer_list(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = set(names) - set(CANDIDATE_ANSWERS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {','.join(CANDIDATE_ANSWERS)}, got {value!r}")
    return names


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rate", type=float, default=40.0, help="normal users' requests per second (open loop)"
    )
    parser.add_argument(
        "--seconds", type=float, default=30.0, help=f"length of each phase, at most {MAX_PHASE_S:g}"
    )
    parser.add_argument(
        "--slowloris", type=int, default=300, help="slowloris connections in the hostile phase"
    )
    parser.add_argument("--head-clients", type=int, default=4, help="clients streaming endless request heads")
    parser.add_argument(
        "--body-every", type=float, default=2.0, help="seconds between oversized-body clients"
    )
    parser.add_argument(
        "--hostile",
        choices=["all", "clients", "candidate"],
        default="all",
        help="what turns hostile in the second phase: the clients, the candidate, or both",
    )
    parser.add_argument(
        "--candidate-answers",
        type=answer_list,
        default=list(CANDIDATE_ANSWERS),
        help="the hostile candidate's answers, taken in turn (default: flood,bomb,endless)",
    )
    parser.add_argument("--out", default="bench/results/hostile_soak.txt")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, pairs.jsonl)")
    parser.add_argument("--serve-candidate", nargs=2, metavar=("PORT", "FLAGFILE"), help=argparse.SUPPRESS)
    return parser.parse_args()


def soak(options: Options, workdir: Path) -> tuple[list[Phase], dict[str, str]]:
    """Start the three processes, run the phases against them, stop them; the phases and the proxy's
    SHADOWTAP_* settings."""
    flag = workdir / "hostile"
    p_port, c_port, x_port = free_port(), free_port(), free_port()
    settings = {"SHADOWTAP_SHADOW_SAMPLE_RATE": "1"}
    shown = {key: value for key, value in os.environ.items() if key.startswith("SHADOWTAP_")} | settings
    with processes(grace_s=15) as procs:
        procs.append(start_simulated(p_port, "primary-sim", workdir / "primary.log"))
        candidate = [sys.executable, __file__, "--serve-candidate", str(c_port), str(flag)]
        candidate += ["--candidate-answers", ",".join(options.candidate_answers)]
        procs.append(start(candidate, f"http://127.0.0.1:{c_port}/v1/models", workdir / "candidate.log"))
        proxy = start_proxy(p_port, c_port, x_port, workdir, settings)
        procs.append(proxy)
        print(
            f"hostile soak: {options.rate:g} req/s, phases of {options.seconds:g} s; work dir {workdir}",
            flush=True,
        )
        runner = HostileSoak(f"http://127.0.0.1:{x_port}", proxy.pid, flag, options)
        phases = asyncio.run(asyncio.wait_for(runner.run(), timeout=len(PHASES) * options.seconds + 60))
    return phases, shown


def main() -> None:
    args = parse_args()
    if args.serve_candidate is not None:
        serve_candidate(int(args.serve_candidate[0]), Path(args.serve_candidate[1]), args.candidate_answers)
        return
    if args.seconds <= 0 or args.rate <= 0:
        raise SystemExit("--seconds and --rate must be positive")
    options = Options(
        rate=args.rate,
        seconds=min(args.seconds, MAX_PHASE_S),
        slowloris=args.slowloris,
        head_clients=args.head_clients,
        body_every=args.body_every,
        hostile=args.hostile,
        candidate_answers=args.candidate_answers,
    )
    workdir = Path(tempfile.mkdtemp(prefix="shadowtap-hostile-"))
    try:
        phases, settings = soak(options, workdir)
        pairs = workdir / "data" / "pairs.jsonl"
        write_report(phases, options, settings, Path(args.out), pairs.stat().st_size if pairs.exists() else 0)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
