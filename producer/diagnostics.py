"""Tamiyo's PPO diagnostics, computed as tensors (no host sync) so an update syncs them once.

Names follow the feature plan: ``compute_directional_clip_fraction``,
``collect_cuda_memory_metrics``, ``compute_gradient_cv``. docs/metrics.md explains every one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

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
)


def compute_directional_clip_fraction(
    ratio: torch.Tensor, clip_ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fractions of ratios r = pi_new / pi_old with r > 1 + eps (positive) and r < 1 - eps (negative)."""
    deviation = ratio - 1.0
    positive = (deviation > clip_ratio).float().mean()
    negative = (deviation < -clip_ratio).float().mean()
    return positive, negative


def collect_cuda_memory_metrics(device: torch.device | None = None) -> dict[str, float]:
    """The four ``cuda_memory_*`` values in GB (1e9 bytes); all present, and 0.0 without CUDA.

    fragmentation = 1 - allocated / reserved (0.0 when nothing is reserved). Peak is the
    largest allocation since the process started.
    """
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return dict.fromkeys(CUDA_MEMORY_KEYS, 0.0)
    allocated = torch.cuda.memory_allocated(device) / 1e9
    reserved = torch.cuda.memory_reserved(device) / 1e9
    peak = torch.cuda.max_memory_allocated(device) / 1e9
    return {
        "cuda_memory_allocated_gb": allocated,
        "cuda_memory_reserved_gb": reserved,
        "cuda_memory_peak_gb": peak,
        "cuda_memory_fragmentation": 1.0 - allocated / reserved if reserved > 0 else 0.0,
    }


def compute_gradient_cv(minibatch_grads: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Coefficient of variation of the minibatch gradient vector over K >= 2 minibatches of one update.

    cv = sqrt(sum_i Var_k[g_k,i]) / ||mean_k g_k||: the noise norm over the signal norm.
    Var is the sample variance (divisor K - 1), an unbiased estimate of each coordinate's
    variance across minibatches. Identical gradients give 0; zero-mean noise gives about
    sqrt(K); 0/0 (all gradients zero) gives 0 and noise over an exactly zero mean gives inf.
    Returns a 0-d tensor on the gradients' device, in their dtype (no host sync).
    """
    grads = (
        minibatch_grads if isinstance(minibatch_grads, torch.Tensor) else torch.stack(list(minibatch_grads))
    )
    if grads.dim() != 2 or grads.shape[0] < 2:
        raise ValueError(f"need a (K >= 2, P) stack of minibatch gradients, got shape {tuple(grads.shape)}")
    mean = grads.mean(dim=0)
    # sum_i Var_k[g_k,i] = ||G - mean||_F^2 / (K - 1): one elementwise pass, no strided reduction.
    noise = torch.linalg.vector_norm(grads - mean) / math.sqrt(grads.shape[0] - 1)
    signal = torch.linalg.vector_norm(mean)
    zero_or_inf = torch.where(noise > 0, torch.inf, 0.0).to(noise)
    return torch.where(signal > 0, noise / signal, zero_or_inf)


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
    gradient_cv: float = 0.0
    gradient_cv_step: int = -1
    cuda_memory: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CUDA_MEMORY_KEYS, 0.0))
    cuda_memory_step: int = -1

    def due(self, train_steps: int) -> bool:
        """Whether the update that starts with ``train_steps`` completed updates measures."""
        return train_steps % self.every == 0

    def record_gradient_cv(self, value: float, step: int) -> None:
        self.gradient_cv = value
        self.gradient_cv_step = step

    def record_cuda_memory(self, values: Mapping[str, float], step: int) -> None:
        self.cuda_memory = {key: values[key] for key in CUDA_MEMORY_KEYS}
        self.cuda_memory_step = step

    def fields(self) -> dict[str, float | int]:
        """The PPOUpdate fields these values fill."""
        return {
            "gradient_cv": self.gradient_cv,
            "gradient_cv_step": self.gradient_cv_step,
            **self.cuda_memory,
            "cuda_memory_step": self.cuda_memory_step,
        }
