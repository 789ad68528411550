"""Unit tests of the dashboard's pure parts: bands, derived values, text builders, status, CLI check."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from textual.content import Content
from textual.theme import BUILTIN_THEMES
from tui_synth import HEADS, Run, batch, head_entropies, healthy_run, ppo, started

from bus.aggregator import fold_all
from bus.derived import entropy_fraction, head_entropy_fractions, return_trend
from bus.endpoint import EndpointError, check_endpoint
from consumers.tui import thresholds as th
from consumers.tui.health import assess
from consumers.tui.thresholds import Level
from consumers.tui.widgets.palette import DARK, LIGHT
from consumers.tui.widgets.render import bar, chart, fmt, pack, spark

DOCS = Path(__file__).resolve().parents[2] / "docs" / "tui.md"


@pytest.mark.parametrize(
    ("band", "value", "level"),
    [
        (th.KL, 0.01, Level.OK),
        (th.KL, 0.03, Level.OK),
        (th.KL, 0.031, Level.WARN),
        (th.KL, 0.2, Level.FAIL),
        (th.ENTROPY, 0.5, Level.OK),
        (th.ENTROPY, 0.1, Level.WARN),
        (th.ENTROPY, 0.01, Level.FAIL),
        (th.GRADIENT_CV, 1.99, Level.OK),
        (th.GRADIENT_CV, 2.0, Level.WARN),
        (th.GRADIENT_CV, 4.0, Level.FAIL),
        (th.MEMORY, 75.0, Level.OK),
        (th.MEMORY, 75.1, Level.WARN),
        (th.MEMORY, 90.1, Level.FAIL),
        (th.EXPLAINED_VARIANCE, -0.1, Level.WARN),
        (th.EXPLAINED_VARIANCE, -5.0, Level.WARN),  # no fail limit
        (th.CLIP, float("nan"), Level.FAIL),
        (th.GRAD_NORM, float("inf"), Level.FAIL),
    ],
)
def test_band_levels(band, value, level):
    assert band.level(value) == level


def test_entropy_is_normalised_once_per_head():
    run = Run()
    fracs = {"op": 0.9, "blueprint": 0.2, "tempo": 0.5}
    nats = {h: f * math.log(HEADS[h]) for h, f in fracs.items()}
    snap = fold_all([run.env(started()), run.env(ppo(0, head_entropy=nats))])
    per_head = head_entropy_fractions(snap.tamiyo.head_entropy, snap.tamiyo.head_sizes)
    assert per_head == pytest.approx(fracs)
    # The policy's fraction weighs heads by their maximum, as the sum of nats over the sum of ln(size).
    expected = sum(nats.values()) / sum(math.log(HEADS[h]) for h in fracs)
    assert entropy_fraction(snap.tamiyo.head_entropy, snap.tamiyo.head_sizes) == pytest.approx(expected)


def test_entropy_without_head_sizes_is_unknown_not_guessed():
    run = Run()
    snap = fold_all([run.env(ppo(0))])  # joined without training_started
    assert entropy_fraction(snap.tamiyo.head_entropy, snap.tamiyo.head_sizes) is None
    assert set(head_entropy_fractions(snap.tamiyo.head_entropy, snap.tamiyo.head_sizes).values()) == {None}


def test_head_of_size_one_has_no_fraction():
    run = Run()
    ts = started()
    ts.action_heads["fixed"] = 1
    snap = fold_all([run.env(ts), run.env(ppo(0, head_entropy={**head_entropies(0.5), "fixed": 0.0}))])
    assert head_entropy_fractions(snap.tamiyo.head_entropy, snap.tamiyo.head_sizes)["fixed"] is None
    assert entropy_fraction(snap.tamiyo.head_entropy, snap.tamiyo.head_sizes) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("history", "arrow"),
    [
        ([], ""),
        ([1.0], ""),
        ([0.0] * 10 + [1.0] * 10, "↗"),
        ([1.0] * 10 + [0.0] * 10, "↘"),
        ([5.0, 5.05] * 10, "→"),
        ([float("nan"), 1.0, 2.0], "↗"),
    ],
)
def test_return_trend(history, arrow):
    assert return_trend(history)[1] == arrow


def test_return_trend_compares_windows():
    delta, _ = return_trend([0.0] * 30 + [2.0] * 10)
    assert delta == pytest.approx(2.0)


def test_spark_scales_to_its_range():
    assert spark([0, 1, 2, 3, 4, 5, 6, 7], 8) == "▁▂▃▄▅▆▇█"
    assert spark([3, 3, 3], 5) == "▄▄▄"
    assert spark(list(range(100)), 4) == "▁▃▆█"
    assert spark([1.0, float("nan"), 2.0], 3) == "▁ █"
    assert spark([1.0], 0) == ""


def test_bar_fills_in_eighths():
    assert bar(0.0, 4) == "    "
    assert bar(1.0, 4) == "████"
    assert bar(0.5, 3) == "█▌ "
    assert bar(2.0, 2) == "██"


def test_chart_stacks_rows():
    assert chart([0.0, 1.0], 2, 2) == [" █", "▁█"]
    assert chart([], 3, 2) == ["   ", "   "]


def test_fmt():
    assert fmt(0.0) == "0"
    assert fmt(0.00854) == "0.00854"
    assert fmt(12.345) == "12.3"
    assert fmt(3e-4) == "3.00e-04"
    assert fmt(float("nan")) == "nan"


def test_pack_breaks_between_pieces_not_inside():
    out = pack([Content("aaaa"), Content("bbbb"), Content("cc")], 10)
    assert out.plain == "aaaa  bbbb\ncc"
    assert pack([Content("x" * 20)], 5).plain == "x" * 20


def test_assess_names_every_crossed_threshold():
    run = Run()
    u = th.EXPLAINED_VARIANCE_WARMUP_UPDATES
    items = healthy_run(run, u)
    assert assess(fold_all(items)).label == "LEARNING"
    items.append(run.env(ppo(u, dead_layers=1, gradient_cv=3.0, explained_variance=-0.2)))
    status = assess(fold_all(items))
    assert status.label == "WARN:value fit, dead layers" and status.level == Level.WARN
    items.append(run.env(ppo(u + 1, exploding_layers=2, head_entropy=head_entropies(0.8) | {"op": 0.0})))
    status = assess(fold_all(items))
    assert status.label == "FAIL:exploding grads"
    assert (Level.WARN, "op head") in status.findings


def test_a_fresh_critic_below_zero_is_no_warning():
    """Healthy default runs read explained variance below 0 up to update 51 (docs/metrics.md)."""
    run = Run()
    items = healthy_run(run, 51)
    items.append(run.env(ppo(51, explained_variance=-0.7)))
    assert assess(fold_all(items)).label == "LEARNING"
    items.append(run.env(ppo(th.EXPLAINED_VARIANCE_WARMUP_UPDATES, explained_variance=-0.7)))
    assert assess(fold_all(items)).label == "WARN:value fit"


@pytest.mark.parametrize(
    ("returns", "label", "level"),
    [
        ([0.05 * i for i in range(40)], "LEARNING", Level.OK),
        ([0.0] * 5 + [1.0] * 35, "LEARNING", Level.OK),  # holding at its best
        ([0.0, 0.1] * 20, "PLATEAU", Level.NONE),  # never rose
        ([0.0] * 5 + [1.0] * 20 + [0.5] * 15, "REGRESSING", Level.WARN),
        ([0.0] * 10, "WARMING UP", Level.NONE),  # too few returns to say
    ],
)
def test_the_status_word_follows_the_return(returns, label, level):
    run = Run()
    items = [run.env(started())]
    for u, r in enumerate(returns):
        items += [run.env(batch(u, return_mean=r)), run.env(ppo(u, explained_variance=0.5))]
    status = assess(fold_all(items))
    assert (status.label, status.level) == (label, level)


def test_assess_waiting_and_warmup():
    run = Run()
    assert assess(fold_all([])).label == "WAITING"
    assert assess(fold_all([run.env(started())])).label == "WARMING UP"
    bad_kl = [run.env(ppo(0, kl_divergence=1.0))]
    assert assess(fold_all([run.env(started()), *bad_kl])).label == "WARMING UP"


@pytest.mark.parametrize(
    "endpoint", ["tcp://127.0.0.1:5555", "tcp://localhost:6000", "tcp://[::1]:5555", "ipc:///tmp/x"]
)
def test_check_endpoint_accepts(endpoint):
    assert check_endpoint(endpoint) == endpoint


@pytest.mark.parametrize(
    "endpoint",
    ["127.0.0.1:5555", "tcp://127.0.0.1", "tcp://127.0.0.1:*", "tcp://:5555", "tcp://h:70000", "udp://h:1"],
)
def test_check_endpoint_refuses(endpoint):
    with pytest.raises(EndpointError):
        check_endpoint(endpoint)


def test_docs_list_every_threshold():
    """docs/tui.md carries the same rule lines the help screen shows, so the two cannot drift apart."""
    text = DOCS.read_text(encoding="utf-8")
    missing = [rule for rule in th.rules() if rule not in text]
    assert not missing, f"docs/tui.md lacks: {missing}"


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour.lstrip("#")[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


@pytest.mark.parametrize(("theme", "palette"), [("textual-dark", DARK), ("textual-light", LIGHT)])
def test_palette_contrast_on_its_theme(theme, palette):
    """Readable on dark and light: every level colour has WCAG contrast ≥ 4.5 on the theme's backgrounds."""
    variables = BUILTIN_THEMES[theme].to_color_system().generate()
    for background in (variables["background"], variables["surface"]):
        for style in (palette.ok, palette.warn, palette.fail, palette.accent):
            hi, lo = sorted((_luminance(style.split()[-1]), _luminance(background)), reverse=True)
            assert (hi + 0.05) / (lo + 0.05) >= 4.5, (theme, style, background)
