"""Free loopback endpoints for the benchmark harnesses (bench does not import the tests' testkit)."""

from __future__ import annotations

import socket


def free_endpoint() -> str:
    """``tcp://127.0.0.1:PORT`` on a port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"
