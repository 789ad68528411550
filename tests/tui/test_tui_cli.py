"""``python -m consumers.tui`` as a user runs it: in a pseudo-terminal, stopped by q, SIGTERM or SIGINT."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from testkit.net import free_port

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0


class TuiProcess:
    """The dashboard in a pty of 100x30, with everything it wrote kept in ``output``."""

    def __init__(self, *args: str) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}
        env.pop("TEXTUAL", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "consumers.tui", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.output = b""

    def read_until(self, needle: bytes) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while needle not in self.output:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{needle!r} never appeared; output tail: {self.output[-2000:]!r}")
            self._read(0.1)

    def wait(self) -> int:
        deadline = time.monotonic() + DEADLINE_S
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        self._read(0.0)
        return self.proc.wait(timeout=1)

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            with contextlib.suppress(OSError):  # the child closed the pty
                self.output += os.read(self.master, 65536)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def tui():
    started: list[TuiProcess] = []

    def start(*args: str) -> TuiProcess:
        t = TuiProcess("--endpoint", f"tcp://127.0.0.1:{free_port()}", *args)
        started.append(t)
        return t

    yield start
    for t in started:
        t.close()


@pytest.mark.parametrize(
    ("stop", "code"),
    [
        (lambda t: os.write(t.master, b"q"), 0),
        (lambda t: os.write(t.master, b"\x03"), 0),  # Ctrl-C as the terminal sends it in raw mode
        (lambda t: t.proc.send_signal(signal.SIGTERM), 0),
        (lambda t: t.proc.send_signal(signal.SIGINT), 130),
    ],
    ids=["q", "ctrl-c", "sigterm", "sigint"],
)
def test_exits_cleanly(tui, stop, code):
    t = tui()
    t.read_until(b"Waiting for training on")
    stop(t)
    assert t.wait() == code
    assert b"Traceback" not in t.output


def test_malformed_endpoint_is_a_clear_error():
    result = subprocess.run(
        [sys.executable, "-m", "consumers.tui", "--endpoint", "127.0.0.1:5555"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert result.returncode == 2
    assert "tamiyo-tui: '127.0.0.1:5555' is not an endpoint: use tcp://HOST:PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_endpoint_from_environment(monkeypatch):
    port = free_port()
    monkeypatch.setenv("TAMIYO_ENDPOINT", f"tcp://127.0.0.1:{port}")
    t = TuiProcess()
    try:
        t.read_until(f"tcp://127.0.0.1:{port}".encode())
        os.write(t.master, b"q")
        assert t.wait() == 0
    finally:
        t.close()


def test_dashboard_imports_neither_torch_nor_producer():
    code = (
        "import sys, consumers.tui.__main__, consumers.tui.app; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'producer')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
