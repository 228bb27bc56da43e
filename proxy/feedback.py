"""Production signals on the primary's answers: `POST /shadowtap/v1/feedback` and the retries seen.

Feedback names an answer by the response id the client received (or a pair id). The proxy remembers the
most recent exchanges in a bounded map, response id (and pair id) to segment and pair, so feedback on a
request that was not mirrored still counts for the primary in its segment. Records go to the feedback sink
(`DATA_DIR/feedback.jsonl`, or the `sink.kafka.feedback_topic` topic), opened on the first record.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import random
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from shadowtap.config import Settings
from shadowtap.errors import openai_error_body
from shadowtap.feedback import FEEDBACK_SCHEMA, RETRY_SIGNAL, Feedback
from shadowtap.metrics import Metrics, segment_label
from shadowtap.proxy.offload import Offload, OffloadFailed
from shadowtap.proxy.redact import Redactor
from shadowtap.proxy.retry import Exchange, RetryDetector, message_digest
from shadowtap.proxy.shadow import MIRRORED_ROUTES, Sampler
from shadowtap.proxy.sinks import JsonlSink, Sink
from shadowtap.records import PairRecord, is_noise_floor, utc_now_rfc3339

__all__ = ["FEEDBACK_PATH", "ProductionSignals", "ResponseIndex", "response_id_of"]

log = logging.getLogger("shadowtap.feedback")

FEEDBACK_PATH = "/shadowtap/v1/feedback"
# An id as OpenAI-compatible servers write them (chatcmpl-..., resp_..., cmpl-..., a pair's hex).
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,255}")
# The response id is the first "id" of the primary's first bytes: `{"id":"chatcmpl-...` for chat and
# completions, `data: {"id":...` for their streams, `"response":{"id":"resp_...` in a Responses stream.
_FIRST_ID = re.compile(rb'"id"\s*:\s*"([A-Za-z0-9][A-Za-z0-9._:\-]{0,255})"')
PEEK_BYTES = 4096
FIELDS = frozenset({"response_id", "pair_id", "signal", "value", "comment"})

Send = Callable[[dict[str, Any]], Awaitable[None]]


def response_id_of(first_bytes: bytes) -> str | None:
    """The response id in the first bytes of a primary's answer, or None."""
    found = _FIRST_ID.search(first_bytes[:PEEK_BYTES])
    return found.group(1).decode("ascii") if found else None


class ResponseIndex:
    """The most recent exchanges by response id and by pair id; the oldest are forgotten first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._by_response: OrderedDict[str, Exchange] = OrderedDict()
        self._by_pair: OrderedDict[str, Exchange] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_response) + len(self._by_pair)

    @staticmethod
    def _put(table: OrderedDict[str, Exchange], key: str, exchange: Exchange, capacity: int) -> None:
        table[key] = exchange
        table.move_to_end(key)
        while len(table) > capacity:
            table.popitem(last=False)

    def add(self, exchange: Exchange) -> None:
        if exchange.response_id is not None:
            self._put(self._by_response, exchange.response_id, exchange, self.capacity)
        if exchange.pair_id is not None:
            self._put(self._by_pair, exchange.pair_id, exchange, self.capacity)

    def pair_recorded(self, pair: PairRecord) -> None:
        """A mirrored exchange's pair is recorded: its response id now leads to its pair id too."""
        response_id = pair["primary"].get("response_id")
        exchange = self._by_response.get(response_id) if response_id else None
        if exchange is None:
            exchange = Exchange(segment=(pair.get("tags") or {}).get("segment"), response_id=response_id)
        exchange.pair_id = pair["id"]
        self.add(exchange)

    def find(self, response_id: str | None, pair_id: str | None) -> Exchange | None:
        if response_id is not None and response_id in self._by_response:
            return self._by_response[response_id]
        if pair_id is not None:
            return self._by_pair.get(pair_id)
        return None


