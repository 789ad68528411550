"""The base of every panel: a widget that redraws itself from a View at its current width, line by line."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from rich.segment import Segment
from rich.style import Style as RichStyle
from textual.content import Content, Span
from textual.geometry import Region
from textual.selection import Selection
from textual.strip import Strip
from textual.style import Style
from textual.visual import Visual
from textual.widget import Widget

from consumers.tui.view import View

FALLBACK_WIDTH = 76
FALLBACK_HEIGHT = 8
OFFSET_STYLES_KEPT = 8192
"""Bound on the cache of (style, offset) → Rich style (a few hundred are in use at a time)."""

Lines = Sequence[Content]
"""What ``draw`` may return instead of one Content: its lines."""


class Panel(Widget):
    """Subclasses implement ``draw(view, width, height)``; ``show`` is called on every redraw tick.

    ``height`` is the panel's current content height: only panels with a fixed or fractional
    height (not ``auto``) may size what they draw by it.

    Each tick's lines are compared with the last tick's, and only the lines that changed are
    rendered again and repainted: an unchanged panel costs nothing, a tall panel with a few
    lines of text does not repaint its blank rows, and a layout pass (which re-arranges the
    whole screen) runs only when the number of lines changes.

    A line is turned into its strip of segments here rather than by Textual's Content
    renderer, which costs about 20 µs per segment on a 2-core machine (it builds and pickles
    a fresh Rich style for every run of text). The result is the same: each span's style is
    Textual's own, resolved once by rendering a one-cell probe, and each segment carries its
    offset in the content as Textual's renderer would set it (mouse selection reads it). Lines
    that need more than a plain copy (wider than the panel, tabs, overlapping spans), a panel
    with a selection showing, and one aligned as a block go through Textual.
    """

    DEFAULT_CSS = """
    Panel {
        height: auto;
    }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, markup=False)
        self._lines: list[Content] = []
        self._joined: Content | None = Content("")
        self._strips: dict[int, Strip] = {}
        self._strip_key: tuple[int, Style] | None = None
        self._span_styles: dict[Hashable, RichStyle | None] = {}
        self._offset_styles: dict[tuple[Hashable, int, int], RichStyle] = {}
        self._by_line = True
        self._selected = False

    @property
    def content(self) -> Content:
        """What the panel shows now, as one Content."""
        if self._joined is None:
            self._joined = Content("\n").join(self._lines)
        return self._joined

    def render(self) -> Content:
        return self.content

    def show(self, view: View) -> None:
        region = self.content_region
        self.update(self.draw(view, region.width or FALLBACK_WIDTH, region.height or FALLBACK_HEIGHT))

    def draw(self, view: View, width: int, height: int) -> Content | Lines:
        raise NotImplementedError

    def update(self, content: Content | Lines) -> None:
        """Show ``content`` (one Content, or its lines); repaint only the lines that changed."""
        if isinstance(content, Content):
            lines = content.split("\n", allow_blank=True)
            self._joined = content
        else:
            lines = [part for line in content for part in _split(line)]
            self._joined = None
        old, self._lines = self._lines, lines
        if len(lines) != len(old):
            self._strips.clear()
            self.refresh(layout=True)
            return
        width = self.size.width
        dirty = []
        for y, (new, was) in enumerate(zip(lines, old, strict=True)):
            if not new.is_same(was):
                self._strips.pop(y, None)
                dirty.append(Region(0, y, width, 1))
        if dirty and width:
            self.refresh(*dirty)
        elif dirty:
            self.refresh()  # not laid out yet

    # -- rendering (Textual calls render_line for each line it repaints) ----------

    def render_line(self, y: int) -> Strip:
        style = self.visual_style
        width = self.size.width
        if self._strip_key != (width, style):
            self._forget_strips()
            self._strip_key = (width, style)
            s = self.styles
            # One line of content is one line on screen: no wrapping, no block alignment.
            self._by_line = (
                s.text_wrap == "nowrap"
                and s.content_align == ("left", "top")
                and s.text_align in ("start", "left")
            )
        if self._selected or not self._by_line:
            # A selection is highlighted, or the text is aligned as a block (the waiting
            # panel): Textual renders the whole content.
            return super().render_line(y)
        strip = self._strips.get(y)
        if strip is None:
            self._render_missing(width, style)
            strip = self._strips.get(y)
            if strip is None:  # below the last line
                strip = self._strips[y] = Strip.blank(width, style.rich_style)
        return strip

    def _render_missing(self, width: int, style: Style) -> None:
        """Render every line that changed since the last paint."""
        slow: list[int] = []
        for y, line in enumerate(self._lines):
            if y not in self._strips:
                strip = self._strip_of(line, y, width, style)
                if strip is None:
                    slow.append(y)
                else:
                    self._strips[y] = strip
        if slow:  # rare: rendered with the whole content, so each line keeps its place in it
            strips = Visual.to_strips(self, self.content, width, len(self._lines), style)
            for y in slow:
                if y < len(strips):
                    self._strips[y] = strips[y]

    def _strip_of(self, line: Content, y: int, width: int, style: Style) -> Strip | None:
        """Line ``y`` as Textual would render it, or None where Textual must do it.

        Textual gives each run of text the style of its span (or the panel's) plus its offset
        in the content, as Rich meta (mouse selection reads it back).
        """
        text = line.plain
        cells = line.cell_length
        if cells > width or "\t" in text:
            return None  # cut with an ellipsis, or tabs expanded: Textual's job
        spans = line.spans
        if not spans:
            rich = self._style_at(None, 0, y, style)
            return None if rich is None else Strip([Segment(text, rich)], cells)
        segments = []
        pos = 0
        for start, end, span_style in spans:
            if start < pos or end < start:
                return None  # overlapping or out of order: styles combine, Textual's job
            if start > pos:
                rich = self._style_at(None, pos, y, style)
                if rich is None:
                    return None
                segments.append(Segment(text[pos:start], rich))
            if end > start:
                rich = self._style_at(span_style, start, y, style)
                if rich is None:
                    return None
                segments.append(Segment(text[start:end], rich))
            pos = end
        if pos < len(text):
            rich = self._style_at(None, pos, y, style)
            if rich is None:
                return None
            segments.append(Segment(text[pos:], rich))
        return Strip(segments, cells)

    def _style_at(self, span_style: Style | str | None, x: int, y: int, style: Style) -> RichStyle | None:
        """The Rich style of text under ``span_style`` (None: no span) at offset (x, y); None if unsure."""
        key = (span_style, x, y)
        rich = self._offset_styles.get(key)
        if rich is None:
            if span_style in self._span_styles:
                base = self._span_styles[span_style]
            else:
                # Textual's own answer for this style, at offset (0, 0): a one-cell probe.
                probe = Content("x") if span_style is None else Content("x", [Span(0, 1, span_style)])
                segments = list(Visual.to_strips(self, probe, 1, 1, style)[0])
                ok = len(segments) == 1 and segments[0].text == "x" and segments[0].style is not None
                base = self._span_styles[span_style] = segments[0].style if ok else None
            if base is None:
                return None
            if len(self._offset_styles) >= OFFSET_STYLES_KEPT:
                self._offset_styles.clear()
            rich = self._offset_styles[key] = base + RichStyle.from_meta({"offset": (x, y)})
        return rich

    def _forget_strips(self) -> None:
        self._strips.clear()
        self._span_styles.clear()
        self._offset_styles.clear()

    def notify_style_update(self) -> None:
        self._forget_strips()
        self._strip_key = None
        super().notify_style_update()

    def selection_updated(self, selection: Selection | None) -> None:
        self._selected = selection is not None
        super().selection_updated(selection)


def _split(line: Content) -> list[Content]:
    return line.split("\n", allow_blank=True) if "\n" in line.plain else [line]
