"""uvicorn's httptools protocol with the proxy's client-side limits, and heads that leave in one write.

Limits (each a `server.*` key; docs/guarantees.md says what a client over one gets): a request head is
at most `max_head_bytes` and `max_headers` (431), a body at most `max_body_bytes` (413), a head must be
whole within `head_timeout_s` of the connection's start or of the previous response's end and a body
within `body_timeout_s` of its head (408), an idle connection is closed after `idle_timeout_s`, a client
that reads none of its answer for `send_timeout_s` is disconnected, and past `limit_concurrency` open
connections a request gets a 503. Every refusal is counted in `requests_rejected_total{reason}` and is
an error body an OpenAI SDK parses; none reaches the app, so nothing is forwarded.

uvicorn writes the status line and headers when the app sends `http.response.start`, then the body on
`http.response.body`: two syscalls, and a client that may wake up twice. Here the head waits until the
body's first write (which, for a plain response, follows at once) or the end of the event loop's
current pass (a streamed response whose first chunk is not in yet), whichever comes first. Every other
write goes straight out, so streamed chunks are never held back.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, ClassVar, cast

import httptools
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from shadowtap.config import ServerSettings
from shadowtap.errors import openai_error_body
from shadowtap.metrics import Metrics
from shadowtap.proxy.logs import ThrottledLog

__all__ = ["ProxyHttpProtocol"]

log = logging.getLogger("shadowtap.proxy")

_HEAD = b"HTTP/1.1 "


def _drop_concurrency_warning(record: logging.LogRecord) -> bool:
    """uvicorn logs each request refused past limit_concurrency; this module counts them and logs a
    line per interval instead."""
    return record.getMessage() != "Exceeded concurrency limit."


class _HeadCoalescingTransport:
    """Wraps the connection's transport; everything but `write` and `close` is passed through."""

    __slots__ = ("_transport", "_head", "_flush_handle")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._cancel_flush()
            self._transport.write(head + data)
        elif data.startswith(_HEAD):
            self._head = data
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._head is not None:
            head, self._head = self._head, None
            if not self._transport.is_closing():
                self._transport.write(head)

    def _cancel_flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    def close(self) -> None:
        self._cancel_flush()
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Refusal(Exception):
    """Raised from a parser callback to stop parsing a request the proxy refuses."""

    def __init__(self, status: int, reason: str, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.code, self.message = status, reason, code, message


_STATUS_LINES = {
    405: b"HTTP/1.1 405 Method Not Allowed\r\n",
    408: b"HTTP/1.1 408 Request Timeout\r\n",
    413: b"HTTP/1.1 413 Content Too Large\r\n",
    431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
    503: b"HTTP/1.1 503 Service Unavailable\r\n",
}


def error_response(status: int, code: str, message: str, extra: bytes = b"") -> bytes:
    """A whole `connection: close` response carrying an OpenAI-shaped error body."""
    body = json.dumps(openai_error_body(message, "invalid_request_error", code)).encode()
    return b"%scontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n%s\r\n%s" % (
        _STATUS_LINES[status],
        len(body),
        extra,
        body,
    )


class ProxyHttpProtocol(HttpToolsProtocol):
    """Pass as uvicorn's `http` protocol class, made by `bound` for the settings and metrics in use."""

    limits: ClassVar[ServerSettings] = ServerSettings()
    metrics: ClassVar[Metrics | None] = None
    throttled: ClassVar[ThrottledLog] = ThrottledLog(log)

    @classmethod
    def bound(cls, limits: ServerSettings, metrics: Metrics) -> type[ProxyHttpProtocol]:
        """This protocol enforcing `limits` and counting refusals in `metrics`."""
        logging.getLogger("uvicorn.error").addFilter(_drop_concurrency_warning)  # counted and logged here
        attrs = {"limits": limits, "metrics": metrics, "throttled": ThrottledLog(log)}
        return type(cls.__name__, (cls,), attrs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_pending = True  # between requests or inside a head: head limits and deadline apply
        self._head_seen = 0  # bytes received while a head was pending (caps a head that never ends)
        self._head_counted = 0  # bytes of the current head's request line and header fields
        self._header_count = 0
        self._body_seen = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._send_deadline: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_HeadCoalescingTransport(transport))  # type: ignore[arg-type]
        # A connection that never sends a byte is idle from the start, not only after a response.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )
        self._arm(self.limits.head_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._send_deadline is not None:
            self._send_deadline.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._head_pending:
            self._head_seen += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # the proxy serves no upgrades; the request is plain HTTP
            self.throttled("upgrade", "a client asked to upgrade its connection; it was served as plain HTTP")
        except httptools.HttpParserError as exc:
            refusal = exc.__context__ if isinstance(exc.__context__, _Refusal) else None
            if refusal is None:
                self.throttled("malformed", "refused a malformed HTTP request from a client")
                self.send_400_response("Invalid HTTP request received.")
            else:
                self._refuse(refusal)
            return
        if self._head_pending and self._head_seen > self.limits.max_head_bytes:
            self._refuse(self._head_too_large())

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_counted = self._header_count = self._body_seen = 0

    def on_url(self, url: bytes) -> None:
        self._head_counted += len(url)
        if self._head_counted > self.limits.max_head_bytes:
            raise self._head_too_large()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_counted += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers or self._head_counted > self.limits.max_head_bytes:
            raise self._head_too_large()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._disarm()
        method = self.parser.get_method().decode("ascii", "replace")
        if method not in self.limits.methods:
            message = (
                f"The proxy does not forward {method} requests (allowed: {', '.join(self.limits.methods)})."
            )
            raise _Refusal(405, "method", "method_not_allowed", message)
        length = self._declared_length()
        if length is not None and length > self.limits.max_body_bytes:
            raise self._body_too_large()
        super().on_headers_complete()
        if length != 0:  # a body follows (a length, or chunked)
            self._arm(self.limits.body_timeout_s, self._body_timed_out)

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        if self._body_seen > self.limits.max_body_bytes:
            raise self._body_too_large()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()
        self._head_pending = True
        self._head_seen = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm(self.limits.head_timeout_s, self._head_timed_out)

    # ------------------------------------------------------------------ writing

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_deadline is None:
            self._send_deadline = self.loop.call_later(self.limits.send_timeout_s, self._send_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_deadline is not None:
            self._send_deadline.cancel()
            self._send_deadline = None

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if app is service_unavailable:  # uvicorn's limit_concurrency was reached
            app = self._overloaded
        super()._start_asgi_task(cycle, app)

    async def _overloaded(self, scope: Any, receive: Any, send: Any) -> None:
        self._count(
            "concurrency",
            "refused a request: %d connections open (server.limit_concurrency)",
            len(self.connections),
        )
        message = "The proxy has too many open connections; retry shortly."
        body = json.dumps(openai_error_body(message, "server_error", "overloaded")).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"), (b"retry-after", b"1")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    # ------------------------------------------------------------------ limits

    def _declared_length(self) -> int | None:
        """The body's declared length: 0 for none, None for chunked (or a length the parser refuses)."""
        length = 0
        for name, value in self.headers:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return None
            elif name == b"transfer-encoding":
                return None
        return length

    def _head_too_large(self) -> _Refusal:
        limits = self.limits
        return _Refusal(
            431,
            "head_too_large",
            "request_header_fields_too_large",
            f"The request head exceeds the proxy's limit ({limits.max_head_bytes} bytes, {limits.max_headers} headers).",
        )

    def _body_too_large(self) -> _Refusal:
        return _Refusal(
            413,
            "body_too_large",
            "request_too_large",
            f"The request body exceeds the proxy's limit of {self.limits.max_body_bytes} bytes.",
        )

    def _head_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._head_seen == 0:  # nothing of a next request: an idle connection, closed quietly
            self.transport.close()
            return
        seconds = self.limits.head_timeout_s
        self._refuse(
            _Refusal(408, "head_timeout", "request_timeout", f"The request head took over {seconds:g}s.")
        )

    def _body_timed_out(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            seconds = self.limits.body_timeout_s
            self._refuse(
                _Refusal(408, "body_timeout", "request_timeout", f"The request body took over {seconds:g}s.")
            )

    def _send_timed_out(self) -> None:
        self._send_deadline = None
        self._count(
            "send_timeout", "disconnected a client that read nothing for %gs", self.limits.send_timeout_s
        )
        self.transport.abort()

    def _refuse(self, refusal: _Refusal) -> None:
        """Answer `refusal` (unless a response is already under way) and close the connection."""
        self._count(refusal.reason, "refused a client request (%s): %s", refusal.reason, refusal.message)
        self._disarm()
        cycle = self.cycle
        answering = cycle is not None and cycle.response_started and not cycle.response_complete
        if not answering and not self.transport.is_closing():
            extra = (
                b"allow: %s\r\n" % ", ".join(self.limits.methods).encode() if refusal.status == 405 else b""
            )
            self.transport.write(error_response(refusal.status, refusal.code, refusal.message, extra))
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's `receive` says so, and nothing more is sent
            scope = cast(dict[str, Any], cycle.scope)  # the app's scope, with a key of the proxy's own
            scope["shadowtap.refused"] = refusal.reason  # counted here, not as a client hang-up
            cycle.message_event.set()
        self.transport.close()

    def _count(self, reason: str, message: str, *args: object) -> None:
        if self.metrics is not None:
            self.metrics.requests_rejected.labels(reason=reason).inc()
        self.throttled(reason, message, *args)

    def _arm(self, seconds: float, expired: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
