"""The per-rank table of a multi-process run: worst ranks first, one summary line for the rest."""

from __future__ import annotations

from collections import Counter

from textual.content import Content

from bus.liveness import FINISHED, LIVE, SLOW, STALE, STUCK
from bus.ranks import worst_first
from bus.state import RankState
from consumers.tui.thresholds import Level
from consumers.tui.view import View
from consumers.tui.widgets.palette import Palette
from consumers.tui.widgets.panel import Lines, Panel
from consumers.tui.widgets.render import fmt, styled

ROWS_SHOWN = 8
"""Ranks listed one per line (the worst); the others are summed up in one line, so 64 ranks fit."""

STRAGGLER = "STRAGGLER"

COLUMNS = (
    ("rank", 5),
    ("status", 10),
    ("score", 6),
    ("compute", 8),
    ("wait", 7),
    ("update", 8),
    ("fps", 7),
    ("grad", 7),
    ("mem GB", 7),
    ("hb age", 7),
    ("gaps", 5),
)
"""Each column's title and width; numbers are right-aligned (the times in ms)."""


def label(rs: RankState, status: str) -> str:
    """The status cell: the rank's liveness, STRAGGLER for a live rank whose score is flagged."""
    return STRAGGLER if status == LIVE and rs.straggler.flagged else status


def _level(text: str) -> Level:
    if text in (STUCK, STALE):
        return Level.FAIL
    if text in (STRAGGLER, SLOW):
        return Level.WARN
    return Level.NONE if text == FINISHED else Level.OK


def _row(rs: RankState, status: str, now: float, p: Palette) -> Content:
    t = rs.tamiyo
    ppo = t.ppo_data_received
    latest = t.latest
    hb = rs.delivery.last_heartbeat_at
    cells = [
        str(rs.rank),
        label(rs, status),
        fmt(rs.straggler.score) if rs.straggler.samples else "–",
        fmt(latest.compute_time_ms) if ppo and latest.compute_time_ms else "–",
        fmt(latest.collective_wait_ms) if ppo and latest.compute_time_ms else "–",
        fmt(latest.update_time_ms) if ppo else "–",
        fmt(rs.rollout.fps) if rs.rollout.batches else "–",
        fmt(latest.grad_norm) if ppo else "–",
        fmt(latest.cuda_memory_allocated_gb) if ppo and latest.cuda_memory_step >= 0 else "–",
        f"{fmt(max(0.0, now - hb))}s" if hb else "–",
        str(rs.delivery.gaps),
    ]
    parts: list[tuple[str, str] | str] = []
    for i, (cell, (_, w)) in enumerate(zip(cells, COLUMNS, strict=True)):
        text = cell.ljust(w) if i == 1 else cell.rjust(w - 1) + " "
        if i == 1:
            parts.append((text, p.of(_level(cell))))
        elif i == len(cells) - 1 and rs.delivery.gaps:
            parts.append((text, p.of(Level.FAIL)))
        else:
            parts.append(text)
    return Content.assemble(*parts)


def _summary(rows: list[tuple[RankState, str]], p: Palette) -> Content:
    """One line for ``rows``: how many in each status, their score range, fps summed, gaps summed."""
    counts = Counter(label(rs, status) for rs, status in rows)
    states = ", ".join(f"{n} {name}" for name, n in counts.most_common())
    scores = [rs.straggler.score for rs, _ in rows if rs.straggler.samples]
    score = f"score {fmt(min(scores))}–{fmt(max(scores))}" if scores else "score –"
    fps = fmt(sum(rs.rollout.fps for rs, _ in rows))
    gaps = sum(rs.delivery.gaps for rs, _ in rows)
    return Content.assemble(
        (f"+{len(rows)} more: ", "bold"),
        (f"{states} · {score} · fps Σ {fps} · gaps {gaps}", p.of(Level.FAIL) if gaps else p.dim),
    )


class RanksPanel(Panel):
    """Every rank's timings and health (docs/tui.md), shown only once a second rank has been heard from."""

    def show(self, view: View) -> None:
        many = len(view.snapshot.ranks) > 1
        if self.display != many:
            self.display = many
        if many:
            super().show(view)

    def draw(self, view: View, width: int, height: int) -> Content | Lines:
        p = view.palette
        snap = view.snapshot
        rows = worst_first(snap, view.now)
        counts = Counter(label(rs, status) for rs, status in rows)
        flagged = [f"{counts[s]} {s}" for s in (STUCK, STALE, STRAGGLER, SLOW) if counts[s]]
        parts: list[tuple[str, str]] = [(f"{len(rows)} of {snap.world_size} ranks", "bold")]
        if flagged:
            worst = Level.FAIL if counts[STUCK] or counts[STALE] else Level.WARN
            parts.append(("  " + ", ".join(flagged), p.of(worst)))
        parts.append(
            ("  worst first · score: compute time / other ranks' median, ≥ 1.3 straggler · ms", p.dim)
        )
        title = Content.assemble(*parts)
        header = styled(
            "".join(
                name.ljust(w) if i == 1 else name.rjust(w - 1) + " " for i, (name, w) in enumerate(COLUMNS)
            ),
            p.dim,
        )
        shown = rows if len(rows) <= ROWS_SHOWN + 1 else rows[:ROWS_SHOWN]
        lines = [title, header, *(_row(rs, status, view.now, p) for rs, status in shown)]
        if len(shown) < len(rows):
            lines.append(_summary(rows[len(shown) :], p))
        return lines
