"""The forwarder: ranks through one proxy, every rank's history in one replay, storms, chains, exit."""

from __future__ import annotations

import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq
from testkit.events import heartbeat, ppo_update, training_started
from testkit.net import free_endpoint
from testkit.proc import Proc
from testkit.wait import wait_until

from bus.contract import Envelope, ReplayEnd, TrainingStarted
from bus.forwarder import Forwarder, ForwarderConfig
from bus.publish import BusPublisher, PublisherConfig
from bus.replay import REPLAY_BURST, REPLAY_RATE_PER_S
from bus.wire import decode, decode_replay_end, encode

ANY = "tcp://127.0.0.1:*"
RUN = "run-fw"


@pytest.fixture
def forwarders() -> Iterator[Callable[..., Forwarder]]:
    """Forwarders on free loopback ports, closed at teardown (sockets linger 0)."""
    made: list[Forwarder] = []

    def make(**config: Any) -> Forwarder:
        config.setdefault("frontend", ANY)
        config.setdefault("backend", ANY)
        fw = Forwarder(ForwarderConfig(**config)).start()
        made.append(fw)
        return fw

    yield make
    for fw in reversed(made):
        fw.close()


@pytest.fixture
def ranks() -> Iterator[Callable[[str, int], BusPublisher]]:
    """Rank publishers in connect mode; one heartbeat at start (seq 0, before anyone listens), then hourly."""
    made: list[BusPublisher] = []

    def make(frontend: str, rank: int) -> BusPublisher:
        config = PublisherConfig(endpoint=frontend, connect=True, heartbeat_period_s=3600.0)
        pub = BusPublisher(RUN, config, rank=rank)
        made.append(pub)
        return pub.start()

    yield make
    for pub in made:
        pub.close(flush_timeout=0.0)


class Raw:
    """A consumer speaking the wire with a plain SUB: live envelopes and replays, per rank."""

    def __init__(self, endpoint: str, *topics: bytes) -> None:
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            self.sock.subscribe(topic)
        self.sock.connect(endpoint)
        self.live: dict[int, list[int]] = defaultdict(list)
        self.replayed: dict[int, list[Envelope]] = defaultdict(list)
        self.ends: list[ReplayEnd] = []

    def pump(self) -> None:
        while self.sock.poll(20):
            topic, body = self.sock.recv_multipart()
            if topic.startswith(b"~replay/"):
                end = decode_replay_end(body)
                if end is not None:
                    self.ends.append(end)
                else:
                    env = decode(body)
                    self.replayed[env.rank].append(env)
            else:
                env = decode(body)
                self.live[env.rank].append(env.seq)

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def raw() -> Iterator[Callable[..., Raw]]:
    made: list[Raw] = []

    def make(endpoint: str, *topics: bytes) -> Raw:
        r = Raw(endpoint, *topics)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def publish_updates(pub: BusPublisher, n: int) -> None:
    """training_started (seq 1, after the start heartbeat) then ppo_update 1..n (seqs 2..n+1)."""
    pub.publish(training_started(world_size=2, rank=pub.rank))
    for i in range(1, n + 1):
        pub.publish(ppo_update(i))


def test_two_ranks_through_the_forwarder_arrive_whole_and_in_seq_order(forwarders, ranks, raw) -> None:
    fw = forwarders()
    consumer = raw(fw.backend_endpoint, b"")
    assert wait_until(lambda: fw.status().frames_out == 1, 10)  # its subscription reached the proxy
    pubs = [ranks(fw.frontend_endpoint, r) for r in (0, 1)]
    for pub in pubs:
        assert pub.wait_for_subscriber(10)  # connected to the forwarder, which takes everything
        publish_updates(pub, 200)
    assert wait_until(lambda: all(201 in consumer.live[r] for r in (0, 1)), 10, consumer.pump)
    for r in (0, 1):
        # Seq 0, the heartbeat sent as the rank started, arrives if its connection was up by then.
        assert consumer.live[r] in (list(range(202)), list(range(1, 202)))


def test_a_late_joiner_gets_every_ranks_history_in_one_replay(forwarders, ranks, raw) -> None:
    fw = forwarders()
    pubs = [ranks(fw.frontend_endpoint, r) for r in (0, 1)]
    for pub in pubs:
        assert pub.wait_for_subscriber(10)
        publish_updates(pub, 300)
    assert wait_until(lambda: fw.caches.last_seqs(RUN) == {0: 301, 1: 301}, 10)

    late = raw(fw.backend_endpoint, b"~replay/late")
    assert wait_until(lambda: len(late.ends) == 2, 10, late.pump)
    for end in late.ends:
        assert (end.run_id, end.ranks, end.last_seq) == (RUN, 2, 301)
        history = late.replayed[end.rank]
        assert end.count == len(history)
        events = [e for e in history if e.seq > 0]  # seq 0: the start heartbeat, if it was caught
        assert events[0].event.rank == end.rank and events[0].seq == 1  # training_started
        assert [e.seq for e in events[1:]] == list(range(301 - 255, 302))  # the ppo_update cache depth
    assert sorted(e.rank for e in late.ends) == [0, 1]
    assert not late.live  # the replay went to its own topic alone
    status = fw.status()
    assert (status.replays_served, status.replays_refused) == (1, 0)


