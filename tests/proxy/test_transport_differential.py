"""The upstream transport read side by side with h11 (the parser under httpx), on hostile responses.

Each case is a response an upstream might send, byte for byte. h11 reads the same bytes as the reference:
where h11 refuses the framing the transport refuses it too (never laxer); where both read it they read the
same status and body; and whatever the first answer was, a second request from the same pool gets a fresh
connection's answer or an error, never bytes left over from the first response.

Where the transport is stricter than h11 on purpose, the case says so (`stricter`) and why. One case is the
other way round (`laxer`), and says why that one is no framing ambiguity.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import h11
import httpx
import pytest

from shadowtap.proxy.transport import H1Transport, Timeouts
from tests.proxy.test_transport import ScriptedRequest, ScriptedServer, fetch

TIMEOUTS = Timeouts(pool=3.0, connect=3.0, read=3.0)
OK = b"HTTP/1.1 200 OK\r\n"
CHUNKED = OK + b"transfer-encoding: chunked\r\n\r\n"
FRESH = b"a fresh connection's answer"
FRESH_REPLY = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(FRESH), FRESH)


@dataclass(frozen=True)
class Case:
    id: str
    reply: bytes
    close: bool = False  # the server hangs up after the reply (its end is the body's end, or the cut)
    method: str = "POST"
    stricter: str = ""  # why the transport refuses what h11 reads
    laxer: str = ""  # why the transport reads what h11 refuses, though the framing is not in doubt


CASES = [
    # -------------------------------------------------------------- plain framings
    Case("content-length", OK + b"content-length: 5\r\n\r\nhello"),
    Case("chunked", CHUNKED + b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"),
    Case("close-delimited", OK + b"connection: close\r\n\r\nhello", close=True),
    Case("http10-close-delimited", b"HTTP/1.0 200 OK\r\n\r\nhello", close=True),
    Case("http10-keep-alive", b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 5\r\n\r\nhello"),
    Case("no-reason-phrase", b"HTTP/1.1 200\r\ncontent-length: 5\r\n\r\nhello"),
    # -------------------------------------------------------------- Content-Length
    Case("cl-duplicate-identical", OK + b"content-length: 5\r\ncontent-length: 5\r\n\r\nhello"),
    Case("cl-list-identical", OK + b"content-length: 5, 5\r\n\r\nhello"),
    Case("cl-duplicate-differing", OK + b"content-length: 5\r\ncontent-length: 6\r\n\r\nhello!"),
    Case("cl-list-differing", OK + b"content-length: 5, 6\r\n\r\nhello!"),
    Case("cl-list-with-empty-member", OK + b"content-length: 5,\r\n\r\nhello"),
    Case("cl-negative", OK + b"content-length: -5\r\n\r\nhello"),
    Case("cl-huge", OK + b"content-length: 99999999999999999999999\r\n\r\nhello"),
    Case("cl-non-numeric", OK + b"content-length: five\r\n\r\nhello"),
    Case("cl-plus-sign", OK + b"content-length: +5\r\n\r\nhello"),
    Case("cl-empty", OK + b"content-length: \r\n\r\nhello"),
    Case("cl-surrounded-by-spaces", OK + b"content-length:   5  \r\n\r\nhello"),
    Case("cl-longer-than-body-then-close", OK + b"content-length: 10\r\n\r\nhello", close=True),
    Case(
        "cl-and-te",
        OK + b"content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        stricter="both framings at once is how responses are smuggled; h11 takes the chunked one",
    ),
    Case(
        "te-and-cl",
        OK + b"transfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        stricter="both framings at once is how responses are smuggled; h11 takes the chunked one",
    ),
    # -------------------------------------------------------------- Transfer-Encoding
    Case("te-chunked-capitalised", OK + b"transfer-encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    Case("te-gzip-then-chunked", OK + b"transfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    Case("te-identity", OK + b"transfer-encoding: identity\r\n\r\nhello", close=True),
    Case("te-xchunked", OK + b"transfer-encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", close=True),
    Case("te-chunked-foo", OK + b"transfer-encoding: chunked-foo\r\n\r\n5\r\nhello\r\n0\r\n\r\n", close=True),
    Case("te-trailing-comma", OK + b"transfer-encoding: chunked,\r\n\r\n5\r\nhello\r\n0\r\n\r\n", close=True),
    Case(
        "te-two-headers",
        OK + b"transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ),
    # -------------------------------------------------------------- chunks
    Case("chunk-extensions", CHUNKED + b"5;name=value;flag\r\nhello\r\n0;last\r\n\r\n"),
    Case("chunk-extension-quoted", CHUNKED + b'5;name="a \\"quoted\\" value"\r\nhello\r\n0\r\n\r\n'),
    Case("chunk-size-uppercase-hex", CHUNKED + b"A\r\nhellohello\r\n0\r\n\r\n"),
    Case("chunk-size-not-hex", CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n"),
    Case("chunk-size-0x-prefix", CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n"),
    Case("chunk-size-negative", CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n"),
    Case("chunk-size-plus-sign", CHUNKED + b"+5\r\nhello\r\n0\r\n\r\n"),
    Case("chunk-size-leading-space", CHUNKED + b" 5\r\nhello\r\n0\r\n\r\n"),
    Case("chunk-size-overflow", CHUNKED + b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n", close=True),
    Case(
        "chunk-size-leading-zeros",
        CHUNKED + b"0000000000000000000005\r\nhello\r\n0\r\n\r\n",
        laxer="llhttp reads the size whole (5, overflow-checked); h11 caps the size field at 20 digits",
    ),
    Case(
        "chunk-size-trailing-space",
        CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n",
        stricter="llhttp's leniency for spaces after the size also takes `5 ;ext`, which h11 refuses",
    ),
    Case("chunk-data-longer-than-size", CHUNKED + b"5\r\nhelloX\r\n0\r\n\r\n"),
    Case("chunk-data-bare-lf", CHUNKED + b"5\r\nhello\n0\r\n\r\n"),
    Case("chunk-size-bare-lf", CHUNKED + b"5\nhello\r\n0\r\n\r\n", close=True),
    Case("final-chunk-missing-then-close", CHUNKED + b"5\r\nhello\r\n", close=True),
    Case("extra-bytes-after-final-chunk", CHUNKED + b"5\r\nhello\r\n0\r\n\r\nGARBAGE"),
    Case("trailers", CHUNKED + b"5\r\nhello\r\n0\r\nx-checksum: 1\r\ncontent-length: 2\r\n\r\n"),
    Case("trailer-transfer-encoding", CHUNKED + b"5\r\nhello\r\n0\r\ntransfer-encoding: chunked\r\n\r\n"),
    Case("trailer-without-colon", CHUNKED + b"5\r\nhello\r\n0\r\nx-broken\r\n\r\n"),
    Case(
        "trailers-end-with-bare-lf",
        CHUNKED + b"5\r\nhello\r\n0\r\n\n",
        close=True,
        stricter="a bare LF is read in the head only; after it llhttp wants CRLF, as h11 does in chunk lines",
    ),
    # -------------------------------------------------------------- more than one response
    Case(
        "two-responses-in-one-write",
        OK
        + b"content-length: 5\r\n\r\nhello"
        + OK
        + b"set-cookie: s=other\r\ncontent-length: 5\r\n\r\nworld",
    ),
    Case(
        "stray-bytes-after-connection-close", OK + b"connection: close\r\ncontent-length: 5\r\n\r\nhellojunk"
    ),
    Case(
        "100-continue-then-final", b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"content-length: 5\r\n\r\nhello"
    ),
    Case(
        "103-early-hints-then-final",
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>\r\n\r\n" + OK + b"content-length: 5\r\n\r\nhello",
    ),
    Case(
        "1xx-with-content-length-then-final",
        b"HTTP/1.1 100 Continue\r\ncontent-length: 3\r\n\r\n" + OK + b"content-length: 5\r\n\r\nhello",
    ),
    Case(
        "101-switching-protocols", b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n\x81\x00"
    ),
    Case(
        "101-switching-protocols-with-connection-upgrade",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n\x81\x00",
    ),
    Case(
        "200-offering-an-upgrade",
        OK + b"upgrade: h2c\r\nconnection: upgrade\r\ncontent-length: 5\r\n\r\nhello",
    ),
    Case(
        "204-with-a-body",
        b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nset-cookie: s=x\r\n\r\nsmuggled",
    ),
    Case("204-with-content-length", b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\nhello"),
    Case("304-with-a-body", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\nhello"),
    Case("head-with-content-length", OK + b"content-length: 5\r\n\r\n", method="HEAD"),
    Case("head-with-a-body-anyway", OK + b"content-length: 5\r\n\r\nhello", method="HEAD"),
    Case("head-chunked", CHUNKED, method="HEAD"),
    # -------------------------------------------------------------- head syntax
    Case("header-without-colon", OK + b"x-broken\r\ncontent-length: 5\r\n\r\nhello"),
    Case("header-nul-in-value", OK + b"x-a: a\x00b\r\ncontent-length: 5\r\n\r\nhello"),
    Case("header-space-before-colon", OK + b"content-length : 5\r\n\r\nhello"),
    Case("header-empty-name", OK + b": value\r\ncontent-length: 5\r\n\r\nhello"),
    Case("header-bad-name-character", OK + b"x(a): 1\r\ncontent-length: 5\r\n\r\nhello"),
    Case("header-bare-cr", OK + b"x-a: a\rb\r\ncontent-length: 5\r\n\r\nhello"),
    Case("header-utf8-value", OK + "x-a: café\r\n".encode() + b"content-length: 5\r\n\r\nhello"),
    Case(
        "header-del-in-value",
        OK + b"x-a: a\x7fb\r\ncontent-length: 5\r\n\r\nhello",
        stricter="llhttp refuses DEL (a control character) in a field value; h11 lets it through",
    ),
    Case("obs-fold", OK + b"x-a: one\r\n two\r\ncontent-length: 5\r\n\r\nhello"),
    Case("obs-fold-tab", OK + b"x-a: one\r\n\ttwo\r\ncontent-length: 5\r\n\r\nhello"),
    Case("obs-fold-in-content-length", OK + b"content-length:\r\n 5\r\n\r\nhello"),
    Case(
        "obs-fold-with-duplicate-content-length",
        OK + b"x-a: 1\r\n 2\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
    ),
    Case("obs-fold-first-line", OK + b" x-a: one\r\ncontent-length: 5\r\n\r\nhello"),
    Case("bare-lf-head", b"HTTP/1.1 200 OK\ncontent-length: 5\n\nhello"),
    Case(
        "bare-lf-head-chunked-body", b"HTTP/1.1 200 OK\ntransfer-encoding: chunked\n\n5\r\nhello\r\n0\r\n\r\n"
    ),
    Case("mixed-line-ends", OK + b"x-a: 1\ncontent-length: 5\r\n\nhello"),
    Case("status-line-garbage", b"HTTP/1.1 2x0 OK\r\ncontent-length: 5\r\n\r\nhello"),
    Case("status-code-four-digits", b"HTTP/1.1 2000 OK\r\ncontent-length: 5\r\n\r\nhello"),
    Case("status-code-below-100", b"HTTP/1.1 099 Odd\r\ncontent-length: 5\r\n\r\nhello"),
    Case("status-code-600", b"HTTP/1.1 600 Odd\r\ncontent-length: 5\r\n\r\nhello"),
    Case("lower-case-protocol", b"http/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"),
    Case("not-http-at-all", b"hello", close=True),
    Case("shoutcast-status-line", b"ICY 200 OK\r\ncontent-length: 5\r\n\r\nhello"),
]


def h11_reads(case: Case) -> tuple[int, bytes] | None:
    """(status, body) as h11 reads the reply to `case.method`, or None where it refuses the framing."""
    conn = h11.Connection(h11.CLIENT)
    body = b"" if case.method == "HEAD" else b"{}"
    conn.send(
        h11.Request(
            method=case.method,
            target="/x",
            headers=[("host", "upstream"), ("content-length", str(len(body)))],
        )
    )
    conn.send(h11.Data(data=body))
    conn.send(h11.EndOfMessage())
    conn.receive_data(case.reply)
    if case.close:
        conn.receive_data(b"")
    status, received = 0, b""
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return None
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            received += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return status, received
        elif not isinstance(event, h11.InformationalResponse):
            # NEED_DATA without an end of connection would leave h11 waiting: a case must be decided.
            assert case.close, f"h11 would wait for more of {case.id}: {event!r}"
            return None


async def transport_reads(case: Case) -> tuple[tuple[int, bytes] | Exception, tuple[int, bytes] | Exception]:
    """The transport's reading of the reply, and what a second request from the same pool gets after it."""

    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(case.reply if len(server.requests) == 1 else FRESH_REPLY)
        await writer.drain()
        return not (case.close and len(server.requests) == 1)

    server = ScriptedServer(script)
    server.start()
    transport = H1Transport()
    try:
        url = httpx.URL(server.url + "/x")
        first: tuple[int, bytes] | Exception
        try:
            body = b"" if case.method == "HEAD" else b"{}"
            response = await transport.send(case.method, url, [], body, TIMEOUTS)
            try:
                first = response.status, b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            first = exc
        second: tuple[int, bytes] | Exception
        try:
            second = await fetch(transport, server.url + "/x")
        except httpx.TransportError as exc:
            second = exc
        return first, second
    finally:
        await transport.aclose()
        server.stop()


