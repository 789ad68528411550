"""The bus over real loopback sockets: late joiners, plain publishers, restarts, garbage, oversize."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
import pytest
import zmq
from bus_factories import batch_completed, envelope, heartbeat, ppo_update, training_started
from testkit.wait import wait_until

from bus.aggregator import Aggregator
from bus.contract import SCHEMA_VERSION, Envelope, Event
from bus.feed import Gap, Item
from bus.publish import BusPublisher, PublisherConfig
from bus.state import HISTORY_LEN
from bus.subscribe import Subscriber
from bus.wire import MAX_MESSAGE_BYTES, encode, encode_body

DEADLINE_S = 20.0
"""Generous: these wait on conditions, never on time; the deadline only stops a broken test."""


class Consumer:
    """A Subscriber plus the fold, as every consumer runs them."""

    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub
        self.agg = Aggregator()
        self.items: list[Item] = []

    def step(self) -> None:
        for item in self.sub.receive(0.02):
            self.items.append(item)
            self.agg.apply(item, time.time())

    def until(self, predicate: Callable[[], bool], also: Callable[[], None] | None = None) -> None:
        def step() -> None:
            if also is not None:
                also()
            self.step()

        assert wait_until(predicate, DEADLINE_S, step), "condition not reached before the deadline"

    @property
    def seqs(self) -> list[int]:
        return [i.seq for i in self.items if isinstance(i, Envelope)]

    @property
    def gaps(self) -> list[tuple[int, int]]:
        return [(g.first, g.last) for g in self.items if isinstance(g, Gap)]


class PlainSender:
    """One run's envelopes, seqs contiguous, sent on a plain PUB socket; a call sends ``event(seq)``."""

    def __init__(
        self, sock: zmq.Socket, run_id: str, event: Callable[[int], Event] = lambda seq: heartbeat()
    ) -> None:
        self.sock = sock
        self.run_id = run_id
        self.event = event
        self.seq = 0

    def __call__(self) -> None:
        self.send(self.event(self.seq))

    def send(self, event: Event) -> Envelope:
        env = envelope(self.seq, event, run_id=self.run_id)
        self.seq += 1
        self.sock.send_multipart(encode(env))
        return env


def test_late_joiner_gets_session_metadata_and_recent_history_from_the_replay(
    make_publisher, make_subscriber
) -> None:
    pub = make_publisher("run-late", heartbeat_period_s=1.0)
    pub.publish(training_started())
    n = HISTORY_LEN + 44
    for i in range(n):
        pub.publish(ppo_update(update=i, entropy=float(i)))
        pub.publish(batch_completed(update=i))
    assert wait_until(lambda: pub.last_seq >= 2 * n, DEADLINE_S)

    c = Consumer(make_subscriber(pub.bound_endpoint))
    started = time.monotonic()
    c.until(lambda: len(c.agg.state.rollout.fps_history) == HISTORY_LEN)
    joined_in = time.monotonic() - started
    state = c.agg.state
    assert state.run.run_id == "run-late" and state.run.started is not None
    assert state.tamiyo.infrastructure.compile_enabled is True  # from the replayed training_started
    assert state.run.started.action_heads["alpha_curve"] == 5
    entropy = state.tamiyo.history["entropy"]
    assert list(entropy) == [float(i) for i in range(n - HISTORY_LEN, n)], "the newest 256 updates, in order"
    assert state.delivery.gaps == 0
    feed = c.sub.feed.stats
    assert feed.replays == 1 and feed.sync_timeouts == 0, "history came from the replay, not a timeout"
    print(f"late joiner had the full history {joined_in * 1000:.0f} ms after connecting")

    pub.publish(ppo_update(update=n))
    c.until(lambda: c.agg.state.tamiyo.update == n)
    assert c.seqs == sorted(set(c.seqs)) and c.gaps == []


