"""Backtest alert rules on archived runs: the daemon's own fold and engine, driven by the recorded clock.

Each run gets a fresh ``AlertDaemon``; its items are the archive's envelopes in seq order,
each received at its recorded ``ts``, with a seq hole turned into the gap notice a connected
daemon gets. Between two items the daemon's 0.25 s tick is run at recorded times, so
``for_seconds``, ``increase_over_s`` and ``silence_s`` see the recorded spacing. A
notification's ``at`` and ``active_since`` are recorded times too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from bus.contract import Envelope
from bus.feed import Gap, Item
from consumers.alerts.daemon import AlertDaemon
from consumers.alerts.engine import FIRING, AlertEngine, Notification
from consumers.alerts.notify import Printer
from consumers.alerts.rules import SEVERITIES, Rule
from consumers.archiver.reader import ArchiveError, open_archive, with_gaps

TICK_S = 0.25
"""As ``python -m consumers.alerts`` ticks."""


@dataclass
class RunVerdict:
    """What the rules did on one recorded run."""

    run_id: str
    events: int = 0
    updates: int = 0
    notifications: list[Notification] = field(default_factory=list)
    firing_at_end: list[str] = field(default_factory=list)

    @property
    def fired(self) -> list[Notification]:
        return [n for n in self.notifications if n.status == FIRING]


def replay(
    timeline: Iterable[tuple[float, Item]],
    rules: list[Rule],
    sinks: Iterable[Callable[[Notification], None]] = (),
    *,
    tick_s: float = TICK_S,
    tail_s: float = 0.0,
) -> AlertDaemon:
    """A fresh daemon fed each ``(time, item)`` at its time, ticking every ``tick_s`` in between and for
    ``tail_s`` after the last; the engine's clock is that time too. Returns the daemon, for its state."""
    clock = [0.0]
    daemon = AlertDaemon(rules, sinks)
    daemon.engine = AlertEngine(rules, wall_clock=lambda: clock[0])
    next_tick: float | None = None
    for t, item in timeline:
        if next_tick is None:
            next_tick = t
        while next_tick < t:
            clock[0] = next_tick
            daemon.tick(next_tick)
            next_tick += tick_s
        clock[0] = t
        daemon.handle([item], t)
    if next_tick is not None:
        end = clock[0] + tail_s
        while next_tick <= end:
            clock[0] = next_tick
            daemon.tick(next_tick)
            next_tick += tick_s
    return daemon


def backtest(
    envelopes: Iterable[Envelope],
    rules: list[Rule],
    sinks: Iterable[Callable[[Notification], None]] = (),
    *,
    tick_s: float = TICK_S,
    tail_s: float = 0.0,
) -> RunVerdict:
    """Evaluate ``rules`` over one recorded run; ``tail_s``: seconds of silence evaluated after its end."""
    verdict = RunVerdict(run_id="")

    def recorded() -> Iterable[tuple[float, Item]]:
        for item in with_gaps(envelopes):
            if type(item) is Gap:
                yield item.detected_at, item
            else:
                verdict.events += 1
                yield item.ts, item  # type: ignore[union-attr]

    daemon = replay(recorded(), rules, [*sinks, verdict.notifications.append], tick_s=tick_s, tail_s=tail_s)
    state = daemon.aggregator.state
    verdict.run_id = state.run.run_id
    verdict.updates = state.tamiyo.update if state.tamiyo.ppo_data_received else 0
    verdict.firing_at_end = daemon.engine.firing()
    return verdict


EXIT_CLEAN = 0
EXIT_FIRED = 1
EXIT_BAD_INPUT = 2


def run_backtests(
    runs: list[Path],
    rules: list[Rule],
    *,
    as_json: bool,
    fail_on: str | None,
    tail_s: float,
    out: TextIO,
    err: TextIO,
) -> int:
    """Backtest each run: notifications on ``out`` in the daemon's formats, a summary per run on ``err``.

    Exit: 2 when any archive could not be read (the others are still evaluated), else 1 when a
    rule of severity ``fail_on`` or above fired, else 0.
    """
    printer = Printer(out, as_json)
    threshold = SEVERITIES.index(fail_on) if fail_on is not None else None
    bad = fired = False
    for path in runs:
        try:
            archive = open_archive(path)
            envelopes = archive.read_all()
        except ArchiveError as exc:
            print(f"backtest: {exc}", file=err)
            bad = True
            continue
        verdict = backtest(envelopes, rules, [printer], tail_s=tail_s)
        counts = Counter(n.severity for n in verdict.fired)
        kinds = ", ".join(f"{s} {counts[s]}" for s in reversed(SEVERITIES) if counts[s]) or "none"
        still = ", ".join(verdict.firing_at_end) or "none"
        print(
            f"backtest: run {verdict.run_id} ({path}): {verdict.events} events, {verdict.updates} updates; "
            f"fired {len(verdict.fired)} ({kinds}); firing at the end: {still}",
            file=err,
            flush=True,
        )
        if threshold is not None and any(SEVERITIES.index(s) >= threshold for s in counts):
            fired = True
    if bad:
        return EXIT_BAD_INPUT
    return EXIT_FIRED if fired else EXIT_CLEAN
