"""A synthetic training stream for the alert tests: healthy by default, any field overridable per update.

Like the real producer, gradient_cv and the CUDA memory fields are measured every
``diagnostics_every`` updates and carried (with their ``*_step``) in between.
"""

from __future__ import annotations

import math
import random
from typing import Any

from testkit.events import (
    HEADS,
    T0,
    batch_completed,
    envelope,
    heartbeat,
    ppo_update,
    training_finished,
    training_started,
)

from bus.contract import Envelope, Event
from consumers.alerts.engine import Notification

MEASURED = ("gradient_cv", "cuda_memory_fragmentation")


class Stream:
    """Envelopes of one run with contiguous seqs; ``ts`` advances by ``dt`` per envelope."""

    def __init__(
        self, run_id: str = "run-1", *, t0: float = T0, dt: float = 0.1, seed: int = 0, rank: int = 0
    ) -> None:
        self.run_id = run_id
        self.rank = rank
        self.seq = 0
        self.ts = t0
        self.dt = dt
        self.update = 0
        self.rng = random.Random(seed)
        self.diagnostics_every = 10
        self._measured: dict[str, float] = {}
        self._measured_step = -1

    def env(self, event: Event) -> Envelope:
        self.ts += self.dt
        env = envelope(self.seq, event, self.run_id, self.ts, self.rank)
        self.seq += 1
        return env

    def started(self) -> Envelope:
        return self.env(training_started(diagnostics_every=self.diagnostics_every))

    def ppo(self, *, entropy_ratio: float = 0.8, **overrides: Any) -> Envelope:
        """The next update: healthy noise plus ``overrides``; MEASURED fields change only when measured."""
        u = self.update
        self.update += 1
        r = self.rng
        if u % self.diagnostics_every == 0:
            self._measured_step = u
            self._measured["gradient_cv"] = overrides.get("gradient_cv", 0.4 + 0.2 * r.random())
            self._measured["cuda_memory_fragmentation"] = overrides.get("cuda_memory_fragmentation", 0.1)
        fields: dict[str, Any] = {
            "train_steps": u,
            "env_steps": u * 512,
            "policy_loss": r.gauss(0.0, 0.02),
            "value_loss": abs(r.gauss(0.4, 0.05)),
            "entropy": 8.0 + r.random(),
            "grad_norm": abs(r.gauss(0.5, 0.1)),
            "kl_divergence": abs(r.gauss(0.01, 0.003)),
            "clip_fraction": r.random() * 0.15,
            "clip_fraction_positive": r.random() * 0.08,
            "clip_fraction_negative": r.random() * 0.08,
            "gradient_cv": self._measured["gradient_cv"],
            "gradient_cv_step": self._measured_step,
            "cuda_memory_allocated_gb": 2.0,
            "cuda_memory_reserved_gb": 2.2,
            "cuda_memory_peak_gb": 2.1,
            "cuda_memory_fragmentation": self._measured["cuda_memory_fragmentation"],
            "cuda_memory_step": self._measured_step,
            "cuda_memory_total_gb": 16.0,  # reserved 2.2 of 16 GB: above the fragmentation rule's 10% guard
            "cuda_memory_free_gb": 13.5,
            "explained_variance": r.random(),
            "dead_layers": 0,
            "total_layers": 24,
            "head_entropy": {
                h: entropy_ratio * math.log(n) * (0.95 + 0.05 * r.random()) for h, n in HEADS.items()
            },
            "head_grad_norm": {h: abs(r.gauss(0.1, 0.02)) for h in HEADS},
            "update_time_ms": 100.0 + r.random(),
        }
        for name, value in overrides.items():
            if name not in MEASURED:
                fields[name] = value
        return self.env(ppo_update(u, HEADS, **fields))

    def batch(self, return_mean: float | None = None) -> Envelope:
        """The rollout of the newest update; its mean return ``return_mean`` or healthy noise around 1."""
        u = max(0, self.update - 1)
        return self.env(
            batch_completed(
                u,
                env_steps=u * 512,
                fps=5000.0,
                step_time_ms=0.2,
                episodes_completed=u * 4,
                episodes=4,
                return_mean=self.rng.gauss(1.0, 0.3) if return_mean is None else return_mean,
                return_min=-1.0,
                return_max=3.0,
            )
        )

    def heartbeat(self, *, dropped: int = 0, progress_age_s: float | None = None) -> Envelope:
        return self.env(
            heartbeat(
                phase="update",
                update=self.update,
                uptime_s=self.ts - T0,
                dropped=dropped,
                sent=self.seq,
                progress_age_s=progress_age_s,
            )
        )

    def finished(self) -> Envelope:
        return self.env(training_finished(updates=self.update, env_steps=self.update * 512))


def notification(status: str = "firing", **fields: Any) -> Notification:
    """A KL alert's notification (firing, or resolved with its reason); ``fields`` replace any value."""
    base: dict[str, Any] = dict(
        status=status,
        rule="kl_divergence_high",
        severity="warning",
        run_id="r1",
        metric="kl_divergence",
        value=0.08,
        op=">",
        fire=0.05,
        clear=0.03,
        expression="kl_divergence > 0.05",
        summary="KL 0.080",
        update=22,
        step=22,
        active_since=1.7e9,
        at=1.7e9 + 1,
        reason="" if status == "firing" else "condition cleared",
    )
    return Notification(**(base | fields))
