"""What ``/metrics`` exposes, generated: a family per catalogue field and per alert-daemon metric, and more.

``python -m consumers.exporter --markdown`` prints the table docs/exporter.md embeds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import msgspec

from bus import derived
from bus.catalogue import Field, fields
from bus.contract import TrainingStarted
from bus.liveness import FINISHED, LIVE, SLOW, STALE, STUCK
from bus.ranks import rank_status
from consumers.alerts.metrics import COUNTER as ALERT_COUNTER
from consumers.alerts.metrics import METRICS
from consumers.alerts.metrics import Metric as AlertMetric
from consumers.exporter.names import (
    alert_metric_name,
    event_prefix,
    field_name,
    key_label,
    metric_name,
    name_unit,
    unit,
)
from consumers.exporter.table import EXPORTED_EVENTS, NEWEST, Row, exported_fields

GAUGE = "gauge"
COUNTER = "counter"
INFO = "info"

EVENTS_TOTAL = "tamiyo_events_total"
"""Events received from a rank: one series per rank shown (PromQL counts a run's ranks with it)."""
LABELS = ("run_id", "rank")
"""Every series carries these; a map field or the liveness adds one more."""
LIVENESS_STATES = (LIVE, SLOW, STALE, STUCK, FINISHED)
"""Always exposed (1 for the rank's state, 0 for the rest); a state added to bus.liveness later is
exposed as 1 while a rank is in it."""

Samples = Iterable[tuple[tuple[str, ...], float]]
"""(values of the family's extra labels, value in wire units) per sample."""


@dataclass(frozen=True)
class Family:
    name: str
    """The exposed sample name (``_total`` included for counters)."""
    kind: str
    meaning: str
    unit: str
    """The catalogue unit of the wire value (``ms``); ``scale`` turns it into the exposed base unit."""
    source: str
    """Where the value comes from: ``event.field`` or ``bus.derived.function``."""
    alias: str
    """The name consumers use for it (an alert rule's ``metric``); '' when none."""
    read: Callable[[Row, float], Samples]
    labels: tuple[str, ...] = ()

    @property
    def scale(self) -> float:
        return unit(self.unit).scale

    @property
    def help(self) -> str:
        note = f"{self.unit} on the wire, ×{self.scale:g}" if self.scale != 1 else self.unit
        return f"{self.meaning} [{note}] ({self.source})" if note else f"{self.meaning} ({self.source})"


def _field_reader(kind: type[msgspec.Struct], f: Field) -> Callable[[Row, float], Samples]:
    """The field of the rank's newest ``kind`` event; none before one, or while a throttled field
    has never been measured (its step is -1); a nil value is read from the next event ``NEWEST`` gives."""
    newest = NEWEST[kind]
    name, measured_at = f.name, f.measured_at

    def read(row: Row, now: float) -> Samples:
        for ev in newest(row.own):
            if ev is None:
                continue
            if measured_at and getattr(ev, measured_at) < 0:
                return ()
            value = getattr(ev, name)
            if value is None:
                continue
            if isinstance(value, dict):
                return [((k,), float(v)) for k, v in sorted(value.items())]
            return [((), float(value))]
        return ()

    return read


def field_families(events: Iterable[tuple[type[msgspec.Struct], Sequence[Field]]]) -> list[Family]:
    """A gauge per field of each ``(event type, fields)``: the whole naming rule, mechanically."""
    out = []
    for kind, event_fields in events:
        tag = kind.__struct_config__.tag
        for f in event_fields:
            labels = (key_label(f.name),) if not f.numeric else ()
            out.append(
                Family(
                    name=field_name(tag, f.name, f.unit),
                    kind=GAUGE,
                    meaning=f.description
                    + (" (measured every diagnostics_every updates)" if f.throttled else ""),
                    unit=f.unit,
                    source=f"{tag}.{f.name}",
                    alias=f.name if event_prefix(tag) == "" else "",
                    read=_field_reader(kind, f),
                    labels=labels,
                )
            )
    return out


def _batch_aliases(families: list[Family]) -> list[Family]:
    """batch_completed fields no ppo_update field shares a name with keep it as alias (``fps``)."""
    taken = {f.alias for f in families if f.alias}
    out = []
    for fam in families:
        tag, _, name = fam.source.partition(".")
        if not fam.alias and tag == "batch_completed" and name not in taken:
            fam = replace(fam, alias=name)
        out.append(fam)
    return out


def _head_fractions(row: Row, now: float) -> Samples:
    t = row.own.tamiyo
    if not t.ppo_data_received:
        return ()
    fractions = derived.head_entropy_fractions(t.latest.head_entropy, t.head_sizes)
    return [((name,), v) for name, v in sorted(fractions.items()) if v is not None]


def _liveness(row: Row, now: float) -> Samples:
    state = rank_status(row.state, row.rank, now)
    states = LIVENESS_STATES if state in LIVENESS_STATES else (*LIVENESS_STATES, state)
    return [((name,), float(name == state)) for name in states]


def _events(row: Row, now: float) -> Samples:
    return [((), float(row.own.delivery.events))]


def _run_info_labels() -> tuple[str, ...]:
    text = (msgspec.inspect.StrType, msgspec.inspect.BoolType)
    return tuple(f.name for f in fields(TrainingStarted) if isinstance(f.type, text))


RUN_INFO_LABELS = _run_info_labels()
"""training_started's text and yes/no fields, as labels of ``tamiyo_run_info``."""


def _run_info(row: Row, now: float) -> Samples:
    started = row.own.tamiyo.started
    if started is None:
        return ()
    values = (getattr(started, name) for name in RUN_INFO_LABELS)
    return [(tuple(str(v).lower() if isinstance(v, bool) else str(v) for v in values), 1.0)]


def _alert_reader(metric: AlertMetric) -> Callable[[Row, float], Samples]:
    def read(row: Row, now: float) -> Samples:
        reading = metric.read(row.view, now)
        return () if reading is None else [((), reading.value)]

    return read


def alert_families(metrics: Iterable[AlertMetric], exported: set[str]) -> list[Family]:
    """A family for each alert-daemon metric not in ``exported`` (those a contract field already covers),
    read by the daemon's own reader from the rank's view of the run (as a ``by_rank`` rule reads it):
    a gauge, or a ``_total`` counter for its counters. The unit is the one its name ends in
    (``stuck_s``: seconds), its HELP the metric's doc."""
    out = []
    for m in metrics:
        if m.name in exported:
            continue
        _, unit_text = name_unit(m.name)
        counter = m.kind == ALERT_COUNTER
        out.append(
            Family(
                name=alert_metric_name(m.name) + ("_total" if counter else ""),
                kind=COUNTER if counter else GAUGE,
                meaning=m.doc,
                unit=unit_text,
                source=f"consumers.alerts.metrics.{m.name}",
                alias=m.name,
                read=_alert_reader(m),
            )
        )
    return out


def own_families() -> list[Family]:
    """What no alert metric holds: the per-head fractions of bus.derived, the liveness, the event count
    and the run's metadata (each rank's own training_started)."""
    return [
        Family(
            metric_name("head_entropy_normalized", "fraction"),
            GAUGE,
            "each head's entropy / ln(its size)",
            "fraction",
            "bus.derived.head_entropy_fractions",
            "",
            _head_fractions,
            ("head",),
        ),
        Family(
            "tamiyo_liveness",
            GAUGE,
            "1 for the rank's state (LIVE, SLOW, STALE, STUCK, FINISHED; bus.ranks.rank_status), "
            "0 for the others",
            "",
            "bus.ranks.rank_status",
            "",
            _liveness,
            ("state",),
        ),
        Family(
            EVENTS_TOTAL,
            COUNTER,
            "events received from this rank",
            "count",
            "exporter",
            "",
            _events,
        ),
        Family(
            "tamiyo_run_info",
            INFO,
            "the run's metadata from training_started, as labels; value 1",
            "",
            "training_started",
            "",
            _run_info,
            RUN_INFO_LABELS,
        ),
    ]


def build(metrics: Iterable[AlertMetric] = METRICS.values()) -> list[Family]:
    """The contract's fields, then every alert metric they do not cover, then the exporter's own."""
    generated = _batch_aliases(field_families((k, exported_fields(k)) for k in EXPORTED_EVENTS))
    own = own_families()
    covered = {f.alias for f in (*generated, *own) if f.alias}
    return generated + alert_families(metrics, covered) + own


FAMILIES: list[Family] = build()


def from_contract_field(family: Family) -> bool:
    """A gauge of one contract field, named by the naming rule (docs/metrics.md defines the field)."""
    event, _, name = family.source.partition(".")
    return any(e.__struct_config__.tag == event for e in EXPORTED_EVENTS) and "." not in name


def markdown(every: bool = False) -> str:
    """The table of the exposed metrics that are not one contract field's gauge (docs/exporter.md embeds it
    verbatim), or of every exposed metric with ``every``: the field gauges follow mechanically from the
    contract, so a new field needs no edit here."""
    lines = [
        "| metric | type | labels | wire unit → exposed | from | meaning |",
        "|--------|------|--------|---------------------|------|---------|",
    ]
    for f in FAMILIES:
        if not every and from_contract_field(f):
            continue
        exposed = unit(f.unit).suffix
        conv = f"{f.unit} → {exposed} (×{f.scale:g})" if f.scale != 1 else f.unit
        labels = ", ".join(f"`{label}`" for label in (*LABELS, *f.labels))
        meaning = f.meaning.replace("|", "\\|")
        lines.append(f"| `{f.name}` | {f.kind} | {labels} | {conv} | `{f.source}` | {meaning} |")
    return "\n".join(lines) + "\n"
