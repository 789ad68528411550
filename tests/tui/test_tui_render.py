"""Panels render their own lines (consumers/tui/widgets/panel.py): strip for strip what Textual would."""

from __future__ import annotations

import pytest
from textual.app import App, ComposeResult
from textual.content import Content
from textual.visual import Visual
from tui_helpers import ENDPOINT, async_test, settle
from tui_states import alarmed_items, healthy_items
from tui_synth import Clock, Run, healthy_run, ppo

from consumers.tui.app import TamiyoApp
from consumers.tui.view import View
from consumers.tui.widgets.panel import Lines, Panel


def _segments(strips: list) -> list[list[tuple[str, object]]]:
    """Each strip as (text, Rich style) pairs: the style carries the text offsets mouse selection reads."""
    return [[(segment.text, segment.style) for segment in strip] for strip in strips]


async def _compare_every_panel(app: TamiyoApp) -> int:
    compared = 0
    for panel in app.main_screen.query(Panel):
        if not panel.display or not panel.size.width:
            continue
        lines = len(panel.content.split("\n", allow_blank=True))
        shown = min(lines, panel.size.height)
        textual = Visual.to_strips(panel, panel.content, panel.size.width, lines, panel.visual_style)
        panel.notify_style_update()  # forget what the panel rendered already: render every line again
        own = [panel.render_line(y) for y in range(shown)]
        assert _segments(own) == _segments(textual[:shown]), type(panel).__name__
        compared += shown
    return compared


@pytest.mark.parametrize("size", [(120, 40), (80, 24)])
@pytest.mark.parametrize("items", [healthy_items, alarmed_items], ids=["healthy", "alarmed"])
@async_test
async def test_panel_lines_are_the_strips_textual_renders(items, size):
    # 80 columns cuts some lines with an ellipsis: those take Textual's own path, the rest the panel's.
    app = TamiyoApp(ENDPOINT, clock=Clock(), connect=False)
    async with app.run_test(size=size) as pilot:
        app.ingest(items())
        await settle(app, pilot)
        assert await _compare_every_panel(app) > 10


@async_test
async def test_only_changed_lines_are_rendered_again(make_app):
    app = make_app()
    run = Run()
    async with app.run_test(size=(120, 40)) as pilot:
        app.ingest(healthy_run(run, 30))
        await settle(app, pilot)
        config = app.main_screen.query_one("#config", Panel)
        heads = app.main_screen.query_one("#heads", Panel)
        before_config = [config.render_line(y) for y in range(config.size.height)]
        before_heads = [heads.render_line(y) for y in range(heads.size.height)]
        app.ingest([run.env(ppo(30, head_grad_norm={"op": 9.0}))])
        await settle(app, pilot)
        after_config = [config.render_line(y) for y in range(config.size.height)]
        after_heads = [heads.render_line(y) for y in range(heads.size.height)]
    # The config did not change: the very same strips. The heads panel: new strips where it changed.
    assert all(a is b for a, b in zip(before_config, after_config, strict=True))
    assert any(a is not b for a, b in zip(before_heads, after_heads, strict=True))
    assert any(a is b for a, b in zip(before_heads, after_heads, strict=True))


class _Fixed(Panel):
    def draw(self, view: View, width: int, height: int) -> Lines:
        raise AssertionError("updated by hand here, never drawn from a view")


class _OnePanel(App[None]):
    def compose(self) -> ComposeResult:
        yield _Fixed(id="p")


@async_test
async def test_a_style_change_alone_repaints_its_line():
    app = _OnePanel()
    async with app.run_test(size=(40, 5)) as pilot:
        panel = app.query_one("#p", _Fixed)
        panel.update([Content("same"), Content.styled("text", "#ff0000")])
        await pilot.pause()
        red = panel.render_line(1)
        panel.update([Content("same"), Content.styled("text", "#00ff00")])
        await pilot.pause()
        green = panel.render_line(1)
        assert panel.render_line(0) is panel.render_line(0)
    assert [s.text for s in red] == [s.text for s in green] == ["text"]
    assert red is not green and [s.style for s in red] != [s.style for s in green]


def test_a_line_with_a_line_break_in_it_is_split():
    panel = Panel()
    panel.update([Content("one\ntwo"), Content("three")])
    assert panel.content.plain == "one\ntwo\nthree"
