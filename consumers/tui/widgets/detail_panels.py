"""The panels shown when the terminal is tall enough: rollout progress, bus delivery, run configuration."""

from __future__ import annotations

import math

from textual.content import Content

from consumers.tui.thresholds import Level
from consumers.tui.view import View
from consumers.tui.widgets.panel import Lines, Panel
from consumers.tui.widgets.render import chart, fmt, pack_lines, shown, spark, styled


def _kv(key: str, value: str, p_dim: str, style: str = "") -> Content:
    return Content.assemble((f"{key} ", p_dim), (value, style))


TEXT_MAX = 40
"""Longest text field shown (host, torch version, ...): the wire puts no bound on them."""
WARNING_MAX = 200


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or not 0 <= seconds < 1e9:
        return fmt(seconds) + "s"  # nothing a producer's uptime could be: shown as the number it is
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class RolloutPanel(Panel):
    """Episode returns as a chart as tall as the panel allows, then throughput with its sparkline."""

    def draw(self, view: View, width: int, height: int) -> Content | Lines:
        r = view.snapshot.rollout
        t = view.snapshot.tamiyo
        p = view.palette
        if not r.batches:
            return styled("waiting for the first batch_completed", p.dim)
        fps = pack_lines(
            [
                _kv("fps", fmt(r.fps), p.dim),
                _kv("step", f"{fmt(r.step_time_ms)} ms", p.dim),
                _kv("env steps", f"{r.env_steps:,}", p.dim),
                _kv("update", f"{fmt(t.update_time_ms)} ms", p.dim) if t.ppo_data_received else Content(""),
            ],
            width,
        )
        fps_lines = [*fps, styled(spark(r.fps_history, width), p.accent)]
        if r.return_mean is None:
            head = styled(f"no episode has ended yet ({r.episodes_completed} episodes)", p.dim)
            return [head, *fps_lines]
        stats = pack_lines(
            [
                _kv("return", fmt(r.return_mean), p.dim),
                _kv("min", fmt(r.return_min if r.return_min is not None else r.return_mean), p.dim),
                _kv("max", fmt(r.return_max if r.return_max is not None else r.return_mean), p.dim),
                _kv("episodes", f"{r.episodes_completed:,}", p.dim),
            ],
            width,
        )
        used = len(stats) + len(fps)
        rows = max(1, height - used - 1)
        label_w = max(len(fmt(v)) for v in r.return_history) + 1
        history = list(r.return_history)[-(width - label_w) :]
        lo, hi = fmt(min(history)), fmt(max(history))
        plot = chart(history, width - label_w, rows)
        labelled = []
        for i, line in enumerate(plot):
            label = hi if i == 0 else (lo if i == len(plot) - 1 else "")
            labelled.append(Content.assemble((f"{label:>{label_w - 1}} ", p.dim), (line, p.accent)))
        return [*stats, *labelled, *fps_lines]


class DeliveryPanel(Panel):
    """What the bus delivered to this consumer: events, seq gaps and their ranges, duplicates, refusals."""

    def draw(self, view: View, width: int, height: int) -> Content | Lines:
        d = view.snapshot.delivery
        p = view.palette
        gap_style = p.of(Level.FAIL) if d.missed else ""
        ranges = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in list(d.gap_ranges)[-4:])
        pieces = [
            _kv("events", f"{d.events:,}", p.dim),
            _kv("last seq", str(d.last_seq), p.dim),
            _kv("gaps", f"{d.gaps} ({d.missed} missed)", p.dim, gap_style),
            _kv("ranges", ranges, p.dim, gap_style) if ranges else Content(""),
            _kv("duplicates", str(d.duplicates), p.dim),
            _kv("refused", str(view.link.rejected), p.dim, p.of(Level.WARN) if view.link.rejected else ""),
            _kv("reconnects", str(view.link.disconnects), p.dim),
            _kv("auth failures", str(view.link.auth_failures), p.dim, p.fail)
            if view.link.auth_failures
            else Content(""),
            _kv(
                "producer dropped",
                str(d.producer_dropped),
                p.dim,
                p.of(Level.WARN) if d.producer_dropped else "",
            ),
            _kv("phase", shown(d.producer_phase, TEXT_MAX) or "–", p.dim),
            _kv("uptime", _duration(d.producer_uptime_s), p.dim),
            _kv("heartbeat", f"every {d.heartbeat_period_s:g}s", p.dim),
            _kv("runs seen", str(view.snapshot.runs_seen), p.dim),
        ]
        lines = pack_lines(pieces, width, sep="   ")
        if view.bus_warning:
            lines.append(
                Content.assemble(("last warning ", p.dim), (shown(view.bus_warning, WARNING_MAX), p.warn))
            )
        return lines


class ConfigPanel(Panel):
    """The run's configuration as training_started announced it."""

    def draw(self, view: View, width: int, height: int) -> Content | Lines:
        started = view.snapshot.run.started
        p = view.palette
        if started is None:
            return styled("waiting for training_started", p.dim)
        compiled = (
            shown(f"{started.compile_backend or 'default'}/{started.compile_mode or 'default'}", TEXT_MAX)
            if started.compile_enabled
            else "off"
        )
        pieces = [
            _kv("lr", fmt(started.lr), p.dim),
            _kv("clip ε", fmt(started.clip_ratio), p.dim),
            _kv("entropy coef", fmt(started.entropy_coef), p.dim),
            _kv("γ", fmt(started.gamma), p.dim),
            _kv("λ", fmt(started.gae_lambda), p.dim),
            _kv("rollout", str(started.rollout_steps), p.dim),
            _kv("minibatches", str(started.num_minibatches), p.dim),
            _kv("epochs", str(started.update_epochs), p.dim),
            _kv("reward", shown(started.reward_mode, TEXT_MAX), p.dim),
            _kv("param budget", f"{started.param_budget:,}", p.dim),
            _kv("slots", str(len(started.slot_ids)), p.dim),
            _kv("compile", compiled, p.dim),
            _kv("world", f"{started.rank}/{started.world_size}", p.dim),
            _kv("torch", shown(started.torch_version, TEXT_MAX) or "?", p.dim),
            _kv("host", shown(started.hostname, TEXT_MAX) or "?", p.dim),
        ]
        return pack_lines(pieces, width, sep="   ")
