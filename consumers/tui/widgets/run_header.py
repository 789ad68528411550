"""The run header: which run, how far it is, how fast, where returns are heading, and the connection."""

from __future__ import annotations

from textual.content import Content

from bus.derived import return_trend
from bus.liveness import FINISHED, LIVE, SLOW, STALE, STUCK, WAITING
from consumers.tui.thresholds import Level
from consumers.tui.view import View
from consumers.tui.widgets.panel import Lines, Panel
from consumers.tui.widgets.render import fmt, pack_lines, shown, spark, styled

TREND_SPARK_WIDTH = 12
RUN_ID_MAX = 32
TEXT_MAX = 32
"""Longest task or device name shown (the wire puts no bound on them)."""


def connection_piece(view: View) -> Content:
    """● LIVE / SLOW 4s / STALE 12s / STUCK 45s / FINISHED / WAITING, coloured; the phase when compiling.

    SLOW and STALE count seconds of silence; STUCK counts seconds without training progress.
    """
    p = view.palette
    state = view.connection
    style = {LIVE: p.ok, SLOW: p.warn, STALE: p.fail, STUCK: p.fail, FINISHED: p.accent, WAITING: p.dim}[
        state
    ]
    text = f"● {state}"
    if state in (SLOW, STALE):
        text += f" {view.silence_s:.0f}s"
    elif state == STUCK and view.progress_age_s is not None:
        text += f" {view.progress_age_s:.0f}s"
    piece = styled(text, style)
    phase = view.snapshot.delivery.producer_phase
    if state in (LIVE, SLOW) and phase == "compiling":
        piece += styled(" compiling", p.warn)
    return piece


class RunHeader(Panel):
    """Two lines at 80 columns, one at 160: run id, task, seed, device, update n/N, fps, returns, link."""

    def draw(self, view: View, width: int, height: int) -> Lines:
        s = view.snapshot
        p = view.palette
        started = s.run.started
        pieces: list[Content] = []
        if s.run.run_id:
            pieces.append(
                Content.assemble(("run ", p.dim), (shown(s.run.run_id, RUN_ID_MAX), f"bold {p.accent}"))
            )
        else:
            pieces.append(Content.assemble(("run ", p.dim), ("—", p.dim)))
        pieces.append(_kv("task", shown(started.task, TEXT_MAX) if started else "?", p.dim))
        pieces.append(_kv("seed", str(started.seed) if started else "?", p.dim))
        pieces.append(_kv("device", shown(started.policy_device, TEXT_MAX) if started else "?", p.dim))
        if started is not None:
            pieces.append(_kv("envs", str(started.n_envs), p.dim))
        total = started.total_updates if started is not None and started.total_updates > 0 else None
        update = str(s.tamiyo.update) if s.tamiyo.ppo_data_received else "–"
        pieces.append(_kv("update", f"{update}/{total}" if total else update, p.dim))
        pieces.append(_kv("fps", fmt(s.rollout.fps) if s.rollout.batches else "–", p.dim))
        pieces.append(self._returns(view))
        pieces.append(connection_piece(view))
        missed = s.delivery.missed
        pieces.append(styled(f"{missed} dropped", p.of(Level.FAIL) if missed else p.dim))
        if view.paused:
            pieces.append(styled("⏸ PAUSED", f"reverse {p.warn}"))
        return pack_lines(pieces, width)

    def _returns(self, view: View) -> Content:
        r = view.snapshot.rollout
        p = view.palette
        if r.return_mean is None:
            return _kv("return", "–", p.dim)
        delta, arrow = return_trend(r.return_history)
        style = {"↗": p.ok, "↘": p.warn}.get(arrow, "")
        piece = Content.assemble(("return ", p.dim), fmt(r.return_mean))
        if arrow:
            piece += styled(f" {arrow}{delta:+.3g}", style)
        trend = spark(r.return_history, TREND_SPARK_WIDTH)
        if len(r.return_history) >= 2:
            piece += styled(f" {trend}", p.accent)
        return piece


def _kv(key: str, value: str, key_style: str) -> Content:
    return Content.assemble((f"{key} ", key_style), value)
