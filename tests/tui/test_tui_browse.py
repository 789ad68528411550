"""The dashboard on a recorded run: end state, full histories, stepping keys (app.run_test, no sockets)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from testkit.archive import envelopes, write_archive
from testkit.events import T0, batch_completed, ppo_update, training_finished, training_started
from tui_helpers import async_test

from bus.aggregator import fold_all
from bus.contract import Event
from bus.state import HISTORY_LEN
from consumers.tui.__main__ import main
from consumers.tui.browse import BrowseApp

UPDATES = HISTORY_LEN + 144  # longer than the live histories


def _run(tmp_path: Path) -> Path:
    events: list[Event] = [training_started()]
    for u in range(1, UPDATES + 1):
        events.append(ppo_update(u, kl_divergence=u / 1000, grad_norm=math.inf if u == 7 else 0.5))
        events.append(batch_completed(u))
    events.append(training_finished(updates=UPDATES))
    return write_archive(tmp_path, envelopes(events, run_id="run-browse", hole=(20, 21)))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return _run(tmp_path)


def _row(app: BrowseApp, name: str):  # type: ignore[no-untyped-def]
    return app.main_screen.query_one(f"#history-{name}")


@async_test
async def test_it_opens_at_the_end_with_every_update_in_the_histories(run_dir: Path) -> None:
    app = BrowseApp(run_dir)
    async with app.run_test(size=(140, 60)) as pilot:
        await pilot.pause()
        state = app.aggregator.state
        assert state.tamiyo.update == UPDATES and state.run.finished
        assert state.delivery.missed == 2  # the recorded hole is a gap again
        assert list(_row(app, "kl_divergence").sparkline.data) == [u / 1000 for u in range(1, UPDATES + 1)]
        assert len(_row(app, "grad_norm").sparkline.data) == UPDATES - 1  # +inf is not drawn, and said so
        assert "1 non-finite not drawn" in str(_row(app, "grad_norm").label.render())
        assert "end of 400" in str(app.main_screen.query_one("#history").border_title)
        assert app.view().connection == "FINISHED"


@async_test
async def test_keys_step_through_the_run(run_dir: Path) -> None:
    app = BrowseApp(run_dir)
    async with app.run_test(size=(140, 60)) as pilot:
        await pilot.press("home")
        assert app.aggregator.state.tamiyo.update == 1 and not app.aggregator.state.run.finished
        assert list(_row(app, "kl_divergence").sparkline.data) == [0.001]
        assert app._now == pytest.approx(T0 + 0.05 * 1)  # the first update's recorded time
        await pilot.press("right", "right")
        assert app.aggregator.state.tamiyo.update == 3
        await pilot.press("pagedown")
        assert app.aggregator.state.tamiyo.update == 13
        await pilot.press("left")
        assert app.aggregator.state.tamiyo.update == 12
        assert len(_row(app, "kl_divergence").sparkline.data) == 12
        await pilot.press("end", "left")
        assert app.aggregator.state.tamiyo.update == UPDATES and not app.aggregator.state.run.finished
        await pilot.press("home", "pageup")  # clamped at the start
        assert app.aggregator.state.tamiyo.update == 1


@async_test
async def test_stepping_back_gives_the_state_a_fresh_fold_gives(run_dir: Path) -> None:
    app = BrowseApp(run_dir)
    rec = app.recording
    async with app.run_test(size=(140, 60)) as pilot:
        await pilot.press("end", "home", *["right"] * 30)
        assert app.aggregator.state == fold_all(rec.items[: rec.stops[30] + 1])
        assert app.aggregator.state.tamiyo.update == 31


@async_test
async def test_reload_reads_what_was_added_and_survives_a_damaged_archive(run_dir: Path) -> None:
    app = BrowseApp(run_dir)
    async with app.run_test(size=(140, 60)) as pilot:
        (run_dir / "training_finished.csv").unlink()  # as if the run were still being recorded
        await pilot.press("r")
        assert app.aggregator.state.tamiyo.update == UPDATES and not app.aggregator.state.run.finished
        (run_dir / "run.json").unlink()
        await pilot.press("r")  # an error notice; the run shown stays
        assert app.aggregator.state.tamiyo.update == UPDATES and app.is_running


def test_a_bad_archive_is_reported_not_raised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--run", str(tmp_path / "missing")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_the_browser_snapshot(run_dir: Path, snap_compare) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(BrowseApp(run_dir), terminal_size=(140, 50), press=["home", "pagedown"])
