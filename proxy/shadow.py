"""Sampling and shadow dispatch: which requests are mirrored, and calling the candidate off the request path.

The request path only ever calls `ShadowDispatcher.consider` (a cheap decision) and `submit` (a
`put_nowait` on a bounded queue). A fixed pool of workers calls the candidate; a full queue drops the
shadow and counts it. The pair record is assembled when both sides are done and handed to the pair
handlers (the sink; in the embedded default a scoring process follows the file it writes). A large
request body is not even parsed here: it goes to the offload worker process (`proxy/offload.py`), as does the recording of a large pair.

The candidate is asked for `candidate.model`, or, when config names none, for the one model its
`/models` lists (`ModelDiscovery`); until that is known, sampled requests are not mirrored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import mmap
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import httpx

from shadowtap.config import Settings
from shadowtap.metrics import Metrics
from shadowtap.proxy.discovery import ModelDiscovery
from shadowtap.proxy.logs import ThrottledLog
from shadowtap.proxy.mirror import MIRRORED_ROUTES, candidate_body, is_json, request_body
from shadowtap.proxy.offload import Offload, OffloadFailed, PairParts, assemble
from shadowtap.proxy.record import CUT_TEXT_BYTES, SideAssembler, SideResult, length_bucket
from shadowtap.proxy.redact import Redactor
from shadowtap.proxy.spool import Spooled
from shadowtap.proxy.transport import UpstreamResponse
from shadowtap.proxy.upstream import Upstream, forward_headers
from shadowtap.records import NOISE_FLOOR, PairRecord
from shadowtap.request_text import input_chars

log = logging.getLogger("shadowtap.shadow")

__all__ = ["MIRRORED_ROUTES", "PairHandler", "Sampler", "ShadowDispatcher", "ShadowJob"]

# A candidate body this large goes out in pieces of this size, each once the socket has taken the last.
SEND_STEP_BYTES = 256 * 1024

# At shutdown, records whose answers are both in get this long to be masked and handed on.
RECORDING_GRACE_S = 2.0
PairHandler = Callable[[PairRecord], None]


@dataclass(slots=True, eq=False)
class ShadowJob:
    """One sampled request on its way to the candidate, waiting for the primary's side too."""

    pair_id: str
    received_at: float  # Unix time; formatted off the request path, when the record is built
    route: str
    raw: bytes  # the request body as the client sent it
    body: dict[str, Any] | None  # parsed on the loop; None for a large body, parsed by the offload worker
    stream: bool
    tags: dict[str, str]
    primary: asyncio.Future[SideResult]
    sample_by_body: bool = False  # sampled on a field of a large body: decided once the worker parsed it
    # A noise-floor job asks the primary again (with the client's headers), not the candidate.
    noise_floor: bool = False
    client_headers: list[tuple[bytes, bytes]] | None = None
    candidate_body: bytes | bytearray | mmap.mmap | None = None  # mapped: the offload worker's copy
    candidate: SideResult | None = None
    started: float = field(default_factory=time.perf_counter)


class Sampler:
    """Deterministic sampling: the same key (a header or a body field) is always or never mirrored."""

    def __init__(self, settings: Settings) -> None:
        self.shadow = settings.shadow
        kind, _, name = settings.shadow.sample_key.partition(":")
        self.kind = kind
        self.header = name.lower().encode("latin-1") if kind == "header" else b""
        self.field = name if kind == "body" else ""

    def key(self, headers: list[tuple[bytes, bytes]], body: dict[str, Any]) -> str | None:
        if self.kind == "header":
            for k, v in headers:
                if k.lower() == self.header:
                    return v.decode("latin-1")
            return None
        if self.kind == "body":
            value = body.get(self.field)
            return None if value is None else str(value)
        return None

    def chosen(self, route: str, headers: list[tuple[bytes, bytes]], body: dict[str, Any]) -> bool:
        return self.chosen_by_key(route, self.key(headers, body))

    def chosen_by_key(self, route: str, key: str | None) -> bool:
        rate = self.shadow.rate_for(route)
        if rate >= 1.0:
            return True
        if rate <= 0.0:
            return False
        if key is None:
            return random.random() < rate
        digest = hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < rate


