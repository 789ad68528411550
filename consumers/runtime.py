"""Plumbing shared by the headless consumers: stop on SIGINT/SIGTERM, the receive→handle loop, logging."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from bus.feed import Item
from bus.ratelog import RateLimitFilter
from bus.subscribe import Subscriber

log = logging.getLogger(__name__)


class StopSignal:
    """Set by the first SIGINT or SIGTERM; a second one forces exit 130 (no traceback)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signum: int | None = None

    def install(self) -> StopSignal:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        return self

    def set(self, signum: int | None = None) -> None:
        self.signum = signum
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._event.is_set():
            # The clean stop is stuck (e.g. a hung disk): give the user the way out they asked for.
            raise SystemExit(130)
        self.set(signum)


def run_loop(
    subscriber: Subscriber,
    handle: Callable[[list[Item], float], None],
    stop: StopSignal,
    *,
    tick: Callable[[float], None] | None = None,
    tick_interval: float = 0.25,
) -> None:
    """Receive until ``stop`` is set; ``handle(items, now)`` gets each batch, ``tick(now)`` runs periodically.

    ``now`` is ``time.monotonic()``, the clock the consumers pass to ``bus.aggregator.fold``.
    """
    next_tick = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        items = subscriber.receive(max(0.0, min(tick_interval, next_tick - now)))
        now = time.monotonic()
        if items:
            handle(items, now)
        if tick is not None and now >= next_tick:
            tick(now)
            next_tick = now + tick_interval


def setup_logging(name: str, verbose: bool = False) -> None:
    """Log to stderr as ``name: LEVEL message``, rate-limited so a flood of bad input cannot flood the log."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{name}: %(levelname)s %(message)s"))
    handler.addFilter(RateLimitFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
