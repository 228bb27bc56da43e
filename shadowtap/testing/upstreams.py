"""Scripted OpenAI-compatible servers: stand-ins for real models, which cannot be had offline.

Used as primary, candidate and judge upstreams in tests, by `shadowtap demo` and by the benchmarks.
Answers come from a policy, `(route, body) -> Reply`, that can be swapped at runtime; everything served
is labelled simulated. `serve_in_thread` runs any ASGI app (this one, or the proxy) on loopback.

    python -m shadowtap.testing.upstreams --port 8001 --name primary-sim [--profile echo|slow|refuser]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette

from shadowtap.request_text import content_text, last_user_text

Fault = Literal[None, "hang", "garbage", "truncate", "close_midstream", "reset"]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

log = logging.getLogger("shadowtap.testing.upstreams")

WORDS_PER_CHUNK = 3
MAX_RECEIVED = 10_000


@dataclass
class Reply:
    """What the simulated model answers to one request.

    `ttft_s` delays the first chunk (the whole answer when not streamed); `token_delay_s` spaces the
    chunks. Faults: "hang" never answers; "garbage" is a 200 that does not parse; "truncate" ends a
    stream cleanly but without finish_reason or [DONE] (a plain answer gets half the text and "length");
    "close_midstream" drops the connection part-way through the body; "reset" drops it before any reply.
    """

    text: str = "Hello!"
    status: int = 200
    error_body: dict[str, Any] | None = None
    ttft_s: float = 0.0
    token_delay_s: float = 0.0
    finish_reason: str = "stop"
    fault: Fault = None
    headers: dict[str, str] = field(default_factory=dict)


Policy = Callable[[str, dict[str, Any]], Reply]


@dataclass
class ReceivedRequest:
    """One request as it reached the simulated server."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any


