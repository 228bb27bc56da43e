"""Large pairs, worked on in a separate process so that neither the proxy's event loop nor its GIL waits.

A request body over `shadow.offload_bytes` is parsed there (can it be mirrored, what is its sampling key,
what is the candidate sent), and a pair whose request or answers are over that size is parsed, masked,
built and encoded there too: the proxy's process only moves bytes (a copy each way, in the executor's
own threads). Smaller pairs cost less than the trip and are done on the loop, in pieces, as before; both
ways go through the same functions (`mirror.request_body`, `assemble`), so they record alike.

One worker process per proxy process, started with the dispatcher; if it dies, the pair it held is
dropped (counted as `offload_failed`) and a new one is started for the next.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from shadowtap.config import PiiSettings
from shadowtap.proxy.mirror import candidate_body, request_body
from shadowtap.proxy.record import SideResult, build_pair
from shadowtap.proxy.redact import Redactor
from shadowtap.proxy.sinks import encode_record
from shadowtap.records import PairRecord, rfc3339
from shadowtap.request_text import input_chars

log = logging.getLogger("shadowtap.shadow")

T = TypeVar("T")

# In the record handed to in-process scoring (not the one written), a request string longer than this
# keeps only its head and tail: the judge shows at most `max_request_chars` of a conversation anyway.
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
    candidate_body: bytes


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
    request: bytes | Held | dict[str, Any]
    tags: dict[str, str]
    primary: SideResult
    candidate: SideResult
    skip_primary_errors: bool = False


class EncodedRecord(dict[str, Any]):
    """A pair record whose JSON line was encoded in the worker: sinks write `line` as it is, and the
    mapping itself is the record as scoring sees it (long request strings cut to head and tail)."""

    __slots__ = ("line",)

    def __init__(self, record: PairRecord, line: bytes) -> None:
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
# Request bodies `prepare` parsed, kept for their `record`, oldest first; bounded in bytes (a body pushed
# out, or one whose pair was not recorded, is sent again or just forgotten).
_held: OrderedDict[str, bytes] = OrderedDict()
HELD_MAX_BYTES = 256 * 1024 * 1024


def _start_worker(pii: dict[str, Any]) -> None:
    global _worker_redactor, _worker_loop
    # Recording is background work: where CPU is short, the kernel serves the proxy's users first.
    os.nice(WORKER_NICENESS)
    _worker_redactor = Redactor(PiiSettings.model_validate(pii))
    _worker_loop = asyncio.new_event_loop()


def _ready() -> bool:
    return _worker_redactor is not None


def prepare(route: str, raw: bytes, model: str | None, key_field: str, pair_id: str) -> Prepared | str:
    """A large request body, parsed: what mirroring it takes, or why it cannot be (a skip reason). The
    body is kept for the pair's `record`."""
    body = request_body(route, raw)
    if isinstance(body, str):
        return body
    _hold(pair_id, raw)
    key = body.get(key_field) if key_field else None
    return Prepared(
        stream=body.get("stream") is True,
        key=None if key is None else str(key),
        input_chars=input_chars(body),
        candidate_body=candidate_body(route, body, model),
    )


def _hold(pair_id: str, raw: bytes) -> None:
    _held[pair_id] = raw
    held = sum(len(body) for body in _held.values())
    while held > HELD_MAX_BYTES and len(_held) > 1:
        held -= len(_held.popitem(last=False)[1])


def record(parts: PairParts) -> PairRecord | None:
    """A pair's record, masked and encoded: an `EncodedRecord`, its line for the sink and its view for
    scoring."""
    assert _worker_redactor is not None and _worker_loop is not None, "the worker was not started"
    if isinstance(parts.request, Held):
        raw = _held.pop(parts.request.pair_id, None)
        if raw is None:
            return NOT_HELD
        parts.request = raw
    built = _worker_loop.run_until_complete(assemble(parts, _worker_redactor))
    if built is None:
        return None
    return cast(PairRecord, EncodedRecord(scoring_view(built), encode_record(built)))


# What `record` answers when the body it was to have kept is gone (pushed out, or a new worker): the
# proxy sends it again.
NOT_HELD = cast(PairRecord, {"not_held": True})


# ------------------------------------------------------------------------------ in the proxy process


class Offload:
    """The proxy's handle on its worker process, started on first use (in a thread: starting a process
    takes a while, and the event loop must not wait for it)."""

    def __init__(self, pii: PiiSettings) -> None:
        self._pii = pii.model_dump()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._starting: asyncio.Future[concurrent.futures.ProcessPoolExecutor] | None = None

    def _start_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        # Not fork: the proxy has threads (the sink's, scoring's) whose held locks a forked child would copy.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=context, initializer=_start_worker, initargs=(self._pii,)
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
        result: Prepared | str = await self._run(prepare, route, raw, model, key_field, pair_id)
        return result

    async def record(self, parts: PairParts, raw: bytes | None = None) -> PairRecord | None:
        """The worker's `record`; with `raw`, the request body `prepare` was given for this pair, which the
        worker kept (and is sent again only if it did not)."""
        if raw is not None:
            parts.request = Held(parts.pair_id)
        result: PairRecord | None = await self._run(record, parts)
        if result is not None and result.get("not_held"):  # the worker did not keep it: sent again
            assert raw is not None
            parts.request = raw
            result = await self._run(record, parts)
        return result

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        pool = await self._executor()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except BrokenProcessPool as exc:
            log.error("the offload worker process died (%s); a new one starts for the next pair", exc)
            if self._pool is pool:
                self._pool = None
            raise OffloadFailed(str(exc)) from exc

    async def aclose(self) -> None:
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
