"""The replay cache and queue without sockets: seq order, depths, token buckets, coalescing, bounds."""

from __future__ import annotations

import pytest

from bus.replay import ReplayCache, ReplayQueue, TokenBucket


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cache_keeps_each_topic_depth_and_seq_order_without_sorting() -> None:
    cache = ReplayCache({"a": 2, "b": 3, "off": 0})
    topics = ["a", "b", "b", "a", "a", "b", "b", "off", "c", "a"]
    for seq, topic in enumerate(topics):
        cache.add(seq, topic, f"{topic}{seq}".encode())
    # Independent computation: the newest `depth` seqs of each topic, merged and sorted.
    depth = {"a": 2, "b": 3}
    expected = sorted(
        seq for t in depth for seq in [s for s, topic in enumerate(topics) if topic == t][-depth[t] :]
    )
    assert expected == [2, 4, 5, 6, 9]
    assert [seq for seq, _ in cache.messages()] == expected
    assert [body for _, body in cache.messages()] == [f"{topics[s]}{s}".encode() for s in expected]
    assert len(cache) == 5 and cache.last_seq == 9


def test_cache_snapshot_is_unaffected_by_later_adds_and_refuses_old_seqs() -> None:
    cache = ReplayCache({"a": 2})
    cache.add(0, "a", b"0")
    snapshot = cache.messages()
    cache.add(1, "a", b"1")
    cache.add(2, "a", b"2")
    assert snapshot == [(0, b"0")]
    with pytest.raises(ValueError, match="seq order"):
        cache.add(2, "a", b"again")


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now = 0.5  # one token back
    assert [bucket.take() for _ in range(2)] == [True, False]
    clock.now = 100.0  # never more than the burst
    assert sum(bucket.take() for _ in range(10)) == 3


def _snapshot() -> list[tuple[int, bytes]]:
    return [(seq, bytes([seq])) for seq in range(5)]


def test_queue_coalesces_repeats_refuses_beyond_the_limits_and_counts_both() -> None:
    clock = Clock()
    q = ReplayQueue(rate=100.0, burst=3, peer_rate=100.0, peer_burst=2, max_pending=10, clock=clock)
    assert q.request(b"~replay/a", "p1", _snapshot, 4)
    assert q.request(b"~replay/a", "p1", _snapshot, 4), "a repeat joins the pending replay"
    assert q.request(b"~replay/b", "p1", _snapshot, 4)
    assert not q.request(b"~replay/c", "p1", _snapshot, 4), "the peer's burst is spent"
    assert q.request(b"~replay/d", "p2", _snapshot, 4)
    assert not q.request(b"~replay/e", "p3", _snapshot, 4), "the total burst is spent"
    s = q.stats
    assert (s.requested, s.started, s.coalesced, s.refused) == (6, 3, 1, 2)
    assert q.pending == 3


def test_queue_bounds_pending_replays_and_peers_whatever_is_asked() -> None:
    q = ReplayQueue(rate=1e9, burst=1e9, peer_rate=1e9, peer_burst=1e9, max_pending=4)
    for i in range(1000):
        q.request(f"~replay/{i}".encode(), f"peer{i}", _snapshot, 4)
    assert q.pending == 4 and q.stats.started == 4 and q.stats.refused == 996

    q = ReplayQueue(rate=0.0, burst=0, max_peers=8)
    for i in range(1000):
        assert not q.request(f"~replay/{i}".encode(), f"peer{i}", _snapshot, 4)
    assert q.peers == 8 and q.pending == 0 and q.stats.refused == 1000


def test_queue_sends_in_round_robin_slices_with_the_snapshot_last_seq() -> None:
    q = ReplayQueue(slice_messages=2)
    q.request(b"~replay/a", "p", _snapshot, 7)
    q.request(b"~replay/b", "p", lambda: [(0, b"x")], 7)
    taken = []
    while (step := q.next_slice()) is not None:
        replay, bodies, done = step
        taken.append((replay.topic, bodies, done, replay.last_seq))
    assert taken == [
        (b"~replay/a", [b"\x00", b"\x01"], False, 7),
        (b"~replay/b", [b"x"], True, 7),
        (b"~replay/a", [b"\x02", b"\x03"], False, 7),
        (b"~replay/a", [b"\x04"], True, 7),
    ]
    assert q.stats.completed == 2 and q.stats.sent == 6 and q.pending == 0
