"""Each diagnostic against an independent computation (numpy or a plain loop)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from producer.diagnostics import (
    CUDA_MEMORY_KEYS,
    ThrottledValues,
    collect_cuda_memory_metrics,
    compute_directional_clip_fraction,
    compute_head_grad_norms,
    compute_layer_health,
    explained_variance,
    to_host,
)
from producer.env import action_heads
from producer.gradient_noise import NoiseReading
from producer.model import Policy

torch.set_num_threads(1)


def test_directional_clip_fraction_seed_case() -> None:
    ratio = torch.tensor([0.5, 0.9, 1.0, 1.1, 1.5, 2.0])
    pos, neg = compute_directional_clip_fraction(ratio, 0.2)
    assert isinstance(pos, torch.Tensor) and isinstance(neg, torch.Tensor)
    assert abs(float(pos) - 2 / 6) < 1e-6
    assert abs(float(neg) - 1 / 6) < 1e-6


def test_directional_clip_fraction_against_numpy() -> None:
    gen = torch.Generator().manual_seed(3)
    ratio = torch.exp(0.3 * torch.randn(1000, generator=gen))
    # Values at exactly 1 +/- eps are not clipped (strict inequalities).
    ratio[:4] = torch.tensor([1.25, 0.75, 1.0, 1.0])
    pos, neg = compute_directional_clip_fraction(ratio, 0.25)
    r = ratio.numpy().astype(np.float64)
    assert float(pos) == pytest.approx(np.mean(r - 1 > 0.25), abs=1e-6)
    assert float(neg) == pytest.approx(np.mean(r - 1 < -0.25), abs=1e-6)
    total = float(((ratio - 1).abs() > 0.25).float().mean())
    assert float(pos) + float(neg) == pytest.approx(total, abs=1e-6)


def test_cuda_memory_metrics_always_has_all_keys() -> None:
    for device in (None, torch.device("cpu")):
        metrics = collect_cuda_memory_metrics(device)
        assert set(metrics) == set(CUDA_MEMORY_KEYS)
        assert all(metrics[key] == 0.0 for key in CUDA_MEMORY_KEYS)


class FakeCuda:
    """torch.cuda as the collector sees it on a device with known allocator figures (bytes)."""

    GB = 1_000_000_000

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def memory_allocated(device: torch.device) -> int:
        return 3 * FakeCuda.GB

    @staticmethod
    def memory_reserved(device: torch.device) -> int:
        return 4 * FakeCuda.GB

    @staticmethod
    def max_memory_allocated(device: torch.device) -> int:
        return 5 * FakeCuda.GB

    @staticmethod
    def mem_get_info(device: torch.device) -> tuple[int, int]:
        return 30 * FakeCuda.GB, 80 * FakeCuda.GB  # (free, total), as cudaMemGetInfo

    @staticmethod
    def memory_stats(device: torch.device) -> dict[str, int]:
        return {
            "inactive_split_bytes.all.current": FakeCuda.GB // 4,
            "num_alloc_retries": 7,
            "num_ooms": 2,
            "allocated_bytes.all.current": 3 * FakeCuda.GB,
        }


def test_cuda_memory_metrics_read_the_device_and_the_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "cuda", FakeCuda)
    metrics = collect_cuda_memory_metrics(torch.device("cuda", 0))
    assert set(metrics) == set(CUDA_MEMORY_KEYS)
    assert metrics == {
        "cuda_memory_allocated_gb": 3.0,
        "cuda_memory_reserved_gb": 4.0,
        "cuda_memory_peak_gb": 5.0,
        "cuda_memory_fragmentation": pytest.approx(0.25),
        "cuda_memory_total_gb": 80.0,
        "cuda_memory_free_gb": 30.0,
        "cuda_memory_inactive_split_gb": 0.25,
        "cuda_alloc_retries": 7.0,
        "cuda_ooms": 2.0,
    }
    # the feature plan's memory_usage_percent, (total - free) / total: 62.5% in use
    used = (
        100
        * (metrics["cuda_memory_total_gb"] - metrics["cuda_memory_free_gb"])
        / metrics["cuda_memory_total_gb"]
    )
    assert used == pytest.approx(62.5)


def test_cuda_memory_metrics_without_an_allocator_history(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh process: nothing reserved, no stats keys yet; every value 0, no division by zero.
    class Fresh(FakeCuda):
        memory_allocated = memory_reserved = max_memory_allocated = staticmethod(lambda device: 0)
        memory_stats = staticmethod(lambda device: {})

    monkeypatch.setattr(torch, "cuda", Fresh)
    metrics = collect_cuda_memory_metrics(torch.device("cuda"))
    assert metrics["cuda_memory_fragmentation"] == 0.0 and metrics["cuda_alloc_retries"] == 0.0
    assert metrics["cuda_memory_inactive_split_gb"] == 0.0 and metrics["cuda_memory_total_gb"] == 80.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_memory_metrics_on_cuda() -> None:
    device = torch.device("cuda")
    block = torch.ones(1 << 20, device=device)
    metrics = collect_cuda_memory_metrics(device)
    assert metrics["cuda_memory_allocated_gb"] >= block.numel() * 4 / 1e9
    assert metrics["cuda_memory_reserved_gb"] >= metrics["cuda_memory_allocated_gb"]
    assert metrics["cuda_memory_peak_gb"] >= metrics["cuda_memory_allocated_gb"]
    expected = 1 - metrics["cuda_memory_allocated_gb"] / metrics["cuda_memory_reserved_gb"]
    assert metrics["cuda_memory_fragmentation"] == pytest.approx(expected)
    assert 0.0 <= metrics["cuda_memory_fragmentation"] <= 1.0
    assert 0.0 < metrics["cuda_memory_free_gb"] <= metrics["cuda_memory_total_gb"]
    assert metrics["cuda_memory_reserved_gb"] <= metrics["cuda_memory_total_gb"]


def _naive_layer_health(grads: list[np.ndarray | None]) -> tuple[int, int, int]:
    dead = exploding = total = 0
    for g in grads:
        if g is None:
            continue
        total += 1
        flat = g.ravel().tolist()
        if sum(1 for x in flat if abs(x) < 1e-6) / len(flat) > 0.9:
            dead += 1
        if sum(1 for x in flat if abs(x) > 10) / len(flat) > 0.1:
            exploding += 1
    return dead, exploding, total


def test_layer_health_against_a_loop() -> None:
    gen = torch.Generator().manual_seed(5)
    params = [nn.Parameter(torch.zeros(n)) for n in (100, 100, 50, 40, 30, 7)]
    healthy = torch.randn(100, generator=gen)
    dead = torch.zeros(100)
    dead[:5] = 1.0  # 95% dead
    exploding = torch.randn(50, generator=gen)
    exploding[:10] = 100.0  # 20% above 10
    borderline = torch.zeros(40)
    borderline[:4] = 1.0  # exactly 90% dead: not more than 90%
    with_nan = torch.randn(30, generator=gen)
    with_nan[3] = float("nan")
    with_nan[4] = float("inf")
    for p, g in zip(params, (healthy, dead, exploding, borderline, with_nan), strict=False):
        p.grad = g
    # params[5] has no gradient and does not count.
    health = compute_layer_health(params)
    expected = _naive_layer_health([None if p.grad is None else p.grad.numpy() for p in params])
    got = (int(health.dead), int(health.exploding), health.total)
    assert got == expected == (1, 1, 5)


def test_total_layers_counts_the_policy_parameters() -> None:
    heads = action_heads(3)
    policy = Policy(20, heads, hidden=16)
    out = policy.critic(torch.randn(4, 16)).sum()
    for head in policy.actor.values():
        out = out + head(torch.randn(4, 16)).sum()
    out.backward()
    n_with_grad = sum(1 for p in policy.parameters() if p.grad is not None)
    assert compute_layer_health(policy.parameters()).total == n_with_grad == 2 * len(heads) + 2


def test_head_grad_norms_against_numpy() -> None:
    heads = nn.ModuleDict({"a": nn.Linear(4, 3), "b": nn.Linear(4, 2), "c": nn.Linear(4, 5)})
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    (heads["a"](x).pow(2).sum() + 3 * heads["b"](x).sum()).backward()
    norms = compute_head_grad_norms(heads).tolist()
    for name, got in zip(heads, norms, strict=True):
        grads = [p.grad.numpy().ravel() for p in heads[name].parameters() if p.grad is not None]
        expected = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads)) if grads else 0.0
        assert got == pytest.approx(expected, rel=1e-5)
    assert norms[2] == 0.0


def test_explained_variance_against_numpy() -> None:
    rng = np.random.default_rng(0)
    target = rng.normal(size=200)
    predicted = target + rng.normal(scale=0.5, size=200)
    expected = 1 - np.var(target - predicted) / np.var(target)
    got = float(explained_variance(torch.tensor(predicted), torch.tensor(target)))
    assert got == pytest.approx(expected, rel=1e-9)
    assert float(explained_variance(torch.tensor(target), torch.tensor(target))) == 1.0


def test_head_entropy_and_masked_logprob_against_numpy() -> None:
    heads = action_heads(3)
    policy = Policy(10, heads, hidden=8)
    core = torch.randn(5, 8, generator=torch.Generator().manual_seed(4))
    actions = torch.stack([torch.randint(n, (5,)) for n in heads.values()], dim=-1)
    actions[:, 0] = torch.tensor([0, 1, 2, 3, 5])  # WAIT, GERMINATE, ADVANCE, FOSSILIZE, SET_ALPHA
    with torch.no_grad():
        logprob, head_entropy, _ = policy.heads_out(core, actions)
    uses = {
        0: {"op"},
        1: {"op", "slot", "blueprint", "style", "tempo"},
        2: {"op", "slot", "alpha_target", "alpha_speed", "alpha_curve"},
        3: {"op", "slot"},
        5: {"op", "slot", "alpha_target", "alpha_speed", "alpha_curve"},
    }
    for row in range(5):
        expected_lp = 0.0
        for h, (name, head) in enumerate(policy.actor.items()):
            logits = head(core[row]).detach().numpy().astype(np.float64)
            logp = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
            entropy = -(np.exp(logp) * logp).sum()
            assert float(head_entropy[row, h]) == pytest.approx(entropy, rel=1e-5)
            if name in uses[int(actions[row, 0])]:
                expected_lp += logp[int(actions[row, h])]
        assert float(logprob[row]) == pytest.approx(expected_lp, rel=1e-5)


def test_throttled_values_measure_on_schedule_and_carry() -> None:
    t = ThrottledValues(every=10)
    assert [s for s in range(25) if t.due(s)] == [0, 10, 20]
    assert t.fields()["gradient_cv_step"] == -1 and t.fields()["cuda_memory_step"] == -1
    t.record_gradient_noise(NoiseReading(b_simple=2048.0, batch=512), 1)
    t.record_cuda_memory(dict.fromkeys(CUDA_MEMORY_KEYS, 3.0), 1)
    carried = t.fields()
    assert carried["gradient_cv"] == 2.0 and carried["gradient_cv_step"] == 1
    assert carried["gradient_noise_scale"] == 2048.0 and carried["gradient_noise_batch"] == 512
    assert carried["cuda_memory_allocated_gb"] == 3.0 and carried["cuda_memory_step"] == 1
    assert carried["cuda_alloc_retries"] == carried["cuda_ooms"] == 3
    assert isinstance(carried["cuda_alloc_retries"], int) and isinstance(carried["gradient_noise_batch"], int)
    keys = {"gradient_cv", "gradient_noise_scale", "gradient_noise_batch", "gradient_cv_step"}
    assert set(carried) == keys | {*CUDA_MEMORY_KEYS, "cuda_memory_step"}


def test_to_host_names_every_value_in_one_sync() -> None:
    values = {
        "loss": torch.tensor(0.25),
        "per_head": torch.tensor([1.0, 2.0, 3.0]),
        "count": torch.tensor(7),
        "single": torch.tensor([4.5]),
    }
    host = to_host(values)
    assert host == {"loss": 0.25, "per_head": [1.0, 2.0, 3.0], "count": 7.0, "single": [4.5]}
    assert isinstance(host["loss"], float)
    assert to_host({"x": torch.tensor(0.1)})["x"] == float(np.float32(0.1))  # float32 widened, not rounded
