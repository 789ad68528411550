"""Event and envelope factories shared by the bus tests (no sockets, no torch)."""

from __future__ import annotations

import time
from typing import Any

from testkit import events
from testkit.events import trainer_heads

from bus.contract import (
    BatchCompleted,
    Envelope,
    Event,
    Heartbeat,
    PPOUpdate,
    ReplayEnd,
    TrainingFinished,
    TrainingStarted,
)

HEADS = trainer_heads(slots=3)


def training_started(**overrides: Any) -> TrainingStarted:
    """testkit's run, but an MNIST host compiled on a GPU with three slots; ``overrides`` replace any."""
    fields: dict[str, Any] = {
        "task": "mnist",
        "host_params": 1_000_000,
        "slot_ids": ["slot_0", "slot_1", "slot_2"],
        "n_episodes": 100,
        "param_budget": 500_000,
        "policy_device": "cuda:0",
        "env_devices": ["cuda:0"] * 4,
        "compile_enabled": True,
        "compile_backend": "inductor",
        "compile_mode": "reduce-overhead",
        "action_heads": dict(HEADS),
        "world_size": 1,
        "rank": 0,
    }
    fields.update(overrides)
    return events.training_started(**fields)


def ppo_update(update: int = 1, **overrides: Any) -> PPOUpdate:
    fields: dict[str, Any] = {
        "update": update,
        "train_steps": update * 4,
        "env_steps": update * 512,
        "policy_loss": 0.1,
        "value_loss": 0.2,
        "entropy": 1.0,
        "grad_norm": 0.5,
        "kl_divergence": 0.01,
        "clip_fraction": 0.15,
        "clip_fraction_positive": 0.10,
        "clip_fraction_negative": 0.05,
        "gradient_cv": 0.42,
        "gradient_cv_step": 0,
        "cuda_memory_allocated_gb": 4.2,
        "cuda_memory_reserved_gb": 8.0,
        "cuda_memory_peak_gb": 6.5,
        "cuda_memory_fragmentation": 0.475,
        "cuda_memory_step": 0,
        "explained_variance": 0.3,
        "dead_layers": 1,
        "exploding_layers": 0,
        "total_layers": 14,
        "nan_grad_count": 0,
        "head_entropy": {name: 0.5 for name in HEADS},
        "head_grad_norm": {name: 0.1 for name in HEADS},
        "lr": 3e-4,
        "update_time_ms": 12.5,
    }
    fields.update(overrides)
    return PPOUpdate(**fields)


def batch_completed(update: int = 1, **overrides: Any) -> BatchCompleted:
    fields: dict[str, Any] = {
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
    fields.update(overrides)
    return BatchCompleted(**fields)


def heartbeat(**overrides: Any) -> Heartbeat:
    fields: dict[str, Any] = {
        "period_s": 1.0,
        "phase": "rollout",
        "update": 0,
        "uptime_s": 1.0,
        "dropped": 0,
        "dropped_since_last": 0,
        "sent": 0,
    }
    fields.update(overrides)
    return Heartbeat(**fields)


def training_finished(**overrides: Any) -> TrainingFinished:
    fields: dict[str, Any] = {"reason": "done", "updates": 10, "env_steps": 5120}
    fields.update(overrides)
    return TrainingFinished(**fields)


ALL_EVENTS: tuple[Event, ...] = (
    training_started(),
    ppo_update(),
    batch_completed(),
    heartbeat(),
    training_finished(reason="crashed", error="RuntimeError: boom"),
)


def envelope(
    seq: int, event: Event | None = None, run_id: str = "run-a", ts: float | None = None
) -> Envelope:
    """testkit's envelope, of a heartbeat unless ``event`` is given."""
    return events.envelope(seq, heartbeat() if event is None else event, run_id, ts)


def replay_end(last_seq: int, run_id: str = "run-a", count: int = 0) -> ReplayEnd:
    return ReplayEnd(replay_end=True, run_id=run_id, last_seq=last_seq, count=count)


def wait_until(predicate, timeout: float, step=None) -> bool:  # type: ignore[no-untyped-def]
    """Call ``step`` (if any) and check ``predicate`` until it holds or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if step is not None:
            step()
        if predicate():
            return True
        if step is None:
            time.sleep(0.01)
    return predicate()
