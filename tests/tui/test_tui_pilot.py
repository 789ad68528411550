"""Pilot tests: envelopes go through the real aggregator into the app, and the assertions read the screen."""

from __future__ import annotations

import math
import time

import pytest
from tui_helpers import ENDPOINT, async_test, screen_text, settle
from tui_synth import HEADS, Run, batch, finished, head_entropies, healthy_run, heartbeat, ppo, started

from bus.derived import PROGRESS_WINDOW
from bus.feed import Gap
from consumers.tui.thresholds import WARMUP_UPDATES
from consumers.tui.widgets.help_screen import HelpScreen
from consumers.tui.widgets.palette import DARK


@async_test
async def test_waiting_screen_names_the_endpoint(make_app, clock):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        clock.advance(7)
        text = await settle(app, pilot)
    assert f"Waiting for training on {ENDPOINT}" in text
    assert "WAITING" in text
    assert "(7s)" in text
    assert "Heads" not in text and "PPO health" not in text


@async_test
async def test_memory_is_how_full_the_gpu_is_not_allocated_over_reserved(make_app):
    app = make_app()
    run = Run()
    async with app.run_test(size=(120, 40)) as pilot:
        app.ingest(healthy_run(run, 10))
        # allocated/reserved would be 52%; the device is (80 - 60.8) / 80 = 24% full
        memory = dict(cuda_memory_allocated_gb=4.2, cuda_memory_reserved_gb=8.0, cuda_memory_total_gb=80.0)
        app.ingest([run.env(ppo(10, **memory, cuda_memory_free_gb=60.8))])
        text = await settle(app, pilot)
    assert "[Mem:24%] (0u ago)" in text
    assert "52%" not in text and "4.2/8.0" not in text


@async_test
async def test_memory_hidden_without_cuda_and_coloured_by_band(make_app):
    app = make_app()
    run = Run()
    async with app.run_test(size=(120, 40)) as pilot:
        app.ingest(healthy_run(run, 10))
        text = await settle(app, pilot)
        assert "[Mem:" not in text  # the synthetic run reserves nothing: no CUDA
        # (80 - 4) / 80 = 95% of the device in use: red, the next large allocation may not fit
        app.ingest([run.env(ppo(10, cuda_memory_total_gb=80.0, cuda_memory_free_gb=4.0))])
        await settle(app, pilot)
        style = _style_of(app, "[Mem:95%]")
    assert style.bold
    assert style.color is not None and style.color.triplet.hex == DARK.fail.split()[-1]


def _style_of(app, needle: str):
    for strip in app.screen._compositor.render_strips():
        for seg in strip:
            if needle in seg.text:
                return seg.style
    raise AssertionError(f"{needle!r} not on screen")


@pytest.mark.parametrize(("compile_enabled", "title"), [(True, "TAMIYO [compiled]"), (False, "TAMIYO ─")])
@async_test
async def test_compile_state_is_in_the_visible_border_title(make_app, compile_enabled, title):
    app = make_app()
    run = Run()
    async with app.run_test(size=(100, 30)) as pilot:
        app.ingest(healthy_run(run, 3, compile_enabled=compile_enabled))
        text = await settle(app, pilot)
    banner_top = next(line for line in text.splitlines() if "TAMIYO" in line)
    assert title in banner_top
    assert ("[compiled]" in text) == compile_enabled


@async_test
async def test_gradient_flow_footer_and_directional_clip(make_app):
    app = make_app()
    run = Run()
    async with app.run_test(size=(120, 40)) as pilot:
        app.ingest(healthy_run(run, 12))
        text = await settle(app, pilot)
    assert "Flow: CV:0.42 ok" in text
    assert "Dead:0/14  Exploding:0/14" in text
    assert "Clip:↑10%/↓5%" in text
    assert "(↑10% ↓5%)" in text  # after the clip fraction in the PPO panel


@pytest.mark.parametrize(
    ("cv", "word"), [(0.3, "ok"), (1.9, "ok"), (2.0, "noisy"), (3.9, "noisy"), (4.0, "BAD"), (7.5, "BAD")]
)
@async_test
async def test_gradient_cv_words(make_app, cv, word):
    app = make_app()
    run = Run()
    async with app.run_test(size=(120, 40)) as pilot:
        app.ingest(healthy_run(run, 12))
        app.ingest([run.env(ppo(12, gradient_cv=cv, dead_layers=2, exploding_layers=1, total_layers=31))])
        text = await settle(app, pilot)
    assert f"CV:{cv:.2f} {word}" in text
    assert "Dead:2/31  Exploding:1/31" in text


