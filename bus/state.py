"""The folded view of one run that every consumer holds: the contract's own events plus counters; no torch.

A run of several processes (torch.distributed) is held per rank in ``Snapshot.ranks``; the
rest of the ``Snapshot`` is the combined view (docs/metrics.md, "Ranks"), which for a
single-process run is exactly its one rank.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import msgspec

from bus.catalogue import Field, fields, history_fields, step_fields
from bus.contract import BatchCompleted, Heartbeat, PPOUpdate, TrainingFinished, TrainingStarted
from bus.derived import ReturnWindows, memory_usage_percent
from bus.straggler import StragglerScore

HISTORY_LEN = 256
"""Samples kept per sparkline history; bounded so a consumer's memory is flat for days."""

GAP_RANGES_KEPT = 32

RUNS_LEFT_KEPT = 16
"""Replaced runs remembered, so that their stragglers are dropped rather than taken as a new run."""

DEFAULT_HEARTBEAT_PERIOD_S = 1.0
"""The heartbeat period assumed before the first heartbeat, and for one whose ``period_s`` is absurd."""

HEARTBEAT_PERIOD_RANGE_S = (0.01, 60.0)
"""A ``period_s`` outside this range, or not finite, is absurd: liveness uses the default instead."""

PPO_HISTORY_FIELDS: tuple[str, ...] = history_fields(PPOUpdate)
"""The ppo_update fields the contract marks for a history (``history=True``)."""


def _history() -> deque[float]:
    return deque(maxlen=HISTORY_LEN)


def _placeholder(f: Field) -> object:
    if isinstance(f.type, msgspec.inspect.DictType):
        return {}
    return 0.0 if isinstance(f.type, msgspec.inspect.FloatType) else 0


NO_PPO_UPDATE = PPOUpdate(
    **{f.name: _placeholder(f) for f in fields(PPOUpdate) if f.required}
    | {name: -1 for name in step_fields(PPOUpdate)}  # -1: never measured, as on the wire
)
"""What ``TamiyoState.latest`` holds before the first ppo_update: zeros, throttled steps -1."""


@dataclass(frozen=True, slots=True)
class InfrastructureMetrics:
    """CUDA memory (measured every few updates) and torch.compile status: a view over the newest events."""

    ppo: PPOUpdate = NO_PPO_UPDATE
    started: TrainingStarted | None = None

    @property
    def cuda_memory_allocated_gb(self) -> float:
        return self.ppo.cuda_memory_allocated_gb

    @property
    def cuda_memory_reserved_gb(self) -> float:
        return self.ppo.cuda_memory_reserved_gb

    @property
    def cuda_memory_peak_gb(self) -> float:
        return self.ppo.cuda_memory_peak_gb

    @property
    def cuda_memory_fragmentation(self) -> float:
        return self.ppo.cuda_memory_fragmentation

    @property
    def cuda_memory_step(self) -> int:
        return self.ppo.cuda_memory_step

    @property
    def cuda_memory_total_gb(self) -> float:
        return self.ppo.cuda_memory_total_gb

    @property
    def cuda_memory_free_gb(self) -> float:
        return self.ppo.cuda_memory_free_gb

    @property
    def cuda_memory_inactive_split_gb(self) -> float:
        return self.ppo.cuda_memory_inactive_split_gb

    @property
    def cuda_alloc_retries(self) -> int:
        return self.ppo.cuda_alloc_retries

    @property
    def cuda_ooms(self) -> int:
        return self.ppo.cuda_ooms

    @property
    def compile_enabled(self) -> bool:
        return self.started is not None and self.started.compile_enabled

    @property
    def compile_backend(self) -> str:
        return self.started.compile_backend if self.started is not None else ""

    @property
    def compile_mode(self) -> str:
        return self.started.compile_mode if self.started is not None else ""

    @property
    def memory_usage_percent(self) -> float | None:
        """How full the GPU is, percent; None without CUDA (``bus.derived.memory_usage_percent``)."""
        return memory_usage_percent(self.ppo.cuda_memory_total_gb, self.ppo.cuda_memory_free_gb)


