"""Synthetic runs written by the real archiver code (no sockets), and helpers to compare run directories."""

from __future__ import annotations

import math
from pathlib import Path

from bus.contract import SCHEMA_VERSION, Envelope, Event
from consumers.archiver.archiver import Archiver
from testkit.events import (
    T0,
    batch_completed,
    heartbeat,
    ppo_update,
    training_finished,
    training_started,
)

HEADS = {"op": 6, "slot": 4, "blueprint": 13}
MORE_HEADS = {**HEADS, "tempo": 3}
ODD = (math.nan, math.inf, -math.inf, 0.1, 5e-324)


def envelopes(
    events: list[Event], run_id: str = "run-r", hole: tuple[int, int] | None = None
) -> list[Envelope]:
    """Envelopes 0.05 s apart; seqs ``hole[0]``..``hole[1]`` are left out (a recorded gap)."""
    out = []
    seq = 0
    for i, event in enumerate(events):
        if hole is not None and seq == hole[0]:
            seq = hole[1] + 1
        out.append(Envelope(schema=SCHEMA_VERSION, run_id=run_id, seq=seq, ts=T0 + 0.05 * i, event=event))
        seq += 1
    return out


def eventful_run(updates: int = 40, finished: bool = True) -> list[Event]:
    """NaN and ±inf in losses, a batch without returns, text with line breaks, a head added half way."""
    events: list[Event] = [training_started(action_heads=dict(HEADS))]
    for u in range(1, updates + 1):
        heads = HEADS if u <= updates // 2 else MORE_HEADS
        events.append(ppo_update(u, heads, policy_loss=ODD[u % 5], kl_divergence=ODD[(u + 1) % 5] / 1e3))
        events.append(batch_completed(u, return_mean=None if u % 4 == 0 else -float(u)))
        if u % 5 == 0:
            events.append(heartbeat(update=u, phase="update"))
    if finished:
        events.append(training_finished(reason="crashed", updates=updates, error="Traceback\n  line 1\\x\r"))
    return events


def write_archive(out: Path, items: list[Envelope]) -> Path:
    """Archive ``items`` with the archiver's own classes; the run directory."""
    archiver = Archiver(out, fsync=False, report=lambda line: None)
    archiver.handle(items, 0.0)
    archiver.close()
    return out / items[0].run_id


def event_files(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory but gaps.csv (its detected_at and cause are the receiver's own)."""
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.name != "gaps.csv"}


def gap_ranges(run_dir: Path) -> list[tuple[int, int]]:
    path = run_dir / "gaps.csv"
    if not path.exists():
        return []
    rows = path.read_text().splitlines()[1:]
    return [(int(r.split(",")[0]), int(r.split(",")[1])) for r in rows]
