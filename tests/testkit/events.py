"""Synthetic contract events shared by the test folders, built from the contract; any field overridable."""

from __future__ import annotations

from typing import Any

import msgspec

from bus.catalogue import fields
from bus.contract import (
    SCHEMA_VERSION,
    BatchCompleted,
    Envelope,
    Event,
    Heartbeat,
    PPOUpdate,
    ReplayEnd,
    TrainingFinished,
    TrainingStarted,
)

T0 = 1_700_000_000.0
"""The timestamp synthetic runs start at."""


def trainer_heads(slots: int = 4) -> dict[str, int]:
    """The trainer's eight action heads and their sizes, for a host with ``slots`` seed slots."""
    return {
        "op": 6,
        "slot": slots,
        "blueprint": 13,
        "style": 4,
        "tempo": 3,
        "alpha_target": 3,
        "alpha_speed": 4,
        "alpha_curve": 5,
    }


HEADS = trainer_heads()


def training_started(**overrides: Any) -> TrainingStarted:
    """A small CPU run of the simulated Tamiyo task over four slots; ``overrides`` replace any field."""
    values: dict[str, Any] = {
        "n_envs": 4,
        "max_epochs": 25,
        "task": "tamiyo-sim",
        "host_params": 120_000,
        "slot_ids": ["r0c0", "r0c1", "r1c0", "r1c1"],
        "seed": 42,
        "n_episodes": 0,
        "lr": 3e-4,
        "clip_ratio": 0.2,
        "entropy_coef": 0.01,
        "param_budget": 200_000,
        "policy_device": "cpu",
        "env_devices": ["cpu"],
        "reward_mode": "shaped",
        "action_heads": dict(HEADS),
    }
    return build(TrainingStarted, values, overrides)


def _filler(t: msgspec.inspect.Type) -> Any:
    if isinstance(t, msgspec.inspect.DictType):
        return {}
    if isinstance(t, msgspec.inspect.ListType):
        return []
    if isinstance(t, msgspec.inspect.LiteralType):
        return t.values[0]
    names = {msgspec.inspect.FloatType: 0.0, msgspec.inspect.StrType: "", msgspec.inspect.BoolType: False}
    return names.get(type(t), 0)


def build(kind: type[Any], sample: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """``kind`` from ``sample`` and ``overrides``; a required field in neither gets a zero of its type.

    Fields with a default keep the contract's default unless given, so a new field (always
    added with a default) needs no change here.
    """
    values = {f.name: _filler(f.type) for f in fields(kind) if f.required and f.name not in sample}
    values.update(sample)
    values.update(overrides)
    return kind(**values)


PPO_SAMPLE: dict[str, Any] = {
    "policy_loss": 0.1,
    "value_loss": 0.2,
    "entropy": 1.0,
    "grad_norm": 0.5,
    "kl_divergence": 0.01,
    "clip_fraction": 0.15,
    "clip_fraction_positive": 0.10,
    "clip_fraction_negative": 0.05,
    "gradient_cv": 0.42,
    "cuda_memory_allocated_gb": 4.2,
    "cuda_memory_reserved_gb": 8.0,
    "cuda_memory_peak_gb": 6.5,
    "cuda_memory_fragmentation": 0.475,
    "explained_variance": 0.3,
    "dead_layers": 1,
    "total_layers": 14,
    "lr": 3e-4,
    "update_time_ms": 12.5,
}
"""Plausible values of a healthy update (every other required field is zero)."""


def ppo_update(update: int = 1, heads: dict[str, int] | None = None, **overrides: Any) -> PPOUpdate:
    """Update ``update`` of a healthy run over ``heads`` (every head at entropy 0.5, grad norm 0.1)."""
    names = HEADS if heads is None else heads
    sample = {
        **PPO_SAMPLE,
        "update": update,
        "train_steps": update * 4,
        "env_steps": update * 512,
        "head_entropy": {name: 0.5 for name in names},
        "head_grad_norm": {name: 0.1 for name in names},
    }
    return build(PPOUpdate, sample, overrides)


def batch_completed(update: int = 1, **overrides: Any) -> BatchCompleted:
    sample = {
        "update": update,
        "env_steps": update * 512,
        "fps": 1000.0 + update,
        "step_time_ms": 0.5,
        "episodes_completed": update * 2,
        "episodes": 2,
        "return_mean": float(update),
        "return_min": update - 1.0,
        "return_max": update + 1.0,
    }
    return build(BatchCompleted, sample, overrides)


def heartbeat(**overrides: Any) -> Heartbeat:
    return build(Heartbeat, {"period_s": 1.0, "phase": "rollout", "uptime_s": 1.0}, overrides)


def training_finished(**overrides: Any) -> TrainingFinished:
    return build(TrainingFinished, {"reason": "done", "updates": 10, "env_steps": 5120}, overrides)


def replay_end(last_seq: int, run_id: str = "run-a", count: int = 0, rank: int = 0) -> ReplayEnd:
    return ReplayEnd(replay_end=True, run_id=run_id, last_seq=last_seq, count=count, rank=rank)


def envelope(
    seq: int, event: Event, run_id: str = "run-a", ts: float | None = None, rank: int = 0
) -> Envelope:
    """``event`` as message ``seq`` of ``run_id``'s ``rank``, sent at ``ts`` (by default T0 + seq)."""
    return Envelope(
        schema=SCHEMA_VERSION,
        run_id=run_id,
        seq=seq,
        ts=T0 + seq if ts is None else ts,
        event=event,
        rank=rank,
    )
