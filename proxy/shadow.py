"""Sampling and shadow dispatch: which requests are mirrored, and calling the candidate off the request path.

The request path only ever calls `ShadowDispatcher.consider` (a cheap decision) and `submit` (a
`put_nowait` on a bounded queue). A fixed pool of workers calls the candidate; a full queue drops the
shadow and counts it. The pair record is assembled when both sides are done and handed to the pair
handlers (the sink, and in-process scoring in the embedded mode).

The candidate is asked for `candidate.model`, or, when config names none, for the one model its
`/models` lists (`ModelDiscovery`); until that is known, sampled requests are not mirrored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx

from shadowtap.config import Settings
from shadowtap.errors import ConfigError, ShadowtapError
from shadowtap.metrics import Metrics
from shadowtap.proxy.logs import ThrottledLog
from shadowtap.proxy.record import SideAssembler, SideResult, build_pair, length_bucket
from shadowtap.proxy.redact import Redactor
from shadowtap.proxy.transport import UpstreamResponse
from shadowtap.proxy.upstream import Upstream
from shadowtap.records import PairRecord, rfc3339
from shadowtap.request_text import input_chars

log = logging.getLogger("shadowtap.shadow")

MIRRORED_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})
# At shutdown, records whose answers are both in get this long to be masked and handed on.
RECORDING_GRACE_S = 2.0
PairHandler = Callable[[PairRecord], None]
# Discovering the candidate's model: start-up waits this long for the first answer, then goes on while
# the asking continues in the background; one attempt is bounded by DISCOVERY_TIMEOUT_S (and never
# outlasts candidate.timeout_s); attempts that fail are retried after a delay that doubles up to a cap.
DISCOVERY_STARTUP_WAIT_S = 2.0
DISCOVERY_TIMEOUT_S = 10.0
DISCOVERY_BACKOFF_S = 0.5
DISCOVERY_BACKOFF_MAX_S = 30.0
MODELS_MAX_BYTES = 1 << 20  # a model list longer than this is not one to choose from
MODELS_LISTED_MAX = 20  # an error names at most this many of the models listed


@dataclass(slots=True, eq=False)
class ShadowJob:
    """One sampled request on its way to the candidate, waiting for the primary's side too."""

    pair_id: str
    received_at: float  # Unix time; formatted off the request path, when the record is built
    route: str
    body: dict[str, Any]
    stream: bool
    tags: dict[str, str]
    primary: asyncio.Future[SideResult]
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
        rate = self.shadow.rate_for(route)
        if rate >= 1.0:
            return True
        if rate <= 0.0:
            return False
        key = self.key(headers, body)
        if key is None:
            return random.random() < rate
        digest = hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < rate


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def _is_json(content_type: str | None) -> bool:
    """What the upstream frameworks parse as JSON: no content type, `application/json` or `+json`."""
    if content_type is None:
        return True
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _request_body(route: str, raw_body: bytes) -> dict[str, Any] | str:
    """The request body to mirror, or why there is none (`unparseable`, `invalid_request`)."""
    try:
        body = json.loads(raw_body)
    except (ValueError, RecursionError):
        return "unparseable"
    if not isinstance(body, dict):
        return "unparseable"
    if route == "/v1/chat/completions" and not isinstance(body.get("messages"), list):
        return "invalid_request"
    if route == "/v1/completions" and "prompt" not in body:
        return "invalid_request"
    if route == "/v1/responses":
        return _responses_skip_reason(body) or body
    return body


def _responses_skip_reason(body: dict[str, Any]) -> str | None:
    """Why a Responses API request cannot be mirrored, if it cannot: it needs `input`, and it must not
    depend on state only the primary holds (an earlier response, a conversation) or run in the
    background (its answer is fetched later, from the primary)."""
    if "input" not in body:
        return "invalid_request"
    if body.get("previous_response_id"):
        return "previous_response"
    if body.get("conversation"):
        return "conversation"
    if body.get("background") is True:
        return "background"
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


class _Unanswered(ShadowtapError):
    """The candidate's `/models` gave no model list; `kind` (a small fixed set) says how, for the log."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def _model_ids(status: int, content: bytes) -> list[str]:
    """The model ids a `/models` answer lists (`{"object": "list", "data": [{"id": ...}, ...]}`, as
    OpenAI and vLLM answer), in order, each once; `_Unanswered` when it is no such list."""
    if status != 200:
        raise _Unanswered(f"http_{status}", f"answered HTTP {status}")
    try:
        listing = json.loads(content)
    except (ValueError, RecursionError):
        raise _Unanswered("not_json", "answered with something other than JSON") from None
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        raise _Unanswered("not_a_list", 'answered JSON without a "data" list of models')
    ids: list[str] = []
    for entry in data:
        model = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(model, str) or not model:
            raise _Unanswered("not_a_list", 'answered a "data" list with an entry that has no model "id"')
        ids.append(model)
    return list(dict.fromkeys(ids))


def _not_one_model(url: str, ids: list[str]) -> str:
    """Why the candidate's model cannot be chosen from its list, phrased as the config error it is."""
    if not ids:
        found = "lists no models"
    else:
        shown = ", ".join(ids[:MODELS_LISTED_MAX])
        more = f" and {len(ids) - MODELS_LISTED_MAX} more" if len(ids) > MODELS_LISTED_MAX else ""
        found = f"lists {len(ids)} models ({shown}{more})"
    return (
        f"candidate.model: not set, and the candidate's {url} {found}; "
        "name the one to mirror to with --candidate-model NAME or candidate.model"
    )


