"""Helpers for the dashboard tests: async tests without a plugin, and reading what is on the screen."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from consumers.tui.app import TamiyoApp

ENDPOINT = "tcp://127.0.0.1:5555"


def async_test(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an ``async def`` test in its own event loop (no pytest-asyncio needed)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return run


def screen_text(app: TamiyoApp) -> str:
    """Every line of the screen as the terminal would show it (borders, titles and all)."""
    strips = app.screen._compositor.render_strips()  # Textual has no public text dump of a screen
    return "\n".join(strip.text for strip in strips)


async def settle(app: TamiyoApp, pilot: object) -> str:
    """Draw now (the timer would within 1/refresh_hz), let layout run, and return the screen text."""
    app.draw()
    await pilot.pause()  # type: ignore[attr-defined]
    app.draw()  # a second pass draws at the widths the first layout gave
    await pilot.pause()  # type: ignore[attr-defined]
    return screen_text(app)
