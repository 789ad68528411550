"""The daemon's text line with hostile values: one printable line, whatever the strings and numbers hold."""

from __future__ import annotations

import logging

import pytest
from alerts_stream import notification
from hypothesis import given, settings
from hypothesis import strategies as st
from testkit.events import envelope, training_started
from testkit.hostile import hostile_floats, wire_text

from bus.text import printable
from consumers.alerts.daemon import AlertDaemon
from consumers.alerts.engine import FIRING, RESOLVED
from consumers.alerts.notify import format_line
from consumers.alerts.rules import OPS


def test_terminal_escapes_in_a_run_id_and_summary_are_written_out():
    line = format_line(notification(run_id="r\x1b[2J\x1b]0;owned\x07", summary="ok\nFAKE LINE \x1b[31m"))
    assert "\x1b" not in line and "\n" not in line and "\x07" not in line
    assert "run r\\x1b[2J\\x1b]0;owned\\x07 update 22" in line
    assert line.endswith("- ok\\nFAKE LINE \\x1b[31m")


@settings(max_examples=400, deadline=None)
@given(
    status=st.sampled_from([FIRING, RESOLVED]),
    texts=st.lists(wire_text, min_size=5, max_size=5),
    numbers=st.lists(hostile_floats, min_size=3, max_size=3),
    op=st.sampled_from(sorted(OPS)),
    cleared=st.booleans(),
)
def test_any_values_give_one_printable_line(status, texts, numbers, op, cleared):
    run_id, metric, summary, expression, reason = texts
    value, fire, clear = numbers
    note = notification(
        status=status,
        run_id=run_id,
        metric=metric,
        summary=summary,
        expression=expression,
        value=value,
        op=op,
        fire=fire,
        clear=clear,
        reason="condition cleared" if cleared else reason,
    )
    line = format_line(note)
    assert line.isprintable()
    assert f" run {printable(run_id)} update 22: " in line and printable(metric) in line
    if status == FIRING:
        assert line.endswith(f" - {printable(summary)}" if summary else f"({printable(expression)})")


def test_the_run_followed_is_logged_with_escapes_written_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    AlertDaemon([], []).handle([envelope(0, training_started(), run_id="r\x1b]0;t\x07\n")], now=0.0)
    assert "following run r\\x1b]0;t\\x07\\n" in caplog.text and "\x1b" not in caplog.text