class ModelDiscovery:
    """The candidate's one served model, from its `/models`, for when config names none (DESIGN.md).

    At start-up one answer is waited for (briefly): one model is the answer; several, or none, is a
    start-up error naming `candidate.model`. A candidate that does not answer (down, slow, an error, not
    JSON) does not hold the proxy back: it is asked again in the background, with backoff, until it
    answers with one model. `on_found` gets the model; each kind of failure is logged once in a row.
    """

    def __init__(
        self,
        candidate: Upstream,
        headers: list[tuple[bytes, bytes]],
        timeout_s: float,
        on_found: Callable[[str], None],
    ) -> None:
        self.candidate = candidate
        self.url = candidate.url_for("/v1/models")
        # Asked once (or until it answers): no connection is kept in the pool for it, none is left open
        # when start-up fails on the answer.
        self.headers = [*headers, (b"connection", b"close")]
        self.timeout_s = min(timeout_s, DISCOVERY_TIMEOUT_S)
        self.on_found = on_found
        self._last_failure: str | None = None
        self._retrying: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Ask once, waiting up to DISCOVERY_STARTUP_WAIT_S; `ConfigError` when the candidate lists several
        models or none. Unanswered by then, the asking goes on in the background."""
        first = asyncio.create_task(self.ask(), name="candidate-model-discovery")
        try:
            done, _ = await asyncio.wait({first}, timeout=DISCOVERY_STARTUP_WAIT_S)
        except asyncio.CancelledError:
            first.cancel()
            raise
        if first in done and not isinstance(first.exception(), _Unanswered):
            ids = first.result()
            if len(ids) != 1:
                raise ConfigError(_not_one_model(self.url, ids))
            self._found(ids[0])
            return
        self._retrying = asyncio.create_task(self._keep_asking(first), name="candidate-model-discovery")

    async def aclose(self) -> None:
        # The cancel alone can be lost: Python 3.11's asyncio.wait_for drops one that races a result.
        self._closed = True
        if self._retrying is not None:
            self._retrying.cancel()
            await asyncio.gather(self._retrying, return_exceptions=True)

    async def ask(self) -> list[str]:
        """The model ids the candidate's `/models` lists; `_Unanswered` when it gives no such list."""
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self.candidate.send("GET", "/v1/models", self.headers, b"")
                try:
                    content = await _read_at_most(response, MODELS_MAX_BYTES)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise _Unanswered("timeout", f"gave no answer within {self.timeout_s:g}s") from None
        except httpx.ConnectError as exc:
            raise _Unanswered("connect", f"could not be reached ({exc})") from None
        except httpx.HTTPError as exc:
            raise _Unanswered("transport", f"failed ({type(exc).__name__}: {exc})") from None
        if content is None:
            raise _Unanswered("too_large", f"answered more than {MODELS_MAX_BYTES} bytes")
        return _model_ids(response.status, content)

    async def _keep_asking(self, attempt: Awaitable[list[str]]) -> None:
        delay = DISCOVERY_BACKOFF_S
        while True:
            try:
                ids = await attempt
            except _Unanswered as exc:
                self._failed(exc.kind, f"the candidate's {self.url} {exc}")
            except Exception:  # a fault here must not end the asking, and is logged, never swallowed
                log.exception("asking the candidate's %s for its model failed", self.url)
            else:
                if len(ids) == 1:
                    self._found(ids[0])
                    return
                self._failed("several" if ids else "none", _not_one_model(self.url, ids))
            if self._closed:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, DISCOVERY_BACKOFF_MAX_S)
            attempt = self.ask()

    def _found(self, model: str) -> None:
        log.info("candidate model: %s (discovered from %s)", model, self.url)
        self.on_found(model)

    def _failed(self, kind: str, detail: str) -> None:
        """Log a failed attempt: at warning level when it differs in kind from the one before, else debug."""
        level = logging.DEBUG if kind == self._last_failure else logging.WARNING
        self._last_failure = kind
        log.log(
            level,
            "candidate model unknown: %s; sampled requests are not mirrored until it is known "
            '(shadow_skipped_total{reason="candidate_model_unknown"}); asking again, backing off to every %gs',
            detail,
            DISCOVERY_BACKOFF_MAX_S,
        )


