"""Realistic events for the benchmarks: the sizes and field counts of a real Tamiyo run."""

from __future__ import annotations

import random

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


def ppo_update(i: int, rng: random.Random) -> PPOUpdate:
    return PPOUpdate(
        update=i,
        train_steps=i,
        env_steps=i * 2048,
        policy_loss=rng.gauss(0, 0.05),
        value_loss=abs(rng.gauss(0.5, 0.1)),
        entropy=8.0 + rng.random(),
        grad_norm=abs(rng.gauss(0.5, 0.1)),
        kl_divergence=abs(rng.gauss(0.01, 0.003)),
        clip_fraction=rng.random() * 0.2,
        clip_fraction_positive=rng.random() * 0.1,
        clip_fraction_negative=rng.random() * 0.1,
        gradient_cv=rng.random() * 2,
        gradient_cv_step=i - i % 10,
        cuda_memory_allocated_gb=4.2,
        cuda_memory_reserved_gb=8.0,
        cuda_memory_peak_gb=6.5,
        cuda_memory_fragmentation=0.475,
        cuda_memory_step=i - i % 10,
        explained_variance=rng.random(),
        dead_layers=0,
        exploding_layers=0,
        total_layers=24,
        nan_grad_count=0,
        head_entropy={h: rng.random() for h in HEADS},
        head_grad_norm={h: rng.random() for h in HEADS},
        lr=3e-4,
        update_time_ms=120.0 + rng.random(),
    )


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
