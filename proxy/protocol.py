"""uvicorn's httptools protocol, with a response's head and body leaving in one write.

uvicorn writes the status line and headers when the app sends `http.response.start`, then the body on
`http.response.body`: two syscalls, and a client that may wake up twice. Here the head waits until the
body's first write (which, for a plain response, follows at once) or the end of the event loop's
current pass (a streamed response whose first chunk is not in yet), whichever comes first. Every other
write goes straight out, so streamed chunks are never held back.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD = b"HTTP/1.1 "


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


class ProxyHttpProtocol(HttpToolsProtocol):
    """Pass as uvicorn's `http` protocol class."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_HeadCoalescingTransport(transport))  # type: ignore[arg-type]
