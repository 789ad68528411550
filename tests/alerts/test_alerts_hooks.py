"""--exec hooks: bounded output, and no failed, hung or crashing hook stops the hooks after it."""

from __future__ import annotations

import logging
import subprocess
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from alerts_stream import notification

from consumers.alerts import notify
from consumers.alerts.notify import EXEC_OUTPUT_KEEP, ExecHook, Tail

FLOOD_BYTES = 48 * 1024 * 1024


def test_a_tail_keeps_exactly_the_last_bytes() -> None:
    tail = Tail(10)
    for chunk in (b"abc", b"defghij", b"", b"klmnopqrstu", b"vw"):
        tail.add(chunk)
    assert tail.value() == b"mnopqrstuvw"[-10:] and tail.seen == 23
    assert Tail(0).value() == b""


def test_a_hook_flooding_its_output_keeps_only_the_tail(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    hook = ExecHook(f"head -c {FLOOD_BYTES} /dev/zero >&2; echo 'last words' >&2; exit 4")
    tracemalloc.start()
    try:
        hook(notification("firing", summary="", reason=""))
        hook.close(grace=120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    kept = hook.last_output.value()
    assert hook.last_output.seen == FLOOD_BYTES + len(b"last words\n")
    assert len(kept) == EXEC_OUTPUT_KEEP and kept.endswith(b"\0last words\n")
    assert peak < 8 * 1024 * 1024, f"the daemon held {peak} bytes of a {FLOOD_BYTES}-byte flood"
    assert (hook.ran, hook.failed) == (1, 1)
    assert "--exec hook exited 4 for the firing alert of kl_divergence_high" in caplog.text
    assert caplog.text.rstrip().endswith("last words")


def test_a_failing_hook_does_not_stop_the_next(tmp_path: Path) -> None:
    out = tmp_path / "out"
    hook = ExecHook(f'read -r line; case "$line" in *\'"firing"\'*) exit 3;; esac; echo "$line" > \'{out}\'')
    hook(notification("firing", summary="", reason=""))
    hook(notification("resolved", summary="", reason=""))
    hook.close(grace=60)
    assert (hook.ran, hook.failed) == (2, 1)
    assert '"status":"resolved"' in out.read_text()


def test_a_hung_hook_is_killed_and_the_next_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    hook = ExecHook(
        f"read -r line; case \"$line\" in *'\"firing\"'*) sleep 60;; esac; echo done > '{out}'", timeout=0.5
    )
    hook(notification("firing", summary="", reason=""))
    hook(notification("resolved", summary="", reason=""))
    hook.close(grace=60)
    assert (hook.ran, hook.failed) == (1, 1)
    assert out.read_text() == "done\n"


def test_the_hook_thread_survives_any_exception(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    real_popen = subprocess.Popen
    calls: list[int] = []

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("something nobody expected")
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(notify.subprocess, "Popen", popen)
    caplog.set_level(logging.ERROR)
    hook = ExecHook(f"cat > '{out}'")
    hook(notification("firing", summary="", reason=""))
    hook(notification("resolved", summary="", reason=""))
    hook.close(grace=60)
    assert (hook.ran, hook.failed) == (1, 1)
    assert '"status":"resolved"' in out.read_text()
    assert "something nobody expected" in caplog.text


def test_a_hook_that_ignores_its_stdin_is_fine() -> None:
    hook = ExecHook("exit 0")
    for _ in range(3):
        hook(notification("firing", summary="", reason=""))
    hook.close(grace=60)
    assert (hook.ran, hook.failed) == (3, 0)
