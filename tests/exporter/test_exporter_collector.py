"""The collector against folded synthetic streams: names, units, labels, values, NaN/Inf, series lifetime."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

pytest.importorskip("prometheus_client", reason="pip install -e '.[prometheus]'")

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from testkit.events import (
    HEADS,
    batch_completed,
    build,
    envelope,
    heartbeat,
    ppo_update,
    training_finished,
    training_started,
)

from bus.catalogue import CATALOGUE, Field, metric_fields
from bus.contract import Envelope, Event, Heartbeat, PPOUpdate
from bus.feed import Gap
from bus.liveness import STALE_AFTER_PERIODS
from bus.ranks import rank_view
from bus.state import Snapshot
from consumers.alerts.metrics import METRICS, Reading
from consumers.alerts.metrics import Metric as AlertMetric
from consumers.exporter.collector import TamiyoCollector
from consumers.exporter.families import COUNTER, FAMILIES, GAUGE, field_families, markdown
from consumers.exporter.families import build as build_families
from consumers.exporter.names import UNITS, field_name
from consumers.exporter.promql import BY_ALIAS
from consumers.exporter.table import EXPORTED_EVENTS, exported_fields

DOC = Path(__file__).resolve().parents[2] / "docs" / "exporter.md"
EXPIRE_S = 300.0
NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


class Clock:
    """The collector's clock, moved by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def scrape(collector: TamiyoCollector) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """/metrics as Prometheus's own text parser reads it: sample name → {sorted labels: value}."""
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, run_id: str = "run-a", rank: int = 0, **extra: str) -> float:
    labels = tuple(sorted({"run_id": run_id, "rank": str(rank), **extra}.items()))
    return samples[name][labels]


def run_stream(rank: int = 0, run_id: str = "run-a", **ppo: object) -> list[Envelope]:
    ppo = {"cuda_memory_total_gb": 16.0, "cuda_memory_free_gb": 4.0, "compute_time_ms": 10.0, **ppo}
    events: list[Event] = [
        training_started(rank=rank),
        heartbeat(update=1, progress_age_s=0.25),
        batch_completed(1),
        ppo_update(1, gradient_cv_step=-1, cuda_memory_step=-1, **ppo),
        batch_completed(2, episodes=0, return_mean=None, return_min=None, return_max=None),
        ppo_update(2, gradient_cv_step=2, cuda_memory_step=2, **ppo),
    ]
    return [envelope(i, ev, run_id, rank=rank) for i, ev in enumerate(events)]


def test_every_catalogue_metric_field_has_a_gauge_generated_from_the_contract() -> None:
    by_source = {f.source: f for f in FAMILIES if f.kind == GAUGE}
    assert {kind.__struct_config__.tag for kind in EXPORTED_EVENTS} >= {
        "ppo_update",
        "batch_completed",
        "heartbeat",
    }
    for kind in EXPORTED_EVENTS:
        tag = kind.__struct_config__.tag
        for f in metric_fields(kind):
            family = by_source[f"{tag}.{f.name}"]
            assert family.kind == GAUGE and family.name == field_name(tag, f.name, f.unit)
    assert by_source["ppo_update.head_entropy"].labels == ("head",)
    assert by_source["ppo_update.head_grad_norm"].labels == ("head",)
    assert {f.source for f in FAMILIES} >= {
        f"{k.__struct_config__.tag}.{f.name}" for k in EXPORTED_EVENTS for f in exported_fields(k)
    }


def _distinct(i: int, t: msgspec.inspect.Type) -> object:
    """A value no other field holds, so a mix-up of two fields cannot pass."""
    if isinstance(t, msgspec.inspect.DictType):
        return {"op": 1000.25 + i, "slot": 2000.25 + i}
    return 1000.5 + i if isinstance(t, msgspec.inspect.FloatType) else 1000 + i


@pytest.mark.parametrize("kind", EXPORTED_EVENTS, ids=lambda k: k.__struct_config__.tag)
def test_every_field_s_value_reaches_its_series_in_base_units(kind: type) -> None:
    clock = Clock()
    c = TamiyoCollector(clock=clock)
    entries = CATALOGUE[kind]
    event = build(
        kind,
        {
            f.name: _distinct(i, f.type)
            for i, f in enumerate(entries)
            if f.numeric or isinstance(f.type, msgspec.inspect.DictType)
        },
        {},
    )
    c.handle([envelope(0, training_started()), envelope(1, event)], clock.now)
    s = scrape(c)
    tag = kind.__struct_config__.tag
    for f in exported_fields(kind):
        family = next(fam for fam in FAMILIES if fam.source == f"{tag}.{f.name}" and fam.kind == GAUGE)
        sent = getattr(event, f.name)
        if isinstance(sent, dict):
            for head, v in sent.items():
                assert value(s, family.name, head=head) == pytest.approx(v * family.scale), family.name
        else:
            assert value(s, family.name) == pytest.approx(sent * family.scale), family.name


def test_a_field_added_to_the_contract_gets_its_series_by_the_rule() -> None:
    """Fields others add later (e.g. a CUDA total in GB, a progress age in s) need no change here."""

    def new(event: str, name: str, unit: str) -> Field:
        return Field(event, name, msgspec.inspect.FloatType(), "new", unit, False, "", False, False, 0.0)

    families = field_families(
        [
            (PPOUpdate, [new("ppo_update", "cuda_memory_total_gb", "GB")]),
            (PPOUpdate, [new("ppo_update", "gradient_noise_scale", "")]),
            (Heartbeat, [new("heartbeat", "progress_age_s", "s")]),
        ]
    )
    assert [(f.name, f.scale) for f in families] == [
        ("tamiyo_cuda_memory_total_bytes", 1e9),
        ("tamiyo_gradient_noise_scale", 1.0),
        ("tamiyo_heartbeat_progress_age_seconds", 1.0),
    ]


def test_an_alert_metric_added_later_gets_its_series_by_the_rule() -> None:
    """Metrics others add to consumers/alerts/metrics.py (a straggler score, a per-rank stuck time)
    need no change here: named from the metric's name, valued by its own reader."""

    def reads(v: float) -> Callable[[Snapshot, float], Reading | None]:
        return lambda state, now: Reading(v, None, None) if state.run.run_id else None

    extra = [
        AlertMetric("straggler", "time", "compute time over the run's median", reads(1.25)),
        AlertMetric("rank_stuck_s", "time", "stuck time of this rank", reads(40.0)),
        AlertMetric("rank_restarts", "counter", "restarts of this rank", reads(2.0)),
    ]
    families = build_families([*METRICS.values(), *extra])
    added = {f.alias: f for f in families if f.alias in {m.name for m in extra}}
    assert {a: (f.name, f.kind) for a, f in added.items()} == {
        "straggler": ("tamiyo_straggler", GAUGE),
        "rank_stuck_s": ("tamiyo_rank_stuck_seconds", GAUGE),
        "rank_restarts": ("tamiyo_rank_restarts_total", COUNTER),
    }
    clock = Clock()
    c = TamiyoCollector(clock=clock, families=families)
    c.handle(run_stream(), clock.now)
    s = scrape(c)
    assert value(s, "tamiyo_straggler") == 1.25
    assert value(s, "tamiyo_rank_stuck_seconds") == 40.0
    assert value(s, "tamiyo_rank_restarts_total") == 2.0


