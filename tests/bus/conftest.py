"""Fixtures for the bus socket tests: publishers and subscribers on random loopback ports, always closed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from bus.publish import BusPublisher, PublisherConfig
from bus.subscribe import Subscriber, SubscriberConfig

LOOPBACK_ANY_PORT = "tcp://127.0.0.1:*"


@pytest.fixture
def make_publisher() -> Iterator[Callable[..., BusPublisher]]:
    """Start BusPublishers (loopback, random port, fast heartbeats); closed at teardown."""
    made: list[BusPublisher] = []

    def make(run_id: str = "run-a", **config: Any) -> BusPublisher:
        config.setdefault("endpoint", LOOPBACK_ANY_PORT)
        config.setdefault("heartbeat_period_s", 0.1)
        pub = BusPublisher(run_id, PublisherConfig(**config))
        made.append(pub)
        return pub.start()

    yield make
    for pub in made:
        pub.close(flush_timeout=0.0)


@pytest.fixture
def make_subscriber() -> Iterator[Callable[..., Subscriber]]:
    """Subscribers closed at teardown (linger 0)."""
    made: list[Subscriber] = []

    def make(endpoint: str, **config: Any) -> Subscriber:
        sub = Subscriber(SubscriberConfig(endpoint=endpoint, **config))
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.close()


@pytest.fixture
def plain_pub() -> Iterator[tuple[zmq.Socket, str]]:
    """A plain zmq PUB on a random loopback port: a producer that speaks the contract but never replays."""
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(LOOPBACK_ANY_PORT)
    yield sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)
    sock.close(0)
