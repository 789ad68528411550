"""Fixtures for the dashboard tests: an app on a hand-moved clock, not connected to any socket."""

from __future__ import annotations

import pytest
from tui_helpers import ENDPOINT
from tui_synth import Clock

from consumers.tui.app import TamiyoApp


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_app(clock: Clock):
    def factory(**kw: object) -> TamiyoApp:
        kw.setdefault("connect", False)
        kw.setdefault("clock", clock)
        return TamiyoApp(ENDPOINT, **kw)  # type: ignore[arg-type]

    return factory
