"""Large pairs, worked on in a separate process so that neither the proxy's event loop nor its GIL waits.

A request body over `shadow.offload_bytes` is parsed there (can it be mirrored, what is its sampling key,
what is the candidate sent), and a pair whose request or answers are over that size is parsed, masked,
built and encoded there too: the proxy's process only moves bytes. Bytes over `spool.SPOOL_BYTES` (the
body, the candidate's copy of it, a large answer, the record's line) go through files in shared memory
(`spool.py`), so that no thread of the proxy copies megabytes while holding the GIL. Smaller pairs cost
less than the trip and are done on the loop, in pieces, as before; both ways go through the same
functions (`mirror.request_body`, `assemble`), so they record alike.

One worker process per proxy process, started with the dispatcher; if it dies, the pair it held is
dropped (counted as `offload_failed`) and a new one is started for the next.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import mmap
import multiprocessing
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

from shadowtap.config import PiiSettings
from shadowtap.proxy import spool
from shadowtap.proxy.mirror import candidate_body, request_body
from shadowtap.proxy.record import SideResult, build_pair
from shadowtap.proxy.redact import Redactor
from shadowtap.proxy.retry import RetryDetector, message_digest
from shadowtap.proxy.sinks import encode_record
from shadowtap.proxy.spool import SPOOL_BYTES, Spooled
from shadowtap.records import PairRecord, rfc3339
from shadowtap.request_text import input_chars

log = logging.getLogger("shadowtap.shadow")

T = TypeVar("T")

# In the record scored (not the one written: the embedded default's scoring process cuts it as it reads
# pairs.jsonl), a request string longer than this keeps only its head and tail: the judge shows at most `max_request_chars` of a conversation anyway.
SCORING_STRING_CHARS = 64 * 1024


# The worker runs at this much lower a CPU priority than the proxy (see `nice(1)`).
WORKER_NICENESS = 10


class OffloadFailed(Exception):
    """The worker process died or could not be started; the work it held is lost (and counted)."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """What the proxy needs of a large request body to mirror it."""

    stream: bool
    key: str | None  # the body field `shadow.sample_key` names, as text, when it names one
    input_chars: int
    # A large one is left in a file by the worker and mapped, not copied, by the proxy.
    candidate_body: bytes | Spooled | mmap.mmap


@dataclass(frozen=True, slots=True)
class Held:
    """In place of a request body the worker kept from `prepare` (sending megabytes to it twice costs the
    proxy's GIL twice)."""

    pair_id: str


@dataclass(slots=True)
class PairParts:
    """Everything a pair record is made of, before masking: the request as its bytes or as parsed."""

    pair_id: str
    received_at: float
    route: str
    stream: bool
    request: bytes | Spooled | Held | dict[str, Any]
    tags: dict[str, str]
    primary: SideResult
    candidate: SideResult
    skip_primary_errors: bool = False


class EncodedRecord(dict[str, Any]):
    """A pair record whose JSON line was encoded in the worker: sinks write `line` as it is, and the
    mapping itself is the record as scoring sees it (long request strings cut to head and tail)."""

    __slots__ = ("line",)

    def __init__(self, record: PairRecord, line: bytes | Spooled | mmap.mmap) -> None:
        super().__init__(record)
        self.line = line


# ------------------------------------------------------------------------------- shared by both ways


async def assemble(parts: PairParts, redactor: Redactor) -> PairRecord | None:
    """Parse what was left unparsed, mask every string, and build the record; None when the primary
    failed and `shadow.on_primary_error` is `skip`."""
    primary, candidate = parts.primary.settle(), parts.candidate.settle()
    if primary.error is not None and parts.skip_primary_errors:
        return None
    request = parts.request
    if not isinstance(request, dict):
        assert isinstance(request, bytes), "a held body is taken back before assembling"
        parsed = request_body(parts.route, request)
        request = parsed if isinstance(parsed, dict) else {}
    masked = {
        "primary": await mask_side(primary, redactor),
        "candidate": await mask_side(candidate, redactor),
    }
    masked_request, masked["request"] = await redactor.mask_request(request)
    tags = {key: redactor.mask_text(value)[0] for key, value in parts.tags.items()}
    return build_pair(
        pair_id=parts.pair_id,
        ts=rfc3339(parts.received_at),
        route=parts.route,
        stream=parts.stream,
        request=masked_request,
        tags=tags,
        primary=primary,
        candidate=candidate,
        masked=masked,
    )


async def mask_side(side: SideResult, redactor: Redactor) -> int:
    """Mask every string a side's answer holds (each choice's text, tool-call arguments inside their
    JSON, refusal and reasoning) and its error message; how many values were masked."""
    count = 0
    if side.outputs:
        side.outputs, count = await redactor.mask_value(side.outputs)
        side.text = side.outputs[0]["text"]
    elif side.text:
        side.text, count = await redactor.mask_value(side.text)
    if side.error is not None:
        message, changed = redactor.mask_text(side.error["message"])
        side.error = {"kind": side.error["kind"], "message": message}
        count += changed
    return count


def scoring_view(record: PairRecord) -> PairRecord:
    """The record with every request string over SCORING_STRING_CHARS cut to its head and tail."""
    view = dict(record)
    view["request"] = _cut_strings(record["request"])
    return view  # type: ignore[return-value]


def _cut_strings(value: Any) -> Any:
    if isinstance(value, str):
        if len(value) <= SCORING_STRING_CHARS:
            return value
        half = SCORING_STRING_CHARS // 2
        return (
            f"{value[:half]}\n[… {len(value) - 2 * half} characters not kept for scoring …]\n{value[-half:]}"
        )
    if isinstance(value, dict):
        return {key: _cut_strings(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_cut_strings(item) for item in value]
    return value


# ------------------------------------------------------------------------- run in the worker process

_worker_redactor: Redactor | None = None
_worker_loop: asyncio.AbstractEventLoop | None = None
_worker_spool: str | None = None  # where large results are left for the proxy (None: sent back whole)
# Request bodies `prepare` parsed, kept (as parsed, with their size in bytes) for their `record`, oldest
# first; bounded in bytes (a body pushed out, or one whose pair was not recorded, is sent again or just
# forgotten). Masking copies what it changes, so the kept body is never altered by either use.
_held: OrderedDict[str, tuple[int, dict[str, Any]]] = OrderedDict()
HELD_MAX_BYTES = 256 * 1024 * 1024


def _start_worker(pii: dict[str, Any], spool_dir: str | None) -> None:
    global _worker_redactor, _worker_loop, _worker_spool
    # Recording is background work: where CPU is short, the kernel serves the proxy's users first.
    os.nice(WORKER_NICENESS)
    _worker_redactor = Redactor(PiiSettings.model_validate(pii))
    _worker_loop = asyncio.new_event_loop()
    _worker_spool = spool_dir


def _ready() -> bool:
    return _worker_redactor is not None


def prepare(
    route: str, sent: bytes | Spooled, model: str | None, key_field: str, pair_id: str
) -> Prepared | str:
    """A large request body, parsed: what mirroring it takes, or why it cannot be (a skip reason). The
    body is kept for the pair's `record`."""
    raw = spool.read(sent) if isinstance(sent, Spooled) else sent
    body = request_body(route, raw)
    if isinstance(body, str):
        return body
    _hold(pair_id, len(raw), body)
    key = body.get(key_field) if key_field else None
    return Prepared(
        stream=body.get("stream") is True,
        key=None if key is None else str(key),
        input_chars=input_chars(body),
        candidate_body=_leave(pair_id, "candidate", candidate_body(route, body, model)),
    )


def retry_fingerprint(route: str, sent: bytes | Spooled, key_field: str) -> tuple[str | None, bytes] | None:
    """What retry detection needs of a large request body: the body field `shadow.sample_key` names (as
    text, when it names one and the body has it), and its last user message's digest; None when the body
    is not a JSON object or has no user message."""
    raw = spool.read(sent) if isinstance(sent, Spooled) else sent
    body = RetryDetector.parse(raw)
    digest = None if body is None else message_digest(route, body)
    if body is None or digest is None:
        return None
    key = body.get(key_field) if key_field else None
    return None if key is None else str(key), digest


def _leave(pair_id: str, what: str, data: bytes) -> bytes | Spooled:
    """Large bytes for the proxy, left in a file it maps; sent back whole when small, or when no file
    can be written."""
    if _worker_spool is None or len(data) < SPOOL_BYTES:
        return data
    try:
        return spool.write(spool_path(_worker_spool, pair_id, what), data)
    except OSError as exc:
        log.warning(
            "could not leave %d bytes in %s (%s); sending them back whole", len(data), _worker_spool, exc
        )
        return data


def spool_path(directory: str, pair_id: str, what: str) -> str:
    """The file one pair's bytes of one kind (SPOOLED_KINDS) are left in."""
    return os.path.join(directory, f"{pair_id}.{what}")


# The request body, the candidate's copy of it, the two answers' bodies, and the record's line.
SPOOLED_KINDS = ("request", "candidate", "primary", "candidate-answer", "line")


def _hold(pair_id: str, size: int, body: dict[str, Any]) -> None:
    _held[pair_id] = (size, body)
    held = sum(size for size, _ in _held.values())
    while held > HELD_MAX_BYTES and len(_held) > 1:
        held -= _held.popitem(last=False)[1][0]


def record(parts: PairParts) -> PairRecord | None:
    """A pair's record, masked and encoded: an `EncodedRecord`, its line for the sink and its view for
    scoring."""
    assert _worker_redactor is not None and _worker_loop is not None, "the worker was not started"
    if isinstance(parts.request, Held):
        held = _held.pop(parts.request.pair_id, None)
        if held is None:
            return NOT_HELD
        parts.request = held[1]
    elif isinstance(parts.request, Spooled):
        parts.request = spool.read(parts.request)
    for side in (parts.primary, parts.candidate):
        if side.unparsed is not None and isinstance(side.unparsed.body, Spooled):
            side.unparsed.body = spool.read(side.unparsed.body)
    built = _worker_loop.run_until_complete(assemble(parts, _worker_redactor))
    if built is None:
        return None
    line = _leave(parts.pair_id, "line", encode_record(built))
    return cast(PairRecord, EncodedRecord(scoring_view(built), line))


# What `record` answers when the body it was to have kept is gone (pushed out, or a new worker): the
# proxy sends it again.
NOT_HELD = cast(PairRecord, {"not_held": True})


# ------------------------------------------------------------------------------ in the proxy process


def helper_context() -> Any:
    """How the proxy starts its helper processes (this worker, and the embedded default's scoring
    process). Not fork: the proxy has threads (the sink's) whose held locks a forked child would copy.
    The fork server imports what both run once, so each later start takes milliseconds, and it outlives a
    SIGTERM to the proxy's process group (`forkserver.py`)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["shadowtap.proxy.forkserver", __name__, "shadowtap.scorers.embedded"])
    return context


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    """`fn` in a helper thread. The proxy's loop thread makes none of the offload's system calls (writing
    and mapping files, and the pool's wake-up write on each submit): each lets go of the GIL, and one of
    the proxy's busy threads (the sink's) can take it and keep it for up to the switch interval (5 ms)
    before the loop gets it back."""
    return await asyncio.to_thread(fn, *args)


class Offload:
    """The proxy's handle on its worker process, started on first use (in a thread: starting a process
    takes a while, and the event loop must not wait for it)."""

    def __init__(self, pii: PiiSettings) -> None:
        self._pii = pii.model_dump()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._starting: asyncio.Future[concurrent.futures.ProcessPoolExecutor] | None = None
        self._spool: str | None = None  # this process's directory in shared memory, once made
        self._tokens = itertools.count()

    def _start_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._spool is None:
            self._spool = spool.make_dir()
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1,
            mp_context=helper_context(),
            initializer=_start_worker,
            initargs=(self._pii, self._spool),
        )
        pool.submit(_ready).result()  # the process is up and has imported what it runs
        return pool

    async def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is not None:
            return self._pool
        if self._starting is None:
            self._starting = asyncio.ensure_future(asyncio.to_thread(self._start_pool))
        starting = self._starting
        try:
            pool = await asyncio.shield(starting)
        except (BrokenProcessPool, OSError) as exc:
            raise OffloadFailed(str(exc)) from exc
        finally:
            if self._starting is starting and starting.done():
                self._starting = None
        self._pool = pool
        return pool

    async def prepare(
        self, route: str, raw: bytes, model: str | None, key_field: str, pair_id: str
    ) -> Prepared | str:
        await self._executor()  # its spool directory is made with it
        sent = await self._send(pair_id, raw)
        try:
            result: Prepared | str = await self._run(pair_id, prepare, route, sent, model, key_field, pair_id)
        finally:
            if isinstance(sent, Spooled):
                await _off_loop(spool.discard, sent.path)
        if isinstance(result, Prepared) and isinstance(result.candidate_body, Spooled):
            result = replace(result, candidate_body=await _off_loop(spool.mapped, result.candidate_body))
        return result

    async def retry_fingerprint(
        self, route: str, raw: bytes, key_field: str
    ) -> tuple[str | None, bytes] | None:
        """The worker's `retry_fingerprint` of a large request body."""
        await self._executor()
        token = f"retry-{next(self._tokens)}"  # names the body's file, as a pair id does
        sent = await self._send(token, raw)
        try:
            result: tuple[str | None, bytes] | None = await self._run(
                token, retry_fingerprint, route, sent, key_field
            )
        finally:
            if isinstance(sent, Spooled):
                await _off_loop(spool.discard, sent.path)
        return result

    async def record(self, parts: PairParts, raw: bytes | None = None) -> PairRecord | None:
        """The worker's `record`; with `raw`, the request body `prepare` was given for this pair, which the
        worker kept (and is sent again only if it did not)."""
        if raw is not None:
            parts.request = Held(parts.pair_id)
        for what, side in (("primary", parts.primary), ("candidate-answer", parts.candidate)):
            if side.unparsed is not None and isinstance(side.unparsed.body, bytes):
                side.unparsed.body = await self._send(parts.pair_id, side.unparsed.body, what)
        try:
            result: PairRecord | None = await self._run(parts.pair_id, record, parts)
            if result is not None and result.get("not_held"):  # the worker did not keep it: sent again
                assert raw is not None
                parts.request = await self._send(parts.pair_id, raw)
                result = await self._run(parts.pair_id, record, parts)
        finally:
            for sent in (
                parts.request,
                *(s.unparsed.body for s in (parts.primary, parts.candidate) if s.unparsed),
            ):
                if isinstance(sent, Spooled):
                    await _off_loop(spool.discard, sent.path)
        if isinstance(result, EncodedRecord) and isinstance(result.line, Spooled):
            result.line = await _off_loop(spool.mapped, result.line)
        return result

    async def _send(self, pair_id: str, data: bytes, what: str = "request") -> bytes | Spooled:
        """Bytes for the worker (a request body, an answer's): left in a file when they are large (and a file
        can be written); as they are otherwise."""
        if self._spool is None or len(data) < SPOOL_BYTES:
            return data
        try:
            return await _off_loop(spool.write, spool_path(self._spool, pair_id, what), data)
        except OSError as exc:
            log.warning(
                "could not write %d bytes to %s (%s); sending them whole", len(data), self._spool, exc
            )
            return data

    async def _run(self, pair_id: str, fn: Callable[..., T], *args: Any) -> T:
        pool = await self._executor()
        try:
            return await asyncio.wrap_future(await _off_loop(pool.submit, fn, *args))
        except BrokenProcessPool as exc:
            log.error("the offload worker process died (%s); a new one starts for the next pair", exc)
            if self._pool is pool:
                self._pool = None
            self._discard(pair_id)  # what it may have left for this pair before it died
            raise OffloadFailed(str(exc)) from exc

    def _discard(self, pair_id: str) -> None:
        if self._spool is not None:
            for what in SPOOLED_KINDS:
                spool.discard(spool_path(self._spool, pair_id, what))

    async def aclose(self) -> None:
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        directory, self._spool = self._spool, None
        if directory is not None:
            await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
