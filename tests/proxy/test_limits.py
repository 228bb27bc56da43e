"""The client-side limits: what a client that sends too much, too slowly, or reads too slowly gets.

Each limit is a `server.*` key. A refused request gets an OpenAI-shaped error with the status the
limit names, is counted in `shadowtap_requests_rejected_total{reason}`, and never reaches the primary;
a client that stalls is cut off so that it cannot hold a connection, a socket or the primary's pool.
The clients here are raw sockets, so every byte (and every pause) is the test's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from shadowtap.testing.upstreams import Reply, ServerHandle, serve_in_thread
from tests.helpers import free_port, healthy, wait_for

CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Where is my parcel?"}]}).encode()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def read_reply(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the proxy sends until it closes the connection."""
    sock.settimeout(timeout)
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except ConnectionResetError:
        pass
    return reply


def status_and_error(reply: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


def chat_head(length: int | None = None, extra: str = "", target: str = "/v1/chat/completions") -> bytes:
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (
        f"POST {target} HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n{framing}{extra}\r\n"
    ).encode()


@pytest.fixture
def limited(proxy_factory, primary) -> Callable[..., Any]:
    """A proxy in front of the simulated primary with some `server.*` limits set (no candidate)."""

    def make(**server: Any) -> Any:
        return proxy_factory(primary.base_url, None, server=server)

    return make


# ---------------------------------------------------------------------------------------------- heads


def test_a_request_head_over_the_byte_limit_gets_a_431_and_is_not_forwarded(limited, primary):
    proxy = limited(max_head_bytes=16 * 1024)
    padding = "".join(f"X-Pad-{i}: {'a' * 100}\r\n" for i in range(200))  # ~22 KiB of small headers

    with connect(proxy.handle.port) as sock:
        sock.sendall(chat_head(len(CHAT), padding) + CHAT)
        status, error = status_and_error(read_reply(sock))

    assert status == 431
    assert error["code"] == "request_header_fields_too_large"
    assert "16384 bytes" in error["message"]
    assert primary.sim.received == []
    assert proxy.metric("shadowtap_requests_rejected_total", reason="head_too_large") == 1


def test_a_head_just_under_the_limit_is_served(limited, primary):
    proxy = limited(max_head_bytes=16 * 1024)
    padding = "".join(f"X-Pad-{i}: {'a' * 200}\r\n" for i in range(60))  # ~12.5 KiB in 60 headers

    with connect(proxy.handle.port) as sock:
        sock.sendall(chat_head(len(CHAT), padding + "Connection: close\r\n") + CHAT)
        reply = read_reply(sock)

    assert reply.startswith(b"HTTP/1.1 200")
    assert len(primary.sim.received) == 1


def test_more_headers_than_the_limit_gets_a_431(limited, primary):
    proxy = limited(max_headers=30)
    padding = "".join(f"X-H{i}: 1\r\n" for i in range(40))

    with connect(proxy.handle.port) as sock:
        sock.sendall(chat_head(len(CHAT), padding) + CHAT)
        status, _ = status_and_error(read_reply(sock))

    assert status == 431
    assert primary.sim.received == []


def test_a_head_that_never_ends_is_cut_off_near_the_limit_not_buffered(limited, primary):
    """A client streaming header bytes forever (one header line that never ends) is answered 431 and
    disconnected after about `max_head_bytes`, long before it has sent its 8 MiB."""
    proxy = limited(max_head_bytes=64 * 1024)
    sent = 0
    with connect(proxy.handle.port) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: proxy\r\nX-Endless: ")
        try:
            while sent < 8 << 20:
                sock.sendall(b"a" * 16384)
                sent += 16384
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_reply(sock)

    assert sent < 4 << 20, f"the proxy read {sent} bytes of one head"
    assert reply.startswith(b"HTTP/1.1 431")
    assert proxy.metric("shadowtap_requests_rejected_total", reason="head_too_large") == 1
    assert primary.sim.received == []


# ---------------------------------------------------------------------------------------------- bodies


def test_a_declared_body_over_the_limit_gets_a_413_before_it_is_sent(limited, primary):
    """The 413 comes back on the head alone: the client need not upload 64 MiB to learn it is too big."""
    proxy = limited(max_body_bytes=1 << 20)
    with connect(proxy.handle.port) as sock:
        sock.sendall(chat_head(64 << 20))
        status, error = status_and_error(read_reply(sock))

    assert status == 413
    assert error["code"] == "request_too_large"
    assert "1048576 bytes" in error["message"]
    assert primary.sim.received == []
    assert proxy.metric("shadowtap_requests_rejected_total", reason="body_too_large") == 1


def test_a_chunked_body_that_grows_past_the_limit_gets_a_413_and_nothing_is_forwarded(limited, primary):
    proxy = limited(max_body_bytes=256 * 1024)
    chunk = b"a" * 65536
    with connect(proxy.handle.port) as sock:
        sock.sendall(chat_head(None))
        try:
            for _ in range(8):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _ = status_and_error(read_reply(sock))

    assert status == 413
    assert primary.sim.received == []
    assert proxy.metric("shadowtap_requests_rejected_total", reason="body_too_large") == 1
    assert proxy.metric("shadowtap_incomplete_requests_total") == 0  # a refusal, not a hang-up


class UploadPrimary:
    """A primary that hashes each upload as it arrives and says how much of it has come in so far."""

    def __init__(self) -> None:
        self.received = 0
        self.digests: list[str] = []
        self.framing: list[str] = []
        self.first_mib = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        self.framing.append("content-length" if b"content-length" in headers else "chunked")
        digest = hashlib.sha256()
        more = True
        while more:
            message = await receive()
            digest.update(message.get("body", b""))
            self.received += len(message.get("body", b""))
            if self.received > 1 << 20:
                self.first_mib.set()
            more = message.get("more_body", False)
        self.digests.append(digest.hexdigest())
        body = json.dumps({"id": "file-1", "object": "file", "bytes": self.received}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def upload_primary() -> Iterator[tuple[UploadPrimary, ServerHandle]]:
    app = UploadPrimary()
    handle = serve_in_thread(app)
    yield app, handle
    handle.stop()


def test_a_body_over_the_mirroring_limit_streams_to_the_primary_as_it_arrives(proxy_factory, upload_primary):
    """A 20 MiB upload reaches the primary while the client is still sending it (the proxy holds no
    copy), with its Content-Length, byte for byte."""
    app, handle = upload_primary
    proxy = proxy_factory(handle.base_url, None, shadow={"max_body_bytes": 1 << 20})
    payload = bytes(range(256)) * (20 * 4096)  # 20 MiB
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with connect(proxy.handle.port) as sock:
        sock.sendall(head + payload[: 4 << 20])
        assert app.first_mib.wait(10), "the primary saw nothing of the body while the client paused"
        seen_while_paused = app.received
        sock.sendall(payload[4 << 20 :])
        reply = read_reply(sock)

    assert seen_while_paused < len(payload)
    assert reply.startswith(b"HTTP/1.1 200")
    assert app.digests == [hashlib.sha256(payload).hexdigest()]
    assert app.framing == ["content-length"]


def test_a_client_that_hangs_up_mid_body_is_counted_and_logged_once_not_per_client(limited, primary, caplog):
    proxy = limited()
    caplog.set_level(logging.INFO)
    for _ in range(30):
        with connect(proxy.handle.port) as sock:
            sock.sendall(chat_head(len(CHAT) + 100) + CHAT[:10])
            time.sleep(0.01)

    wait_for(
        lambda: proxy.metric("shadowtap_incomplete_requests_total") == 30, 10, what="30 counted hang-ups"
    )
    lines = [r for r in caplog.records if "hung up" in r.getMessage() or r.exc_info]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert lines[0].exc_info is None
    assert primary.sim.received == []


# ---------------------------------------------------------------------------------------------- slow clients


def test_a_head_dribbled_slower_than_the_head_deadline_gets_a_408(limited, primary):
    proxy = limited(head_timeout_s=0.5)
    started = time.monotonic()
    with connect(proxy.handle.port) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
        reply = b""
        try:
            for _ in range(40):  # a header byte every 0.1 s: never idle, never done
                sock.sendall(b"X")
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_reply(sock)

    assert time.monotonic() - started < 3.5
    status, error = status_and_error(reply)
    assert status == 408
    assert error["code"] == "request_timeout"
    assert proxy.metric("shadowtap_requests_rejected_total", reason="head_timeout") == 1


def test_a_body_dribbled_past_the_body_deadline_gets_a_408_and_nothing_is_forwarded(limited, primary):
    proxy = limited(body_timeout_s=0.5)
    with connect(proxy.handle.port) as sock:
        sock.sendall(chat_head(len(CHAT)))
        try:
            for byte in CHAT:
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _ = status_and_error(read_reply(sock))

    assert status == 408
    assert primary.sim.received == []
    assert proxy.metric("shadowtap_requests_rejected_total", reason="body_timeout") == 1


def test_idle_sockets_cannot_lock_users_out(limited, primary):
    """More silent sockets than the connection cap: while they are open a user gets an OpenAI-shaped
    503; once the idle timeout has closed them, the user is served."""
    proxy = limited(limit_concurrency=20, idle_timeout_s=0.5)
    idle = [connect(proxy.handle.port) for _ in range(25)]
    try:
        time.sleep(0.1)
        busy = httpx.post(proxy.base_url + "/chat/completions", content=CHAT, timeout=10)
        wait_for(lambda: all(s.recv(1) == b"" for s in idle), 5, what="the idle sockets to be closed")
        served = httpx.post(proxy.base_url + "/chat/completions", content=CHAT, timeout=10)
    finally:
        for s in idle:
            s.close()

    assert busy.status_code == 503
    assert busy.json()["error"]["code"] == "overloaded"
    assert busy.headers["retry-after"] == "1"
    assert proxy.metric("shadowtap_requests_rejected_total", reason="concurrency") == 1
    assert served.status_code == 200


class LargeDownload:
    """A primary whose answer is 256 MiB, produced only as fast as it is read."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")],
            }
        )
        block = b"x" * (1 << 20)
        for _ in range(256):
            await send({"type": "http.response.body", "body": block, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def test_a_client_that_stops_reading_is_dropped_and_frees_the_primarys_connection(proxy_factory, primary):
    """With one connection to the primary, a client that never reads its (large) answer would make every
    other user wait the primary's whole timeout; past `send_timeout_s` it is dropped instead."""
    handle = serve_in_thread(LargeDownload())
    try:
        proxy = proxy_factory(
            handle.base_url,
            None,
            server={"send_timeout_s": 0.5},
            primary={"max_connections": 1, "timeout_s": 20},
        )
        with connect(proxy.handle.port) as stalled:
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.sendall(b"GET /v1/files/file-1/content HTTP/1.1\r\nHost: proxy\r\n\r\n")
            time.sleep(0.2)
            started = time.monotonic()
            with httpx.Client(timeout=20) as client:
                with client.stream("GET", proxy.base_url + "/files/file-1/content") as other:
                    first = next(other.iter_raw())
            waited = time.monotonic() - started
    finally:
        handle.stop()

    assert other.status_code == 200 and first
    assert waited < 10, f"the second user waited {waited:.1f}s"
    assert proxy.metric("shadowtap_requests_rejected_total", reason="send_timeout") == 1


# ---------------------------------------------------------------------------------------------- methods, forwarding


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "PATCH", "CONNECT-ISH"])
def test_a_method_the_openai_api_does_not_use_gets_a_405_and_is_not_forwarded(limited, primary, method):
    proxy = limited()
    with connect(proxy.handle.port) as sock:
        sock.sendall(f"{method} /v1/models HTTP/1.1\r\nHost: proxy\r\n\r\n".encode())
        reply = read_reply(sock)

    if method == "CONNECT-ISH":  # not a method at all: the parser refuses it
        assert reply.startswith(b"HTTP/1.1 400")
        return
    status, error = status_and_error(reply)
    assert status == 405
    assert error["code"] == "method_not_allowed"
    assert b"\r\nallow: GET, POST, DELETE, HEAD, OPTIONS\r\n" in reply
    assert primary.sim.received == []
    assert proxy.metric("shadowtap_requests_rejected_total", reason="method") == 1


