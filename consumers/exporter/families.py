"""What ``/metrics`` exposes: one family per catalogue field, generated, plus derived, counters, liveness.

``python -m consumers.exporter --markdown`` prints the table docs/exporter.md embeds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import msgspec

from bus import derived
from bus.catalogue import Field, fields
from bus.contract import PPOUpdate, TrainingStarted
from bus.liveness import FINISHED, LIVE, SLOW, STALE, liveness, silence_s
from consumers.exporter.names import event_prefix, field_name, key_label, metric_name, unit
from consumers.exporter.table import EXPORTED_EVENTS, Series, exported_fields

GAUGE = "gauge"
COUNTER = "counter"
INFO = "info"

LABELS = ("run_id", "rank")
"""Every series carries these; a map field or the liveness adds one more."""
LIVENESS_STATES = (LIVE, SLOW, STALE, FINISHED)
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
    read: Callable[[Series, float], Samples]
    labels: tuple[str, ...] = ()

    @property
    def scale(self) -> float:
        return unit(self.unit).scale

    @property
    def help(self) -> str:
        note = f"{self.unit} on the wire, ×{self.scale:g}" if self.scale != 1 else self.unit
        return f"{self.meaning} [{note}] ({self.source})" if note else f"{self.meaning} ({self.source})"


def _field_reader(tag: str, f: Field) -> Callable[[Series, float], Samples]:
    key = (tag, f.name)

    def read(s: Series, now: float) -> Samples:
        value = s.values.get(key)
        if value is None:
            return ()
        if isinstance(value, dict):
            return [((k,), v) for k, v in sorted(value.items())]
        return [((), value)]

    return read


def field_families(events: Iterable[tuple[str, Sequence[Field]]]) -> list[Family]:
    """A gauge per field of each ``(event tag, fields)``: the whole naming rule, mechanically."""
    out = []
    for tag, event_fields in events:
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
                    read=_field_reader(tag, f),
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


def _ppo(fn: Callable[[PPOUpdate, dict[str, int]], float | None]) -> Callable[[Series, float], Samples]:
    """A value derived from the newest ppo_update and the head sizes; none before the first update."""

    def read(s: Series, now: float) -> Samples:
        t = s.state.tamiyo
        if not t.ppo_data_received:
            return ()
        value = fn(t.latest, t.head_sizes)
        return () if value is None else [((), value)]

    return read


def _head_fractions(s: Series, now: float) -> Samples:
    t = s.state.tamiyo
    if not t.ppo_data_received:
        return ()
    fractions = derived.head_entropy_fractions(t.latest.head_entropy, t.head_sizes)
    return [((name,), v) for name, v in sorted(fractions.items()) if v is not None]


def _memory_usage(ev: PPOUpdate, sizes: dict[str, int]) -> float | None:
    if ev.cuda_memory_step < 0:
        return None
    return derived.memory_usage_percent(ev.cuda_memory_allocated_gb, ev.cuda_memory_reserved_gb)


def _silence(s: Series, now: float) -> Samples:
    # As the alert daemon's silence_s: 0 once the run has finished (it is expected to go quiet).
    return [((), 0.0 if liveness(s.state, now) == FINISHED else silence_s(s.state, now))]


def _liveness(s: Series, now: float) -> Samples:
    state = liveness(s.state, now)
    states = LIVENESS_STATES if state in LIVENESS_STATES else (*LIVENESS_STATES, state)
    return [((name,), float(name == state)) for name in states]


def _delivery(attr: str) -> Callable[[Series, float], Samples]:
    def read(s: Series, now: float) -> Samples:
        return [((), float(getattr(s.state.delivery, attr)))]

    return read


def _run_info_labels() -> tuple[str, ...]:
    text = (msgspec.inspect.StrType, msgspec.inspect.BoolType)
    return tuple(f.name for f in fields(TrainingStarted) if isinstance(f.type, text))


RUN_INFO_LABELS = _run_info_labels()
"""training_started's text and yes/no fields, as labels of ``tamiyo_run_info``."""


def _run_info(s: Series, now: float) -> Samples:
    started = s.state.run.started
    if started is None:
        return ()
    values = (getattr(started, name) for name in RUN_INFO_LABELS)
    return [(tuple(str(v).lower() if isinstance(v, bool) else str(v) for v in values), 1.0)]


def _derived(
    base: str,
    unit_text: str,
    meaning: str,
    source: str,
    alias: str,
    read: Callable[[Series, float], Samples],
    labels: tuple[str, ...] = (),
) -> Family:
    return Family(metric_name(base, unit_text), GAUGE, meaning, unit_text, source, alias, read, labels)


