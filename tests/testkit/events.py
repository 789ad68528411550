"""Synthetic contract events shared by the test folders: real bus.contract Structs, any field overridable."""

from __future__ import annotations

from typing import Any

from bus.contract import SCHEMA_VERSION, Envelope, Event, TrainingStarted

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
    fields: dict[str, Any] = {
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
    fields.update(overrides)
    return TrainingStarted(**fields)


def envelope(seq: int, event: Event, run_id: str = "run-a", ts: float | None = None) -> Envelope:
    """``event`` as message ``seq`` of ``run_id``, sent at ``ts`` (by default T0 + seq)."""
    return Envelope(
        schema=SCHEMA_VERSION, run_id=run_id, seq=seq, ts=T0 + seq if ts is None else ts, event=event
    )
