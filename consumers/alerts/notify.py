"""Where notifications go: a readable line or a JSON line on stdout, and an ``--exec`` hook per alert."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import TextIO

from consumers.alerts.engine import FIRING, Notification

log = logging.getLogger(__name__)

EXEC_QUEUE_LIMIT = 1000
EXEC_TIMEOUT_S = 30.0


def format_line(n: Notification) -> str:
    """``2025-01-01T12:00:00Z FIRING   gradient_cv [warning] run 3f2a update 40: gradient_cv=2.41 (...)``."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(n.at))
    value = "n/a" if n.value is None else f"{n.value:.4g}"
    line = f"{stamp} {n.status.upper():8} {n.rule} [{n.severity}] run {n.run_id} update {n.update}: "
    if n.status == FIRING:
        line += f"{n.metric}={value} ({n.expression})"
        return f"{line} - {n.summary}" if n.summary else line
    negated = {">": "<=", ">=": "<", "<": ">=", "<=": ">"}[n.op]
    why = f"{n.metric} {negated} {n.clear:g}" if n.reason == "condition cleared" else n.reason
    if n.active_since is not None:
        why += f"; firing since {time.strftime('%H:%M:%SZ', time.gmtime(n.active_since))}"
    return f"{line}{n.metric}={value} ({why})"


def format_json(n: Notification) -> str:
    return json.dumps(n.to_dict(), separators=(",", ":"))


class Printer:
    """One line per notification on ``stream``, flushed at once (a pipe must not sit on alerts)."""

    def __init__(self, stream: TextIO, as_json: bool) -> None:
        self.stream = stream
        self.format: Callable[[Notification], str] = format_json if as_json else format_line

    def __call__(self, n: Notification) -> None:
        self.stream.write(self.format(n) + "\n")
        self.stream.flush()


class ExecHook:
    """Runs ``sh -c CMD`` per notification on a worker thread, the alert as JSON on its stdin.

    The daemon's loop only enqueues: a slow hook delays later hooks (they run in order),
    never the daemon. A hook that runs past ``timeout`` is killed; failures are logged.
    """

    def __init__(
        self, command: str, *, timeout: float = EXEC_TIMEOUT_S, limit: int = EXEC_QUEUE_LIMIT
    ) -> None:
        self.command = command
        self.timeout = timeout
        self.ran = 0
        self.failed = 0
        self.dropped = 0
        self._queue: queue.Queue[Notification | None] = queue.Queue(limit)
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._work, name="alerts-exec", daemon=True)
        self._thread.start()

    def __call__(self, n: Notification) -> None:
        try:
            self._queue.put_nowait(n)
        except queue.Full:
            self.dropped += 1
            log.error(
                "--exec hook is %d alerts behind; dropped the %s alert of %s",
                self._queue.qsize(),
                n.status,
                n.rule,
            )

    def close(self, grace: float = 5.0) -> None:
        """Let queued hooks run for up to ``grace`` seconds, then kill the one still running."""
        deadline = time.monotonic() + grace
        while True:
            try:
                self._queue.put(None, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            left = self._queue.qsize()
            proc = self._proc
            if proc is not None and proc.poll() is None:
                _kill_group(proc)
            log.warning("stopping with --exec hooks unfinished (%d queued)", left)

    def _work(self) -> None:
        while True:
            n = self._queue.get()
            if n is None:
                return
            self._run(n)

    def _run(self, n: Notification) -> None:
        env = dict(os.environ)
        env.update(
            TAMIYO_ALERT_STATUS=n.status,
            TAMIYO_ALERT_RULE=n.rule,
            TAMIYO_ALERT_SEVERITY=n.severity,
            TAMIYO_ALERT_RUN_ID=n.run_id,
        )
        payload = (format_json(n) + "\n").encode()
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", self.command],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group, so a timeout kills the whole pipeline
            )
        except OSError as exc:
            self.failed += 1
            log.error("--exec hook could not start: %s", exc)
            return
        self._proc = proc
        try:
            _, err = proc.communicate(payload, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            self.failed += 1
            log.error(
                "--exec hook ran past %gs and was killed (%s alert of %s)", self.timeout, n.status, n.rule
            )
            return
        finally:
            self._proc = None
        self.ran += 1
        if proc.returncode != 0:
            self.failed += 1
            tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] if err else []
            log.error(
                "--exec hook exited %d for the %s alert of %s%s",
                proc.returncode,
                n.status,
                n.rule,
                f": {tail[0][:200]}" if tail else "",
            )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