@dataclass(frozen=True, slots=True)
class GradientQualityMetrics:
    """Minibatch-gradient CV (measured every few updates) and directional clip fractions: a view."""

    ppo: PPOUpdate = NO_PPO_UPDATE

    @property
    def gradient_cv(self) -> float:
        return self.ppo.gradient_cv

    @property
    def gradient_cv_step(self) -> int:
        return self.ppo.gradient_cv_step

    @property
    def clip_fraction_positive(self) -> float:
        return self.ppo.clip_fraction_positive

    @property
    def clip_fraction_negative(self) -> float:
        return self.ppo.clip_fraction_negative


class TamiyoState:
    """The policy's training health: the newest ppo_update itself, plus bounded histories.

    Every ppo_update field reads straight through (``state.tamiyo.policy_loss`` is
    ``state.tamiyo.latest.policy_loss``), so a field added to the contract needs no change here.
    """

    __slots__ = ("_appends", "history", "latest", "ppo_data_received", "started")

    def __init__(self) -> None:
        self.latest: PPOUpdate = NO_PPO_UPDATE
        self.ppo_data_received = False
        self.started: TrainingStarted | None = None
        self.history: dict[str, deque[float]] = {name: _history() for name in PPO_HISTORY_FIELDS}
        self._appends = tuple((attrgetter(name), h.append) for name, h in self.history.items())

    def __getattr__(self, name: str) -> Any:
        if name in TamiyoState.__slots__:  # not set yet (a copy under construction): no recursion
            raise AttributeError(name)
        return getattr(self.latest, name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TamiyoState):
            return NotImplemented
        return (self.latest, self.ppo_data_received, self.started, self.history) == (
            other.latest,
            other.ppo_data_received,
            other.started,
            other.history,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TamiyoState(latest={self.latest!r}, ppo_data_received={self.ppo_data_received})"

    def record(self, ev: PPOUpdate) -> None:
        """Take ``ev`` as the newest update and extend the histories (the fold's one step)."""
        self.latest = ev
        self.ppo_data_received = True
        for get, append in self._appends:
            append(get(ev))

    @property
    def head_sizes(self) -> dict[str, int]:
        """Action-head sizes from training_started; empty until it has arrived."""
        return self.started.action_heads if self.started is not None else {}

    @property
    def infrastructure(self) -> InfrastructureMetrics:
        return InfrastructureMetrics(self.latest, self.started)

    @property
    def gradient_quality(self) -> GradientQualityMetrics:
        return GradientQualityMetrics(self.latest)


@dataclass
class RolloutState:
    """Environment progress: the newest batch_completed, the newest one with returns, and histories."""

    batches: int = 0
    env_steps: int = 0
    """The larger of the newest batch_completed's and ppo_update's."""
    latest: BatchCompleted | None = None
    latest_with_returns: BatchCompleted | None = None
    """Returns are carried from the last rollout in which an episode ended."""
    return_history: deque[float] = field(default_factory=_history)
    """The newest ``HISTORY_LEN`` batch returns (for sparklines and trends)."""
    return_windows: ReturnWindows = field(default_factory=ReturnWindows)
    """Every return since the run started, as ``learning_progress`` needs them (first and best window)."""
    fps_history: deque[float] = field(default_factory=_history)

    @property
    def fps(self) -> float:
        return self.latest.fps if self.latest is not None else 0.0

    @property
    def step_time_ms(self) -> float:
        return self.latest.step_time_ms if self.latest is not None else 0.0

    @property
    def episodes_completed(self) -> int:
        return self.latest.episodes_completed if self.latest is not None else 0

    @property
    def return_mean(self) -> float | None:
        return self.latest_with_returns.return_mean if self.latest_with_returns is not None else None

    @property
    def return_min(self) -> float | None:
        return self.latest_with_returns.return_min if self.latest_with_returns is not None else None

    @property
    def return_max(self) -> float | None:
        return self.latest_with_returns.return_max if self.latest_with_returns is not None else None


@dataclass
class RunInfo:
    """Which run this is and how far it has got."""

    run_id: str = ""
    started: TrainingStarted | None = None
    first_ts: float = 0.0
    finish: TrainingFinished | None = None

    @property
    def finished(self) -> bool:
        return self.finish is not None

    @property
    def finish_reason(self) -> str:
        return self.finish.reason if self.finish is not None else ""

    @property
    def finish_error(self) -> str:
        return self.finish.error if self.finish is not None else ""


@dataclass
class DeliveryState:
    """What arrived, what was missed and when: the consumer's view of the bus itself."""

    events: int = 0
    last_seq: int = -1
    gaps: int = 0
    missed: int = 0
    gap_ranges: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=GAP_RANGES_KEPT))
    duplicates: int = 0
    stale: int = 0
    """Messages of a run this consumer has left for a newer one, dropped."""
    last_event_at: float = 0.0
    last_heartbeat_at: float = 0.0
    heartbeat: Heartbeat | None = None
    producer_phase: str = ""
    """The newest heartbeat's phase, or ``finished`` once training_finished has arrived."""

    producer_dropped: int = 0
    """Events the producer dropped (the newest heartbeat's ``dropped``; summed over ranks when combined)."""

    @property
    def heartbeat_period_s(self) -> float:
        """The newest heartbeat's period; ``DEFAULT_HEARTBEAT_PERIOD_S`` before one, or when it is absurd."""
        period = self.heartbeat.period_s if self.heartbeat is not None else DEFAULT_HEARTBEAT_PERIOD_S
        low, high = HEARTBEAT_PERIOD_RANGE_S
        return period if math.isfinite(period) and low <= period <= high else DEFAULT_HEARTBEAT_PERIOD_S

    @property
    def producer_uptime_s(self) -> float:
        return self.heartbeat.uptime_s if self.heartbeat is not None else 0.0


