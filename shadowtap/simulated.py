"""Scripted OpenAI-compatible servers: stand-ins for real models, which cannot be had offline.

Used as primary, candidate and judge in tests, by `shadowtap demo` and by the benchmarks. Answers come
from a policy, `(route, body) -> Reply`, that can be swapped at runtime. Everything it serves is
labelled simulated.

    python -m shadowtap.simulated --port 8001 --name primary-sim [--profile echo|slow|refuser]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Fault = Literal[None, "hang", "garbage", "truncate", "close_midstream", "reset"]


@dataclass
class Reply:
    """What the simulated model answers to one request."""

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
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any


def last_user_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in reversed(messages):
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
                return m["content"]
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def default_policy(route: str, body: dict[str, Any]) -> Reply:
    """A short deterministic answer; JSON when the request asks for JSON."""
    words = last_user_text(body).split()[:8]
    answer = "Answer to: " + " ".join(words)
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        return Reply(text=json.dumps({"answer": answer}))
    return Reply(text=answer)


def fixed(reply: Reply) -> Policy:
    return lambda route, body: reply


def keyword_policy(rules: dict[str, Reply], default: Policy = default_policy) -> Policy:
    """The first rule whose keyword appears in the last user message (case-insensitive) answers."""

    def policy(route: str, body: dict[str, Any]) -> Reply:
        text = last_user_text(body).lower()
        for keyword, reply in rules.items():
            if keyword.lower() in text:
                return reply
        return default(route, body)

    return policy


def _tokens(text: str) -> int:
    return max(1, round(len(text.split()) * 1.3)) if text else 0


def _chunks(text: str, words_per_chunk: int = 3) -> list[str]:
    words = text.split(" ")
    return [
        " ".join(words[i : i + words_per_chunk]) + (" " if i + words_per_chunk < len(words) else "")
        for i in range(0, len(words), words_per_chunk)
    ]


class _Abort(Exception):
    """Raised inside a response to make uvicorn drop the connection."""


class SimulatedLLM:
    """An OpenAI-compatible server whose answers come from `policy`."""

    def __init__(
        self, name: str = "sim-model", policy: Policy | None = None, *, label: str = "simulated"
    ) -> None:
        self.name = name
        self.label = label
        self.policy: Policy = policy or default_policy
        self.received: deque[ReceivedRequest] = deque(maxlen=10_000)
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/completions", self._completions, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/v1/{rest:path}", self._not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
            ]
        )

    # -------------------------------------------------------------------------------- plumbing

    async def _receive(self, request: Request) -> tuple[dict[str, Any] | None, Response | None]:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            body = None
        self.received.append(
            ReceivedRequest(
                request.method,
                request.url.path,
                {k.lower(): v for k, v in request.headers.items()},
                raw,
                body,
            )
        )
        if request.method == "POST" and not isinstance(body, dict):
            return None, _error(
                400, "We could not parse the JSON body of your request.", "invalid_request_error"
            )
        return body, None

    async def _answer(self, request: Request, kind: Literal["chat", "text"]) -> Response:
        body, error = await self._receive(request)
        if error is not None:
            return error
        assert body is not None
        route = request.url.path
        reply = self.policy(route, body)
        if reply.fault == "reset":
            raise _Abort()
        if reply.fault == "hang":
            await asyncio.sleep(3600)
        if reply.status >= 400:
            if reply.ttft_s:
                await asyncio.sleep(reply.ttft_s)
            payload = reply.error_body or {
                "error": {"message": f"simulated error {reply.status}", "type": "server_error", "code": None}
            }
            return JSONResponse(payload, reply.status, headers=reply.headers)
        model = body.get("model") or self.name
        created = int(time.time())
        cid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:12]
        usage = {
            "prompt_tokens": _tokens(last_user_text(body)),
            "completion_tokens": _tokens(reply.text),
            "total_tokens": _tokens(last_user_text(body)) + _tokens(reply.text),
        }
        if body.get("stream") is True:
            opts = body.get("stream_options")
            include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
            return StreamingResponse(
                self._stream(reply, kind, cid, created, model, usage if include_usage else None),
                media_type="text/event-stream",
                headers=reply.headers,
            )
        if reply.ttft_s:
            await asyncio.sleep(reply.ttft_s)
        if reply.fault == "garbage":
            return Response(b"<html>502 Bad Gateway</html> not json {", 200, media_type="application/json")
        if kind == "chat":
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": reply.finish_reason,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": reply.text, "logprobs": None, "finish_reason": reply.finish_reason}
            obj = "text_completion"
        doc = {
            "id": cid,
            "object": obj,
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": usage,
        }
        return JSONResponse(doc, headers=reply.headers)

    async def _stream(
        self, reply: Reply, kind: str, cid: str, created: int, model: str, usage: dict[str, int] | None
    ) -> AsyncIterator[bytes]:
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def event(choice: dict[str, Any] | None, extra: dict[str, Any] | None = None) -> bytes:
            doc: dict[str, Any] = {
                "id": cid,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [choice] if choice else [],
            }
            if extra:
                doc.update(extra)
            return b"data: " + json.dumps(doc).encode() + b"\n\n"

        if reply.ttft_s:
            await asyncio.sleep(reply.ttft_s)
        if reply.fault == "garbage":
            yield b"data: {this is not json\n\n"
            yield b"random junk\n\n"
            return
        if kind == "chat":
            yield event({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
        pieces = _chunks(reply.text)
        for i, piece in enumerate(pieces):
            if i and reply.token_delay_s:
                await asyncio.sleep(reply.token_delay_s)
            if reply.fault == "close_midstream" and i >= 2:
                raise _Abort()
            if reply.fault == "truncate" and i >= max(1, len(pieces) // 2):
                return
            if kind == "chat":
                yield event({"index": 0, "delta": {"content": piece}, "finish_reason": None})
            else:
                yield event({"index": 0, "text": piece, "finish_reason": None})
        if reply.fault == "close_midstream":
            raise _Abort()
        final = (
            {"index": 0, "delta": {}, "finish_reason": reply.finish_reason}
            if kind == "chat"
            else {"index": 0, "text": "", "finish_reason": reply.finish_reason}
        )
        yield event(final)
        if usage is not None:
            yield event(None, {"usage": usage})
        yield b"data: [DONE]\n\n"

    async def _chat(self, request: Request) -> Response:
        return await self._answer(request, "chat")

    async def _completions(self, request: Request) -> Response:
        return await self._answer(request, "text")

    async def _models(self, request: Request) -> Response:
        await self._receive(request)
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": self.name, "object": "model", "created": 0, "owned_by": self.label}],
            }
        )

    async def _embeddings(self, request: Request) -> Response:
        body, error = await self._receive(request)
        if error is not None:
            return error
        assert body is not None
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": [((hash(str(x)) >> s) % 1000) / 1000 for s in range(0, 32, 4)],
            }
            for i, x in enumerate(items)
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body.get("model") or self.name,
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )

    async def _not_found(self, request: Request) -> Response:
        await self._receive(request)
        return _error(404, f"Unknown route {request.url.path}", "invalid_request_error")


def _error(status: int, message: str, type_: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": None, "code": None}}, status)


# ------------------------------------------------------------------------------------ serving


class ServerHandle:
    """A uvicorn server running in a daemon thread on loopback."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, port: int, host: str) -> None:
        self.server = server
        self.thread = thread
        self.port = port
        self.url = f"http://{host}:{port}"
        self.base_url = self.url + "/v1"

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
) -> ServerHandle:
    """Start `app` under uvicorn on a pre-bound loopback socket; return once it accepts connections."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="auto",
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  (not the main thread)

    def run() -> None:
        with contextlib.suppress(Exception):
            asyncio.run(server.serve(sockets=[sock]))

    thread = threading.Thread(target=run, name=f"uvicorn-{sock.getsockname()[1]}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.005)
    return ServerHandle(server, thread, sock.getsockname()[1], host)


@contextlib.contextmanager
def serving(app: Any, **kwargs: Any) -> Iterator[ServerHandle]:
    handle = serve_in_thread(app, **kwargs)
    try:
        yield handle
    finally:
        handle.stop()


PROFILES: dict[str, Policy] = {
    "echo": default_policy,
    "slow": lambda route, body: Reply(
        text=default_policy(route, body).text, ttft_s=0.02, token_delay_s=0.002
    ),
    "refuser": fixed(Reply(text="I'm sorry, but I can't help with that request.")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a SIMULATED OpenAI-compatible model on loopback.")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--name", default="sim-model")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="echo")
    args = parser.parse_args()
    sim = SimulatedLLM(args.name, PROFILES[args.profile])
    print(f"SIMULATED model {args.name!r} ({args.profile}) on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(sim.app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
