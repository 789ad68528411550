"""The fold every consumer runs: the seed's aggregator tests adapted, plus runs, duplicates and gaps."""

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

from bus import derived
from bus import liveness as lv
from bus.aggregator import Aggregator, fold, fold_all
from bus.feed import Gap
from bus.state import (
    HISTORY_LEN,
    PPO_HISTORY_FIELDS,
    GradientQualityMetrics,
    InfrastructureMetrics,
    Snapshot,
    TamiyoState,
)


def test_infrastructure_metrics_defaults() -> None:
    m = TamiyoState().infrastructure
    assert (m.cuda_memory_allocated_gb, m.cuda_memory_reserved_gb) == (0.0, 0.0)
    assert (m.cuda_memory_peak_gb, m.cuda_memory_fragmentation) == (0.0, 0.0)
    assert (m.compile_enabled, m.compile_backend, m.compile_mode) == (False, "", "")
    assert m.cuda_memory_step == -1


def test_gradient_quality_metrics_defaults() -> None:
    m = TamiyoState().gradient_quality
    assert (m.gradient_cv, m.clip_fraction_positive, m.clip_fraction_negative) == (0.0, 0.0, 0.0)
    assert m.gradient_cv_step == -1


def test_tamiyo_state_has_nested_metrics() -> None:
    state = TamiyoState()
    assert isinstance(state.infrastructure, InfrastructureMetrics)
    assert isinstance(state.gradient_quality, GradientQualityMetrics)
    assert state.infrastructure.cuda_memory_allocated_gb == 0.0
    assert state.gradient_quality.gradient_cv == 0.0


@pytest.mark.parametrize(
    ("total", "free", "percent"),
    [(80.0, 20.0, 75.0), (141.0, 141.0, 0.0), (24.0, 0.0, 100.0), (0.0, 0.0, None)],
)
def test_memory_usage_percent_is_how_full_the_device_is(
    total: float, free: float, percent: float | None
) -> None:
    ev = ppo_update(cuda_memory_total_gb=total, cuda_memory_free_gb=free)
    m = InfrastructureMetrics(ev)
    assert m.memory_usage_percent == (None if percent is None else pytest.approx(percent))


def test_aggregator_populates_nested_metrics() -> None:
    agg = Aggregator()
    snap = agg.apply(envelope(0, ppo_update(update=3, gradient_cv_step=20, cuda_memory_step=20)))
    gq, infra = snap.tamiyo.gradient_quality, snap.tamiyo.infrastructure
    assert (gq.clip_fraction_positive, gq.clip_fraction_negative, gq.gradient_cv) == (0.10, 0.05, 0.42)
    assert gq.gradient_cv_step == 20
    assert infra.cuda_memory_allocated_gb == 4.2
    assert infra.cuda_memory_reserved_gb == 8.0
    assert infra.cuda_memory_peak_gb == 6.5
    assert infra.cuda_memory_fragmentation == 0.475
    assert infra.cuda_memory_step == 20
    assert infra.memory_usage_percent is None  # the factory's event has no device capacity
    assert snap.tamiyo.ppo_data_received and snap.tamiyo.update == 3
    assert snap.tamiyo.head_entropy["alpha_curve"] == 0.5
    assert snap.tamiyo.total_layers == 14 and snap.tamiyo.dead_layers == 1


def test_aggregator_populates_compile_status_from_training_started() -> None:
    snap = fold(Snapshot(), envelope(0, training_started()))
    infra = snap.tamiyo.infrastructure
    assert infra.compile_enabled is True
    assert infra.compile_backend == "inductor"
    assert infra.compile_mode == "reduce-overhead"
    assert snap.run.started is not None and snap.run.started.action_heads["blueprint"] == 13
    # ppo_update never touches compile status
    snap = fold(snap, envelope(1, ppo_update()))
    assert infra.compile_enabled is True


def test_rollout_heartbeat_and_finish_are_folded() -> None:
    snap = fold_all(
        [
            envelope(0, batch_completed(update=1)),
            envelope(1, batch_completed(update=2, return_mean=None, return_min=None, return_max=None)),
            envelope(2, heartbeat(phase="compiling", dropped=7, period_s=0.5)),
            envelope(3, training_finished(reason="crashed", error="boom")),
        ]
    )
    r = snap.rollout
    assert r.batches == 2 and r.env_steps == 1024 and list(r.fps_history) == [1001.0, 1002.0]
    assert r.return_mean == 1.0 and list(r.return_history) == [1.0]  # no episode ended in batch 2
    assert snap.delivery.producer_dropped == 7 and snap.delivery.heartbeat_period_s == 0.5
    assert snap.run.finished and snap.run.finish_reason == "crashed" and snap.run.finish_error == "boom"


def test_histories_are_bounded() -> None:
    n = HISTORY_LEN + 50
    snap = fold_all(
        [envelope(2 * i, ppo_update(update=i, entropy=float(i))) for i in range(n)]
        + [envelope(2 * n + i, batch_completed(update=i)) for i in range(n)]
    )
    for name in PPO_HISTORY_FIELDS:
        assert len(snap.tamiyo.history[name]) == HISTORY_LEN
    assert snap.tamiyo.history["entropy"][-1] == float(n - 1)
    assert snap.tamiyo.history["entropy"][0] == float(n - HISTORY_LEN)
    assert len(snap.rollout.fps_history) == HISTORY_LEN == len(snap.rollout.return_history)
    assert snap.delivery.events == 2 * n


