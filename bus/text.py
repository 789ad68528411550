"""Wire strings made safe to show on a terminal: control characters and escapes written out visibly."""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with every non-printable character (C0/C1 controls such as ESC and newline, DEL,
    bidi and other format characters, line separators) written as its Python escape, e.g. ``\\x1b``.

    A string from the wire can then neither move the cursor, recolour nor retitle a terminal,
    nor split a line of a display; what it held stays readable.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
