"""The pair record: assembling each side's answer (plain JSON or an SSE stream) and building the record.

Assembly happens beside the user's stream, never in front of it: the proxy hands every chunk to the
client first and feeds a copy to a `SideAssembler`, which parses it afterwards. The copy is capped
(`shadow.max_record_bytes` of decoded bytes); past the cap a side is recorded as `truncated`.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from shadowtap.config import ShadowSettings
from shadowtap.records import PAIR_SCHEMA, PairRecord, SideError, SideRecord

# The record keeps this many decoded bytes of a side unless told otherwise: the config's default.
MAX_RECORD_BYTES: int = ShadowSettings.model_fields["max_record_bytes"].default


@dataclass(slots=True)
class SideResult:
    """What one upstream answered, as the pair record's `primary`/`candidate` object."""

    model: str | None = None
    status: int | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    text: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: SideError | None = None
    truncated: bool = False  # the recorded body hit its cap; the rest of the answer was not kept

    def to_dict(self) -> SideRecord:
        return {
            "model": self.model,
            "status": self.status,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 3),
            "text": self.text,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
            "error": self.error,
            "truncated": self.truncated,
        }

    def fail(self, kind: str, message: str) -> SideResult:
        if self.error is None:
            self.error = {"kind": kind, "message": message[:500]}
        return self


class _Decoder(Protocol):
    """A streaming decoder of a content coding (what `zlib.decompressobj` returns)."""

    def decompress(self, data: bytes, /, max_length: int = 0) -> bytes: ...


def _decompressor(content_encoding: str | None) -> _Decoder | None:
    enc = (content_encoding or "").strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if enc == "deflate":
        return zlib.decompressobj()
    raise ValueError(f"content-encoding {enc!r} is not decoded for recording")


@dataclass(slots=True)
class SideAssembler:
    """Collects an upstream's answer bytes and turns them into a `SideResult`.

    `feed` is cheap (it only keeps references and, for streams, notes when content first arrived);
    parsing is done once, in `finish`. At most `max_bytes` decoded bytes are kept (a gzip or deflate body
    is never inflated much past them); past them the side is `truncated` and `feed` keeps nothing more.
    """

    streaming: bool
    started: float
    content_encoding: str | None = None
    max_bytes: int = MAX_RECORD_BYTES
    chunks: list[bytes] = field(default_factory=list)
    first_chunk_at: float | None = None
    truncated: bool = False
    _kept: int = 0
    _sse_buffer: bytes = b""
    _first_content_at: float | None = None
    _decoder: _Decoder | None = None

    def __post_init__(self) -> None:
        self._decoder = _decompressor(self.content_encoding)

    def set_content_encoding(self, content_encoding: str) -> None:
        """Decode what `feed` gets from now on (gzip, deflate); raises ValueError for other codings."""
        self.content_encoding = content_encoding
        self._decoder = _decompressor(content_encoding)

    def feed(self, chunk: bytes, now: float) -> None:
        if not chunk or self.truncated:
            return
        room = self.max_bytes - self._kept
        if self._decoder is not None:
            chunk = self._decoder.decompress(chunk, room + 1)  # one byte past the room tells it is full
        if len(chunk) > room:
            chunk = chunk[:room]
            self.truncated = True
            self._decoder = None
        self._kept += len(chunk)
        self.chunks.append(chunk)
        if self.first_chunk_at is None:
            self.first_chunk_at = now
        if self.streaming and self._first_content_at is None:
            self._sse_buffer += chunk
            self._scan_for_first_content(now)

    def _scan_for_first_content(self, now: float) -> None:
        # Time to first token = the first event that carries output text, not the role-only chunk.
        while b"\n" in self._sse_buffer:
            line, _, self._sse_buffer = self._sse_buffer.partition(b"\n")
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            event = _sse_event(line[5:].strip())
            if event is not None and _event_text(event):
                self._first_content_at = now
                self._sse_buffer = b""
                return

    def finish(self, result: SideResult, ended: float, route: str) -> SideResult:
        result.latency_ms = (ended - self.started) * 1000.0
        result.truncated = self.truncated
        body = b"".join(self.chunks)
        if self._first_content_at is not None:
            result.ttft_ms = (self._first_content_at - self.started) * 1000.0
        if result.status is not None and result.status >= 400:
            result.text = None
            detail = _error_message(body)
            return result.fail(_http_error_kind(result.status), f"HTTP {result.status}: {detail}")
        if self.streaming:
            # Cut at the cap: the events whole before it are the record; the one it cut is not.
            return _parse_sse(body[: body.rfind(b"\n") + 1] if self.truncated else body, result, route)
        if self.truncated:  # a cut JSON document cannot be parsed: what came is kept as it came
            result.text = body.decode("utf-8", "replace")
            return result
        return _parse_json(body, result, route)


