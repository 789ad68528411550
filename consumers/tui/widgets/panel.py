"""The base of every panel: a Static that redraws itself from a View at its current width."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from consumers.tui.view import View

FALLBACK_WIDTH = 76
FALLBACK_HEIGHT = 8


class Panel(Static):
    """Subclasses implement ``draw(view, width, height)``; ``show`` is called on every redraw tick.

    ``height`` is the panel's current content height: only panels with a fixed or fractional
    height (not ``auto``) may size what they draw by it.
    """

    def show(self, view: View) -> None:
        region = self.content_region
        self.update(self.draw(view, region.width or FALLBACK_WIDTH, region.height or FALLBACK_HEIGHT))

    def draw(self, view: View, width: int, height: int) -> Content:
        raise NotImplementedError