async def _read_at_most(response: UpstreamResponse, limit: int) -> bytes | None:
    """The response's whole body, or None once it passes `limit` bytes (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class ShadowDispatcher:
    """Decides which requests are mirrored and calls the candidate for them, off the request path."""

    def __init__(
        self,
        settings: Settings,
        candidate: Upstream,
        metrics: Metrics,
        handlers: Sequence[PairHandler],
    ) -> None:
        self.settings = settings
        self.candidate = candidate
        self.metrics = metrics
        self.handlers = handlers
        self.sampler = Sampler(settings)
        self.redactor = Redactor(settings.redaction.pii)
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
        if not _is_json(_header(headers, b"content-type")):
            m.shadow_skipped.labels(route=route, reason="content_type").inc()
            return None
        body = _request_body(route, raw_body)
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
        segment = _header(headers, self.segment_header)
        tags = {
            "route": route,
            "segment": (segment or "none")[:64],
            "length_bucket": length_bucket(input_chars(body), self.settings.tags.length_buckets),
        }
        return ShadowJob(
            # Unique, not secret: 128 random bits without a getrandom() syscall on the request path.
            pair_id=f"{random.getrandbits(128):032x}",
            received_at=time.time(),
            route=route,
            body=body,
            stream=body.get("stream") is True,
            tags=tags,
            primary=asyncio.get_running_loop().create_future(),
        )

    def submit(self, job: ShadowJob) -> bool:
        """Hand the job to the workers, or drop it (counted) when the queue is full. Never waits."""
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

    async def call_candidate(self, job: ShadowJob) -> SideResult:
        """Send the job's request to the candidate and assemble its answer; every failure is the result's
        `error`, counted by kind."""
        settings = self.settings.candidate
        body = dict(job.body)
        if self.model is not None:  # always, for a job: none is made while the model is unknown
            body["model"] = self.model
        if job.route == "/v1/responses":
            body["store"] = False  # the candidate's answers are for the record, never for later requests
        result = SideResult(model=body.get("model"))
        started = time.perf_counter()
        assembler = SideAssembler(
            streaming=job.stream, started=started, max_bytes=self.settings.shadow.max_record_bytes
        )
        try:
            async with asyncio.timeout(settings.timeout_s):
                response = await self.candidate.send(
                    "POST", job.route, self._candidate_headers, json.dumps(body).encode()
                )
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
        self._count_candidate(job.route, result)
        return result

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
                result.text = b"".join(assembler.chunks).decode("utf-8", "replace")
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

    async def _mask_side(self, side: SideResult) -> int:
        """Mask every string a side's answer holds (each choice's text, tool-call arguments inside their
        JSON, refusal and reasoning) and its error message; how many values were masked."""
        count = 0
        if side.outputs:
            side.outputs, count = await self.redactor.mask_value(side.outputs)
            side.text = side.outputs[0]["text"]
        elif side.text:
            side.text, count = await self.redactor.mask_value(side.text)
        if side.error is not None:
            message, changed = self.redactor.mask_text(side.error["message"])
            side.error = {"kind": side.error["kind"], "message": message}
            count += changed
        return count

    async def _build_and_hand_on(self, job: ShadowJob) -> None:
        """Mask and build the record (a long text is masked a piece at a time, the loop serving other
        requests in between), then hand it to every handler."""
        primary = job.primary.result() if not job.primary.cancelled() else SideResult().fail("cancelled", "")
        if primary.error is not None and self.settings.shadow.on_primary_error == "skip":
            self.metrics.shadow_skipped.labels(route=job.route, reason="primary_error").inc()
            return
        candidate = job.candidate or SideResult().fail("missing", "no candidate result")
        masked = {"primary": 0, "candidate": 0}
        for name, side in (("primary", primary), ("candidate", candidate)):
            masked[name] = await self._mask_side(side)
            if side.truncated:
                self.metrics.records_truncated.labels(side=name).inc()
        request, masked["request"] = await self.redactor.mask_request(job.body)
        tags = {key: self.redactor.mask_text(value)[0] for key, value in job.tags.items()}
        record = build_pair(
            pair_id=job.pair_id,
            ts=rfc3339(job.received_at),
            route=job.route,
            stream=job.stream,
            request=request,
            tags=tags,
            primary=primary,
            candidate=candidate,
            masked=masked,
        )
        self.metrics.pairs.labels(route=job.route).inc()
        for handler in self.handlers:
            try:
                handler(record)
            except Exception:
                log.exception("pair handler %r failed on pair %s", handler, job.pair_id)
