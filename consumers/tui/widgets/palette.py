"""Level colours for dark and light themes: each has a WCAG contrast of 4.5 or more on its background."""

from __future__ import annotations

from dataclasses import dataclass

from consumers.tui.thresholds import Level


@dataclass(frozen=True)
class Palette:
    """Text styles per meaning; ``dim`` is Textual's blend, which works on either background."""

    ok: str
    warn: str
    fail: str
    accent: str
    dim: str = "dim"

    def of(self, level: Level) -> str:
        return {Level.NONE: "", Level.OK: self.ok, Level.WARN: self.warn, Level.FAIL: self.fail}[level]


DARK = Palette(ok="#5fd787", warn="#ffd75f", fail="bold #ff5f5f", accent="#5fafff")
LIGHT = Palette(ok="#116329", warn="#7a5200", fail="bold #a40e26", accent="#0550ae")


def palette_for(dark: bool) -> Palette:
    return DARK if dark else LIGHT
