"""The values alert rules can watch, each read from the aggregated ``bus.state.Snapshot``.

Every numeric ppo_update field in the contract is a metric of the same name (``bus.catalogue``;
throttled fields are ``measured``); derived values come from ``bus.derived``.

A reading carries a ``key``: the rule engine evaluates a rule only when its metric's key
changes (a new ppo_update, a new throttled measurement), so a value carried over from an
earlier update is never counted twice. ``key=None`` means "evaluate on every tick"
(time-based and counter metrics). ``step`` is the update that measured the value.

A rule with ``by_rank = true`` reads each rank's own state (``rank_view``); otherwise it reads
the combined view. The per-rank metrics (``straggler_score``, ``progress_age_s``) read the worst
rank in the combined view, and the one rank in a rank's view.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter

from bus import catalogue, derived
from bus.contract import PPOUpdate
from bus.liveness import FINISHED, STALE, WAITING, liveness, silence_s
from bus.ranks import progress_age_s, rank_status
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


def _update_field(name: str) -> Callable[[Snapshot, float], Reading | None]:
    get = attrgetter(name)

    def read(s: Snapshot, now: float) -> Reading | None:
        t = s.tamiyo
        if not t.ppo_data_received:
            return None
        return Reading(float(get(t.latest)), t.update, t.update)

    return read


def _measured(value: Callable[[PPOUpdate], float], step: str) -> Callable[[Snapshot, float], Reading | None]:
    """A throttled value, keyed by the update that measured it (field ``step``); none until measured."""
    get_step = attrgetter(step)

    def read(s: Snapshot, now: float) -> Reading | None:
        t = s.tamiyo
        at = get_step(t.latest)
        if not t.ppo_data_received or at < 0:
            return None
        return Reading(value(t.latest), at, at)

    return read


def _per_update(fn: Callable[[Snapshot], float | None]) -> Callable[[Snapshot, float], Reading | None]:
    def read(s: Snapshot, now: float) -> Reading | None:
        t = s.tamiyo
        if not t.ppo_data_received:
            return None
        value = fn(s)
        return None if value is None else Reading(value, t.update, t.update)

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


def _memory_usage_percent(ev: PPOUpdate) -> float:
    return derived.memory_usage_percent(ev.cuda_memory_allocated_gb, ev.cuda_memory_reserved_gb)


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


def rank_view(state: Snapshot, rank: int) -> Snapshot:
    """``state`` as rank ``rank`` alone sees it: its policy, rollouts and delivery, the run's identity."""
    rs = state.ranks[rank]
    return Snapshot(
        run=state.run,
        tamiyo=rs.tamiyo,
        rollout=rs.rollout,
        delivery=rs.delivery,
        runs_seen=state.runs_seen,
        ranks={rank: rs},
        left_runs=state.left_runs,
    )


def _straggler_score(s: Snapshot, now: float) -> Reading | None:
    scored = [rs for rs in s.ranks.values() if rs.straggler.samples]
    if not scored:
        return None
    worst = max(scored, key=lambda rs: rs.straggler.score)
    # A new score at any rank is a new reading; its step is that rank's update.
    return Reading(worst.straggler.score, worst.tamiyo.update, sum(rs.straggler.samples for rs in scored))


def _progress_age(s: Snapshot, now: float) -> Reading | None:
    ages = [
        age
        for rs in s.ranks.values()
        if rank_status(rs, now) not in (STALE, FINISHED)
        and (age := progress_age_s(rs.delivery, now)) is not None
    ]
    return Reading(max(ages), None, None) if ages else None


def _build() -> dict[str, Metric]:
    fields = catalogue.metric_fields(PPOUpdate)
    metrics = [_field_metric(f) for f in fields]
    cuda_step = next(f.measured_at for f in fields if f.name == "cuda_memory_reserved_gb")
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
            "allocated / reserved CUDA memory, percent",
            _measured(_memory_usage_percent, cuda_step),
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
            "straggler_score",
            UPDATE,
            "EWMA of compute_time_ms / the other ranks' median (bus/straggler.py); "
            "the worst rank's unless by_rank",
            _straggler_score,
        ),
        Metric(
            "progress_age_s",
            TIME,
            "seconds since the training loop last made progress, while heartbeats arrive; the worst rank's "
            "unless by_rank",
            _progress_age,
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
