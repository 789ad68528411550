"""The exporter's state: the ``bus.aggregator`` fold of the current run, the runs it replaced, what shows.

The run is folded by the fold every consumer runs, so run identity (by arrival), each rank's
state (``Snapshot.ranks``), per-rank gaps, liveness and the straggler score are the ones in
``bus/``. A run replaced by a newer one keeps its last state until its series expire.

A rank's series expire once it is FINISHED or STALE (``bus.ranks.rank_status``) and nothing has
arrived from it for ``expire_after_s``. The fold keeps the current run (and ``left_runs`` the ones
it replaced), so a late replay of an expired run is dropped as duplicates or stale and does not
bring its series back; a stale rank that sends something new shows again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec

from bus.aggregator import fold
from bus.catalogue import Field, fields, step_fields
from bus.contract import (
    EVENT_TYPES,
    BatchCompleted,
    Heartbeat,
    PPOUpdate,
    TrainingFinished,
    TrainingStarted,
)
from bus.feed import Item
from bus.liveness import FINISHED, STALE, silence_s
from bus.ranks import rank_status, rank_view
from bus.state import RankState, Snapshot

EXPIRE_AFTER_S = 300.0
"""Default: a finished or stale rank's series go away after five minutes of silence."""

Key = tuple[str, int]


def _is_map(f: Field) -> bool:
    t = f.type
    return isinstance(t, msgspec.inspect.DictType) and isinstance(
        t.value_type, (msgspec.inspect.IntType, msgspec.inspect.FloatType)
    )


def exported_fields(kind: type[msgspec.Struct]) -> tuple[Field, ...]:
    """The fields of ``kind`` that become series: numbers and maps of numbers, not step bookkeeping."""
    steps = step_fields(kind)
    return tuple(f for f in fields(kind) if (f.numeric or _is_map(f)) and f.name not in steps)


EXPORTED_EVENTS: tuple[type[msgspec.Struct], ...] = tuple(
    kind for kind in EVENT_TYPES if kind not in (TrainingStarted, TrainingFinished)
)
"""Every event type whose fields are measurements: all but the run's metadata and its end."""

NEWEST: dict[type[msgspec.Struct], Callable[[RankState], tuple[msgspec.Struct | None, ...]]] = {
    PPOUpdate: lambda rs: (rs.tamiyo.latest,) if rs.tamiyo.ppo_data_received else (),
    BatchCompleted: lambda rs: (rs.rollout.latest, rs.rollout.latest_with_returns),
    Heartbeat: lambda rs: (rs.delivery.heartbeat,),
}
"""Where a rank's fold holds the newest event of each exported type. A nil field is read from the
next one given: the returns of the newest rollout in which an episode ended (``RolloutState``)."""

_missing = set(EXPORTED_EVENTS) - set(NEWEST)
if _missing:
    raise ImportError(f"consumers.exporter.table.NEWEST: say where bus.state keeps the newest {_missing}")


@dataclass(frozen=True)
class Row:
    """One rank of one run, as the collector reads it."""

    run_id: str
    rank: int
    state: Snapshot
    """The run's fold, every rank."""
    view: Snapshot
    """``bus.ranks.rank_view``: the rank's own state, what a ``by_rank`` alert rule reads."""

    @property
    def key(self) -> Key:
        return (self.run_id, self.rank)

    @property
    def own(self) -> RankState:
        return self.state.ranks[self.rank]


class RunTable:
    """The current run's fold and the runs it replaced, until each of their ranks has expired."""

    def __init__(self, expire_after_s: float = EXPIRE_AFTER_S) -> None:
        self.expire_after_s = expire_after_s
        self.state = Snapshot()
        self.replaced: dict[str, Snapshot] = {}
        self._shown: set[Key] = set()

    def apply_all(self, items: Iterable[Item], now: float) -> list[Key]:
        """Fold each envelope or gap notice, received at ``now``; the (run_id, rank) keys heard first."""
        state = self.state
        known = set(state.ranks)
        added: list[Key] = []
        for item in items:
            folded = fold(state, item, now)
            if folded.run.run_id != state.run.run_id:  # a new run: keep the old one until it expires
                added += [(state.run.run_id, r) for r in state.ranks if r not in known]
                if state.run.run_id:
                    self.replaced[state.run.run_id] = state
                self.replaced.pop(folded.run.run_id, None)
                state, known = folded, set()
        added += [(state.run.run_id, r) for r in state.ranks if r not in known]
        self.state = state
        self._shown.update(added)
        return added

    def _rows(self) -> list[Row]:
        states = [*self.replaced.values(), self.state]
        return [Row(s.run.run_id, rank, s, rank_view(s, rank)) for s in states for rank in sorted(s.ranks)]

    def expired(self, row: Row, now: float) -> bool:
        return (
            rank_status(row.state, row.rank, now) in (FINISHED, STALE)
            and silence_s(row.view, now) >= self.expire_after_s
        )

    def rows(self, now: float) -> list[Row]:
        """Every rank whose series show at ``now``, by run then rank."""
        return sorted((r for r in self._rows() if not self.expired(r, now)), key=lambda r: r.key)

    def expire(self, now: float) -> list[Key]:
        """Forget the replaced runs whose ranks have all expired; the keys that went since the last call."""
        shown = {row.key for row in self.rows(now)}
        gone = sorted(self._shown - shown)
        self._shown = shown
        for run_id, state in list(self.replaced.items()):
            if not any((run_id, rank) in shown for rank in state.ranks):
                del self.replaced[run_id]
        return gone
