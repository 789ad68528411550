"""Which run is current never depends on a producer's clock: the fold, the feed and liveness (issue 11.3)."""

from __future__ import annotations

from bus_factories import envelope, heartbeat, ppo_update
from hypothesis import given, settings
from hypothesis import strategies as st

from bus import liveness as lv
from bus.aggregator import Aggregator
from bus.contract import Envelope
from bus.feed import Feed, Gap
from bus.state import DEFAULT_HEARTBEAT_PERIOD_S, HEARTBEAT_PERIOD_RANGE_S

RUNS = ("run-a", "run-b")
clocks = st.floats(min_value=0.0, max_value=1e12, allow_nan=False)
any_floats = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def two_runs(draw: st.DrawFn, *, sequential: bool = False) -> list[Envelope]:
    """Messages of two runs of one or two ranks, each rank's in seq order, arbitrarily interleaved
    (``sequential``: every message of run-b after every one of run-a); every ts arbitrary."""
    streams: list[list[Envelope]] = []
    for run in RUNS:
        for rank in range(draw(st.integers(1, 2))):
            n = draw(st.integers(0 if run == "run-a" else 1, 6))
            streams.append([envelope(s, ppo_update(update=s + 1), run, draw(clocks), rank) for s in range(n)])
    if sequential:
        return [e for s in streams for e in s]
    out: list[Envelope] = []
    while any(streams):
        i = draw(st.sampled_from([i for i, s in enumerate(streams) if s]))
        out.append(streams[i].pop(0))
    return out


def with_clocks(items: list[Envelope], ts: list[float]) -> list[Envelope]:
    return [
        Envelope(schema=e.schema, run_id=e.run_id, seq=e.seq, ts=t, event=e.event, rank=e.rank)
        for e, t in zip(items, ts, strict=True)
    ]


def fold_at_arrival(items: list[Envelope]) -> Aggregator:
    """Fold ``items`` received one second apart (the consumer's clock), whatever their ts."""
    agg = Aggregator()
    for i, e in enumerate(items):
        agg.apply(e, float(i))
    return agg


# -- the fold ---------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(two_runs())
def test_fold_the_current_run_is_the_newest_to_arrive_and_the_replaced_one_is_dropped(
    items: list[Envelope],
) -> None:
    state = fold_at_arrival(items).state
    order = list(dict.fromkeys(e.run_id for e in items))  # runs by first arrival
    assert state.run.run_id == order[-1] and state.runs_seen == len(order)
    switch = next(i for i, e in enumerate(items) if e.run_id == order[-1])
    current = [e for e in items if e.run_id == order[-1]]
    stale = [e for e in items[switch:] if e.run_id != order[-1]]
    assert state.delivery.events == len(current) and state.delivery.stale == len(stale)
    for rank in {e.rank for e in current}:
        assert state.ranks[rank].delivery.last_seq == max(e.seq for e in current if e.rank == rank)


@settings(max_examples=200, deadline=None)
@given(two_runs(), st.data())
def test_fold_timestamps_change_nothing_but_the_timestamps(
    items: list[Envelope], data: st.DataObject
) -> None:
    reclocked = with_clocks(items, data.draw(st.lists(clocks, min_size=len(items), max_size=len(items))))
    a, b = fold_at_arrival(items).state, fold_at_arrival(reclocked).state
    assert (a.run.run_id, a.runs_seen, a.delivery.stale, a.delivery.events) == (
        b.run.run_id,
        b.runs_seen,
        b.delivery.stale,
        b.delivery.events,
    )
    assert a.tamiyo == b.tamiyo
    assert {r: rs.delivery.last_seq for r, rs in a.ranks.items()} == {
        r: rs.delivery.last_seq for r, rs in b.ranks.items()
    }


def test_a_run_clocked_an_hour_ahead_does_not_hide_the_next_one() -> None:
    """The adversarial case of issue 11: run-a's producer clock an hour ahead, then run-b."""
    agg = Aggregator()
    agg.apply(envelope(0, ppo_update(update=1), "run-a", ts=10_000.0 + 3600), 1.0)
    agg.apply(envelope(0, ppo_update(update=7), "run-b", ts=10_000.0), 2.0)
    agg.apply(envelope(1, ppo_update(update=2), "run-a", ts=10_001.0 + 3600), 3.0)  # a straggler
    assert agg.state.run.run_id == "run-b" and agg.state.tamiyo.update == 7
    assert agg.state.delivery.stale == 1


