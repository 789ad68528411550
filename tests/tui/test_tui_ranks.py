"""The per-rank table: hidden for one rank, flags stragglers and STUCK ranks, readable at 64 ranks."""

from __future__ import annotations

from msgspec.structs import replace
from testkit import events
from tui_helpers import async_test, settle
from tui_synth import Run, batch, ppo, started

from bus.liveness import STUCK_MIN_S
from consumers.tui.app import TamiyoApp
from consumers.tui.widgets.ranks_panel import ROWS_SHOWN, RanksPanel


def job(n: int, run_id: str = "run-ddp") -> list[Run]:
    return [Run(run_id, rank=r) for r in range(n)]


def beat(run: Run, update: int, progress_age_s: float | None = 0.1):
    hb = events.heartbeat(
        period_s=1.0, phase="update", update=update, uptime_s=60.0, progress_age_s=progress_age_s
    )
    return run.env(hb)


def start(app: TamiyoApp, ranks: list[Run]) -> None:
    app.ingest([r.env(replace(started(), world_size=len(ranks), rank=r.rank)) for r in ranks])


def update(app: TamiyoApp, ranks: list[Run], u: int, compute: dict[int, float] | None = None) -> None:
    """One update of every rank: a batch, a ppo_update (compute time ``compute[rank]``), a heartbeat."""
    compute = compute or {}
    items = []
    for r in ranks:
        ms = compute.get(r.rank, 100.0)
        items += [
            r.env(batch(u)),
            r.env(ppo(u, compute_time_ms=ms, collective_wait_ms=max(0.0, 200.0 - ms), grad_norm=0.8)),
            beat(r, u),
        ]
    app.ingest(items)


def table(app: TamiyoApp) -> list[str]:
    return app.query_one(RanksPanel).content.plain.splitlines()


def row_of(app: TamiyoApp, rank: int) -> str:
    """The table's row of ``rank`` (its first cell is the rank, right-aligned)."""
    return next(line for line in table(app)[2:] if line.split()[:1] == [str(rank)])


@async_test
async def test_a_single_rank_run_shows_no_rank_table(make_app):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        (run,) = job(1)
        start(app, [run])
        update(app, [run], 0)
        text = await settle(app, pilot)
        assert not app.query_one(RanksPanel).display
    assert "Ranks" not in text and "worst first" not in text


@async_test
async def test_two_ranks_show_a_table_that_names_the_slow_rank_at_its_second_slow_update(make_app):
    app = make_app()
    ranks = job(2)
    async with app.run_test(size=(130, 44)) as pilot:
        start(app, ranks)
        for u in range(3):
            update(app, ranks, u)
        text = await settle(app, pilot)
        assert "Ranks" in text and "2 of 2 ranks" in text and "STRAGGLER" not in text
        update(app, ranks, 3, {1: 200.0})  # score 1.25: one slow update is not enough
        text = await settle(app, pilot)
        assert "STRAGGLER" not in text
        update(app, ranks, 4, {1: 200.0})  # 1.4375: flagged
        text = await settle(app, pilot)
        lines, slow, fast = table(app), row_of(app, 1), row_of(app, 0)
    assert "STRAGGLER" in slow and "1.44" in slow and "200" in slow
    assert "LIVE" in fast and "STRAGGLER" not in fast
    assert lines.index(slow) < lines.index(fast)  # worst first
    assert "1 STRAGGLER" in text and slow in text


@async_test
async def test_a_rank_whose_heartbeats_arrive_without_progress_is_shown_stuck(make_app, clock):
    app = make_app()
    ranks = job(2)
    async with app.run_test(size=(130, 44)) as pilot:
        start(app, ranks)
        update(app, ranks, 0)
        for age in (5.0, 15.0, 25.0, STUCK_MIN_S + 1):
            clock.advance(1.0 if age == 5.0 else 10.0)
            app.ingest([beat(ranks[0], 1), beat(ranks[1], 0, progress_age_s=age)])
            text = await settle(app, pilot)
            assert ("STUCK" in row_of(app, 1)) == (age > STUCK_MIN_S)
        assert "LIVE" in row_of(app, 0) and "1 STUCK" in text


@async_test
async def test_sixty_four_ranks_list_the_worst_and_sum_up_the_rest(make_app, clock):
    app = make_app()
    ranks = job(64)
    async with app.run_test(size=(130, 50)) as pilot:
        start(app, ranks)
        for u in range(4):
            update(app, ranks, u, {17: 260.0, 40: 130.0})
        app.ingest([beat(ranks[52], 3, progress_age_s=STUCK_MIN_S + 5)])
        text = await settle(app, pilot)
        lines = table(app)
        stuck, straggler = row_of(app, 52), row_of(app, 17)
    assert len(lines) == 2 + ROWS_SHOWN + 1  # title, header, the worst ranks, one summary line
    assert lines[-1].startswith(f"+{64 - ROWS_SHOWN} more: ")
    assert "fps Σ" in lines[-1] and "gaps 0" in lines[-1]
    assert lines[2] == stuck and "STUCK" in stuck
    assert lines[3] == straggler and "STRAGGLER" in straggler
    assert "64 of 64 ranks" in text and "1 STUCK, 1 STRAGGLER" in text
    assert stuck.strip() in text and lines[-1].strip() in text  # on screen, not cut off