async def _pieces(body: bytes | bytearray | mmap.mmap) -> AsyncIterator[bytes]:
    view = memoryview(body)
    for start in range(0, len(view), SEND_STEP_BYTES):
        yield bytes(view[start : start + SEND_STEP_BYTES])


def _echo_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The client's headers (its credentials included) for asking the primary again, framing left to the
    transport."""
    return [(k, v) for k, v in forward_headers(headers) if k.lower() not in _FRAMING]


_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def _answer_began(
    response: UpstreamResponse, job: ShadowJob, result: SideResult, assembler: SideAssembler
) -> None:
    """The candidate's response head is in: note its status, and how to read its body for the record."""
    result.status = response.status
    content_type = response.header(b"content-type") or b""
    assembler.streaming = job.stream and content_type.startswith(b"text/event-stream")
    encoding = response.header(b"content-encoding")
    if encoding:
        assembler.set_content_encoding(encoding.decode("latin-1"))  # ValueError for a coding not decoded


def _answer_ended(job: ShadowJob, result: SideResult, assembler: SideAssembler) -> None:
    """The candidate's whole answer is in: parse it into the result."""
    assembler.finish(result, time.perf_counter(), job.route)
    if job.stream and not assembler.streaming and result.error is None and result.status == 200:
        result.fail("invalid_response", "asked to stream but the candidate did not answer with SSE")


