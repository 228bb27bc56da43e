"""One keep-alive HTTP/1.1 connection to an upstream: an asyncio protocol parsed by httptools.

`H1Connection` sends nothing itself: the transport (`transport.py`) writes a request, then reads its
response head and body through it, and puts it back in the pool when `reusable`.
"""

from __future__ import annotations

import asyncio
import collections
from typing import cast

import httptools
import httpx

__all__ = ["H1Connection"]

_READ_HIGH_WATER = 256 * 1024  # pause reading from the socket while this much body waits for the consumer


class H1Connection(asyncio.Protocol):
    """One TCP (or TLS) connection carrying one request at a time."""

    # Set by `connection_made`, which the event loop calls before it hands the connection out.
    transport: asyncio.Transport

    def __init__(self, origin: tuple[bytes, str, int]) -> None:
        self.origin = origin
        self.closed = False
        self.idle_since = 0.0
        self.requests = 0
        # The response in progress.
        self._parser: httptools.HttpResponseParser | None = None
        self._status = 0
        self._head: asyncio.Future[None] | None = None
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._until_close = False  # no length and not chunked: the body ends when the server closes
        self._keep_alive = False
        self._error: BaseException | None = None
        self._paused = False
        self._interim = False  # parsing a 1xx informational response, which a final one follows

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection's transport (create_connection), whatever the event loop's own class is.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._parser is None:  # bytes nobody asked for: the connection cannot be trusted any more
            self._fail(httpx.RemoteProtocolError("the server sent data with no request outstanding"))
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is None or self._complete:
            return
        if self._until_close and self._head is not None and self._head.done():
            self._complete = True  # a body delimited by the end of the connection has ended
            self._wake()
            return
        where = (
            "before sending a response" if self._head is not None and not self._head.done() else "mid-body"
        )
        self._fail(httpx.RemoteProtocolError(f"the server closed the connection {where}"))

    # ------------------------------------------------------------------ httptools callbacks

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None  # the parser is the one calling
        status = self._status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # e.g. 100 Continue: not the answer; the final response follows
            return
        chunked = length = False
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length = True
            elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        self._until_close = not (chunked or length) and status >= 200 and status not in (204, 304)
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _READ_HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            self._reason = b""
            self._headers = []
            return
        parser = self._parser
        assert parser is not None  # the parser is the one calling
        self._complete = True
        self._keep_alive = parser.should_keep_alive()
        self._wake()

    # ------------------------------------------------------------------ used by the transport

    def begin(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._head = asyncio.get_running_loop().create_future()
        self._reason = b""
        self._headers = []
        self._body.clear()
        self._buffered = 0
        self._complete = False
        self._keep_alive = False
        self._until_close = False
        self._interim = False
        self._error = None
        self.requests += 1

    async def read_head(self, timeout: float | None) -> None:
        assert self._head is not None
        if not self._head.done():
            await _wait(self._head, timeout, "waiting for the response headers")
        self._head.result()

    async def read_body(self, timeout: float | None) -> bytes:
        """The next piece of body, or b"" once the body has ended."""
        while True:
            if self._body:
                # Everything that has arrived, in one piece: one write for whoever relays it on.
                chunk = self._body.popleft() if len(self._body) == 1 else b"".join(self._body)
                self._body.clear()
                self._buffered = 0
                if self._paused and not self.closed:
                    self._paused = False
                    self.transport.resume_reading()
                return chunk
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await _wait(self._waiter, timeout, "reading the response body")
            finally:
                self._waiter = None

    def end_without_body(self) -> None:
        """A response to HEAD: the parser cannot be told it has no body, so it ends here, and the
        connection is not reused."""
        self._complete = True
        self._until_close = True

    def reusable(self) -> bool:
        return self._complete and self._keep_alive and not self.closed and not self._until_close

    def finish(self) -> None:
        self._parser = None

    def close(self) -> None:
        self.closed = True
        self.transport.close()

    @property
    def status(self) -> int:
        """The final response's status code, once its headers are in."""
        return self._status

    @property
    def reason(self) -> bytes:
        return self._reason

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return self._headers

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


async def _wait(future: asyncio.Future[None], timeout: float | None, doing: str) -> None:
    if timeout is None:
        await future
        return
    loop = asyncio.get_running_loop()
    handle = loop.call_later(timeout, _expire, future, doing, timeout)
    try:
        await future
    finally:
        handle.cancel()


def _expire(future: asyncio.Future[None], doing: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(httpx.ReadTimeout(f"timed out after {timeout:g}s {doing}"))
