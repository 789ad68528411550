"""Waiting on a condition with a deadline, never a fixed sleep: plain, and inside a Textual pilot."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(
    predicate: Callable[[], bool], timeout: float, step: Callable[[], object] | None = None
) -> bool:
    """Call ``step`` (if any) and check ``predicate`` until it holds or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if step is not None:
            step()
        if predicate():
            return True
        if step is None:
            time.sleep(0.01)
    return predicate()


async def pilot_wait_until(
    pilot: Any, condition: Callable[[], bool], what: str, timeout: float, detail: Callable[[], str] = str
) -> None:
    """Let a Textual app run until ``condition()`` holds; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}{detail()}")
        await pilot.pause(0.05)
