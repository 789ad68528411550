"""bus.text.printable: what any display of a wire string shows."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bus.text import printable


def test_controls_escapes_and_separators_are_written_out():
    assert printable("\x1b[2J\x1b]0;t\x07") == "\\x1b[2J\\x1b]0;t\\x07"
    assert printable("a\nb\r\tc\x00\x7f\x9b") == "a\\nb\\r\\tc\\x00\\x7f\\x9b"
    assert printable("\u202eevil\u2028") == "\\u202eevil\\u2028"


def test_printable_text_is_unchanged():
    for text in ("sweep[lr=3e-4]", "[@click=app.quit]", "中文🙂", "a b\\x1b", ""):
        assert printable(text) is text


@settings(max_examples=500)
@given(st.text())
def test_the_result_is_one_printable_line(text):
    out = printable(text)
    assert out.isprintable()
    assert printable(out) == out
