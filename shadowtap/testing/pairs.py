"""Pair records made to order, for tests and benchmarks: one factory instead of one per test file.

`make_pair(primary_text="...", candidate_text="...")` gives a valid `shadowtap.pair/v1` record; a
text of None makes that side a failed call (status 502 and an error), as the proxy records one.
"""

from __future__ import annotations

import itertools
from typing import Any

from shadowtap.records import PAIR_SCHEMA, PairRecord, SideError, SideRecord

__all__ = ["CHAT_ROUTE", "make_pair", "make_side"]

CHAT_ROUTE = "/v1/chat/completions"
_ids = itertools.count(1)


def make_side(
    text: str | None,
    *,
    model: str = "m",
    latency_ms: float = 10.0,
    ttft_ms: float | None = None,
    finish_reason: str | None = "stop",
    usage: dict[str, Any] | None = None,
    error: SideError | None = None,
    status: int | None = None,
) -> SideRecord:
    """One side; `text=None` (and no `error` given) is a failed upstream call."""
    if text is None and error is None:
        error = {"kind": "http_5xx", "message": "upstream failed"}
    failed = error is not None and text is None
    return {
        "model": model,
        "status": status if status is not None else (502 if failed else 200),
        "latency_ms": latency_ms,
        "ttft_ms": ttft_ms,
        "text": text,
        "finish_reason": None if failed else finish_reason,
        "usage": usage,
        "error": error,
    }


def make_pair(
    primary_text: str | None = "The answer.",
    candidate_text: str | None = "The answer.",
    *,
    request: dict[str, Any] | None = None,
    prompt: str = "What is the answer?",
    tags: dict[str, str] | None = None,
    pair_id: str | None = None,
    route: str = CHAT_ROUTE,
    stream: bool = False,
    ts: str = "2026-01-01T00:00:00.000Z",
    primary: SideRecord | None = None,
    candidate: SideRecord | None = None,
) -> PairRecord:
    """A pair whose request is `request` (default: one user message, `prompt`), tagged like the proxy
    tags one (`route`, `segment` "none", `length_bucket` "0-500", then `tags` on top)."""
    body = (
        request if request is not None else {"model": "m", "messages": [{"role": "user", "content": prompt}]}
    )
    return {
        "schema": PAIR_SCHEMA,
        "id": pair_id if pair_id is not None else f"pair-{next(_ids)}",
        "ts": ts,
        "route": route,
        "stream": stream,
        "request": body,
        "tags": {"route": route, "segment": "none", "length_bucket": "0-500", **(tags or {})},
        "primary": primary if primary is not None else make_side(primary_text),
        "candidate": candidate if candidate is not None else make_side(candidate_text),
    }