def test_consumer_of_a_non_replaying_publisher_works_after_the_sync_timeout(
    plain_pub, make_subscriber
) -> None:
    sock, endpoint = plain_pub
    c = Consumer(make_subscriber(endpoint, sync_timeout_s=0.3))
    send = PlainSender(sock, "plain")
    c.until(lambda: len(c.seqs) >= 5, also=send)  # sent until the slow joiner has joined
    assert c.seqs == list(range(c.seqs[0], c.seqs[0] + len(c.seqs)))
    assert c.gaps == []
    assert c.sub.feed.stats.sync_timeouts == 1 and c.sub.feed.stats.replays == 0
    assert c.agg.state.run.run_id == "plain"


def test_restarted_producer_with_a_new_run_id_is_followed(make_publisher, make_subscriber) -> None:
    first = make_publisher("run-1")
    endpoint = first.bound_endpoint
    c = Consumer(make_subscriber(endpoint))
    first.publish(training_started())
    first.publish(ppo_update(update=1))
    c.until(lambda: c.agg.state.tamiyo.update == 1)
    first.close()

    second = make_publisher("run-2", endpoint=endpoint)  # the same port
    second.publish(training_started(compile_enabled=False))
    second.publish(ppo_update(update=7))
    c.until(lambda: c.agg.state.run.run_id == "run-2" and c.agg.state.tamiyo.update == 7)
    state = c.agg.state
    assert state.runs_seen == 2
    assert state.tamiyo.infrastructure.compile_enabled is False
    assert state.delivery.gaps == 0
    assert c.sub.stats.disconnects >= 1 and c.sub.feed.run_id == "run-2"
    assert c.sub.stats.connected and c.sub.stats.connects - c.sub.stats.disconnects == 1


