"""Snapshot tests (pytest-textual-snapshot) of the main screen at 120x40: waiting, healthy, alarmed."""

from __future__ import annotations

from tui_states import ENDPOINT, alarmed_items, healthy_items, waiting_app
from tui_synth import Clock

from consumers.tui.app import TamiyoApp

SIZE = (120, 40)


def _loaded(items: list) -> tuple[TamiyoApp, object]:
    app = TamiyoApp(ENDPOINT, clock=Clock(), connect=False)

    async def run_before(pilot) -> None:
        app.ingest(items)
        app.draw()
        await pilot.pause()
        app.draw()
        await pilot.pause()

    return app, run_before


def test_snapshot_waiting(snap_compare):
    assert snap_compare(waiting_app(), terminal_size=SIZE)


def test_snapshot_healthy(snap_compare):
    app, run_before = _loaded(healthy_items())
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_alarmed(snap_compare):
    app, run_before = _loaded(alarmed_items())
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