def test_names_follow_prometheus_conventions() -> None:
    names = [f.name for f in FAMILIES]
    assert len(names) == len(set(names)), "every exposed name is unique"
    for f in FAMILIES:
        assert NAME.match(f.name) and f.name.startswith("tamiyo_"), f.name
        assert f.name.endswith("_total") == (f.kind == COUNTER), f.name
        assert not re.search(r"_(ms|us|gb|mb|s|percent)$", f.name), f"{f.name}: not a base unit"
        if f.unit in ("s", "ms", "us"):
            assert f.name.endswith("_seconds")
        if f.unit in ("GB", "MB"):
            assert f.name.endswith("_bytes")
        if f.unit in ("fraction", "%"):
            assert f.name.endswith("_ratio")
    for kind, entries in CATALOGUE.items():
        for f in entries:
            assert f.unit in UNITS, f"{kind.__name__}.{f.name}: unit {f.unit!r} needs a rule in UNITS"


def test_every_alert_metric_has_an_exported_series() -> None:
    """So every alert rule, the built-in ones and a user's, translates to PromQL."""
    assert set(METRICS) <= set(BY_ALIAS), set(METRICS) - set(BY_ALIAS)


def test_every_alert_metric_s_series_holds_what_the_alert_daemon_reads() -> None:
    """Each alert metric's exported value is the daemon's reading of the rank's view of the run's fold
    (what a ``by_rank`` rule reads), in base units; the straggler score needs the other rank's numbers."""
    clock = Clock()
    c = TamiyoCollector(clock=clock)
    for rank in (0, 1):
        c.handle(run_stream(rank, gradient_cv=0.42 + rank, cuda_alloc_retries=2 + rank), clock.now)
    clock.now += 0.5
    s = scrape(c)
    for rank in (0, 1):
        state = rank_view(c.table.state, rank)
        for name, metric in METRICS.items():
            family = BY_ALIAS[name]
            reading = metric.read(state, clock.now)
            exported = s.get(family.name, {}).get((("rank", str(rank)), ("run_id", "run-a")))
            expected = None if reading is None else reading.value * family.scale
            assert exported == pytest.approx(expected), (
                f"alert metric {name!r} (rank {rank}): the daemon reads {expected}, {family.name} holds "
                f"{exported}"
            )
    # Checked by hand: the heartbeat said 0.25 s without progress, 0.5 s ago; 2 retries on rank 0.
    assert value(s, "tamiyo_progress_age_seconds") == pytest.approx(0.75)
    assert value(s, "tamiyo_stuck_seconds") == 0.0
    assert value(s, "tamiyo_cuda_alloc_retries", rank=1) == 3.0
    # Rank 1's two updates against rank 0's 10 ms: ratio 1, so the score stays at 1 with 2 samples.
    assert value(s, "tamiyo_straggler_score", rank=1) == 1.0
    assert (c.table.state.ranks[0].straggler.samples, c.table.state.ranks[1].straggler.samples) == (0, 2)


