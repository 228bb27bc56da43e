"""The response side of a proxied request: relaying a body as it arrives, and noticing a client that left."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from shadowtap.metrics import Metrics


class StreamRelay:
    """An ASGI response relaying body chunks as they come. A client that hangs up part-way is noticed by
    `ClientWatch` (which `app.FastPath` starts for every request), which cancels the relay; the relay's
    clean-up then hangs up on the primary."""

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        status: int,
        raw_headers: list[tuple[bytes, bytes]],
        on_close: Callable[[], Awaitable[None]],
    ) -> None:
        self.chunks = chunks
        self.status = status
        self.raw_headers = raw_headers
        self.on_close = on_close

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status, "headers": self.raw_headers})
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self.chunks.aclose()  # runs the relay's own clean-up if it stopped at a `yield`
            await self.on_close()


class RequestClock:
    """A request's start (its body read, or its first part when the rest streams to the primary) and the
    primary's share of its time, for the latency the proxy adds end to end
    (`shadowtap_added_latency_seconds`): what the client waited less what the primary took."""

    __slots__ = ("arrived", "primary_s")

    def __init__(self) -> None:
        self.arrived = time.perf_counter()
        self.primary_s: float | None = None

    def answered(self, metrics: Metrics, route: str) -> None:
        """The response's last byte is sent: observe the added time (only when the primary answered)."""
        if self.primary_s is not None:
            added = time.perf_counter() - self.arrived - self.primary_s
            metrics.added_latency.labels(route=route).observe(max(0.0, added))


class TimedResponse:
    """An ASGI response that, once its last byte is sent, observes the latency the proxy added to it; a
    response cut off (the client left, the primary's stream broke) is not observed."""

    __slots__ = ("inner", "clock", "metrics", "route")

    def __init__(self, inner: Any, clock: RequestClock, metrics: Metrics, route: str) -> None:
        self.inner = inner
        self.clock = clock
        self.metrics = metrics
        self.route = route

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.inner(scope, receive, send)
        self.clock.answered(self.metrics, self.route)


class ClientWatch:
    """Cancels the task serving a request when its client hangs up before the response is complete.

    A client that leaves (a timeout, a closed tab) stops an LLM server's generation when it calls the
    server directly; through the proxy it must too, rather than leave the primary computing an answer
    nobody reads. Watching `receive` costs one small task per request, started once the body is in.
    """

    __slots__ = ("gone", "_done", "_task", "_receive", "_watcher")

    def __init__(self, receive: Any) -> None:
        self.gone = False
        self._done = False
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._receive = receive
        self._watcher: asyncio.Future[dict[str, Any]] | None = None

    def start(self) -> None:
        """Begin watching; call once the request body is all in (the watch reads `receive`)."""
        if self._watcher is None and not self._done:
            self._watch()

    def _watch(self) -> None:
        self._watcher = asyncio.ensure_future(self._receive())
        self._watcher.add_done_callback(self._client_event)

    def _client_event(self, watcher: asyncio.Future[dict[str, Any]]) -> None:
        if self._done or watcher.cancelled() or watcher.exception() is not None:
            return
        if watcher.result().get("type") == "http.disconnect":
            self.gone = True
            self._task.cancel()
        else:  # more of a body already read whole (an empty last piece): keep watching
            self._watch()

    def wrap(self, send: Any) -> Any:
        """`send`, marking the response complete before its last message, so its end is no departure."""

        async def watched_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._done = True
            await send(message)

        return watched_send

    def stop(self) -> None:
        self._done = True
        if self._watcher is not None:
            self._watcher.cancel()

    def uncancel(self) -> None:
        """Withdraw the cancellation this watch asked for when the client left (`Task.uncancel`)."""
        self._task.uncancel()
