"""bus.derived against independent computations: numpy over explicit distributions, and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from bus_factories import ppo_update

from bus import derived


def _entropy(p: np.ndarray) -> float:
    return float(-(p * np.log(p)).sum())


def test_entropy_fraction_is_the_joint_action_s_normalised_entropy() -> None:
    """Σ H / Σ ln n equals H(joint) / ln(joint size) of the product distribution, computed by numpy."""
    rng = np.random.default_rng(0)
    sizes = {"op": 6, "blueprint": 13, "tempo": 3}
    dists = {h: rng.dirichlet(np.ones(n)) for h, n in sizes.items()}
    head_entropy = {h: _entropy(p) for h, p in dists.items()}
    joint = np.einsum("i,j,k->ijk", dists["op"], dists["blueprint"], dists["tempo"]).ravel()
    expected = _entropy(joint) / math.log(joint.size)
    assert derived.entropy_fraction(head_entropy, sizes) == pytest.approx(expected)
    per_head = derived.head_entropy_fractions(head_entropy, sizes)
    assert per_head == pytest.approx({h: _entropy(p) / np.log(sizes[h]) for h, p in dists.items()})
    assert derived.min_head_entropy_fraction(head_entropy, sizes) == pytest.approx(min(per_head.values()))


def test_entropy_fraction_hand_worked_and_edge_cases() -> None:
    # op uniform (ln 6), tempo deterministic (0): (ln 6 + 0) / (ln 6 + ln 3) = 0.6199...
    assert derived.entropy_fraction(
        {"op": math.log(6), "tempo": 0.0}, {"op": 6, "tempo": 3}
    ) == pytest.approx(0.6199, abs=1e-4)
    assert derived.entropy_fraction({"op": 1.0}, {}) is None  # sizes unknown: not guessed
    assert derived.head_entropy_fractions({"fixed": 0.0}, {"fixed": 1}) == {"fixed": None}
    assert derived.min_head_entropy_fraction({"fixed": 0.0}, {"fixed": 1}) is None


def test_layer_fraction_and_memory_percent() -> None:
    assert derived.layer_fraction(3, 24) == 0.125
    assert derived.layer_fraction(0, 0) is None
    # (total − free) / total: 80 GB device with 20 GB free is 75% full; no device, no figure.
    assert derived.memory_usage_percent(80.0, 20.0) == pytest.approx(75.0)
    assert derived.memory_usage_percent(0.0, 0.0) is None


@pytest.mark.parametrize(
    ("fragmentation", "reserved", "total", "counted"),
    [
        (0.5, 8.0, 80.0, 0.5),  # reserved exactly 10% of the device: counts
        (0.5, 7.9, 80.0, 0.0),  # under 10%: 0.5 × 7.9 GB = 4.9% of the device wasted at most
        (0.9, 0.2, 141.0, 0.0),  # a small policy on a big GPU: the CPU-test case that used to fire
        (0.4, 60.0, 80.0, 0.4),
        (0.4, 60.0, 0.0, 0.0),  # capacity unknown: no claim
    ],
)
def test_fragmentation_counts_only_where_reserved_is_a_share_of_the_device(
    fragmentation: float, reserved: float, total: float, counted: float
) -> None:
    assert derived.fragmentation_that_matters(fragmentation, reserved, total) == counted
    if counted:  # what fragmentation could waste is then at least 0.1 × fragmentation of the device
        assert fragmentation * reserved / total >= derived.FRAGMENTATION_MIN_RESERVED * fragmentation


def test_nonfinite_losses_counts_each_loss_field() -> None:
    assert derived.nonfinite_losses(ppo_update()) == 0
    ev = ppo_update(policy_loss=float("nan"), grad_norm=float("inf"), lr=float("nan"))  # lr is no loss
    assert derived.nonfinite_losses(ev) == int(
        np.sum(~np.isfinite([getattr(ev, n) for n in derived.LOSS_FIELDS]))
    )
    assert derived.nonfinite_losses(ev) == 2


def test_return_trend_is_the_difference_of_window_means() -> None:
    rng = np.random.default_rng(1)
    history = list(rng.normal(size=37))
    delta, _ = derived.return_trend(history)
    assert delta == pytest.approx(np.mean(history[-10:]) - np.mean(history[-20:-10]))
    assert derived.return_trend([1.0, 3.0]) == (2.0, "↗")  # short: two halves of one
    assert derived.return_trend([5.0, 5.05] * 10)[1] == "→"  # within 2% of the largest |return|


def _progress_by_numpy(history: list[float], window: int = 15, t: float = 3.0) -> str | None:
    """learning_progress's definition (docs/metrics.md) written again with numpy."""
    v = np.asarray([x for x in history if np.isfinite(x)])
    if v.size < 2 * window:
        return None
    new, prev = v[-window:], v[-2 * window : -window]
    se_new = new.std(ddof=1) / np.sqrt(window)
    se_prev = prev.std(ddof=1) / np.sqrt(window)
    if new.mean() - prev.mean() > t * np.hypot(se_new, se_prev):
        return "LEARNING"
    means = np.convolve(v, np.ones(window) / window, mode="valid")
    best, first = means.max(), means[0]
    noise = t * np.sqrt(2) * se_new
    if new.mean() < best - max(noise, 0.1 * (best - first)):
        return "REGRESSING"
    return "LEARNING" if best - first > noise else "PLATEAU"


