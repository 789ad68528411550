"""The producer tests' stand-in for ``make bus``: a plain pyzmq XSUB/XPUB proxy in a thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import zmq


@pytest.fixture
def forwarder() -> Iterator[tuple[str, str]]:
    """(frontend, backend): publishers connect to the XSUB frontend, consumers to the XPUB backend."""
    ctx = zmq.Context()
    frontend, backend = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    control, steer = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    for sock in (frontend, backend, control, steer):
        sock.setsockopt(zmq.LINGER, 0)
    frontend.bind("tcp://127.0.0.1:*")
    backend.bind("tcp://127.0.0.1:*")
    control.bind("inproc://forwarder-control")
    steer.connect("inproc://forwarder-control")
    thread = threading.Thread(
        target=zmq.proxy_steerable, args=(frontend, backend, None, control), daemon=True
    )
    thread.start()
    try:
        yield (
            frontend.getsockopt_string(zmq.LAST_ENDPOINT),
            backend.getsockopt_string(zmq.LAST_ENDPOINT),
        )
    finally:
        steer.send(b"TERMINATE")
        thread.join(10)
        for sock in (frontend, backend, control, steer):
            sock.close(0)
        ctx.term()
