"""The exporter's state: one folded ``Snapshot`` and the newest value of each field per (run_id, rank).

Each (run_id, rank) has its own ``bus.aggregator.fold`` (seqs are per rank), so delivery counters,
liveness and the derived quantities are those every consumer computes. Beside it the table keeps
the newest value of every exported field: a nil value (``return_mean`` of a rollout in which no
episode ended) keeps the last one, and a throttled field has none until it is first measured.

A rank's series expire once it is FINISHED or STALE and nothing has arrived from it for
``expire_after_s``; a finished run's keys are remembered (bounded) so a late replay of it does
not bring its series back. A stale rank that speaks again starts over.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import msgspec

from bus.aggregator import fold
from bus.catalogue import Field, fields, step_fields
from bus.contract import EVENT_TYPES, Envelope, TrainingFinished, TrainingStarted
from bus.feed import Gap, Item
from bus.liveness import FINISHED, STALE, liveness, silence_s
from bus.state import Snapshot

EXPIRE_AFTER_S = 300.0
"""Default: a finished or stale rank's series go away after five minutes of silence."""
RETIRED_KEPT = 4096
"""Finished (run_id, rank) keys remembered so a late replay does not revive them."""

Key = tuple[str, int]
Value = float | dict[str, float]


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

_READ: dict[type, tuple[tuple[str, str, bool], ...]] = {
    kind: tuple((f.name, f.measured_at, _is_map(f)) for f in exported_fields(kind))
    for kind in EXPORTED_EVENTS
}


@dataclass
class Series:
    """One rank of one run: its fold and the newest value of each exported field."""

    state: Snapshot = field(default_factory=Snapshot)
    values: dict[tuple[str, str], Value] = field(default_factory=dict)
    """(event tag, field name) → newest value."""

    def take(self, ev: msgspec.Struct) -> None:
        read = _READ.get(type(ev))
        if read is None:
            return
        tag = ev.__struct_config__.tag
        for name, measured_at, is_map in read:
            value = getattr(ev, name)
            if value is None or (measured_at and getattr(ev, measured_at) < 0):
                continue
            self.values[(tag, name)] = {k: float(v) for k, v in value.items()} if is_map else float(value)

    def expired(self, now: float, after_s: float) -> bool:
        return liveness(self.state, now) in (FINISHED, STALE) and silence_s(self.state, now) >= after_s


class RankTable:
    """Every (run_id, rank) the exporter has heard from and not yet expired."""

    def __init__(self, expire_after_s: float = EXPIRE_AFTER_S) -> None:
        self.expire_after_s = expire_after_s
        self.series: dict[Key, Series] = {}
        self._retired: OrderedDict[Key, None] = OrderedDict()

    def apply(self, item: Item, now: float) -> None:
        """Fold one envelope or gap notice, received at ``now``, into its rank's series."""
        if isinstance(item, Gap):
            # Gaps are per rank once the feed tracks seqs per rank; until then all of a run's are rank 0's.
            series = self.series.get((item.run_id, getattr(item, "rank", 0)))
            if series is not None:
                series.state = fold(series.state, item, now)
            return
        self._apply_envelope(item, now)

    def apply_all(self, items: Iterable[Item], now: float) -> list[Key]:
        """``apply`` each item; the (run_id, rank) keys heard from for the first time."""
        before = set(self.series)
        for item in items:
            self.apply(item, now)
        return [key for key in self.series if key not in before]

    def _apply_envelope(self, env: Envelope, now: float) -> None:
        key = (env.run_id, env.rank)
        if key in self._retired:
            return
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series()
        before = series.state.delivery.events
        series.state = fold(series.state, env, now)
        if series.state.delivery.events != before:  # not a duplicate
            series.take(env.event)

    def expire(self, now: float) -> list[Key]:
        """Drop the series that have expired at ``now``; their keys."""
        gone = [key for key, s in self.series.items() if s.expired(now, self.expire_after_s)]
        for key in gone:
            if self.series.pop(key).state.run.finished:
                self._retired[key] = None
                while len(self._retired) > RETIRED_KEPT:
                    self._retired.popitem(last=False)
        return gone

    def __iter__(self) -> Iterator[tuple[Key, Series]]:
        return iter(sorted(self.series.items()))

    def __len__(self) -> int:
        return len(self.series)
