"""The folded view of one run that every consumer holds: plain dataclasses, no torch, no textual."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from bus.contract import TrainingStarted

HISTORY_LEN = 256
"""Samples kept per sparkline history; bounded so a consumer's memory is flat for days."""

GAP_RANGES_KEPT = 32

PPO_HISTORY_FIELDS = (
    "policy_loss",
    "value_loss",
    "entropy",
    "grad_norm",
    "kl_divergence",
    "clip_fraction",
    "explained_variance",
    "gradient_cv",
)


def _history() -> deque[float]:
    return deque(maxlen=HISTORY_LEN)


@dataclass
class InfrastructureMetrics:
    """CUDA memory (measured every few updates) and torch.compile status (from training_started)."""

    cuda_memory_allocated_gb: float = 0.0
    cuda_memory_reserved_gb: float = 0.0
    cuda_memory_peak_gb: float = 0.0
    cuda_memory_fragmentation: float = 0.0
    cuda_memory_step: int = -1
    compile_enabled: bool = False
    compile_backend: str = ""
    compile_mode: str = ""

    @property
    def memory_usage_percent(self) -> float:
        """Allocated as a share of reserved, in percent; 0.0 when nothing is reserved (no CUDA)."""
        if self.cuda_memory_reserved_gb <= 0:
            return 0.0
        return self.cuda_memory_allocated_gb / self.cuda_memory_reserved_gb * 100.0


@dataclass
class GradientQualityMetrics:
    """Minibatch-gradient CV (measured every few updates) and directional clip fractions (every update)."""

    gradient_cv: float = 0.0
    gradient_cv_step: int = -1
    clip_fraction_positive: float = 0.0
    clip_fraction_negative: float = 0.0


@dataclass
class TamiyoState:
    """The policy's training health as of the newest ppo_update."""

    ppo_data_received: bool = False
    update: int = 0
    train_steps: int = 0
    policy_loss: float = 0.0
    value_loss: float = 0.0
    entropy: float = 0.0
    grad_norm: float = 0.0
    kl_divergence: float = 0.0
    clip_fraction: float = 0.0
    explained_variance: float = 0.0
    dead_layers: int = 0
    exploding_layers: int = 0
    total_layers: int = 0
    nan_grad_count: int = 0
    lr: float = 0.0
    update_time_ms: float = 0.0
    head_entropy: dict[str, float] = field(default_factory=dict)
    head_grad_norm: dict[str, float] = field(default_factory=dict)
    infrastructure: InfrastructureMetrics = field(default_factory=InfrastructureMetrics)
    gradient_quality: GradientQualityMetrics = field(default_factory=GradientQualityMetrics)
    history: dict[str, deque[float]] = field(
        default_factory=lambda: {name: _history() for name in PPO_HISTORY_FIELDS}
    )


@dataclass
class RolloutState:
    """Environment progress as of the newest batch_completed."""

    batches: int = 0
    env_steps: int = 0
    fps: float = 0.0
    step_time_ms: float = 0.0
    episodes_completed: int = 0
    return_mean: float | None = None
    return_min: float | None = None
    return_max: float | None = None
    return_history: deque[float] = field(default_factory=_history)
    fps_history: deque[float] = field(default_factory=_history)


@dataclass
class RunInfo:
    """Which run this is and how far it has got."""

    run_id: str = ""
    started: TrainingStarted | None = None
    first_ts: float = 0.0
    finished: bool = False
    finish_reason: str = ""
    finish_error: str = ""


@dataclass
class DeliveryState:
    """What arrived, what was missed and when: the consumer's view of the bus itself."""

    events: int = 0
    last_seq: int = -1
    gaps: int = 0
    missed: int = 0
    gap_ranges: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=GAP_RANGES_KEPT))
    duplicates: int = 0
    last_event_at: float = 0.0
    last_heartbeat_at: float = 0.0
    heartbeat_period_s: float = 1.0
    producer_phase: str = ""
    producer_dropped: int = 0
    producer_uptime_s: float = 0.0
    last_ts: float = 0.0


@dataclass
class Snapshot:
    """Everything a consumer draws, archives or alerts on, for the current run."""

    run: RunInfo = field(default_factory=RunInfo)
    tamiyo: TamiyoState = field(default_factory=TamiyoState)
    rollout: RolloutState = field(default_factory=RolloutState)
    delivery: DeliveryState = field(default_factory=DeliveryState)
    runs_seen: int = 0

    @property
    def current_batch(self) -> int:
        return self.tamiyo.update
