"""The rule engine: Prometheus-style pending → firing → resolved, with hysteresis, per rule and run.

Each rule is in one of three states. ``inactive``: the fire condition does not hold.
``pending``: it holds, but not yet for the rule's ``for``; it drops back to inactive the
first time it fails. ``firing``: it held long enough; the alert stays firing until the
*clear* condition (``value op clear``) fails, so a value wobbling around the fire
threshold does not flap. A notification goes out on each change between not-firing and
firing: ``firing`` once, ``resolved`` once. A new run resolves whatever the old run had
firing and starts every rule afresh.

``for_updates = N`` counts updates, not messages: the condition must hold on every
reading from the first breaching one until one that is at least N updates later, where
a reading of a metric measured every ``diagnostics_every`` updates (gradient_cv, CUDA
memory) stands for that many updates. Carried copies of one measurement are evaluated
once. ``for_seconds`` uses the consumer's clock.

A rule with ``by_rank = true`` runs this state machine once per rank, on that rank's own
state (``bus.ranks.rank_view``): each rank fires and resolves on its own, and its
notifications carry its ``rank``. It stays quiet while the run has a single rank, whose
numbers are the combined view the other rules watch (no duplicate alerts).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bus.ranks import rank_view
from bus.state import Snapshot
from consumers.alerts.metrics import METRICS, Reading
from consumers.alerts.rules import Rule

INACTIVE = "inactive"
PENDING = "pending"
FIRING = "firing"
RESOLVED = "resolved"


@dataclass
class Notification:
    """One state change of one alert: what ``--json`` prints and ``--exec`` receives on stdin."""

    status: str
    rule: str
    severity: str
    run_id: str
    metric: str
    value: float | None
    op: str
    fire: float
    clear: float
    expression: str
    summary: str
    update: int
    step: int | None
    active_since: float | None
    at: float
    reason: str = ""
    rank: int | None = None
    """The rank of a ``by_rank`` rule's alert; None for one on the combined view."""

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        if d["value"] is not None and not math.isfinite(d["value"]):
            d["value"] = str(d["value"])  # JSON has no NaN or inf
        return d


@dataclass
class _Window:
    """Samples of a counter within the last ``span`` seconds, to compute its increase."""

    span: float
    samples: deque[tuple[float, float]] = field(default_factory=deque)

    def increase(self, now: float, value: float) -> float:
        s = self.samples
        if not s or s[-1][1] != value:
            s.append((now, value))
        # Keep the newest sample at or before the window's start as the baseline.
        while len(s) >= 2 and s[1][0] <= now - self.span:
            s.popleft()
        return max(0.0, value - s[0][1])


@dataclass
class _RuleState:
    status: str = INACTIVE
    notified: bool = False
    last_key: object | None = None
    first_step: int | None = None
    active_since: float | None = None
    active_since_wall: float | None = None
    value: float | None = None
    step: int | None = None
    window: _Window | None = None