# -- the feed ---------------------------------------------------------------------------------------


def run_feed(items: list[Envelope]) -> tuple[Feed, list]:
    """Live only (a publisher that never replays), one message every 0.1 s, polled as a subscriber does."""
    feed = Feed(sync_timeout=0.25, resync_interval=1.0)
    out: list = []
    for i, e in enumerate(items):
        now = i * 0.1
        out.extend(feed.poll(now))
        feed.push_live(out, e, now)
    out.extend(feed.poll(len(items) * 0.1 + 1.0))
    return feed, out


def per_rank(out: list) -> dict[tuple[str, int], list[tuple[str, int, int]]]:
    seen: dict[tuple[str, int], list[tuple[str, int, int]]] = {}
    for item in out:
        if isinstance(item, Gap):
            seen.setdefault((item.run_id, item.rank), []).append(("gap", item.first, item.last))
        else:
            seen.setdefault((item.run_id, item.rank), []).append(("env", item.seq, item.seq))
    return seen


@settings(max_examples=200, deadline=None)
@given(two_runs(), st.data())
def test_feed_delivers_each_rank_in_seq_order_once_whatever_the_clocks(
    items: list[Envelope], data: st.DataObject
) -> None:
    feed, out = run_feed(items)
    for (run, _), entries in per_rank(out).items():
        assert run in RUNS
        seqs = [lo for kind, lo, _ in entries if kind == "env"]
        assert seqs == sorted(set(seqs))
    reclocked = with_clocks(items, data.draw(st.lists(clocks, min_size=len(items), max_size=len(items))))
    feed2, out2 = run_feed(reclocked)
    assert feed2.run_id == feed.run_id and per_rank(out2) == per_rank(out)
    assert feed2.stats == feed.stats


@settings(max_examples=200, deadline=None)
@given(two_runs(sequential=True))
def test_feed_a_restart_is_followed_in_full_whatever_the_clocks(items: list[Envelope]) -> None:
    feed, out = run_feed(items)
    assert feed.run_id == "run-b"
    b = [e for e in items if e.run_id == "run-b"]
    delivered = [i for i in out if isinstance(i, Envelope) and i.run_id == "run-b"]
    assert sorted((e.rank, e.seq) for e in delivered) == sorted((e.rank, e.seq) for e in b)
    assert not [g for g in out if isinstance(g, Gap) and g.run_id == "run-b"]


# -- liveness ---------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(any_floats)
def test_an_absurd_heartbeat_period_falls_back_to_the_default(period: float) -> None:
    agg = Aggregator()
    agg.apply(envelope(0, heartbeat(period_s=period)), 100.0)
    effective = agg.state.delivery.heartbeat_period_s
    low, high = HEARTBEAT_PERIOD_RANGE_S
    assert effective == (period if low <= period <= high else DEFAULT_HEARTBEAT_PERIOD_S)
    # STALE after 5 periods of silence, however absurd the period on the wire.
    assert lv.liveness(agg.state, 100.0 + lv.STALE_AFTER_PERIODS * high + 1) == lv.STALE
    assert lv.liveness(agg.state, 100.0) == lv.LIVE


@settings(max_examples=200, deadline=None)
@given(two_runs(), st.data(), st.floats(min_value=0.0, max_value=10.0))
def test_liveness_reads_the_consumer_s_clock_never_the_producer_s(
    items: list[Envelope], data: st.DataObject, after: float
) -> None:
    reclocked = with_clocks(items, data.draw(st.lists(clocks, min_size=len(items), max_size=len(items))))
    a, b = fold_at_arrival(items).state, fold_at_arrival(reclocked).state
    last_accepted = max((i for i, e in enumerate(items) if e.run_id == a.run.run_id), default=0)
    now = last_accepted + after
    expected = lv.LIVE if after <= 2.5 else lv.SLOW if after <= 5.0 else lv.STALE
    assert lv.liveness(a, now) == lv.liveness(b, now) == (expected if a.run.run_id else lv.WAITING)
