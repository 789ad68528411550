"""The Textual app: folds bus items as they arrive and redraws every panel on a fixed-rate timer."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Iterable

import zmq
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer
from textual.worker import get_current_worker

from bus.aggregator import Aggregator, Item
from bus.security import SecurityError
from bus.subscribe import SubscriberConfig
from consumers.tui.source import LastWarning, LinkStats, read_bus
from consumers.tui.view import View, make_view
from consumers.tui.widgets.detail_panels import ConfigPanel, DeliveryPanel, RolloutPanel
from consumers.tui.widgets.heads_panel import HeadsPanel
from consumers.tui.widgets.help_screen import HelpScreen
from consumers.tui.widgets.palette import palette_for
from consumers.tui.widgets.panel import Panel
from consumers.tui.widgets.ppo_health import PPOHealthPanel
from consumers.tui.widgets.ranks_panel import RanksPanel
from consumers.tui.widgets.render import shown
from consumers.tui.widgets.run_header import RunHeader
from consumers.tui.widgets.status_banner import StatusBanner
from consumers.tui.widgets.waiting import WaitingPanel

DEFAULT_REFRESH_HZ = 4.0
NARROW_BELOW = 110
"""Terminal columns below which the heads panel gets a fixed width and the PPO panel the rest."""
SHORT_BELOW = 34
"""Terminal rows below which the rollout / delivery / config panels are left out (80x24 fits without them)."""

NOTIFY_RUN_ID_MAX = 64

EXIT_SIGTERM = 0
EXIT_SIGINT = 130
EXIT_BAD_ENDPOINT = 2


class BusItems(Message):
    """A batch of envelopes and gaps from the reader thread, stamped with the consumer's receive clock."""

    def __init__(self, items: list[Item], received_at: float, generation: int, link: LinkStats) -> None:
        super().__init__()
        self.items = items
        self.received_at = received_at
        self.generation = generation
        self.link = link