class AlertEngine:
    """Evaluates every rule against the newest snapshot; returns the notifications due."""

    def __init__(self, rules: list[Rule], wall_clock: Callable[[], float] = time.time) -> None:
        self.rules = rules
        self.wall_clock = wall_clock
        self.run_id = ""
        self.update = 0
        self._states = {rule.name: self._fresh(rule) for rule in rules}
        self._rank_states: dict[tuple[str, int], _RuleState] = {}
        self._views: dict[int, Snapshot] = {}

    @staticmethod
    def _fresh(rule: Rule) -> _RuleState:
        return _RuleState(window=_Window(rule.increase_over_s) if rule.increase_over_s else None)

    def firing(self) -> list[str]:
        """Rules firing on the combined view, then ``name@rank`` for each rank a by_rank rule fires for."""
        combined = [name for name, st in self._states.items() if st.status == FIRING]
        return combined + [
            f"{name}@{rank}" for (name, rank), st in self._rank_states.items() if st.status == FIRING
        ]

    def status(self, name: str, rank: int | None = None) -> str:
        if rank is None:
            return self._states[name].status
        st = self._rank_states.get((name, rank))
        return st.status if st is not None else INACTIVE

    def evaluate(self, state: Snapshot, now: float, *, quiet: bool = False) -> list[Notification]:
        """Advance every rule to ``state`` at ``now`` (monotonic s).

        ``quiet`` evaluates history (a replay) without announcing what began and ended
        inside it; the first loud evaluation announces what is still firing.
        """
        out: list[Notification] = []
        if state.run.run_id != self.run_id:
            out.extend(self._new_run(state.run.run_id))
        self.update = state.tamiyo.update
        for rule in self.rules:
            if rule.by_rank:
                if len(state.ranks) < 2:
                    continue  # one rank is the combined view: the rules without by_rank say it all
                for rank in state.ranks:
                    st = self._rank_states.get((rule.name, rank))
                    if st is None:
                        st = self._rank_states[(rule.name, rank)] = self._fresh(rule)
                    self._advance(rule, st, self._view(state, rank), now, quiet, out, rank)
            else:
                self._advance(rule, self._states[rule.name], state, now, quiet, out, None)
        return out

    def _view(self, state: Snapshot, rank: int) -> Snapshot:
        view = self._views.get(rank)
        if view is None or view.ranks.get(rank) is not state.ranks[rank] or view.run is not state.run:
            view = self._views[rank] = rank_view(state, rank)
        return view

    def _advance(
        self,
        rule: Rule,
        st: _RuleState,
        state: Snapshot,
        now: float,
        quiet: bool,
        out: list[Notification],
        rank: int | None,
    ) -> None:
        reading = METRICS[rule.metric].read(state, now)
        if reading is not None:
            self._step(rule, st, reading, state, now)
        if quiet:
            return
        if st.status == FIRING and not st.notified:
            st.notified = True
            out.append(self._note(rule, st, FIRING, rank=rank))
        elif st.status != FIRING and st.notified:
            st.notified = False
            out.append(self._note(rule, st, RESOLVED, rank=rank))

    def _new_run(self, run_id: str) -> list[Notification]:
        out = []
        for rule in self.rules:
            st = self._states[rule.name]
            if st.notified:
                out.append(self._note(rule, st, RESOLVED, reason="new run"))
            self._states[rule.name] = self._fresh(rule)
        by_name = {rule.name: rule for rule in self.rules}
        for (name, rank), st in sorted(self._rank_states.items()):
            if st.notified:
                out.append(self._note(by_name[name], st, RESOLVED, reason="new run", rank=rank))
        self._rank_states.clear()
        self._views.clear()
        self.run_id = run_id
        return out

    def _step(self, rule: Rule, st: _RuleState, reading: Reading, state: Snapshot, now: float) -> None:
        if reading.key is not None and reading.key == st.last_key:
            # No new measurement: only the clock can move a pending alert on.
            if (
                st.status == PENDING
                and rule.for_seconds
                and now - (st.active_since or now) >= rule.for_seconds
            ):
                st.status = FIRING
            return
        st.last_key = reading.key
        value = reading.value
        if st.window is not None:
            value = st.window.increase(now, value)
        if math.isnan(value):
            return  # no verdict on NaN; the nonfinite_* rules report it
        st.value, st.step = value, reading.step
        if st.status == FIRING:
            if not rule.still_breached(value):
                st.status = INACTIVE
            return
        if not rule.breached(value):
            st.status = INACTIVE
            return
        if st.status == INACTIVE:
            st.status = PENDING
            st.first_step = reading.step
            st.active_since = now
            st.active_since_wall = self.wall_clock()
        if self._held_long_enough(rule, st, reading, state, now):
            st.status = FIRING

    @staticmethod
    def _held_long_enough(rule: Rule, st: _RuleState, reading: Reading, state: Snapshot, now: float) -> bool:
        if rule.for_updates:
            if reading.step is None or st.first_step is None:
                return False
            covered = reading.step - st.first_step + METRICS[rule.metric].period(state)
            return covered >= rule.for_updates
        if rule.for_seconds:
            return now - (st.active_since or now) >= rule.for_seconds
        return True

    def _note(
        self, rule: Rule, st: _RuleState, status: str, reason: str = "", rank: int | None = None
    ) -> Notification:
        fields = {
            "rule": rule.name,
            "metric": rule.metric,
            "value": st.value,
            "fire": rule.fire,
            "clear": rule.clear,
            "op": rule.op,
            "run_id": self.run_id,
            "update": self.update,
            "step": st.step,
            "severity": rule.severity,
            "for": rule.describe_for(),
            "rank": rank,
        }
        return Notification(
            status=status,
            rule=rule.name,
            severity=rule.severity,
            run_id=self.run_id,
            metric=rule.metric,
            value=st.value,
            op=rule.op,
            fire=rule.fire,
            clear=rule.clear,
            expression=rule.expression(),
            summary=rule.render(fields),
            update=self.update,
            step=st.step,
            active_since=st.active_since_wall,
            at=self.wall_clock(),
            reason=reason or ("condition cleared" if status == RESOLVED else ""),
            rank=rank,
        )
