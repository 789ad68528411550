"""The forwarder's per-(run, rank) cache and its replay, as plain calls."""

from __future__ import annotations

from testkit.events import heartbeat, ppo_update, training_started

from bus.contract import Envelope, ReplayEnd
from bus.forwarder_cache import RankCaches
from bus.wire import decode, decode_replay_end, encode


def add(caches: RankCaches, run_id: str, rank: int, seq: int, event=None) -> bool:  # type: ignore[no-untyped-def]
    env = Envelope(schema=1, run_id=run_id, seq=seq, ts=1.0, event=event or ppo_update(seq), rank=rank)
    topic, body = encode(env)
    return caches.add(topic, body)


def replay(caches: RankCaches) -> tuple[list[Envelope], list[ReplayEnd]]:
    envs, ends = [], []
    for _, body in caches.snapshot():
        end = decode_replay_end(body)
        if end is None:
            envs.append(decode(body))
        else:
            ends.append(end)
    return envs, ends


def test_the_newest_run_is_replayed_rank_by_rank_each_closed_by_its_end() -> None:
    caches = RankCaches({"training_started": 1, "ppo_update": 2, "heartbeat": 1})
    for rank in (1, 0):
        add(caches, "run", rank, 0, training_started(rank=rank))
        for seq in range(1, 5):
            add(caches, "run", rank, seq)
    add(caches, "run", 0, 5, heartbeat())
    envs, ends = replay(caches)
    assert [(e.rank, e.seq) for e in envs] == [(0, 0), (0, 3), (0, 4), (0, 5), (1, 0), (1, 3), (1, 4)]
    assert [(e.rank, e.last_seq, e.count, e.ranks, e.run_id) for e in ends] == [
        (0, 5, 4, 2, "run"),
        (1, 4, 3, 2, "run"),
    ]
    snapshot = caches.snapshot()
    assert decode_replay_end(snapshot[4][1]) is not None  # rank 0's four messages, then its end


def test_runs_are_bounded_and_the_newest_by_arrival_is_replayed() -> None:
    caches = RankCaches(max_runs=2)
    add(caches, "b", 0, 0)
    add(caches, "a", 0, 0)  # arrives later: newest, whatever its name or timestamps
    add(caches, "b", 0, 1)  # more of an older run does not make it newest
    assert {e.run_id for e in replay(caches)[1]} == {"a"}
    add(caches, "c", 0, 0)
    assert caches.runs == 2 and caches.stats.runs_evicted == 1 and caches.last_seqs("b") == {}


def test_ranks_per_run_are_bounded_and_refusals_counted() -> None:
    caches = RankCaches(max_ranks=2)
    for rank in range(4):
        assert add(caches, "run", rank, 0)
    assert caches.ranks == 2 and caches.stats.ranks_refused == 2
    assert caches.last_seqs("run") == {0: 0, 1: 0}


def test_a_restarted_rank_starts_its_cache_over_and_skipped_seqs_are_counted() -> None:
    caches = RankCaches()
    for seq in (0, 1, 2, 5):
        add(caches, "run", 0, seq)
    assert caches.stats.lost == 2
    add(caches, "run", 0, 0)  # the process restarted under the same run_id
    envs, ends = replay(caches)
    assert [e.seq for e in envs] == [0] and ends[0].last_seq == 0 and caches.stats.restarts == 1


def test_what_is_not_an_envelope_is_counted_and_not_cached() -> None:
    caches = RankCaches()
    assert not caches.add(b"ppo_update", b"\x93garbage")
    assert not caches.add(b"ppo_update", b"ppo_update")
    assert caches.stats.undecodable == 2 and caches.messages == 0 and caches.snapshot() == []