def openai_error(
    message: str, type_: str = "invalid_request_error", code: str | None = None
) -> dict[str, Any]:
    """An error body in the shape OpenAI's SDKs parse."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


_STANDARD_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request (simulated).", "invalid_request_error", None),
    401: ("Incorrect API key provided (simulated).", "authentication_error", "invalid_api_key"),
    403: ("You are not allowed to use this model (simulated).", "permission_error", None),
    404: ("The model does not exist (simulated).", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests (simulated).", "requests", "rate_limit_exceeded"),
}


def _error_for(status: int) -> dict[str, Any]:
    message, type_, code = _STANDARD_ERRORS.get(
        status, ("The server had an error while processing your request (simulated).", "server_error", None)
    )
    return openai_error(message, type_, code)


# ------------------------------------------------------------------------------------ policies


def _prompt_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        return " ".join(content_text(m.get("content"), sep=" ") for m in messages if isinstance(m, dict))
    return last_user_text(body)


def count_tokens(text: str) -> int:
    """A token estimate good enough for usage fields: about 1.3 tokens a word."""
    return math.ceil(len(text.split()) * 1.3)


def _instance(schema: Any, answer: str) -> Any:
    """A small value that satisfies the common parts of a JSON schema, so format checks have a target."""
    if not isinstance(schema, dict):
        return {"answer": answer}
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return _instance(schema[key][0], answer)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict) or not properties:
            return {"answer": answer}
        wanted = schema.get("required") or list(properties)
        return {name: _instance(properties.get(name, {}), answer) for name in wanted}
    if kind == "array":
        return [_instance(schema.get("items", {}), answer) for _ in range(schema.get("minItems", 0))]
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    return {"string": answer, "boolean": True, "null": None}.get(kind, answer)


def default_policy(route: str, body: dict[str, Any]) -> Reply:
    """A short deterministic answer to the last user message; JSON when the request asks for JSON."""
    answer = "Answer to: " + " ".join(last_user_text(body).split()[:8])
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return Reply(text=json.dumps({"answer": answer}))
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        return Reply(
            text=json.dumps(_instance(spec.get("schema") if isinstance(spec, dict) else None, answer))
        )
    return Reply(text=answer)


def fixed(reply: Reply) -> Policy:
    """Every request gets `reply`."""
    return lambda route, body: reply


def keyword_policy(rules: dict[str, Reply], default: Policy = default_policy) -> Policy:
    """The first rule whose keyword appears in the last user message (case-insensitive) answers."""
    lowered = [(keyword.lower(), reply) for keyword, reply in rules.items()]

    def policy(route: str, body: dict[str, Any]) -> Reply:
        text = last_user_text(body).lower()
        return next((reply for keyword, reply in lowered if keyword in text), None) or default(route, body)

    return policy


def sequence(*replies: Reply) -> Policy:
    """Replies in order, one per request; the last one repeats (e.g. fail once, then answer)."""
    if not replies:
        raise ValueError("sequence() needs at least one reply")
    served = 0

    def policy(route: str, body: dict[str, Any]) -> Reply:
        nonlocal served
        served += 1
        return replies[min(served, len(replies)) - 1]

    return policy


def split_chunks(text: str, words_per_chunk: int = WORDS_PER_CHUNK) -> list[str]:
    """Stream pieces of a few words each; joined they give back `text` exactly."""
    words = re.findall(r"\S+\s*", text)
    if words:
        words[0] = text[: len(text) - len(text.lstrip())] + words[0]
    elif text:
        words = [text]
    return ["".join(words[i : i + words_per_chunk]) for i in range(0, len(words), words_per_chunk)]


# ------------------------------------------------------------------------------------ the server


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
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.received.append(ReceivedRequest(method, path, headers, raw, body))
        if len(self.received) > MAX_RECEIVED:
            del self.received[: len(self.received) - MAX_RECEIVED]
        exchange = _Exchange(receive, send, self.label)
        try:
            await self._route(method, path, body, exchange)
        finally:
            exchange.close()

    async def _route(self, method: str, path: str, body: Any, exchange: _Exchange) -> None:
        if method == "GET" and path == "/v1/models":
            return await exchange.json(200, {"object": "list", "data": [self._model_card()]})
        if method == "GET" and path == f"/v1/models/{self.name}":
            return await exchange.json(200, self._model_card())
        kind = {"/v1/chat/completions": "chat", "/v1/completions": "text", "/v1/embeddings": "embedding"}
        if method != "POST" or path not in kind:
            return await exchange.json(404, openai_error(f"Invalid URL ({method} {path})"))
        if not isinstance(body, dict):
            message = "We could not parse the JSON body of your request. (Expected a JSON object.)"
            return await exchange.json(400, openai_error(message))
        try:
            reply = self.policy(path, body)
        except Exception as exc:  # a broken test policy should show up as a readable 500, and in the log
            log.exception("simulated policy failed on %s", path)
            return await exchange.json(500, openai_error(f"simulated policy failed: {exc!r}", "server_error"))
        await self._answer(kind[path], body, reply, exchange)

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
            return await exchange.json(
                reply.status, reply.error_body or _error_for(reply.status), reply.headers
            )
        model = body.get("model") or self.name
        if kind == "embedding":
            return await exchange.json(200, _embeddings(body, model), reply.headers)
        if stream:
            return await self._stream(kind, body, reply, model, exchange)
        text, finish_reason = reply.text, reply.finish_reason
        if reply.fault == "truncate":  # what a server that ran out of tokens answers
            pieces = split_chunks(text)
            text, finish_reason = "".join(pieces[: max(1, len(pieces) // 2)]), "length"
        if kind == "chat":
            choice = _choice("message", {"role": "assistant", "content": text}, finish_reason)
        else:
            choice = _choice("text", text, finish_reason)
        doc = {**_envelope(kind, model, stream=False), "choices": [choice], "usage": _usage(body, text)}
        if reply.fault == "garbage":
            junk = b"<html><body>502 Bad Gateway</body></html> {not json"
            await exchange.start(200, b"application/json", reply.headers, len(junk))
            return await exchange.write(junk, more=False)
        if reply.fault == "close_midstream":
            payload = json.dumps(doc, separators=(",", ":")).encode()
            await exchange.start(200, b"application/json", reply.headers, len(payload))
            await exchange.write(payload[: len(payload) // 2])
            return await exchange.drop(reset=False)
        await exchange.json(200, doc, reply.headers)

    async def _stream(
        self, kind: str, body: dict[str, Any], reply: Reply, model: str, exchange: _Exchange
    ) -> None:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        head = _envelope(kind, model, stream=True)
        if include_usage:
            head["usage"] = None

        def event(choice: dict[str, Any]) -> bytes:
            return _sse({**head, "choices": [choice]})

        await exchange.start(
            200, b"text/event-stream; charset=utf-8", {"cache-control": "no-cache", **reply.headers}, None
        )
        if not await exchange.pause(reply.ttft_s):
            return
        if reply.fault == "garbage":
            await exchange.write(b"<html><body>502 Bad Gateway</body></html>\n\n")
            return await exchange.write(b"data: {not json\n\n", more=False)
        chat = kind == "chat"
        if chat:
            await exchange.write(event(_choice("delta", {"role": "assistant", "content": ""})))
        pieces = split_chunks(reply.text)
        for i, piece in enumerate(pieces):
            if reply.fault == "close_midstream" and i == 2:
                return await exchange.drop(reset=False)
            if reply.fault == "truncate" and i == max(1, len(pieces) // 2):
                return await exchange.write(b"", more=False)
            if i and not await exchange.pause(reply.token_delay_s):
                return
            await exchange.write(
                event(_choice("delta", {"content": piece}) if chat else _choice("text", piece))
            )
        if reply.fault == "close_midstream":
            return await exchange.drop(reset=False)
        final = (
            _choice("delta", {}, reply.finish_reason) if chat else _choice("text", "", reply.finish_reason)
        )
        await exchange.write(event(final))
        if include_usage:
            await exchange.write(_sse({**head, "choices": [], "usage": _usage(body, reply.text)}))
        await exchange.write(b"data: [DONE]\n\n", more=False)


def _choice(key: str, value: Any, finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": 0, key: value, "logprobs": None, "finish_reason": finish_reason}


def _envelope(kind: str, model: str, *, stream: bool) -> dict[str, Any]:
    if kind == "chat":
        prefix, obj = "chatcmpl-", "chat.completion.chunk" if stream else "chat.completion"
    else:
        prefix, obj = "cmpl-", "text_completion"
    return {"id": prefix + uuid.uuid4().hex[:24], "object": obj, "created": int(time.time()), "model": model}


def _usage(body: dict[str, Any], text: str) -> dict[str, int]:
    prompt, completion = count_tokens(_prompt_text(body)), count_tokens(text)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(doc: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


def _embeddings(body: dict[str, Any], model: str) -> dict[str, Any]:
    """Unit vectors drawn from a hash of each input: the same input always gets the same vector."""
    inputs = body.get("input")
    if not isinstance(inputs, list) or all(isinstance(x, int) for x in inputs):
        inputs = [inputs]
    dimensions = body.get("dimensions")
    size = dimensions if isinstance(dimensions, int) and 0 < dimensions <= 4096 else 16
    data = []
    for index, item in enumerate(inputs):
        seed = json.dumps(item, sort_keys=True).encode()
        digest = b"".join(
            hashlib.sha256(seed + bytes([block])).digest() for block in range(math.ceil(size / 32))
        )
        vector = [b / 127.5 - 1.0 for b in digest[:size]]
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        vector = [v / norm for v in vector]
        embedding: Any = vector
        if body.get("encoding_format") == "base64":
            embedding = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(
        count_tokens(x) if isinstance(x, str) else len(x) if isinstance(x, list) else 1 for x in inputs
    )
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# ------------------------------------------------------------------------------------ serving


class ServerHandle:
    """A uvicorn server running in a daemon thread on loopback; a context manager that stops it."""

    def __init__(
        self, server: uvicorn.Server, thread: threading.Thread, host: str, port: int, scheme: str = "http"
    ) -> None:
        self.server = server
        self.thread = thread
        self.port = port
        self.url = f"{scheme}://{host}:{port}"
        self.base_url = self.url + "/v1"

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful shutdown (in-flight requests finish, lifespan shutdown runs); forced past `timeout`."""
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(5.0)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _lifespan_mode(app: Any) -> Literal["on", "auto"]:
    """Apps known to speak the lifespan protocol get "on", so a failing start-up fails loudly."""
    return "on" if isinstance(app, Starlette | SimulatedLLM) else "auto"


