"""One keep-alive HTTP/1.1 connection to an upstream: an asyncio protocol parsed by httptools.

`H1Connection` sends nothing itself: the transport (`transport.py`) writes a request, then reads its
response head and body through it, and puts it back in the pool when `reusable`.

What it accepts is what h11 (httpx's parser) accepts, never laxer about framing: a response head is at most
`max_head_bytes` (1xx interim heads included) with at most `max_headers` fields; a bare LF ends a head line,
obsolete line folding is unfolded and a repeated identical Content-Length is read once; Transfer-Encoding is
exactly `chunked` or refused; chunked trailers are dropped; a 101 is refused (the proxy never upgrades); only
a clean end of the connection ends a body without a length; and any byte after a complete response makes the
connection unusable for the next one.
"""

from __future__ import annotations

import asyncio
import collections
import re
from typing import cast

import httptools
import httpx

__all__ = ["H1Connection"]

_READ_HIGH_WATER = 256 * 1024  # pause reading from the socket while this much body waits for the consumer


class _Refused(Exception):
    """Raised inside a parser callback to stop the parse: the connection's error says why, or the answer is
    already complete and what follows it is not read."""


class H1Connection(asyncio.Protocol):
    """One TCP (or TLS) connection carrying one request at a time."""

    # Set by `connection_made`, which the event loop calls before it hands the connection out.
    transport: asyncio.Transport

    def __init__(
        self, origin: tuple[bytes, str, int], max_head_bytes: int = 64 * 1024, max_headers: int = 100
    ) -> None:
        self.origin = origin
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
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
        self._head_only = False  # the answer to a HEAD request: no body, whatever its head says
        # Until the final response's headers are in: what has come so far, to measure and maybe repair it.
        self._in_head = False
        self._head_seen = 0  # bytes received since the response began
        self._head_size = 0  # bytes of the status lines and fields parsed so far (within a read, too)
        self._head_data: list[bytes] = []
        self._repairing: httpx.RemoteProtocolError | None = None  # the parse error a repair may undo
        self._repaired = False
        self._framing_run = 0  # bytes since the last body byte (chunk framing, trailers)
        self._writable: asyncio.Future[None] | None = None  # while the socket's send buffer is full

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection's transport (create_connection), whatever the event loop's own class is.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self._complete or self._in_head:
            self._received_outside_body(parser, data)
            return
        buffered = self._buffered
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_failed(_parse_error(exc))
            return
        if self._buffered == buffered:  # no body in this read: chunk framing or trailers only
            self._framing_run += len(data)
            if self._framing_run > self.max_head_bytes and not self._complete:
                self._fail(_too_large("the response's chunk framing or trailers", self.max_head_bytes))
                self.close()
        elif self._framing_run:
            self._framing_run = 0

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_exception(httpx.WriteError(f"the connection to the server broke mid-request: {exc}"))
        if self._parser is None or self._complete:
            return
        if self._repairing is not None:
            self._fail(self._repairing)
            return
        where = "before sending a response" if self._in_head else "mid-body"
        if exc is not None:  # a reset, not an end: a body without a length is cut short, not complete
            self._fail(httpx.ReadError(f"the connection to the server broke {where}: {exc}"))
            return
        if self._until_close:
            self._complete = True  # a body delimited by the end of the connection has ended
            self._wake()
            return
        self._fail(httpx.RemoteProtocolError(f"the server closed the connection {where}"))

    # ------------------------------------------------------------------ httptools callbacks

    def on_status(self, status: bytes) -> None:
        self._reason += status
        self._head_size += len(status) + 15  # "HTTP/1.1 200 " and the line end

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:  # not a chunked trailer, which is dropped: the head is already handed out
            headers = self._headers
            headers.append((name, value))
            self._head_size += len(name) + len(value) + 4
            if len(headers) > self.max_headers or self._head_size > self.max_head_bytes:
                self._refuse_head()

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None  # the parser is the one calling
        if self._complete:  # a second response in the same read as the first: nobody asked for it
            raise _Refused()
        status = parser.get_status_code()
        if status == 101:
            self._refuse(
                httpx.RemoteProtocolError(
                    "the server answered 101 Switching Protocols; the proxy never upgrades"
                )
            )
        if status < 100:
            self._refuse(httpx.RemoteProtocolError(f"the server answered with status code {status}"))
        if status < 200:
            self._interim = True  # e.g. 100 Continue: not the answer; the final response follows
            return
        self._in_head = False
        self._head_data = []
        self._status = status
        chunked, length = self._framing()
        self._until_close = not (chunked or length) and status not in (204, 304)
        if chunked:  # a Content-Length among the trailers (which are dropped) is no framing conflict
            parser.set_dangerous_leniencies(lenient_chunked_length=True)
        if self._head is not None and not self._head.done():
            self._head.set_result(None)
        if self._head_only:
            # The parser cannot be told a HEAD response has no body: it ends here, and whatever follows
            # (a body sent anyway, or the next response) closes the connection, which is not reused.
            self._complete = True
            self._until_close = True
            raise _Refused()

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

    def begin(self, head_only: bool = False) -> None:
        """Get ready for the response to the request about to be written (`head_only`: to a HEAD)."""
        self._head_only = head_only
        self._new_parser()
        self._head = asyncio.get_running_loop().create_future()
        self._body.clear()
        self._buffered = 0
        self._complete = False
        self._keep_alive = False
        self._until_close = False
        self._error = None
        self._in_head = True
        self._head_seen = 0
        self._head_data = []
        self._repairing = None
        self._repaired = False
        self._framing_run = 0
        self.requests += 1

    async def drain(self, timeout: float | None) -> None:
        """Wait while the socket's send buffer is full: a request body goes out as fast as the server
        reads it, not into memory. WriteTimeout past `timeout`, WriteError if the connection breaks."""
        writable = self._writable
        if writable is not None:
            await _wait(writable, timeout, "sending the request body", httpx.WriteTimeout)

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
        """The final response's headers as the server sent them; never changed once they are in."""
        return self._headers

    # ------------------------------------------------------------------ inside

    def _new_parser(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""
        self._headers = []
        self._interim = False
        self._head_size = 0

    def _feed(self, parser: httptools.HttpResponseParser, data: bytes) -> None:
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_failed(_parse_error(exc))

    def _received_outside_body(self, parser: httptools.HttpResponseParser | None, data: bytes) -> None:
        """Bytes with no request outstanding, after the answer, or before its headers are all in."""
        if parser is None:  # bytes nobody asked for: the connection cannot be trusted any more
            self._fail(httpx.RemoteProtocolError("the server sent data with no request outstanding"))
            self.close()
            return
        if self._complete:  # bytes after the answer: it stands, but the next one would start mid-stream
            self.close()
            return
        self._head_data.append(data)
        self._head_seen += len(data)
        if self._repairing is not None:
            self._repair()
            return
        self._feed(parser, data)
        if self._in_head and self._head_seen > self.max_head_bytes and self._error is None:
            self._fail(_too_large("the response head", self.max_head_bytes))
            self.close()

    def _parse_failed(self, error: httpx.RemoteProtocolError) -> None:
        if self._error is not None or self._complete:  # refused by a callback, or bytes after the answer
            self.close()
            return
        if self._in_head and not self._repaired and _may_repair(b"".join(self._head_data)):
            self._repairing = error
            self._repair()
            return
        self._fail(error)
        self.close()

    def _repair(self) -> None:
        """Parse the head again as h11 reads it (bare LFs, folded lines, one Content-Length), once it is in."""
        error = self._repairing
        assert error is not None
        if self._head_seen > self.max_head_bytes:
            error = _too_large("the response head", self.max_head_bytes)
        else:
            data = b"".join(self._head_data)
            repaired = _repaired_heads(data)
            if repaired is None:
                return  # the rest of the head is still to come
            if repaired != data:
                self._repairing = None
                self._repaired = True
                self._head_data = []
                self._new_parser()
                assert self._parser is not None
                self._feed(self._parser, repaired)
                return
        self._repairing = None
        self._fail(error)
        self.close()

    def _framing(self) -> tuple[bool, bool]:
        """(chunked, has a length) from the final head; a transfer-coding other than `chunked` is refused."""
        length = False
        codings: bytes | None = None
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length = True
            elif lowered == b"transfer-encoding":
                codings = value if codings is None else codings + b", " + value
        if codings is None:
            return False, length
        if codings.strip(b" \t").lower() != b"chunked":
            self._refuse(httpx.RemoteProtocolError(f"unsupported transfer-coding {codings[:100]!r}"))
        return True, length

    def _refuse_head(self) -> None:
        if len(self._headers) > self.max_headers:
            self._refuse(
                httpx.RemoteProtocolError(
                    f"the response has more than max_headers ({self.max_headers}) headers"
                )
            )
        self._refuse(_too_large("the response head", self.max_head_bytes))

    def _refuse(self, exc: httpx.RemoteProtocolError) -> None:
        self._fail(exc)
        raise _Refused()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _parse_error(exc: Exception) -> httpx.RemoteProtocolError:
    if isinstance(exc, httptools.HttpParserUpgrade):  # a 101 is refused before this; any other upgrade too
        return httpx.RemoteProtocolError("the server switched protocols; the proxy never upgrades")
    return httpx.RemoteProtocolError(f"malformed HTTP response: {exc}")


def _too_large(what: str, limit: int) -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError(f"{what} is larger than max_head_bytes ({limit} bytes)")


# ---------------------------------------------------------------------- reading a head as h11 does

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
_MAY_REPAIR = re.compile(rb"(?im)(?<!\r)\n|\n[ \t]|^content-length[ \t]*:[^\r\n]*,")
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length[ \t]*:")


def _may_repair(data: bytes) -> bool:
    """Whether the head has what h11 reads and llhttp refuses: a bare LF, a folded line, a repeated length."""
    return _MAY_REPAIR.search(data) is not None or len(_CONTENT_LENGTH.findall(data)) > 1


def _repaired_heads(data: bytes) -> bytes | None:
    """`data` with the response heads at its start (1xx ones, then the final one) rewritten as h11 reads
    them (lines ended by CRLF); None while the final head has not all arrived."""
    heads = []
    start = 0
    while True:
        end = _HEAD_END.search(data, start)
        if end is None:
            return None
        lines = _LINE_END.split(data[start : end.start()])
        heads.append(b"\r\n".join(_one_length(_unfolded(lines))) + b"\r\n\r\n")
        start = end.end()
        code = lines[0].split(b" ", 2)[1:2]
        if not (code and len(code[0]) == 3 and code[0].startswith(b"1")):
            return b"".join(heads) + data[start:]


def _unfolded(lines: list[bytes]) -> list[bytes]:
    """Obsolete line folding (a field line that starts with a space or tab) joined to its field with a space."""
    out = lines[:1]
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t") and len(out) > 1:
            out[-1] += b" " + line.lstrip(b" \t")
        else:
            out.append(line)
    return out


def _one_length(lines: list[bytes]) -> list[bytes]:
    """Content-Length fields and list members that all say the same number, given once; differing ones as
    they were (the parser refuses them)."""
    out: list[bytes] = []
    values: list[bytes] = []
    first = -1
    for line in lines:
        name, colon, value = line.partition(b":")
        if colon and name.lower() == b"content-length":
            values += [v.strip(b" \t") for v in value.split(b",")]
            if first >= 0:
                continue
            first = len(out)
        out.append(line)
    if first < 0 or len(set(values)) != 1:
        return lines
    out[first] = b"content-length: " + values[0]
    return out


async def _wait(
    future: asyncio.Future[None],
    timeout: float | None,
    doing: str,
    expired: type[httpx.TimeoutException] = httpx.ReadTimeout,
) -> None:
    if timeout is None:
        await future
        return
    loop = asyncio.get_running_loop()
    handle = loop.call_later(timeout, _expire, future, doing, timeout, expired)
    try:
        await future
    finally:
        handle.cancel()


def _expire(
    future: asyncio.Future[None], doing: str, timeout: float, expired: type[httpx.TimeoutException]
) -> None:
    if not future.done():
        future.set_exception(expired(f"timed out after {timeout:g}s {doing}"))