def test_learning_progress_matches_an_independent_numpy_computation() -> None:
    rng = np.random.default_rng(5)
    seen = set()
    for trial in range(300):
        n = int(rng.integers(25, 120))
        shape = rng.choice(["rise", "flat", "rise_then_drop", "rise_then_hold"])
        x = np.arange(n)
        level = {
            "rise": 0.03 * x,
            "flat": np.zeros(n),
            "rise_then_drop": np.where(x < n // 2, 0.05 * x, 0.05 * (n // 2) - 0.04 * (x - n // 2)),
            "rise_then_hold": np.minimum(0.05 * x, 1.5),
        }[shape]
        history = list(level + rng.normal(0, 0.1, n))
        if trial % 7 == 0:
            history[int(rng.integers(n))] = float("nan")  # skipped, like return_trend
        expected = _progress_by_numpy(history)
        assert derived.learning_progress(history) == expected, (trial, shape)
        seen.add(expected)
    assert seen == {None, "LEARNING", "PLATEAU", "REGRESSING"}


def test_learning_progress_hand_worked() -> None:
    assert derived.learning_progress([0.0] * 29) is None  # 2 × 15 finite returns needed
    rising = [0.1 * i for i in range(30)]
    assert derived.learning_progress(rising) == derived.LEARNING
    # Rose from 0 to 2 and holds at 2 ± 0.05: within the margin of its best, holding high.
    held = [0.0] * 15 + [2.0 + 0.05 * (-1) ** i for i in range(30)]
    assert derived.learning_progress(held) == derived.LEARNING
    # The same run dropping to 1.5: 0.5 below its best, more than 10% of the 2.0 gained.
    assert derived.learning_progress([*held, *[1.5 + 0.05 * (-1) ** i for i in range(15)]]) == "REGRESSING"
    # A dip of 0.1 (5% of what was gained, yet many standard errors) is not a regression.
    assert derived.learning_progress([*held, *[1.9 + 0.05 * (-1) ** i for i in range(15)]]) == "LEARNING"
    assert derived.learning_progress([0.05 * (-1) ** i for i in range(40)]) == derived.PLATEAU


def _settled_by_numpy(history: list[float], window: int = 15, t: float = 3.0) -> bool:
    """return_settled's definition (docs/metrics.md) written again with numpy."""
    v = np.asarray([x for x in history if np.isfinite(x)])
    if v.size < 2 * window:
        return False
    new, prev = v[-window:], v[-2 * window : -window]
    se_new = new.std(ddof=1) / np.sqrt(window)
    rise = new.mean() - prev.mean()
    rising = rise > t * np.hypot(se_new, prev.std(ddof=1) / np.sqrt(window))
    means = np.convolve(v, np.ones(window) / window, mode="valid")
    gained = means.max() - means[0]
    noise = t * np.sqrt(2) * se_new
    holding = gained > noise and new.mean() >= means.max() - max(noise, 0.1 * gained)
    return bool(holding and (not rising or rise <= 0.1 * gained))


def test_return_settled_matches_an_independent_numpy_computation() -> None:
    rng = np.random.default_rng(8)
    seen = set()
    for trial in range(300):
        n = int(rng.integers(25, 150))
        x = np.arange(n)
        shape = rng.choice(["rise", "flat", "saturating", "rise_then_drop"])
        level = {
            "rise": 0.03 * x,
            "flat": np.zeros(n),
            "saturating": 2.0 * (1 - np.exp(-x / 25.0)),
            "rise_then_drop": np.where(x < n // 2, 0.05 * x, 0.05 * (n // 2) - 0.04 * (x - n // 2)),
        }[shape]
        history = list(level + rng.normal(0, 0.05, n))
        if trial % 7 == 0:
            history[int(rng.integers(n))] = float("nan")
        expected = _settled_by_numpy(history)
        assert derived.return_settled(history) == expected, (trial, shape)
        seen.add((str(shape), expected))
    assert {("saturating", True), ("saturating", False), ("rise", False), ("flat", False)} <= seen


def test_return_settled_hand_worked() -> None:
    held = [0.0] * 15 + [2.0 + 0.05 * (-1) ** i for i in range(30)]
    assert derived.return_settled(held)  # rose 0 -> 2, holds at 2: settled
    assert not derived.return_settled(held[:29])  # 2 x 15 returns needed
    assert not derived.return_settled([0.1 * i for i in range(30)])  # climbing: 1.5 per window of a 2.25 gain
    # The last window 0.15 above the one before: significant, but 7% of the 2.15 gained: a creep.
    assert derived.return_settled([*held, *[2.15 + 0.05 * (-1) ** i for i in range(15)]])
    # 0.3 above it (14% of the 2.3 gained): still climbing.
    assert not derived.return_settled([*held, *[2.3 + 0.05 * (-1) ** i for i in range(15)]])
    assert not derived.return_settled([*held, *[1.5 + 0.05 * (-1) ** i for i in range(15)]])  # regressing
    assert not derived.return_settled([0.05 * (-1) ** i for i in range(40)])  # never learned: a plateau


def test_gradient_cv_while_learning_is_zero_once_the_return_settles() -> None:
    held = [0.0] * 15 + [2.0 + 0.05 * (-1) ** i for i in range(30)]
    assert derived.gradient_cv_while_learning(3.5, held) == 0.0
    assert derived.gradient_cv_while_learning(3.5, [0.1 * i for i in range(30)]) == 3.5
    assert derived.gradient_cv_while_learning(math.inf, [0.0] * 40) == math.inf  # never learned: judged
    assert derived.gradient_cv_while_learning(1.2, []) == 1.2


@pytest.mark.parametrize(
    ("train_steps", "measured_at", "age", "overdue"),
    [(20, 20, 0, False), (29, 20, 9, False), (30, 20, 10, True), (5, -1, None, False)],
)
def test_measurement_age(train_steps: int, measured_at: int, age: int | None, overdue: bool) -> None:
    assert derived.measurement_age(train_steps, measured_at) == age
    assert derived.measurement_overdue(age, 10) is overdue
