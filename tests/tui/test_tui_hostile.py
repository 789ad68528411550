"""Hostile but valid envelopes through the real app: wire text shown as text, any float drawn, 10k heads."""

from __future__ import annotations

import asyncio

import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from msgspec.structs import replace
from rich.cells import cell_len
from testkit.hostile import EXTREME_FLOATS, HOSTILE_TEXT, hostile_floats, wire_text
from tui_helpers import async_test, settle
from tui_synth import Clock, Run, batch, finished, healthy_run, heartbeat, ppo, started

from bus import catalogue
from bus.contract import BatchCompleted, Heartbeat, PPOUpdate, TrainingStarted
from consumers.tui.app import TamiyoApp
from consumers.tui.heads import head_entropy
from consumers.tui.widgets.heads_panel import HEADS_SHOWN, HeadsPanel

SIZES = [(120, 40), (80, 24)]
APP_EXAMPLES = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def _float_fields(kind: type[msgspec.Struct]) -> list[str]:
    return [f.name for f in catalogue.fields(kind) if catalogue.type_name(f.type) in ("float", "float | nil")]


def _app() -> TamiyoApp:
    return TamiyoApp("tcp://127.0.0.1:5555", clock=Clock(), connect=False)


def _assert_sane(app: TamiyoApp, text: str, width: int) -> None:
    assert app.is_running and app.return_code is None
    for line in text.splitlines():
        assert line.isprintable(), repr(line)
        assert cell_len(line) <= width, repr(line)  # cells, not code points: a combining mark takes none


async def _show(app: TamiyoApp, pilot: object, width: int) -> str:
    text = await settle(app, pilot)
    _assert_sane(app, text, width)
    return text


# -- text ------------------------------------------------------------------------


@async_test
async def test_markup_in_a_run_id_is_shown_literally_in_the_new_run_notice_and_acts_on_nothing():
    app = _app()
    async with app.run_test(size=(160, 40), notifications=True) as pilot:
        app.ingest(healthy_run(Run("plain-run"), 2))
        for run_id in ("sweep[lr=3e-4]", "x[/]y", "[@click=app.quit]go[/]", "[b]bold[/b] [link=x]l[/link]"):
            app.ingest(healthy_run(Run(run_id), 2))
            await pilot.pause(0.1)  # the toast is mounted on a later message
            text = await _show(app, pilot, 160)
            assert f"new run {run_id} (was" in text, text
        y = next(i for i, line in enumerate(text.splitlines()) if "[@click=app.quit]go[/]" in line)
        x = text.splitlines()[y].index("[@click=app.quit]go[/]")
        await pilot.click(offset=(x + 1, y))
        await pilot.click(offset=(x + len("[@click=app.quit]") + 1, y))  # on what would be the link text
        await pilot.pause()
        assert app.is_running and app.return_code is None, "a click on wire text ran an action"


@async_test
async def test_terminal_escapes_and_line_breaks_from_the_wire_are_written_out_visibly():
    app = _app()
    run = Run("evil\x1b]0;pwned\x07\x1b[2J\nrun")
    hostile = "\x1b[31mred\r\u202eright-to-left\x00"
    async with app.run_test(size=(160, 48)) as pilot:
        app.ingest([run.env(replace(started(), task=hostile, hostname=hostile, action_heads={hostile: 3}))])
        app.ingest([run.env(ppo(0, head_entropy={hostile: 0.5}, head_grad_norm={hostile: 0.1}))])
        app.ingest([run.env(heartbeat(phase=hostile))])
        text = await _show(app, pilot, 160)
    assert "\\x1b[31mred" in text and "\\u202e" in text
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J\\nrun"[:31] in text  # the header cuts the run id at 32 cells


@APP_EXAMPLES
@given(
    run_id=wire_text.filter(bool),
    texts=st.lists(wire_text, min_size=9, max_size=9),
    heads=st.lists(wire_text, min_size=1, max_size=4, unique=True),
    size=st.sampled_from(SIZES),
)
@example(run_id=HOSTILE_TEXT[0], texts=HOSTILE_TEXT[:9], heads=HOSTILE_TEXT[-3:], size=SIZES[0])
@example(run_id="r", texts=["t"] * 6 + ["\u0d3b"] + ["t"] * 2, heads=["h"], size=SIZES[0])  # a combining mark
def test_any_wire_string_is_drawn_as_printable_text(run_id, texts, heads, size):
    task, device, reward, backend, mode, torch_v, host, phase, error = texts
    run = Run(run_id)
    first = replace(
        started(compile_enabled=True),
        task=task,
        policy_device=device,
        env_devices=[device],
        reward_mode=reward,
        compile_backend=backend,
        compile_mode=mode,
        torch_version=torch_v,
        hostname=host,
        slot_ids=[task, host],
        action_heads={h: 2 + i for i, h in enumerate(heads)},
    )
    entropies = {h: 0.01 for h in heads}  # collapsed: the banner names the head
    items = [run.env(first)]
    for u in range(12):
        items += [
            run.env(batch(u)),
            run.env(ppo(u, head_entropy=entropies, head_grad_norm={h: 0.1 for h in heads})),
            run.env(heartbeat(phase=phase, update=u)),
        ]
    items.append(run.env(finished(reason=phase, updates=12, error=error)))

    async def body() -> None:
        app = _app()
        async with app.run_test(size=size, notifications=True) as pilot:
            app.ingest(healthy_run(Run("before"), 1))
            app.ingest(items)  # a new run: the notice names it
            await _show(app, pilot, size[0])

    asyncio.run(body())


