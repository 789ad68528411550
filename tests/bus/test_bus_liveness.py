"""STUCK from synthetic heartbeats through the pure fold: the bound follows the run's own update time."""

from __future__ import annotations

import numpy as np
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


def _run(
    update_times_ms: list[float], fps: float, n_envs: int = 4, rollout_steps: int = 32
) -> tuple[Snapshot, int]:
    """A run whose updates took ``update_times_ms`` and whose rollouts ran at ``fps``; (state, next seq)."""
    started = training_started(n_envs=n_envs, rollout_steps=rollout_steps)
    snap = fold(Snapshot(), envelope(0, started), received_at=0.0)
    seq = 1
    for u, ms in enumerate(update_times_ms, start=1):
        snap = fold(snap, envelope(seq, batch_completed(u, fps=fps)), received_at=float(seq))
        snap = fold(snap, envelope(seq + 1, ppo_update(u, update_time_ms=ms)), received_at=float(seq + 1))
        seq += 2
    return snap, seq


def _beat(snap: Snapshot, seq: int, at: float, age: float | None, phase: str = "update") -> Snapshot:
    return fold(snap, envelope(seq, heartbeat(phase=phase, progress_age_s=age)), received_at=at)


def test_a_fast_run_is_stuck_past_the_floor() -> None:
    snap, seq = _run([400.0] * 3, fps=2000.0)  # a cycle of 0.4 s + 4 × 32 / 2000 s = 0.464 s
    assert lv.update_cycle_s(snap) == pytest.approx(0.464)
    assert lv.stuck_bound_s(snap) == lv.STUCK_MIN_S  # 5 × 0.464 s is under the 30 s floor
    snap = _beat(snap, seq, at=100.0, age=29.0)
    assert lv.liveness(snap, 100.5) == lv.LIVE  # 29.5 s: inside the bound
    assert lv.progress_age_s(snap, 100.5) == pytest.approx(29.5)
    assert lv.liveness(snap, 101.5) == lv.STUCK  # 30.5 s without progress, heartbeats on time
    snap = _beat(snap, seq + 1, at=101.9, age=0.01)  # the loop moved again
    assert lv.liveness(snap, 102.0) == lv.LIVE


def test_a_slow_run_gets_a_bound_of_five_of_its_own_cycles() -> None:
    snap, seq = _run([9_000.0] * 5, fps=128.0)  # 9 s + 4 × 32 / 128 = 1 s: 10 s per cycle
    assert lv.stuck_bound_s(snap) == pytest.approx(5 * 10.0)
    snap = _beat(snap, seq, at=50.0, age=45.0)
    assert lv.liveness(snap, 50.0) == lv.LIVE  # 45 s is 4.5 of this run's cycles: not stuck yet
    snap = _beat(snap, seq + 1, at=51.0, age=50.5)
    assert lv.liveness(snap, 51.0) == lv.STUCK


def test_the_cycle_is_a_median_so_one_long_update_does_not_stretch_the_bound() -> None:
    times = [8_000.0, 8_200.0, 7_900.0, 120_000.0, 8_100.0]  # a past two-minute hang among 8 s updates
    snap, _ = _run(times, fps=128.0)
    assert lv.update_cycle_s(snap) == pytest.approx(float(np.median(times)) / 1000 + 1.0)
    assert lv.stuck_bound_s(snap) == pytest.approx(5 * 9.1)
    many, _ = _run([1_000.0] * 20 + [50.0] * 10, fps=128.0)  # only the last 10 count
    assert lv.update_cycle_s(many) == pytest.approx(0.05 + 1.0)


@pytest.mark.parametrize("phase", ["starting", "compiling"])
def test_outside_the_training_loop_no_progress_is_expected(phase: str) -> None:
    snap, seq = _run([400.0], fps=2000.0)
    snap = _beat(snap, seq, at=500.0, age=400.0, phase=phase)
    assert lv.progress_age_s(snap, 500.0) is None
    assert lv.liveness(snap, 500.0) == lv.LIVE


def test_stuck_is_distinct_from_stale_and_slow_and_from_an_old_producer() -> None:
    snap, seq = _run([400.0], fps=2000.0)
    snap = _beat(snap, seq, at=100.0, age=60.0)
    assert lv.liveness(snap, 100.0) == lv.STUCK
    assert lv.liveness(snap, 103.0) == lv.STUCK  # heartbeat late but the loop is known stuck: the cause
    assert lv.liveness(snap, 106.0) == lv.STALE  # nothing for 5 periods: nothing is known any more
    old, seq = _run([400.0], fps=2000.0)
    old = _beat(old, seq, at=100.0, age=None)  # a producer that does not report progress
    assert lv.progress_age_s(old, 100.0) is None and lv.liveness(old, 100.0) == lv.LIVE
    snap = fold(snap, envelope(seq + 1, training_finished()), received_at=100.5)
    assert lv.liveness(snap, 200.0) == lv.FINISHED


def test_before_any_update_the_floor_applies() -> None:
    snap = fold(Snapshot(), envelope(0, training_started()), received_at=0.0)
    assert lv.update_cycle_s(snap) == 0.0 and lv.stuck_bound_s(snap) == lv.STUCK_MIN_S
    snap = _beat(snap, 1, at=40.0, age=31.0, phase="rollout")
    assert lv.liveness(snap, 40.0) == lv.STUCK
