"""The simulated model as an OpenAI-compatible ASGI app: chat and text completions and the Responses
API (plain and streamed), embeddings, model cards, the OpenAI error shape, and the faults a real
upstream has. What goes on the wire for each API lives in `completions` and `responses`.

Written on raw ASGI rather than a framework so that faults reach the wire as they would from a broken
server: a reset connection, a body cut off half-way, a stream that stops without `[DONE]`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from shadowtap.testing.completions import CompletionStream, completion_document
from shadowtap.testing.policies import Policy, Reply, count_tokens, default_policy, error_for, openai_error
from shadowtap.testing.responses import ResponseStream, response_document
from shadowtap.testing.script import Api, Choice, Piece, choices_for, count_pieces, cut, pieces

__all__ = ["ReceivedRequest", "SimulatedLLM"]

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

log = logging.getLogger("shadowtap.testing.upstreams")

MAX_RECEIVED = 10_000
ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text",
    "/v1/embeddings": "embedding",
    "/v1/responses": "responses",
}
GARBAGE = b"<html><body>502 Bad Gateway</body></html> {not json"


@dataclass
class ReceivedRequest:
    """One request as it reached the simulated server."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any


class _Exchange:
    """One HTTP exchange on raw ASGI: answer it, pause while watching for the client leaving, or drop it."""

    __slots__ = ("receive", "send", "label", "_left")

    def __init__(self, receive: Receive, send: Send, label: str) -> None:
        self.receive = receive
        self.send = send
        self.label = label
        self._left: asyncio.Future[None] | None = None

    async def _until_disconnect(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass

    @property
    def gone(self) -> bool:
        return self._left is not None and self._left.done()

    async def pause(self, seconds: float | None) -> bool:
        """Wait `seconds` (None: until the client leaves); False when the client has gone."""
        if seconds is not None and seconds <= 0:
            return not self.gone
        if self._left is None:
            self._left = asyncio.ensure_future(self._until_disconnect())
        done, _ = await asyncio.wait({self._left}, timeout=seconds)
        return not done

    def close(self) -> None:
        if self._left is not None and not self._left.done():
            self._left.cancel()

    async def start(
        self, status: int, content_type: bytes, headers: dict[str, str], length: int | None
    ) -> None:
        merged = {"content-type": content_type.decode(), "x-simulated": self.label}
        if length is not None:
            merged["content-length"] = str(length)
        merged.update((k.lower(), v) for k, v in headers.items())
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in merged.items()]
        await self.send({"type": "http.response.start", "status": status, "headers": raw})

    async def write(self, data: bytes, more: bool = True) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(doc, separators=(",", ":")).encode()
        await self.start(status, b"application/json", headers or {}, len(body))
        await self.write(body, more=False)

    async def drop(self, *, reset: bool) -> None:
        """Break the connection: `reset` aborts it with a TCP RST, otherwise it closes after what was sent.

        uvicorn's `send` is a method of the request cycle that owns the transport; under another server,
        raising is the fallback (the server then closes a started response).
        """
        transport = getattr(getattr(self.send, "__self__", None), "transport", None)
        if transport is None or not hasattr(transport, "abort"):
            raise ConnectionAbortedError("simulated connection drop")
        if reset:
            sock = transport.get_extra_info("socket")
            with contextlib.suppress(AttributeError, OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
        await self.pause(5.0)  # let the server see the disconnect before the app returns


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None when the client left before sending all of it."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _lifespan(receive: Receive, send: Send) -> None:
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


class SimulatedLLM:
    """An OpenAI-compatible server whose answers come from `policy`; an ASGI app itself (`app` is self)."""

    def __init__(
        self, name: str = "sim-model", policy: Policy | None = None, *, label: str = "simulated"
    ) -> None:
        self.name = name
        self.label = label
        self.policy: Policy = policy or default_policy
        self.received: list[ReceivedRequest] = []

    @property
    def app(self) -> SimulatedLLM:
        return self

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await _lifespan(receive, send)
        if scope["type"] != "http":
            return
        raw = await _read_body(receive)
        if raw is None:
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self._remember(ReceivedRequest(method, path, headers, raw, body))
        exchange = _Exchange(receive, send, self.label)
        try:
            await self._route(method, path, body, exchange)
        finally:
            exchange.close()

    def _remember(self, request: ReceivedRequest) -> None:
        self.received.append(request)
        if len(self.received) > MAX_RECEIVED:
            del self.received[: len(self.received) - MAX_RECEIVED]

    async def _route(self, method: str, path: str, body: Any, exchange: _Exchange) -> None:
        if method == "GET" and path == "/v1/models":
            return await exchange.json(200, {"object": "list", "data": [self._model_card()]})
        if method == "GET" and path == f"/v1/models/{self.name}":
            return await exchange.json(200, self._model_card())
        if method != "POST" or path not in ROUTES:
            return await exchange.json(404, openai_error(f"Invalid URL ({method} {path})"))
        if not isinstance(body, dict):
            message = "We could not parse the JSON body of your request. (Expected a JSON object.)"
            return await exchange.json(400, openai_error(message))
        try:
            reply = self.policy(path, body)
        except Exception as exc:  # a broken test policy should show up as a readable 500, and in the log
            log.exception("simulated policy failed on %s", path)
            return await exchange.json(500, openai_error(f"simulated policy failed: {exc!r}", "server_error"))
        await self._answer(ROUTES[path], body, reply, exchange)

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": 0, "owned_by": self.label}

    async def _answer(self, kind: str, body: dict[str, Any], reply: Reply, exchange: _Exchange) -> None:
        if reply.fault == "reset":
            return await exchange.drop(reset=True)
        if reply.fault == "hang":
            await exchange.pause(None)
            return
        stream = body.get("stream") is True and kind != "embedding" and reply.status < 400
        if not stream and not await exchange.pause(reply.ttft_s):
            return
        if reply.status >= 400:
            error = reply.error_body or error_for(reply.status)
            return await exchange.json(reply.status, error, reply.headers)
        model = body.get("model") or self.name
        if kind == "embedding":
            return await exchange.json(200, _embeddings(body, model), reply.headers)
        if stream:
            return await _stream(kind, body, reply, model, exchange)
        await _complete(kind, body, reply, model, exchange)


# ------------------------------------------------------------------------------------ answers


class _Encoder(Protocol):
    """A streamed answer's bytes: what opens it, each piece, and what ends it."""

    def opening(self) -> bytes: ...
    def piece(self, piece: Piece) -> bytes: ...
    def closing(self) -> bytes: ...


def _document(kind: str, body: dict[str, Any], model: str, choices: list[Choice], reply: Reply) -> Any:
    if kind == "responses":
        return response_document(body, model, choices[0], reply.reasoning_item)
    return completion_document(
        "chat" if kind == "chat" else "text", body, model, choices, reply.reasoning_field
    )


def _encoder(kind: str, body: dict[str, Any], model: str, choices: list[Choice], reply: Reply) -> _Encoder:
    if kind == "responses":
        return ResponseStream(body, model, choices[0], reply.reasoning_item)
    return CompletionStream("chat" if kind == "chat" else "text", body, model, choices, reply.reasoning_field)


def _api(kind: str) -> Api:
    return "responses" if kind == "responses" else "chat" if kind == "chat" else "text"


async def _complete(kind: str, body: dict[str, Any], reply: Reply, model: str, exchange: _Exchange) -> None:
    """A whole (not streamed) answer, or the fault that replaces it."""
    choices = choices_for(_api(kind), body, reply)
    if reply.fault == "truncate":  # what a server that ran out of tokens answers
        choices = cut(choices, max(1, count_pieces(choices) // 2))
    doc = _document(kind, body, model, choices, reply)
    if reply.fault == "garbage":
        await exchange.start(200, b"application/json", reply.headers, len(GARBAGE))
        return await exchange.write(GARBAGE, more=False)
    if reply.fault == "close_midstream":
        payload = json.dumps(doc, separators=(",", ":")).encode()
        await exchange.start(200, b"application/json", reply.headers, len(payload))
        await exchange.write(payload[: len(payload) // 2])
        return await exchange.drop(reset=False)
    await exchange.json(200, doc, reply.headers)


async def _stream(kind: str, body: dict[str, Any], reply: Reply, model: str, exchange: _Exchange) -> None:
    choices = choices_for(_api(kind), body, reply)
    encoder = _encoder(kind, body, model, choices, reply)
    headers = {"cache-control": "no-cache", **reply.headers}
    await exchange.start(200, b"text/event-stream; charset=utf-8", headers, None)
    if not await exchange.pause(reply.ttft_s):
        return
    if reply.fault == "garbage":
        await exchange.write(b"<html><body>502 Bad Gateway</body></html>\n\n")
        return await exchange.write(b"data: {not json\n\n", more=False)
    opening = encoder.opening()
    if opening:
        await exchange.write(opening)
    if not await _stream_pieces(encoder, pieces(choices), reply, exchange):
        return
    if reply.fault == "close_midstream":
        return await exchange.drop(reset=False)
    await exchange.write(encoder.closing(), more=False)


async def _stream_pieces(encoder: _Encoder, stream: list[Piece], reply: Reply, exchange: _Exchange) -> bool:
    """The answer's pieces, one an event; False when the stream ended early (a fault, or the client
    left)."""
    for i, piece in enumerate(stream):
        if reply.fault == "close_midstream" and i == 2:
            await exchange.drop(reset=False)
            return False
        if reply.fault == "truncate" and i == max(1, len(stream) // 2):
            await exchange.write(b"", more=False)
            return False
        if i and not await exchange.pause(reply.token_delay_s):
            return False
        await exchange.write(encoder.piece(piece))
    return True


# ------------------------------------------------------------------------------------ embeddings


def _embedding(item: Any, size: int, encoding_format: Any) -> Any:
    """A unit vector drawn from a hash of `item`: the same input always gets the same vector."""
    seed = json.dumps(item, sort_keys=True).encode()
    digest = b"".join(hashlib.sha256(seed + bytes([block])).digest() for block in range(math.ceil(size / 32)))
    vector = [b / 127.5 - 1.0 for b in digest[:size]]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    vector = [v / norm for v in vector]
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
    return vector


def _embeddings(body: dict[str, Any], model: str) -> dict[str, Any]:
    inputs = body.get("input")
    if not isinstance(inputs, list) or all(isinstance(x, int) for x in inputs):
        inputs = [inputs]
    dimensions = body.get("dimensions")
    size = dimensions if isinstance(dimensions, int) and 0 < dimensions <= 4096 else 16
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": _embedding(item, size, body.get("encoding_format")),
        }
        for index, item in enumerate(inputs)
    ]
    tokens = sum(
        count_tokens(x) if isinstance(x, str) else len(x) if isinstance(x, list) else 1 for x in inputs
    )
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
