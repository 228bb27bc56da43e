"""The proxy's routes: `/v1/*` passes through to the primary byte for byte; two routes are also mirrored.

Nothing here waits on the shadow, the sink or a scorer: the shadow decision is a cheap parse and a
`put_nowait`, and the primary's answer is relayed as it arrives, chunk by chunk for streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from shadowtap.config import Settings
from shadowtap.errors import PrimaryStreamBroken, openai_error_body
from shadowtap.metrics import Metrics, route_label
from shadowtap.proxy.feedback import FEEDBACK_PATH, ProductionSignals
from shadowtap.proxy.logs import ThrottledLog
from shadowtap.proxy.offload import Offload
from shadowtap.proxy.paths import canonical_path
from shadowtap.proxy.protocol import ProxyHttpProtocol
from shadowtap.proxy.record import SideAssembler, SideResult
from shadowtap.proxy.relay import ClientWatch, RequestClock, StreamRelay, TimedResponse
from shadowtap.proxy.shadow import MIRRORED_ROUTES, PairHandler, ShadowDispatcher, ShadowJob
from shadowtap.proxy.transport import Exchange, UpstreamResponse
from shadowtap.proxy.upstream import Upstream, forward_headers, response_headers

log = logging.getLogger("shadowtap.proxy")

# A plain body up to this size is read whole and sent in one write with its head; a larger one, or one
# of unknown length (a file download, generated audio), is relayed as it arrives, like a stream.
BUFFERED_BODY_MAX = 1 << 20
# Methods whose request body has no meaning (RFC 9110 §9.3): the primary gets them without one.
BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def openai_error(status: int, message: str, type_: str, code: str) -> JSONResponse:
    """An error response an OpenAI SDK parses (`{"error": {message, type, param, code}}`)."""
    return JSONResponse(openai_error_body(message, type_, code), status)


class Proxy:
    """Holds the upstreams, the dispatcher and the metrics for the app's lifetime."""

    def __init__(self, settings: Settings, metrics: Metrics, handlers: Sequence[PairHandler]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.primary = Upstream("primary", settings.primary)
        self.candidate = Upstream("candidate", settings.candidate) if settings.candidate.url else None
        # Large request bodies are parsed in this worker process, for mirroring and for retry detection.
        self.offload = Offload(settings.redaction.pii)
        self.signals = ProductionSignals(settings, metrics, self.offload)  # feedback and retries
        self.shadow = (
            ShadowDispatcher(
                settings,
                self.candidate,
                metrics,
                [*handlers, self.signals.pair_recorded],
                primary=self.primary,
                offload=self.offload,
            )
            if self.candidate is not None
            else None
        )
        self.in_flight = 0
        self.log_once = ThrottledLog(log)  # for what clients can cause at any rate

    async def start(self) -> None:
        if self.shadow is not None:
            await self.shadow.start()

    async def close(self) -> None:
        if self.shadow is not None:
            await self.shadow.close(self.settings.server.shutdown_grace_s)
        await self.primary.aclose()
        if self.candidate is not None:
            await self.candidate.aclose()
        await self.signals.aclose()
        await self.offload.aclose()

    async def handle(
        self,
        scope: dict[str, Any],
        body: bytes,
        rest: AsyncIterator[bytes] | None = None,
        clock: RequestClock | None = None,
    ) -> Response | StreamRelay:
        """Pass one request through to the primary and its answer back; mirror it when it is sampled.

        `body` is the request body, or, when `rest` is given, its first part: a body over the mirroring
        limit is streamed to the primary as it arrives (and never mirrored)."""
        t0 = time.perf_counter()
        path = scope["path"]
        route = route_label(path)
        method = scope["method"]
        target = canonical_path(scope.get("raw_path"), path)
        if target is None:
            return self._rejected_path()
        forwarded, stream = self._body_to_forward(method, body, rest)
        headers = self._headers_to_forward(scope)

        # The primary's request goes out first; the shadow decision (a JSON parse and a few lookups) is
        # made while the primary works, not before.
        t_sent = time.perf_counter()
        exchange: Exchange | Exception
        try:
            exchange = await self._start_primary(method, target, headers, forwarded, scope, stream)
        except (asyncio.CancelledError, ClientDisconnect):  # the client left (mid-body, or while connecting)
            self._client_left(route, None, t_sent)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a 502/504 for the user
            exchange = exc
        job = self._mirror(path, route, scope["headers"], body) if method == "POST" else None
        if isinstance(exchange, Exception):
            return self._primary_failed(exchange, route, job, t0, t_sent)
        try:
            upstream = await exchange.response()
        except asyncio.CancelledError:
            self._client_left(route, job, t_sent)
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a 502/504 for the user
            return self._primary_failed(exc, route, job, t0, t_sent)

        t_headers = time.perf_counter()
        is_stream = (upstream.header(b"content-type") or b"").startswith(b"text/event-stream")
        self.metrics.requests.labels(route=route, side="primary", status=str(upstream.status)).inc()
        assembler = self._assembler(upstream, job, is_stream, t_sent) if job is not None else None
        if is_stream or _large_or_unsized(upstream):
            return self._relayed(upstream, route, job, assembler, t0, t_sent, t_headers, clock)

        try:
            chunks = [chunk async for chunk in upstream.aiter_raw()]
        except httpx.HTTPError as exc:
            await upstream.aclose()
            return self._primary_failed(exc, route, job, t0, t_sent)
        except asyncio.CancelledError:
            self._client_left(route, job, t_sent)
            raise
        finally:
            await upstream.aclose()
        return self._buffered(upstream, b"".join(chunks), route, job, assembler, t0, t_sent, clock)

    async def _start_primary(
        self,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
        scope: dict[str, Any],
        stream: AsyncIterator[bytes] | None,
    ) -> Exchange:
        query = scope.get("query_string", b"")
        if stream is None:
            assert body is not None
            return await self.primary.start(method, target, headers, body, query)
        # A streamed body keeps the client's framing: its Content-Length when it declared one (the
        # server has already held it to that length), chunked otherwise.
        length = _header(scope["headers"], b"content-length")
        if length is not None:
            headers = [*headers, (b"content-length", length)]
        primary = self.primary
        url = primary.target(target, query)
        return await primary.transport.start(method, url, headers, None, primary.timeouts, stream=stream)

    def _body_to_forward(
        self, method: str, body: bytes, rest: AsyncIterator[bytes] | None
    ) -> tuple[bytes | None, AsyncIterator[bytes] | None]:
        """The body as the primary gets it: whole, or streamed (None and the stream); none at all for GET,
        HEAD, OPTIONS and TRACE, whose bodies a primary may ignore and then read as the next request on
        the connection (the rest of such a body is read and thrown away by the server)."""
        if method in BODYLESS_METHODS:
            if body:
                self.metrics.request_bodies_dropped.labels(method=method).inc()
            return b"", None
        if rest is None:
            return body, None
        return None, _prefixed(body, rest)

    def _headers_to_forward(self, scope: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        """The client's headers as the primary gets them: hop-by-hop ones gone, X-Forwarded-For as
        `server.forwarded_for` says (the client's address appended, by default)."""
        headers = forward_headers(scope["headers"])
        mode = self.settings.server.forwarded_for
        if mode == "pass":
            return headers
        sent = [v for k, v in headers if k.lower() == b"x-forwarded-for"]
        if sent:
            headers = [(k, v) for k, v in headers if k.lower() != b"x-forwarded-for"]
        client = scope.get("client")
        if mode == "append" and client:
            headers.append((b"x-forwarded-for", b", ".join([*sent, client[0].encode("latin-1")])))
        return headers

    def _rejected_path(self) -> Response:
        self.metrics.requests_rejected.labels(reason="path").inc()
        return openai_error(
            400,
            "The request path leaves /v1/ or holds an escaped separator or dot segment; it was not forwarded.",
            "invalid_request_error",
            "invalid_path",
        )

    def _mirror(
        self, path: str, route: str, raw_headers: list[tuple[bytes, bytes]], body: bytes
    ) -> ShadowJob | None:
        """The shadow job for a POST, when its path is mirrored and it is sampled and queued."""
        if self.shadow is None or path not in MIRRORED_ROUTES:
            return None
        try:
            job = self.shadow.consider(route, raw_headers, body)
            if job is not None and not self.shadow.submit(job):
                return None
            return job
        except Exception:  # a fault on the shadow side must never reach the user
            log.exception("shadow dispatch failed; serving the primary only")
            self.metrics.shadow_dropped.labels(route=route, reason="internal_error").inc()
            return None

    def _assembler(
        self, upstream: UpstreamResponse, job: ShadowJob, is_stream: bool, t_sent: float
    ) -> SideAssembler | None:
        """What assembles the primary's side of the record from a copy of its body (None: it cannot)."""
        try:
            encoding = upstream.header(b"content-encoding")
            return SideAssembler(
                streaming=is_stream,
                started=t_sent,
                content_encoding=encoding.decode("latin-1") if encoding else None,
                max_bytes=self.settings.shadow.max_record_bytes,  # the client still gets every byte
                parse_inline_bytes=self.settings.shadow.offload_bytes,  # larger: parsed off the loop
            )
        except ValueError as exc:
            self._resolve(job, SideResult(status=upstream.status).fail("undecodable", str(exc)))
            return None

    def _relayed(
        self,
        upstream: UpstreamResponse,
        route: str,
        job: ShadowJob | None,
        assembler: SideAssembler | None,
        t0: float,
        t_sent: float,
        t_headers: float,
        clock: RequestClock | None,
    ) -> StreamRelay:
        """A response that relays the primary's body as it arrives (a stream, or a large body)."""
        response = StreamRelay(
            self._relay(upstream, route, job, assembler, t_sent, clock),
            upstream.status,
            response_headers(upstream.headers),
            upstream.aclose,
        )
        # The proxy's own time: before the request went out, and from the primary's headers to here.
        self.metrics.overhead.labels(route=route).observe((t_sent - t0) + (time.perf_counter() - t_headers))
        return response

    def _buffered(
        self,
        upstream: UpstreamResponse,
        content: bytes,
        route: str,
        job: ShadowJob | None,
        assembler: SideAssembler | None,
        t0: float,
        t_sent: float,
        clock: RequestClock | None,
    ) -> Response:
        """The primary's whole body, read, as the client's response; a copy goes to the record."""
        t_done = time.perf_counter()
        status = upstream.status
        if clock is not None:
            clock.primary_s = t_done - t_sent
        self.metrics.latency.labels(route=route, side="primary").observe(t_done - t_sent)
        if job is not None and assembler is not None and not job.primary.done():
            assembler.feed(content, t_done)
            self._resolve(job, assembler.finish(SideResult(status=status), t_done, route))
        response = Response(content=content, status_code=status)
        response.raw_headers = response_headers(upstream.headers)
        self.metrics.overhead.labels(route=route).observe((t_sent - t0) + (time.perf_counter() - t_done))
        return response

    async def _relay(
        self,
        upstream: UpstreamResponse,
        route: str,
        job: ShadowJob | None,
        assembler: SideAssembler | None,
        t_sent: float,
        clock: RequestClock | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Pass the primary's stream through as it arrives; a copy of each chunk feeds the record."""
        result = SideResult(status=upstream.status)
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
                if assembler is not None:
                    assembler.feed(chunk, time.perf_counter())
        except httpx.HTTPError as exc:
            result.fail("disconnected", f"primary stream broke: {type(exc).__name__}")
            self.metrics.primary_errors.labels(route=route, kind="disconnected").inc()
            log.warning("primary stream on %s broke: %s: %s", route, type(exc).__name__, exc)
            raise PrimaryStreamBroken(route) from exc
        except (asyncio.CancelledError, GeneratorExit):
            result.fail("client_disconnected", "the client went away before the stream ended")
            raise
        finally:
            ended = time.perf_counter()
            if clock is not None:
                clock.primary_s = ended - t_sent
            await upstream.aclose()
            self.metrics.latency.labels(route=route, side="primary").observe(ended - t_sent)
            if job is not None and assembler is not None and not job.primary.done():
                assembler.finish(result, ended, route)
                if result.ttft_ms is not None:
                    self.metrics.ttft.labels(route=route, side="primary").observe(result.ttft_ms / 1000.0)
                self._resolve(job, result)

    def _primary_failed(
        self, exc: Exception, route: str, job: ShadowJob | None, t0: float, t_sent: float
    ) -> JSONResponse:
        if isinstance(exc, httpx.TimeoutException):
            kind, status, message = "timeout", 504, "The upstream model server did not answer in time."
        elif isinstance(exc, httpx.ConnectError):
            kind, status, message = "connect", 502, "The upstream model server could not be reached."
        else:
            kind, status, message = "protocol", 502, "The upstream model server broke the connection."
        log.warning("primary %s on %s: %s: %s", kind, route, type(exc).__name__, exc)
        self.metrics.primary_errors.labels(route=route, kind=kind).inc()
        self.metrics.requests.labels(route=route, side="primary", status="error").inc()
        if job is not None:
            result = SideResult(latency_ms=(time.perf_counter() - t_sent) * 1000.0)
            self._resolve(job, result.fail(kind, f"{type(exc).__name__}: {exc}"))
        code = "upstream_timeout" if status == 504 else "upstream_unavailable"
        return openai_error(status, message, "upstream_error", code)

    def _client_left(self, route: str, job: ShadowJob | None, t_sent: float) -> None:
        """The client hung up before the primary's whole answer was in; the primary is hung up on too."""
        self.metrics.requests.labels(route=route, side="primary", status="client_closed").inc()
        if job is not None:
            result = SideResult(latency_ms=(time.perf_counter() - t_sent) * 1000.0)
            self._resolve(job, result.fail("client_disconnected", "the client went away before the answer"))

    @staticmethod
    def _resolve(job: ShadowJob, result: SideResult) -> None:
        if not job.primary.done():
            job.primary.set_result(result)


def create_app(
    settings: Settings,
    metrics: Metrics | None = None,
    handlers: Sequence[PairHandler] | None = None,
    *,
    on_startup: list[Callable[[], Any]] | None = None,
    on_shutdown: list[Callable[[], Any]] | None = None,
) -> FastPath:
    """The ASGI app. `handlers` receive each finished pair record (the sink's `submit`, scoring, ...)."""
    metrics = metrics or Metrics()
    handlers = handlers if handlers is not None else ()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        proxy = Proxy(settings, metrics, handlers)
        app.state.proxy = proxy
        try:
            for fn in on_startup or []:
                await _maybe_await(fn())
            await proxy.start()  # a start-up error (say, the candidate's model) still closes what started
            yield
        finally:
            await proxy.close()
            for fn in on_shutdown or []:
                await _maybe_await(fn())

    app = FastAPI(title="shadowtap", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics = metrics

    if settings.server.metrics_port is None:

        async def metrics_endpoint(request: Request) -> Response:
            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

        app.add_route("/metrics", metrics_endpoint, methods=["GET"])

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app.add_route("/healthz", healthz, methods=["GET"])

    if settings.feedback.enabled:

        async def feedback(request: Request) -> Response:
            signals: ProductionSignals = request.app.state.proxy.signals
            return await signals.endpoint(request)

        app.add_route(FEEDBACK_PATH, feedback, methods=["POST"])

    async def not_found(request: Request, exc: Exception) -> Response:
        return openai_error(
            404, f"No route {request.url.path}; shadowtap serves /v1/*", "invalid_request_error", "not_found"
        )

    app.add_exception_handler(404, not_found)
    return FastPath(app, ProxyHttpProtocol.bound(settings.server, metrics))


class FastPath:
    """Sends `/v1/*` straight to the proxy handler; everything else (metrics, health, lifespan) goes
    through the FastAPI app. The passthrough needs none of FastAPI's per-request machinery, and this is
    the hottest path in the process."""

    def __init__(self, app: FastAPI, http_protocol: type[ProxyHttpProtocol]) -> None:
        self.app = app
        self.state = app.state
        self.http_protocol = http_protocol  # what uvicorn must serve this app with (the client-side limits)
        limits = http_protocol.limits
        # uvicorn's own settings that the limits need; `shadowtap serve` and the test servers pass them.
        self.server_options: dict[str, Any] = {
            "http": http_protocol,
            "timeout_keep_alive": limits.idle_timeout_s,
            "limit_concurrency": limits.limit_concurrency,
            "proxy_headers": False,  # the client's address is the socket's; X-Forwarded-For is forwarded
            "ws": "none",
        }

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await self._proxy(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _proxy(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["app"] = self.app
        proxy: Proxy = self.app.state.proxy
        watch = ClientWatch(receive)
        try:
            # The body is read before anything watches `receive`; one over the mirroring limit is read
            # only that far, and the rest streams to the primary (the watch starts once it is all in).
            body, rest = await read_body(receive, proxy.settings.shadow.max_body_bytes, watch.start)
            if rest is None:
                watch.start()
            response = await self._response(proxy, scope, body, rest)
            observed = proxy.signals.watch(scope, body if rest is None else None, send)  # response id, retry
            with contextlib.suppress(PrimaryStreamBroken):  # the server then closes the connection
                await response(scope, receive, watch.wrap(observed))
        except ClientDisconnect:
            if "shadowtap.refused" not in scope:  # a refusal mid-body is counted as that
                proxy.metrics.incomplete_requests.inc()
                proxy.log_once("incomplete", "a client hung up before sending its whole request body")
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            watch.uncancel()  # the client left; nothing else asked for the cancellation
        except Exception:
            proxy.metrics.proxy_errors.labels(route=route_label(scope["path"])).inc()
            raise  # uvicorn logs it and closes the connection: the response was already under way
        finally:
            watch.stop()

    @staticmethod
    async def _response(
        proxy: Proxy, scope: dict[str, Any], body: bytes, rest: AsyncIterator[bytes] | None
    ) -> Response | StreamRelay | TimedResponse:
        try:
            clock = RequestClock()
            response = await proxy.handle(scope, body, rest, clock)
            return TimedResponse(response, clock, proxy.metrics, route_label(scope["path"]))
        except (asyncio.CancelledError, ClientDisconnect):
            raise
        except Exception:
            proxy.metrics.proxy_errors.labels(route=route_label(scope["path"])).inc()
            log.exception("proxy handler failed on %s", scope["path"])
            return openai_error(
                500, "The proxy failed to handle this request.", "server_error", "proxy_error"
            )


async def read_body(
    receive: Any, hold: int, on_end: Callable[[], None]
) -> tuple[bytes, AsyncIterator[bytes] | None]:
    """The request body, whole (and None), or, past `hold` bytes, what was read so far and an iterator
    over the rest, which calls `on_end` once the body is all in. ClientDisconnect if the client leaves."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            chunks.append(chunk)
            size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), None
        if size > hold:
            return b"".join(chunks), _rest_of_body(receive, on_end)


async def _rest_of_body(receive: Any, on_end: Callable[[], None]) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body", False):
            on_end()
            return


async def _prefixed(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """A request header's value by lower-case name (the server gives names in lower case)."""
    for key, value in headers:
        if key == name:
            return value
    return None


def _large_or_unsized(upstream: UpstreamResponse) -> bool:
    if upstream.status in (204, 304) or 100 <= upstream.status < 200:
        return False
    length = upstream.header(b"content-length")
    if length is None:
        return True
    try:
        return int(length) > BUFFERED_BODY_MAX
    except ValueError:
        return True


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value
