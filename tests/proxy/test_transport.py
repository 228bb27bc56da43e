"""The upstream HTTP/1.1 transport against servers that misbehave byte by byte.

Every primary and candidate request goes through `proxy/transport.py`, so it has to read every framing a
server may use, keep connections only while they are safe to reuse, and fail with httpx's exception
types (which the proxy turns into 502/504s and counted candidate errors). The servers here are raw
asyncio servers on loopback whose every byte the test scripts; TLS and the proxy-level cases use real
uvicorn servers and the OpenAI SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
import trustme

from shadowtap.proxy.transport import H1Transport, Timeouts
from shadowtap.proxy.upstream import forward_headers, response_headers
from shadowtap.testing.upstreams import Reply, SimulatedLLM, serve_in_thread
from tests.helpers import wait_for

TIMEOUTS = Timeouts(pool=5.0, connect=5.0, read=5.0)
CHAT = [{"role": "user", "content": "Where is my parcel?"}]


@dataclass
class ScriptedRequest:
    head: bytes
    headers: dict[str, str]
    body: bytes
    connection: int  # 1 for the first connection the server accepted, 2 for the next, ...
    on_connection: int  # 1 for the first request on its connection, ...


Script = Callable[[ScriptedRequest, asyncio.StreamWriter], Awaitable[bool]]


async def _finish_pending() -> None:
    pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    await asyncio.gather(*pending, return_exceptions=True)


@dataclass
class ScriptedServer:
    """A raw HTTP/1.1 server on its own event loop in a thread. For each request it runs `script`, which
    writes whatever bytes it likes and says whether to keep the connection open."""

    script: Script
    requests: list[ScriptedRequest] = field(default_factory=list)
    accepted: int = 0
    closed: int = 0
    open_now: int = 0
    most_open: int = 0
    port: int = 0

    def start(self) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def main() -> None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
            await self.server.serve_forever()

        def run() -> None:
            with contextlib.suppress(asyncio.CancelledError):
                self.loop.run_until_complete(main())
            # Let the cancelled connection handlers finish, then free the loop's own sockets.
            self.loop.run_until_complete(_finish_pending())
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(5), "scripted server did not start"

    def stop(self) -> None:
        def shut() -> None:
            self.server.close()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()

        self.loop.call_soon_threadsafe(shut)
        self.thread.join(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        number, served = self.accepted, 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = b""
                try:
                    if "content-length" in headers:
                        body = await reader.readexactly(int(headers["content-length"]))
                    elif headers.get("transfer-encoding") == "chunked":
                        while True:
                            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                            body += (await reader.readexactly(size + 2))[:-2]
                            if size == 0:
                                break
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the client left mid-body (a half-sent request it dropped)
                served += 1
                request = ScriptedRequest(head, headers, body, number, served)
                self.requests.append(request)
                if not await self.script(request, writer):
                    return
        finally:
            self.open_now -= 1
            self.closed += 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()  # its socket closed before the server's loop can stop


@pytest.fixture
def scripted() -> Iterator[Callable[[Script], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def make(script: Script) -> ScriptedServer:
        server = ScriptedServer(script)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def framed(body: bytes, framing: str, status: str = "200 OK", extra: bytes = b"") -> bytes:
    head = b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: application/json\r\n" + extra
    if framing == "length":
        return head + b"content-length: %d\r\n\r\n" % len(body) + body
    if framing == "chunked":
        third = max(1, len(body) // 3)
        pieces = [body[i : i + third] for i in range(0, len(body), third)]
        return (
            head
            + b"transfer-encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
            + b"0\r\n\r\n"
        )
    assert framing == "close"
    return head + b"connection: close\r\n\r\n" + body


async def fetch(transport: H1Transport, url: str, body: bytes = b"{}") -> tuple[int, bytes]:
    response = await transport.send(
        "POST", httpx.URL(url), [(b"content-type", b"application/json")], body, TIMEOUTS
    )
    try:
        return response.status, b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()


ANSWER = json.dumps(
    {"object": "chat.completion", "choices": [{"message": {"content": "On its way."}}]}
).encode()


@pytest.mark.parametrize(("framing", "reused"), [("length", True), ("chunked", True), ("close", False)])
async def test_every_body_framing_arrives_whole_and_only_safe_connections_are_reused(
    scripted, framing, reused
):
    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(framed(ANSWER, framing))
        await writer.drain()
        return framing != "close"

    server = scripted(script)
    transport = H1Transport()

    answers = [await fetch(transport, server.url + "/v1/chat/completions") for _ in range(5)]

    assert answers == [(200, ANSWER)] * 5
    assert server.accepted == (1 if reused else 5)
    await transport.aclose()


async def test_an_interim_100_continue_is_skipped_and_the_final_answer_returned(scripted):
    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # a separate segment: the transport must not take it for the answer
        writer.write(framed(ANSWER, "length", extra=b"x-final: yes\r\n"))
        await writer.drain()
        return True

    server = scripted(script)
    transport = H1Transport()

    for _ in range(2):
        response = await transport.send("GET", httpx.URL(server.url + "/v1/models"), [], b"", TIMEOUTS)
        assert response.status == 200
        assert response.header(b"x-final") == b"yes"
        assert b"".join([c async for c in response.aiter_raw()]) == ANSWER
        await response.aclose()
    assert server.accepted == 1
    await transport.aclose()


async def test_a_connection_the_server_closed_while_idle_is_not_reused(scripted):
    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(framed(ANSWER, "length"))
        await writer.drain()
        # Like uvicorn's keep-alive timeout: the server hangs up on an idle connection.
        asyncio.get_running_loop().call_later(0.05, writer.close)
        return True

    server = scripted(script)
    transport = H1Transport(keepalive_expiry=60.0)

    assert await fetch(transport, server.url + "/x") == (200, ANSWER)
    for _ in range(200):  # until the server has closed it and this loop has seen the FIN
        await asyncio.sleep(0.01)
        if server.closed >= 1 and transport.open_connections == 0:
            break
    assert server.closed >= 1, "the server did not close its idle connection"
    assert await fetch(transport, server.url + "/x") == (200, ANSWER)
    assert server.accepted == 2
    await transport.aclose()


async def test_idle_connections_past_the_keepalive_expiry_are_replaced(scripted):
    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(framed(ANSWER, "length"))
        await writer.drain()
        return True

    server = scripted(script)
    transport = H1Transport(keepalive_expiry=0.2)

    await fetch(transport, server.url + "/x")
    await fetch(transport, server.url + "/x")
    assert server.accepted == 1
    await asyncio.sleep(0.3)
    await fetch(transport, server.url + "/x")
    assert server.accepted == 2
    assert transport.open_connections == 1
    await transport.aclose()


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", "malformed HTTP response"),
        (b"", "closed the connection before sending a response"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part", "closed the connection mid-body"),
    ],
    ids=["garbage", "closed-before-answer", "closed-mid-body"],
)
async def test_a_broken_response_is_a_protocol_error_and_its_connection_is_dropped(scripted, reply, message):
    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply)
        await writer.drain()
        return False

    server = scripted(script)
    transport = H1Transport()

    with pytest.raises(httpx.RemoteProtocolError, match=message):
        await fetch(transport, server.url + "/x")
    assert transport.open_connections == 0
    await transport.aclose()


async def test_a_server_that_never_answers_times_out_and_frees_its_connection(scripted):
    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(30)
        return False

    server = scripted(script)
    transport = H1Transport()

    with pytest.raises(httpx.ReadTimeout):
        await transport.send("GET", httpx.URL(server.url + "/x"), [], b"", Timeouts(1.0, 1.0, 0.2))
    assert transport.open_connections == 0
    await transport.aclose()


async def test_the_pool_never_opens_more_than_max_connections_and_a_full_pool_times_out(scripted):
    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.1)
        writer.write(framed(ANSWER, "length"))
        await writer.drain()
        return True

    server = scripted(script)
    transport = H1Transport(max_connections=2)

    answers = await asyncio.gather(*(fetch(transport, server.url + "/x") for _ in range(6)))

    assert answers == [(200, ANSWER)] * 6
    assert server.most_open == 2
    assert server.accepted == 2

    tight = H1Transport(max_connections=1)
    first = asyncio.create_task(fetch(tight, server.url + "/x"))
    await asyncio.sleep(0.02)
    with pytest.raises(httpx.PoolTimeout):
        await tight.send("GET", httpx.URL(server.url + "/x"), [], b"", Timeouts(0.02, 1.0, 1.0))
    assert await first == (200, ANSWER)
    await transport.aclose()
    await tight.aclose()


async def test_a_large_body_read_slowly_arrives_intact(scripted):
    payload = bytes(range(256)) * (6 * 1024 * 1024 // 256)  # 6 MiB: well past the read pause threshold

    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(framed(payload, "chunked"))
        await writer.drain()
        return True

    server = scripted(script)
    transport = H1Transport()
    response = await transport.send("GET", httpx.URL(server.url + "/big"), [], b"", TIMEOUTS)
    digest, size = hashlib.sha256(), 0
    async for chunk in response.aiter_raw():
        digest.update(chunk)
        size += len(chunk)
        await asyncio.sleep(0.001)  # a consumer slower than loopback
    await response.aclose()

    assert size == len(payload)
    assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
    assert await fetch(transport, server.url + "/x") == (200, payload)
    assert server.accepted == 1
    await transport.aclose()


async def test_a_head_response_ends_without_a_body_and_is_not_reused(scripted):
    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")
        await writer.drain()
        return True

    server = scripted(script)
    transport = H1Transport()

    response = await transport.send("HEAD", httpx.URL(server.url + "/x"), [], b"", TIMEOUTS)
    assert response.status == 200
    assert [c async for c in response.aiter_raw()] == []
    await response.aclose()
    assert transport.open_connections == 0
    await transport.aclose()


async def test_an_httpx_client_on_the_transport_sends_json_and_streams_bodies(scripted):
    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(framed(b'{"echo": ' + request.body + b"}", "chunked"))
        await writer.drain()
        return True

    server = scripted(script)

    async def upload() -> AsyncIterator[bytes]:
        for piece in (b'{"a"', b": ", b"1}"):
            yield piece

    async with httpx.AsyncClient(transport=H1Transport(), base_url=server.url) as client:
        plain = await client.post("/v1/x", json={"a": 1})
        streamed = await client.post("/v1/x", content=upload())

    assert plain.status_code == 200 and plain.json() == {"echo": {"a": 1}}
    assert streamed.json() == {"echo": {"a": 1}}
    assert server.requests[1].headers.get("transfer-encoding") == "chunked"
    assert server.accepted == 1


async def test_a_streamed_body_with_a_content_length_goes_out_as_that_many_bytes_not_chunked(scripted):
    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(framed(b'{"got": %d}' % len(request.body), "length"))
        await writer.drain()
        return True

    server = scripted(script)
    transport = H1Transport()
    url = httpx.URL(server.url + "/v1/files")

    async def upload(*pieces: bytes) -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    sized = [(b"content-type", b"application/octet-stream"), (b"content-length", b"9")]
    response = await transport.send("POST", url, sized, None, TIMEOUTS, stream=upload(b"abc", b"def", b"ghi"))
    assert b"".join([c async for c in response.aiter_raw()]) == b'{"got": 9}'
    await response.aclose()
    assert server.requests[0].body == b"abcdefghi"
    assert "transfer-encoding" not in server.requests[0].headers

    for pieces in [(b"abc",), (b"abcdef", b"ghij")]:  # shorter, then longer, than the length it declared
        with pytest.raises(httpx.LocalProtocolError, match="Content-Length"):
            await transport.send("POST", url, sized, None, TIMEOUTS, stream=upload(*pieces))
    assert transport.open_connections <= 1  # only the pooled one: the half-sent requests' are dropped
    await transport.aclose()


async def test_a_streamed_body_goes_out_only_as_fast_as_the_server_reads_it():
    """A server that stops reading an upload holds it back: the body's stream is pulled about as far as
    the socket buffers reach, not into the proxy's memory; once the server reads again, all of it arrives."""
    total = 64 << 20
    reading = asyncio.Event()
    received = hashlib.sha256()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reading.wait()
        left = total
        while left:
            piece = await reader.read(min(left, 1 << 20))
            received.update(piece)
            left -= len(piece)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pulled = 0
    sent = hashlib.sha256()

    async def upload() -> AsyncIterator[bytes]:
        nonlocal pulled
        block = bytes(range(256)) * 256  # 64 KiB
        while pulled < total:
            pulled += len(block)
            sent.update(block)
            yield block

    transport = H1Transport()
    headers = [(b"content-length", str(total).encode())]
    url = httpx.URL(f"http://127.0.0.1:{port}/v1/files")
    sending = asyncio.ensure_future(transport.send("POST", url, headers, None, TIMEOUTS, stream=upload()))
    await asyncio.sleep(0.5)
    pulled_while_stalled = pulled
    reading.set()
    response = await sending
    body = b"".join([c async for c in response.aiter_raw()])
    await response.aclose()
    await transport.aclose()
    server.close()
    await server.wait_closed()

    assert pulled_while_stalled < total // 2, (
        f"{pulled_while_stalled} bytes pulled while the server read none"
    )
    assert body == b"ok"
    assert received.hexdigest() == sent.hexdigest()


