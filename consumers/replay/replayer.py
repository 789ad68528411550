"""Send an archive's envelopes through a ``BusPublisher`` as recorded: same seqs, ts and run_id, paced.

The envelopes go out through ``BusPublisher.publish_envelope``, so consumers see exactly what
they would see from the trainer, late-join replay cache included. Holes in the recorded seqs
stay holes (consumers report them as gaps). The recorded heartbeats are replayed too and the
publisher sends none of its own (their seqs would collide with the recorded ones).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from bus.contract import Envelope, PPOUpdate, TrainingFinished
from bus.publish import BusPublisher


class Stop(Protocol):
    def is_set(self) -> bool: ...
    def wait(self, timeout: float) -> bool: ...


class Sink(Protocol):
    def publish_envelope(self, envelope: Envelope, timeout: float | None = None) -> bool: ...


ROOM_WAIT_S = 0.25
"""How long one wait for queue room lasts before the stop signal is looked at again."""


@dataclass
class ReplayResult:
    """What one replay sent."""

    sent: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    finish: TrainingFinished | None = None
    finish_recorded: bool = False
    stopped: bool = False
    refused: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def wait_for_consumers(publisher: BusPublisher, count: int, timeout: float, stop: Stop) -> bool:
    """Wait until ``count`` consumers have asked for (and been sent) the replay cache; False on timeout."""
    deadline = time.monotonic() + timeout
    while publisher.stats.replays < count:
        left = deadline - time.monotonic()
        if left <= 0 or stop.wait(min(0.02, left)):
            return False
    return True


def _send(publisher: Sink, env: Envelope, stop: Stop) -> bool:
    """Hand ``env`` to a lossless publisher, waiting for queue room (a slow consumer) until ``stop``."""
    while not publisher.publish_envelope(env, timeout=ROOM_WAIT_S):
        if stop.is_set():
            return False
    return True


def replay(
    envelopes: Iterable[Envelope],
    publisher: Sink,
    *,
    speed: float | None,
    stop: Stop,
    clock: Callable[[], float] = time.monotonic,
) -> ReplayResult:
    """Publish ``envelopes`` (in seq order) at ``speed`` times the recorded pace; None: as fast as taken.

    Ends with the recorded training_finished; when the archive has none, or ``stop`` is set
    first, with a training_finished ``interrupted`` one seq after the last one sent.
    """
    result = ReplayResult()
    counts = result.counts
    start = clock()
    first_ts: float | None = None
    last: Envelope | None = None
    updates = env_steps = 0
    for env in envelopes:
        if speed is not None:
            if first_ts is None:
                first_ts = env.ts
            delay = start + (env.ts - first_ts) / speed - clock()
            if delay > 0 and stop.wait(delay):
                break
        if stop.is_set():
            break
        if not _send(publisher, env, stop):
            break  # stopped while a consumer held the queue full
        tag = env.event.__struct_config__.tag
        counts[tag] = counts.get(tag, 0) + 1
        event = env.event
        if type(event) is PPOUpdate:
            updates, env_steps = event.update, max(env_steps, event.env_steps)
        elif type(event) is TrainingFinished:
            result.finish, result.finish_recorded = event, True
        if result.first_seq is None:
            result.first_seq = env.seq
        last = env
        if result.finish_recorded:
            break
    result.stopped = stop.is_set()
    if last is not None and not result.finish_recorded:
        finish = TrainingFinished(reason="interrupted", updates=updates, env_steps=env_steps)
        ending = Envelope(schema=last.schema, run_id=last.run_id, seq=last.seq + 1, ts=last.ts, event=finish)
        if not publisher.publish_envelope(ending, timeout=5.0):
            result.refused += 1
        counts["training_finished"] = counts.get("training_finished", 0) + 1
        result.finish, last = finish, ending
    result.last_seq = last.seq if last is not None else None
    result.sent = sum(counts.values()) - result.refused
    return result
