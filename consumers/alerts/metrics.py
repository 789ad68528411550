"""The values alert rules can watch, each read from the aggregated ``bus.state.Snapshot``.

Every numeric ppo_update field in the contract is a metric of the same name (``bus.catalogue``;
throttled fields are ``measured``); derived values come from ``bus.derived``.

A reading carries a ``key``: the rule engine evaluates a rule only when its metric's key
changes (a new ppo_update, a new throttled measurement), so a value carried over from an
earlier update is never counted twice. ``key=None`` means "evaluate on every tick"
(time-based and counter metrics). ``step`` is the update that measured the value.

A rule with ``by_rank = true`` reads each rank's own state (``bus.ranks.rank_view``); otherwise
it reads the combined view, where ``straggler_score`` and ``progress_age_s`` are the worst rank's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import NamedTuple

from bus import catalogue, derived
from bus.contract import PPOUpdate
from bus.liveness import (
    FINISHED,
    STUCK_CYCLES,
    STUCK_MIN_S,
    WAITING,
    liveness,
    progress_age_s,
    silence_s,
    stuck,
)
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


class Reading(NamedTuple):
    """A tuple, not a frozen dataclass: one is built per rule per evaluation (a backtest builds millions)."""

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


def _update_field(name: str) -> Callable[[Snapshot, float], Reading | None]:
    get = attrgetter(name)

    def read(s: Snapshot, now: float) -> Reading | None:
        t = s.tamiyo
        if not t.ppo_data_received:
            return None
        latest = t.latest
        return Reading(float(get(latest)), latest.update, latest.update)

    return read


def _measured(
    value: Callable[[PPOUpdate], float | None], step: str
) -> Callable[[Snapshot, float], Reading | None]:
    """A throttled value, keyed by the update that measured it (field ``step``); none until measured."""
    get_step = attrgetter(step)

    def read(s: Snapshot, now: float) -> Reading | None:
        t = s.tamiyo
        at = get_step(t.latest)
        if not t.ppo_data_received or at < 0:
            return None
        v = value(t.latest)
        return None if v is None else Reading(v, at, at)

    return read


def _gradient_cv_while_learning(s: Snapshot, now: float) -> Reading | None:
    t = s.tamiyo
    at = t.latest.gradient_cv_step
    if not t.ppo_data_received or at < 0:
        return None
    return Reading(derived.gradient_cv_while_learning(t.latest.gradient_cv, s.rollout.return_windows), at, at)


def _per_update(fn: Callable[[Snapshot], float | None]) -> Callable[[Snapshot, float], Reading | None]:
    def read(s: Snapshot, now: float) -> Reading | None:
        t = s.tamiyo
        if not t.ppo_data_received:
            return None
        value = fn(s)
        return None if value is None else Reading(value, t.latest.update, t.latest.update)

    return read


def _head_sizes(s: Snapshot) -> dict[str, int]:
    started = s.run.started
    return started.action_heads if started is not None else {}


def _field_metric(f: catalogue.Field) -> Metric:
    doc = f"{f.description} ({f.unit})" if f.unit else f.description
    if f.throttled:
        get = attrgetter(f.name)
        return Metric(f.name, MEASURED, doc, _measured(lambda ev: float(get(ev)), f.measured_at))
    return Metric(f.name, UPDATE, doc, _update_field(f.name))


CUMULATIVE = ("cuda_alloc_retries", "cuda_ooms")
"""Throttled fields that count since the trainer started: counter metrics, watched by their increase."""


def _memory_usage_percent(ev: PPOUpdate) -> float | None:
    return derived.memory_usage_percent(ev.cuda_memory_total_gb, ev.cuda_memory_free_gb)


def _fragmentation_that_matters(ev: PPOUpdate) -> float:
    return derived.fragmentation_that_matters(
        ev.cuda_memory_fragmentation, ev.cuda_memory_reserved_gb, ev.cuda_memory_total_gb
    )


def _measured_counter(name: str, step: str) -> Callable[[Snapshot, float], Reading | None]:
    """A cumulative throttled count, read on every tick once measured (its increase is what rules watch)."""
    get, get_step = attrgetter(name), attrgetter(step)

    def read(s: Snapshot, now: float) -> Reading | None:
        t = s.tamiyo
        if not t.ppo_data_received or get_step(t.latest) < 0:
            return None
        return Reading(float(get(t.latest)), get_step(t.latest), None)

    return read


def _batch_attr(attr: str) -> Callable[[Snapshot, float], Reading | None]:
    def read(s: Snapshot, now: float) -> Reading | None:
        r = s.rollout
        value = getattr(r, attr)
        if r.batches == 0 or value is None:
            return None
        return Reading(float(value), r.batches, r.batches)

    return read


def _progress_age(s: Snapshot, now: float) -> Reading | None:
    age = progress_age_s(s, now)
    return None if age is None else Reading(age, None, None)


def _stuck(s: Snapshot, now: float) -> Reading | None:
    age = progress_age_s(s, now)
    if age is None:
        return None
    return Reading(age if stuck(s, now) else 0.0, None, None)


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


def _straggler_score(s: Snapshot, now: float) -> Reading | None:
    scored = [rs for rs in s.ranks.values() if rs.straggler.samples]
    if not scored:
        return None
    worst = max(scored, key=lambda rs: rs.straggler.score)
    # A new score at any rank is a new reading; its step is that rank's update.
    return Reading(worst.straggler.score, worst.tamiyo.update, sum(rs.straggler.samples for rs in scored))


def _build() -> dict[str, Metric]:
    fields = catalogue.metric_fields(PPOUpdate)
    metrics = [_field_metric(f) for f in fields if f.name not in CUMULATIVE]
    cuda_step = next(f.measured_at for f in fields if f.name == "cuda_memory_reserved_gb")
    metrics += [
        Metric(f.name, COUNTER, f"{f.description} ({f.unit})", _measured_counter(f.name, f.measured_at))
        for f in fields
        if f.name in CUMULATIVE
    ]
    metrics += [
        Metric(
            "nonfinite_losses",
            UPDATE,
            f"how many of {', '.join(derived.LOSS_FIELDS)} are NaN or inf",
            _per_update(lambda s: float(derived.nonfinite_losses(s.tamiyo.latest))),
        ),
        Metric(
            "dead_layer_fraction",
            UPDATE,
            "dead_layers / total_layers",
            _per_update(lambda s: derived.layer_fraction(s.tamiyo.dead_layers, s.tamiyo.total_layers)),
        ),
        Metric(
            "exploding_layer_fraction",
            UPDATE,
            "exploding_layers / total_layers",
            _per_update(lambda s: derived.layer_fraction(s.tamiyo.exploding_layers, s.tamiyo.total_layers)),
        ),
        Metric(
            "entropy_normalized",
            UPDATE,
            "Σ head entropy / Σ ln(head size): 1 = uniform, 0 = deterministic (docs/metrics.md)",
            _per_update(lambda s: derived.entropy_fraction(s.tamiyo.head_entropy, _head_sizes(s))),
        ),
        Metric(
            "min_head_entropy_normalized",
            UPDATE,
            "the lowest head's entropy / ln(head size)",
            _per_update(lambda s: derived.min_head_entropy_fraction(s.tamiyo.head_entropy, _head_sizes(s))),
        ),
        Metric(
            "memory_usage_percent",
            MEASURED,
            "how full the GPU is: (total − free) / total, percent (no reading without CUDA)",
            _measured(_memory_usage_percent, cuda_step),
        ),
        Metric(
            "cuda_fragmentation_that_matters",
            MEASURED,
            "cuda_memory_fragmentation while reserved ≥ "
            f"{derived.FRAGMENTATION_MIN_RESERVED:.0%} of the device, else 0 (docs/metrics.md)",
            _measured(_fragmentation_that_matters, cuda_step),
        ),
        Metric(
            "gradient_cv_while_learning",
            MEASURED,
            "gradient_cv until the return has settled at its best (bus.derived.return_settled), "
            "then 0 (docs/metrics.md)",
            _gradient_cv_while_learning,
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
            "progress_age_s",
            TIME,
            "seconds since the training loop last made progress (heartbeat), in rollout or update phases",
            _progress_age,
        ),
        Metric(
            "stuck_s",
            TIME,
            f"progress_age_s once past the STUCK bound max({STUCK_MIN_S:g} s, {STUCK_CYCLES:g} update cycles)"
            " (bus.liveness), else 0",
            _stuck,
        ),
        Metric(
            "events_missed",
            COUNTER,
            "messages this consumer never received (seq gaps), this run",
            _delivery_counter("missed"),
        ),
        Metric("gaps", COUNTER, "seq gaps seen by this consumer, this run", _delivery_counter("gaps")),
        Metric(
            "straggler_score",
            UPDATE,
            "EWMA of compute_time_ms / the other ranks' median (bus/straggler.py); "
            "the worst rank's unless by_rank",
            _straggler_score,
        ),
        Metric(
            "producer_dropped",
            COUNTER,
            "events the producer dropped (queue or send buffer full), this run",
            _delivery_counter("producer_dropped"),
        ),
    ]
    return {m.name: m for m in metrics}


METRICS: dict[str, Metric] = _build()
