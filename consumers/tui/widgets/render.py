"""Small text builders the panels share: sparklines, bars, number formats and width-aware packing."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence

from textual.content import Content

from bus.text import printable

SPARK_LEVELS = "▁▂▃▄▅▆▇█"
BAR_EIGHTHS = " ▏▎▍▌▋▊▉"


def spark(values: Sequence[float], width: int) -> str:
    """The newest ``width`` values as a sparkline scaled to their own min..max; gaps for non-finite."""
    if width <= 0:
        return ""
    tail = list(values)[-width:]
    finite = [v for v in tail if math.isfinite(v)]
    if not finite:
        return " " * len(tail)
    lo, hi = min(finite), max(finite)
    top = len(SPARK_LEVELS) - 1
    out = []
    for v in tail:
        if not math.isfinite(v):
            out.append(" ")
        elif hi <= lo:
            out.append(SPARK_LEVELS[top // 2])
        else:
            out.append(SPARK_LEVELS[round(position(v, lo, hi) * top)])
    return "".join(out)


def position(v: float, lo: float, hi: float) -> float:
    """Where finite ``v`` lies between finite ``lo`` < ``hi``, as 0..1, for any magnitudes.

    ``hi - lo`` overflows to inf when both are near the largest float (1e308 and -1e308):
    then the halves are compared instead, which cannot overflow.
    """
    span = hi - lo
    at = (v / 2 - lo / 2) / (hi / 2 - lo / 2) if math.isinf(span) else (v - lo) / span
    return min(1.0, max(0.0, at))


def bar(fraction: float, width: int) -> str:
    """A horizontal bar ``width`` cells wide filled to ``fraction`` (clamped to 0..1), in eighths."""
    if width <= 0:
        return ""
    if not math.isfinite(fraction):
        fraction = 1.0
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    text = "█" * full + (BAR_EIGHTHS[part] if part else "")
    return text.ljust(width)


@functools.lru_cache(maxsize=4096)  # a frame formats every sample of the returns history to size its labels
def fmt(x: float, digits: int = 3) -> str:
    """A compact number: 3 significant digits, scientific below 1e-3 and above 1e5."""
    if not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if x == 0:
        return "0"
    mag = abs(x)
    if mag < 1e-3 or mag >= 1e5:
        return f"{x:.{digits - 1}e}"
    decimals = max(0, digits - 1 - math.floor(math.log10(mag)))
    return f"{x:.{decimals}f}"


def fixed(x: float, decimals: int = 2) -> str:
    """``x`` with ``decimals`` decimals, as ``fmt`` gives it where that would run long (or is not finite)."""
    if math.isfinite(x) and abs(x) < 1e5:
        return f"{x:.{decimals}f}"
    return fmt(x)


def pct(x: float) -> str:
    """A fraction as a whole percentage; scientific from 1e5 % on (``1.00e+310%`` for 1e308)."""
    if not math.isfinite(x):
        return fmt(x)
    if abs(x) < 1e3:
        return f"{x:.0%}"
    mantissa, exponent = f"{x:.2e}".split("e")  # x * 100 could overflow: shift the exponent instead
    return f"{mantissa}e{int(exponent) + 2:+03d}%"


def shown(text: str, limit: int | None = None) -> str:
    """A string from the wire as it is shown: printable (see ``bus.text``), cut to ``limit`` with "…".

    Panels build Content from plain text, never markup, so brackets in it show as they are.
    """
    text = printable(text)
    if limit is not None and len(text) > limit:
        return text[: max(0, limit - 1)] + "…"
    return text


def pack(pieces: Iterable[Content], width: int, sep: str = "  ") -> Content:
    """Join pieces with ``sep``, starting a new line rather than splitting a piece across lines."""
    return Content("\n").join(pack_lines(pieces, width, sep))


def pack_lines(pieces: Iterable[Content], width: int, sep: str = "  ") -> list[Content]:
    """``pack``, as its lines."""
    lines: list[Content] = []
    line = Content("")
    used = 0
    gap = len(sep)
    for piece in pieces:
        if not piece.plain:
            continue
        cells = piece.cell_length
        if used and used + gap + cells > width:
            lines.append(line)
            line, used = Content(""), 0
        if used:
            line, used = line + sep + piece, used + gap + cells
        else:
            line, used = piece, cells
    if used or not lines:
        lines.append(line)
    return lines


def styled(text: str, style: str = "") -> Content:
    return Content.styled(text, style) if style else Content(text)


def chart(values: Sequence[float], width: int, rows: int) -> list[str]:
    """The newest ``width`` values as a bar chart ``rows`` lines tall (top line first), min..max scaled."""
    if width <= 0 or rows <= 0:
        return []
    tail = [v for v in list(values)[-width:] if math.isfinite(v)]
    if not tail:
        return [" " * width for _ in range(rows)]
    lo, hi = min(tail), max(tail)
    total = rows * 8
    heights = [max(1, round(position(v, lo, hi) * total)) if hi > lo else total // 2 for v in tail]
    lines = []
    for r in range(rows):
        floor = (rows - 1 - r) * 8  # eighths below this line
        cells = []
        for h in heights:
            fill = h - floor
            cells.append("█" if fill >= 8 else (SPARK_LEVELS[fill - 1] if fill > 0 else " "))
        lines.append("".join(cells).ljust(width))
    return lines
