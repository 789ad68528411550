"""The PPO health panel: entropy, KL, clip fraction (↑ ↓), explained variance, grad norm and value loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from textual.content import Content

from bus.derived import entropy_fraction
from consumers.tui import thresholds as th
from consumers.tui.thresholds import Band, Level
from consumers.tui.view import View
from consumers.tui.widgets.panel import Lines, Panel
from consumers.tui.widgets.render import bar, fixed, fmt, pct, spark, styled

WIDE_FROM = 64
"""From this inner width on: full labels, aligned extras and a gauge bar per row."""
GAUGE_W = 10
GLYPHS = {Level.NONE: " ", Level.OK: "✓", Level.WARN: "!", Level.FAIL: "✗"}


@dataclass(frozen=True)
class Row:
    """One gauge: labels, value and its text, an extra note, band, gauge range, and history."""

    label: str
    short: str
    value: float | None
    text: str
    extra: str
    band: Band | None
    lo: float
    hi: float
    history: Sequence[float]

    @property
    def level(self) -> Level:
        if self.value is None:
            return Level.NONE
        if self.band is None:
            return Level.NONE if math.isfinite(self.value) else Level.FAIL
        return self.band.level(self.value)


def rows(view: View, wide: bool) -> list[Row]:
    """The six gauges; entropy is the fraction of its maximum when head sizes are known, else nats."""
    t = view.snapshot.tamiyo
    h = t.history
    gq = t.gradient_quality
    frac = entropy_fraction(t.head_entropy, t.head_sizes)
    if frac is not None:
        nats = f"({fmt(t.entropy)} nats)" if wide else ""
        ent = Row("Entropy", "Entropy", frac, fixed(frac), nats, th.ENTROPY, 0, 1, h["entropy"])
    else:  # head sizes unknown (no training_started): nats, with no band to compare against
        ent = Row("Entropy", "Entropy", None, f"{fmt(t.entropy)}n", "", None, 0, 1, h["entropy"])
    clip_dir = f"(↑{pct(gq.clip_fraction_positive)} ↓{pct(gq.clip_fraction_negative)})"
    kl, clip, ev, gn = t.kl_divergence, t.clip_fraction, t.explained_variance, t.grad_norm
    # As in the banner: a fresh critic's explained variance is shown, not judged, until its warm-up ends.
    ev_band = th.EXPLAINED_VARIANCE if t.update >= th.EXPLAINED_VARIANCE_WARMUP_UPDATES else None
    return [
        ent,
        Row("KL", "KL", kl, fmt(kl), "", th.KL, 0, 1.5 * (th.KL.fail or 0), h["kl_divergence"]),
        Row(
            "Clip",
            "Clip",
            clip,
            fmt(clip),
            clip_dir,
            th.CLIP,
            0,
            1.2 * (th.CLIP.fail or 0),
            h["clip_fraction"],
        ),
        Row("Expl. var", "ExplVar", ev, fmt(ev), "", ev_band, -1, 1, h["explained_variance"]),
        Row("Grad norm", "GradNorm", gn, fmt(gn), "", th.GRAD_NORM, 0, th.GRAD_NORM.warn, h["grad_norm"]),
        Row("Value loss", "ValLoss", t.value_loss, fmt(t.value_loss), "", None, 0, 0, h["value_loss"]),
    ]


class PPOHealthPanel(Panel):
    """Each gauge: label, value coloured by its band, note, gauge bar when wide, sparkline, glyph."""

    def draw(self, view: View, width: int, height: int) -> Content | Lines:
        p = view.palette
        if not view.snapshot.tamiyo.ppo_data_received:
            return styled("waiting for the first ppo_update", p.dim)
        wide = width >= WIDE_FROM
        all_rows = rows(view, wide)
        label_w = max(len(r.label if wide else r.short) for r in all_rows)
        value_w = max(len(r.text) for r in all_rows)
        extra_w = max(len(r.extra) for r in all_rows) if wide else 0
        lines = []
        for r in all_rows:
            style = p.of(r.level)
            parts: list[str | tuple[str, str]] = [
                (f"{(r.label if wide else r.short):<{label_w}}", p.dim),
                " ",
                (f"{r.text:>{value_w}}", style),
            ]
            if wide:
                parts += [" ", (f"{r.extra:<{extra_w}}", p.dim), " ", (self._gauge(r), style or p.accent)]
            elif r.extra:  # narrow: the note follows the value and this row's sparkline is shorter
                parts += [" ", (r.extra, p.dim)]
            used = sum(len(part if isinstance(part, str) else part[0]) for part in parts)
            spark_w = max(0, width - used - 3)
            parts += [
                " ",
                (spark(r.history, spark_w).ljust(spark_w), p.accent),
                " ",
                (GLYPHS[r.level], style),
            ]
            lines.append(Content.assemble(*parts))
        return lines

    @staticmethod
    def _gauge(r: Row) -> str:
        if r.value is None or r.hi <= r.lo:
            return " " * GAUGE_W
        return bar((r.value - r.lo) / (r.hi - r.lo), GAUGE_W)