def test_configured_methods_are_forwarded(limited, primary):
    proxy = limited(methods=["GET", "POST", "PATCH"])
    reply = httpx.patch(proxy.base_url + "/models", timeout=10)

    assert reply.status_code != 405
    assert [r.method for r in primary.sim.received] == ["PATCH"]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("append", "203.0.113.7, 127.0.0.1"), ("pass", "203.0.113.7"), ("drop", None)],
)
def test_x_forwarded_for_reaches_the_primary_as_configured(limited, primary, mode, expected):
    proxy = limited(forwarded_for=mode)
    client = openai.OpenAI(
        base_url=proxy.base_url, api_key="sk-user", default_headers={"X-Forwarded-For": "203.0.113.7"}
    )
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    client.close()

    assert primary.sim.received[0].headers.get("x-forwarded-for") == expected


def test_a_client_without_x_forwarded_for_is_named_in_it(limited, primary):
    proxy = limited()
    httpx.post(proxy.base_url + "/chat/completions", content=CHAT, timeout=10)

    assert primary.sim.received[0].headers.get("x-forwarded-for") == "127.0.0.1"


def test_the_proxys_own_failure_is_an_openai_shaped_500_and_counted(limited, primary, monkeypatch):
    proxy = limited()
    from shadowtap.proxy.app import Proxy

    def broken(self: Proxy, scope: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        raise RuntimeError("a bug in the proxy")

    monkeypatch.setattr(Proxy, "_headers_to_forward", broken)
    reply = httpx.post(proxy.base_url + "/chat/completions", content=CHAT, timeout=10)

    assert reply.status_code == 500
    assert reply.json()["error"]["code"] == "proxy_error"
    assert proxy.metric("shadowtap_proxy_errors_total", route="/v1/chat/completions") == 1
    assert primary.sim.received == []


def _soft_file_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc")


def test_serve_raises_a_low_open_file_limit_to_what_its_connection_cap_needs(tmp_path, primary):
    """Started under `ulimit -n 256`, the proxy raises its own soft limit (up to the hard one) to fit
    server.limit_concurrency and the upstream pools, so idle sockets cannot exhaust its descriptors."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 300 + 10 + 64  # limit_concurrency + primary.max_connections + the margin
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard open-file limit here is {hard}")
    port = free_port()
    config = tmp_path / "shadowtap.yaml"
    config.write_text(
        json.dumps(
            {
                "primary": {"url": primary.base_url, "max_connections": 10},
                "server": {"port": port, "limit_concurrency": 300},
                "sink": {"data_dir": str(tmp_path / "data")},
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "shadowtap.cli", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("SHADOWTAP_")},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    )
    try:
        wait_for(lambda: healthy(f"http://127.0.0.1:{port}"), 30, interval=0.05, what="shadowtap serve")
        limit = _soft_file_limit(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    assert limit == needed


def test_a_primary_answer_over_the_record_cap_reaches_the_client_whole_and_is_recorded_truncated(
    proxy_factory, upstream_factory
):
    long_text = "All refunds are processed within five working days. " * 8000  # ~420 KB of answer
    primary = upstream_factory("primary-model", lambda route, body: Reply(text=long_text))
    candidate = upstream_factory("candidate-model")
    proxy = proxy_factory(primary.base_url, candidate.base_url, shadow={"max_record_bytes": 64 * 1024})
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-user", max_retries=0)
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Refunds?"}])
    client.close()

    assert answer.choices[0].message.content == long_text
    [pair] = proxy.pairs(1)
    assert pair["primary"]["truncated"] is True
    assert pair["candidate"]["truncated"] is False
    assert proxy.metric("shadowtap_records_truncated_total", side="primary") == 1
    assert proxy.metric("shadowtap_records_truncated_total", side="candidate") == 0


def test_records_waiting_to_be_masked_are_bounded_and_the_excess_counted(
    proxy, primary, candidate, monkeypatch
):
    """While the recorder is held up (a very long answer being masked), finished pairs wait in a queue
    of `shadow.queue_size`; past it they are dropped and counted, and users are served throughout."""
    from shadowtap.proxy.redact import Redactor

    release = threading.Event()
    original = Redactor.atext

    async def held(self: Redactor, value: str) -> str:
        while not release.is_set():
            await asyncio.sleep(0.01)
        return await original(self, value)

    monkeypatch.setattr(Redactor, "atext", held)
    queue_size = proxy.settings.shadow.queue_size
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-user", max_retries=0)
    statuses = []
    for i in range(queue_size + 6):
        reply = client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": f"question {i}"}]
        )
        statuses.append(reply.status_code)
    wait_for(
        lambda: (
            proxy.metric(
                "shadowtap_shadow_dropped_total", route="/v1/chat/completions", reason="recording_backlog"
            )
            >= 5
        ),
        10,
        what="pairs dropped past the recording queue",
    )
    release.set()
    client.close()

    assert statuses == [200] * (queue_size + 6)

    def dropped() -> float:
        return proxy.metric(
            "shadowtap_shadow_dropped_total", route="/v1/chat/completions", reason="recording_backlog"
        )

    # The last shadows and the pair that was held mid-mask land after the release: every request ends up
    # either recorded or counted as dropped, none in neither and none in both.
    wait_for(
        lambda: len(proxy.pairs()) + dropped() == queue_size + 6,
        10,
        what=f"{queue_size + 6} requests each recorded or counted as dropped",
    )
    time.sleep(0.5)  # and nothing is counted twice once all have landed
    assert len(proxy.pairs()) + dropped() == queue_size + 6
    assert len(proxy.pairs()) >= queue_size
