"""Gradient noise scale at fixed weights (McCandlish et al. 2018) and its pooled noise-to-signal ratio."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

Group = TypeVar("Group")

EMA_WEIGHT = 0.1
"""Weight of the newest measurement in the pooled averages (see ``NoiseScalePooler``)."""


@dataclass(frozen=True)
class GradientNoise:
    """One measurement at fixed weights, every value a 0-d tensor on the gradients' device.

    ``small_sq`` = mean over groups of |g_j|^2 (each g_j the mean gradient of ``group_size`` = b
    transitions); ``big_sq`` = |mean_j g_j|^2, the squared gradient of all ``total`` = B_big = G*b
    transitions. ``signal_sq`` and ``trace_sigma`` are the unbiased estimates of |G|^2 (true gradient)
    and tr Sigma (per-transition gradient covariance, so its unit is squared gradient times transitions).
    """

    small_sq: torch.Tensor
    big_sq: torch.Tensor
    signal_sq: torch.Tensor
    trace_sigma: torch.Tensor
    group_size: int
    total: int


def measure_gradient_noise(
    loss_of: Callable[[Group], torch.Tensor],
    params: Iterable[torch.Tensor],
    groups: Sequence[Group],
    group_size: int,
    first_grads: Sequence[torch.Tensor | None] | None = None,
) -> GradientNoise:
    """Unbiased |G|^2 and tr Sigma from G >= 2 equal groups of ``group_size`` transitions, at fixed weights.

    ``loss_of(group)`` returns the 0-d mean loss of one group at the current weights. Each group gets one
    forward and one backward pass through ``torch.autograd.grad``: no optimizer step, and every
    ``.grad`` stays exactly as it was. With equal groups the big-batch gradient is the mean of the group
    gradients, so McCandlish et al.'s estimators need no further pass:

        |G|^2   ~ (B_big |G_big|^2 - b |G_small|^2) / (B_big - b)
        tr Sigma ~ (|G_small|^2 - |G_big|^2) / (1/b - 1/B_big)

    computed in the equivalent form tr Sigma = b * sum_j |g_j - mean g|^2 / (G - 1) (a running Welford
    sum, never negative, no cancellation) and |G|^2 = |G_big|^2 - tr Sigma / B_big. Both are unbiased for
    any b and G, so the groups may cover only part of the update's batch.

    Cost against precision: G forward/backward passes of one group (G - 1 with ``first_grads``). When
    noise dominates, one |G|^2 estimate has a relative sd of about sqrt(2G/(G-1)) tr Sigma / (B_sub |G|^2
    sqrt(d_eff)), with B_sub = G * b the transitions measured and d_eff = (tr Sigma)^2 / tr(Sigma^2) the
    noise's effective dimension: covering the whole batch matters (variance ~ 1/B_sub^2), the number of
    groups less (G/(G-1)). The trainer measures the first epoch's G minibatches and takes the first one's
    gradient from its own backward (``first_grads``): G - 1 passes of a minibatch against the update's
    epochs x G (1.7% of update time at the defaults on CPU), with 2/3 of the variance of two halves.

    ``first_grads``, when given, is the gradient of ``groups[0]`` at the current weights (one entry per
    parameter, None for an unused one), e.g. the ``.grad`` the trainer's own backward of its first
    minibatch just left, before clipping: that group's pass is then skipped. It is copied at once, so
    the caller may clip it afterwards.

    Call it before the update's first optimizer step, so the weights are the update's starting weights
    and neither the epochs nor Adam's movement enter the estimate. Returns tensors only (no host sync).
    """
    params = list(params)
    n_groups = len(groups)
    if n_groups < 2:
        raise ValueError(f"need at least 2 groups to separate noise from signal, got {n_groups}")
    if group_size < 1:
        raise ValueError(f"group_size must be a positive number of transitions, got {group_size}")
    if not params:
        raise ValueError("no parameters to measure")
    if first_grads is not None and len(first_grads) != len(params):
        raise ValueError(f"first_grads has {len(first_grads)} entries for {len(params)} parameters")
    mean: torch.Tensor | None = None
    m2: torch.Tensor | None = None
    for j, group in enumerate(groups, start=1):
        if j == 1 and first_grads is not None:
            grads = tuple(first_grads)
        else:
            with torch.enable_grad():
                loss = loss_of(group)
                if loss.dim() != 0:
                    raise ValueError(f"loss_of must return a 0-d loss, got shape {tuple(loss.shape)}")
                grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            pairs = zip(grads, params, strict=True)
            flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in pairs])
            flat = flat.to(torch.promote_types(flat.dtype, torch.float32))
            if mean is None:
                mean, m2 = flat, torch.zeros((), dtype=flat.dtype, device=flat.device)
                continue
            delta = flat - mean
            mean = mean + delta / j
            m2 = m2 + torch.dot(delta, flat - mean)
    assert mean is not None and m2 is not None
    total = n_groups * group_size
    big_sq = torch.dot(mean, mean)
    trace_sigma = group_size * m2 / (n_groups - 1)
    return GradientNoise(
        small_sq=big_sq + m2 / n_groups,
        big_sq=big_sq,
        signal_sq=big_sq - trace_sigma / total,
        trace_sigma=trace_sigma,
        group_size=group_size,
        total=total,
    )


@dataclass(frozen=True)
class NoiseReading:
    """The pooled gradient noise scale and the update batch it is compared with.

    ``b_simple`` = tr Sigma / |G|^2 in transitions; ``cv`` = sqrt(b_simple / batch) is the noise norm
    of the update's mean gradient over |G|, so cos(update direction, G) ~ 1/sqrt(1 + cv^2). No
    detectable signal (pooled |G|^2 <= 0) reads b_simple = cv = +inf: noise-dominated, above every
    threshold, and both msgpack and the csv module carry it (NaN would silence ``gradient_cv > 2.0``).
    """

    b_simple: float
    batch: int

    @property
    def cv(self) -> float:
        return math.sqrt(self.b_simple / self.batch)


class NoiseScalePooler:
    """Exponential moving averages of tr Sigma and |G|^2 kept apart; the reading is their ratio.

    Pooling numerator and denominator (McCandlish et al.'s practice) rather than the ratio means one
    measurement whose |G|^2 estimate is <= 0 only lowers the pooled signal instead of flipping the reading
    to +inf and back. Both averages start at 0 and are divided by the same 1 - (1 - w)^n, so the ratio
    is a properly normalised weighted average from the first measurement on. The default weight 0.1
    pools about (2 - w)/w = 19 measurements' worth of variance: one |G|^2 estimate's relative sd is
    0.7 to 1.1 while a default run learns (2.1 at half its batch), so the pooled signal's is about
    0.25. The price is a lag of (1 - w)/w = 9 measurements, 90 updates at ``diagnostics_every`` = 10;
    a tenfold tr Sigma (reward noise) still doubles the pooled B_simple within 2 measurements, and a
    smaller batch shows at once (it enters at reading).
    """

    def __init__(self, weight: float = EMA_WEIGHT, min_count: int = 1) -> None:
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"EMA weight must be in (0, 1], got {weight}")
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        self.weight = weight
        self.min_count = min_count
        self.count = 0
        self._trace_sigma = 0.0
        self._signal_sq = 0.0
        self._norm = 0.0

    def add(self, trace_sigma: float, signal_sq: float) -> bool:
        """Pool one measurement (host floats, after the update's sync); a non-finite one is skipped: False."""
        if not (math.isfinite(trace_sigma) and math.isfinite(signal_sq)):
            return False
        keep = 1.0 - self.weight
        self._trace_sigma = keep * self._trace_sigma + self.weight * trace_sigma
        self._signal_sq = keep * self._signal_sq + self.weight * signal_sq
        self._norm = keep * self._norm + self.weight
        self.count += 1
        return True

    @property
    def trace_sigma(self) -> float:
        """Pooled tr Sigma (0.0 before the first measurement)."""
        return self._trace_sigma / self._norm if self.count else 0.0

    @property
    def signal_sq(self) -> float:
        """Pooled |G|^2 (0.0 before the first measurement)."""
        return self._signal_sq / self._norm if self.count else 0.0

    def reading(self, batch: int) -> NoiseReading | None:
        """B_simple and cv for an update of ``batch`` transitions; None before ``min_count`` measurements.

        One |G|^2 estimate's sd is 2 to 5 times its mean at the defaults: a reading pooled from one or two
        of them says little, and a run's first measurements (a random policy) are the noisiest.
        """
        if batch < 1:
            raise ValueError(f"batch must be a positive number of transitions, got {batch}")
        if self.count < self.min_count:
            return None
        if self._signal_sq <= 0.0:
            return NoiseReading(b_simple=math.inf, batch=batch)
        return NoiseReading(b_simple=self._trace_sigma / self._signal_sq, batch=batch)
