"""STUCK from synthetic heartbeats through the pure fold: the bound follows the run's own update time."""

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

from bus import liveness as lv
from bus.aggregator import fold
from bus.state import Snapshot


def _run(update_time_ms: float, step_time_ms: float, rollout_steps: int = 32) -> tuple[Snapshot, int]:
    snap = fold(Snapshot(), envelope(0, training_started(rollout_steps=rollout_steps)), received_at=0.0)
    snap = fold(snap, envelope(1, batch_completed(1, step_time_ms=step_time_ms)), received_at=1.0)
    snap = fold(snap, envelope(2, ppo_update(1, update_time_ms=update_time_ms)), received_at=2.0)
    return snap, 3


def _beat(snap: Snapshot, seq: int, at: float, age: float | None, phase: str = "update") -> Snapshot:
    return fold(snap, envelope(seq, heartbeat(phase=phase, progress_age_s=age)), received_at=at)


def test_a_fast_run_is_stuck_past_the_floor() -> None:
    snap, seq = _run(update_time_ms=400.0, step_time_ms=2.0)  # a cycle of 0.4 + 32 × 0.002 = 0.464 s
    assert lv.update_cycle_s(snap) == pytest.approx(0.464)
    assert lv.stuck_bound_s(snap) == lv.STUCK_MIN_S  # 5 × 0.464 s is under the 30 s floor
    snap = _beat(snap, seq, at=100.0, age=29.0)
    assert lv.liveness(snap, 100.5) == lv.LIVE  # 29.5 s: inside the bound
    assert lv.progress_age_s(snap, 100.5) == pytest.approx(29.5)
    assert lv.liveness(snap, 101.5) == lv.STUCK  # 30.5 s without progress, heartbeats on time
    snap = _beat(snap, seq + 1, at=101.9, age=0.01)  # the loop moved again
    assert lv.liveness(snap, 102.0) == lv.LIVE


def test_a_slow_run_gets_a_bound_of_five_of_its_own_cycles() -> None:
    snap, seq = _run(update_time_ms=9_000.0, step_time_ms=100.0, rollout_steps=10)  # 10 s per cycle
    assert lv.stuck_bound_s(snap) == pytest.approx(5 * 10.0)
    snap = _beat(snap, seq, at=50.0, age=45.0)
    assert lv.liveness(snap, 50.0) == lv.LIVE  # 45 s is 4.5 of this run's cycles: not stuck yet
    snap = _beat(snap, seq + 1, at=51.0, age=50.5)
    assert lv.liveness(snap, 51.0) == lv.STUCK


@pytest.mark.parametrize("phase", ["starting", "compiling"])
def test_outside_the_training_loop_no_progress_is_expected(phase: str) -> None:
    snap, seq = _run(update_time_ms=400.0, step_time_ms=2.0)
    snap = _beat(snap, seq, at=500.0, age=400.0, phase=phase)
    assert lv.progress_age_s(snap, 500.0) is None
    assert lv.liveness(snap, 500.0) == lv.LIVE


def test_stuck_is_distinct_from_stale_and_slow_and_from_an_old_producer() -> None:
    snap, seq = _run(update_time_ms=400.0, step_time_ms=2.0)
    snap = _beat(snap, seq, at=100.0, age=60.0)
    assert lv.liveness(snap, 100.0) == lv.STUCK
    assert lv.liveness(snap, 103.0) == lv.STUCK  # heartbeat late but the loop is known stuck: the cause
    assert lv.liveness(snap, 106.0) == lv.STALE  # nothing for 5 periods: nothing is known any more
    old, seq = _run(update_time_ms=400.0, step_time_ms=2.0)
    old = _beat(old, seq, at=100.0, age=None)  # a producer that does not report progress
    assert lv.progress_age_s(old, 100.0) is None and lv.liveness(old, 100.0) == lv.LIVE
    snap = fold(snap, envelope(seq + 1, training_finished()), received_at=100.5)
    assert lv.liveness(snap, 200.0) == lv.FINISHED


def test_before_any_update_the_floor_applies() -> None:
    snap = fold(Snapshot(), envelope(0, training_started()), received_at=0.0)
    assert lv.update_cycle_s(snap) == 0.0 and lv.stuck_bound_s(snap) == lv.STUCK_MIN_S
    snap = _beat(snap, 1, at=40.0, age=31.0, phase="rollout")
    assert lv.liveness(snap, 40.0) == lv.STUCK
