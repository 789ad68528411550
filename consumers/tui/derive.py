"""Values the panels show that the snapshot does not hold directly: normalised entropies, trends."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from bus.state import Snapshot
from consumers.tui.thresholds import HEAD_ENTROPY, RETURN_TREND_FLAT, RETURN_TREND_WINDOW, Level

_NO_SIZES: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True)
class HeadEntropy:
    """Per-head entropies as fractions of their maxima, the policy's overall fraction, the collapsed heads."""

    fractions: dict[str, float | None]
    overall: float | None
    collapsed: list[str]
    """Heads whose fraction is in the fail band of ``HEAD_ENTROPY``, in the trainer's order."""


_memo: tuple[Mapping[str, float], Mapping[str, int], HeadEntropy] | None = None


def head_sizes(snapshot: Snapshot) -> Mapping[str, int]:
    """Action-head sizes from training_started (not copied: thousands of heads are read every frame)."""
    started = snapshot.run.started
    return started.action_heads if started is not None else _NO_SIZES


def head_entropy(snapshot: Snapshot) -> HeadEntropy:
    """The newest ppo_update's head entropies, normalised; computed once per update, not once per frame
    (a run may have thousands of heads): reused while the same entropy and size maps come again."""
    global _memo
    entropy = snapshot.tamiyo.head_entropy
    sizes = head_sizes(snapshot)
    memo = _memo
    if memo is not None and memo[0] is entropy and memo[1] is sizes:
        return memo[2]
    fractions: dict[str, float | None] = {}
    total = maximum = 0.0
    for name, nats in entropy.items():
        size = sizes.get(name, 0)
        fractions[name] = head_fraction(nats, size)
        if size > 1:
            total += nats
            maximum += math.log(size)
    collapsed = [h for h, f in fractions.items() if f is not None and HEAD_ENTROPY.level(f) == Level.FAIL]
    result = HeadEntropy(fractions, total / maximum if maximum > 0 else None, collapsed)
    _memo = (entropy, sizes, result)
    return result


def head_fraction(nats: float | None, size: int) -> float | None:
    """A head's entropy as a share of its maximum ln(size); None where unknown or the size is 1."""
    return nats / math.log(size) if nats is not None and size > 1 else None


def head_entropy_fraction(snapshot: Snapshot) -> dict[str, float | None]:
    """Each head's entropy (nats) divided once by ln(its size); None where the size is unknown or 1."""
    return head_entropy(snapshot).fractions


def entropy_fraction(snapshot: Snapshot) -> float | None:
    """Policy entropy as a share of its maximum: Σ head entropy / Σ ln(head size), over known heads."""
    return head_entropy(snapshot).overall


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