# ------------------------------------------------------------------------------ hostile upstreams


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


async def write_forever(writer: asyncio.StreamWriter, piece: bytes, limit: int = 16 * 1024 * 1024) -> bool:
    """Write `piece` over and over until the client hangs up (or `limit` bytes are out, then wait)."""
    sent = 0
    try:
        while sent < limit:
            writer.write(piece)
            sent += len(piece)
            await writer.drain()
        await asyncio.sleep(30)
    except ConnectionError:
        pass
    return False


@pytest.mark.parametrize(
    "flood",
    [
        (b"HTTP/1.1 200 OK\r\n", b"x-padding: " + b"p" * 1000 + b"\r\n"),
        (b"HTTP/1.1 200 OK\r\nx-endless: ", b"v" * 4096),
        (b"", b"HTTP/1.1 100 Continue\r\nx-hint: 1\r\n\r\n"),
        (CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n", b"x-trailer: " + b"t" * 1000 + b"\r\n"),
        (CHUNKED_HEAD + b"5;", b"e" * 4096),
    ],
    ids=[
        "headers-forever",
        "one-header-value-forever",
        "interim-heads-forever",
        "trailers-forever",
        "chunk-extension-forever",
    ],
)
async def test_a_head_or_trailers_past_max_head_bytes_are_refused_and_the_connection_dropped(scripted, flood):
    start, piece = flood

    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(start)
        return await write_forever(writer, piece)

    server = scripted(script)
    transport = H1Transport()  # the default cap: 64 KiB of head

    with pytest.raises(httpx.RemoteProtocolError, match="max_head_bytes"):
        await fetch(transport, server.url + "/x")
    assert transport.open_connections == 0
    await transport.aclose()


async def test_a_large_head_in_the_same_read_as_its_body_is_measured_too(scripted):
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-pad-%d: %s\r\n" % (i, b"p" * 900) for i in range(40))

    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(head + b"content-length: 2\r\n\r\nok")
        await writer.drain()
        return True

    server = scripted(script)
    small = H1Transport(max_head_bytes=16 * 1024)
    roomy = H1Transport(max_head_bytes=64 * 1024)

    with pytest.raises(httpx.RemoteProtocolError, match="max_head_bytes"):
        await fetch(small, server.url + "/x")
    assert await fetch(roomy, server.url + "/x") == (200, b"ok")
    await small.aclose()
    await roomy.aclose()


async def test_a_response_with_more_than_max_headers_is_refused(scripted):
    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        count = int(request.headers["x-count"])
        fields = b"".join(b"x-h%d: v\r\n" % i for i in range(count - 1))
        writer.write(b"HTTP/1.1 200 OK\r\n" + fields + b"content-length: 2\r\n\r\nok")
        await writer.drain()
        return True

    server = scripted(script)
    transport = H1Transport(max_headers=100)
    url = httpx.URL(server.url + "/x")

    with pytest.raises(httpx.RemoteProtocolError, match="max_headers"):
        await transport.send("GET", url, [(b"x-count", b"101")], b"", TIMEOUTS)
    assert transport.open_connections == 0
    response = await transport.send("GET", url, [(b"x-count", b"100")], b"", TIMEOUTS)
    assert len(response.headers) == 100
    await response.aclose()
    await transport.aclose()


async def test_bytes_after_a_complete_response_are_not_parsed_into_it_nor_into_the_next(scripted):
    stray = b"HTTP/1.1 200 OK\r\nset-cookie: session=someone-elses\r\ncontent-length: 7\r\n\r\nnot-you"

    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        if len(server.requests) == 1:
            writer.write(b"HTTP/1.1 204 No Content\r\nx-first: yes\r\n\r\n" + stray)
        else:
            writer.write(framed(ANSWER, "length"))
        await writer.drain()
        return True

    server = scripted(script)
    transport = H1Transport()

    response = await transport.send("POST", httpx.URL(server.url + "/x"), [], b"{}", TIMEOUTS)
    headers = list(response.headers)
    assert response.status == 204
    assert [c async for c in response.aiter_raw()] == []
    await response.aclose()
    assert response.headers == headers == [(b"x-first", b"yes")]
    assert await fetch(transport, server.url + "/x") == (200, ANSWER)
    assert server.accepted == 2  # the connection the stray bytes came on was not used again
    await transport.aclose()


@pytest.mark.parametrize(
    "trailers",
    [b"x-trailer: sneaky\r\n", b"content-length: 2\r\n", b"x-a: 1\r\ncontent-length: 2\r\nx-b: 2\r\n"],
    ids=["plain-trailer", "content-length-trailer", "mixed-trailers"],
)
async def test_chunked_trailers_are_dropped_and_never_cut_the_body_short(scripted, trailers):
    body = b"0123456789" * 10

    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(framed(body, "chunked")[: -len(b"\r\n")] + trailers + b"\r\n")
        await writer.drain()
        return True

    server = scripted(script)
    transport = H1Transport()

    for _ in range(2):
        response = await transport.send("GET", httpx.URL(server.url + "/x"), [], b"", TIMEOUTS)
        head = list(response.headers)
        assert b"".join([c async for c in response.aiter_raw()]) == body
        assert response.headers == head
        assert {name for name, _ in response.headers} == {b"content-type", b"transfer-encoding"}
        await response.aclose()
    assert server.accepted == 1
    await transport.aclose()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n\x81\x05hello",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ],
    ids=["with-upgrade-header", "bare"],
)
async def test_a_101_switching_protocols_is_a_protocol_error_not_an_answer(scripted, reply):
    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply)
        await writer.drain()
        return False

    server = scripted(script)
    transport = H1Transport()

    with pytest.raises(httpx.RemoteProtocolError, match="101"):
        await fetch(transport, server.url + "/x")
    assert transport.open_connections == 0
    await transport.aclose()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (RST) rather than a clean FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_a_reset_during_a_close_delimited_body_is_an_error_not_its_end(scripted):
    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nthe first half of")
        await writer.drain()
        await asyncio.sleep(0.2)  # the client has read what came so far
        reset(writer)
        return False

    server = scripted(script)
    transport = H1Transport()

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError), match="reset"):
        await fetch(transport, server.url + "/x")
    assert transport.open_connections == 0
    await transport.aclose()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nx-folded: one\r\n two\r\ncontent-length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\ncontent-length: 5\n\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello<stray bytes after the answer>",
    ],
    ids=["duplicate-content-length", "content-length-list", "obs-fold", "bare-lf", "stray-bytes-after"],
)
async def test_answers_httpx_reads_are_read_whole(scripted, reply):
    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply)
        await writer.drain()
        return True

    server = scripted(script)
    transport = H1Transport()

    assert await fetch(transport, server.url + "/x") == (200, b"hello")
    await transport.aclose()


