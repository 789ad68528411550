"""The naming rule: a contract field and its catalogue unit → a Prometheus metric name and a scale.

``tamiyo_`` + event prefix + field name, where the field's own unit suffix (``_ms``, ``_s``,
``_gb``) is replaced by the Prometheus base unit (``_seconds``, ``_bytes``, ``_ratio``) and the
value is scaled to it. ppo_update fields have no event prefix (``tamiyo_gradient_cv``); every
other event's fields are prefixed by the first word of its tag (``tamiyo_batch_fps``,
``tamiyo_heartbeat_uptime_seconds``). Units without a Prometheus base unit (counts, nats, 1/s)
keep the field name as it is and are named in the HELP text.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "tamiyo_"
UNPREFIXED_EVENT = "ppo_update"
"""The policy's own event: its fields are the exporter's main metrics and carry no event prefix."""


@dataclass(frozen=True)
class Unit:
    """How a catalogue unit is exposed: the base-unit suffix ('' for none) and the factor to it."""

    suffix: str
    scale: float = 1.0
    name_suffix: str = ""
    """The field name's own unit suffix (``_ms``), dropped in favour of ``suffix``."""


UNITS: dict[str, Unit] = {
    "s": Unit("seconds", 1.0, "_s"),
    "ms": Unit("seconds", 1e-3, "_ms"),
    "us": Unit("seconds", 1e-6, "_us"),
    "GB": Unit("bytes", 1e9, "_gb"),
    "MB": Unit("bytes", 1e6, "_mb"),
    "bytes": Unit("bytes", 1.0, "_bytes"),
    "fraction": Unit("ratio"),
    "%": Unit("ratio", 0.01, "_percent"),
    # No Prometheus base unit: the name stays the field's, the unit is in HELP.
    "": Unit(""),
    "count": Unit(""),
    "nats": Unit(""),
    "return²": Unit(""),
    "1/s": Unit(""),
    "update": Unit(""),
    "updates": Unit(""),
}
"""Every unit the catalogue uses (a test checks that). An unknown unit is exposed as ``""`` is."""


def unit(text: str) -> Unit:
    return UNITS.get(text, UNITS[""])


def event_prefix(tag: str) -> str:
    """'' for ppo_update; else the first word of the tag and '_' (``batch_completed`` → ``batch_``)."""
    return "" if tag == UNPREFIXED_EVENT else tag.split("_")[0] + "_"


def metric_name(base: str, unit_text: str, prefix: str = "") -> str:
    """``tamiyo_`` + prefix + base, its unit suffix swapped for the base unit's (``update_time_ms`` →
    ``update_time_seconds``); the suffix is appended when the name does not already end with it."""
    u = unit(unit_text)
    stem = base.removesuffix(u.name_suffix) if u.name_suffix else base
    if u.suffix and not stem.endswith("_" + u.suffix):
        stem = f"{stem}_{u.suffix}"
    return PREFIX + prefix + stem


def field_name(tag: str, field: str, unit_text: str) -> str:
    return metric_name(field, unit_text, event_prefix(tag))


def key_label(field: str) -> str:
    """The label of a map field's keys: its name's first word (``head_entropy`` → ``head``)."""
    return field.split("_")[0]