def derived_families() -> list[Family]:
    """The quantities of bus.derived, and the exporter's own view of each rank (not contract fields)."""
    d = "bus.derived."
    return [
        _derived(
            "entropy_normalized",
            "fraction",
            "Σ head entropy / Σ ln(head size): 1 uniform, 0 deterministic",
            d + "entropy_fraction",
            "entropy_normalized",
            _ppo(lambda ev, sizes: derived.entropy_fraction(ev.head_entropy, sizes)),
        ),
        _derived(
            "min_head_entropy_normalized",
            "fraction",
            "the lowest head's entropy / ln(its size)",
            d + "min_head_entropy_fraction",
            "min_head_entropy_normalized",
            _ppo(lambda ev, sizes: derived.min_head_entropy_fraction(ev.head_entropy, sizes)),
        ),
        _derived(
            "head_entropy_normalized",
            "fraction",
            "each head's entropy / ln(its size)",
            d + "head_entropy_fractions",
            "",
            _head_fractions,
            ("head",),
        ),
        _derived(
            "dead_layer",
            "fraction",
            "dead_layers / total_layers",
            d + "layer_fraction",
            "dead_layer_fraction",
            _ppo(lambda ev, sizes: derived.layer_fraction(ev.dead_layers, ev.total_layers)),
        ),
        _derived(
            "exploding_layer",
            "fraction",
            "exploding_layers / total_layers",
            d + "layer_fraction",
            "exploding_layer_fraction",
            _ppo(lambda ev, sizes: derived.layer_fraction(ev.exploding_layers, ev.total_layers)),
        ),
        _derived(
            "nonfinite_losses",
            "count",
            f"how many of {', '.join(derived.LOSS_FIELDS)} are NaN or inf",
            d + "nonfinite_losses",
            "nonfinite_losses",
            _ppo(lambda ev, sizes: float(derived.nonfinite_losses(ev))),
        ),
        _derived(
            "cuda_memory_usage",
            "%",
            "allocated / reserved CUDA memory (measured every diagnostics_every updates)",
            d + "memory_usage_percent",
            "memory_usage_percent",
            _ppo(_memory_usage),
        ),
        _derived(
            "silence",
            "s",
            "time since this rank last sent anything; 0 once it finished",
            "bus.liveness.silence_s",
            "silence_s",
            _silence,
        ),
        Family(
            "tamiyo_liveness",
            GAUGE,
            "1 for the rank's state (LIVE, SLOW, STALE, FINISHED; bus.liveness), 0 for the others",
            "",
            "bus.liveness.liveness",
            "",
            _liveness,
            ("state",),
        ),
        Family(
            "tamiyo_events_total",
            COUNTER,
            "events received from this rank",
            "count",
            "exporter",
            "",
            _delivery("events"),
        ),
        Family(
            "tamiyo_gaps_total",
            COUNTER,
            "seq gaps this exporter saw (each one or more missed events)",
            "count",
            "exporter",
            "gaps",
            _delivery("gaps"),
        ),
        Family(
            "tamiyo_missed_events_total",
            COUNTER,
            "events this exporter never received (the gaps' sizes)",
            "count",
            "exporter",
            "events_missed",
            _delivery("missed"),
        ),
        Family(
            "tamiyo_producer_dropped_events_total",
            COUNTER,
            "events the producer dropped (queue full, socket refused, over 1 MiB)",
            "count",
            "heartbeat.dropped",
            "producer_dropped",
            _delivery("producer_dropped"),
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


def build() -> list[Family]:
    generated = field_families((k.__struct_config__.tag, exported_fields(k)) for k in EXPORTED_EVENTS)
    return _batch_aliases(generated) + derived_families()


FAMILIES: list[Family] = build()


def markdown() -> str:
    """The table of every exposed metric (docs/exporter.md embeds it verbatim)."""
    lines = [
        "| metric | type | labels | wire unit → exposed | from | meaning |",
        "|--------|------|--------|---------------------|------|---------|",
    ]
    for f in FAMILIES:
        exposed = unit(f.unit).suffix
        conv = f"{f.unit} → {exposed} (×{f.scale:g})" if f.scale != 1 else f.unit
        labels = ", ".join(f"`{label}`" for label in (*LABELS, *f.labels))
        meaning = f.meaning.replace("|", "\\|")
        lines.append(f"| `{f.name}` | {f.kind} | {labels} | {conv} | `{f.source}` | {meaning} |")
    return "\n".join(lines) + "\n"