def serve_in_thread(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    lifespan: Literal["on", "off", "auto"] | None = None,
    start_timeout_s: float = 15.0,
    graceful_shutdown_s: float = 5.0,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> ServerHandle:
    """Run `app` under uvicorn in a daemon thread with its own event loop; return once it accepts connections.

    The socket is bound here (port 0 picks a free one), so the port is known and held before start-up.
    With a certificate and key it serves https.
    """
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level=log_level,
        log_config=None,  # leave the process's logging alone; uvicorn's records reach the root logger
        access_log=False,
        lifespan=lifespan or _lifespan_mode(app),
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=graceful_shutdown_s,  # type: ignore[arg-type]  (a float works)
        http=getattr(app, "http_protocol", "auto"),  # the proxy brings its own (proxy/protocol.py)
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported by the waiting caller below
            failure.append(exc)
        finally:
            sock.close()

    thread = threading.Thread(target=run, name=f"uvicorn-{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            reason = repr(failure[0]) if failure else "see the log for uvicorn's reason"
            raise RuntimeError(f"server for {app!r} did not start on {host}:{bound_port}: {reason}")
        time.sleep(0.002)
    return ServerHandle(server, thread, host, bound_port, "https" if ssl_certfile else "http")


# ------------------------------------------------------------------------------------ command line


def _slow(route: str, body: dict[str, Any]) -> Reply:
    return Reply(text=default_policy(route, body).text, ttft_s=0.02, token_delay_s=0.002)


PROFILES: dict[str, Policy] = {
    "echo": default_policy,
    "slow": _slow,
    "refuser": fixed(Reply(text="I'm sorry, but I can't help with that request.")),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Serve a SIMULATED OpenAI-compatible model (not a real LLM)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="0 picks a free port")
    parser.add_argument("--name", default="sim-model", help="the model name it reports")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="echo")
    args = parser.parse_args(argv)
    sock = _bind(args.host, args.port)
    url = f"http://{args.host}:{sock.getsockname()[1]}"
    print(f"SIMULATED model {args.name!r} (profile {args.profile}, not a real LLM): {url}/v1", flush=True)
    sim = SimulatedLLM(args.name, PROFILES[args.profile])
    config = uvicorn.Config(sim, log_level="warning", access_log=False, lifespan="on", server_header=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
