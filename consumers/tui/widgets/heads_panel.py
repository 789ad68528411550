"""The heads panel: per-head entropy and grad-norm bars with state glyphs, and the gradient-flow footer."""

from __future__ import annotations

import math
from itertools import islice

from textual.content import Content

from bus.derived import head_fraction
from consumers.tui import thresholds as th
from consumers.tui.thresholds import Level
from consumers.tui.view import View
from consumers.tui.widgets.age import age_style, age_suffix
from consumers.tui.widgets.palette import Palette
from consumers.tui.widgets.panel import Lines, Panel
from consumers.tui.widgets.render import bar, fixed, fmt, pack_lines, pct, shown, styled

GLYPHS = {Level.NONE: "·", Level.OK: "✓", Level.WARN: "!", Level.FAIL: "✗"}
MIN_BAR = 3
MAX_BAR = 24
HEADS_SHOWN = 32
"""Rows drawn at most: the rest are counted on one line, so a run with 10k heads costs a frame no more."""
NAME_MAX = 24
"""Longest head name shown; longer ones are cut with "…"."""


def head_level(fraction: float | None, grad_norm: float | None) -> Level:
    """A head's glyph: the worse of its entropy band and its gradient (dead < 1e-6, or past the fail norm)."""
    levels = [Level.NONE]
    if fraction is not None:
        levels.append(th.HEAD_ENTROPY.level(fraction))
    if grad_norm is not None:
        dead = math.isfinite(grad_norm) and grad_norm < th.HEAD_GRAD_DEAD
        levels.append(Level.FAIL if dead else th.GRAD_NORM.level(grad_norm))
    return max(levels)


def flow_footer(view: View) -> list[Content]:
    """`Flow: CV:0.42 ok`, `Dead:d/N  Exploding:e/N` (N = total_layers), `Clip:↑10%/↓5%`."""
    p = view.palette
    t = view.snapshot.tamiyo
    gq = t.gradient_quality
    if gq.gradient_cv_step >= 0:
        word, level = th.gradient_cv_verdict(gq.gradient_cv, view.snapshot.rollout.return_windows)
        style = age_style(view, gq.gradient_cv_step, p.of(level) if level != Level.NONE else p.dim)
        cv = Content.assemble(
            ("Flow: ", p.dim),
            # +inf is the producer's "no detectable signal": pure noise, shown as words, not "inf".
            ("CV:∞ no signal" if gq.gradient_cv == math.inf else f"CV:{fixed(gq.gradient_cv)}", style),
            " ",
            (word, style),
            age_suffix(view, gq.gradient_cv_step),
        )
    else:
        cv = Content.assemble(("Flow: ", p.dim), ("CV:– not measured yet", p.dim))
    layers_level = max(th.DEAD_LAYERS.level(t.dead_layers), th.EXPLODING_LAYERS.level(t.exploding_layers))
    layers = styled(
        f"Dead:{t.dead_layers}/{t.total_layers}  Exploding:{t.exploding_layers}/{t.total_layers}",
        p.of(layers_level),
    )
    clip = styled(f"Clip:↑{pct(gq.clip_fraction_positive)}/↓{pct(gq.clip_fraction_negative)}", "")
    return [cv, layers, clip]


class HeadsPanel(Panel):
    """One row per action head (sizes from training_started), then the flow footer."""

    def draw(self, view: View, width: int, height: int) -> Content | Lines:
        s = view.snapshot
        p = view.palette
        sizes = s.tamiyo.head_sizes
        every = sizes or s.tamiyo.head_entropy
        if not every:
            return styled("no action heads yet (they come with training_started)", p.dim)
        names = list(islice(every, HEADS_SHOWN))
        hidden = len(every) - len(names)
        sizes_of = sizes.get
        entropy = s.tamiyo.head_entropy
        grads = s.tamiyo.head_grad_norm
        labels = [shown(name, NAME_MAX) for name in names]
        name_w = max(len(label) for label in labels)
        # name, entropy value (5), grad value (8), glyph (1) and four separating spaces
        bar_w = max(MIN_BAR, min(MAX_BAR, (width - name_w - 5 - 8 - 1 - 5) // 2))
        top_grad = max((g for g in grads.values() if math.isfinite(g)), default=0.0)

        ent_title = "entropy H/ln n" if bar_w + 6 >= 15 else "entropy"
        lines = [styled(f"{'head':<{name_w}} {ent_title:<{bar_w + 6}} grad norm", p.dim)]
        for name, label in zip(names, labels, strict=True):
            nats = entropy.get(name)
            fraction = head_fraction(nats, sizes_of(name, 0))
            lines.append(_row(label, fraction, nats, grads.get(name), bar_w, name_w, top_grad, p))
        if hidden > 0:
            lines.append(styled(f"… and {hidden:,} more heads", p.dim))
        lines.append(styled("─" * max(1, width), p.dim))
        if s.tamiyo.ppo_data_received:
            lines.extend(pack_lines(flow_footer(view), width, sep="   "))
        else:
            lines.append(styled("Flow: waiting for the first ppo_update", p.dim))
        return lines


def _row(
    name: str,
    fraction: float | None,
    nats: float | None,
    grad: float | None,
    bar_w: int,
    name_w: int,
    top_grad: float,
    p: Palette,
) -> Content:
    level = head_level(fraction, grad)
    ent_level = th.HEAD_ENTROPY.level(fraction) if fraction is not None else Level.NONE
    if fraction is not None:
        ent_value, ent_bar = f"{fixed(fraction):>5}", bar(fraction, bar_w)
    elif nats is not None:
        ent_value, ent_bar = f"{fmt(nats):>4}n", " " * bar_w  # size unknown: raw nats, no band applies
    else:
        ent_value, ent_bar = "    –", " " * bar_w
    if grad is not None:
        grad_value = f"{fmt(grad, 2):>8}"
        grad_bar = bar(grad / top_grad if top_grad > 0 else 0.0, bar_w)
    else:
        grad_value, grad_bar = f"{'–':>8}", " " * bar_w
    return Content.assemble(
        f"{name:<{name_w}}",
        " ",
        (ent_bar, p.of(ent_level) or p.accent),
        " ",
        (ent_value, p.of(ent_level)),
        " ",
        (grad_bar, p.accent),
        " ",
        grad_value,
        " ",
        (GLYPHS[level], p.of(level)),
    )