class _Invalid(Exception):
    def __init__(self, message: str, code: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _error(status: int, message: str, code: str) -> JSONResponse:
    type_ = "authentication_error" if status == 401 else "invalid_request_error"
    return JSONResponse(openai_error_body(message, type_, code), status)


def _optional_id(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise _Invalid(
            f"{name}: must be the id as the API returned it (letters, digits, '.', '_', ':', '-'; "
            "256 characters at most)",
            "invalid_id",
        )
    return value


def _value(body: dict[str, Any]) -> float | None:
    value = body.get("value")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Invalid("value: must be a finite number, or left out", "invalid_value")
    return float(value)


class ProductionSignals:
    """The proxy's side of feedback and retries: watches primary exchanges, takes feedback posts."""

    def __init__(self, settings: Settings, metrics: Metrics, offload: Offload | None = None) -> None:
        self.settings = settings
        self.config = settings.feedback
        self.metrics = metrics
        self.index = ResponseIndex(settings.feedback.recent_responses)
        self.retries = RetryDetector(settings.retry) if settings.retry.enabled else None
        self.sampler = Sampler(settings)
        # A body over `shadow.offload_bytes` is parsed for retries in this worker process, not on the loop
        # (without one, only smaller bodies are looked at).
        self.offload = offload
        self.offload_bytes = settings.shadow.offload_bytes
        self._checks: set[asyncio.Task[None]] = set()
        self.redactor = Redactor(settings.redaction.pii)
        self.segments = frozenset(settings.tags.segments)
        self.segment_header = settings.tags.segment_header.lower().encode("latin-1")
        self._sink: Sink | None = None

    # ------------------------------------------------------------------ the request path (cheap)

    def watch(self, scope: dict[str, Any], body: bytes | None, send: Send) -> Send:
        """`send` for one proxied request, noting the primary's response id as its first bytes pass;
        the retry check runs after the request has gone to the primary."""
        if scope["method"] != "POST" or scope["path"] not in MIRRORED_ROUTES:
            return send
        if not self.config.enabled and self.retries is None:  # nothing here would use what it notes
            return send
        exchange = Exchange(segment=self._segment(scope["headers"]))
        if self.retries is not None and body is not None and len(body) <= self.retries.max_body_bytes:
            if len(body) <= self.offload_bytes:
                asyncio.get_running_loop().call_soon(self._check_retry, scope, body, exchange)
            elif self.offload is not None:
                task = asyncio.get_running_loop().create_task(self._check_large_retry(scope, body, exchange))
                self._checks.add(task)
                task.add_done_callback(self._checks.discard)
        state = {"peek": True}

        async def observed(message: dict[str, Any]) -> None:
            if state["peek"]:
                self._peek(message, exchange, state)
            await send(message)

        return observed

    def _segment(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        for name, value in headers:
            if name == self.segment_header:
                return value.decode("latin-1")[:64]
        return None

    def _peek(self, message: dict[str, Any], exchange: Exchange, state: dict[str, bool]) -> None:
        if message["type"] == "http.response.start":
            encoded = any(k.lower() == b"content-encoding" for k, _ in message.get("headers", ()))
            state["peek"] = message.get("status") == 200 and not encoded
        elif message["type"] == "http.response.body" and message.get("body"):
            state["peek"] = False
            exchange.response_id = response_id_of(message["body"])
            self.index.add(exchange)

    def _check_retry(self, scope: dict[str, Any], raw_body: bytes, exchange: Exchange) -> None:
        assert self.retries is not None
        try:
            body = self.retries.parse(raw_body)
            key = self.sampler.key(scope["headers"], body) if body is not None else None
            digest = message_digest(scope["path"], body) if body is not None else None
            if key is not None and digest is not None:
                self._observe(key, digest, exchange)
        except Exception:  # off the user's path, but never silent
            log.exception("retry detection failed")

    async def _check_large_retry(self, scope: dict[str, Any], raw_body: bytes, exchange: Exchange) -> None:
        """`_check_retry` for a large body: parsed and digested in the offload worker."""
        assert self.retries is not None and self.offload is not None
        try:
            found = await self.offload.retry_fingerprint(scope["path"], raw_body, self.sampler.field)
            if found is None:
                return
            field_key, digest = found
            key = field_key if self.sampler.kind == "body" else self.sampler.key(scope["headers"], {})
            if key is not None:
                self._observe(key, digest, exchange)
        except OffloadFailed as exc:
            log.warning("retry detection skipped a large request: the offload worker failed (%s)", exc)
        except Exception:  # off the user's path, but never silent
            log.exception("retry detection failed")

    def _observe(self, key: str, digest: bytes, exchange: Exchange) -> None:
        assert self.retries is not None
        earlier = self.retries.observe_digest(key, digest, exchange, time.monotonic())
        if earlier is not None:
            self.metrics.retries.labels(segment=segment_label(earlier.segment, self.segments)).inc()
            if earlier.response_id is not None or earlier.pair_id is not None:
                self._record(earlier, RETRY_SIGNAL, None, None, source="proxy")

    def pair_recorded(self, pair: PairRecord) -> None:
        """A pair handler: ties the pair's id to its primary response id (a noise-floor pair, which shares
        the candidate pair's primary answer, is not what feedback on that answer is about)."""
        if not is_noise_floor(pair):
            self.index.pair_recorded(pair)

    # ------------------------------------------------------------------ the feedback endpoint

    async def endpoint(self, request: Request) -> Response:
        """`POST /shadowtap/v1/feedback`: `{response_id | pair_id, signal, value?, comment?}`."""
        rejected = self._unauthorized(request)
        if rejected is None:
            try:
                body = await self._body(request)
                response = self._accept(body)
                return response
            except _Invalid as exc:
                rejected = _error(exc.status, str(exc), exc.code)
            except ClientDisconnect:
                return Response(status_code=400)
        reason = {401: "unauthorized", 413: "too_large"}.get(rejected.status_code, "invalid")
        self.metrics.feedback_rejected.labels(reason=reason).inc()
        return rejected

    def _unauthorized(self, request: Request) -> JSONResponse | None:
        token = self.config.token
        if token is None:
            return None
        given = request.headers.get("authorization", "")
        scheme, _, credential = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), token.encode()):
            return None
        return _error(
            401,
            "feedback needs the token: send the header Authorization: Bearer <feedback.token>",
            "invalid_token",
        )

    async def _body(self, request: Request) -> dict[str, Any]:
        limit = self.config.max_body_bytes
        too_large = _Invalid(
            f"the feedback body is over feedback.max_body_bytes ({limit} bytes)", "too_large", 413
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        parsed = RetryDetector.parse(b"".join(chunks))
        if parsed is None:
            raise _Invalid("the body must be a JSON object", "invalid_json")
        return parsed

    def _accept(self, body: dict[str, Any]) -> JSONResponse:
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise _Invalid(
                f"{unknown[0]}: unknown field (accepted: {', '.join(sorted(FIELDS))})", "unknown_field"
            )
        response_id, pair_id = _optional_id(body, "response_id"), _optional_id(body, "pair_id")
        if response_id is None and pair_id is None:
            raise _Invalid("response_id: required (the `id` of the answer), or pair_id", "missing_id")
        signal = body.get("signal")
        accepted = self.config.accepted_signals
        if signal not in accepted:
            raise _Invalid(f"signal: must be one of {', '.join(accepted)}, got {signal!r}", "invalid_signal")
        comment = body.get("comment")
        if comment is not None and not isinstance(comment, str):
            raise _Invalid("comment: must be a string, or left out", "invalid_comment")
        if comment is not None and len(comment) > self.config.max_comment_chars:
            raise _Invalid(
                f"comment: longer than feedback.max_comment_chars ({self.config.max_comment_chars} characters)",
                "comment_too_long",
            )
        value = _value(body)
        known = self.index.find(response_id, pair_id)
        exchange = known or Exchange(segment=None, response_id=response_id, pair_id=pair_id)
        record = self._record(
            exchange, str(signal), value, comment, source="client", asked=(response_id, pair_id)
        )
        self.metrics.feedback.labels(
            signal=str(signal), segment=segment_label(exchange.segment, self.segments)
        ).inc()
        return JSONResponse(
            {"object": "shadowtap.feedback", "id": record["id"], "matched": known is not None},
            status_code=202,
        )

    def _record(
        self,
        exchange: Exchange,
        signal: str,
        value: float | None,
        comment: str | None,
        *,
        source: str,
        asked: tuple[str | None, str | None] = (None, None),
    ) -> Feedback:
        record: Feedback = {
            "schema": FEEDBACK_SCHEMA,
            "id": f"{random.getrandbits(128):032x}",
            "ts": utc_now_rfc3339(),
            "response_id": asked[0] or exchange.response_id,
            "pair_id": asked[1] or exchange.pair_id,
            "signal": signal,
            "value": value,
            "comment": self.redactor.text(comment) if comment else comment,
            "segment": exchange.segment,
            "source": "proxy" if source == "proxy" else "client",
        }
        self.sink.submit(record)
        return record

    # ------------------------------------------------------------------ the sink

    @property
    def sink(self) -> Sink:
        if self._sink is None:
            self._sink = self._open_sink()
            self._sink.start()
        return self._sink

    def _open_sink(self) -> Sink:
        sink = self.settings.sink
        data_dir = Path(sink.data_dir)
        if sink.resolved_kind == "kafka":
            from shadowtap.proxy.kafka import KafkaSink

            return KafkaSink(
                sink.kafka,
                self.metrics,
                spill_path=data_dir / "spill" / "feedback.jsonl",
                queue_size=sink.queue_size,
                topic=sink.kafka.feedback_topic,
                name="feedback",
            )
        return JsonlSink(data_dir / "feedback.jsonl", self.metrics, sink.queue_size, name="feedback")

    async def aclose(self) -> None:
        """Stop the retry checks still waiting on the offload worker, then close the feedback sink."""
        for task in list(self._checks):
            task.cancel()
        await asyncio.gather(*self._checks, return_exceptions=True)
        self.close()

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close(self.settings.server.shutdown_grace_s)
            self._sink = None
