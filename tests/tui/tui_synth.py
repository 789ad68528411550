"""Synthetic envelopes for the dashboard tests: real bus.contract events with fixed ids, seqs and times."""

from __future__ import annotations

import math

from testkit import events
from testkit.events import HEADS, envelope, training_started

from bus.contract import (
    BatchCompleted,
    Envelope,
    Event,
    Heartbeat,
    PPOUpdate,
    TrainingFinished,
    TrainingStarted,
)


class Run:
    """Hands out envelopes of one run (of one rank) with contiguous seqs and timestamps one second apart."""

    def __init__(self, run_id: str = "run-a1b2c3d4", seq: int = 0, rank: int = 0) -> None:
        self.run_id = run_id
        self.seq = seq
        self.rank = rank

    def env(self, event: Event) -> Envelope:
        env = envelope(self.seq, event, self.run_id, rank=self.rank)
        self.seq += 1
        return env


def started(
    *, compile_enabled: bool = False, total_updates: int = 500, device: str = "cpu"
) -> TrainingStarted:
    return training_started(
        policy_device=device,
        env_devices=[device],
        compile_enabled=compile_enabled,
        compile_backend="inductor" if compile_enabled else "",
        compile_mode="default" if compile_enabled else "",
        total_updates=total_updates,
        rollout_steps=64,
        num_minibatches=4,
        update_epochs=4,
        gamma=0.99,
        gae_lambda=0.95,
        torch_version="2.13.0",
        hostname="trainhost",
    )


def head_entropies(fraction: float, spread: float = 0.0) -> dict[str, float]:
    """Per-head entropy in nats at ``fraction`` of each head's maximum ln(size), heads apart by ``spread``."""
    return {
        name: min(1.0, fraction * (1 + spread * math.sin(3 * i))) * math.log(size)
        for i, (name, size) in enumerate(HEADS.items())
    }


def ppo(update: int, **overrides: object) -> PPOUpdate:
    """A healthy update (testkit's, with this dashboard run's values); ``overrides`` replace any field."""
    wobble = math.sin(update * 0.7)
    frac = 0.8 - 0.002 * update
    heads = head_entropies(frac, spread=0.3)
    measured_at = (update // 10) * 10
    values: dict[str, object] = dict(
        train_steps=update,  # as the producer counts; the throttled *_step fields are train_steps
        env_steps=(update + 1) * 256,
        policy_loss=-0.01 + 0.002 * wobble,
        value_loss=0.5 / (1 + 0.05 * update) + 0.02 * wobble,
        entropy=sum(heads.values()),
        grad_norm=0.8 + 0.1 * wobble,
        kl_divergence=0.008 + 0.002 * wobble,
        gradient_cv_step=measured_at,
        cuda_memory_allocated_gb=0.0,
        cuda_memory_reserved_gb=0.0,
        cuda_memory_peak_gb=0.0,
        cuda_memory_fragmentation=0.0,
        cuda_memory_step=measured_at,
        explained_variance=min(0.9, 0.1 + 0.03 * update),
        dead_layers=0,
        head_entropy=heads,
        head_grad_norm={
            name: 0.05 + 0.04 * abs(math.sin(i * 1.7)) + 0.005 * wobble for i, name in enumerate(HEADS)
        },
        update_time_ms=120.0,
    )
    return events.ppo_update(update, HEADS, **{**values, **overrides})


def batch(update: int, **overrides: object) -> BatchCompleted:
    values: dict[str, object] = dict(
        env_steps=(update + 1) * 256,
        fps=2000.0 + 50 * math.sin(update),
        step_time_ms=2.0,
        episodes_completed=update * 4,
        episodes=4,
        return_mean=-1.0 + 0.05 * update + 0.2 * math.sin(update * 1.3),
        return_min=-3.0 + 0.05 * update,
        return_max=1.0 + 0.05 * update,
    )
    return events.batch_completed(update, **{**values, **overrides})


def heartbeat(
    phase: str = "rollout", update: int = 0, period_s: float = 1.0, **overrides: object
) -> Heartbeat:
    return events.heartbeat(
        period_s=period_s, phase=phase, update=update, uptime_s=60.0 + update, **overrides
    )


def finished(reason: str = "done", updates: int = 0, error: str = "") -> TrainingFinished:
    return events.training_finished(reason=reason, updates=updates, env_steps=updates * 256, error=error)


def healthy_run(run: Run, updates: int = 40, **started_kw: object) -> list[Envelope]:
    """training_started, then a batch, a ppo_update and a heartbeat per update."""
    out = [run.env(started(**started_kw))]  # type: ignore[arg-type]
    for u in range(updates):
        out.append(run.env(batch(u)))
        out.append(run.env(ppo(u)))
        out.append(run.env(heartbeat("update", u)))
    return out


class Clock:
    """An injectable clock the tests move by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
