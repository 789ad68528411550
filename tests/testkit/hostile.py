"""Hypothesis strategies for hostile but valid wire values: any text, and floats at the edges of the range."""

from __future__ import annotations

import math
import sys

from hypothesis import strategies as st

EXTREME_FLOATS = (
    math.inf,
    -math.inf,
    math.nan,
    1e308,
    -1e308,
    sys.float_info.max,
    -sys.float_info.max,
    sys.float_info.min,  # the smallest normal
    5e-324,  # the smallest subnormal
    -5e-324,
    2.5e-310,
    0.0,
    -0.0,
)
"""Infinities, NaN, the largest finite floats, subnormals and signed zeros."""

HOSTILE_TEXT = (
    "sweep[lr=3e-4]",
    "x[/]",
    "[@click=app.quit]go[/]",
    "[b]bold[/b] [link=https://x]l[/link]",
    "\x1b[31mred\x1b[0m",
    "\x1b]0;retitled\x07\x1b[2J",
    "a\nb\rc\td",
    "\u202eright-to-left\u2028sep",
    "nul\x00del\x7fc1\x9b",
    "{step.real}%s%d",
    "",
    "中文ｗｉｄｅ🙂",
)
"""Markup, terminal escapes, line breaks, bidi and C1 controls, format strings, wide characters."""

hostile_floats = st.one_of(st.sampled_from(EXTREME_FLOATS), st.floats())
"""Any float, the extremes drawn often."""

wire_text = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=40))
"""Any string a peer could send (msgspec decodes any valid UTF-8), the hostile ones drawn often."""
