"""The bus tests' run: testkit's factories for an MNIST host on a GPU with three slots."""

from __future__ import annotations

from typing import Any

from testkit import events
from testkit.events import (
    batch_completed,
    heartbeat,
    replay_end,
    trainer_heads,
    training_finished,
)

from bus.contract import Envelope, Event, PPOUpdate, TrainingStarted

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


def envelope(
    seq: int, event: Event | None = None, run_id: str = "run-a", ts: float | None = None, rank: int = 0
) -> Envelope:
    """testkit's envelope, of a heartbeat unless ``event`` is given."""
    return events.envelope(seq, heartbeat() if event is None else event, run_id, ts, rank)


def ppo_update(update: int = 1, **overrides: Any) -> PPOUpdate:
    """testkit's update over this module's three-slot heads."""
    return events.ppo_update(update, HEADS, **overrides)


ALL_EVENTS: tuple[Event, ...] = (
    training_started(),
    ppo_update(),
    batch_completed(),
    heartbeat(),
    training_finished(reason="crashed", error="RuntimeError: boom"),
)


__all__ = [
    "ALL_EVENTS",
    "HEADS",
    "batch_completed",
    "envelope",
    "heartbeat",
    "ppo_update",
    "replay_end",
    "training_finished",
    "training_started",
]