@pytest.mark.unit
def test_the_table_is_large_and_every_case_is_decided_by_h11_without_waiting():
    assert len(CASES) >= 25
    assert len({case.id for case in CASES}) == len(CASES)
    for case in CASES:
        h11_reads(case)  # asserts that h11 either reads, refuses, or saw the connection end
        assert not (case.stricter and case.laxer)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_the_transport_is_never_laxer_than_h11_and_never_hands_leftovers_on(case: Case):
    reference = h11_reads(case)
    first, second = await transport_reads(case)

    assert not isinstance(first, httpx.TimeoutException), f"the transport waited where h11 decided: {first}"
    if reference is None:
        if case.laxer:
            assert not isinstance(first, Exception), "marked laxer, but the transport refuses it as h11 does"
        else:
            assert isinstance(first, httpx.RemoteProtocolError | httpx.ReadError), (
                f"h11 refuses this framing but the transport read {first!r}"
            )
    elif case.stricter:
        assert isinstance(first, httpx.RemoteProtocolError), (
            f"marked stricter, but the transport read {first!r}"
        )
    else:
        assert first == reference
    # Whatever the first reply was, nothing of it is read as the answer to the next request.
    if isinstance(second, Exception):
        assert isinstance(second, httpx.TransportError) and not isinstance(second, httpx.TimeoutException)
    else:
        assert second == (200, FRESH)