def test_rank_publishers_in_connect_mode_serve_no_replay(forwarders, ranks, raw) -> None:
    fw = forwarders(serve_replay=False)
    pub = ranks(fw.frontend_endpoint, 0)
    publish_updates(pub, 5)
    late = raw(fw.backend_endpoint, b"~replay/x", b"heartbeat")  # subscriptions go up in this order
    assert pub.wait_for_subscriber(10)
    assert pub.replays.stats.requested == 0 and len(pub.cache) == 0
    pub.publish(heartbeat())
    assert wait_until(lambda: late.live[0] == [7], 10, late.pump)
    assert not late.replayed and not late.ends


def test_the_subscriber_and_feed_follow_one_rank_through_the_forwarder(
    forwarders, ranks, make_subscriber
) -> None:
    fw = forwarders()
    pub = ranks(fw.frontend_endpoint, 0)
    assert pub.wait_for_subscriber(10)
    publish_updates(pub, 20)  # before any consumer: history only the forwarder's cache holds
    assert wait_until(lambda: fw.caches.last_seqs(RUN) == {0: 21}, 10)
    sub = make_subscriber(fw.backend_endpoint)
    got: list[Any] = []
    assert wait_until(lambda: got and got[-1].seq == 21, 10, lambda: got.extend(sub.receive(0.05)))
    for i in range(21, 41):
        pub.publish(ppo_update(i))
    assert wait_until(lambda: got[-1].seq == 41, 10, lambda: got.extend(sub.receive(0.05)))
    assert [e.seq for e in got if e.seq > 0] == list(range(1, 42))
    assert sub.feed.stats.replays == 1 and sub.feed.stats.gaps == 0 and sub.feed.stats.sync_timeouts == 0


def test_a_replay_storm_is_bounded_and_counted_while_live_traffic_flows(forwarders, ranks, raw) -> None:
    fw = forwarders()
    pub = ranks(fw.frontend_endpoint, 0)
    watcher = raw(fw.backend_endpoint, b"ppo_update")
    assert wait_until(lambda: fw.status().frames_out == 1, 10)  # the watcher's subscription is up
    assert pub.wait_for_subscriber(10)
    publish_updates(pub, 100)
    assert wait_until(lambda: fw.caches.last_seqs(RUN) == {0: 101}, 10)
    storm = zmq.Context.instance().socket(zmq.XSUB)
    storm.setsockopt(zmq.LINGER, 0)
    storm.setsockopt(zmq.SNDHWM, 0)  # queue all 2000 until connected
    storm.connect(fw.backend_endpoint)
    try:
        started = time.monotonic()
        for i in range(2000):
            storm.send(b"\x01~replay/storm-%06d" % i)
        assert wait_until(lambda: fw.replays.stats.requested == 2000, 20)
        elapsed = time.monotonic() - started
        for i in range(101, 111):
            pub.publish(ppo_update(i))
        assert wait_until(lambda: watcher.live[0][-10:] == list(range(102, 112)), 10, watcher.pump)
    finally:
        storm.close(0)
    stats = fw.replays.stats
    allowed = REPLAY_BURST + REPLAY_RATE_PER_S * elapsed + 1  # the total token bucket's most
    assert stats.started <= allowed
    assert stats.refused == 2000 - stats.started - stats.coalesced >= 2000 - allowed
    assert fw.status().replays_refused == stats.refused


def test_a_two_level_chain_delivers_every_rank_and_one_history(forwarders, ranks, raw) -> None:
    head = forwarders()
    nodes = [forwarders(upstream=head.frontend_endpoint) for _ in range(2)]
    assert not nodes[0].config.serves_replay and head.config.serves_replay
    early = raw(head.backend_endpoint, b"")
    assert wait_until(lambda: head.status().frames_out == 1, 10)
    pubs = [ranks(node.frontend_endpoint, r) for r, node in enumerate(nodes)]
    for pub in pubs:
        assert pub.wait_for_subscriber(10)  # the head's subscription travelled head -> node -> rank
        publish_updates(pub, 50)
    assert wait_until(lambda: all(51 in early.live[r] for r in (0, 1)), 10, early.pump)
    assert all(early.live[r][-51:] == list(range(1, 52)) for r in (0, 1))
    assert wait_until(lambda: head.caches.last_seqs(RUN) == {0: 51, 1: 51}, 10)

    late = raw(head.backend_endpoint, b"~replay/chain")
    assert wait_until(lambda: len(late.ends) == 2, 10, late.pump)
    for rank in (0, 1):
        assert [e.seq for e in late.replayed[rank] if e.seq > 0] == list(range(1, 52))
    assert head.status().replays_served == 1
    assert [node.status().replays_served for node in nodes] == [0, 0]
    assert sum(node.status().cached for node in nodes) == 0  # node forwarders keep no cache


