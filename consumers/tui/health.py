"""The banner's status: WAITING, WARMING UP, LEARNING, PLATEAU, REGRESSING, WARN:<what> or FAIL:<what>."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bus.derived import LEARNING, PLATEAU, REGRESSING, learning_progress
from bus.state import Snapshot
from consumers.tui import thresholds as th
from consumers.tui.heads import head_entropy
from consumers.tui.thresholds import Level


@dataclass(frozen=True)
class Status:
    """The banner's verdict: a label, its level, and the findings behind it (worst first)."""

    label: str
    level: Level
    findings: list[tuple[Level, str]] = field(default_factory=list)


def findings(snapshot: Snapshot) -> list[tuple[Level, str]]:
    """Every threshold the newest ppo_update crosses, as (level, short name)."""
    t = snapshot.tamiyo
    if not t.ppo_data_received:
        return []
    out: list[tuple[Level, str]] = []

    def check(level: Level, what: str) -> None:
        if level >= Level.WARN:
            out.append((level, what))

    check(th.NAN_GRADS.level(t.nan_grad_count), "NaN grads")
    check(th.EXPLODING_LAYERS.level(t.exploding_layers), "exploding grads")
    for name in ("policy_loss", "value_loss"):
        if not math.isfinite(getattr(t, name)):
            out.append((Level.FAIL, f"{name.replace('_', ' ')} NaN"))
    check(th.GRAD_NORM.level(t.grad_norm), "grad norm")
    check(th.KL.level(t.kl_divergence), "KL")
    check(th.CLIP.level(t.clip_fraction), "clip")
    frac = head_entropy(snapshot).overall
    if frac is not None:
        check(th.ENTROPY.level(frac), "entropy")
    collapsed = head_entropy(snapshot).collapsed
    if collapsed:
        out.append((Level.WARN, f"{collapsed[0]} head" if len(collapsed) == 1 else f"{len(collapsed)} heads"))
    if t.update >= th.EXPLAINED_VARIANCE_WARMUP_UPDATES:  # a fresh critic fits worse than a constant
        check(th.EXPLAINED_VARIANCE.level(t.explained_variance), "value fit")
    check(th.DEAD_LAYERS.level(t.dead_layers), "dead layers")
    out.sort(key=lambda f: -f[0])
    return out


def assess(snapshot: Snapshot) -> Status:
    """The banner status of ``snapshot``, from the thresholds in ``consumers.tui.thresholds``."""
    run = snapshot.run
    if not run.run_id:
        return Status("WAITING", Level.NONE)
    if run.finished and run.finish_reason == "crashed":
        return Status("FAIL:crashed", Level.FAIL, [(Level.FAIL, "crashed")])
    found = findings(snapshot)
    warming = not snapshot.tamiyo.ppo_data_received or snapshot.tamiyo.update < th.WARMUP_UPDATES
    if warming:
        found = [f for f in found if f[1] in ("NaN grads", "exploding grads") or f[1].endswith(" NaN")]
    if found:
        worst = found[0][0]
        names = ", ".join(what for level, what in found if level == worst)
        prefix = "FAIL" if worst == Level.FAIL else "WARN"
        return Status(f"{prefix}:{names}", worst, found)
    if run.finished:
        return Status(f"FINISHED ({run.finish_reason or 'done'})", Level.OK)
    progress = learning_progress(snapshot.rollout.return_windows)
    if warming or progress is None:
        return Status("WARMING UP", Level.NONE)
    return Status(progress, PROGRESS_LEVELS[progress])


PROGRESS_LEVELS = {LEARNING: Level.OK, PLATEAU: Level.NONE, REGRESSING: Level.WARN}
"""How the return's progress colours the banner when no threshold is crossed."""
