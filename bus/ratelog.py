"""The one rate-limited logging helper: a Filter letting a repeated message through once per interval."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

LOG_INTERVAL_S = 10.0
"""A repeated message (same logger, format and ``ratelimit_key``) is printed at most once per this period."""

MAX_KEYS = 1024
"""Keys remembered; beyond this the table is cleared rather than grown for days."""


class RateLimitFilter(logging.Filter):
    """Pass a record once per ``interval`` per (logger, format string, ``ratelimit_key``); count the rest.

    ``ratelimit_key`` is an optional ``extra`` of the log call, to limit one message per
    event type, say, rather than once for all. The passed record says how many were suppressed.
    """

    def __init__(self, interval: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._last: dict[tuple[str, str, object], float] = {}
        self._suppressed: dict[tuple[str, str, object], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg), getattr(record, "ratelimit_key", None))
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        if len(self._last) >= MAX_KEYS:
            self._last.clear()
            self._suppressed.clear()
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} similar messages suppressed)"
        return True


def rate_limited_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with a RateLimitFilter on it (added once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RateLimitFilter) for f in logger.filters):
        logger.addFilter(RateLimitFilter())
    return logger
