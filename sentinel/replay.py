"""Replaying one example of a set against the target, pinned and retried, and the pair it makes.

Decoding is pinned (temperature 0, a fixed seed that servers such as vLLM honour) so that two runs differ
because the model did, not the dice. The answer is recorded as a sentinel pair: a pair record whose
`primary` side is the set's reference and whose `candidate` side is the replayed answer, with the
example's labels under `sentinel` for the reference scorers.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict, cast

import httpx

from shadowtap.proxy.record import SideAssembler, SideResult
from shadowtap.records import PAIR_SCHEMA, PairRecord, api_of_route, utc_now_rfc3339
from shadowtap.scorers.pacing import retry_after_s, retry_delay_s
from shadowtap.sentinel.sets import SetRow
from shadowtap.sentinel.settings import SentinelConfig

__all__ = [
    "RETRY_STATUSES",
    "UNPINNED_FIELDS",
    "Replayer",
    "SentinelLabels",
    "SentinelPair",
    "Target",
    "replay_body",
    "sentinel_labels",
    "sentinel_pair",
]

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
# Request fields dropped before a replay: they would make answers random or arrive as a stream.
UNPINNED_FIELDS = ("stream", "stream_options", "top_p", "top_k", "n", "logit_bias", "user")


@dataclass(frozen=True)
class Target:
    """The endpoint a run replays against, as the OpenAI SDK's base_url (http://host:8000/v1)."""

    url: str
    model: str | None = None
    api_key: str | None = None


class SentinelLabels(TypedDict):
    """What a sentinel pair carries for the reference scorers: the set and the example's label."""

    set_version: str
    stratum: str
    expected: str | int | float | None
    match: str | None
    tolerance: float | None


class SentinelPair(PairRecord):
    """A pair record with the reference as `primary`, the replayed answer as `candidate`."""

    sentinel: SentinelLabels


def sentinel_labels(pair: Mapping[str, Any]) -> SentinelLabels | None:
    """The `sentinel` labels of a pair record, or None on a pair that is not a sentinel pair."""
    labels = pair.get("sentinel")
    return cast(SentinelLabels, labels) if isinstance(labels, dict) else None


def replay_body(row: SetRow, model: str | None, seed: int, max_tokens: int | None) -> dict[str, Any]:
    body = {k: v for k, v in row["request"].items() if k not in UNPINNED_FIELDS}
    body["temperature"] = 0
    body["seed"] = seed
    if model is not None:
        body["model"] = model
    elif "model" not in body and row.get("reference_model"):
        body["model"] = row.get("reference_model")
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


class Replayer:
    """Sends one example to the target, retrying 408/409/429/5xx and connection errors with backoff."""

    def __init__(self, client: httpx.AsyncClient, config: SentinelConfig, target: Target) -> None:
        self.client = client
        self.settings = config.sentinel
        self.target = target
        self.jitter = random.Random()
        # The `system_fingerprint`s the target reported (its model revision, where it reports one).
        self.revisions: Counter[str] = Counter()

    async def replay(self, row: SetRow) -> tuple[dict[str, Any], SideResult, int]:
        """(the body sent, what came back, attempts made)."""
        s = self.settings
        body = replay_body(row, self.target.model, s.seed, s.max_tokens)
        url = self.target.url.rstrip("/") + "/" + row["route"].removeprefix("/v1/").lstrip("/")
        result = SideResult()
        for attempt in range(s.retries + 1):
            result, retry, retry_after = await self._attempt(url, body, row["route"])
            if not retry:
                return body, result, attempt + 1
            if attempt == s.retries:
                break
            delay = retry_delay_s(attempt, retry_after, s.backoff_base_s, s.backoff_max_s, self.jitter)
            await asyncio.sleep(delay)
        return body, result, s.retries + 1

    async def _attempt(
        self, url: str, body: dict[str, Any], route: str
    ) -> tuple[SideResult, bool, float | None]:
        """One call: (what came back, whether to retry it, the wait the server asked for)."""
        headers = {"Authorization": f"Bearer {self.target.api_key}"} if self.target.api_key else {}
        started = time.perf_counter()
        try:
            response = await self.client.post(url, json=body, headers=headers)
        except httpx.TimeoutException as exc:
            return SideResult().fail("timeout", f"{type(exc).__name__}: {exc}"), True, None
        except httpx.TransportError as exc:
            return SideResult().fail("connect", f"{type(exc).__name__}: {exc}"), True, None
        assembler = SideAssembler(streaming=False, started=started)
        assembler.feed(response.content, time.perf_counter())
        result = assembler.finish(SideResult(status=response.status_code), time.perf_counter(), route)
        if response.status_code not in RETRY_STATUSES:
            self._note_revision(response.content)
            return result, False, None
        return result, True, retry_after_s(response)

    def _note_revision(self, content: bytes) -> None:
        try:
            doc = json.loads(content)
        except ValueError:
            return
        revision = doc.get("system_fingerprint") if isinstance(doc, dict) else None
        if isinstance(revision, str) and revision:
            self.revisions[revision] += 1


def sentinel_pair(row: SetRow, body: dict[str, Any], answer: SideResult, set_version: str) -> SentinelPair:
    """A pair record with the reference in the primary's place and the replayed answer as the candidate."""
    reference = SideResult(model=row.get("reference_model"), status=200, text=row["reference"])
    return {
        "schema": PAIR_SCHEMA,
        "id": row["id"],
        "ts": utc_now_rfc3339(),
        "route": row["route"],
        "api": api_of_route(row["route"]),
        "stream": False,
        "request": body,
        "tags": dict(row.get("tags") or {}),
        "masked": {"request": 0, "primary": 0, "candidate": 0},
        "primary": reference.to_dict(),
        "candidate": answer.to_dict(),
        "sentinel": {
            "set_version": set_version,
            "stratum": row["stratum"],
            "expected": row.get("expected"),
            "match": row.get("match"),
            "tolerance": row.get("tolerance"),
        },
    }
