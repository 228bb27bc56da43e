"""A lean HTTP/1.1 transport for httpx: keep-alive connections on asyncio protocols, parsed by httptools.

httpx's default transport (httpcore over anyio, parsed by h11) costs about 0.75 ms of CPU per request on
a small machine; this one costs a small fraction of that, and it is on the proxy's hottest path (every
primary request, every candidate request). It plugs in below `httpx.AsyncClient` through httpx's
transport interface, so the client, its `Request`/`Response` models, `aiter_raw` streaming and its
exception types stay as they are.

Scope, on purpose: HTTP/1.1 to one or a few origins (an upstream's base URL), `http` and `https`, no
proxies, no HTTP/2, no `Expect: 100-continue`, no upgrades. A request and its body go out in one write;
a response is handed back as soon as its headers are in and its body streams as it arrives, with flow
control (reading pauses while the consumer is behind). Each connection is an `H1Connection` (connection.py).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import cast

import httpx

from shadowtap.proxy.connection import H1Connection


class Timeouts:
    """Seconds allowed to get a pooled connection, to connect, and between reads (None: no limit)."""

    __slots__ = ("pool", "connect", "read")

    def __init__(self, pool: float | None, connect: float | None, read: float | None) -> None:
        self.pool, self.connect, self.read = pool, connect, read

    @classmethod
    def of(cls, request: httpx.Request) -> Timeouts:
        t = request.extensions.get("timeout", {})
        return cls(t.get("pool"), t.get("connect"), t.get("read"))


class UpstreamResponse:
    """A response whose headers are in; the body streams from `aiter_raw` (transfer coding removed,
    content coding kept, as httpx's `aiter_raw`). `aclose` hands the connection back or closes it."""

    __slots__ = ("status", "reason", "headers", "_transport", "_conn", "_read_timeout", "_closed")

    def __init__(self, transport: H1Transport, conn: H1Connection, read_timeout: float | None) -> None:
        self.status = conn.status
        self.reason = conn.reason
        self.headers = (
            conn.headers
        )  # raw (name, value) pairs as the server sent them; trailers never join them
        self._transport = transport
        self._conn = conn
        self._read_timeout = read_timeout
        self._closed = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header, by lower-case name."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        if self._closed:
            raise httpx.StreamClosed()
        while True:
            chunk = await self._conn.read_body(self._read_timeout)
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._transport._release(self._conn)


class Exchange:
    """A request on its way: `response()` waits for the response headers."""

    __slots__ = ("_transport", "_conn", "_read_timeout")

    def __init__(self, transport: H1Transport, conn: H1Connection, read_timeout: float | None) -> None:
        self._transport = transport
        self._conn = conn
        self._read_timeout = read_timeout

    async def response(self) -> UpstreamResponse:
        conn = self._conn
        try:
            await conn.read_head(self._read_timeout)
        except BaseException:
            self._transport._discard(conn)
            raise
        return UpstreamResponse(self._transport, conn, self._read_timeout)


class _HttpxStream(httpx.AsyncByteStream):
    def __init__(self, response: UpstreamResponse) -> None:
        self._response = response

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._response.aiter_raw()

    async def aclose(self) -> None:
        await self._response.aclose()


class H1Transport(httpx.AsyncBaseTransport):
    """A pool of keep-alive HTTP/1.1 connections, at most `max_connections` open at once.

    Two ways in: `send` for the proxy's own hot path (raw headers in and out, no models), and
    `handle_async_request`, httpx's transport interface, for an `httpx.AsyncClient` on top.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        max_keepalive_connections: int = 20,
        keepalive_expiry: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
        max_head_bytes: int = 64 * 1024,
        max_headers: int = 100,
    ) -> None:
        self.max_connections = max_connections
        self.max_keepalive = max_keepalive_connections
        self.keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self.max_head_bytes = max_head_bytes  # a larger response head (1xx ones included) is a protocol error
        self.max_headers = max_headers
        self._idle: dict[tuple[bytes, str, int], list[H1Connection]] = {}
        self.open_connections = 0
        self._slots = asyncio.Semaphore(max_connections)  # bound to an event loop only on first wait
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        has_content = _has_content(request)
        try:
            response = await self.send(
                request.method,
                request.url,
                request.headers.raw,
                request.content if has_content else None,
                Timeouts.of(request),
                # An AsyncClient's request stream is async (httpx refuses to send a sync one from it).
                stream=None if has_content else cast(AsyncIterable[bytes], request.stream),
            )
        except httpx.TransportError as exc:
            exc.request = request
            raise
        return httpx.Response(
            response.status,
            headers=response.headers,
            stream=_HttpxStream(response),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": response.reason},
        )

    async def send(
        self,
        method: str,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
        timeouts: Timeouts,
        *,
        stream: AsyncIterable[bytes] | None = None,
    ) -> UpstreamResponse:
        """Send one request and return once the response headers are in (`start`, then `response`)."""
        exchange = await self.start(method, url, headers, body, timeouts, stream=stream)
        return await exchange.response()

    async def start(
        self,
        method: str,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes | None,
        timeouts: Timeouts,
        *,
        stream: AsyncIterable[bytes] | None = None,
    ) -> Exchange:
        """Send one request (`headers` as given, plus Host and the body's length when missing); the
        caller then awaits `response()` on what comes back, and must, exactly once. `body` None with a
        `stream` sends the stream chunked, or as it is when `headers` give its Content-Length (then it must
        be exactly that long). With a pooled connection free this never suspends."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        origin = _origin(url)
        slots = self._slots
        if slots.locked():
            await _wait_for_slot(slots, timeouts.pool, url)
        else:
            await slots.acquire()

        conn: H1Connection | None = None
        try:
            conn = self._take_idle(origin) or await self._connect(origin, timeouts.connect)
            head, declared = _head_bytes(method, url, headers, body)
            write = conn.transport.write
            conn.begin(head_only=method == "HEAD")
            if body is None and declared is not None:
                await _write_sized(conn, head, stream, declared, timeouts.read)
            elif body is None:
                await _write_chunked(conn, head, stream, timeouts.read)
            elif len(body) < 65536:
                write(head + body)  # one write, one segment: the server wakes once
            else:
                write(head)
                write(body)
        except BaseException:
            if conn is not None:
                self._discard(conn)
            else:
                slots.release()
            raise
        return Exchange(self, conn, timeouts.read)

    def _take_idle(self, origin: tuple[bytes, str, int]) -> H1Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive_expiry:
                return conn
            conn.close()
            self.open_connections -= 1
        return None

    async def _connect(self, origin: tuple[bytes, str, int], timeout: float | None) -> H1Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        limits = (self.max_head_bytes, self.max_headers)
        tls: ssl.SSLContext | None = None
        if scheme == b"https":
            if self._ssl_context is None:
                self._ssl_context = httpx.create_ssl_context(verify=True, trust_env=False)
            tls = self._ssl_context
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: H1Connection(origin, *limits),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                ),
                timeout,
            )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"could not connect to {host}:{port} within {timeout:g}s") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"could not connect to {host}:{port}: {exc}") from exc
        self.open_connections += 1
        return conn

    def _discard(self, conn: H1Connection) -> None:
        conn.close()
        self.open_connections -= 1
        self._slots.release()

    def _release(self, conn: H1Connection) -> None:
        reusable = conn.reusable()
        conn.finish()
        if reusable and not self._closed:
            idle = self._idle.setdefault(conn.origin, [])
            if len(idle) < self.max_keepalive:
                conn.idle_since = time.monotonic()
                idle.append(conn)
                self._slots.release()
                return
        conn.close()
        self.open_connections -= 1
        self._slots.release()

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
                self.open_connections -= 1
        self._idle.clear()


