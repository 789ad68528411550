"""The values alert rules can watch, each read from the aggregated ``bus.state.Snapshot``.

A reading carries a ``key``: the rule engine evaluates a rule only when its metric's key
changes (a new ppo_update, a new throttled measurement), so a value carried over from an
earlier update is never counted twice. ``key=None`` means "evaluate on every tick"
(time-based and counter metrics). ``step`` is the update that measured the value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from bus.liveness import FINISHED, WAITING, liveness, silence_s
from bus.state import Snapshot

UPDATE = "update"
"""Measured on every ppo_update."""
MEASURED = "measured"
"""Measured every ``diagnostics_every`` updates and carried in between (gradient_cv, CUDA memory)."""
BATCH = "batch"
"""Measured on every batch_completed."""
TIME = "time"
"""Depends on the clock: evaluated on every tick."""
COUNTER = "counter"
"""A count that only grows during a run; rules usually watch its increase (``increase_over_s``)."""


@dataclass(frozen=True)
class Reading:
    value: float
    step: int | None
    key: object | None


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str
    doc: str
    read: Callable[[Snapshot, float], Reading | None]

    def period(self, state: Snapshot) -> int:
        """How many updates one reading stands for."""
        if self.kind != MEASURED:
            return 1
        started = state.run.started
        every = started.diagnostics_every if started is not None else 0
        return every if every > 0 else 10


def _update_attr(attr: str) -> Callable[[Snapshot, float], Reading | None]:
    def read(s: Snapshot, now: float) -> Reading | None:
        t = s.tamiyo
        if not t.ppo_data_received:
            return None
        return Reading(float(getattr(t, attr)), t.update, t.update)

    return read


def _per_update(fn: Callable[[Snapshot], float | None]) -> Callable[[Snapshot, float], Reading | None]:
    def read(s: Snapshot, now: float) -> Reading | None:
        t = s.tamiyo
        if not t.ppo_data_received:
            return None
        value = fn(s)
        return None if value is None else Reading(value, t.update, t.update)

    return read


def _gradient_cv(s: Snapshot, now: float) -> Reading | None:
    gq = s.tamiyo.gradient_quality
    if not s.tamiyo.ppo_data_received or gq.gradient_cv_step < 0:
        return None
    return Reading(gq.gradient_cv, gq.gradient_cv_step, gq.gradient_cv_step)


def _cuda(attr: str) -> Callable[[Snapshot, float], Reading | None]:
    def read(s: Snapshot, now: float) -> Reading | None:
        infra = s.tamiyo.infrastructure
        if not s.tamiyo.ppo_data_received or infra.cuda_memory_step < 0:
            return None
        return Reading(float(getattr(infra, attr)), infra.cuda_memory_step, infra.cuda_memory_step)

    return read


LOSS_FIELDS = ("policy_loss", "value_loss", "entropy", "kl_divergence", "grad_norm")


def _nonfinite_losses(s: Snapshot) -> float:
    t = s.tamiyo
    return float(sum(1 for name in LOSS_FIELDS if not math.isfinite(getattr(t, name))))


def _layer_fraction(attr: str) -> Callable[[Snapshot], float | None]:
    def value(s: Snapshot) -> float | None:
        t = s.tamiyo
        return getattr(t, attr) / t.total_layers if t.total_layers > 0 else None

    return value


def _normalized_head_entropies(s: Snapshot) -> list[float]:
    started = s.run.started
    if started is None:
        return []
    out = []
    for head, entropy in s.tamiyo.head_entropy.items():
        n = started.action_heads.get(head, 0)
        if n > 1:
            out.append(entropy / math.log(n))
    return out


def _entropy_normalized(s: Snapshot) -> float | None:
    values = _normalized_head_entropies(s)
    return sum(values) / len(values) if values else None


def _min_head_entropy_normalized(s: Snapshot) -> float | None:
    values = _normalized_head_entropies(s)
    return min(values) if values else None


def _batch_attr(attr: str) -> Callable[[Snapshot, float], Reading | None]:
    def read(s: Snapshot, now: float) -> Reading | None:
        r = s.rollout
        value = getattr(r, attr)
        if r.batches == 0 or value is None:
            return None
        return Reading(float(value), r.batches, r.batches)

    return read


def _silence(s: Snapshot, now: float) -> Reading | None:
    status = liveness(s, now)
    if status == WAITING:
        return None
    # After training_finished the producer is expected to go quiet.
    return Reading(0.0 if status == FINISHED else silence_s(s, now), None, None)


def _delivery_counter(attr: str) -> Callable[[Snapshot, float], Reading | None]:
    def read(s: Snapshot, now: float) -> Reading | None:
        if not s.run.run_id:
            return None
        return Reading(float(getattr(s.delivery, attr)), None, None)

    return read


def _build() -> dict[str, Metric]:
    metrics = [
        Metric(name, UPDATE, doc, _update_attr(name))
        for name, doc in (
            ("update", "the PPO update counter"),
            ("policy_loss", "PPO clipped policy loss"),
            ("value_loss", "value-function loss"),
            ("entropy", "policy entropy as the producer reports it"),
            ("grad_norm", "global gradient norm before clipping"),
            ("kl_divergence", "approximate KL between the old and new policy"),
            ("clip_fraction", "share of samples whose ratio was clipped"),
            ("explained_variance", "explained variance of the value function"),
            ("dead_layers", "parameter tensors with (almost) all-zero gradients"),
            ("exploding_layers", "parameter tensors with exploding gradients"),
            ("nan_grad_count", "non-finite gradient elements"),
            ("lr", "learning rate"),
            ("update_time_ms", "wall time of the update"),
        )
    ]
    metrics += [
        Metric(
            "clip_fraction_positive",
            UPDATE,
            "share of samples clipped above 1+eps",
            _per_update(lambda s: s.tamiyo.gradient_quality.clip_fraction_positive),
        ),
        Metric(
            "clip_fraction_negative",
            UPDATE,
            "share of samples clipped below 1-eps",
            _per_update(lambda s: s.tamiyo.gradient_quality.clip_fraction_negative),
        ),
        Metric(
            "nonfinite_losses",
            UPDATE,
            f"how many of {', '.join(LOSS_FIELDS)} are NaN or inf",
            _per_update(_nonfinite_losses),
        ),
        Metric(
            "dead_layer_fraction",
            UPDATE,
            "dead_layers / total_layers",
            _per_update(_layer_fraction("dead_layers")),
        ),
        Metric(
            "exploding_layer_fraction",
            UPDATE,
            "exploding_layers / total_layers",
            _per_update(_layer_fraction("exploding_layers")),
        ),
        Metric(
            "entropy_normalized",
            UPDATE,
            "mean over heads of head entropy / ln(head size): 1 = uniform, 0 = deterministic",
            _per_update(_entropy_normalized),
        ),
        Metric(
            "min_head_entropy_normalized",
            UPDATE,
            "the lowest head's entropy / ln(head size)",
            _per_update(_min_head_entropy_normalized),
        ),
        Metric(
            "gradient_cv",
            MEASURED,
            "minibatch-gradient coefficient of variation (every diagnostics_every updates)",
            _gradient_cv,
        ),
        Metric(
            "cuda_memory_fragmentation",
            MEASURED,
            "1 - allocated/reserved CUDA memory",
            _cuda("cuda_memory_fragmentation"),
        ),
        Metric(
            "cuda_memory_allocated_gb",
            MEASURED,
            "allocated CUDA memory, GB",
            _cuda("cuda_memory_allocated_gb"),
        ),
        Metric(
            "cuda_memory_reserved_gb", MEASURED, "reserved CUDA memory, GB", _cuda("cuda_memory_reserved_gb")
        ),
        Metric(
            "cuda_memory_peak_gb", MEASURED, "peak allocated CUDA memory, GB", _cuda("cuda_memory_peak_gb")
        ),
        Metric(
            "memory_usage_percent",
            MEASURED,
            "allocated / reserved CUDA memory, percent",
            _cuda("memory_usage_percent"),
        ),
        Metric("fps", BATCH, "environment steps per second", _batch_attr("fps")),
        Metric(
            "return_mean",
            BATCH,
            "mean return of the episodes that ended in the batch",
            _batch_attr("return_mean"),
        ),
        Metric(
            "silence_s",
            TIME,
            "seconds since the producer last sent anything (0 after training_finished)",
            _silence,
        ),
        Metric(
            "events_missed",
            COUNTER,
            "messages this consumer never received (seq gaps), this run",
            _delivery_counter("missed"),
        ),
        Metric("gaps", COUNTER, "seq gaps seen by this consumer, this run", _delivery_counter("gaps")),
        Metric(
            "producer_dropped",
            COUNTER,
            "events the producer dropped (queue or send buffer full), this run",
            _delivery_counter("producer_dropped"),
        ),
    ]
    return {m.name: m for m in metrics}


METRICS: dict[str, Metric] = _build()
