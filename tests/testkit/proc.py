"""Run a consumer or producer as a subprocess and wait on its output lines with a deadline."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BANNER = re.compile(r"^tamiyo: publishing on (tcp://[0-9.]+:\d+) \(run (\S+)\)$")
"""The producer's first stderr line."""
RUN_TIMEOUT_S = 120.0
"""For a real producer's short run (torch import, training)."""
AFTER_EXIT_S = 30.0
"""Once a producer has exited, its last events are in flight for at most this long."""


class Proc:
    """A child ``python -m MODULE ARGS`` whose stdout and stderr lines are collected as they come."""

    def __init__(self, module: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})},
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed: queue.Queue[None] = queue.Queue()
        self._pumps = [
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr))
        ]
        for pump in self._pumps:
            pump.start()

    def _pump(self, stream, sink: list[str]) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            sink.append(line.rstrip("\n"))
            self._changed.put(None)
        self._changed.put(None)

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Block until ``predicate()`` holds; fail with the child's output after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}\n{self.describe()}")
            if self.proc.poll() is not None and self._changed.empty():
                if predicate():
                    return
                raise AssertionError(
                    f"child exited ({self.proc.returncode}) before {what}\n{self.describe()}"
                )
            with contextlib.suppress(queue.Empty):
                self._changed.get(timeout=min(left, 0.2))

    def wait_for_line(self, pattern: str, timeout: float) -> str:
        """Block until a stderr line matches ``pattern`` (``re.search``); that line."""
        regex = re.compile(pattern)

        def matching() -> list[str]:
            return [text for text in self.stderr if regex.search(text)]

        self.wait_for(lambda: bool(matching()), timeout, f"a stderr line matching {pattern!r}")
        return matching()[0]

    def wait(self, timeout: float) -> int:
        """The exit code, once the child has exited and all its output is collected."""
        rc = self.proc.wait(timeout)
        for pump in self._pumps:
            pump.join(10)
        return rc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(30)

    def banner(self, timeout: float) -> tuple[str, str]:
        """A producer's endpoint and run id, from its first stderr line."""
        self.wait_for(lambda: bool(self.stderr), timeout, "the producer's first line")
        m = BANNER.match(self.stderr[0])
        assert m, f"unexpected first line {self.stderr[0]!r}"
        return m.group(1), m.group(2)

    def stderr_text(self) -> str:
        return "\n".join(self.stderr)

    def describe(self) -> str:
        out = "\n".join(self.stdout[-40:])
        err = "\n".join(self.stderr[-40:])
        return f"--- stdout ---\n{out}\n--- stderr ---\n{err}"


def real_producer(endpoint: str, updates: int) -> Proc:
    """A real run: ``python -m producer --endpoint E --updates N --n-envs 4 --wait-for-subscriber 20``."""
    return Proc(
        "producer",
        "--endpoint",
        endpoint,
        "--updates",
        str(updates),
        "--n-envs",
        "4",
        "--wait-for-subscriber",
        "20",
    )
