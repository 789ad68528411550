"""Is the producer there? LIVE / SLOW / STALE from the age of what it last sent, in heartbeat periods."""

from __future__ import annotations

from bus.state import Snapshot

SLOW_AFTER_PERIODS = 2.5
"""Silent for more than this many heartbeat periods: SLOW (a heartbeat or two late)."""

STALE_AFTER_PERIODS = 5.0
"""Silent for more than this many heartbeat periods: STALE (the producer is gone or cut off)."""

WAITING = "WAITING"
LIVE = "LIVE"
SLOW = "SLOW"
STALE = "STALE"
FINISHED = "FINISHED"


def silence_s(state: Snapshot, now: float) -> float:
    """Seconds since anything arrived from the producer (by the consumer's clock)."""
    last = max(state.delivery.last_heartbeat_at, state.delivery.last_event_at)
    return max(0.0, now - last)


def liveness(state: Snapshot, now: float) -> str:
    """WAITING before any message, FINISHED after training_finished, else LIVE, SLOW or STALE."""
    if not state.run.run_id:
        return WAITING
    if state.run.finished:
        return FINISHED
    period = state.delivery.heartbeat_period_s or 1.0
    age = silence_s(state, now)
    if age > STALE_AFTER_PERIODS * period:
        return STALE
    if age > SLOW_AFTER_PERIODS * period:
        return SLOW
    return LIVE
