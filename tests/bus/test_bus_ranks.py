"""Per-rank fold, the combined view, the straggler score and STUCK: hand-worked cases."""

from __future__ import annotations

import pytest
from bus_factories import (
    batch_completed,
    envelope,
    heartbeat,
    ppo_update,
    training_finished,
    training_started,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.aggregator import Aggregator, fold_all
from bus.contract import BatchCompleted, Heartbeat
from bus.feed import Gap
from bus.liveness import FINISHED, LIVE, SLOW, STALE, STUCK, STUCK_MIN_S, progress_age_s
from bus.ranks import rank_status, worst_first
from bus.state import Snapshot
from bus.straggler import STRAGGLER_FLAG, StragglerScore


def two_rank_run() -> list:
    """Both ranks of one run, each with its own seqs from 0, interleaved."""
    per_rank = {
        r: [
            training_started(world_size=2, rank=r),
            ppo_update(update=1, policy_loss=0.5 + r / 5, env_steps=100, compute_time_ms=100.0 * (r + 1)),
            batch_completed(update=1, env_steps=200 + 50 * r, fps=1000.0 - 200 * r, episodes_completed=3 + r),
            heartbeat(dropped=3 + r),
        ]
        for r in (0, 1)
    }
    return [envelope(s, per_rank[r][s], rank=r) for s in range(4) for r in (1, 0)]


def test_each_rank_is_folded_on_its_own_seqs() -> None:
    snap = fold_all(two_rank_run())
    assert set(snap.ranks) == {0, 1} and snap.world_size == 2
    for r, rs in snap.ranks.items():
        assert rs.delivery.events == 4 and rs.delivery.last_seq == 3 and rs.delivery.duplicates == 0
        assert rs.tamiyo.policy_loss == pytest.approx(0.5 + r / 5)
        assert rs.tamiyo.started is not None and rs.tamiyo.started.rank == r
    assert snap.delivery.events == 8 and snap.delivery.duplicates == 0


def test_combined_view_policy_is_the_lowest_rank_and_rollouts_and_counters_are_summed() -> None:
    snap = fold_all(two_rank_run())
    assert snap.tamiyo is snap.ranks[0].tamiyo  # rank 1 arrived first, yet rank 0 leads
    assert snap.tamiyo.policy_loss == 0.5 and snap.run.started is snap.ranks[0].tamiyo.started
    r = snap.rollout
    assert r.env_steps == 200 + 250 and r.fps == 1000.0 + 800.0 and r.episodes_completed == 3 + 4
    assert r.batches == 2
    assert snap.delivery.producer_dropped == 3 + 4
    assert snap.delivery.last_seq == 3  # the lead rank's


def test_a_dropped_count_replaces_that_rank_s_share_of_the_sum() -> None:
    items = [*two_rank_run(), envelope(4, heartbeat(dropped=10), rank=0)]
    assert fold_all(items).delivery.producer_dropped == 10 + 4


def test_a_single_process_run_is_its_one_rank() -> None:
    snap = fold_all(
        [envelope(0, training_started()), envelope(1, ppo_update()), envelope(2, batch_completed())]
    )
    assert list(snap.ranks) == [0]
    rs = snap.ranks[0]
    assert snap.tamiyo is rs.tamiyo and snap.rollout is rs.rollout
    assert snap.delivery.events == rs.delivery.events == 3


def test_gaps_and_duplicates_are_per_rank() -> None:
    items = [*two_rank_run(), Gap("run-a", 4, 6, 0.0, rank=1), envelope(7, heartbeat(), rank=1)]
    items.append(envelope(2, heartbeat(), rank=0))  # rank 0 already has seq 2
    snap = fold_all(items)
    assert snap.ranks[1].delivery.gaps == 1 and list(snap.ranks[1].delivery.gap_ranges) == [(4, 6)]
    assert snap.ranks[0].delivery.gaps == 0 and snap.ranks[0].delivery.duplicates == 1
    assert snap.delivery.gaps == 1 and snap.delivery.missed == 3 and snap.delivery.duplicates == 1


def test_the_run_finishes_when_every_rank_has_and_the_worst_reason_wins() -> None:
    agg = Aggregator()
    agg.apply_all(two_rank_run())
    snap = agg.apply(envelope(4, training_finished(reason="crashed", error="oom"), rank=1))
    assert not snap.run.finished and snap.ranks[1].finish is not None
    assert snap.delivery.producer_phase != "finished"
    snap = agg.apply(envelope(4, training_finished(reason="interrupted"), rank=0))
    assert snap.run.finished and snap.run.finish_reason == "crashed" and snap.run.finish_error == "oom"
    assert snap.delivery.producer_phase == "finished"


# -- the straggler score ------------------------------------------------------------------------


def scores(n: int) -> list[StragglerScore]:
    return [StragglerScore() for _ in range(n)]


def test_a_rank_twice_as_slow_as_its_peer_is_flagged_at_its_second_update() -> None:
    fast, slow = scores(2)
    fast.record(100.0, [slow])  # no peer measured yet: no sample
    assert (fast.samples, fast.score) == (0, 1.0)
    slow.record(200.0, [fast])  # ratio 200/100 = 2: 1 + 0.25·(2 − 1)
    assert slow.ratio == 2.0 and slow.score == 1.25 and not slow.flagged
    fast.record(100.0, [slow])  # ratio 0.5: 1 + 0.25·(0.5 − 1)
    assert fast.score == 0.875
    slow.record(200.0, [fast])  # 1.25 + 0.25·(2 − 1.25)
    assert slow.score == 1.4375 and slow.flagged and slow.samples == 2


def test_the_reference_is_the_median_of_the_other_ranks() -> None:
    others = scores(4)
    for s, ms in zip(others, (100.0, 100.0, 110.0, 120.0), strict=True):
        s.compute_ms = ms
    me = StragglerScore()
    me.record(300.0, others)
    assert me.ratio == pytest.approx(300.0 / 105.0)  # median of 100, 100, 110, 120
    assert me.score == pytest.approx(1 + 0.25 * (2.0 - 1))  # the ratio is capped at 2


def test_a_one_off_stall_is_never_flagged_and_chronic_lag_is() -> None:
    peers = scores(3)
    for s in peers:
        s.compute_ms = 100.0
    me = StragglerScore()
    trace = []
    for ms in [100.0] * 5 + [1e6] + [100.0] * 5:  # one update stalled 10,000×
        me.record(ms, peers)
        trace.append(me.score)
    assert max(trace) == 1.25 and not any(t >= STRAGGLER_FLAG for t in trace)
    me = StragglerScore()
    flagged_at = None
    for n in range(1, 10):
        me.record(150.0, peers)  # chronically 1.5×: 1.125, 1.21875, 1.2890625, 1.341796875
        if me.flagged and flagged_at is None:
            flagged_at = n
    assert flagged_at == 4


@pytest.mark.parametrize("ms", [0.0, -1.0, float("nan"), float("inf")])
def test_unmeasured_or_non_finite_compute_times_are_ignored(ms: float) -> None:
    peer = StragglerScore(compute_ms=100.0)
    me = StragglerScore()
    me.record(ms, [peer])
    assert me == StragglerScore()


def test_the_fold_scores_compute_time_per_rank() -> None:
    items = []
    for u in (1, 2):
        for r in (0, 1):
            items.append(envelope(u, ppo_update(update=u, compute_time_ms=100.0 * (r + 1)), rank=r))
    snap = fold_all(items)
    assert snap.ranks[1].straggler.score == 1.4375 and snap.ranks[1].straggler.flagged
    assert not snap.ranks[0].straggler.flagged


# -- STUCK ----------------------------------------------------------------------------------------


def with_heartbeat(received_at: float, progress_age: float | None, period: float = 1.0) -> Snapshot:
    """Rank 1 of a two-rank run, with one heartbeat received at ``received_at``; rank 0 progressing."""
    agg = Aggregator()
    agg.apply(envelope(0, heartbeat(period_s=period, progress_age_s=0.1), rank=0), received_at)
    agg.apply(envelope(0, heartbeat(period_s=period, progress_age_s=progress_age), rank=1), received_at)
    return agg.state


def test_the_run_s_progress_age_is_its_oldest_rank_s_while_heartbeats_arrive() -> None:
    state = with_heartbeat(100.0, 12.0)
    assert progress_age_s(state, 103.5) == 15.5  # rank 1's: 12 s at its heartbeat, 3.5 s since
    assert progress_age_s(with_heartbeat(100.0, None), 103.0) == 3.1  # rank 1 does not report: rank 0's
    assert progress_age_s(state, 106.0) is None  # both STALE: nothing is known


@pytest.mark.parametrize(
    ("progress_age", "now", "status"),
    [
        (5.0, 101.0, LIVE),
        (STUCK_MIN_S - 0.5, 101.0, STUCK),  # 29.5 s at the heartbeat, 30.5 s now
        (40.0, 100.0, STUCK),
        (40.0, 103.0, STUCK),  # heartbeat 3 s late: still STUCK, it is the loop that hangs
        (40.0, 106.0, STALE),  # heartbeats stopped too: the rank is gone, not stuck
        (None, 103.0, SLOW),
    ],
)
def test_a_rank_is_stuck_when_heartbeats_arrive_but_progress_does_not(
    progress_age: float | None, now: float, status: str
) -> None:
    state = with_heartbeat(100.0, progress_age)
    assert rank_status(state, 1, now) == status


def test_worst_first_puts_stuck_then_stale_then_stragglers_first() -> None:
    agg = Aggregator()
    for r in range(6):
        agg.apply(envelope(0, heartbeat(progress_age_s=1.0), rank=r), 100.0)
    agg.apply(envelope(1, heartbeat(progress_age_s=50.0), rank=4), 100.0)
    agg.state.ranks[2].delivery.last_heartbeat_at = agg.state.ranks[2].delivery.last_event_at = 90.0
    agg.state.ranks[5].straggler.score = 1.5
    agg.state.ranks[1].straggler.score = 1.31
    agg.state.ranks[3].finish = training_finished()
    rows = worst_first(agg.state, 101.0)  # rank 4: 51 s without progress
    assert [(rs.rank, status) for rs, status in rows] == [
        (4, STUCK),
        (2, STALE),
        (5, LIVE),
        (1, LIVE),
        (0, LIVE),
        (3, FINISHED),
    ]


@st.composite
def rank_streams(draw: st.DrawFn) -> list:
    """Batches and heartbeats of 1-4 ranks, each rank's seqs in order, arbitrarily interleaved."""
    streams = []
    for rank in range(draw(st.integers(1, 4))):
        n = draw(st.integers(1, 8))
        events = [
            batch_completed(update=s, env_steps=draw(st.integers(0, 10**6)), fps=draw(st.floats(0, 1e5)))
            if draw(st.booleans())
            else heartbeat(dropped=draw(st.integers(0, 100)))
            for s in range(n)
        ]
        streams.append([envelope(s, e, rank=rank) for s, e in enumerate(events)])
    out = []
    while any(streams):
        i = draw(st.sampled_from([i for i, s in enumerate(streams) if s]))
        out.append(streams[i].pop(0))
    return out


@settings(max_examples=150, deadline=None)
@given(rank_streams())
def test_the_combined_counters_are_the_sums_of_each_rank_s_newest(items: list) -> None:
    snap = fold_all(items)
    newest: dict[int, dict[type, object]] = {}
    for e in items:
        newest.setdefault(e.rank, {})[type(e.event)] = e.event
    batches = [n[BatchCompleted] for n in newest.values() if BatchCompleted in n]
    beats = [n[Heartbeat] for n in newest.values() if Heartbeat in n]
    assert snap.delivery.events == len(items)
    assert snap.delivery.producer_dropped == sum(hb.dropped for hb in beats)
    assert snap.rollout.env_steps == sum(b.env_steps for b in batches)
    assert snap.rollout.batches == sum(isinstance(e.event, BatchCompleted) for e in items)
    if batches:
        assert snap.rollout.fps == pytest.approx(sum(b.fps for b in batches))
