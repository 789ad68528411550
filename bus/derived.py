"""Quantities derived from the contract's fields, defined once here for every consumer (docs/metrics.md)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

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


def memory_usage_percent(total_gb: float, free_gb: float) -> float | None:
    """How full the GPU is: (total − free) / total, in percent, every process on the device counted.

    None without CUDA (a capacity of 0): there is no device to fill.
    """
    if total_gb <= 0:
        return None
    return (total_gb - free_gb) / total_gb * 100.0


FRAGMENTATION_MIN_RESERVED = 0.10
"""Fragmentation counts only while the allocator reserves at least this share of the device.

What fragmentation wastes is at most fragmentation × reserved; below this share, the alert's
0.3 wastes under 3% of the device, which cannot be what runs it out of memory.
"""


def fragmentation_that_matters(fragmentation: float, reserved_gb: float, total_gb: float) -> float:
    """``fragmentation`` while reserved ≥ ``FRAGMENTATION_MIN_RESERVED`` of the device's capacity, else 0.0.

    0.0 too when the capacity is unknown (no CUDA, or a producer that does not report it).
    """
    if total_gb <= 0 or reserved_gb < FRAGMENTATION_MIN_RESERVED * total_gb:
        return 0.0
    return fragmentation


def measurement_age(train_steps: int, measured_at: int) -> int | None:
    """Updates since a throttled value was measured: ``train_steps − measured_at``; None if never (−1)."""
    if measured_at < 0:
        return None
    return max(0, train_steps - measured_at)


def measurement_overdue(age: int | None, every: int) -> bool:
    """A throttled value at least one measurement period old: the next measurement was due and did not come.

    The producer measures when ``train_steps % every == 0``, so a value kept up to date is 0 to
    ``every − 1`` updates old.
    """
    return age is not None and every > 0 and age >= every


def nonfinite_losses(ev: PPOUpdate) -> int:
    """How many of ``LOSS_FIELDS`` are NaN or infinite in ``ev``."""
    return sum(1 for name in LOSS_FIELDS if not math.isfinite(getattr(ev, name)))


LEARNING = "LEARNING"
PLATEAU = "PLATEAU"
REGRESSING = "REGRESSING"
PROGRESS_WINDOW = 15
"""Batches with returns per window of ``learning_progress``: the newest window against the one before."""
PROGRESS_T = 3.0
"""A difference counts once it exceeds this many standard errors (the windows' own batch-to-batch noise)."""
PROGRESS_MATERIAL = 0.10
"""A drop below the best counts as a regression only past this share of what the run has gained."""


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


class _Progress(NamedTuple):
    new: float
    """Mean of the newest ``window`` returns."""
    rise: float
    """``new`` minus the previous window's mean."""
    rise_noise: float
    """t standard errors of that difference (or 0 when both windows are constant)."""
    best: float
    """Highest mean of any ``window`` consecutive returns."""
    gained: float
    """``best`` minus the first window's mean."""
    noise: float
    """t·√2 standard errors of ``new``: what two windows of this run may differ by chance."""

    @property
    def rising(self) -> bool:
        return self.rise > self.rise_noise if self.rise_noise > 0 else self.rise > 0

    @property
    def margin(self) -> float:
        return max(self.noise, PROGRESS_MATERIAL * self.gained)


@dataclass
class ReturnWindows:
    """The facts about a run's batch returns that ``learning_progress`` needs, kept as they arrive.

    "Gained since its start" and "below its best" are about the whole run, while a consumer keeps
    only the newest returns (``bus.state.HISTORY_LEN``): so the first window's mean and the best
    window's mean are kept here, with the newest ``2 * window`` finite returns. Non-finite returns
    are skipped. ``add`` is O(window).
    """

    window: int = PROGRESS_WINDOW
    recent: deque[float] = field(default_factory=deque)
    first: float | None = None
    """Mean of the first ``window`` finite returns (None until there are that many)."""
    best: float = -math.inf
    """Highest mean of any ``window`` consecutive finite returns."""

    def __post_init__(self) -> None:
        self.recent = deque(self.recent, maxlen=2 * self.window)

    @classmethod
    def of(cls, returns: Sequence[float], window: int = PROGRESS_WINDOW) -> ReturnWindows:
        w = cls(window)
        for value in returns:
            w.add(value)
        return w

    def add(self, value: float) -> None:
        if not math.isfinite(value):
            return
        self.recent.append(value)
        n = len(self.recent)
        if n < self.window:
            return
        newest = _mean([self.recent[i] for i in range(n - self.window, n)])
        if self.first is None:
            self.first = newest
        self.best = max(self.best, newest)

    def copy(self) -> ReturnWindows:
        return ReturnWindows(self.window, deque(self.recent), self.first, self.best)


Returns = ReturnWindows | Sequence[float]
"""A run's batch returns: kept as ``ReturnWindows`` (what the aggregator folds), or all of them in order."""


def _windows(returns: Returns, window: int) -> ReturnWindows:
    return returns if isinstance(returns, ReturnWindows) else ReturnWindows.of(returns, window)


def _progress(returns: Returns, window: int, t: float) -> _Progress | None:
    w = _windows(returns, window)
    values = list(w.recent)
    if len(values) < 2 * w.window or w.first is None:
        return None
    new, new_se = _mean_se(values[-w.window :])
    previous, previous_se = _mean_se(values[: w.window])
    return _Progress(
        new=new,
        rise=new - previous,
        rise_noise=t * math.hypot(new_se, previous_se),
        best=w.best,
        gained=w.best - w.first,
        noise=t * math.sqrt(2.0) * new_se,
    )


def learning_progress(returns: Returns, window: int = PROGRESS_WINDOW, t: float = PROGRESS_T) -> str | None:
    """LEARNING, PLATEAU or REGRESSING from the batch returns; None until ``2 * window`` finite ones.

    ``returns`` is the run's ``ReturnWindows`` (every return since the run started counts) or all its
    returns in order; ``window`` applies to the latter.

    With ``new`` the mean of the newest ``window`` returns, ``best`` the highest mean of any
    ``window`` consecutive ones, ``first`` the first window's, and ``noise`` = t·√2·(standard
    error of ``new``):

    - LEARNING: ``new`` is above the previous window by more than t standard errors of the
      difference (rising), or within ``margin`` = max(noise, 10% of best − first) of ``best``
      after gaining more than ``noise`` since the first window (holding high);
    - REGRESSING: more than ``margin`` below ``best`` and not rising;
    - PLATEAU: near its best but it never gained more than the noise (flat since the start).
    """
    p = _progress(returns, window, t)
    if p is None:
        return None
    if p.rising:
        return LEARNING
    if p.new < p.best - p.margin:
        return REGRESSING
    return LEARNING if p.gained > p.noise else PLATEAU


def return_settled(returns: Returns, window: int = PROGRESS_WINDOW, t: float = PROGRESS_T) -> bool:
    """The run has learned and levelled off: the return holds at its best and has stopped climbing.

    True when it has gained more than the noise since its first window, ``new`` is within ``margin``
    of ``best`` (LEARNING's "holding high"), and the newest window is not above the previous one by
    more than the noise or by more than 10% of what the run has gained (``PROGRESS_MATERIAL``). A
    slow creep over the last few percent counts as settled; a plateau that never gained, a
    regression, or a climb does not. False until ``2 * window`` finite returns.
    """
    p = _progress(returns, window, t)
    if p is None or p.gained <= p.noise or p.new < p.best - p.margin:
        return False
    return not p.rising or p.rise <= PROGRESS_MATERIAL * p.gained


def gradient_cv_while_learning(gradient_cv: float, returns: Returns) -> float:
    """``gradient_cv`` until the return has settled (``return_settled``), then 0.0.

    Once a policy has learned what it can, its true gradient fades and the noise-to-signal ratio of
    any fixed batch grows without bound (McCandlish et al.: the noise scale grows as training
    converges): a high reading then is expected, not a fault. While the return climbs, regresses or
    never moved, a reading above 2.0 means the update is mostly noise.
    """
    return 0.0 if return_settled(returns) else gradient_cv


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
