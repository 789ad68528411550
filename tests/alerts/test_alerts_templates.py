"""Alert summaries: every documented placeholder is filled in, and rendering never raises."""

from __future__ import annotations

import math

import msgspec
from alerts_stream import Stream
from hypothesis import given
from hypothesis import strategies as st

from consumers.alerts.daemon import AlertDaemon
from consumers.alerts.engine import Notification
from consumers.alerts.rules import TEMPLATE_FIELDS, Rule, parse_rules

EVERY_FIELD = " ".join(f"{name}={{{name}}}" for name in TEMPLATE_FIELDS)


def test_the_engine_fills_in_every_documented_placeholder() -> None:
    rules = parse_rules(
        f"""
[[rule]]
name = "boom"
metric = "exploding_layers"
op = ">"
fire = 0
summary = "{EVERY_FIELD} {{value:.1f}}"
"""
    )
    notes: list[Notification] = []
    daemon = AlertDaemon(rules, [notes.append])
    s = Stream("run-t")
    for item in (s.started(), s.ppo(exploding_layers=2)):
        daemon.handle([item], item.ts)
    (note,) = notes
    assert note.summary == (
        "rule=boom metric=exploding_layers value=2.0 fire=0.0 clear=0.0 op=> run_id=run-t "
        "update=0 step=0 severity=warning for= rank=None 2.0"
    )


def hostile_rule(summary: str) -> Rule:
    """A rule whose summary skipped validation, as if the check had missed something."""
    rule = msgspec.convert({"name": "q", "metric": "silence_s", "op": ">", "fire": 1}, Rule)
    msgspec.structs.force_setattr(rule, "summary", summary)
    return rule


def test_a_template_the_check_missed_renders_as_text_instead_of_crashing() -> None:
    rule = hostile_rule("{step.real} {value[0]} {nope} {value:d} {step:>5} {value!r} {")
    assert (
        rule.render({"step": None, "value": 2.5})
        == "{step.real} {value[0]} {nope} {value:d} {step:>5} {value!r} {"
    )
    rule = hostile_rule("{step.real} {value:d} {step:>5} {value:.1f}")
    assert rule.render({"step": None, "value": 2.5}) == "{step.real} 2.5 None 2.5"


FIELD_VALUES = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, -math.inf, math.nan]),
    st.integers(),
    st.text(),
)
PLACEHOLDER = st.builds(
    lambda name, spec, conv: "{" + name + conv + (":" + spec if spec else "") + "}",
    st.sampled_from([*TEMPLATE_FIELDS, "step.real", "value[0]", "", "0", "nope"]),
    st.text(alphabet="<>^=+- #0123456789,._%bcdeEfFgGnosxX{}", max_size=4),
    st.sampled_from(["", "!r", "!s", "!a", "!x"]),
)


@given(
    st.lists(st.one_of(st.text(max_size=10), PLACEHOLDER), max_size=6).map("".join),
    st.dictionaries(st.sampled_from(list(TEMPLATE_FIELDS)), FIELD_VALUES),
)
def test_rendering_any_template_with_any_values_never_raises(summary: str, fields: dict[str, object]) -> None:
    assert isinstance(hostile_rule(summary).render(fields), str)