@pytest.mark.parametrize(
    ("returns", "word"),
    [
        ([0.1 * u for u in range(40)], "noisy"),  # still climbing: the reading is judged
        ([0.0] * 10 + [2.0 + 0.05 * (-1) ** u for u in range(30)], "settled"),  # holds at its best
        ([0.05 * (-1) ** u for u in range(40)], "noisy"),  # never learned: a plateau is judged too
    ],
)
@async_test
async def test_gradient_cv_above_2_reads_settled_once_the_return_has_settled(make_app, returns, word):
    app = make_app()
    run = Run()
    items = [run.env(started())]
    for u, r in enumerate(returns):
        items += [run.env(batch(u, return_mean=r)), run.env(ppo(u, gradient_cv=3.1, gradient_cv_step=u))]
    async with app.run_test(size=(120, 40)) as pilot:
        app.ingest(items)
        text = await settle(app, pilot)
        colour, dim = _style_of(app, word).color, _style_of(app, "Flow:").color
    assert f"CV:3.10 {word}" in text
    assert (colour == dim) == (word == "settled")  # Textual renders dim as a blended colour


@async_test
async def test_footer_fits_80x24(make_app):
    app = make_app()
    run = Run()
    async with app.run_test(size=(80, 24)) as pilot:
        app.ingest(healthy_run(run, 30, compile_enabled=True))
        memory = dict(cuda_memory_total_gb=80.0, cuda_memory_free_gb=70.4)
        app.ingest([run.env(ppo(30, **memory))])
        text = await settle(app, pilot)
    for needle in (
        "TAMIYO [compiled]",
        "[Mem:12%] (0u ago)",
        "CV:0.42 ok (0u ago)",
        "Dead:0/14  Exploding:0/14",
    ):
        assert needle in text
    assert "Clip:↑10%/↓5%" in text and "(↑10% ↓5%)" in text
    assert "update 30/500" in text and "LIVE" in text
    assert "…" not in text  # nothing cut off


@async_test
async def test_silence_goes_slow_then_stale_and_recovers(make_app, clock):
    app = make_app()
    run = Run()
    async with app.run_test(size=(120, 40)) as pilot:
        app.ingest(healthy_run(run, 10))
        assert "● LIVE" in await settle(app, pilot)
        clock.advance(3.0)  # heartbeat period 1 s: SLOW after 2.5 periods
        text = await settle(app, pilot)
        assert "● SLOW 3s" in text and "STALE" not in text
        clock.advance(3.0)
        text = await settle(app, pilot)
        assert "● STALE 6s" in text
        assert "STALE: no message for 6s" in text
        assert "update 9/500" in text  # the last numbers stay, marked stale rather than frozen as live
        app.ingest([run.env(heartbeat("rollout", 10))])
        text = await settle(app, pilot)
    assert "● LIVE" in text and "STALE" not in text


@async_test
async def test_a_hung_training_loop_shows_stuck_not_live(make_app, clock):
    app = make_app()
    run = Run()
    async with app.run_test(size=(120, 40)) as pilot:
        app.ingest(healthy_run(run, 40))  # step_time 2 ms, a fast run: the 30 s floor is the bound
        for age in range(1, 31):  # the loop hangs in update 40; the publisher's thread keeps beating
            clock.advance(1.0)
            app.ingest([run.env(heartbeat("update", 40, progress_age_s=float(age)))])
        text = await settle(app, pilot)
        assert "● LIVE" in text and "STUCK" not in text  # 30 s: at the bound, not past it
        clock.advance(1.0)
        app.ingest([run.env(heartbeat("update", 40, progress_age_s=31.0))])
        text = await settle(app, pilot)
    assert "● STUCK 31s" in text
    assert "STUCK: no training progress for 31s (bound 30s)" in text
    assert "STALE" not in text and "SLOW" not in text


@async_test
async def test_throttled_values_show_their_age(make_app):
    app = make_app()
    run = Run()
    async with app.run_test(size=(120, 40)) as pilot:
        app.ingest(healthy_run(run, 14))  # gradient CV measured at update 10, shown at 13
        text = await settle(app, pilot)
        assert "CV:" in text and "(3u ago)" in text
        app.ingest([run.env(ppo(u, gradient_cv_step=10)) for u in range(14, 21)])  # the one due at 20 missed
        text = await settle(app, pilot)
    assert "(10u ago)" in text
    assert app.view().snapshot.tamiyo.gradient_cv_step == 10