def test_new_run_resets_state_and_old_run_stragglers_are_dropped() -> None:
    agg = Aggregator()
    agg.apply(envelope(0, training_started(), run_id="a", ts=100.0))
    agg.apply(envelope(1, ppo_update(update=5), run_id="a", ts=101.0))
    agg.apply(Gap("a", 2, 4, 0.0))
    snap = agg.apply(envelope(0, training_started(compile_enabled=False), run_id="b", ts=200.0))
    assert snap.run.run_id == "b" and snap.runs_seen == 2
    assert not snap.tamiyo.ppo_data_received and snap.tamiyo.update == 0
    assert snap.delivery.gaps == 0 and snap.delivery.last_seq == 0
    assert snap.tamiyo.infrastructure.compile_enabled is False
    snap = agg.apply(envelope(2, ppo_update(update=6), run_id="a", ts=102.0))
    assert snap.run.run_id == "b" and snap.tamiyo.update == 0
    assert snap.delivery.stale == 1 and snap.delivery.duplicates == 0 and list(snap.left_runs) == ["a"]
    snap = agg.apply(Gap("a", 9, 9, 0.0))
    assert snap.delivery.gaps == 0


def test_duplicates_and_older_seqs_are_dropped() -> None:
    agg = Aggregator()
    agg.apply(envelope(5, ppo_update(update=5)))
    agg.apply(envelope(5, ppo_update(update=99)))
    snap = agg.apply(envelope(3, ppo_update(update=98)))
    assert snap.tamiyo.update == 5
    assert snap.delivery.duplicates == 2 and snap.delivery.events == 1
    assert list(snap.tamiyo.history["policy_loss"]) == [0.1]


def test_gaps_are_counted_with_their_ranges() -> None:
    snap = fold_all([envelope(0), Gap("run-a", 1, 3, 0.0), envelope(4), Gap("run-a", 6, 6, 0.0), envelope(7)])
    d = snap.delivery
    assert d.gaps == 2 and d.missed == 4
    assert list(d.gap_ranges) == [(1, 3), (6, 6)]
    assert d.events == 3 and d.last_seq == 7


def test_fold_is_deterministic() -> None:
    items = [envelope(0, training_started()), envelope(1, ppo_update()), Gap("run-a", 2, 2, 0.0)]
    items.append(envelope(3, batch_completed()))
    assert fold_all(items) == fold_all(items)


@pytest.mark.parametrize("received_at", [None, 7.5])
def test_apply_all_is_apply_item_by_item(received_at: float | None) -> None:
    items = [
        envelope(0, training_started(), run_id="a", ts=100.0),
        envelope(1, ppo_update(update=1), run_id="a", ts=101.0),
        Gap("a", 2, 3, 0.0),
        envelope(4, batch_completed(), run_id="a", ts=102.0),
        envelope(4, ppo_update(update=9), run_id="a", ts=102.5),  # a duplicate
        envelope(5, heartbeat(), run_id="a", ts=103.0),
        envelope(0, training_started(), run_id="b", ts=200.0),  # a new run
        envelope(6, ppo_update(update=2), run_id="a", ts=104.0),  # a straggler of the old one
        envelope(1, training_finished(), run_id="b", ts=201.0),
    ]
    one_by_one = Aggregator()
    for item in items:
        one_by_one.apply(item, received_at)
    together = Aggregator()
    assert together.apply_all(iter(items), received_at) is together.state
    assert together.state == one_by_one.state
    assert together.state.run.run_id == "b" and together.state.run.finished


def test_liveness_states() -> None:
    snap = Snapshot()
    assert lv.liveness(snap, 10.0) == lv.WAITING
    snap = fold(snap, envelope(0, heartbeat(period_s=1.0, phase="compiling")), received_at=100.0)
    assert lv.liveness(snap, 100.5) == lv.LIVE  # busy compiling, yet heartbeats come
    assert lv.liveness(snap, 103.0) == lv.SLOW
    assert lv.liveness(snap, 106.0) == lv.STALE  # dead, or cut off
    snap = fold(snap, envelope(1, heartbeat()), received_at=105.9)
    assert lv.liveness(snap, 106.0) == lv.LIVE
    snap = fold(snap, envelope(2, training_finished()), received_at=106.0)
    assert lv.liveness(snap, 1000.0) == lv.FINISHED


def test_learning_progress_sees_the_whole_run_beyond_the_kept_history() -> None:
    # 60 batches climbing 0 -> 3, then 400 holding at 3: the kept history (HISTORY_LEN) holds only the
    # plateau, but the run gained 3 since its start, so it is LEARNING (holding high) and settled.
    returns = [0.05 * i for i in range(60)] + [3.0 + 0.02 * (-1) ** i for i in range(400)]
    state = fold_all(envelope(i, batch_completed(update=i + 1, return_mean=r)) for i, r in enumerate(returns))
    r = state.rollout
    assert len(r.return_history) == HISTORY_LEN < len(returns)
    assert (r.return_windows.first, r.return_windows.best) == (
        pytest.approx(0.35),
        pytest.approx(3.0, abs=0.01),
    )
    assert derived.learning_progress(r.return_windows) == derived.LEARNING
    assert derived.return_settled(r.return_windows)
    assert derived.learning_progress(list(r.return_history)) == derived.PLATEAU  # what the history alone says
    assert derived.learning_progress(r.return_windows) == derived.learning_progress(returns)
