"""Loopback ports for tests that must name one before binding (a child process, an ssh tunnel)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_endpoint() -> str:
    """``tcp://127.0.0.1:PORT`` on a free port, for a producer and its consumer to share."""
    return f"tcp://127.0.0.1:{free_port()}"
