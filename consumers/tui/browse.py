"""Browse a recorded run: the dashboard at any update of an archive, with the full histories as sparklines."""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Label, Sparkline

from bus.aggregator import fold
from bus.catalogue import history_fields
from bus.contract import BatchCompleted, Envelope, PPOUpdate
from bus.feed import Item
from bus.state import PPO_HISTORY_FIELDS, Snapshot
from consumers.archiver.reader import ArchiveError, open_archive, with_gaps
from consumers.tui.app import TamiyoApp
from consumers.tui.widgets.render import fmt

BATCH_HISTORY_FIELDS: tuple[str, ...] = history_fields(BatchCompleted)
PAGE = 10
"""Updates one PgUp / PgDn moves."""


@dataclass
class Recording:
    """A run's items (envelopes in seq order, holes as gap notices) and where each update ends."""

    run_id: str
    items: list[Item]
    stops: list[int]
    """Index of the last item of each position: one per ppo_update, then the run's last item."""
    updates: list[int]
    """The update number at each position (the last one repeated for the end position)."""
    series: dict[str, list[float]]
    """Every history field's values over the whole run, in arrival order."""
    series_at: dict[str, list[int]]
    """For each series, the item index of each value (to cut the series at a position)."""
    warnings: list[str]

    @classmethod
    def load(cls, run_dir: Path | str) -> Recording:
        """Read ``runs/<run_id>``; raises ``ArchiveError`` naming the file and line of bad input."""
        archive = open_archive(run_dir)
        items = list(with_gaps(archive.read_all()))
        stops: list[int] = []
        updates: list[int] = []
        names = (*PPO_HISTORY_FIELDS, *BATCH_HISTORY_FIELDS)
        series: dict[str, list[float]] = {name: [] for name in names}
        series_at: dict[str, list[int]] = {name: [] for name in names}
        for i, item in enumerate(items):
            if not isinstance(item, Envelope):
                continue
            event = item.event
            if type(event) is PPOUpdate:
                stops.append(i)
                updates.append(event.update)
                fields = PPO_HISTORY_FIELDS
            elif type(event) is BatchCompleted:
                fields = BATCH_HISTORY_FIELDS
            else:
                continue
            for name in fields:
                value = getattr(event, name)
                if value is not None:
                    series[name].append(float(value))
                    series_at[name].append(i)
        if items and (not stops or stops[-1] != len(items) - 1):
            stops.append(len(items) - 1)
            updates.append(updates[-1] if updates else 0)
        return cls(archive.run_id, items, stops, updates, series, series_at, archive.warnings)


class HistoryRow(Horizontal):
    """One metric: its name and figures, then Textual's Sparkline of every finite value so far."""

    DEFAULT_CSS = """
    HistoryRow { height: 1; }
    HistoryRow > Label { width: 52; }
    HistoryRow > Sparkline { width: 1fr; }
    """

    def __init__(self, name: str) -> None:
        super().__init__(id=f"history-{name}")
        self.metric = name
        self.label = Label(name)
        self.sparkline = Sparkline([])

    def compose(self) -> ComposeResult:
        yield self.label
        yield self.sparkline

    def show(self, values: list[float]) -> None:
        finite = [v for v in values if math.isfinite(v)]
        skipped = len(values) - len(finite)
        text = f"{self.metric:<20} {fmt(values[-1]) if values else '-':>9}"
        if finite:
            text += f"  {fmt(min(finite))}..{fmt(max(finite))}"
        if skipped:
            text += f"  ({skipped} non-finite not drawn)"
        self.label.update(text)
        self.sparkline.data = finite


class BrowseApp(TamiyoApp):
    """The dashboard over a recorded run: starts at its end state; keys move through its updates.

    The panels show the state folded up to the chosen update, at that update's recorded time;
    the history rows below show each metric's whole series up to it (every update, not the
    last 256 the live panels keep).
    """

    BINDINGS = [  # noqa: RUF012  (Textual's declared-class-attribute pattern)
        Binding("home", "first", "Start"),
        Binding("left", "step(-1)", "Back"),
        Binding("right", "step(1)", "Forward"),
        Binding("pageup", f"step(-{PAGE})", f"-{PAGE}", show=False),
        Binding("pagedown", f"step({PAGE})", f"+{PAGE}", show=False),
        Binding("end", "last", "End"),
        Binding("r", "reset", "Reload"),
    ]
    DEFAULT_CSS = """
    #history {
        height: auto;
        padding: 0 1;
        border: round $primary-darken-1;
        border-title-color: $text;
    }
    """

    def __init__(
        self,
        run_dir: Path | str,
        *,
        refresh_hz: float = 4.0,
        light: bool = False,
        handle_signals: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.recording = Recording.load(self.run_dir)
        self.position = len(self.recording.stops) - 1
        self._folded_to = -1
        self._now = time.time()
        super().__init__(
            str(self.run_dir),
            refresh_hz=refresh_hz,
            clock=lambda: self._now,
            connect=False,
            light=light,
            handle_signals=handle_signals,
        )
        self._rows = [HistoryRow(name) for name in self.recording.series]

    def compose(self) -> ComposeResult:
        for widget in super().compose():
            if isinstance(widget, Footer):
                with Vertical(id="history"):
                    yield from self._rows
            yield widget

    def on_mount(self) -> None:
        super().on_mount()
        self.go(self.position)

    # -- moving -------------------------------------------------------------------

    def go(self, position: int) -> None:
        """Show the state after the ``position``-th stop (clamped to the run)."""
        stops = self.recording.stops
        if not stops:
            return
        self.position = max(0, min(len(stops) - 1, position))
        end = stops[self.position]
        items = self.recording.items
        if end < self._folded_to:  # backwards: fold again from the start (pure, so the same state)
            self.aggregator.state = Snapshot()
            self._folded_to = -1
        state = self.aggregator.state
        for item in items[self._folded_to + 1 : end + 1]:
            state = fold(state, item)  # received at its recorded ts
        self.aggregator.state = state
        self._folded_to = end
        last = items[end]
        self._now = last.ts if isinstance(last, Envelope) else last.detected_at
        self._show_histories(end)
        self.draw()

    def _show_histories(self, end: int) -> None:
        for row in self._rows:
            at = self.recording.series_at[row.metric]
            row.show(self.recording.series[row.metric][: bisect_right(at, end)])
        rec = self.recording
        stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(self._now))
        where = "end" if self.position == len(rec.stops) - 1 else f"update {rec.updates[self.position]}"
        last_update = rec.updates[-1] if rec.updates else 0
        title = f"Recorded run {rec.run_id}: {where} of {last_update} · {stamp}"
        self.main_screen.query_one("#history").border_title = title

    def action_first(self) -> None:
        self.go(0)

    def action_last(self) -> None:
        self.go(len(self.recording.stops) - 1)

    def action_step(self, by: int) -> None:
        self.go(self.position + by)

    def action_reset(self) -> None:
        """Read the archive again (a run still being recorded grows) and show its end."""
        try:
            self.recording = Recording.load(self.run_dir)
        except ArchiveError as exc:  # e.g. the archive was removed or damaged meanwhile: keep what is shown
            self.notify(str(exc), title="Cannot reload", severity="error")
            return
        self.aggregator.state = Snapshot()
        self._folded_to = -1
        self.action_last()
        self.notify(f"read {len(self.recording.items)} items from {self.run_dir}", title="Reloaded")
