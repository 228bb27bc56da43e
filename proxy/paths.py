"""The request path the primary gets: the client's path in one canonical form, never outside `/v1/`.

The upstream's base URL may carry a prefix (`http://gateway/tenant-a/v1`), and whatever sits behind it
(a gateway, nginx, vLLM's own routes such as `/sleep`) may decode escapes and resolve dot segments. So a
path is forwarded only when no reading of it can climb out: every segment is percent-decoded, a segment
that is (or, through an escaped `/`, holds) `.` or `..` is refused, and so is one that decodes to `\\`,
`?` or `#`; what is forwarded is each segment re-escaped in one way (`%31` becomes `1`, `%2F` stays).
An escaped `/` inside a segment is kept, as model ids need it (`/v1/models/meta-llama%2FLlama-3-8B`).
"""

from __future__ import annotations

from urllib.parse import quote, unquote_to_bytes

__all__ = ["canonical_path"]

# Characters a path segment may carry unescaped (RFC 3986 pchar less `%`).
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"
_DOT_PARTS = frozenset({b".", b".."})
_FORBIDDEN = (b"\\", b"?", b"#")


def _segment(raw: str) -> str | None:
    decoded = unquote_to_bytes(raw)
    if any(c in decoded for c in _FORBIDDEN) or _DOT_PARTS & set(decoded.split(b"/")):
        return None
    return quote(decoded, safe=_SEGMENT_SAFE)


def canonical_path(raw_path: bytes | None, path: str) -> str | None:
    """The canonical form of a client's path under `/v1`, or None when it must be refused.

    `raw_path` is the path as sent (escapes intact); `path`, its decoded form, stands in when the server
    gives no raw path.
    """
    raw = raw_path.decode("latin-1") if raw_path else quote(path, safe="/" + _SEGMENT_SAFE)
    # The common case, a plain `/v1/chat/completions`, needs no decoding.
    if raw.startswith("/v1/") and "%" not in raw and "/." not in raw and "\\" not in raw and raw.isascii():
        return raw
    if not raw.startswith("/"):
        return None
    segments = [_segment(part) for part in raw[1:].split("/")]
    if not segments or segments[0] != "v1" or any(s is None for s in segments):
        return None
    return "/" + "/".join(s for s in segments if s is not None)
