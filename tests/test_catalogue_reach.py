"""Every ppo_update field reaches every consumer: the folded state, the alert metrics and the archive."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from testkit.events import build, envelope, training_started

from bus import catalogue
from bus.aggregator import fold_all
from bus.contract import PPOUpdate
from consumers.alerts.metrics import METRICS
from consumers.archiver.flatten import flatten, map_column

FIELDS = catalogue.fields(PPOUpdate)


def _distinct(i: int, t: msgspec.inspect.Type) -> Any:
    """A value no other field of the event holds, so a mix-up of two fields cannot pass."""
    if isinstance(t, msgspec.inspect.DictType):
        return {"op": 1000.25 + i}
    if isinstance(t, msgspec.inspect.FloatType):
        return 1000.5 + i
    return 1000 + i


EVENT = build(PPOUpdate, {f.name: _distinct(i, f.type) for i, f in enumerate(FIELDS)}, {})
STATE = fold_all([envelope(0, training_started()), envelope(1, EVENT)])


@pytest.mark.parametrize("name", [f.name for f in FIELDS])
def test_the_folded_state_holds_the_field(name: str) -> None:
    assert getattr(STATE.tamiyo, name) == getattr(EVENT, name)


@pytest.mark.parametrize(
    "field",
    # Per-head maps are no single number: the daemon watches them through derived metrics.
    [f for f in FIELDS if not isinstance(f.type, msgspec.inspect.DictType)],
    ids=lambda f: f.name,
)
def test_the_alert_daemon_can_watch_the_field(field: catalogue.Field) -> None:
    value = getattr(EVENT, field.name)
    steps = catalogue.step_fields(PPOUpdate)
    if field.name in steps:  # bookkeeping: the step of the throttled metrics that name it
        readings = [METRICS[f.name].read(STATE, 0.0) for f in FIELDS if f.measured_at == field.name]
        assert readings and all(r is not None and r.step == value for r in readings)
    else:
        reading = METRICS[field.name].read(STATE, 0.0)
        assert reading is not None and reading.value == value


def test_the_archive_row_holds_every_field() -> None:
    columns, row, _ = flatten(1, 0.0, EVENT)
    cells = dict(zip(columns, row, strict=True))
    for f in FIELDS:
        value = getattr(EVENT, f.name)
        if isinstance(value, dict):
            assert {k: cells[map_column(f.name, k)] for k in value} == value
        else:
            assert cells[f.name] == value
