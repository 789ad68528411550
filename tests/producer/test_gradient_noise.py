"""The gradient noise estimator against hand-worked cases and synthetic problems of known noise-to-signal."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
import torch
from torch import nn

from producer.gradient_noise import EMA_WEIGHT, GradientNoise, NoiseScalePooler, measure_gradient_noise

torch.set_num_threads(1)

DIM = 4096
"""Parameters of the synthetic problem (split over two tensors)."""
BATCH = 64
"""Transitions per synthetic update: cv is the noise-to-signal ratio of a mean over this many."""
TOLERANCE = 0.10
"""Relative error allowed on a pooled cv. Measuring the whole batch (here in 4 groups of BATCH/4),
one measurement's |G|^2 estimate has a relative sd of about 0.008, 0.05, 0.16 and 0.59 for cv = 0.25, 1,
2, 4 (sqrt(2G/(G-1)) cv^2 / sqrt(d_eff) when noise dominates, d_eff ~ 2000 here); pooled over the counts
below the pooled cv's sd is 2.1% or less, so the tolerance is more than 4 sd."""


class Quadratic:
    """Per-transition loss 0.5 |w - x_i|^2 at w = 0 with x_i = -G + s * z_i, z_i ~ N(0, I).

    Per-transition gradients are G - s * z_i: true gradient G with |G| = 1 (or 0: pure noise) and
    covariance diag(s^2), scaled so that tr Sigma = cv^2 * BATCH, i.e. the mean gradient of BATCH
    transitions has noise norm cv * |G|. The scales s spread over e^-1..e^1 so Sigma is not isotropic.
    """

    def __init__(self, cv: float, seed: int, signal: float = 1.0) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        g = torch.randn(DIM, generator=self.gen)
        self.true_gradient = signal * g / g.norm()
        scales = torch.exp(torch.empty(DIM).uniform_(-1.0, 1.0, generator=self.gen))
        self.trace_sigma = (cv if signal else 1.0) ** 2 * BATCH
        self.scales = scales * math.sqrt(self.trace_sigma / float(scales.square().sum()))
        self.w1 = nn.Parameter(torch.zeros(DIM // 4))
        self.w2 = nn.Parameter(torch.zeros(DIM // 4 * 3 // 8, 8))
        self.unused = nn.Parameter(torch.zeros(3))
        self.params = [self.w1, self.w2, self.unused]
        self.x = torch.empty(0, DIM)

    def draw(self, n: int) -> None:
        self.x = -self.true_gradient + self.scales * torch.randn(n, DIM, generator=self.gen)

    def loss_of(self, rows: torch.Tensor) -> torch.Tensor:
        w = torch.cat((self.w1, self.w2.reshape(-1)))
        return 0.5 * (w - self.x[rows]).square().sum(1).mean()

    def measure(self, n_groups: int, group_size: int) -> GradientNoise:
        rows = torch.arange(n_groups * group_size).reshape(n_groups, group_size)
        return measure_gradient_noise(self.loss_of, self.params, list(rows), group_size)


def pooled(trace: list[float], signal: list[float]) -> tuple[float, float, float]:
    """Plain means of tr Sigma and |G|^2 and the cv they give for BATCH (inf when the signal is <= 0)."""
    t, s = float(np.mean(trace)), float(np.mean(signal))
    return t, s, (math.sqrt(t / (BATCH * s)) if s > 0 else math.inf)


def run(
    problem: Quadratic, n: int, n_groups: int = 4, group_size: int = BATCH // 4
) -> tuple[float, float, float]:
    trace, signal = [], []
    for _ in range(n):
        problem.draw(n_groups * group_size)
        m = problem.measure(n_groups, group_size)
        trace.append(float(m.trace_sigma))
        signal.append(float(m.signal_sq))
    return pooled(trace, signal)


def test_matches_the_papers_formulas_on_hand_picked_gradients() -> None:
    # loss_j = <w, v_j> has gradient v_j exactly: check against McCandlish et al.'s appendix A in numpy.
    v = np.array([[3.0, -1.0, 2.0], [1.0, 0.5, 2.5], [2.0, 0.0, -1.0], [4.0, -2.0, 1.5]])
    w = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    groups = list(torch.from_numpy(v))
    b = 5
    m = measure_gradient_noise(lambda vj: torch.dot(w, vj), [w], groups, b)
    big_b = len(v) * b
    small = np.mean(np.sum(v**2, axis=1))
    big = np.sum(v.mean(axis=0) ** 2)
    assert float(m.small_sq) == pytest.approx(small, rel=1e-12)
    assert float(m.big_sq) == pytest.approx(big, rel=1e-12)
    assert float(m.signal_sq) == pytest.approx((big_b * big - b * small) / (big_b - b), rel=1e-12)
    assert float(m.trace_sigma) == pytest.approx((small - big) / (1 / b - 1 / big_b), rel=1e-12)
    assert (m.group_size, m.total) == (5, 20)


@pytest.mark.parametrize(("cv", "n"), [(0.25, 100), (1.0, 100), (2.0, 100), (4.0, 200)])
def test_recovers_a_known_noise_to_signal_ratio(cv: float, n: int) -> None:
    problem = Quadratic(cv, seed=int(cv * 100))
    trace, signal, cv_hat = run(problem, n)
    assert cv_hat == pytest.approx(cv, rel=TOLERANCE)
    assert trace == pytest.approx(problem.trace_sigma, rel=TOLERANCE)
    assert signal == pytest.approx(1.0, rel=2 * TOLERANCE)


def test_pure_noise_reads_no_detectable_signal() -> None:
    # |G| = 0 and the noise of cv = 1: the pooled |G|^2 must be ~0 (sd about 0.0026 over 200), which
    # reads as cv >= 8 (6 sd) or +inf; a signal as small as that of cv = 4 would read 4.
    problem = Quadratic(1.0, seed=7, signal=0.0)
    trace, signal, cv_hat = run(problem, 200)
    assert trace == pytest.approx(problem.trace_sigma, rel=TOLERANCE)
    assert abs(signal) < trace / (64 * BATCH)
    assert cv_hat >= 8.0


def test_the_same_data_split_into_2_4_or_8_groups_gives_the_same_estimates() -> None:
    problem = Quadratic(1.0, seed=11)
    by_split: dict[int, tuple[list[float], list[float]]] = {g: ([], []) for g in (2, 4, 8)}
    for _ in range(150):
        problem.draw(BATCH)
        for g, (trace, signal) in by_split.items():
            m = problem.measure(g, BATCH // g)
            trace.append(float(m.trace_sigma))
            signal.append(float(m.signal_sq))
    results = {g: pooled(*lists) for g, lists in by_split.items()}
    for trace, signal, cv_hat in results.values():
        assert trace == pytest.approx(problem.trace_sigma, rel=TOLERANCE)
        assert signal == pytest.approx(1.0, rel=TOLERANCE)
        assert cv_hat == pytest.approx(1.0, rel=TOLERANCE)
    cvs = [cv for _, _, cv in results.values()]
    assert max(cvs) / min(cvs) < 1 + TOLERANCE


def test_leaves_every_grad_as_it_was() -> None:
    problem = Quadratic(1.0, seed=3)
    problem.draw(BATCH // 2)
    before = torch.full_like(problem.w1, 7.0)
    problem.w1.grad = before
    problem.w2.grad = None
    problem.measure(2, BATCH // 4)
    assert problem.w1.grad is before and torch.equal(before, torch.full_like(problem.w1, 7.0))
    assert problem.w2.grad is None and problem.unused.grad is None


def test_returns_tensors_without_reading_any_back(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = Quadratic(1.0, seed=5)
    problem.draw(BATCH // 2)

    def sync(*_: object) -> None:
        raise AssertionError("host sync inside measure_gradient_noise")

    for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    m = problem.measure(2, BATCH // 4)
    monkeypatch.undo()
    for value in (m.small_sq, m.big_sq, m.signal_sq, m.trace_sigma):
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype == torch.float32


def test_a_given_first_gradient_replaces_that_groups_pass() -> None:
    problem = Quadratic(1.0, seed=9)
    problem.draw(4 * 8)
    rows = list(torch.arange(32).reshape(4, 8))
    called: list[torch.Tensor] = []

    def loss_of(group: torch.Tensor) -> torch.Tensor:
        called.append(group)
        return problem.loss_of(group)

    problem.loss_of(rows[0]).backward()  # the trainer's own backward of its first minibatch
    first = [p.grad for p in problem.params]
    given = measure_gradient_noise(loss_of, problem.params, rows, 8, first_grads=first)
    assert [g.tolist() for g in called] == [r.tolist() for r in rows[1:]]
    full = measure_gradient_noise(problem.loss_of, problem.params, rows, 8)
    for name in ("small_sq", "big_sq", "signal_sq", "trace_sigma"):
        assert torch.allclose(getattr(given, name), getattr(full, name), rtol=1e-5), name
    with pytest.raises(ValueError, match="first_grads has 1 entries for 3 parameters"):
        measure_gradient_noise(loss_of, problem.params, rows, 8, first_grads=first[:1])


@pytest.mark.parametrize(
    ("groups", "size", "match"), [(1, 4, "at least 2 groups"), (2, 0, "group_size must be a positive")]
)
def test_rejects_a_partition_that_cannot_separate_noise(groups: int, size: int, match: str) -> None:
    problem = Quadratic(1.0, seed=1)
    problem.draw(8)
    with pytest.raises(ValueError, match=match):
        measure_gradient_noise(problem.loss_of, problem.params, list(torch.arange(groups)[:, None]), size)


def test_rejects_a_loss_that_is_not_a_scalar() -> None:
    w = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="0-d loss"):
        measure_gradient_noise(lambda _: w * 2.0, [w], [0, 1], 4)


def test_pooler_is_the_ratio_of_normalised_moving_averages() -> None:
    trace = [5.0, 8.0, 3.0, 6.5, 4.0]
    signal = [1.0, -0.5, 2.0, 0.25, 1.5]
    pooler = NoiseScalePooler()
    for t, s in zip(trace, signal, strict=True):
        assert pooler.add(t, s)
    w = EMA_WEIGHT
    weights = np.array([w * (1 - w) ** (len(trace) - 1 - k) for k in range(len(trace))])
    want_t = float(np.dot(weights, trace) / weights.sum())
    want_s = float(np.dot(weights, signal) / weights.sum())
    assert pooler.trace_sigma == pytest.approx(want_t, rel=1e-12)
    assert pooler.signal_sq == pytest.approx(want_s, rel=1e-12)
    reading = pooler.reading(batch=32)
    assert reading is not None and reading.batch == 32
    assert reading.b_simple == pytest.approx(want_t / want_s, rel=1e-12)
    assert reading.cv == pytest.approx(math.sqrt(want_t / want_s / 32), rel=1e-12)


def test_first_reading_is_the_first_measurement() -> None:
    pooler = NoiseScalePooler()
    assert pooler.reading(64) is None
    pooler.add(64.0, 1.0)
    reading = pooler.reading(64)
    assert reading is not None and (reading.b_simple, reading.cv) == (64.0, 1.0)


def test_one_undefined_measurement_does_not_flicker() -> None:
    pooler = NoiseScalePooler()
    for _ in range(10):
        pooler.add(64.0, 1.0)
    pooler.add(64.0, -0.5)  # this measurement alone has no defined cv
    reading = pooler.reading(64)
    keep = 1 - EMA_WEIGHT
    signal = (keep * (1 - keep**10) - EMA_WEIGHT * 0.5) / (1 - keep**11)  # 0.67: still a signal
    assert reading is not None and reading.cv == pytest.approx(math.sqrt(1 / signal), rel=1e-12)


def test_no_detectable_signal_is_plus_infinity_above_every_threshold() -> None:
    pooler = NoiseScalePooler()
    pooler.add(64.0, 0.5)
    pooler.add(64.0, -3.0)
    reading = pooler.reading(64)
    assert reading is not None and reading.b_simple == math.inf and reading.cv == math.inf
    assert reading.cv > 2.0  # the default alert fires on it; NaN would compare False
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode({"gradient_cv": reading.cv}))
    assert wire["gradient_cv"] == math.inf


def test_zero_noise_reads_zero() -> None:
    pooler = NoiseScalePooler()
    pooler.add(0.0, 2.0)
    reading = pooler.reading(16)
    assert reading is not None and (reading.b_simple, reading.cv) == (0.0, 0.0)


def test_pooler_skips_a_non_finite_measurement() -> None:
    pooler = NoiseScalePooler()
    pooler.add(10.0, 1.0)
    assert not pooler.add(math.nan, 1.0)
    assert not pooler.add(10.0, math.inf)
    assert pooler.count == 1 and (pooler.trace_sigma, pooler.signal_sq) == (10.0, 1.0)


@pytest.mark.parametrize("weight", [0.0, -0.1, 1.5])
def test_pooler_rejects_a_weight_outside_0_1(weight: float) -> None:
    with pytest.raises(ValueError, match="EMA weight"):
        NoiseScalePooler(weight)


def test_reading_rejects_an_empty_batch() -> None:
    pooler = NoiseScalePooler()
    pooler.add(1.0, 1.0)
    with pytest.raises(ValueError, match="batch"):
        pooler.reading(0)


def test_the_pooler_reads_nothing_before_min_count_measurements() -> None:
    pooler = NoiseScalePooler(min_count=3)
    readings = []
    for _ in range(3):
        pooler.add(4.0, 1.0)
        readings.append(pooler.reading(16))
    assert readings[:2] == [None, None]
    assert readings[2] is not None and readings[2].b_simple == pytest.approx(4.0)
    with pytest.raises(ValueError):
        NoiseScalePooler(min_count=0)
