"""The archiver as a process on a real socket: SIGKILL and restart, SIGTERM, new runs, a schema change."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pandas as pd
from archiver_stream import HEADS, Streamer, batch, csv_rows, ppo, read, started, wait_rows
from testkit.proc import Proc

from bus.contract import TrainingFinished
from bus.publish import BusPublisher, PublisherConfig

SUBSCRIBE_TIMEOUT_S = 30.0
ROWS_TIMEOUT_S = 60.0
DURABILITY_S = 1.0
"""The archiver's promise: what it received more than this long before a SIGKILL is on disk."""
SCHEDULING_SLACK_S = 1.0
"""Allowance for delivery and scheduling on a loaded 2-core machine, on top of the promise."""


def publisher(run_id: str, endpoint: str = "tcp://127.0.0.1:*") -> BusPublisher:
    return BusPublisher(run_id, PublisherConfig(endpoint=endpoint, heartbeat_period_s=0.5)).start()


def archiver(endpoint: str, out: Path) -> Proc:
    return Proc("consumers.archiver", "--endpoint", endpoint, "--out", str(out))


def test_sigkill_loses_at_most_a_second_and_a_restart_completes_the_run_without_duplicates(
    tmp_path: Path,
) -> None:
    pub = publisher("crash-run")
    run_dir = tmp_path / "crash-run"
    ppo_csv = run_dir / "ppo_update.csv"
    first = archiver(pub.bound_endpoint, tmp_path)
    streamer = Streamer(pub, rate=20.0)
    second: Proc | None = None
    try:
        assert pub.wait_for_subscriber(SUBSCRIBE_TIMEOUT_S)
        pub.publish(started())
        streamer.start()
        wait_rows(ppo_csv, 80, ROWS_TIMEOUT_S, first)

        killed_at = time.time()
        first.proc.send_signal(signal.SIGKILL)
        first.kill()
        published = list(streamer.published_at)

        # What a reader sees right after the crash: whole rows only, nothing but the last second missing.
        at_kill = read(ppo_csv)
        assert not at_kill["seq"].duplicated().any()
        must_have = [u for u, t in enumerate(published) if t <= killed_at - DURABILITY_S - SCHEDULING_SLACK_S]
        assert len(must_have) >= 40
        assert set(must_have) <= set(at_kill["update"]), "rows older than a second were lost"
        assert list(at_kill["update"]) == list(range(len(at_kill))), "rows on disk are not a prefix"

        # A write cut short by the kill leaves a torn last line; the restart must cut it off.
        with open(ppo_csv, "ab") as f:
            f.write(b"999999,1700000000.5,77,77,39")

        second = archiver(pub.bound_endpoint, tmp_path)
        target = streamer.count + 20
        second.wait_for(lambda: streamer.count >= target, ROWS_TIMEOUT_S, "20 more updates")
        wait_rows(ppo_csv, target, ROWS_TIMEOUT_S, second)
        streamer.stop()
        total = streamer.count
        pub.publish(TrainingFinished(reason="done", updates=total, env_steps=total * 512))
        wait_rows(run_dir / "training_finished.csv", 1, ROWS_TIMEOUT_S, second)
        assert second.stop() == 0, second.describe()
    finally:
        streamer.stop()
        pub.close()
        first.kill()
        if second is not None:
            second.kill()

    # The restart's replay refilled the unflushed second and the downtime: every update exactly once.
    for name in ("ppo_update", "batch_completed"):
        frame = read(run_dir / f"{name}.csv")
        assert list(frame["update"]) == list(range(total)), name
        assert frame["seq"].is_monotonic_increasing and not frame["seq"].duplicated().any(), name
    assert 999999 not in set(read(ppo_csv)["seq"])
    beats = read(run_dir / "heartbeat.csv")
    assert beats["seq"].is_monotonic_increasing and not beats["seq"].duplicated().any()
    assert json.loads((run_dir / "run.json").read_text())["training_started"]["n_envs"] == 4
    summary = [line for line in second.stdout if line.startswith("archiver: run crash-run:")]
    assert summary and "already on disk skipped" in summary[0], second.describe()
    assert "cut a torn last line" in "\n".join(second.stderr)