@pytest.mark.parametrize(
    "coding",
    [b"gzip, chunked", b"identity", b"xchunked", b"chunked-foo", b"chunked, chunked"],
)
async def test_a_transfer_coding_other_than_exactly_chunked_is_a_protocol_error(scripted, coding):
    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: " + coding + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        await writer.drain()
        return False

    server = scripted(script)
    transport = H1Transport()

    with pytest.raises(httpx.RemoteProtocolError, match="transfer-coding"):
        await fetch(transport, server.url + "/x")
    assert transport.open_connections == 0
    await transport.aclose()


@pytest.mark.unit
def test_headers_a_connection_header_nominates_are_not_forwarded_either_way():
    raw = [
        (b"Connection", b"keep-alive, X-Hop-Token"),
        (b"x-hop-token", b"secret"),
        (b"connection", b" X-Other-Hop ,,"),
        (b"X-Other-Hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"content-type", b"application/json"),
        (b"x-end-to-end", b"kept"),
    ]

    assert forward_headers(raw) == [(b"content-type", b"application/json"), (b"x-end-to-end", b"kept")]
    assert response_headers(raw) == [(b"content-type", b"application/json"), (b"x-end-to-end", b"kept")]
    plain = [(b"Content-Type", b"text/plain"), (b"Content-Length", b"3")]
    assert forward_headers(plain) == [(b"Content-Type", b"text/plain")]
    assert response_headers(plain) == [(b"content-type", b"text/plain"), (b"content-length", b"3")]


# ------------------------------------------------------------------------------ through the proxy


def test_a_clients_expect_100_continue_is_answered_by_the_proxy_not_forwarded(scripted, proxy_factory):
    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        if "expect" in request.headers:  # a server may answer 100 first, in its own segment
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(framed(ANSWER, "length"))
        await writer.drain()
        return True

    primary = scripted(script)
    proxy = proxy_factory(primary.url + "/v1", None)

    response = httpx.post(
        proxy.base_url + "/chat/completions",
        json={"model": "m", "messages": CHAT},
        headers={"Expect": "100-continue"},
    )

    assert response.status_code == 200
    assert response.content == ANSWER
    assert "expect" not in primary.requests[0].headers


def test_headers_named_in_connection_go_no_further_than_their_hop(scripted, proxy_factory):
    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        extra = b"connection: x-upstream-hop\r\nx-upstream-hop: for the proxy only\r\nx-kept: yes\r\n"
        writer.write(framed(ANSWER, "length", extra=extra))
        await writer.drain()
        return True

    primary = scripted(script)
    proxy = proxy_factory(primary.url + "/v1", None)

    response = httpx.post(
        proxy.base_url + "/chat/completions",
        json={"model": "m", "messages": CHAT},
        headers={"Connection": "keep-alive, X-Client-Hop", "X-Client-Hop": "for the proxy only"},
    )

    assert response.status_code == 200
    assert "x-upstream-hop" not in response.headers
    assert response.headers["x-kept"] == "yes"
    assert "x-client-hop" not in primary.requests[0].headers


def test_a_primary_that_switches_protocols_is_a_502(scripted, proxy_factory):
    async def script(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
        await writer.drain()
        return False

    primary = scripted(script)
    proxy = proxy_factory(primary.url + "/v1", None)

    response = httpx.post(proxy.base_url + "/chat/completions", json={"model": "m", "messages": CHAT})

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"


def test_a_candidate_answer_past_the_record_cap_is_cut_off_and_recorded_as_truncated(
    scripted, proxy_factory, primary
):
    async def endless(request: ScriptedRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 999999999\r\n\r\n"
        )
        return await write_forever(writer, b'{"choices": [' * 1024)

    candidate = scripted(endless)
    proxy = proxy_factory(
        primary.base_url,
        candidate.url + "/v1",
        shadow={"max_record_bytes": 4096},
        candidate={"timeout_s": 30, "model": "candidate-model"},
    )

    answer = httpx.post(proxy.base_url + "/chat/completions", json={"model": "m", "messages": CHAT})

    assert answer.status_code == 200
    [pair] = proxy.pairs(expected=1, timeout=10)
    assert pair["candidate"]["truncated"] is True
    assert pair["candidate"]["error"] is None
    assert pair["candidate"]["text"].startswith('{"choices": [')
    assert pair["primary"]["truncated"] is False
    wait_for(lambda: candidate.closed == 1, what="the proxy dropped the candidate's connection")


def test_a_primary_answer_past_the_record_cap_reaches_the_client_whole(
    upstream_factory, proxy_factory, candidate
):
    text = "0123456789abcdef" * (9 * 1024 * 1024 // 16)  # 9 MiB: past the default record cap (1 MiB plain)
    primary = upstream_factory("primary-model", lambda route, body: Reply(text=text))
    proxy = proxy_factory(primary.base_url, candidate.base_url)

    answer = httpx.post(
        proxy.base_url + "/chat/completions", json={"model": "m", "messages": CHAT}, timeout=30
    )

    assert answer.json()["choices"][0]["message"]["content"] == text
    [pair] = proxy.pairs(expected=1, timeout=10)
    assert pair["primary"]["truncated"] is True
    assert pair["candidate"]["truncated"] is False


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("tls")
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    ca.cert_pem.write_to_path(files["ca"])
    cert.cert_chain_pems[0].write_to_path(files["cert"])
    cert.private_key_pem.write_to_path(files["key"])
    return files


def test_an_https_primary_signed_by_a_private_ca_is_served_with_ca_file_and_refused_without(
    tls_files, proxy_factory, candidate
):
    sim = SimulatedLLM("primary-tls", lambda route, body: Reply(text="Delivered over TLS."))
    handle = serve_in_thread(sim.app, ssl_certfile=str(tls_files["cert"]), ssl_keyfile=str(tls_files["key"]))
    try:
        assert handle.base_url.startswith("https://127.0.0.1:")
        trusted = proxy_factory(
            handle.base_url,
            candidate.base_url,
            primary={"url": handle.base_url, "ca_file": str(tls_files["ca"])},
        )
        untrusted = proxy_factory(handle.base_url, candidate.base_url)

        for _ in range(3):  # the TLS connection is pooled and reused
            answer = openai.OpenAI(
                base_url=trusted.base_url, api_key="sk-x", max_retries=0
            ).chat.completions.create(model="m", messages=CHAT)
            assert answer.choices[0].message.content == "Delivered over TLS."
        [first, *_] = trusted.pairs(expected=3)
        assert first["primary"]["text"] == "Delivered over TLS."

        with pytest.raises(openai.InternalServerError) as refused:
            openai.OpenAI(base_url=untrusted.base_url, api_key="sk-x", max_retries=0).chat.completions.create(
                model="m", messages=CHAT
            )
        assert refused.value.status_code == 502
        assert refused.value.body["code"] == "upstream_unavailable"
        wait_for(
            lambda: untrusted.metric(
                "shadowtap_primary_errors_total", route="/v1/chat/completions", kind="connect"
            ),
            what="the certificate failure counted as a connect error",
        )
    finally:
        handle.stop()