class ShadowDispatcher:
    """Decides which requests are mirrored and calls the candidate for them, off the request path."""

    def __init__(
        self,
        settings: Settings,
        candidate: Upstream,
        metrics: Metrics,
        handlers: Sequence[PairHandler],
        primary: Upstream | None = None,
        offload: Offload | None = None,
    ) -> None:
        self.settings = settings
        self.candidate = candidate
        self.primary = primary  # asked again for the noise floor (none given: no noise-floor pairs)
        self.metrics = metrics
        self.handlers = handlers
        self.sampler = Sampler(settings)
        self.redactor = Redactor(settings.redaction.pii)
        # The worker process large bodies go to; one given is shared, and its owner closes it.
        self.offload = offload if offload is not None else Offload(settings.redaction.pii)
        self._owns_offload = offload is None
        self.offload_bytes = settings.shadow.offload_bytes
        self.segment_header = settings.tags.segment_header.lower().encode("latin-1")
        self.queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=settings.shadow.queue_size)
        self.in_flight = 0
        self.pending: set[ShadowJob] = set()
        self._to_record: asyncio.Queue[ShadowJob] = asyncio.Queue(settings.shadow.queue_size)
        self.log_once = ThrottledLog(log)
        self._workers: list[asyncio.Task[None]] = []
        self._recording: asyncio.Task[None] | None = None
        self._closing = False
        # The candidate sees only what config gives it: never the client's headers or credentials.
        candidate_headers = {k.lower(): v for k, v in settings.candidate.headers.items()}
        if settings.candidate.api_key:
            candidate_headers["authorization"] = f"Bearer {settings.candidate.api_key}"
        own_headers = [(k.encode("latin-1"), v.encode()) for k, v in candidate_headers.items()]
        candidate_headers["content-type"] = "application/json"
        self._candidate_headers = [(k.encode("latin-1"), v.encode()) for k, v in candidate_headers.items()]
        # The name the candidate is asked for; None while it is being discovered (nothing is mirrored).
        self.model: str | None = settings.candidate.model
        self.discovery = (
            None
            if self.model
            else ModelDiscovery(candidate, own_headers, settings.candidate.timeout_s, self._use_model)
        )
        metrics.shadow_queued.set_function(self.queue.qsize)
        metrics.shadow_in_flight.set_function(lambda: self.in_flight)

    # ---------------------------------------------------------------- request path (must stay cheap)

    def consider(self, route: str, headers: list[tuple[bytes, bytes]], raw_body: bytes) -> ShadowJob | None:
        """Decide whether to mirror this request; count why not. Never raises."""
        m = self.metrics
        if self._closing:
            m.shadow_skipped.labels(route=route, reason="shutdown").inc()
            return None
        if self.settings.shadow.rate_for(route) <= 0.0:
            m.shadow_skipped.labels(route=route, reason="not_sampled").inc()
            return None
        if len(raw_body) > self.settings.shadow.max_body_bytes:
            m.shadow_skipped.labels(route=route, reason="too_large").inc()
            return None
        if not is_json(_header(headers, b"content-type")):
            m.shadow_skipped.labels(route=route, reason="content_type").inc()
            return None
        if len(raw_body) > self.offload_bytes:
            return self._consider_large(route, headers, raw_body)
        body = request_body(route, raw_body)
        if isinstance(body, str):
            m.shadow_skipped.labels(route=route, reason=body).inc()
            return None
        if not self.sampler.chosen(route, headers, body):
            m.shadow_skipped.labels(route=route, reason="not_sampled").inc()
            return None
        if self.model is None:  # never mirrored under the client's name, which the candidate may not serve
            m.shadow_skipped.labels(route=route, reason="candidate_model_unknown").inc()
            return None
        m.shadow_sampled.labels(route=route).inc()
        job = self._job(route, headers, raw_body, body)
        job.tags["length_bucket"] = length_bucket(input_chars(body), self.settings.tags.length_buckets)
        return job

    def _noise_floor_job(self, job: ShadowJob) -> ShadowJob | None:
        """Now and then (`shadow.noise_floor_rate`), the same request for the primary again: its pair with
        the user's answer is the noise floor. It shares the job's primary side (the same future)."""
        rate = self.settings.shadow.noise_floor_rate
        if job.client_headers is None or random.random() >= rate:
            return None
        return replace(
            job,
            pair_id=f"{random.getrandbits(128):032x}",
            tags={**job.tags, "comparison": NOISE_FLOOR},
            noise_floor=True,
        )

    def _consider_large(
        self, route: str, headers: list[tuple[bytes, bytes]], raw_body: bytes
    ) -> ShadowJob | None:
        """A body too large to parse on the loop: what can be decided without it is decided now; the
        rest (can it be mirrored, and a sampling key in the body) once the offload worker has parsed it."""
        sample_by_body = self.sampler.kind == "body" and self.settings.shadow.rate_for(route) < 1.0
        if not sample_by_body and not self.sampler.chosen(route, headers, {}):
            self.metrics.shadow_skipped.labels(route=route, reason="not_sampled").inc()
            return None
        if self.model is None:
            self.metrics.shadow_skipped.labels(route=route, reason="candidate_model_unknown").inc()
            return None
        job = self._job(route, headers, raw_body, None)
        job.sample_by_body = sample_by_body
        return job

    def _job(
        self, route: str, headers: list[tuple[bytes, bytes]], raw_body: bytes, body: dict[str, Any] | None
    ) -> ShadowJob:
        segment = _header(headers, self.segment_header)
        noise_floor = self.primary is not None and self.settings.shadow.noise_floor_rate > 0.0
        return ShadowJob(
            # Unique, not secret: 128 random bits without a getrandom() syscall on the request path.
            pair_id=f"{random.getrandbits(128):032x}",
            received_at=time.time(),
            route=route,
            raw=raw_body,
            body=body,
            stream=body is not None and body.get("stream") is True,
            tags={"route": route, "segment": (segment or "none")[:64]},
            primary=asyncio.get_running_loop().create_future(),
            client_headers=_echo_headers(headers) if noise_floor else None,
        )

    def submit(self, job: ShadowJob) -> bool:
        """Hand the job (and, now and then, its noise-floor twin) to the workers, or drop it (counted) when
        the queue is full. Never waits."""
        if not self._queue(job):
            return False
        twin = self._noise_floor_job(job)
        if twin is not None:
            self._queue(twin)
        job.client_headers = None  # only the twin asks the primary
        return True

    def _queue(self, job: ShadowJob) -> bool:
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.shadow_dropped.labels(route=job.route, reason="queue_full").inc()
            return False
        self.pending.add(job)
        return True

    # ---------------------------------------------------------------- off the request path

    async def start(self) -> None:
        """Start the workers; first, with no `candidate.model`, ask the candidate for its model
        (`ConfigError` when it lists several or none)."""
        if self.discovery is not None:
            await self.discovery.start()
        else:
            log.info("candidate model: %s (candidate.model)", self.model)
        self._workers = [
            asyncio.create_task(self._worker(), name=f"shadow-worker-{i}")
            for i in range(self.settings.shadow.concurrency)
        ]
        self._recording = asyncio.create_task(self._recorder(), name="shadow-recorder")

    async def close(self, deadline_s: float) -> None:
        """Stop taking new shadows; finish queued ones within `deadline_s`, count the rest as dropped."""
        self._closing = True
        if self.discovery is not None:
            await self.discovery.aclose()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline_s):
                await self.queue.join()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        dropped = await self._finish_recording()
        if self._owns_offload:
            await self.offload.aclose()
        while not self.queue.empty():
            job = self.queue.get_nowait()
            self.pending.discard(job)
            self.metrics.shadow_dropped.labels(route=job.route, reason="shutdown").inc()
            dropped += 1
        for job in list(self.pending):
            # In flight when the deadline hit: its candidate call was cancelled.
            if job.candidate is None:
                self.metrics.shadow_dropped.labels(route=job.route, reason="shutdown").inc()
                dropped += 1
            self.pending.discard(job)
        if dropped:
            log.warning("shutdown: %d queued or in-flight shadow requests dropped at the deadline", dropped)

    async def _finish_recording(self) -> int:
        """Answers already in are recorded (within RECORDING_GRACE_S), not dropped; the number dropped."""
        if self._recording is None:
            return 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RECORDING_GRACE_S):
                await self._to_record.join()
        self._recording.cancel()
        await asyncio.gather(self._recording, return_exceptions=True)
        dropped = 0
        while not self._to_record.empty():
            job = self._to_record.get_nowait()
            self.pending.discard(job)
            self.metrics.shadow_dropped.labels(route=job.route, reason="shutdown").inc()
            dropped += 1
        return dropped

    async def _worker(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                if job.body is None and not await self._prepare(job):
                    self.pending.discard(job)
                    continue
                if self.settings.shadow.start == "after_primary":
                    await asyncio.shield(job.primary)
                self.in_flight += 1
                try:
                    job.candidate = await self.call_candidate(job)
                finally:
                    self.in_flight -= 1
                if job.primary.done():
                    self._complete(job)
                else:
                    job.primary.add_done_callback(partial(self._primary_done, job))
                    # A primary side that never reports back (a bug, a lost task) must not pin the job.
                    limit = self.settings.primary.timeout_s + 5.0
                    asyncio.get_running_loop().call_later(limit, self._expire, job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("shadow worker failed on pair %s", job.pair_id)
                self.metrics.shadow_dropped.labels(route=job.route, reason="internal_error").inc()
                self.pending.discard(job)
            finally:
                self.queue.task_done()

    async def _prepare(self, job: ShadowJob) -> bool:
        """A large body, parsed by the offload worker: whether it is mirrored (why not is counted)."""
        route, m = job.route, self.metrics
        assert self.model is not None  # a job is made only once the model is known
        model = None if job.noise_floor else self.model  # the primary is asked under the client's name
        try:
            prepared = await self.offload.prepare(route, job.raw, model, self.sampler.field, job.pair_id)
        except OffloadFailed:
            m.shadow_dropped.labels(route=route, reason="offload_failed").inc()
            return False
        if isinstance(prepared, str):
            m.shadow_skipped.labels(route=route, reason=prepared).inc()
            return False
        if job.sample_by_body and not self.sampler.chosen_by_key(route, prepared.key):
            m.shadow_skipped.labels(route=route, reason="not_sampled").inc()
            return False
        m.shadow_sampled.labels(route=route).inc()
        job.stream = prepared.stream
        assert not isinstance(prepared.candidate_body, Spooled), "Offload.prepare maps it"
        job.candidate_body = prepared.candidate_body
        job.tags["length_bucket"] = length_bucket(prepared.input_chars, self.settings.tags.length_buckets)
        return True

    async def call_candidate(self, job: ShadowJob) -> SideResult:
        """Send the job's request to the candidate and assemble its answer; every failure is the result's
        `error`, counted by kind."""
        settings = self.settings.primary if job.noise_floor else self.settings.candidate
        assert self.model is not None  # a job is made only once the model is known
        model = None if job.noise_floor else self.model
        body = job.candidate_body
        if body is None:
            assert job.body is not None
            body = candidate_body(job.route, job.body, model)
        result = SideResult(model=model or (job.body or {}).get("model"))
        started = time.perf_counter()
        assembler = SideAssembler(
            streaming=job.stream,
            started=started,
            max_bytes=self.settings.shadow.max_record_bytes,
            parse_inline_bytes=self.offload_bytes,
        )
        try:
            async with asyncio.timeout(settings.timeout_s):
                response = await self._send_shadow(job, body)
                try:
                    _answer_began(response, job, result, assembler)
                    async for chunk in response.aiter_raw():
                        assembler.feed(chunk, time.perf_counter())
                        if assembler.truncated:  # the record is full: the connection is dropped, not drained
                            break
                finally:
                    await response.aclose()
                # Parsing and recording can wait a turn: let user-facing work that is ready run first.
                await asyncio.sleep(0)
            _answer_ended(job, result, assembler)
        except (TimeoutError, httpx.HTTPError, ValueError) as exc:
            self._candidate_failed(exc, job, result, assembler, started)
        if not job.noise_floor:  # the primary's second answers are not the candidate's
            self._count_candidate(job.route, result)
        return result

    async def _send_shadow(self, job: ShadowJob, body: bytes | bytearray | mmap.mmap) -> UpstreamResponse:
        upstream, headers = self.candidate, self._candidate_headers
        if job.noise_floor:
            assert self.primary is not None and job.client_headers is not None
            upstream, headers = self.primary, job.client_headers
        if len(body) < SEND_STEP_BYTES:
            return await upstream.send("POST", job.route, headers, bytes(body))
        # A large body goes out a piece at a time, each once the socket has taken the last: the loop never
        # copies it whole into the transport's buffer.
        sized = [*headers, (b"content-length", str(len(body)).encode())]
        url = upstream.target(job.route)
        return await upstream.transport.send(
            "POST", url, sized, None, upstream.timeouts, stream=_pieces(body)
        )

    def _candidate_failed(
        self, exc: Exception, job: ShadowJob, result: SideResult, assembler: SideAssembler, started: float
    ) -> None:
        """Record why the candidate gave no (complete) answer; a stream cut short keeps what came."""
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        if isinstance(exc, TimeoutError):
            result.latency_ms = elapsed_ms
            result.fail("timeout", f"no complete answer within {self.settings.candidate.timeout_s:g}s")
        elif isinstance(exc, httpx.TimeoutException):
            result.latency_ms = elapsed_ms
            result.fail("timeout", f"{type(exc).__name__}: {exc}")
        elif isinstance(exc, httpx.ConnectError):
            result.fail("connect", f"{type(exc).__name__}: {exc}")
        elif isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            result.latency_ms = elapsed_ms
            if job.stream:
                assembler.finish(result, time.perf_counter(), job.route)
                result.error = None
            else:
                result.text = b"".join(assembler.chunks)[:CUT_TEXT_BYTES].decode("utf-8", "replace")
                result.truncated = assembler.truncated
            result.fail("disconnected", f"{type(exc).__name__}: {exc}")
        elif isinstance(exc, httpx.HTTPError):
            result.fail("transport", f"{type(exc).__name__}: {exc}")
        else:  # a content coding the record cannot decode
            result.fail("undecodable", str(exc))

    def _count_candidate(self, route: str, result: SideResult) -> None:
        status = "error" if result.status is None else str(result.status)
        self.metrics.requests.labels(route=route, side="candidate", status=status).inc()
        if result.error is not None:
            self.metrics.candidate_errors.labels(route=route, kind=result.error["kind"]).inc()
        if result.latency_ms is not None and result.status is not None:
            self.metrics.latency.labels(route=route, side="candidate").observe(result.latency_ms / 1000.0)
        if result.ttft_ms is not None:
            self.metrics.ttft.labels(route=route, side="candidate").observe(result.ttft_ms / 1000.0)

    def _use_model(self, model: str) -> None:
        self.model = model

    def _primary_done(self, job: ShadowJob, _primary: asyncio.Future[SideResult]) -> None:
        self._complete(job)

    def _expire(self, job: ShadowJob) -> None:
        if not job.primary.done():
            log.error("pair %s: the primary side never finished; recording it as unfinished", job.pair_id)
            job.primary.set_result(SideResult().fail("unfinished", "the primary side never finished"))

    def _complete(self, job: ShadowJob) -> None:
        """Both sides are in: the recorder masks and builds the record, then hands it on. Records wait
        their turn in a bounded queue; past it they are dropped and counted, never held without end."""
        try:
            self._to_record.put_nowait(job)
        except asyncio.QueueFull:
            self.pending.discard(job)
            self.metrics.shadow_dropped.labels(route=job.route, reason="recording_backlog").inc()
            self.log_once("recording_backlog", "records are masked slower than pairs complete; dropping some")

    async def _recorder(self) -> None:
        """One task records every pair, in turn: a long text is masked a piece per pass of the event
        loop, never several pieces of several records at once in front of the users' requests."""
        while True:
            job = await self._to_record.get()
            try:
                await self._build_and_hand_on(job)
            except Exception:
                log.exception("recording pair %s failed", job.pair_id)
                self.metrics.shadow_dropped.labels(route=job.route, reason="internal_error").inc()
            finally:
                self.pending.discard(job)
                self._to_record.task_done()

    async def _build_and_hand_on(self, job: ShadowJob) -> None:
        """Mask and build the record — a small pair here (a long text a piece at a time, the loop serving
        other requests in between), a large one in the offload worker — and hand it to every handler."""
        primary = job.primary.result() if not job.primary.cancelled() else SideResult().fail("cancelled", "")
        primary = replace(primary)  # a noise-floor twin shares it: each record masks its own copy
        candidate = job.candidate or SideResult().fail("missing", "no candidate result")
        for name, side in (("primary", primary), ("candidate", candidate)):
            if side.truncated:
                self.metrics.records_truncated.labels(side=name).inc()
        large = job.body is None or primary.unparsed is not None or candidate.unparsed is not None
        candidate_parsed_late = candidate.unparsed is not None and candidate.error is None
        parts = PairParts(
            pair_id=job.pair_id,
            received_at=job.received_at,
            route=job.route,
            stream=job.stream,
            request=job.raw if job.body is None else job.body,
            tags=job.tags,
            primary=primary,
            candidate=candidate,
            skip_primary_errors=self.settings.shadow.on_primary_error == "skip",
        )
        try:
            record = await (
                self.offload.record(parts, job.raw if job.body is None else None)
                if large
                else assemble(parts, self.redactor)
            )
        except OffloadFailed:
            self.metrics.shadow_dropped.labels(route=job.route, reason="offload_failed").inc()
            return
        if record is None:
            self.metrics.shadow_skipped.labels(route=job.route, reason="primary_error").inc()
            return
        error = record["candidate"]["error"]
        if candidate_parsed_late and error is not None:  # found only now, by parsing: counted now
            self.metrics.candidate_errors.labels(route=job.route, kind=error["kind"]).inc()
        (self.metrics.noise_floor_pairs if job.noise_floor else self.metrics.pairs).labels(
            route=job.route
        ).inc()
        for handler in self.handlers:
            try:
                handler(record)
            except Exception:
                log.exception("pair handler %r failed on pair %s", handler, job.pair_id)
