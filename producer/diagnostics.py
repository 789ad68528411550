"""Tamiyo's PPO diagnostics, computed as tensors (no host sync) so an update syncs them once.

Names follow the feature plan: ``compute_directional_clip_fraction``,
``collect_cuda_memory_metrics``. gradient_cv comes from ``producer.gradient_noise``.
docs/metrics.md explains every one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from producer.gradient_noise import NoiseReading

DEAD_GRAD = 1e-6
"""A gradient element with |g| below this counts as dead."""
DEAD_FRACTION = 0.9
"""A parameter tensor is dead when more than this share of its gradient elements are dead."""
EXPLODING_GRAD = 10.0
"""A gradient element with |g| above this counts as exploding."""
EXPLODING_FRACTION = 0.1
"""A parameter tensor is exploding when more than this share of its elements explode."""

CUDA_MEMORY_KEYS = (
    "cuda_memory_allocated_gb",
    "cuda_memory_reserved_gb",
    "cuda_memory_peak_gb",
    "cuda_memory_fragmentation",
    "cuda_memory_total_gb",
    "cuda_memory_free_gb",
    "cuda_memory_inactive_split_gb",
    "cuda_alloc_retries",
    "cuda_ooms",
)
GRADIENT_NOISE_KEYS = ("gradient_cv", "gradient_noise_scale", "gradient_noise_batch")


def compute_directional_clip_fraction(
    ratio: torch.Tensor, clip_ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fractions of ratios r = pi_new / pi_old with r > 1 + eps (positive) and r < 1 - eps (negative)."""
    deviation = ratio - 1.0
    positive = (deviation > clip_ratio).float().mean()
    negative = (deviation < -clip_ratio).float().mean()
    return positive, negative


def collect_cuda_memory_metrics(device: torch.device | None = None) -> dict[str, float]:
    """Every ``CUDA_MEMORY_KEYS`` value (GB = 1e9 bytes, counts as floats); all present, 0.0 without CUDA.

    allocated/reserved/peak come from the caching allocator (peak: the largest allocation since the
    process started); fragmentation = 1 - allocated / reserved (0.0 when nothing is reserved).
    total/free are the device's, from ``cudaMemGetInfo`` (other processes' memory counts as used).
    inactive_split is the allocator's cached-but-unusable split blocks (``inactive_split_bytes``);
    alloc_retries and ooms are cumulative counts since the process started.
    """
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return dict.fromkeys(CUDA_MEMORY_KEYS, 0.0)
    allocated = torch.cuda.memory_allocated(device) / 1e9
    reserved = torch.cuda.memory_reserved(device) / 1e9
    free, total = torch.cuda.mem_get_info(device)
    stats = torch.cuda.memory_stats(device)
    return {
        "cuda_memory_allocated_gb": allocated,
        "cuda_memory_reserved_gb": reserved,
        "cuda_memory_peak_gb": torch.cuda.max_memory_allocated(device) / 1e9,
        "cuda_memory_fragmentation": 1.0 - allocated / reserved if reserved > 0 else 0.0,
        "cuda_memory_total_gb": total / 1e9,
        "cuda_memory_free_gb": free / 1e9,
        "cuda_memory_inactive_split_gb": stats.get("inactive_split_bytes.all.current", 0) / 1e9,
        "cuda_alloc_retries": float(stats.get("num_alloc_retries", 0)),
        "cuda_ooms": float(stats.get("num_ooms", 0)),
    }


@dataclass
class LayerHealth:
    """Dead and exploding parameter tensors, as 0-d tensors, out of ``total`` with a gradient."""

    dead: torch.Tensor
    exploding: torch.Tensor
    total: int


def compute_layer_health(parameters: Iterable[nn.Parameter]) -> LayerHealth:
    """Classify every parameter tensor that has a gradient (``total`` counts them)."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        zero = torch.zeros((), dtype=torch.long)
        return LayerHealth(zero, zero.clone(), 0)
    dead_share = torch.stack([(g.abs() < DEAD_GRAD).float().mean() for g in grads])
    exploding_share = torch.stack([(g.abs() > EXPLODING_GRAD).float().mean() for g in grads])
    return LayerHealth(
        dead=(dead_share > DEAD_FRACTION).sum(),
        exploding=(exploding_share > EXPLODING_FRACTION).sum(),
        total=len(grads),
    )


def compute_head_grad_norms(heads: Mapping[str, nn.Module]) -> torch.Tensor:
    """L2 norm of the gradient of each head's own parameters, in ``heads`` order (0 without grads)."""
    norms = []
    for head in heads.values():
        grads = [p.grad.detach() for p in head.parameters() if p.grad is not None]
        if grads:
            norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        else:
            norms.append(torch.zeros((), device=next(head.parameters()).device))
    return torch.stack(norms)


def to_host(values: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Named 0-d and 1-d tensors brought to the host in one sync: 0-d as a float, 1-d as a list."""
    flat = torch.cat([value.detach().double().reshape(-1) for value in values.values()]).tolist()
    host: dict[str, Any] = {}
    at = 0
    for name, value in values.items():
        n = value.numel()
        host[name] = flat[at] if value.dim() == 0 else flat[at : at + n]
        at += n
    return host


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - Var[target - predicted] / Var[target] (NaN when the target is constant), as a 0-d tensor."""
    var_target = target.var(correction=0)
    return 1.0 - (target - predicted).var(correction=0) / var_target


@dataclass
class ThrottledValues:
    """The latest measurement of the throttled diagnostics and the train_steps that took it (-1: never).

    Every ppo_update carries these values: on updates that do not measure, the last
    measured values are repeated with their step, never 0.0 stand-ins.
    """

    every: int
    gradient_noise: dict[str, float] = field(default_factory=lambda: dict.fromkeys(GRADIENT_NOISE_KEYS, 0.0))
    gradient_cv_step: int = -1
    cuda_memory: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CUDA_MEMORY_KEYS, 0.0))
    cuda_memory_step: int = -1

    def due(self, train_steps: int) -> bool:
        """Whether the update that starts with ``train_steps`` completed updates measures."""
        return train_steps % self.every == 0

    def record_gradient_noise(self, reading: NoiseReading, step: int) -> None:
        self.gradient_noise = {
            "gradient_cv": reading.cv,
            "gradient_noise_scale": reading.b_simple,
            "gradient_noise_batch": reading.batch,
        }
        self.gradient_cv_step = step

    def record_cuda_memory(self, values: Mapping[str, float], step: int) -> None:
        self.cuda_memory = {key: values[key] for key in CUDA_MEMORY_KEYS}
        self.cuda_memory_step = step

    def fields(self) -> dict[str, float | int]:
        """The PPOUpdate fields these values fill."""
        return {
            **self.gradient_noise,
            "gradient_noise_batch": int(self.gradient_noise["gradient_noise_batch"]),
            "gradient_cv_step": self.gradient_cv_step,
            **self.cuda_memory,
            "cuda_alloc_retries": int(self.cuda_memory["cuda_alloc_retries"]),
            "cuda_ooms": int(self.cuda_memory["cuda_ooms"]),
            "cuda_memory_step": self.cuda_memory_step,
        }
