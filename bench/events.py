"""Realistic events for the benchmarks: the sizes and field counts of a real Tamiyo run."""

from __future__ import annotations

import random
from typing import Any

import msgspec

from bus.catalogue import fields, step_fields
from bus.contract import SCHEMA_VERSION, BatchCompleted, Envelope, Heartbeat, PPOUpdate

HEADS = {
    "op": 6,
    "slot": 3,
    "blueprint": 13,
    "style": 4,
    "tempo": 3,
    "alpha_target": 3,
    "alpha_speed": 4,
    "alpha_curve": 5,
}


_PPO_FIELDS = fields(PPOUpdate)
_STEPS = step_fields(PPOUpdate)


def ppo_update(i: int, rng: random.Random) -> PPOUpdate:
    """Every field of the contract filled by its type: random floats and per-head maps, small counts."""
    values: dict[str, Any] = {}
    for f in _PPO_FIELDS:
        if isinstance(f.type, msgspec.inspect.DictType):
            values[f.name] = {h: rng.random() for h in HEADS}
        elif isinstance(f.type, msgspec.inspect.FloatType):
            values[f.name] = rng.random()
        elif f.name in _STEPS:
            values[f.name] = i - i % 10
        elif isinstance(f.type, msgspec.inspect.IntType):
            values[f.name] = 0
    values.update(update=i, train_steps=i, env_steps=i * 2048, total_layers=24)
    return PPOUpdate(**values)


def batch_completed(i: int, rng: random.Random) -> BatchCompleted:
    return BatchCompleted(
        update=i,
        env_steps=i * 2048,
        fps=5000 + rng.random(),
        step_time_ms=0.2,
        episodes_completed=i * 8,
        episodes=8,
        return_mean=rng.gauss(1, 1),
        return_min=-1.0,
        return_max=3.0,
    )


def heartbeat(i: int) -> Heartbeat:
    return Heartbeat(
        period_s=1.0, phase="update", update=i, uptime_s=float(i), dropped=0, dropped_since_last=0, sent=i
    )


def mixed_envelopes(n: int, run_id: str = "bench", seed: int = 0) -> list[Envelope]:
    """``n`` envelopes in a training-like mix: update, batch, and a heartbeat every 20."""
    rng = random.Random(seed)
    out: list[Envelope] = []
    for seq in range(n):
        i = seq // 2
        if seq % 20 == 19:
            ev = heartbeat(i)
        elif seq % 2:
            ev = batch_completed(i, rng)
        else:
            ev = ppo_update(i, rng)
        out.append(Envelope(schema=SCHEMA_VERSION, run_id=run_id, seq=seq, ts=1.7e9 + seq * 1e-3, event=ev))
    return out
