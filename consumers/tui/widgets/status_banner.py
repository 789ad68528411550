"""The status banner: the overall verdict, the compile state in its border title and [Mem:NN%]."""

from __future__ import annotations

from textual.content import Content

from bus.liveness import SLOW, STALE, STUCK, WAITING
from consumers.tui import thresholds as th
from consumers.tui.thresholds import Level
from consumers.tui.view import View
from consumers.tui.widgets.age import age_style, age_suffix
from consumers.tui.widgets.panel import Lines, Panel
from consumers.tui.widgets.render import fixed, fmt, pack_lines, pct, shown, styled

LABEL_MAX = 80
"""Longest verdict shown: it can name a head, whose name comes from the wire."""

STATUS_CLASSES = {
    Level.NONE: "status-none",
    Level.OK: "status-ok",
    Level.WARN: "status-warn",
    Level.FAIL: "status-fail",
}


def border_title(compile_enabled: bool) -> Content:
    """A Content, not a markup string: as markup, '[compiled]' would be eaten as a tag and never shown."""
    return Content("TAMIYO [compiled]" if compile_enabled else "TAMIYO")


def memory_piece(view: View) -> Content:
    """[Mem:NN%]: how full the GPU is, (total − free) / total; empty without CUDA; its age once stale."""
    infra = view.snapshot.tamiyo.infrastructure
    percent = infra.memory_usage_percent
    if percent is None or infra.cuda_memory_step < 0:
        return Content("")
    level = th.MEMORY.level(percent)
    style = {Level.OK: view.palette.dim, Level.WARN: view.palette.warn}.get(level, view.palette.fail)
    step = infra.cuda_memory_step
    return styled(f"[Mem:{fixed(percent, 0)}%]", age_style(view, step, style)) + age_suffix(view, step)


class StatusBanner(Panel):
    """Border title TAMIYO [compiled] / TAMIYO; one line of verdict, key numbers and memory."""

    _compiled: bool | None = None

    def show(self, view: View) -> None:
        level = view.status.level
        if view.connection in (STALE, STUCK):
            level = Level.FAIL
        wanted = STATUS_CLASSES[level]
        if not self.has_class(wanted):  # one restyle, not one per class added or removed
            self.remove_class(*STATUS_CLASSES.values(), update=False)
            self.add_class(wanted)
        compiled = view.snapshot.tamiyo.infrastructure.compile_enabled
        if compiled is not self._compiled:  # setting the title repaints the whole banner: only on a change
            self._compiled = compiled
            self.border_title = border_title(compiled)
        super().show(view)

    def draw(self, view: View, width: int, height: int) -> Lines:
        p = view.palette
        s = view.snapshot
        t = s.tamiyo
        status = view.status
        pieces = [styled(f"● {shown(status.label, LABEL_MAX)}", f"bold {p.of(status.level)}".strip())]
        lesser = [what for level, what in status.findings if level < status.level]
        if lesser:
            pieces.append(styled(shown("also " + ", ".join(lesser), LABEL_MAX), p.warn))
        if view.connection in (SLOW, STALE):
            style = p.fail if view.connection == STALE else p.warn
            pieces.append(styled(f"{view.connection}: no message for {view.silence_s:.0f}s", style))
        elif view.connection == STUCK and view.progress_age_s is not None:
            pieces.append(
                styled(
                    f"STUCK: no training progress for {view.progress_age_s:.0f}s "
                    f"(bound {view.stuck_bound_s:.0f}s), heartbeats still arrive",
                    p.fail,
                )
            )
        elif view.connection == WAITING:
            pieces.append(styled(f"listening on {shown(view.endpoint)}", p.dim))
        if t.ppo_data_received:
            pieces.append(Content.assemble(("KL ", p.dim), fmt(t.kl_divergence)))
            pieces.append(Content.assemble(("clip ", p.dim), pct(t.clip_fraction)))
            pieces.append(Content.assemble(("EV ", p.dim), fmt(t.explained_variance)))
            pieces.append(Content.assemble(("lr ", p.dim), fmt(t.lr)))
        pieces.append(memory_piece(view))
        return pack_lines(pieces, width, sep="   ")
