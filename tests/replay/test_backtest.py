"""Backtesting rules on archives: the live daemon's firings at the same updates, recorded time, exit codes."""

from __future__ import annotations

import json
import math
from pathlib import Path

from testkit.archive import envelopes, write_archive
from testkit.events import T0, batch_completed, heartbeat, ppo_update, training_finished, training_started
from testkit.net import free_endpoint
from testkit.proc import AFTER_EXIT_S, Proc
from testkit.wait import wait_until

from bus.contract import SCHEMA_VERSION, Envelope, Event
from bus.publish import BusPublisher, PublisherConfig
from consumers.alerts.backtest import backtest
from consumers.alerts.rules import default_rules
from consumers.archiver.reader import open_archive

UPDATES = 60


def faulty_run() -> list[Event]:
    """KL over 0.05 for updates 10-15, NaN policy loss at 30, NaN gradients at 41-42."""
    events: list[Event] = [training_started()]
    for u in range(1, UPDATES + 1):
        events.append(
            ppo_update(
                u,
                kl_divergence=0.1 if 10 <= u <= 15 else 0.01,
                policy_loss=math.nan if u == 30 else 0.1,
                nan_grad_count=5 if u in (41, 42) else 0,
            )
        )
        events.append(batch_completed(u))
    events.append(training_finished(updates=UPDATES))
    return events


def _key(note: dict) -> tuple:
    return (note["status"], note["rule"], note["severity"], note["update"], note["step"], str(note["value"]))


def test_the_backtest_prints_what_the_live_daemon_printed(tmp_path: Path) -> None:
    endpoint = free_endpoint()
    with BusPublisher("run-faulty", PublisherConfig(endpoint=endpoint)) as pub:
        daemon = Proc("consumers.alerts", "--endpoint", endpoint, "--json")
        archiver = Proc("consumers.archiver", "--endpoint", endpoint, "--out", str(tmp_path), "--no-fsync")
        try:
            assert wait_until(lambda: pub.stats.replays >= 2, 60.0), daemon.describe() + archiver.describe()
            for event in faulty_run():
                assert pub.publish(event)
            run_dir = tmp_path / "run-faulty"
            archiver.wait_for(
                lambda: (
                    (run_dir / "training_finished.csv").exists()
                    and (run_dir / "training_finished.csv").read_text().count("\n") >= 2
                ),
                AFTER_EXIT_S,
                "the archived training_finished",
            )
            daemon.wait_for(
                lambda: sum('"status":"resolved"' in line for line in daemon.stdout) >= 3,
                AFTER_EXIT_S,
                "the live daemon's three resolutions",
            )
            assert daemon.stop() == 0 and archiver.stop() == 0
        finally:
            daemon.kill()
            archiver.kill()
    live = [json.loads(line) for line in daemon.stdout if line.startswith("{")]
    assert {n["rule"] for n in live} == {"kl_divergence_high", "nonfinite_losses", "nonfinite_gradients"}

    offline = Proc("consumers.alerts", "--backtest", str(run_dir), "--json", "--fail-on", "critical")
    assert offline.wait(60) == 1, offline.describe()  # a critical rule fired
    replayed = [json.loads(line) for line in offline.stdout]
    assert [_key(n) for n in replayed] == [_key(n) for n in live]
    first, last = T0, max(n["at"] for n in live)
    ts = [e.ts for e in open_archive(run_dir).read_all()]
    assert all(min(ts) <= n["at"] <= max(ts) for n in replayed) and first < last  # recorded time, not now
    assert "fired 3 (critical 2, warning 1)" in offline.stderr_text()


def test_for_seconds_and_silence_use_the_recorded_clock() -> None:
    """A recorded 30 s silence mid-run: producer_silent fires 10 s into it and resolves when events resume."""
    events: list[Event] = [training_started()]
    times = [T0]
    for u in range(1, 11):
        events += [ppo_update(u), heartbeat(update=u)]
        t = T0 + u + (30.0 if u > 5 else 0.0)
        times += [t, t]
    items = [
        Envelope(schema=SCHEMA_VERSION, run_id="run-s", seq=i, ts=t, event=e)
        for i, (e, t) in enumerate(zip(events, times, strict=True))
    ]
    verdict = backtest(items, default_rules())
    silent = [n for n in verdict.notifications if n.rule == "producer_silent"]
    assert [(n.status, n.update) for n in silent] == [("firing", 5), ("resolved", 6)]
    assert silent[0].at - (T0 + 5) == 10.25  # the first 0.25 s tick past 10 s of recorded silence
    assert silent[1].at == T0 + 6 + 30.0 and silent[0].active_since == silent[0].at


def test_a_recorded_hole_counts_as_missed_events() -> None:
    events: list[Event] = [training_started()] + [ppo_update(u) for u in range(1, 20)]
    verdict = backtest(envelopes(events, hole=(5, 9)), default_rules())
    missed = [n for n in verdict.notifications if n.rule == "events_missed"]
    assert [(n.status, n.value) for n in missed] == [("firing", 5.0)]


def test_exit_codes_for_fail_on_and_a_bad_archive(tmp_path: Path) -> None:
    good = write_archive(tmp_path, envelopes(faulty_run(), run_id="run-k"))
    bad = tmp_path / "broken"
    bad.mkdir()
    warnings_only = tmp_path / "rules.toml"
    warnings_only.write_text(
        '[[rule]]\nname = "kl"\nmetric = "kl_divergence"\nop = ">"\nfire = 0.05\nseverity = "warning"\n'
    )
    runs = [("--fail-on", "warning"), ("--fail-on", "critical"), ()]
    codes = []
    for extra in runs:
        proc = Proc("consumers.alerts", "--backtest", str(good), "--rules", str(warnings_only), *extra)
        codes.append(proc.wait(60))
        assert "FIRING   kl [warning] run run-k update 10" in "\n".join(proc.stdout), proc.describe()
    assert codes == [1, 0, 0]
    both = Proc("consumers.alerts", "--backtest", str(bad), str(good), "--fail-on", "info")
    assert both.wait(60) == 2
    assert f"backtest: {bad}/run.json: missing" in both.stderr_text()
    assert any("run run-k update 12" in line for line in both.stdout)  # the good run is still evaluated
