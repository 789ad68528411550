"""How old a throttled value is: its "(Nu ago)" suffix, and the dim style once a measurement is overdue."""

from __future__ import annotations

from textual.content import Content

from bus.derived import measurement_age, measurement_overdue
from consumers.tui.view import View


def _age(view: View, measured_at: int) -> tuple[int | None, bool]:
    t = view.snapshot.tamiyo
    started = t.started
    every = started.diagnostics_every if started is not None else 0
    age = measurement_age(t.latest.train_steps, measured_at)
    return age, measurement_overdue(age, every)


def age_style(view: View, measured_at: int, style: str) -> str:
    """``style`` while the value is fresh, the palette's dim once a measurement period old."""
    return view.palette.dim if _age(view, measured_at)[1] else style


def age_suffix(view: View, measured_at: int) -> Content:
    """`` (3u ago)``: updates since ``measured_at``, dim; empty if never measured."""
    age, _ = _age(view, measured_at)
    if age is None:
        return Content("")
    return Content.styled(f" ({age}u ago)", view.palette.dim)
