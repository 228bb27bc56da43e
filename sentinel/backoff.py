"""How long to wait before retrying a call: the server's Retry-After when it gives one, else exponential
backoff with jitter. Knows nothing of what is being called (kept free of sentinel imports so that it
can join `scorers/pacing.py`, beside `retry_after_s`, which reads the header)."""

from __future__ import annotations

import random

__all__ = ["backoff_s", "retry_delay_s"]


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """The wait after failed attempt `attempt` (0 first): base × 2^attempt up to `max_s`, times 0.5–1."""
    return min(max_s, base_s * 2.0**attempt) * rng.uniform(0.5, 1.0)


def retry_delay_s(
    attempt: int, retry_after: float | None, base_s: float, max_s: float, rng: random.Random
) -> float:
    """The server's `retry_after` (capped at `max_s`) when it asked for one, else `backoff_s`."""
    if retry_after is not None:
        return min(max_s, retry_after)
    return backoff_s(attempt, base_s, max_s, rng)
