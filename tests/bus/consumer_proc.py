"""A consumer process for the SIGSTOP test: prints its progress, then on SIGTERM what it received.

Usage: python tests/bus/consumer_proc.py ENDPOINT. Prints {"last": seq} whenever the feed's
last seq advances, and on SIGTERM one {"done": ...} line with the delivered seq ranges, the
gap ranges and the counters, then exits 0.
"""

from __future__ import annotations

import json
import signal
import sys

from bus.contract import Envelope
from bus.feed import Gap
from bus.subscribe import Subscriber, SubscriberConfig


def _add(ranges: list[list[int]], first: int, last: int) -> None:
    if ranges and ranges[-1][1] + 1 == first:
        ranges[-1][1] = last
    else:
        ranges.append([first, last])


def main() -> int:
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    delivered: list[list[int]] = []
    gaps: list[list[int]] = []
    with Subscriber(SubscriberConfig(endpoint=sys.argv[1], rcvhwm=1000)) as sub:
        printed = None
        while not stopping:
            for item in sub.receive(0.05):
                if isinstance(item, Envelope):
                    _add(delivered, item.seq, item.seq)
                elif isinstance(item, Gap):
                    gaps.append([item.first, item.last])
            if sub.feed.last_seq != printed and not sub.feed.syncing:
                printed = sub.feed.last_seq
                print(json.dumps({"last": printed}), flush=True)
        stats = sub.feed.stats
        print(
            json.dumps(
                {
                    "done": True,
                    "delivered": delivered,
                    "gaps": gaps,
                    "resyncs": stats.resyncs,
                    "replays": stats.replays,
                    "duplicates": stats.duplicates,
                    "disconnects": sub.stats.disconnects,
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
