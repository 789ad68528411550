"""Values the panels show that the snapshot does not hold directly: normalised entropies, trends."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from bus.state import Snapshot
from consumers.tui.thresholds import RETURN_TREND_FLAT, RETURN_TREND_WINDOW


def head_sizes(snapshot: Snapshot) -> Mapping[str, int]:
    """Action-head sizes from training_started (not copied: thousands of heads are read every frame)."""
    started = snapshot.run.started
    return started.action_heads if started is not None else {}


def head_fraction(nats: float | None, size: int) -> float | None:
    """A head's entropy as a share of its maximum ln(size); None where unknown or the size is 1."""
    return nats / math.log(size) if nats is not None and size > 1 else None


def head_entropy_fraction(snapshot: Snapshot) -> dict[str, float | None]:
    """Each head's entropy (nats) divided once by ln(its size); None where the size is unknown or 1."""
    sizes = head_sizes(snapshot)
    out: dict[str, float | None] = {}
    for name, nats in snapshot.tamiyo.head_entropy.items():
        out[name] = head_fraction(nats, sizes.get(name, 0))
    return out


def entropy_fraction(snapshot: Snapshot) -> float | None:
    """Policy entropy as a share of its maximum: Σ head entropy / Σ ln(head size), over known heads."""
    sizes = head_sizes(snapshot)
    total = maximum = 0.0
    for name, nats in snapshot.tamiyo.head_entropy.items():
        size = sizes.get(name, 0)
        if size > 1:
            total += nats
            maximum += math.log(size)
    return total / maximum if maximum > 0 else None


def return_trend(history: Sequence[float]) -> tuple[float, str]:
    """(change, arrow): newest window's mean return minus the previous window's; ↗ ↘ → or '' if too short."""
    values = [v for v in history if math.isfinite(v)]
    if len(values) < 2:
        return 0.0, ""
    n = min(RETURN_TREND_WINDOW, len(values) // 2)
    newest, previous = values[-n:], values[-2 * n : -n]
    delta = _mean(newest) - _mean(previous)
    scale = max(abs(v) for v in values[-2 * n :]) or 1.0
    if abs(delta) <= RETURN_TREND_FLAT * scale:
        return delta, "→"
    return delta, "↗" if delta > 0 else "↘"


def _mean(values: Sequence[float]) -> float:
    """The mean, summed as v / n so that values near the largest float cannot overflow the sum."""
    n = len(values)
    return sum(v / n for v in values)