def test_the_command_exits_cleanly_on_sigterm_and_reports_its_counters() -> None:
    front, back = free_endpoint(), free_endpoint()
    proc = Proc("bus.forwarder", "--frontend", front, "--backend", back, "--status-interval", "0.2")
    try:
        proc.wait_for_line("ranks connect to " + front, 20)
        proc.wait_for_line("forwarded 0 frames", 20)
        assert proc.stop(signal.SIGTERM) == 0
    finally:
        proc.kill()
    assert "stopped: forwarded" in proc.stderr_text()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--frontend", "tcp://127.0.0.1:99999", "port must be 1-65535"),
        ("--backend", "tcp://no-such-host.invalid:5555", "cannot resolve host"),
        ("--upstream", "udp://head:5556", "is not an endpoint"),
        ("--frontend", "tcp://0.0.0.0:5556", "not loopback"),
    ],
)
def test_bad_endpoints_exit_2_with_the_shared_message(flag: str, value: str, message: str) -> None:
    proc = Proc("bus.forwarder", flag, value)
    assert proc.wait(30) == 2
    assert message in proc.stderr_text()


def test_an_endpoint_in_use_exits_2() -> None:
    with Forwarder(ForwarderConfig(frontend=ANY, backend=ANY)) as fw:
        proc = Proc("bus.forwarder", "--frontend", fw.frontend_endpoint, "--backend", free_endpoint())
        assert proc.wait(30) == 2
    assert "Address already in use" in proc.stderr_text()


def test_a_consumer_joining_mid_stream_sees_no_false_gap(forwarders, ranks, make_subscriber) -> None:
    fw = forwarders()
    pub = ranks(fw.frontend_endpoint, 0)
    assert pub.wait_for_subscriber(10)
    stop = threading.Event()

    def stream() -> None:
        i = 0
        while not stop.is_set():
            if pub.publish(ppo_update(i)):
                i += 1
            if pub.stats.published - pub.stats.sent > 1000:
                time.sleep(0.0005)  # not a wait for an event: keeps the queue from dropping

    feeder = threading.Thread(target=stream)
    feeder.start()
    try:
        assert wait_until(lambda: pub.stats.sent > 5000, 20)
        sub = make_subscriber(fw.backend_endpoint, sync_timeout_s=20.0)  # the replay is awaited, however slow
        got: list[Any] = []
        assert wait_until(lambda: len(got) > 3000, 20, lambda: got.extend(sub.receive(0.05)))
    finally:
        stop.set()
        feeder.join()
    assert sub.feed.stats.replays == 1 and sub.feed.stats.sync_timeouts == 0
    assert sub.feed.stats.gaps == 0, [g for g in got if not isinstance(g, Envelope)][:3]


def test_malformed_frames_are_forwarded_as_they_were_sent(forwarders, ranks, raw) -> None:
    fw = forwarders()
    consumer = raw(fw.backend_endpoint, b"")
    assert wait_until(lambda: fw.status().frames_out == 1, 10)
    bad = zmq.Context.instance().socket(zmq.XPUB)
    bad.setsockopt(zmq.LINGER, 0)
    bad.connect(fw.frontend_endpoint)
    try:
        assert bad.poll(10_000) and bad.recv() == b"\x01"  # the forwarder subscribes to everything
        bad.send(b"ppo_update")
        bad.send_multipart([b"ppo_update", b"not msgpack", b"third"])
        got: list[list[bytes]] = []

        def take() -> None:
            while consumer.sock.poll(20):
                got.append(consumer.sock.recv_multipart())

        assert wait_until(lambda: len(got) == 2, 10, take)
    finally:
        bad.close(0)
    assert got == [[b"ppo_update"], [b"ppo_update", b"not msgpack", b"third"]]
    assert fw.caches.stats.undecodable >= 1 and fw.caches.messages == 0


