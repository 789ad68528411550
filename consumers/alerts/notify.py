"""Where notifications go: a readable line or a JSON line on stdout, and an ``--exec`` hook per alert."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import selectors
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TextIO

from bus.text import printable
from consumers.alerts.engine import FIRING, Notification

log = logging.getLogger(__name__)

EXEC_QUEUE_LIMIT = 1000
EXEC_TIMEOUT_S = 30.0
EXEC_OUTPUT_KEEP = 64 * 1024
"""Bytes of a hook's output (stdout and stderr together) kept to log its last line; the rest is discarded."""
EXEC_READ_CHUNK = 64 * 1024


def format_line(n: Notification) -> str:
    """``2025-01-01T12:00:00Z FIRING   gradient_cv [warning] run 3f2a update 40: gradient_cv=2.41 (...)``.

    Always one line of printable text: control characters and terminal escapes in any string
    (a run id, a summary filled from the wire) are written out as ``\\x1b`` and the like.
    """
    return printable(_line(n))


def _line(n: Notification) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(n.at))
    value = "n/a" if n.value is None else f"{n.value:.4g}"
    where = "" if n.rank is None else f" rank {n.rank}"
    line = f"{stamp} {n.status.upper():8} {n.rule} [{n.severity}] run {n.run_id}{where} update {n.update}: "
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


class Tail:
    """The last ``keep`` bytes written to it; what came before is discarded as it arrives."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.seen = 0
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def add(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        self._chunks.append(chunk)
        self._size += len(chunk)
        while len(self._chunks) > 1 and self._size - len(self._chunks[0]) >= self.keep:
            self._size -= len(self._chunks.popleft())

    def value(self) -> bytes:
        return b"".join(self._chunks)[-self.keep :] if self.keep else b""


class ExecHook:
    """Runs ``sh -c CMD`` per notification on a worker thread, the alert as JSON on its stdin.

    The daemon's loop only enqueues: a slow hook delays later hooks (they run in order),
    never the daemon. A hook that runs past ``timeout`` is killed; failures are logged.
    Of a hook's output (stdout and stderr together) only the last ``keep`` bytes are kept,
    so a hook that floods it costs the daemon no memory; no hook's failure stops the next.
    """

    def __init__(
        self,
        command: str,
        *,
        timeout: float = EXEC_TIMEOUT_S,
        limit: int = EXEC_QUEUE_LIMIT,
        keep: int = EXEC_OUTPUT_KEEP,
    ) -> None:
        self.command = command
        self.timeout = timeout
        self.keep = keep
        self.ran = 0
        self.failed = 0
        self.dropped = 0
        self.last_output = Tail(keep)
        """The kept tail of the latest hook's output."""
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
            try:
                self._run(n)
            except Exception as exc:  # the worker outlives any one hook, whatever goes wrong
                self.failed += 1
                log.error("--exec hook failed for the %s alert of %s: %r", n.status, n.rule, exc)
            finally:
                proc, self._proc = self._proc, None
                if proc is not None:
                    _reap(proc)

    def _run(self, n: Notification) -> None:
        env = dict(os.environ)
        env.update(
            TAMIYO_ALERT_STATUS=n.status,
            TAMIYO_ALERT_RULE=n.rule,
            TAMIYO_ALERT_SEVERITY=n.severity,
            TAMIYO_ALERT_RUN_ID=n.run_id,
            TAMIYO_ALERT_RANK="" if n.rank is None else str(n.rank),
        )
        payload = (format_json(n) + "\n").encode()
        self.last_output = Tail(self.keep)
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", self.command],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group, so a timeout kills the whole pipeline
            )
        except OSError as exc:
            self.failed += 1
            log.error("--exec hook could not start: %s", exc)
            return
        self._proc = proc
        if not _exchange(proc, payload, self.last_output, time.monotonic() + self.timeout):
            _kill_group(proc)
            proc.wait()
            self.failed += 1
            log.error(
                "--exec hook ran past %gs and was killed (%s alert of %s)", self.timeout, n.status, n.rule
            )
            return
        self.ran += 1
        if proc.returncode != 0:
            self.failed += 1
            lines = self.last_output.value().decode("utf-8", "replace").strip().splitlines()
            last = printable(lines[-1][-200:]) if lines else ""
            log.error(
                "--exec hook exited %d for the %s alert of %s%s",
                proc.returncode,
                n.status,
                n.rule,
                f": {last}" if last else "",
            )


def _exchange(proc: subprocess.Popen[bytes], payload: bytes, out: Tail, deadline: float) -> bool:
    """Feed ``payload`` to the hook and its output to ``out`` until it exits; False at ``deadline``."""
    assert proc.stdin is not None and proc.stdout is not None
    os.set_blocking(proc.stdin.fileno(), False)
    pending = memoryview(payload)
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdin, selectors.EVENT_WRITE)
        sel.register(proc.stdout, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for key, _ in sel.select(left):
                if key.fileobj is proc.stdin:
                    try:
                        pending = pending[os.write(proc.stdin.fileno(), pending) :]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # the hook does not read its stdin: fine
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                else:
                    chunk = os.read(proc.stdout.fileno(), EXEC_READ_CHUNK)
                    if chunk:
                        out.add(chunk)
                    else:
                        sel.unregister(proc.stdout)
    proc.stdout.close()
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False
    return True


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill the hook if it still runs (its worker failed mid-run) and close its pipes."""
    if proc.poll() is None:
        _kill_group(proc)
        proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