def test_garbage_from_a_rogue_publisher_is_refused_and_counted_while_valid_messages_are_folded(
    plain_pub, make_subscriber
) -> None:
    sock, endpoint = plain_pub
    c = Consumer(make_subscriber(endpoint, sync_timeout_s=0.2))
    valid = PlainSender(sock, "rogue", lambda seq: ppo_update(update=seq))
    c.until(lambda: len(c.seqs) >= 1, also=valid)
    first = c.seqs[0]
    good = encode_body(envelope(0, ppo_update(), run_id="rogue"))
    newer = msgspec.msgpack.decode(good)
    newer["schema"] = SCHEMA_VERSION + 1
    unknown = {"schema": SCHEMA_VERSION, "run_id": "rogue", "seq": -1, "ts": 1.0, "event": {"type": "x_new"}}
    wrong = msgspec.msgpack.decode(good)
    wrong["event"]["entropy"] = "high"
    garbage = [
        [b"ppo_update", b"\xc1\xff\x00 not messagepack"],
        [b"ppo_update", good[: len(good) // 2]],
        [b"ppo_update", msgspec.msgpack.encode(wrong)],
        [b"ppo_update", msgspec.msgpack.encode(newer)],
        [b"ppo_update"],
        [b"ppo_update", good, b"third frame"],
        [b"heartbeat", b"\x91" * 100_000],
    ]
    for frames in garbage:
        valid()
        sock.send_multipart(frames)
    valid()
    unknown["seq"] = valid.seq  # an event type from a newer producer takes its seq's place
    valid.seq += 1
    sock.send_multipart([b"x_new", msgspec.msgpack.encode(unknown)])
    valid()
    last = valid.seq - 1
    c.until(lambda: c.agg.state.delivery.last_seq == last)

    assert c.seqs == [s for s in range(first, last + 1) if s != unknown["seq"]]
    assert c.gaps == [] and c.agg.state.delivery.gaps == 0
    rejected = c.sub.stats.rejected
    assert rejected["malformed"] == 5 and rejected["invalid"] == 1
    assert rejected["newer_schema"] == 1 and rejected["unknown_event"] == 1
    assert c.sub.feed.stats.skipped == 1
    assert c.agg.state.tamiyo.update == last


def test_oversized_message_is_refused_by_the_socket_and_the_consumer_reconnects(
    plain_pub, make_subscriber
) -> None:
    sock, endpoint = plain_pub
    c = Consumer(make_subscriber(endpoint, sync_timeout_s=0.2))
    valid = PlainSender(sock, "big")
    c.until(lambda: len(c.seqs) >= 1, also=valid)
    huge = valid.send(heartbeat(phase="x" * (MAX_MESSAGE_BYTES + 1)))
    # ZeroMQ drops such a connection for good; the subscriber sees that and connects again.
    c.until(lambda: c.sub.stats.reconnects >= 1 and len(c.seqs) >= 1 and c.seqs[-1] > huge.seq, also=valid)
    assert huge.seq not in c.seqs
    assert c.sub.stats.disconnects >= 1
    covered = set(c.seqs)
    for first, last in c.gaps:
        covered |= set(range(first, last + 1))
    assert covered == set(range(c.seqs[0], c.seqs[-1] + 1)), "what was lost meanwhile is reported as a gap"
    assert (huge.seq, huge.seq) in c.gaps or any(a <= huge.seq <= b for a, b in c.gaps)


def test_publisher_refuses_to_send_what_consumers_would_refuse(make_publisher, make_subscriber) -> None:
    pub = make_publisher("run-big")
    c = Consumer(make_subscriber(pub.bound_endpoint))
    pub.publish(heartbeat(phase="x" * (MAX_MESSAGE_BYTES + 1)))
    pub.publish(ppo_update(update=3))
    c.until(lambda: c.agg.state.tamiyo.update == 3)
    assert pub.stats.dropped_oversized == 1 and pub.stats.dropped >= 1
    assert c.sub.stats.disconnects == 0


def test_publish_never_blocks_and_close_is_idempotent(make_publisher) -> None:
    pub = make_publisher("run-q", queue_limit=10)
    results = [pub.publish(heartbeat()) for _ in range(1000)]  # nobody drains faster than this loop
    assert all(isinstance(r, bool) for r in results)
    pub.close()
    pub.close()
    assert pub.publish(heartbeat()) is False
    assert pub.stats.dropped_queue_full >= 1 and pub.stats.published + pub.stats.dropped_queue_full == 1001


def test_wait_for_subscriber_sees_a_consumer(make_publisher, make_subscriber) -> None:
    pub = make_publisher("run-w")
    make_subscriber(pub.bound_endpoint)
    assert pub.wait_for_subscriber(DEADLINE_S)


def test_every_socket_sets_a_maximum_message_size(make_subscriber) -> None:
    sub = make_subscriber("inproc://tamiyo-nobody")
    assert sub.socket.getsockopt(zmq.MAXMSGSIZE) == MAX_MESSAGE_BYTES


class _Version(str):
    """Like ``torch.__version__``: a str subclass MessagePack encoders do not know."""


def test_an_unencodable_event_costs_only_itself(make_publisher, make_subscriber) -> None:
    np = pytest.importorskip("numpy")
    pub = make_publisher("run-enc")
    c = Consumer(make_subscriber(pub.bound_endpoint))
    pub.publish(training_started(torch_version=_Version("2.13.0+cpu"), seed=np.int64(7)))
    pub.publish(ppo_update(update=1, policy_loss=object()))  # a producer bug
    pub.publish(ppo_update(update=2, entropy=np.float64(0.25)))
    c.until(lambda: c.agg.state.tamiyo.update == 2)
    started = c.agg.state.run.started
    assert started is not None and started.torch_version == "2.13.0+cpu" and started.seed == 7
    assert c.agg.state.tamiyo.entropy == 0.25
    assert pub.stats.dropped_unencodable == 1 and c.gaps == [], "the dropped event took no seq"
    pub.publish(ppo_update(update=3))
    c.until(lambda: c.agg.state.tamiyo.update == 3)


def test_a_subscribe_to_everything_client_counts_as_a_subscriber() -> None:
    """A plain client that subscribes to b"" (one-byte subscription message) releases wait_for_subscriber."""
    publisher = BusPublisher("everything", PublisherConfig(endpoint="tcp://127.0.0.1:*")).start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.subscribe(b"")
        sock.connect(publisher.bound_endpoint)
        assert publisher.wait_for_subscriber(20)
    finally:
        sock.close(0)
        ctx.term()
        publisher.close()
