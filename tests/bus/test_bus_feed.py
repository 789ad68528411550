"""Feed: replay/live merge by seq, resync on gaps, unasked replays, run switches; as plain calls."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from bus_factories import batch_completed, envelope, heartbeat, ppo_update, replay_end, training_started
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.contract import Envelope, ReplayEnd
from bus.feed import Feed, Gap, Item, Skipped


def seqs(items: list[Item]) -> list[int]:
    return [i.seq for i in items if isinstance(i, Envelope)]


def gaps(items: list[Item]) -> list[tuple[int, int]]:
    return [(g.first, g.last) for g in items if isinstance(g, Gap)]


def synced(last: int = 10, run_id: str = "run-a") -> Feed:
    """A feed that has caught up to ``last`` through an initial replay."""
    feed = Feed(sync_timeout=0.5, resync_interval=1.0)
    for s in range(last + 1):
        feed.on_replay(feed.token, envelope(s, run_id=run_id), 0.0)
    out = feed.on_replay_end(feed.token, replay_end(last, run_id=run_id), 0.0)
    assert seqs(out) == list(range(last + 1))
    return feed


def test_initial_replay_merges_with_held_live_without_duplicates_reorder_or_gaps() -> None:
    feed = Feed()
    token = feed.token
    # Live messages that raced ahead of the replay are held, not delivered.
    assert feed.on_live(envelope(9), 0.00) == []
    assert feed.on_live(envelope(10), 0.01) == []
    # The replay: per-type caches, so older heartbeats (2, 5) have fallen out: pre-join history.
    for s in (0, 1, 3, 4, 6, 7, 8, 9):
        assert feed.on_replay(token, envelope(s), 0.02) == []
    out = feed.on_replay_end(token, replay_end(9), 0.03)
    assert seqs(out) == [0, 1, 3, 4, 6, 7, 8, 9, 10]
    assert gaps(out) == []
    assert feed.stats.duplicates == 1  # seq 9 came both ways
    assert seqs(feed.on_live(envelope(11), 0.04)) == [11]
    assert not feed.syncing and feed.stats.sync_timeouts == 0 and feed.stats.gaps == 0


def test_replay_fills_messages_lost_before_the_replay_was_answered() -> None:
    feed = Feed()
    feed.on_live(envelope(20), 0.0)
    feed.on_replay(feed.token, envelope(21), 0.0)
    out = feed.on_replay_end(feed.token, replay_end(21), 0.0)
    feed.on_live(envelope(22), 0.0)
    assert seqs(out) == [20, 21] and gaps(out) == []


def test_non_replaying_publisher_costs_one_sync_timeout_then_live_flows() -> None:
    feed = Feed(sync_timeout=0.5)
    assert feed.poll(10.0) == []  # nothing heard: nothing to time out
    assert feed.on_live(envelope(50), 1.0) == []
    assert feed.on_live(envelope(51), 1.1) == []
    assert feed.deadline == 1.5
    assert feed.poll(1.4) == []
    out = feed.poll(1.5)
    assert seqs(out) == [50, 51] and gaps(out) == []
    assert feed.stats.sync_timeouts == 1
    assert seqs(feed.on_live(envelope(52), 1.6)) == [52]
    assert feed.deadline is None


def test_gap_starts_a_resync_and_the_replay_fills_it() -> None:
    feed = synced(10)
    old = feed.token
    assert feed.on_live(envelope(13), 5.0) == []
    assert feed.token != old and feed.syncing and feed.stats.resyncs == 1
    feed.on_live(envelope(14), 5.01)
    assert feed.on_replay(old, envelope(11), 5.02) == [] and feed.stats.stale == 1
    for s in range(0, 14):  # the publisher replays its whole cache under the new token
        feed.on_replay(feed.token, envelope(s), 5.02)
    out = feed.on_replay_end(feed.token, replay_end(13), 5.03)
    assert seqs(out) == [11, 12, 13, 14] and gaps(out) == []
    assert feed.stats.gaps == 0


def test_gap_the_replay_cannot_fill_is_reported() -> None:
    feed = synced(10)
    feed.on_live(envelope(20), 5.0)
    for s in range(15, 21):  # the cache only reaches back to 15
        feed.on_replay(feed.token, envelope(s), 5.0)
    out = feed.on_replay_end(feed.token, replay_end(20), 5.0)
    assert gaps(out) == [(11, 14)] and seqs(out) == [15, 16, 17, 18, 19, 20]
    assert out.index(next(i for i in out if isinstance(i, Gap))) == 0
    assert feed.stats.gaps == 1 and feed.stats.missed == 4
    assert out[0] == Gap("run-a", 11, 14, 5.0)


def test_messages_lost_just_before_the_replay_and_never_cached_are_a_gap() -> None:
    feed = synced(10)
    feed.on_live(envelope(12), 5.0)  # 11 lost
    out = feed.on_replay_end(feed.token, replay_end(15), 5.0)  # 13..15 sent, lost, not cached
    assert seqs(out) == [12] and gaps(out) == [(11, 11), (13, 15)]
    assert seqs(feed.on_live(envelope(16), 5.1)) == [16]


def test_unanswered_resync_reports_the_gap_after_the_sync_timeout() -> None:
    feed = synced(10)
    feed.on_live(envelope(13), 5.0)
    out = feed.poll(5.5)
    assert gaps(out) == [(11, 12)] and seqs(out) == [13]


def test_resyncs_are_rate_limited_and_gaps_in_between_are_reported_at_once() -> None:
    feed = synced(10)
    feed.on_live(envelope(12), 5.0)
    out = feed.on_replay_end(feed.token, replay_end(12), 5.1)
    assert gaps(out) == [(11, 11)]
    out = feed.on_live(envelope(15), 5.2)  # within resync_interval of the last resync
    assert gaps(out) == [(13, 14)] and seqs(out) == [15] and feed.stats.resyncs == 1
    assert feed.on_live(envelope(17), 6.1) == [] and feed.stats.resyncs == 2


def test_unasked_replay_after_a_reconnect_fills_what_was_missed() -> None:
    feed = synced(10)
    token = feed.token
    # The connection dropped and came back; the SUB re-sent its subscriptions, so the
    # publisher replays under the current token without having been asked by the feed.
    for s in range(0, 16):
        assert feed.on_replay(token, envelope(s), 7.0) == []
    assert feed.syncing and feed.token == token
    assert feed.on_live(envelope(16), 7.01) == []
    out = feed.on_replay_end(token, replay_end(15), 7.02)
    assert seqs(out) == [11, 12, 13, 14, 15, 16] and gaps(out) == []


def test_new_run_id_switches_runs_and_old_stragglers_are_dropped() -> None:
    feed = synced(10, run_id="run-a")
    feed.on_live(envelope(0, training_started(), run_id="run-b"), 9.0)
    assert feed.syncing
    feed.on_live(envelope(11, run_id="run-a"), 9.0)  # in flight from the old producer
    for s in range(0, 3):
        feed.on_replay(feed.token, envelope(s, run_id="run-b"), 9.1)
    out = feed.on_replay_end(feed.token, replay_end(2, run_id="run-b"), 9.1)
    assert seqs(out) == [0, 1, 2] and gaps(out) == []
    assert {i.run_id for i in out} == {"run-b"} and feed.run_id == "run-b"
    assert feed.on_live(envelope(12, run_id="run-a"), 9.2) == []  # stale, no sync back
    assert not feed.syncing
    assert seqs(feed.on_live(envelope(3, run_id="run-b"), 9.3)) == [3]


def test_restarted_non_replaying_producer_is_followed() -> None:
    feed = synced(10, run_id="run-a")
    feed.on_live(envelope(7, run_id="run-b"), 9.0)
    out = feed.poll(9.5)
    assert seqs(out) == [7] and gaps(out) == [] and feed.run_id == "run-b"


def test_unknown_event_types_hold_their_place_without_a_gap() -> None:
    feed = synced(10)
    assert feed.on_live(Skipped("run-a", 11, 1.0, "seed_germinated"), 5.0) == []
    assert seqs(feed.on_live(envelope(12), 5.0)) == [12]
    assert feed.stats.skipped == 1 and feed.stats.gaps == 0 and not feed.syncing


# -- a model of the publisher and a lossy link, driven by hypothesis ----------------

DEPTHS = {"ppo_update": 6, "batch_completed": 6, "heartbeat": 2}
EVENTS = {"ppo_update": ppo_update(), "batch_completed": batch_completed(), "heartbeat": heartbeat()}


@dataclass
class Link:
    """One publisher with per-type replay caches, one FIFO link that may drop, one Feed."""

    feed: Feed = field(default_factory=lambda: Feed(sync_timeout=0.5, resync_interval=1.0))
    seq: int = 0
    now: float = 0.0
    caches: dict[str, deque[Envelope]] = field(
        default_factory=lambda: {t: deque(maxlen=d) for t, d in DEPTHS.items()}
    )
    wire: deque[tuple[str | None, Envelope | ReplayEnd]] = field(default_factory=deque)
    asked: list[str] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)
    out: list[Item] = field(default_factory=list)
    live_seen: bool = False

    def send(self, kind: str, lost: bool) -> None:
        env = envelope(self.seq, EVENTS[kind])
        self.seq += 1
        self.caches[kind].append(env)
        # Losses come from a full pipe, so none before the first live message gets through:
        # the consumer could not tell those from history sent before it joined.
        if not (lost and self.live_seen):
            self.wire.append((None, env))

    def answer(self, lost: list[bool]) -> None:
        """The publisher sees pending replay subscriptions and replays its caches on each."""
        for token in self.asked:
            history = sorted((e for c in self.caches.values() for e in c), key=lambda e: e.seq)
            for i, env in enumerate(history):
                if not (lost[i % len(lost)] if lost else False):
                    self.wire.append((token, env))
            self.wire.append((token, replay_end(self.seq - 1)))
            self.answered.add(token)
        self.asked = []

    def deliver(self, n: int) -> None:
        for _ in range(min(n, len(self.wire))):
            token, msg = self.wire.popleft()
            if token is None:
                assert isinstance(msg, Envelope)
                self.live_seen = True
                self.out += self.feed.on_live(msg, self.now)
            elif isinstance(msg, ReplayEnd):
                self.out += self.feed.on_replay_end(token, msg, self.now)
            else:
                self.out += self.feed.on_replay(token, msg, self.now)
            self.subscribe()

    def reconnect(self) -> None:
        """The connection drops (what was in flight is lost) and comes back: the SUB re-sends
        its subscriptions, so the publisher replays under the current token unasked."""
        if self.live_seen:  # before that, a lost connection is indistinguishable from a late join
            self.wire.clear()
        self.asked = [self.feed.token]

    def tick(self, dt: float) -> None:
        self.now += dt
        self.out += self.feed.poll(self.now)
        self.subscribe()

    def subscribe(self) -> None:
        token = self.feed.token
        if token not in self.answered and token not in self.asked:
            self.asked.append(token)


ACTIONS = st.one_of(
    st.tuples(st.just("send"), st.sampled_from(sorted(DEPTHS)), st.booleans()),
    st.tuples(st.just("deliver"), st.integers(1, 6)),
    st.tuples(st.just("answer"), st.lists(st.booleans(), max_size=4)),
    st.tuples(st.just("tick"), st.sampled_from([0.05, 0.3, 0.6, 1.2])),
    st.tuples(st.just("reconnect")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ACTIONS, max_size=60))
def test_every_seq_is_delivered_once_or_reported_missing(actions: list[tuple]) -> None:
    link = Link()
    link.subscribe()
    for action in actions:
        if action[0] == "send":
            link.send(action[1], action[2])
        elif action[0] == "deliver":
            link.deliver(action[1])
        elif action[0] == "answer":
            link.answer(action[1])
        elif action[0] == "reconnect":
            link.reconnect()
        else:
            link.tick(action[1])
    # Then the link heals: everything arrives, replays are answered, time passes.
    for _ in range(6):
        link.send("ppo_update", lost=False)
        link.deliver(10_000)
        link.answer([])
        link.deliver(10_000)
        link.tick(1.2)
        link.answer([])
        link.deliver(10_000)
    delivered = seqs(link.out)
    assert delivered == sorted(set(delivered)), "in order, each once"
    assert link.feed.last_seq == link.seq - 1 and delivered[-1] == link.seq - 1, "caught up"
    covered = set(delivered)
    for first, last in gaps(link.out):
        span = set(range(first, last + 1))
        assert not span & covered, "a gap never covers what was delivered"
        covered |= span
    assert covered == set(range(min(covered), link.seq)), "nothing lost silently"
    assert link.feed.stats.missed == sum(last - first + 1 for first, last in gaps(link.out))


# -- several ranks of one run -------------------------------------------------------------------


def test_ranks_interleave_freely_and_the_sync_ends_with_the_last_rank_s_replay_end() -> None:
    feed = Feed()
    token = feed.token
    for s in range(3):
        feed.on_replay(token, envelope(s, rank=1), 0.0)
        feed.on_replay(token, envelope(s, rank=0), 0.0)
    assert feed.on_replay_end(token, replay_end(2, rank=1), 0.0) == []  # rank 0's burst is not closed
    assert feed.syncing
    out = feed.on_replay_end(token, replay_end(2, rank=0), 0.0)
    assert sorted((e.rank, e.seq) for e in out if isinstance(e, Envelope)) == [
        (r, s) for r in (0, 1) for s in range(3)
    ]
    out = []
    for s in range(3, 6):
        feed.push_live(out, envelope(s, rank=1), 1.0)
        feed.push_live(out, envelope(s, rank=0), 1.0)
    assert [(e.rank, e.seq) for e in out] == [(r, s) for s in range(3, 6) for r in (1, 0)]
    assert feed.last_seqs == {0: 5, 1: 5} and feed.last_seq == 5 and feed.stats.gaps == 0
    assert feed.stats.replays == 2 and feed.stats.sync_timeouts == 0


def test_a_hole_in_one_rank_is_that_rank_s_gap() -> None:
    feed = synced(5)
    feed.push_live([], envelope(0, rank=1), 1.0)  # rank 1 first heard at its seq 0: no gap, no resync
    assert feed.stats.resyncs == 0 and feed.last_seqs == {0: 5, 1: 0}
    assert feed.on_live(envelope(4, rank=1), 2.0) == []  # 1..3 missing: a resync
    assert feed.syncing and feed.stats.resyncs == 1
    assert feed.on_replay_end(feed.token, replay_end(5), 2.1) == []  # rank 1 was heard: wait for its end
    out = feed.on_replay_end(feed.token, replay_end(4, rank=1), 2.1)  # its cache no longer holds 1..3
    assert [(g.rank, g.first, g.last) for g in out if isinstance(g, Gap)] == [(1, 1, 3)]
    assert seqs(out) == [4] and feed.last_seqs == {0: 5, 1: 4}


def test_a_rank_whose_replay_never_comes_is_joined_from_the_live_stream_at_the_deadline() -> None:
    feed = Feed(sync_timeout=0.5)
    feed.on_live(envelope(7, rank=1), 0.0)  # rank 1's publisher refused the replay (rate limit)
    feed.on_replay(feed.token, envelope(0), 0.1)
    assert feed.on_replay_end(feed.token, replay_end(0), 0.1) == []
    out = feed.poll(0.5)
    assert sorted((e.rank, e.seq) for e in out if isinstance(e, Envelope)) == [(0, 0), (1, 7)]
    assert gaps(out) == [] and feed.stats.sync_timeouts == 0 and feed.last_seqs == {0: 0, 1: 7}


def test_a_replay_end_names_its_own_rank() -> None:
    feed = Feed()
    for s in range(3):
        feed.on_replay(feed.token, envelope(s, rank=3), 0.0)
    out = feed.on_replay_end(feed.token, replay_end(4, rank=3), 0.0)
    assert seqs(out) == [0, 1, 2] and gaps(out) == [] and feed.last_seqs == {3: 4}
    assert feed.last_seq is None  # no rank 0 in this run


def test_skipped_messages_hold_their_rank_s_place() -> None:
    feed = synced(2)
    out = feed.on_live(envelope(0, rank=1), 1.0)
    feed.push_live(out, Skipped("run-a", 1, 0.0, "newer_event", rank=1), 1.0)
    feed.push_live(out, envelope(2, rank=1), 1.0)
    assert [(e.rank, e.seq) for e in out] == [(1, 0), (1, 2)] and feed.stats.gaps == 0


# -- a forwarder's replay: one ReplayEnd per rank, each saying how many ------------------------------


def forwarder_end(rank: int, last_seq: int, count: int, ranks: int = 2) -> ReplayEnd:
    return ReplayEnd(replay_end=True, run_id="run-a", last_seq=last_seq, count=count, rank=rank, ranks=ranks)


def test_a_forwarder_replay_completes_at_its_last_rank_s_end_not_at_the_first() -> None:
    feed = Feed()
    token = feed.token
    for s in range(3):  # rank by rank, as a forwarder sends them: rank 1 is not heard yet
        feed.on_replay(token, envelope(s, rank=0), 0.0)
    assert feed.on_replay_end(token, forwarder_end(0, 2, 3), 0.0) == []
    assert feed.syncing
    for s in range(2):
        feed.on_replay(token, envelope(s, rank=1), 0.0)
    out = feed.on_replay_end(token, forwarder_end(1, 1, 2), 0.0)
    assert sorted((e.rank, e.seq) for e in out if isinstance(e, Envelope)) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
    ]
    assert not feed.syncing and gaps(out) == [] and feed.last_seqs == {0: 2, 1: 1}


def test_a_forwarder_replay_ends_even_for_a_rank_heard_only_live() -> None:
    feed = Feed()
    token = feed.token
    feed.on_live(envelope(9, rank=5), 0.0)  # a rank the forwarder had not cached yet when it answered
    feed.on_replay(token, envelope(0, rank=0), 0.0)
    feed.on_replay_end(token, forwarder_end(0, 0, 1), 0.0)
    feed.on_replay(token, envelope(0, rank=1), 0.0)
    out = feed.on_replay_end(token, forwarder_end(1, 0, 1), 0.0)  # rank 5 has no end: not waited for
    assert not feed.syncing and feed.last_seqs == {0: 0, 1: 0, 5: 9}
    assert sorted((e.rank, e.seq) for e in out if isinstance(e, Envelope)) == [(0, 0), (1, 0), (5, 9)]


def test_ends_of_an_abandoned_replay_do_not_count_towards_the_next() -> None:
    feed = Feed()
    first_token = feed.token
    feed.on_live(envelope(1), 0.0)
    feed.on_replay(first_token, envelope(0), 0.0)
    assert feed.on_replay_end(first_token, forwarder_end(0, 1, 1), 0.1) == []  # rank 1's end never comes
    assert seqs(feed.poll(0.6)) == [0, 1]
    feed.on_live(envelope(5), 2.0)  # a hole: a resync under a fresh token
    assert feed.syncing and feed.token != first_token
    assert feed.on_replay_end(feed.token, forwarder_end(0, 5, 0), 2.1) == []  # one of two: still waiting
    assert feed.syncing
    feed.on_replay_end(feed.token, forwarder_end(1, 5, 0), 2.2)
    assert not feed.syncing