def test_scrape_names_units_labels_and_values_per_rank() -> None:
    clock = Clock()
    c = TamiyoCollector(clock=clock)
    for rank in (0, 1):
        c.handle(run_stream(rank, gradient_cv=0.42 + rank), clock.now)
    s = scrape(c)

    for rank in (0, 1):
        assert value(s, "tamiyo_gradient_cv", rank=rank) == pytest.approx(0.42 + rank)
    assert value(s, "tamiyo_kl_divergence") == pytest.approx(0.01)
    assert value(s, "tamiyo_cuda_memory_allocated_bytes") == pytest.approx(4.2e9)
    assert value(s, "tamiyo_cuda_memory_fragmentation_ratio") == pytest.approx(0.475)
    assert value(s, "tamiyo_update_time_seconds") == pytest.approx(0.0125)
    assert value(s, "tamiyo_batch_step_time_seconds") == pytest.approx(0.0005)
    assert value(s, "tamiyo_heartbeat_uptime_seconds") == pytest.approx(1.0)
    assert value(s, "tamiyo_head_entropy", head="op") == pytest.approx(0.5)
    # The last rollout ended no episode: its nil returns keep the last ones (rollout 1's).
    assert value(s, "tamiyo_batch_return_mean") == pytest.approx(1.0)
    assert value(s, "tamiyo_batch_episodes") == 0.0
    # Derived, checked by hand: 8 heads at 0.5 nats over Σ ln(size); fractions of the layer counts.
    assert value(s, "tamiyo_entropy_normalized") == pytest.approx(
        8 * 0.5 / sum(math.log(n) for n in HEADS.values())
    )
    assert value(s, "tamiyo_head_entropy_normalized_ratio", head="blueprint") == pytest.approx(
        0.5 / math.log(13)
    )
    assert value(s, "tamiyo_dead_layer_ratio") == pytest.approx(1 / 14)
    assert value(s, "tamiyo_memory_usage_ratio") == pytest.approx((16.0 - 4.0) / 16.0)
    assert value(s, "tamiyo_events_total") == 6.0
    assert value(s, "tamiyo_liveness", state="LIVE") == 1.0
    assert value(s, "tamiyo_liveness", state="STALE") == 0.0
    info = dict(next(iter(s["tamiyo_run_info"])))
    assert (info["task"], info["policy_device"], info["compile_enabled"]) == ("tamiyo-sim", "cpu", "false")

    tags = {kind.__struct_config__.tag for kind in EXPORTED_EVENTS}
    sent = {
        f"{e.event.__struct_config__.tag}.{n}"
        for e in run_stream()
        for n in e.event.__struct_fields__
        if getattr(e.event, n) is not None
    }
    for f in FAMILIES:
        if f.source.split(".")[0] in tags and f.source not in sent:
            continue  # a nil field the stream never sent a value for (heartbeat.progress_age_s): no series
        assert f.name in s, f"{f.name} missing from the scrape"
        for labels in s[f.name]:
            keys = {k for k, _ in labels}
            assert {"run_id", "rank", *f.labels} <= keys