class TamiyoApp(App[None]):
    """The dashboard. ``clock`` must be the clock received items are stamped with (monotonic by default)."""

    CSS_PATH = "tamiyo.tcss"
    TITLE = "Tamiyo"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [  # noqa: RUF012  (Textual's declared-class-attribute pattern)
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("p", "pause", "Pause"),
        Binding("r", "reset", "Reset"),
        Binding("t", "toggle_theme", "Theme"),
        Binding("question_mark", "help", "Help", key_display="?"),
    ]

    def __init__(
        self,
        endpoint: str,
        *,
        subscriber: SubscriberConfig | None = None,
        refresh_hz: float = DEFAULT_REFRESH_HZ,
        clock: Callable[[], float] = time.monotonic,
        connect: bool = True,
        handle_signals: bool = False,
        light: bool = False,
    ) -> None:
        super().__init__()
        if refresh_hz <= 0:
            raise ValueError(f"refresh_hz must be positive, got {refresh_hz}")
        self.endpoint = endpoint
        self.subscriber_config = subscriber or SubscriberConfig(endpoint=endpoint)
        self.refresh_hz = refresh_hz
        self.clock = clock
        self.aggregator = Aggregator()
        self.paused = False
        self.link = LinkStats()
        self.frames = 0
        self.bus_warnings = LastWarning()
        self._connect = connect
        self._handle_signals = handle_signals
        self._generation = 0
        self._started_at = clock()
        self._panels: list[Panel] | None = None
        if light:
            self.theme = "textual-light"

    # -- layout -----------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield RunHeader(id="header")
        yield StatusBanner(id="banner")
        yield WaitingPanel(id="waiting")
        with Horizontal(id="main"):
            yield HeadsPanel(id="heads")
            yield PPOHealthPanel(id="ppo")
        yield RanksPanel(id="ranks")
        with Horizontal(id="details"):
            yield RolloutPanel(id="rollout")
            yield DeliveryPanel(id="delivery")
            yield ConfigPanel(id="config")
        yield Footer()

    def on_mount(self) -> None:
        for wid, title in (
            ("heads", "Heads"),
            ("ppo", "PPO health"),
            ("ranks", "Ranks"),
            ("rollout", "Rollout"),
            ("delivery", "Delivery"),
            ("config", "Config"),
        ):
            self.main_screen.query_one(f"#{wid}").border_title = title
        self._fit(self.size.width, self.size.height)
        self.set_interval(1.0 / self.refresh_hz, self.redraw, name="redraw")
        if self._connect:
            logging.getLogger("bus").addHandler(self.bus_warnings)
            self.run_worker(self._read_bus, thread=True, group="bus", name="bus-reader", exclusive=True)
        if self._handle_signals:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, self.exit, None, EXIT_SIGTERM)
            loop.add_signal_handler(signal.SIGINT, self.exit, None, EXIT_SIGINT)
        self.draw()
        self.call_after_refresh(self.draw)  # again once the layout has given every panel its width

    def on_unmount(self) -> None:
        logging.getLogger("bus").removeHandler(self.bus_warnings)

    def on_resize(self, event: events.Resize) -> None:
        self._fit(event.size.width, event.size.height)
        self.call_after_refresh(self.draw)

    @property
    def main_screen(self) -> Screen[object]:
        """The dashboard's own screen (the help screen, when open, sits above it)."""
        return self.screen_stack[0]

    def _fit(self, width: int, height: int) -> None:
        if not self.screen_stack:
            return
        screen = self.main_screen
        screen.set_class(width < NARROW_BELOW, "narrow")
        screen.set_class(height < SHORT_BELOW, "short")

    # -- data -------------------------------------------------------------------

    def ingest(self, items: Iterable[Item], received_at: float | None = None) -> None:
        """Fold items into the aggregator; ``received_at`` defaults to ``clock()`` now."""
        at = self.clock() if received_at is None else received_at
        before = self.aggregator.state.run.run_id
        self.aggregator.apply_all(items, at)
        after = self.aggregator.state.run.run_id
        if before and after != before:
            # Plain text, not markup: a run id is the producer's to choose ("sweep[lr=3e-4]").
            new, old = shown(after, NOTIFY_RUN_ID_MAX), shown(before, NOTIFY_RUN_ID_MAX)
            self.notify(
                f"new run {new} (was {old}): following it",
                title="Run restarted",
                markup=False,
            )

    def on_bus_items(self, message: BusItems) -> None:
        if message.generation != self._generation:
            return  # read before a reset: belongs to the state that was dropped
        self.link = message.link
        self.ingest(message.items, message.received_at)

    def _read_bus(self) -> None:
        worker = get_current_worker()

        def deliver(items: list[Item], received_at: float, generation: int, link: LinkStats) -> None:
            self.post_message(BusItems(items, received_at, generation, link))

        try:
            read_bus(
                self.subscriber_config,
                deliver=deliver,
                cancelled=lambda: worker.is_cancelled,
                generation=lambda: self._generation,
                clock=self.clock,
            )
        except (zmq.ZMQError, SecurityError) as exc:
            self.call_from_thread(
                self.exit, None, EXIT_BAD_ENDPOINT, f"tamiyo-tui: cannot connect to {self.endpoint}: {exc}"
            )

    # -- drawing ----------------------------------------------------------------

    def view(self) -> View:
        return make_view(
            self.aggregator.state,
            self.clock(),
            endpoint=self.endpoint,
            palette=palette_for(self.current_theme.dark),
            paused=self.paused,
            started_at=self._started_at,
            link=self.link,
            bus_warning=self.bus_warnings.message,
        )

    def redraw(self) -> None:
        """The timer's tick: draw unless paused."""
        if not self.paused:
            self.draw()

    def draw(self) -> None:
        if not self.screen_stack:
            return  # a timer tick while the app shuts down: nothing left to draw on
        view = self.view()
        screen = self.main_screen
        screen.set_class(not view.snapshot.run.run_id, "waiting")
        if self._panels is None:
            self._panels = list(screen.query(Panel))  # composed once: the DOM is not queried every frame
        for panel in self._panels:
            panel.show(view)  # hidden ones too: cheap, and they are current the moment they show
        self.frames += 1

    # -- keys -------------------------------------------------------------------

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.draw()  # once, so PAUSED shows (or goes away) at once

    def action_reset(self) -> None:
        self._generation += 1
        self.aggregator.reset()
        self.link = LinkStats()
        self.bus_warnings.message = ""
        self._started_at = self.clock()
        self.draw()
        self.notify("state cleared; resubscribing (the producer replays its recent history)", title="Reset")

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.current_theme.dark else "textual-dark"
        self.draw()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())
