"""The help screen: every key and every threshold, generated from the thresholds module."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Static

from consumers.tui.thresholds import rules

KEYS = (
    ("q / Ctrl-C", "quit"),
    ("p", "pause redraw (data keeps folding; the header says PAUSED)"),
    ("r", "reset: drop everything folded and resubscribe, as if just started"),
    ("t", "toggle dark / light colours"),
    ("?", "this help (Esc or ? closes it)"),
)


def help_text() -> Content:
    lines = [Content.styled("Keys", "bold")]
    lines += [Content.assemble((f"  {key:<12}", "bold"), what) for key, what in KEYS]
    lines += [Content(""), Content.styled("Thresholds", "bold")]
    lines += [Content(f"  {rule}") for rule in rules()]
    return Content("\n").join(lines)


class HelpScreen(ModalScreen[None]):
    """A modal over the dashboard; the dashboard keeps folding underneath."""

    BINDINGS = [  # noqa: RUF012  (Textual's declared-class-attribute pattern)
        Binding("escape", "dismiss", "close"),
        Binding("question_mark", "dismiss", "close"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(help_text(), id="help-text")