def test_sigterm_and_ctrl_c_flush_everything_and_exit_0(tmp_path: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        run_id = f"stop-{sig.name}"
        pub = publisher(run_id)
        proc = archiver(pub.bound_endpoint, tmp_path)
        try:
            assert pub.wait_for_subscriber(SUBSCRIBE_TIMEOUT_S)
            pub.publish(started())
            for u in range(30):
                pub.publish(ppo(u))
            pub.publish(batch(29))  # sent last: once it is counted, everything before it was received
            batch_csv = tmp_path / run_id / "batch_completed.csv"
            proc.wait_for(batch_csv.exists, ROWS_TIMEOUT_S, "the last event to be received")
            assert proc.stop(sig) == 0, proc.describe()
        finally:
            pub.close()
            proc.kill()
        assert csv_rows(tmp_path / run_id / "ppo_update.csv") == 30
        assert "Traceback" not in "\n".join(proc.stderr)
        assert any(line.startswith(f"archiver: run {run_id}: ") for line in proc.stdout), proc.describe()


def test_a_restarted_producer_gets_its_own_directory(tmp_path: Path) -> None:
    pub = publisher("run-one")
    endpoint = pub.bound_endpoint
    proc = archiver(endpoint, tmp_path)
    try:
        assert pub.wait_for_subscriber(SUBSCRIBE_TIMEOUT_S)
        pub.publish(started())
        for u in range(5):
            pub.publish(ppo(u))
        wait_rows(tmp_path / "run-one" / "ppo_update.csv", 5, ROWS_TIMEOUT_S, proc)
        pub.close()
        pub = publisher("run-two", endpoint)
        assert pub.wait_for_subscriber(SUBSCRIBE_TIMEOUT_S)
        pub.publish(started())
        for u in range(7):
            pub.publish(ppo(u))
        wait_rows(tmp_path / "run-two" / "ppo_update.csv", 7, ROWS_TIMEOUT_S, proc)
        assert proc.stop() == 0
    finally:
        pub.close()
        proc.kill()
    assert list(read(tmp_path / "run-one" / "ppo_update.csv")["update"]) == list(range(5))
    assert list(read(tmp_path / "run-two" / "ppo_update.csv")["update"]) == list(range(7))
    summaries = [line for line in proc.stdout if line.startswith("archiver: run ")]
    assert [s.split(":")[1].split()[1] for s in summaries] == ["run-one", "run-two"]


def test_a_schema_change_mid_run_continues_in_a_new_file(tmp_path: Path) -> None:
    pub = publisher("schema-run")
    proc = archiver(pub.bound_endpoint, tmp_path)
    run_dir = tmp_path / "schema-run"
    wider = {**HEADS, "tempo": 3}
    try:
        assert pub.wait_for_subscriber(SUBSCRIBE_TIMEOUT_S)
        pub.publish(started())
        for u in range(10):
            pub.publish(ppo(u))
        for u in range(10, 25):
            pub.publish(ppo(u, wider))  # the producer grew a head: new columns
        wait_rows(run_dir / "ppo_update.2.csv", 15, ROWS_TIMEOUT_S, proc)
        assert proc.stop() == 0
    finally:
        pub.close()
        proc.kill()
    old, new = read(run_dir / "ppo_update.csv"), read(run_dir / "ppo_update.2.csv")
    assert list(old["update"]) == list(range(10)) and list(new["update"]) == list(range(10, 25))
    assert "head_tempo_entropy" not in old.columns
    assert new["head_tempo_entropy"].notna().all() and new["head_op_grad_norm"].notna().all()
    assert old.columns[:2].tolist() == ["seq", "ts"] == new.columns[:2].tolist()
    both = pd.concat([old, new])
    assert both["seq"].is_monotonic_increasing


def test_an_unwritable_output_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = archiver("tcp://127.0.0.1:9", blocker / "runs")
    assert proc.proc.wait(60) == 1
    proc.kill()
    assert any("cannot create" in line for line in proc.stderr), proc.describe()
    assert "Traceback" not in "\n".join(proc.stderr)