def test_a_throttled_field_has_no_series_until_it_is_measured() -> None:
    clock = Clock()
    c = TamiyoCollector(clock=clock)
    c.handle(run_stream()[:4], clock.now)  # the first update measured neither gradient_cv nor memory
    s = scrape(c)
    assert "tamiyo_gradient_cv" not in s and "tamiyo_cuda_memory_reserved_bytes" not in s
    assert "tamiyo_memory_usage_ratio" not in s
    assert value(s, "tamiyo_kl_divergence") == pytest.approx(0.01)


def test_non_finite_values_are_exposed_as_prometheus_writes_them() -> None:
    clock = Clock()
    c = TamiyoCollector(clock=clock)
    c.handle(run_stream(gradient_cv=math.inf, policy_loss=math.nan), clock.now)
    registry = CollectorRegistry()
    registry.register(c)
    text = generate_latest(registry).decode()
    assert 'tamiyo_gradient_cv{rank="0",run_id="run-a"} +Inf' in text
    assert 'tamiyo_policy_loss{rank="0",run_id="run-a"} NaN' in text
    assert value(scrape(c), "tamiyo_nonfinite_losses") == 1.0


def test_counters_count_events_gaps_missed_and_producer_drops_and_duplicates_do_not_count() -> None:
    clock = Clock()
    c = TamiyoCollector(clock=clock)
    stream = run_stream()
    c.handle([*stream, stream[2]], clock.now)  # a duplicate seq
    c.handle([Gap("run-a", 6, 8, clock.now), envelope(9, heartbeat(dropped=5))], clock.now)
    s = scrape(c)
    assert value(s, "tamiyo_events_total") == 7.0
    assert value(s, "tamiyo_gaps_total") == 1.0
    assert value(s, "tamiyo_events_missed_total") == 3.0
    assert value(s, "tamiyo_producer_dropped_total") == 5.0


def test_a_finished_rank_s_series_go_away_after_the_delay_and_a_late_replay_does_not_revive_them() -> None:
    clock = Clock()
    c = TamiyoCollector(EXPIRE_S, clock=clock)
    c.handle([*run_stream(), envelope(6, training_finished())], clock.now)
    assert value(scrape(c), "tamiyo_liveness", state="FINISHED") == 1.0
    assert value(scrape(c), "tamiyo_silence_seconds") == 0.0
    clock.now += EXPIRE_S - 1
    assert value(scrape(c), "tamiyo_gradient_cv") == pytest.approx(0.42)
    clock.now += 1
    assert scrape(c) == {}
    c.handle(run_stream(), clock.now)  # the finished run's history replayed to a reconnecting exporter
    assert scrape(c) == {}


def test_a_stale_rank_s_series_go_away_and_come_back_when_it_speaks_again() -> None:
    clock = Clock()
    c = TamiyoCollector(EXPIRE_S, clock=clock)
    c.handle(run_stream(0) + run_stream(1), clock.now)
    clock.now += STALE_AFTER_PERIODS + 1
    c.handle([envelope(6, heartbeat(), rank=1)], clock.now)  # rank 1 still speaks
    s = scrape(c)
    assert value(s, "tamiyo_liveness", state="STALE") == 1.0
    assert value(s, "tamiyo_silence_seconds") == pytest.approx(STALE_AFTER_PERIODS + 1)
    assert value(s, "tamiyo_liveness", rank=1, state="LIVE") == 1.0
    clock.now += EXPIRE_S - STALE_AFTER_PERIODS - 1
    assert c.tick(clock.now) == [("run-a", 0)]
    ranks = {dict(labels)["rank"] for labels in scrape(c)["tamiyo_kl_divergence"]}
    assert ranks == {"1"}
    c.handle([envelope(7, heartbeat())], clock.now)  # rank 0 is back: a fresh series
    assert value(scrape(c), "tamiyo_liveness", state="LIVE") == 1.0


def test_the_doc_lists_exactly_what_is_exposed() -> None:
    assert markdown() in DOC.read_text(encoding="utf-8"), (
        "regenerate the table in docs/exporter.md with python -m consumers.exporter --markdown"
    )
