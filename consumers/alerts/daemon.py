"""The alert daemon's loop body: fold each item into the aggregator, evaluate the rules, notify."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from bus.aggregator import Aggregator
from bus.contract import Envelope
from bus.feed import Item
from bus.text import printable
from consumers.alerts.engine import AlertEngine, Notification
from consumers.alerts.rules import Rule

log = logging.getLogger(__name__)

HISTORY_S = 5.0
"""Items of a batch more than this many seconds (producer clock) older than its newest are a replay of
history: evaluated, so ``for`` durations and still-open alerts carry over, but what began and ended
inside that history is not announced (a restarted daemon does not re-page for the past)."""


class AlertDaemon:
    """Aggregator + rule engine; every notification goes to each sink in order."""

    def __init__(self, rules: list[Rule], sinks: Iterable[Callable[[Notification], None]]) -> None:
        self.aggregator = Aggregator()
        self.engine = AlertEngine(rules)
        self.sinks = list(sinks)
        self.sent = 0
        self._run_id = ""

    def handle(self, items: list[Item], now: float) -> None:
        # Each rank's own clock says what is history: ranks on other hosts may disagree by far more.
        newest: dict[tuple[str, int], float] = {}
        for item in items:
            if isinstance(item, Envelope):
                key = (item.run_id, item.rank)
                newest[key] = max(newest.get(key, 0.0), item.ts)
        for item in items:
            state = self.aggregator.apply(item, now)
            quiet = isinstance(item, Envelope) and item.ts < newest[(item.run_id, item.rank)] - HISTORY_S
            self._emit(self.engine.evaluate(state, now, quiet=quiet))
        state = self.aggregator.state
        if state.run.run_id != self._run_id:
            self._run_id = state.run.run_id
            log.info("following run %s", printable(self._run_id))

    def tick(self, now: float) -> None:
        """Time-based rules (producer silent, counter windows) move on without input."""
        self._emit(self.engine.evaluate(self.aggregator.state, now))

    def _emit(self, notes: list[Notification]) -> None:
        for note in notes:
            self.sent += 1
            for sink in self.sinks:
                try:
                    sink(note)
                except Exception as exc:  # e.g. stdout closed: keep alerting through the other sinks
                    log.error("a notification output failed: %s: %s", type(exc).__name__, exc)