# -- numbers ---------------------------------------------------------------------


def _extreme_run(values: list[float]) -> list[msgspec.Struct]:
    """A run whose every float field takes each of ``values`` in turn (histories hold them all)."""
    run = Run()
    first = started()
    out = [run.env(replace(first, **{f: values[0] for f in _float_fields(TrainingStarted)}))]
    for u, v in enumerate(values):
        heads = {h: v for h in first.action_heads}
        fields = dict.fromkeys(_float_fields(PPOUpdate), v)
        out.append(run.env(ppo(u, head_entropy=heads, head_grad_norm=heads, **fields)))
        out.append(run.env(batch(u, **dict.fromkeys(_float_fields(BatchCompleted), v))))
        out.append(run.env(replace(heartbeat(update=u), uptime_s=v)))
    return out


@async_test
async def test_histories_spanning_the_whole_float_range_are_drawn():
    # 1e308 - (-1e308) overflows to inf: a sparkline scaled by that span once raised ValueError.
    for size in SIZES:
        app = _app()
        async with app.run_test(size=size) as pilot:
            app.ingest(_extreme_run([1.0, *EXTREME_FLOATS, 2.0, -1e308, 1e308]))
            text = await _show(app, pilot, size[0])
        assert "KL 1.00e+308" in text


@APP_EXAMPLES
@given(
    values=st.lists(
        st.fixed_dictionaries(
            {
                "ppo": st.fixed_dictionaries({f: hostile_floats for f in _float_fields(PPOUpdate)}),
                "batch": st.fixed_dictionaries({f: hostile_floats for f in _float_fields(BatchCompleted)}),
                "heads": st.lists(hostile_floats, min_size=2, max_size=2),
                "uptime": hostile_floats,
            }
        ),
        min_size=1,
        max_size=4,
    ),
    started_floats=st.fixed_dictionaries({f: hostile_floats for f in _float_fields(TrainingStarted)}),
    size=st.sampled_from(SIZES),
)
def test_any_floats_in_any_field_are_drawn(values, started_floats, size):
    run = Run()
    first = replace(started(), action_heads={"op": 6, "slot": 4}, **started_floats)
    items = [run.env(first)]
    for u, v in enumerate(values):
        heads = dict(zip(first.action_heads, v["heads"], strict=True))
        items.append(run.env(ppo(u, head_entropy=heads, head_grad_norm=heads, **v["ppo"])))
        items.append(run.env(batch(u, **v["batch"])))
        items.append(
            run.env(Heartbeat(**{**msgspec.structs.asdict(heartbeat(update=u)), "uptime_s": v["uptime"]}))
        )

    async def body() -> None:
        app = _app()
        async with app.run_test(size=size) as pilot:
            app.ingest(items)
            await _show(app, pilot, size[0])

    asyncio.run(body())


# -- many heads ------------------------------------------------------------------


@async_test
async def test_ten_thousand_heads_draw_a_bounded_panel():
    heads = {f"head{i:05d}": 2 + i % 7 for i in range(10_000)}
    run = Run()
    app = _app()
    async with app.run_test(size=(120, 60)) as pilot:
        app.ingest([run.env(replace(started(), action_heads=heads))])
        app.ingest(
            [
                run.env(
                    ppo(0, head_entropy=dict.fromkeys(heads, 0.01), head_grad_norm=dict.fromkeys(heads, 0.1))
                )
            ]
        )
        text = await _show(app, pilot, 120)
        panel = app.main_screen.query_one(HeadsPanel)
        lines = panel.content.split("\n", allow_blank=True)
        segments = sum(len(list(panel.render_line(y))) for y in range(len(lines)))
        # The per-head derived values (10k of them) are computed once per update, not once per frame.
        state = app.aggregator.state
        assert head_entropy(state) is head_entropy(state) and len(head_entropy(state).collapsed) == 10_000
    assert len(lines) <= HEADS_SHOWN + 6
    assert segments <= 12 * (HEADS_SHOWN + 6)
    assert f"… and {10_000 - HEADS_SHOWN:,} more heads" in text
    assert "head00000" in text and "head09999" not in text
