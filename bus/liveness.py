"""Is the producer there, and is its training loop moving? LIVE / SLOW / STALE / STUCK for every consumer."""

from __future__ import annotations

import statistics

from bus.state import DeliveryState, Snapshot

SLOW_AFTER_PERIODS = 2.5
"""Silent for more than this many heartbeat periods: SLOW (a heartbeat or two late)."""

STALE_AFTER_PERIODS = 5.0
"""Silent for more than this many heartbeat periods: STALE (the producer is gone or cut off)."""

STUCK_MIN_S = 30.0
"""No training progress for longer than this (and than ``STUCK_CYCLES`` update cycles): STUCK."""

STUCK_CYCLES = 5.0
"""How many of the run's own update cycles (update plus rollout) without progress make it STUCK."""

CYCLE_UPDATES = 10
"""The update cycle is the median over this many recent updates and rollouts."""

TRAINING_PHASES = ("rollout", "update")
"""Phases in which the training loop is expected to progress; starting, compiling and finished are not."""

WAITING = "WAITING"
LIVE = "LIVE"
SLOW = "SLOW"
STALE = "STALE"
STUCK = "STUCK"
FINISHED = "FINISHED"


def silence_s(state: Snapshot, now: float) -> float:
    """Seconds since anything arrived from the producer (by the consumer's clock)."""
    last = max(state.delivery.last_heartbeat_at, state.delivery.last_event_at)
    return max(0.0, now - last)


def update_cycle_s(state: Snapshot) -> float:
    """The run's own time per update, s: the median ``update_time_ms`` of the last ``CYCLE_UPDATES``
    updates plus a rollout at their median fps (``n_envs × rollout_steps / fps``); 0.0 before either.

    Medians, so one long update (a past hang, a checkpoint) does not stretch the bound for the next.
    """
    update_s = _median(list(state.tamiyo.history["update_time_ms"])[-CYCLE_UPDATES:]) / 1000.0
    started = state.run.started
    # With several ranks the combined fps is their sum; a rank's rollout runs at its own.
    rollout = state.ranks[state.lead_rank].rollout if len(state.ranks) > 1 else state.rollout
    fps = _median([f for f in list(rollout.fps_history)[-CYCLE_UPDATES:] if f > 0])
    rollout_s = started.n_envs * started.rollout_steps / fps if started is not None and fps > 0 else 0.0
    return update_s + rollout_s


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def stuck_bound_s(state: Snapshot) -> float:
    """No progress for longer than this is STUCK: max(``STUCK_MIN_S``, ``STUCK_CYCLES`` × update cycle)."""
    return max(STUCK_MIN_S, STUCK_CYCLES * update_cycle_s(state))


def progress_age_s(state: Snapshot, now: float) -> float | None:
    """Seconds since the training loop last progressed: the newest heartbeat's figure plus the time
    since that heartbeat arrived. None outside ``TRAINING_PHASES`` or when the producer does not report it.

    With several ranks: the oldest progress among the ranks still sending heartbeats (not finished,
    not STALE), so one stuck rank makes the run STUCK (``bus.ranks`` names it)."""
    if state.run.finished:
        return None
    if len(state.ranks) <= 1:
        return _progress_age(state.delivery, now)
    ages = [
        age
        for rs in state.ranks.values()
        if rs.finish is None
        and now - max(rs.delivery.last_heartbeat_at, rs.delivery.last_event_at)
        <= STALE_AFTER_PERIODS * rs.delivery.heartbeat_period_s
        and (age := _progress_age(rs.delivery, now)) is not None
    ]
    return max(ages, default=None)


def _progress_age(d: DeliveryState, now: float) -> float | None:
    hb = d.heartbeat
    if hb is None or hb.progress_age_s is None or hb.phase not in TRAINING_PHASES:
        return None
    return hb.progress_age_s + max(0.0, now - d.last_heartbeat_at)


def stuck(state: Snapshot, now: float) -> bool:
    """The training loop has made no progress for longer than ``stuck_bound_s`` in a training phase."""
    age = progress_age_s(state, now)
    return age is not None and age > stuck_bound_s(state)


def liveness(state: Snapshot, now: float) -> str:
    """WAITING before any message, FINISHED after training_finished, else STALE, STUCK, SLOW or LIVE.

    STUCK (heartbeats arrive, training does not move) outranks SLOW (heartbeats late) because it
    names the cause; STALE outranks both because without heartbeats nothing is known.
    """
    if not state.run.run_id:
        return WAITING
    if state.run.finished:
        return FINISHED
    period = state.delivery.heartbeat_period_s or 1.0
    age = silence_s(state, now)
    if age > STALE_AFTER_PERIODS * period:
        return STALE
    if stuck(state, now):
        return STUCK
    if age > SLOW_AFTER_PERIODS * period:
        return SLOW
    return LIVE
