"""The text builders with any float: sparklines, charts, bars, percentages and number formats never raise."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from testkit.hostile import hostile_floats
from textual.content import Content

from bus.derived import return_trend
from consumers.tui.thresholds import RETURN_TREND_WINDOW
from consumers.tui.widgets.render import SPARK_LEVELS, bar, chart, fixed, fmt, pct, position, shown, spark

MAX = 1.7976931348623157e308


def test_a_span_that_overflows_still_scales():
    # 1e308 - (-1e308) is inf; inf / inf was NaN, and round(NaN) a ValueError.
    assert spark([1e308, -1e308, 0.0], 3) == "█▁▅"
    assert spark([MAX, -MAX], 2) == "█▁"
    assert chart([-1e308, 1e308], 2, 1) == ["▁█"]
    assert position(0.0, -MAX, MAX) == 0.5


def test_subnormals_scale_like_any_other_numbers():
    assert spark([0.0, 5e-324, 1e-323], 3) == "▁▅█"
    assert position(5e-324, 0.0, 1e-323) == 0.5


def test_numbers_at_the_edges_keep_their_width():
    assert pct(1e308) == "1.00e+310%" and pct(-2.5e7) == "-2.50e+09%" and pct(0.153) == "15%"
    assert pct(math.inf) == "inf" and pct(-math.inf) == "-inf" and pct(math.nan) == "nan"
    assert fixed(1e308) == "1.00e+308" and fixed(0.4567) == "0.46" and fixed(-math.inf) == "-inf"
    assert fmt(5e-324) == "4.94e-324"


def test_return_trend_of_the_largest_floats_is_a_number_with_the_right_arrow():
    n = RETURN_TREND_WINDOW
    delta, arrow = return_trend([1e308] * 2 * n)
    assert (delta, arrow) == (0.0, "→")  # the sums would overflow: inf - inf was NaN and "↘"
    assert return_trend([-1e308] * n + [1e308] * n) == (math.inf, "↗")


def test_wire_text_is_shown_printable_and_cut():
    assert shown("a\x1b[31mb\n") == "a\\x1b[31mb\\n"
    assert shown("[@click=app.quit]x[/]") == "[@click=app.quit]x[/]"
    assert Content(shown("[b]x[/b]")).plain == "[b]x[/b]"  # panels build Content from text, not markup
    assert shown("abcdef", 4) == "abc…" and shown("abc", 4) == "abc"


@settings(max_examples=300, deadline=None)
@given(values=st.lists(hostile_floats, max_size=12), width=st.integers(0, 20), rows=st.integers(0, 4))
def test_any_floats_draw_at_the_width_asked(values, width, rows):
    line = spark(values, width)
    assert len(line) == min(width, len(values)) and set(line) <= set(SPARK_LEVELS + " ")
    assert all(len(r) == width for r in chart(values, width, rows))
    for v in values:
        assert len(bar(v, width)) == width
        assert len(fmt(v)) <= 10 and len(fixed(v)) <= 10 and len(pct(v)) <= 11
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) >= 2 and min(finite) < max(finite):
        assert all(0.0 <= position(v, min(finite), max(finite)) <= 1.0 for v in finite)
    return_trend(values)
