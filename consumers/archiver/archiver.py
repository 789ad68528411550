"""The archiver's core: routes ordered items to the current run's archive and flushes on a timer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from bus.aggregator import Aggregator
from bus.contract import Envelope
from bus.feed import Gap, Item
from bus.text import printable
from consumers.archiver.run import RunArchive

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0
MAX_BUFFERED_BYTES = 8 << 20
"""Flush early when this much is waiting, whatever the timer says (bounded memory under a burst)."""


class Archiver:
    """Feeds envelopes and gaps into ``<out>/<run_id>/``; a new run_id closes one archive, opens the next."""

    def __init__(
        self,
        out: Path,
        *,
        flush_interval: float = FLUSH_INTERVAL_S,
        tick_interval: float = 0.25,
        fsync: bool = True,
        report: Callable[[str], None] = print,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.out = out
        self.flush_interval = flush_interval
        self.tick_interval = tick_interval
        self.fsync = fsync
        self.report = report
        self.wall_clock = wall_clock
        self.aggregator = Aggregator()
        self.run: RunArchive | None = None
        self.runs_seen = 0
        self.rows_lost = 0
        """Rows of every run so far that the disk refused (each run's summary names them)."""
        self._last_flush = time.monotonic()

    def handle(self, items: list[Item], now: float) -> None:
        """Archive a batch of ordered items received at ``now`` (monotonic)."""
        wall = self.wall_clock()
        run = self.run
        folded = 0
        for i, item in enumerate(items):
            if type(item) is Gap:
                if run is not None and item.run_id == run.run_id:
                    run.on_gap(item, wall)
                continue
            if run is None or item.run_id != run.run_id:
                # The closing run's summary reads the fold: bring it up to this item first.
                self.aggregator.apply_all(items[folded:i], now)
                folded = i
                run = self._switch(item)  # type: ignore[arg-type]
            run.on_envelope(item, wall)  # type: ignore[arg-type]
        self.aggregator.apply_all(items[folded:], now)
        if run is not None and run.buffered_bytes >= MAX_BUFFERED_BYTES:
            self.flush(now)

    def tick(self, now: float) -> None:
        """Called every ``tick_interval``: flush now if the next tick would be past the flush interval."""
        if now - self._last_flush + self.tick_interval >= self.flush_interval:
            self.flush(now)

    def flush(self, now: float | None = None) -> bool:
        self._last_flush = time.monotonic() if now is None else now
        return self.run.flush() if self.run is not None else True

    def close(self) -> bool:
        """Flush and close the current run, reporting its summary."""
        return self._close_run()

    def _switch(self, env: Envelope) -> RunArchive:
        self._close_run()
        run = self.run = RunArchive(self.out, env.run_id, fsync=self.fsync)
        self.runs_seen += 1
        log.info(
            "%s run %s in %s",
            "resuming" if run.resumed else "recording",
            printable(env.run_id),
            run.directory,
        )
        return run

    def _close_run(self) -> bool:
        run = self.run
        if run is None:
            return True
        ok = run.close()
        self.rows_lost += run.lost_total
        state = self.aggregator.state
        line = run.summary()
        if state.run.run_id == run.run_id and state.run.finished:
            line += f"; training finished ({printable(state.run.finish_reason)})"
        self.report(f"archiver: {line}")
        self.run = None
        return ok
