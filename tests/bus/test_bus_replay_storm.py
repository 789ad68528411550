"""A hostile subscriber's replay storm: live traffic and heartbeats keep flowing, memory stays bounded."""

from __future__ import annotations

import itertools
import time

import zmq
from bus_factories import ppo_update, training_started
from testkit.wait import wait_until

from bus.contract import Envelope, Heartbeat, PPOUpdate, TrainingStarted
from bus.replay import MAX_PENDING
from bus.wire import decode_replay_end

DEADLINE_S = 30.0
STORM = 5000
"""Distinct replay subscriptions sent as fast as one socket can send them."""
HEARTBEAT_GAP_LIMIT_S = 2.0
"""With a 0.1 s period; main went 37 s without one under a 2,000/s storm."""


class Watcher:
    """An ordinary consumer: records when each heartbeat arrived and the newest one."""

    def __init__(self, sub) -> None:  # type: ignore[no-untyped-def]
        self.sub = sub
        self.beats: list[float] = []
        self.last: Heartbeat | None = None
        self.updates = 0

    def step(self) -> None:
        for item in self.sub.receive(0.01):
            if isinstance(item, Envelope):
                if isinstance(item.event, Heartbeat):
                    self.beats.append(time.monotonic())
                    self.last = item.event
                elif isinstance(item.event, PPOUpdate):
                    self.updates += 1

    def longest_gap(self, since: float) -> float:
        """The longest time without a heartbeat from the last one before ``since`` until now."""
        before = [t for t in self.beats if t < since][-1:]
        beats = [*before, *(t for t in self.beats if t >= since), time.monotonic()]
        return max(b - a for a, b in itertools.pairwise(beats))


def _hostile(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.XSUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)  # never drop a subscription on our side
    sock.connect(endpoint)
    return sock


def test_replay_storm_neither_silences_the_bus_nor_grows_the_publisher(
    make_publisher, make_subscriber
) -> None:
    pub = make_publisher("run-storm", heartbeat_period_s=0.1)
    pub.publish(training_started())
    for i in range(300):
        pub.publish(ppo_update(update=i))
    watcher = Watcher(make_subscriber(pub.bound_endpoint))
    assert wait_until(lambda: len(watcher.beats) >= 3, DEADLINE_S, watcher.step)

    base = pub.replays.stats.requested  # the watcher's own
    hostile = _hostile(pub.bound_endpoint)
    storm_start = time.monotonic()
    sent = 0
    peak_pending = 0

    def storm_step() -> None:
        nonlocal sent, peak_pending
        for _ in range(500):
            if sent < STORM:
                hostile.send(b"\x01~replay/" + f"hostile-{sent:06d}".encode())
                sent += 1
        if sent % 1000 == 0:
            pub.publish(ppo_update(update=300 + sent))
        watcher.step()
        peak_pending = max(peak_pending, pub.replays.pending)

    # Every subscription read and decided on, and a heartbeat carrying the final refused count.
    assert wait_until(
        lambda: (
            sent == STORM
            and pub.replays.stats.requested >= base + STORM
            and watcher.last is not None
            and watcher.last.replays_refused == pub.stats.replays_refused
        ),
        DEADLINE_S,
        storm_step,
    ), f"sent {sent}, requested {pub.replays.stats.requested}"
    storm_end = time.monotonic()
    assert wait_until(
        lambda: pub.replays.pending == 0 and watcher.beats[-1] > storm_end, DEADLINE_S, storm_step
    )

    stats = pub.replays.stats
    assert stats.refused == pub.stats.replays_refused == watcher.last.replays_refused
    assert stats.refused >= STORM - 100, "at most the bursts and what the rates refilled were served"
    assert stats.started + stats.coalesced + stats.refused == stats.requested
    assert peak_pending <= MAX_PENDING
    assert len(pub.cache) <= sum(pub.config.replay_depth.values())
    assert watcher.longest_gap(storm_start) < HEARTBEAT_GAP_LIMIT_S
    assert watcher.updates >= 300, "live events still reach the ordinary consumer"

    # A refused replay is never subscribed: the hostile peer got only the replays it was granted.
    ends = 0
    while hostile.poll(0):
        frames = hostile.recv_multipart()
        if frames[0].startswith(b"~replay/") and decode_replay_end(frames[1]) is not None:
            ends += 1
    assert ends <= stats.started
    hostile.close(0)


def test_a_late_joiner_still_gets_its_replay_after_a_storm(make_publisher, make_subscriber) -> None:
    pub = make_publisher("run-after", heartbeat_period_s=0.1)
    pub.publish(training_started())
    hostile = _hostile(pub.bound_endpoint)
    for i in range(2000):
        hostile.send(b"\x01~replay/" + f"h{i}".encode())
    assert wait_until(lambda: pub.replays.stats.requested == 2000, DEADLINE_S)
    assert pub.stats.replays_refused > 0

    joins = 0

    def join() -> bool:
        """One late joiner: True when its replay brought the run's training_started."""
        nonlocal joins
        joins += 1
        late = make_subscriber(pub.bound_endpoint)
        got: list[Envelope] = []
        wait_until(
            lambda: got and not late.feed.syncing,
            DEADLINE_S,
            lambda: got.extend(i for i in late.receive(0.05) if isinstance(i, Envelope)),
        )
        late.close()
        return any(isinstance(e.event, TrainingStarted) for e in got)

    # While the hostile peer's bucket refills, a joiner may have to try again: the bus recovers.
    assert wait_until(join, DEADLINE_S), f"no late joiner was served in {joins} tries: {pub.replays.stats}"
    hostile.close(0)
