"""The daemon as a process on a real socket: JSON lines, --exec hooks, new runs, SIGTERM."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from alerts_stream import Stream, notification
from testkit.proc import Proc

from bus.publish import BusPublisher, PublisherConfig
from consumers.alerts.notify import ExecHook, format_json, format_line

SUBSCRIBE_TIMEOUT_S = 30.0
OUTPUT_TIMEOUT_S = 30.0


def publisher(run_id: str, endpoint: str = "tcp://127.0.0.1:*") -> BusPublisher:
    return BusPublisher(run_id, PublisherConfig(endpoint=endpoint, heartbeat_period_s=0.2)).start()


def send(pub: BusPublisher, s: Stream, n: int, **overrides: Any) -> None:
    for _ in range(n):
        pub.publish(s.ppo(**overrides).event)
        pub.publish(s.batch().event)


def json_notes(proc: Proc) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout if line.startswith("{")]


def has(proc: Proc, status: str, rule: str, run_id: str, count: int = 1) -> bool:
    return (
        sum(1 for n in json_notes(proc) if (n["status"], n["rule"], n["run_id"]) == (status, rule, run_id))
        >= count
    )


def test_daemon_fires_resolves_follows_a_new_run_and_feeds_the_hook(tmp_path: Path) -> None:
    hook_out = tmp_path / "hook.jsonl"
    pub = publisher("run-a")
    endpoint = pub.bound_endpoint
    daemon = Proc("consumers.alerts", "--endpoint", endpoint, "--json", "--exec", f"cat >> '{hook_out}'")
    try:
        assert pub.wait_for_subscriber(SUBSCRIBE_TIMEOUT_S)
        s = Stream("run-a")
        pub.publish(s.started().event)
        send(pub, s, 5)
        send(pub, s, 3, exploding_layers=2)
        daemon.wait_for(
            lambda: has(daemon, "firing", "exploding_layers", "run-a"), OUTPUT_TIMEOUT_S, "firing"
        )
        send(pub, s, 1)
        daemon.wait_for(
            lambda: has(daemon, "resolved", "exploding_layers", "run-a"), OUTPUT_TIMEOUT_S, "resolved"
        )
        send(pub, s, 3, exploding_layers=2)
        daemon.wait_for(
            lambda: has(daemon, "firing", "exploding_layers", "run-a", 2), OUTPUT_TIMEOUT_S, "firing again"
        )
        pub.close()

        # The producer restarts on the same endpoint with a new run id.
        pub = publisher("run-b", endpoint)
        assert pub.wait_for_subscriber(SUBSCRIBE_TIMEOUT_S)
        s2 = Stream("run-b")
        pub.publish(s2.started().event)
        send(pub, s2, 3)
        daemon.wait_for(
            lambda: has(daemon, "resolved", "exploding_layers", "run-a", 2),
            OUTPUT_TIMEOUT_S,
            "new-run resolve",
        )
        daemon.wait_for(
            lambda: hook_out.exists() and len(hook_out.read_text().splitlines()) >= 4,
            OUTPUT_TIMEOUT_S,
            "four hook calls",
        )
    finally:
        pub.close()
        rc = daemon.stop()
    assert rc == 0, daemon.describe()
    assert "Traceback" not in "\n".join(daemon.stderr)
    notes = json_notes(daemon)
    assert [(n["status"], n["rule"], n["run_id"]) for n in notes] == [
        ("firing", "exploding_layers", "run-a"),
        ("resolved", "exploding_layers", "run-a"),
        ("firing", "exploding_layers", "run-a"),
        ("resolved", "exploding_layers", "run-a"),
    ]
    assert notes[-1]["reason"] == "new run"
    hooked = [json.loads(line) for line in hook_out.read_text().splitlines()]
    assert hooked == notes, "the hook gets exactly what --json prints"


def test_a_hung_hook_never_stalls_the_daemon(tmp_path: Path) -> None:
    pub = publisher("run-h")
    daemon = Proc(
        "consumers.alerts", "--endpoint", pub.bound_endpoint, "--exec", "sleep 120", "--exec-timeout", "300"
    )
    try:
        assert pub.wait_for_subscriber(SUBSCRIBE_TIMEOUT_S)
        s = Stream("run-h")
        pub.publish(s.started().event)
        send(pub, s, 3, exploding_layers=2)
        daemon.wait_for(lambda: any(" FIRING " in line for line in daemon.stdout), OUTPUT_TIMEOUT_S, "firing")
        send(pub, s, 1)
        # The first hook is still asleep; the loop carries on regardless.
        daemon.wait_for(
            lambda: any(" RESOLVED " in line for line in daemon.stdout), OUTPUT_TIMEOUT_S, "resolved"
        )
    finally:
        pub.close()
        rc = daemon.stop()
    assert rc == 0, daemon.describe()
    assert any("--exec hooks unfinished" in line for line in daemon.stderr), daemon.describe()


def test_the_hook_gets_the_alert_as_json_on_stdin_and_in_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "out"
    hook = ExecHook(f"cat > '{out}'.json; echo \"$TAMIYO_ALERT_STATUS $TAMIYO_ALERT_RULE\" > '{out}'.env")
    hook(notification())
    hook.close(grace=30)
    assert json.loads(Path(f"{out}.json").read_text()) == json.loads(format_json(notification()))
    assert Path(f"{out}.env").read_text().strip() == "firing kl_divergence_high"
    assert (hook.ran, hook.failed) == (1, 0)


def test_a_failing_or_overdue_hook_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    failing = ExecHook("echo 'no route to slack' >&2; exit 3")
    failing(notification())
    failing.close(grace=30)
    overdue = ExecHook("sleep 30", timeout=0.2)
    overdue(notification())
    overdue.close(grace=30)
    assert failing.failed == 1 and overdue.failed == 1
    text = caplog.text
    assert "--exec hook exited 3 for the firing alert of kl_divergence_high: no route to slack" in text
    assert "ran past 0.2s and was killed" in text


def test_the_text_line_says_what_changed() -> None:
    firing = format_line(notification())
    assert " FIRING   kl_divergence_high [warning] run r1 update 22: kl_divergence=0.08 " in firing
    assert "(kl_divergence > 0.05)" in firing and "KL 0.080" in firing
    resolved = format_line(notification("resolved"))
    assert " RESOLVED kl_divergence_high " in resolved and "(kl_divergence <= 0.03; firing since" in resolved