def _http_error_kind(status: int) -> str:
    if status == 429:
        return "http_429"
    return "http_5xx" if status >= 500 else "http_4xx"


def _error_message(body: bytes) -> str:
    try:
        doc = json.loads(body)
        msg = doc.get("error", {}).get("message") if isinstance(doc.get("error"), dict) else doc.get("error")
        if msg:
            return str(msg)[:300]
    except (ValueError, AttributeError):
        pass
    return body[:300].decode("utf-8", "replace")


def _event_text(event: Any) -> str:
    try:
        choice = event["choices"][0]
    except (KeyError, IndexError, TypeError):
        return ""
    if not isinstance(choice, dict):
        return ""
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta.get("content") or ""
    return choice.get("text") or ""


def _parse_json(body: bytes, result: SideResult, route: str) -> SideResult:
    try:
        doc = json.loads(body)
        choice = doc["choices"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        snippet = body[:120].decode("utf-8", "replace")
        return result.fail("invalid_response", f"not an OpenAI completion: {snippet!r}")
    result.model = doc.get("model") or result.model
    result.usage = doc.get("usage") if isinstance(doc.get("usage"), dict) else None
    if isinstance(choice, dict):
        result.finish_reason = choice.get("finish_reason")
        message = choice.get("message")
        if isinstance(message, dict):
            content = message.get("content")
            result.text = (
                content if isinstance(content, str) else ("" if content is None else json.dumps(content))
            )
        else:
            result.text = choice.get("text")
    return result


def _sse_event(payload: bytes) -> dict[str, Any] | None:
    """The JSON object an SSE `data:` line carries, or None (`[DONE]`, not JSON, not an object)."""
    try:
        event = json.loads(payload)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _parse_sse(body: bytes, result: SideResult, route: str) -> SideResult:
    parts: list[str] = []
    done = False
    bad = 0
    for raw in body.split(b"\n"):
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            done = True
            continue
        event = _sse_event(payload)
        if event is None:
            bad += 1
            continue
        _take_event(event, payload, result, parts)
    result.text = "".join(parts)
    if bad and not parts:
        return result.fail("invalid_response", "stream carried no parseable events")
    if not done and result.finish_reason is None and not result.truncated:
        return result.fail("truncated_stream", "stream ended without a finish_reason or [DONE]")
    return result


def _take_event(event: dict[str, Any], payload: bytes, result: SideResult, parts: list[str]) -> None:
    """One stream event into the side: an error, the model, usage, and the first choice's text."""
    if event.get("error"):
        result.fail("stream_error", _error_message(payload))
    result.model = event.get("model") or result.model
    if isinstance(event.get("usage"), dict):
        result.usage = event["usage"]
    choices = event.get("choices") or []
    if choices and isinstance(choices[0], dict):
        parts.append(_event_text(event))
        if choices[0].get("finish_reason"):
            result.finish_reason = choices[0]["finish_reason"]


def length_bucket(chars: int, bounds: list[int]) -> str:
    """Input-length bucket label, e.g. `0-500`, `500-2000`, `8000+`."""
    low = 0
    for high in bounds:
        if chars <= high:
            return f"{low}-{high}"
        low = high
    return f"{low}+"


def build_pair(
    *,
    pair_id: str,
    ts: str,
    route: str,
    stream: bool,
    request: dict[str, Any],
    tags: dict[str, str],
    primary: SideResult,
    candidate: SideResult,
) -> PairRecord:
    return {
        "schema": PAIR_SCHEMA,
        "id": pair_id,
        "ts": ts,
        "route": route,
        "stream": stream,
        "request": request,
        "tags": tags,
        "primary": primary.to_dict(),
        "candidate": candidate.to_dict(),
    }
