"""Every threshold the dashboard colours by, each in the unit of the metric it is compared with."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

from bus.derived import (
    PROGRESS_MATERIAL,
    PROGRESS_T,
    PROGRESS_WINDOW,
    RETURN_TREND_FLAT,
    RETURN_TREND_WINDOW,
    Returns,
    return_settled,
)
from bus.liveness import SLOW_AFTER_PERIODS, STALE_AFTER_PERIODS, STUCK_CYCLES, STUCK_MIN_S


class Level(IntEnum):
    """How a value reads against its band; ordered so ``max`` gives the worst."""

    NONE = 0  # no data yet, or a metric without thresholds
    OK = 1
    WARN = 2
    FAIL = 3


@dataclass(frozen=True)
class Band:
    """Warn and fail limits for one metric, crossed going ``above`` or ``below`` them."""

    metric: str
    unit: str
    direction: str  # "above" or "below"
    warn: float
    fail: float | None = None
    inclusive: bool = False  # True: reaching the limit counts as crossing it

    def level(self, value: float) -> Level:
        if not math.isfinite(value):
            return Level.FAIL
        if self.fail is not None and self._crossed(value, self.fail):
            return Level.FAIL
        if self._crossed(value, self.warn):
            return Level.WARN
        return Level.OK

    def _crossed(self, value: float, limit: float) -> bool:
        if self.direction == "above":
            return value >= limit if self.inclusive else value > limit
        return value <= limit if self.inclusive else value < limit

    def describe(self) -> str:
        op = {("above", False): ">", ("above", True): "≥", ("below", False): "<", ("below", True): "≤"}[
            (self.direction, self.inclusive)
        ]
        if self.fail == self.warn:
            limits = f"fail {op} {_num(self.fail)}"
        elif self.fail is None:
            limits = f"warn {op} {_num(self.warn)}"
        else:
            limits = f"warn {op} {_num(self.warn)}, fail {op} {_num(self.fail)}"
        return f"{self.metric}: {limits} ({self.unit})"


def _num(x: float) -> str:
    return f"{x:g}"


WARMUP_UPDATES = 5
"""Updates 0..4 of a run are WARMING UP: only NaN and exploding gradients raise the status."""

ENTROPY = Band(
    "entropy",
    "policy entropy as a fraction of its maximum: H / Σ ln(head size), 1 = uniform",
    "below",
    warn=0.20,
    fail=0.05,
)
HEAD_ENTROPY = Band(
    "head entropy", "that head's entropy / ln(head size), 1 = uniform", "below", warn=0.20, fail=0.05
)
KL = Band("KL", "nats, k3 estimate of KL(old‖new) over the update's samples", "above", warn=0.03, fail=0.10)
CLIP = Band("clip fraction", "share of samples whose ratio left [1-ε, 1+ε]", "above", warn=0.30, fail=0.50)
EXPLAINED_VARIANCE_WARMUP_UPDATES = 100
"""Explained variance is judged from this update on: healthy default runs read below 0 up to update 51
(about twice that here; docs/metrics.md), while the critic fits returns the learning policy keeps moving."""
EXPLAINED_VARIANCE = Band(
    "explained variance",
    "1 - Var(returns - values) / Var(returns); 0 = no better than a constant",
    "below",
    warn=0.0,
)
GRAD_NORM = Band("grad norm", "L2 norm of all gradients before clipping", "above", warn=10.0, fail=100.0)
HEAD_GRAD_DEAD = 1e-6
"""A head whose gradient norm is below this gets the dead glyph (same limit as a dead layer's elements)."""
GRADIENT_CV = Band(
    "gradient CV",
    "noise-to-signal ratio of the update's gradient (cos to the true gradient ~ 1/sqrt(1+cv^2)); "
    "footer ok|noisy|BAD",
    "above",
    warn=2.0,
    fail=4.0,
    inclusive=True,
)
# 2.0 is the alert's threshold (cos 0.45: the update is mostly noise); 4.0 is cos 0.24. Healthy runs at the
# default batch read about 1.1 to 1.9 while learning (docs/metrics.md#measured-on-healthy-runs).
CV_WORDS = {Level.OK: "ok", Level.WARN: "noisy", Level.FAIL: "BAD"}
CV_SETTLED = "settled"


def gradient_cv_verdict(cv: float, returns: Returns) -> tuple[str, Level]:
    """The footer's word for ``cv`` and its level: ``GRADIENT_CV``'s ok|noisy|BAD, or "settled" at
    Level.NONE for a reading of 2.0 or more once the return has settled at its best
    (``bus.derived.return_settled``): a converged policy's gradient is mostly noise, as expected."""
    level = GRADIENT_CV.level(cv)
    if level >= Level.WARN and return_settled(returns):
        return CV_SETTLED, Level.NONE
    return CV_WORDS[level], level


MEMORY = Band(
    "[Mem:NN%]",
    "how full the GPU is, (total - free) / total, percent; red means OOM risk; hidden without CUDA",
    "above",
    warn=75.0,
    fail=90.0,
)
DEAD_LAYERS = Band("dead layers", "parameter tensors with >90% of gradient elements < 1e-6", "above", warn=0)
EXPLODING_LAYERS = Band(
    "exploding layers", "parameter tensors with >10% of gradient elements > 10", "above", warn=0, fail=0
)
NAN_GRADS = Band("NaN grads", "non-finite gradient elements in the update", "above", warn=0, fail=0)

BANDS: tuple[Band, ...] = (
    ENTROPY,
    HEAD_ENTROPY,
    KL,
    CLIP,
    EXPLAINED_VARIANCE,
    GRAD_NORM,
    GRADIENT_CV,
    DEAD_LAYERS,
    EXPLODING_LAYERS,
    NAN_GRADS,
    MEMORY,
)


def rules() -> list[str]:
    """One line per threshold, for the help screen and docs/tui.md (a test keeps the two in step)."""
    lines = [band.describe() for band in BANDS]
    lines += [
        f"head grad norm: dead (✗) < {_num(HEAD_GRAD_DEAD)}",
        f"warm-up: updates 0-{WARMUP_UPDATES - 1} show WARMING UP; only NaN/exploding grads raise FAIL",
        f"explained variance: judged from update {EXPLAINED_VARIANCE_WARMUP_UPDATES} on "
        "(a fresh critic reads below 0)",
        f"LEARNING: the newest {PROGRESS_WINDOW} batch returns are rising (> {PROGRESS_T:g} standard errors "
        "above the previous window) or holding near the run's best after gaining on its start",
        f"REGRESSING: the newest {PROGRESS_WINDOW} returns are below the run's best window by more than "
        f"the noise and {PROGRESS_MATERIAL:.0%} of what the run gained",
        "PLATEAU: the returns are flat and never rose above their start by more than the noise",
        f"WARMING UP also until {2 * PROGRESS_WINDOW} batches with returns have arrived",
        "gradient CV: footer word only, never the banner status (healthy range: docs/metrics.md)",
        "gradient CV 'settled' (dim): above 2.0 once the return holds at its best and its newest "
        f"{PROGRESS_WINDOW} batches added no more than the noise or {PROGRESS_MATERIAL:.0%} of the gain: "
        "a converged policy's gradient is mostly noise, as expected; the gradient_cv alert is quiet then",
        "[Mem:NN%] colours only (dim ≤ 75, yellow > 75, red bold > 90); it never raises the status",
        "value loss: no threshold (its scale follows the returns); non-finite is FAIL",
        f"connection: SLOW after {_num(SLOW_AFTER_PERIODS)} heartbeat periods of silence, "
        f"STALE after {_num(STALE_AFTER_PERIODS)}",
        f"STUCK: heartbeats arrive but the training loop made no progress (env step or minibatch) for more "
        f"than max({_num(STUCK_MIN_S)} s, {_num(STUCK_CYCLES)} × the run's update + rollout time); "
        "not while starting or compiling",
        "(Nu ago): updates since a throttled value was measured; it dims once a measurement period "
        "(diagnostics_every) old",
        f"return trend: mean of the last {RETURN_TREND_WINDOW} batches vs the {RETURN_TREND_WINDOW} before; "
        f"flat (→) within {RETURN_TREND_FLAT:.0%} of the largest |return|",
    ]
    return lines
