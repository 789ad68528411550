"""Per-rank health of a run of several processes: each rank's status (STUCK included), worst first."""

from __future__ import annotations

import math

from bus.liveness import FINISHED, LIVE, SLOW, SLOW_AFTER_PERIODS, STALE, STALE_AFTER_PERIODS
from bus.state import DeliveryState, RankState, Snapshot

STUCK = "STUCK"

STUCK_AFTER_S = 30.0
"""A rank whose heartbeats still arrive but whose training loop has made no progress for longer
than this is STUCK (a hung collective: the heartbeat thread lives on, the loop does not)."""

_SEVERITY = {STUCK: 0, STALE: 1, SLOW: 3, LIVE: 4, FINISHED: 5}
_STRAGGLER_SEVERITY = 2


def silence_s(d: DeliveryState, now: float) -> float:
    """Seconds since anything arrived from this rank (consumer's clock)."""
    return max(0.0, now - max(d.last_heartbeat_at, d.last_event_at))


def progress_age_s(d: DeliveryState, now: float) -> float | None:
    """Seconds since the rank's training loop last made progress, as of ``now``; None when not measured.

    The newest heartbeat's ``progress_age_s`` plus the time since that heartbeat arrived.
    """
    hb = d.heartbeat
    if hb is None or hb.progress_age_s is None or not math.isfinite(hb.progress_age_s):
        return None
    return max(0.0, hb.progress_age_s) + max(0.0, now - d.last_heartbeat_at)


def rank_status(rs: RankState, now: float) -> str:
    """FINISHED; STALE or SLOW by silence (as ``bus.liveness``); STUCK: heartbeats, no progress; else LIVE."""
    if rs.finish is not None:
        return FINISHED
    d = rs.delivery
    period = d.heartbeat_period_s
    silent = silence_s(d, now)
    if silent > STALE_AFTER_PERIODS * period:
        return STALE
    age = progress_age_s(d, now)
    if age is not None and age > STUCK_AFTER_S:
        return STUCK
    if silent > SLOW_AFTER_PERIODS * period:
        return SLOW
    return LIVE


def worst_first(snapshot: Snapshot, now: float) -> list[tuple[RankState, str]]:
    """Every rank with its status, worst first: STUCK, STALE, stragglers (highest score first), SLOW, LIVE."""
    rows = [(rs, rank_status(rs, now)) for rs in snapshot.ranks.values()]

    def key(row: tuple[RankState, str]) -> tuple[int, float, int, int]:
        rs, status = row
        severity = _SEVERITY[status]
        if status == LIVE and rs.straggler.flagged:
            severity = _STRAGGLER_SEVERITY
        return severity, -rs.straggler.score, -rs.delivery.missed, rs.rank

    rows.sort(key=key)
    return rows
