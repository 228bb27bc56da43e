"""The numbers the report shows: rates with their 95% intervals, percentiles, milliseconds."""

from __future__ import annotations

import math
from dataclasses import dataclass

from shadowtap.stats import wilson

__all__ = ["Rate", "clearly_above", "format_ms", "percentile"]


@dataclass(frozen=True, slots=True)
class Rate:
    """k of n, with its 95% Wilson interval."""

    k: int
    n: int

    @property
    def value(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.k, self.n)

    def text(self) -> str:
        """`27/90  30% [22–40]`: count, rate and its 95% interval in percent."""
        if not self.n:
            return "–"
        low, high = self.interval or (0.0, 0.0)
        return f"{self.k}/{self.n}  {self.k / self.n:.0%} [{low * 100:.0f}–{high * 100:.0f}]"


def clearly_above(a: Rate, b: Rate) -> bool:
    """`a`'s rate is above `b`'s with non-overlapping 95% intervals."""
    ia, ib = a.interval, b.interval
    return ia is not None and ib is not None and ia[0] > ib[1]


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of `values`, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def format_ms(value: float | None, unit: str = " ms") -> str:
    return "–" if value is None else f"{value:,.0f}{unit}"