def test_the_cache_reader_steps_over_a_malformed_message_to_the_next_one() -> None:
    fw = Forwarder(ForwarderConfig(frontend=ANY, backend=ANY))  # not started: its capture reader alone
    ctx = zmq.Context.instance()
    capture = ctx.socket(zmq.PUB)
    capture.setsockopt(zmq.LINGER, 0)
    capture.bind("inproc://test-capture")
    reader = ctx.socket(zmq.SUB)
    reader.setsockopt(zmq.LINGER, 0)
    reader.subscribe(b"")
    reader.connect("inproc://test-capture")
    try:
        assert wait_until(lambda: capture.send(b"probe") or reader.poll(10), 10)
        while reader.poll(0):
            reader.recv()
        # All queued before the reader runs: a one-frame message, then [topic, envelope] of rank 0.
        capture.send(b"ppo_update")
        for seq in range(4):
            env = Envelope(schema=1, run_id=RUN, seq=seq, ts=1.0, event=ppo_update(seq + 1))
            capture.send_multipart(encode(env))
        while fw._on_captured(reader):
            pass
    finally:
        reader.close(0)
        capture.close(0)
    # Read one frame off, [ppo_update | topic 0] is refused, the rest of message 0 skipped, 1..3 cached.
    assert fw.caches.last_seqs(RUN) == {0: 3} and fw.caches.stats.cached == 3
    assert fw.caches.stats.undecodable == 1


def test_two_torchrun_ranks_through_the_forwarder_then_a_late_joiner(forwarders, raw) -> None:
    pytest.importorskip("torch")
    fw = forwarders()
    early = raw(fw.backend_endpoint, b"")
    assert wait_until(lambda: fw.status().frames_out == 1, 10)
    tiny = ["--n-envs", "4", "--rollout-steps", "16", "--num-minibatches", "2", "--update-epochs", "2"]
    args = ["--standalone", "--nproc-per-node", "2", "-m", "producer", "--connect", fw.frontend_endpoint]
    proc = Proc("torch.distributed.run", *args, "--updates", "4", *tiny)
    try:
        assert proc.wait(240) == 0, proc.describe()
    finally:
        proc.kill()
    finished: dict[int, int] = {}

    def pump() -> None:
        while early.sock.poll(20):
            env = decode(early.sock.recv_multipart()[1])
            early.live[env.rank].append(env.seq)
            if env.event.__struct_config__.tag == "training_finished":
                finished[env.rank] = env.seq

    assert wait_until(lambda: len(finished) == 2, 30, pump), proc.describe()
    for rank in (0, 1):
        seqs = early.live[rank]
        assert seqs[0] <= 1 and seqs == list(range(seqs[0], finished[rank] + 1))  # seq 0: the start heartbeat

    late = raw(fw.backend_endpoint, b"~replay/torchrun")
    assert wait_until(lambda: len(late.ends) == 2, 10, late.pump)
    for end in late.ends:
        assert (end.ranks, end.last_seq) == (2, finished[end.rank])
        history = late.replayed[end.rank]
        assert [e.seq for e in history] == sorted(e.seq for e in history) and len(history) == end.count
        kinds = {e.event.__struct_config__.tag for e in history}
        assert {"training_started", "ppo_update", "training_finished"} <= kinds
        (started,) = [e.event for e in history if e.event.__struct_config__.tag == "training_started"]
        assert (started.rank, started.world_size) == (end.rank, 2)


def test_subscribers_see_both_ranks_whole_and_a_late_one_gets_both_histories(
    forwarders, ranks, make_subscriber
) -> None:
    fw = forwarders()
    pubs = [ranks(fw.frontend_endpoint, r) for r in (0, 1)]
    for pub in pubs:
        assert pub.wait_for_subscriber(10)
        publish_updates(pub, 30)  # history before any consumer
    assert wait_until(lambda: fw.caches.last_seqs(RUN) == {0: 31, 1: 31}, 10)

    def follow(sub: Any, got: list[Any], last: int) -> None:
        assert wait_until(
            lambda: {(e.rank, e.seq) for e in got} >= {(0, last), (1, last)},
            10,
            lambda: got.extend(sub.receive(0.05)),
        )

    first, first_got = make_subscriber(fw.backend_endpoint), []
    follow(first, first_got, 31)
    for pub in pubs:
        for i in range(31, 61):
            pub.publish(ppo_update(i))
    follow(first, first_got, 61)
    late, late_got = make_subscriber(fw.backend_endpoint), []
    follow(late, late_got, 61)
    for sub, got in ((first, first_got), (late, late_got)):
        assert all(isinstance(e, Envelope) for e in got)  # no Gap items
        assert sub.feed.stats.gaps == 0 and sub.feed.stats.sync_timeouts == 0
        for rank in (0, 1):
            seqs = [
                e.seq for e in got if e.rank == rank and e.seq > 0
            ]  # seq 0: the start heartbeat, if caught
            started = [e.event for e in got if e.rank == rank and e.seq == 1]
            assert isinstance(started[0], TrainingStarted) and started[0].rank == rank
            # History is the cache's (ppo_update depth 256 holds all 60 here), then contiguous live.
            assert seqs == list(range(1, 62)), (rank, seqs)