@async_test
async def test_compiling_shows_as_compiling_not_stale(make_app, clock):
    app = make_app()
    run = Run()
    async with app.run_test(size=(120, 40)) as pilot:
        app.ingest([run.env(started(compile_enabled=True))])
        for _ in range(30):  # 30 s of compiling: heartbeats keep coming, no ppo_update
            clock.advance(1.0)
            app.ingest([run.env(heartbeat("compiling"))])
        text = await settle(app, pilot)
    assert "WARMING UP" in text
    assert "LIVE compiling" in text
    assert "STALE" not in text and "SLOW" not in text


@async_test
async def test_new_run_replaces_old(make_app, clock):
    app = make_app()
    old, new = Run("run-old00001"), Run("run-new00002")
    async with app.run_test(size=(120, 40)) as pilot:
        app.ingest(healthy_run(old, 30))
        text = await settle(app, pilot)
        assert "run-old00001" in text and "update 29/500" in text
        # The restarted producer's clock is later; its seqs start again at 0.
        new.seq = 0
        restart = healthy_run(new, 3)
        restart = [
            type(e)(schema=e.schema, run_id=e.run_id, seq=e.seq, ts=e.ts + 3600, event=e.event)
            for e in restart
        ]
        clock.advance(1)
        app.ingest(restart)
        text = await settle(app, pilot)
    assert "run-new00002" in text and "run-old00001" not in text
    assert "update 2/500" in text
    assert app.aggregator.state.runs_seen == 2


@async_test
async def test_seq_gaps_show_as_dropped(make_app):
    app = make_app()
    run = Run()
    async with app.run_test(size=(120, 40)) as pilot:
        app.ingest(healthy_run(run, 10))
        app.ingest([Gap(run.run_id, run.seq, run.seq + 4, 0.0)])
        run.seq += 5
        app.ingest([run.env(ppo(10))])
        text = await settle(app, pilot)
    assert "5 dropped" in text
    assert "gaps 1 (5 missed)" in text
    assert f"ranges {run.seq - 6}-{run.seq - 2}" in text


@async_test
async def test_heads_normalised_once_by_log_size(make_app):
    app = make_app()
    run = Run()
    async with app.run_test(size=(160, 48)) as pilot:
        app.ingest([run.env(started())])
        for u in range(12):
            app.ingest(
                [run.env(ppo(u, head_entropy=head_entropies(0.5), entropy=sum(head_entropies(0.5).values())))]
            )
        text = await settle(app, pilot)
    head_lines = [line for line in text.splitlines() if any(f"│ {h} " in line for h in HEADS)]
    assert len(head_lines) == len(HEADS)
    for line in head_lines:
        assert " 0.50 " in line  # blueprint (13 actions) and tempo (3) alike: H / ln(size)
    ppo_line = next(line for line in text.splitlines() if "Entropy " in line)
    assert "0.50" in ppo_line
    nats = sum(0.5 * math.log(n) for n in HEADS.values())
    assert f"({nats:.2f} nats)" in ppo_line


@async_test
async def test_status_levels(make_app):
    app = make_app()
    run = Run()
    async with app.run_test(size=(120, 40)) as pilot:
        app.ingest([run.env(started())])
        assert "WARMING UP" in await settle(app, pilot)
        app.ingest([run.env(ppo(u, kl_divergence=0.5)) for u in range(WARMUP_UPDATES)])
        assert "WARMING UP" in await settle(app, pilot)  # KL is not judged during warm-up
        app.ingest([run.env(ppo(WARMUP_UPDATES))])
        assert "WARMING UP" in await settle(app, pilot)  # no returns yet: whether it learns is unknown
        app.ingest([run.env(batch(u)) for u in range(2 * PROGRESS_WINDOW)])  # returns rising
        assert "● LEARNING" in await settle(app, pilot)
        app.ingest([run.env(ppo(WARMUP_UPDATES + 1, kl_divergence=0.05, clip_fraction=0.35))])
        assert "● WARN:KL, clip" in await settle(app, pilot)
        app.ingest([run.env(ppo(WARMUP_UPDATES + 2, kl_divergence=0.2, head_entropy=head_entropies(0.01)))])
        assert "● FAIL:KL, entropy" in await settle(app, pilot)
        app.ingest([run.env(ppo(WARMUP_UPDATES + 3, nan_grad_count=3, grad_norm=float("nan")))])
        text = await settle(app, pilot)
        assert "● FAIL:NaN grads, grad norm" in text
        assert "nan" in next(line for line in text.splitlines() if "GradNorm" in line or "Grad norm" in line)
        app.ingest([run.env(finished("crashed", 9, "RuntimeError: boom"))])
        assert "● FAIL:crashed" in await settle(app, pilot)


