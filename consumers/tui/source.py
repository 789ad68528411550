"""The socket side of the dashboard: a loop, run in a worker thread, that hands received items to the app."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from bus.feed import Item
from bus.subscribe import Subscriber, SubscriberConfig

POLL_S = 0.1
"""How long one receive waits; also how quickly the loop notices a cancel or a reset."""


@dataclass(frozen=True)
class LinkStats:
    """The subscriber's view of its connection: frames received and refused, handshakes, drops, auth."""

    received: int = 0
    rejected: int = 0
    connects: int = 0
    disconnects: int = 0
    auth_failures: int = 0

    @property
    def connected(self) -> bool:
        return self.connects > self.disconnects


def link_stats(sub: Subscriber) -> LinkStats:
    s = sub.stats
    return LinkStats(s.received, s.rejected_total, s.connects, s.disconnects, s.auth_failures)


Deliver = Callable[[list[Item], float, int, LinkStats], None]
"""deliver(items, received_at, generation, link)."""


def read_bus(
    config: SubscriberConfig,
    *,
    deliver: Deliver,
    cancelled: Callable[[], bool],
    generation: Callable[[], int],
    clock: Callable[[], float],
) -> None:
    """Receive until ``cancelled()``; a changed ``generation()`` (a reset) reconnects with a fresh subscriber.

    A fresh subscriber asks the publisher for its replay, so a reset refills the history at once.
    ``deliver`` is called with every non-empty batch, and whenever the link statistics change.
    """
    gen = generation()
    sub = Subscriber(config)
    try:
        link: LinkStats | None = None
        while not cancelled():
            if generation() != gen:
                sub.close()
                gen = generation()
                sub = Subscriber(dataclasses.replace(config))
                link = None
            items = sub.receive(timeout=POLL_S)
            now_link = link_stats(sub)
            if items or now_link != link:
                link = now_link
                deliver(items, clock(), gen, link)
    finally:
        sub.close()


class LastWarning(logging.Handler):
    """Keeps the newest warning the bus logged (a terminal UI has nowhere to print it)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.message = record.getMessage()
        except Exception:  # a bad format string must not kill the reader thread
            self.handleError(record)
