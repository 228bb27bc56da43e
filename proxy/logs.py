"""Log lines for events a hostile or careless client can cause at any rate: one line per interval."""

from __future__ import annotations

import logging
import time

__all__ = ["ThrottledLog"]


class ThrottledLog:
    """Logs each kind of event at most once per `interval_s`; the next line says how many were held back.

    Counters carry the rate (every event is counted in a metric); the log only has to say that it is
    happening and what one instance looked like, without a client being able to flood it. Event kinds
    are a small fixed set (refusal reasons), so the state stays small.
    """

    def __init__(
        self, logger: logging.Logger, interval_s: float = 60.0, level: int = logging.WARNING
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.level = level
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last[0] < self.interval_s:
            self._last[kind] = (last[0], last[1] + 1)
            return
        held = last[1] if last is not None else 0
        self._last[kind] = (now, 0)
        if held:
            message += f" ({held} more since the last such line)"
        self.logger.log(self.level, message, *args)
