"""Quantities derived from the contract's fields, defined once here for every consumer (docs/metrics.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from bus.contract import PPOUpdate

LOSS_FIELDS = ("policy_loss", "value_loss", "entropy", "kl_divergence", "grad_norm")
"""The ppo_update values whose non-finite count is ``nonfinite_losses``."""

RETURN_TREND_WINDOW = 10
"""Batches per window of the return trend: the newest window's mean against the one before."""
RETURN_TREND_FLAT = 0.02
"""A trend within this share of the largest |return| in the two windows reads as flat (→)."""


def head_entropy_fractions(
    head_entropy: Mapping[str, float], sizes: Mapping[str, int]
) -> dict[str, float | None]:
    """Each head's entropy / ln(its size): 1 uniform, 0 deterministic; None where the size is unknown or 1."""
    return {name: head_fraction(nats, sizes.get(name, 0)) for name, nats in head_entropy.items()}


def head_fraction(nats: float | None, size: int) -> float | None:
    """One head's entropy / ln(its size); None where the entropy is unknown or the size is 1 or unknown."""
    return nats / math.log(size) if nats is not None and size > 1 else None


def entropy_fraction(head_entropy: Mapping[str, float], sizes: Mapping[str, int]) -> float | None:
    """The policy's normalised entropy: Σ head entropy / Σ ln(head size), over heads of known size > 1.

    The heads are sampled independently, so Σ head entropy is the entropy of the joint action
    and Σ ln(size) its maximum: this is the joint action's entropy as a share of its maximum.
    """
    total = maximum = 0.0
    for name, nats in head_entropy.items():
        size = sizes.get(name, 0)
        if size > 1:
            total += nats
            maximum += math.log(size)
    return total / maximum if maximum > 0 else None


def min_head_entropy_fraction(head_entropy: Mapping[str, float], sizes: Mapping[str, int]) -> float | None:
    """The lowest head's entropy / ln(its size); None when no head has a known size > 1."""
    values = [v for v in head_entropy_fractions(head_entropy, sizes).values() if v is not None]
    return min(values) if values else None


def layer_fraction(layers: int, total_layers: int) -> float | None:
    """``layers`` (dead or exploding) as a share of the parameter tensors checked; None when none were."""
    return layers / total_layers if total_layers > 0 else None


def memory_usage_percent(allocated_gb: float, reserved_gb: float) -> float:
    """Allocated CUDA memory as a share of reserved, in percent; 0.0 when nothing is reserved (no CUDA)."""
    if reserved_gb <= 0:
        return 0.0
    return allocated_gb / reserved_gb * 100.0


def nonfinite_losses(ev: PPOUpdate) -> int:
    """How many of ``LOSS_FIELDS`` are NaN or infinite in ``ev``."""
    return sum(1 for name in LOSS_FIELDS if not math.isfinite(getattr(ev, name)))


def return_trend(
    history: Sequence[float], window: int = RETURN_TREND_WINDOW, flat: float = RETURN_TREND_FLAT
) -> tuple[float, str]:
    """(change, arrow): newest window's mean return minus the previous window's; ↗ ↘ → or '' if too short.

    Non-finite returns are skipped; with fewer than ``2 * window`` values both windows shrink to half.
    """
    values = [v for v in history if math.isfinite(v)]
    if len(values) < 2:
        return 0.0, ""
    n = min(window, len(values) // 2)
    newest, previous = values[-n:], values[-2 * n : -n]
    delta = _mean(newest) - _mean(previous)
    scale = max(abs(v) for v in values[-2 * n :]) or 1.0
    if abs(delta) <= flat * scale:
        return delta, "→"
    return delta, "↗" if delta > 0 else "↘"


def _mean(values: Sequence[float]) -> float:
    """The mean, summed as v / n so that values near the largest float cannot overflow the sum."""
    n = len(values)
    return sum(v / n for v in values)
