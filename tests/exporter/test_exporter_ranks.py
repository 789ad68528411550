"""Cross-rank series from the run's one fold: straggler score, gaps and STUCK per rank, replaced runs."""

from __future__ import annotations

import pytest

pytest.importorskip("prometheus_client", reason="pip install -e '.[prometheus]'")

from test_exporter_collector import Clock, run_stream, scrape, value
from testkit.events import batch_completed, envelope, heartbeat, ppo_update, training_started

from bus.contract import Envelope
from bus.feed import Gap
from bus.liveness import STALE_AFTER_PERIODS, STUCK_MIN_S
from bus.straggler import STRAGGLER_ALPHA, STRAGGLER_FLAG
from consumers.exporter.collector import TamiyoCollector

UPDATES = 6
FAST_MS, SLOW_MS = 10.0, 20.0


def two_ranks(updates: int = UPDATES) -> list[Envelope]:
    """Ranks 0 and 1 of one run, update by update (rank 0's first); rank 1 computes twice as long."""
    seqs = {0: 0, 1: 0}

    def send(rank: int, event: object) -> Envelope:
        env = envelope(seqs[rank], event, "run-a", rank=rank)  # type: ignore[arg-type]
        seqs[rank] += 1
        return env

    out = [send(r, training_started(rank=r, world_size=2)) for r in (0, 1)]
    for u in range(1, updates + 1):
        for rank, ms in ((0, FAST_MS), (1, SLOW_MS)):
            out += [
                send(rank, heartbeat(update=u, progress_age_s=0.1)),
                send(rank, batch_completed(u, fps=1000.0 * (rank + 1))),
                send(rank, ppo_update(u, compute_time_ms=ms, gradient_cv=0.5 + rank)),
            ]
    return out


def ewma_from_one(ratio: float, samples: int) -> float:
    """Independently: n steps of s ← s + α(x − s) from s = 1 at a constant x is 1 + (x − 1)(1 − (1 − α)^n)."""
    return 1.0 + (ratio - 1.0) * (1.0 - (1.0 - STRAGGLER_ALPHA) ** samples)


def test_a_slow_rank_1_is_scored_a_straggler_and_rank_0_is_not() -> None:
    clock = Clock()
    c = TamiyoCollector(clock=clock)
    c.handle(two_ranks(), clock.now)
    s = scrape(c)
    # Rank 1 is scored at each of its updates against rank 0's newest 10 ms (ratio 2, at the cap);
    # rank 0 from its 2nd update on, against rank 1's 20 ms (ratio 0.5).
    slow = value(s, "tamiyo_straggler_score", rank=1)
    fast = value(s, "tamiyo_straggler_score", rank=0)
    assert slow == pytest.approx(ewma_from_one(SLOW_MS / FAST_MS, UPDATES))
    assert fast == pytest.approx(ewma_from_one(FAST_MS / SLOW_MS, UPDATES - 1))
    assert slow >= STRAGGLER_FLAG > fast
    # By hand: 1 + 1·(1 − 0.75⁶) and 1 − 0.5·(1 − 0.75⁵).
    assert (round(slow, 4), round(fast, 4)) == (1.822, 0.6187)
    # Each rank's own numbers, not the lead rank's copied.
    assert value(s, "tamiyo_compute_time_seconds", rank=1) == pytest.approx(0.02)
    assert value(s, "tamiyo_gradient_cv", rank=1) == pytest.approx(1.5)
    assert value(s, "tamiyo_batch_fps", rank=1) == 2000.0
    for rank in (0, 1):
        assert value(s, "tamiyo_events_total", rank=rank) == 1 + 3 * UPDATES


def test_one_rank_alone_has_no_straggler_score() -> None:
    clock = Clock()
    c = TamiyoCollector(clock=clock)
    c.handle(run_stream(), clock.now)
    assert "tamiyo_straggler_score" not in scrape(c)


def test_gaps_are_counted_for_the_rank_that_missed_them() -> None:
    clock = Clock()
    c = TamiyoCollector(clock=clock)
    stream = two_ranks()
    c.handle([*stream, Gap("run-a", 100, 102, clock.now, rank=1)], clock.now)
    s = scrape(c)
    assert (value(s, "tamiyo_gaps_total", rank=1), value(s, "tamiyo_events_missed_total", rank=1)) == (1, 3)
    assert (value(s, "tamiyo_gaps_total", rank=0), value(s, "tamiyo_events_missed_total", rank=0)) == (0, 0)


def test_a_rank_whose_heartbeats_arrive_without_progress_is_stuck_alone() -> None:
    clock = Clock()
    c = TamiyoCollector(clock=clock)
    stream = two_ranks()
    age = STUCK_MIN_S + 15.0  # past the bound: the update cycle here is milliseconds, so 30 s rules
    c.handle(
        [
            *stream,
            envelope(100, heartbeat(update=UPDATES, phase="update", progress_age_s=age), rank=1),
            envelope(100, heartbeat(update=UPDATES + 1, progress_age_s=0.2), rank=0),
        ],
        clock.now,
    )
    s = scrape(c)
    assert value(s, "tamiyo_liveness", rank=1, state="STUCK") == 1.0
    assert value(s, "tamiyo_stuck_seconds", rank=1) == pytest.approx(age)
    assert value(s, "tamiyo_liveness", rank=0, state="LIVE") == 1.0
    assert value(s, "tamiyo_stuck_seconds", rank=0) == 0.0


def test_a_replaced_run_keeps_its_series_until_they_expire_and_its_stragglers_are_dropped() -> None:
    clock = Clock()
    c = TamiyoCollector(300.0, clock=clock)
    c.handle(two_ranks(), clock.now)
    clock.now += 1
    c.handle(run_stream(run_id="run-b"), clock.now)  # a new run arrives: run-a is replaced
    c.handle([envelope(500, heartbeat(), "run-a", rank=0)], clock.now)  # a straggler of run-a
    s = scrape(c)
    assert value(s, "tamiyo_events_total", "run-a", rank=0) == 1 + 3 * UPDATES
    assert value(s, "tamiyo_events_total", "run-b") == 6
    assert c.table.state.delivery.stale == 1
    clock.now += STALE_AFTER_PERIODS + 1
    c.handle([envelope(6, heartbeat(), "run-b")], clock.now)
    assert value(scrape(c), "tamiyo_liveness", "run-a", rank=1, state="STALE") == 1.0
    clock.now += 300.0 - STALE_AFTER_PERIODS - 1
    c.handle([envelope(7, heartbeat(), "run-b")], clock.now)
    assert c.tick(clock.now) == [("run-a", 0), ("run-a", 1)]
    assert {dict(labels)["run_id"] for labels in scrape(c)["tamiyo_events_total"]} == {"run-b"}
    assert c.table.replaced == {}
