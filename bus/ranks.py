"""Per-rank health of a run of several processes: each rank's status (STUCK included), worst first."""

from __future__ import annotations

from bus.liveness import FINISHED, LIVE, SLOW, STALE, STUCK, liveness
from bus.state import RankState, Snapshot

_SEVERITY = {STUCK: 0, STALE: 1, SLOW: 3, LIVE: 4, FINISHED: 5}
_STRAGGLER_SEVERITY = 2


def rank_view(state: Snapshot, rank: int) -> Snapshot:
    """``state`` as rank ``rank`` alone sees it: its policy, rollouts and delivery, the run's identity."""
    rs = state.ranks[rank]
    return Snapshot(
        run=state.run,
        tamiyo=rs.tamiyo,
        rollout=rs.rollout,
        delivery=rs.delivery,
        runs_seen=state.runs_seen,
        ranks={rank: rs},
        left_runs=state.left_runs,
    )


def rank_status(state: Snapshot, rank: int, now: float) -> str:
    """FINISHED once the rank sent training_finished; else ``bus.liveness`` on the rank's own view:
    STALE or SLOW by its silence, STUCK when its heartbeats arrive but its loop has not progressed
    for longer than its own STUCK bound (a hung collective), else LIVE."""
    if state.ranks[rank].finish is not None:
        return FINISHED
    return liveness(rank_view(state, rank), now)


def worst_first(state: Snapshot, now: float) -> list[tuple[RankState, str]]:
    """Every rank with its status, worst first: STUCK, STALE, stragglers (highest score first), SLOW, LIVE."""
    rows = [(rs, rank_status(state, rank, now)) for rank, rs in state.ranks.items()]

    def key(row: tuple[RankState, str]) -> tuple[int, float, int, int]:
        rs, status = row
        severity = _SEVERITY.get(status, len(_SEVERITY))
        if status == LIVE and rs.straggler.flagged:
            severity = _STRAGGLER_SEVERITY
        return severity, -rs.straggler.score, -rs.delivery.missed, rs.rank

    rows.sort(key=key)
    return rows
