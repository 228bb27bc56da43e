"""Pacing calls to a paid endpoint: requests per second, tokens per rolling window, and how long a
429 asks to wait. Used by the judge; nothing here knows what is being called."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

import httpx

BUDGET_SLOT_S = 10.0


class RateLimiter:
    """An async token bucket: at most `per_second` calls a second on average, bursts up to one second's worth."""

    def __init__(self, per_second: float) -> None:
        self.rate = per_second
        self.capacity = max(1.0, per_second)
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


class TokenBudget:
    """Tokens spent over the last hour and day, in small time slots; `exhausted` while either cap is reached."""

    def __init__(self, per_hour: int | None, per_day: int | None, clock: Callable[[], float]) -> None:
        self.limits = [(w, cap) for w, cap in ((3600.0, per_hour), (86400.0, per_day)) if cap is not None]
        self.clock = clock
        self._slots: deque[list[float]] = deque()  # [slot start, tokens]

    def add(self, tokens: int) -> None:
        if not self.limits or tokens <= 0:
            return
        now = self.clock()
        if self._slots and now - self._slots[-1][0] < BUDGET_SLOT_S:
            self._slots[-1][1] += tokens
        else:
            self._slots.append([now, float(tokens)])

    def spent(self, window_s: float) -> int:
        since = self.clock() - window_s
        return int(sum(tokens for start, tokens in self._slots if start > since))

    def exhausted(self) -> bool:
        if not self.limits:
            return False
        horizon = self.clock() - max(w for w, _ in self.limits)
        while self._slots and self._slots[0][0] <= horizon:
            self._slots.popleft()
        return any(self.spent(window) >= cap for window, cap in self.limits)


def retry_after_s(response: httpx.Response | None) -> float | None:
    """The wait a response asks for (`retry-after-ms`, or `retry-after` in seconds or as a date)."""
    if response is None:
        return None
    headers = response.headers
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, (when - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """The wait after failed attempt `attempt` (0 first): base x 2^attempt up to `max_s`, times 0.5-1."""
    return min(max_s, base_s * 2.0**attempt) * (rng or random).uniform(0.5, 1.0)


def retry_delay_s(
    attempt: int, retry_after: float | None, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """The server's `retry_after` (capped at `max_s`) when it asked for one, else `backoff_s`."""
    if retry_after is not None:
        return min(max_s, retry_after)
    return backoff_s(attempt, base_s, max_s, rng)