def _origin(url: httpx.URL) -> tuple[bytes, str, int]:
    """Where a request goes: (scheme, host, port), the key of the connection pool."""
    scheme = url.raw_scheme
    if scheme not in (b"http", b"https"):
        raise httpx.UnsupportedProtocol(f"{scheme.decode()!r} URLs are not supported")
    return (scheme, url.host, url.port or (443 if scheme == b"https" else 80))


async def _wait_for_slot(slots: asyncio.Semaphore, timeout: float | None, url: httpx.URL) -> None:
    """Wait (at most `timeout` seconds) for a connection slot while all of them are in use."""
    try:
        await asyncio.wait_for(slots.acquire(), timeout)
    except TimeoutError:
        raise httpx.PoolTimeout(f"no connection to {url.host} became free in time") from None


async def _write_chunked(
    conn: H1Connection, head: bytes, stream: AsyncIterable[bytes] | None, timeout: float | None
) -> None:
    """The head, then the body as it comes, in chunked transfer coding (no stream: an empty body), each
    piece once the server has taken the last (`drain`)."""
    write = conn.transport.write
    write(head)
    if stream is not None:
        async for chunk in stream:
            if chunk:
                write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await conn.drain(timeout)
    write(b"0\r\n\r\n")


async def _write_sized(
    conn: H1Connection,
    head: bytes,
    stream: AsyncIterable[bytes] | None,
    length: bytes,
    timeout: float | None,
) -> None:
    """The head, then the body as it comes, unframed: exactly the `length` bytes its Content-Length says,
    each piece once the server has taken the last (`drain`)."""
    expected = int(length) if length.isdigit() else -1
    if expected < 0:
        raise httpx.LocalProtocolError(f"the request's Content-Length {length[:40]!r} is not a length")
    write = conn.transport.write
    write(head)
    sent = 0
    if stream is not None:
        async for chunk in stream:
            sent += len(chunk)
            if sent > expected:
                raise httpx.LocalProtocolError(
                    f"the request body is longer than its Content-Length ({expected})"
                )
            write(chunk)
            await conn.drain(timeout)
    if sent != expected:
        raise httpx.LocalProtocolError(
            f"the request body ended {sent} bytes into its Content-Length ({expected})"
        )


def _head_bytes(
    method: str, url: httpx.URL, headers: list[tuple[bytes, bytes]], body: bytes | None
) -> tuple[bytes, bytes | None]:
    """The request head, and the Content-Length the caller's headers declare (None: none)."""
    parts = [method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
    has_host = has_length = False
    declared: bytes | None = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"host":
            has_host = True
        elif lowered == b"content-length":
            has_length = True
            declared = value.strip()
        elif lowered == b"transfer-encoding":
            has_length = True
        parts += (name, b": ", value, b"\r\n")
    if not has_host:
        parts += (b"host: ", url.netloc, b"\r\n")
    if not has_length:
        if body is None:
            parts.append(b"transfer-encoding: chunked\r\n")
        elif body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            parts += (b"content-length: ", str(len(body)).encode(), b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts), declared


def _has_content(request: httpx.Request) -> bool:
    """Whether the whole body is already in memory (`content=` bytes, JSON, form), not a stream."""
    try:
        request.content  # noqa: B018 - raises RequestNotRead for streaming bodies
    except httpx.RequestNotRead:
        return False
    return True