@dataclass
class RankState:
    """One rank's own view: its policy numbers, rollouts, delivery, finish and straggler score."""

    rank: int
    tamiyo: TamiyoState = field(default_factory=TamiyoState)
    rollout: RolloutState = field(default_factory=RolloutState)
    delivery: DeliveryState = field(default_factory=DeliveryState)
    finish: TrainingFinished | None = None
    straggler: StragglerScore = field(default_factory=StragglerScore)


@dataclass
class Snapshot:
    """Everything a consumer draws, archives or alerts on, for the current run.

    ``ranks`` holds every rank heard from; ``tamiyo``, ``rollout``, ``delivery`` and ``run`` are
    the combined view: the policy as the lowest rank sees it, rollouts and counters summed.
    """

    run: RunInfo = field(default_factory=RunInfo)
    tamiyo: TamiyoState = field(default_factory=TamiyoState)
    rollout: RolloutState = field(default_factory=RolloutState)
    delivery: DeliveryState = field(default_factory=DeliveryState)
    runs_seen: int = 0
    ranks: dict[int, RankState] = field(default_factory=dict)
    left_runs: deque[str] = field(default_factory=lambda: deque(maxlen=RUNS_LEFT_KEPT))
    """The runs replaced by a newer one, newest last: their stragglers are dropped (``delivery.stale``)."""

    @property
    def lead_rank(self) -> int:
        """The lowest rank heard from (rank 0 of a torchrun job); 0 before any."""
        return min(self.ranks, default=0)

    @property
    def world_size(self) -> int:
        """Ranks in the job: training_started's ``world_size``, or the ranks heard from if more."""
        declared = self.run.started.world_size if self.run.started is not None else 1
        return max(declared, len(self.ranks))