@async_test
async def test_finished_run(make_app):
    app = make_app()
    run = Run()
    async with app.run_test(size=(120, 40)) as pilot:
        app.ingest(healthy_run(run, 10))
        app.ingest([run.env(finished("done", 10))])
        text = await settle(app, pilot)
    assert "FINISHED (done)" in text and "● FINISHED" in text


@async_test
async def test_events_fold_without_redrawing(make_app):
    """The redraw rate never depends on the event rate: ingesting draws nothing, the timer does."""
    app = make_app(refresh_hz=4.0)
    run = Run()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        frames = app.frames
        app.ingest(healthy_run(run, 200))
        assert app.frames == frames
        assert app.aggregator.state.tamiyo.update == 199
        deadline = time.monotonic() + 10.0
        while app.frames == frames and time.monotonic() < deadline:
            await pilot.pause(0.05)  # the redraw timer draws without being asked
        assert app.frames > frames


@async_test
async def test_pause_freezes_the_screen_and_keeps_folding(make_app):
    app = make_app()
    run = Run()
    async with app.run_test(size=(120, 40)) as pilot:
        app.ingest(healthy_run(run, 10))
        await settle(app, pilot)
        await pilot.press("p")
        await pilot.pause()
        frozen = screen_text(app)
        assert "PAUSED" in frozen and "update 9/500" in frozen
        app.ingest([run.env(batch(10)), run.env(ppo(10))])
        app.redraw()  # a timer tick while paused
        await pilot.pause()
        assert screen_text(app) == frozen
        assert app.aggregator.state.tamiyo.update == 10
        await pilot.press("p")
        await pilot.pause()
        text = screen_text(app)
    assert "PAUSED" not in text and "update 10/500" in text


@async_test
async def test_reset_drops_the_state(make_app):
    app = make_app()
    run = Run()
    async with app.run_test(size=(120, 40)) as pilot:
        app.ingest(healthy_run(run, 10))
        assert "run-a1b2c3d4" in await settle(app, pilot)
        await pilot.press("r")
        text = await settle(app, pilot)
    assert "Waiting for training" in text and "run-a1b2c3d4" not in text
    assert app.aggregator.state.delivery.events == 0


@async_test
async def test_help_lists_keys_and_thresholds(make_app):
    app = make_app()
    async with app.run_test(size=(120, 48)) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        text = screen_text(app)
        for needle in (
            "q / Ctrl-C",
            "pause",
            "reset",
            "KL: warn > 0.03, fail > 0.1",
            "gradient CV: warn ≥ 2",
        ):
            assert needle in text
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


@pytest.mark.parametrize("key", ["q", "ctrl+c"])
@async_test
async def test_quit_keys_exit_zero(make_app, key):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press(key)
        await pilot.pause()
    assert app.return_code == 0


@async_test
async def test_theme_toggle_switches_palette(make_app):
    app = make_app()
    run = Run()
    async with app.run_test(size=(120, 40)) as pilot:
        app.ingest(healthy_run(run, 2 * PROGRESS_WINDOW))
        await settle(app, pilot)
        assert app.view().palette is DARK
        await pilot.press("t")
        text = await settle(app, pilot)
        assert not app.current_theme.dark and app.view().palette is not DARK
    assert "LEARNING" in text


@async_test
async def test_resizing_shows_the_detail_panels_when_tall_enough(make_app):
    app = make_app()
    run = Run()
    async with app.run_test(size=(80, 24)) as pilot:
        app.ingest(healthy_run(run, 20))
        text = await settle(app, pilot)
        assert "Heads" in text and "Rollout" not in text
        await pilot.resize_terminal(160, 48)
        text = await settle(app, pilot)
        assert "Rollout" in text and "Delivery" in text and "Config" in text
        assert "Flow: CV:0.42 ok (9u ago)   Dead:0/14  Exploding:0/14   Clip:↑10%/↓5%" in text  # one line


@async_test
async def test_light_theme_from_the_start(make_app):
    app = make_app(light=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        assert not app.current_theme.dark
        assert app.view().palette is not DARK
