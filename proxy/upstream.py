"""Talking to one OpenAI-compatible endpoint: a pooled httpx client, URL mapping and header hygiene."""

from __future__ import annotations

import ssl

import httpx

from shadowtap.config import UpstreamSettings
from shadowtap.proxy.transport import Exchange, H1Transport, Timeouts, UpstreamResponse

# RFC 9110 §7.6.1 hop-by-hop headers, plus the ones the HTTP layer recomputes for each hop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        # The proxy has already answered the client's `Expect: 100-continue` and holds the whole body.
        "expect",
    }
)
_HOP_BY_HOP = frozenset(name.encode("latin-1") for name in HOP_BY_HOP)


class Upstream:
    """One endpoint (primary or candidate) with a keep-alive connection pool for the process's life.

    `base_url` is what the OpenAI SDK takes as `base_url` (e.g. `http://vllm:8000/v1`); a client's
    request for `/v1/chat/completions` goes to `<base_url>/chat/completions`.

    The proxy's requests go through `send` (or `start`), straight to the pool with raw headers: building
    httpx's request and response models costs more than the rest of a proxied request.
    """

    def __init__(self, side: str, settings: UpstreamSettings) -> None:
        if settings.url is None:
            raise ValueError(f"{side}.url is not set")
        self.side = side
        self.settings = settings
        self.base_url = settings.url.rstrip("/")
        self.transport = H1Transport(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_keepalive,
            keepalive_expiry=settings.keepalive_expiry_s,
            ssl_context=ssl.create_default_context(cafile=settings.ca_file) if settings.ca_file else None,
            max_head_bytes=settings.max_head_bytes,
            max_headers=settings.max_headers,
        )
        self.timeouts = Timeouts(
            pool=settings.timeout_s, connect=settings.connect_timeout_s, read=settings.timeout_s
        )
        self._targets: dict[str, httpx.URL] = {}

    async def send(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes, query: bytes = b""
    ) -> UpstreamResponse:
        """Send to `path` mapped onto the base URL; return as soon as the headers are in (the body streams)."""
        return await self.transport.send(method, self.target(path, query), headers, body, self.timeouts)

    async def start(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes, query: bytes = b""
    ) -> Exchange:
        """`send` in two steps: the request goes out now; await `response()` on the result for the rest."""
        return await self.transport.start(method, self.target(path, query), headers, body, self.timeouts)

    def url_for(self, path: str) -> str:
        """Map a proxy path (`/v1/...`) onto this upstream's base URL. Only config decides the host."""
        suffix = path[3:] if path.startswith("/v1/") or path == "/v1" else path
        return self.base_url + suffix

    def target(self, path: str, query: bytes = b"") -> httpx.URL:
        """`url_for` as a parsed URL, cached for the query-less paths seen most (parsing one is not free)."""
        if query:
            return httpx.URL(f"{self.url_for(path)}?{query.decode('latin-1')}")
        url = self._targets.get(path)
        if url is None:
            if len(self._targets) >= 256:  # paths come from clients: keep the cache bounded
                self._targets.clear()
            url = self._targets[path] = httpx.URL(self.url_for(path))
        return url

    async def aclose(self) -> None:
        await self.transport.aclose()


def forward_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The client's request headers as the primary should see them: all but hop-by-hop ones, those a
    `Connection` header names included."""
    out = []
    nominated: set[bytes] = set()
    for k, v in raw:
        name = k.lower()
        if name in _HOP_BY_HOP:
            if name == b"connection":
                nominated |= _nominated(v)
            continue
        out.append((k, v))
    return [(k, v) for k, v in out if k.lower() not in nominated] if nominated else out


def response_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The primary's response headers as the client should see them, names in lower case: all but hop-by-hop
    ones, those a `Connection` header names included. Content-Length stays: the body is relayed unchanged."""
    out = []
    nominated: set[bytes] = set()
    for k, v in raw:
        name = k.lower()
        if name in _HOP_BY_HOP and name != b"content-length":
            if name == b"connection":
                nominated |= _nominated(v)
            continue
        out.append((name, v))
    nominated.discard(b"content-length")
    return [(k, v) for k, v in out if k not in nominated] if nominated else out


def _nominated(connection: bytes) -> set[bytes]:
    """The header names a `Connection` header value lists (RFC 9110 §7.6.1), beyond the fixed hop-by-hop set."""
    names = {token.strip(b" \t").lower() for token in connection.split(b",")}
    return names - _HOP_BY_HOP - {b""}
