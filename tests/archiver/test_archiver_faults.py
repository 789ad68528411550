"""The archiver process against faults: SIGKILL just after a file is made, and a disk that refuses rows."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
from archiver_stream import batch, ppo, started, wait_rows
from testkit.proc import Proc

from bus.publish import BusPublisher, PublisherConfig
from consumers.archiver.__main__ import EXIT_ROWS_LOST

SUBSCRIBE_TIMEOUT_S = 30.0
ROWS_TIMEOUT_S = 60.0
DEV_FULL = Path("/dev/full")


def publisher(run_id: str) -> BusPublisher:
    return BusPublisher(run_id, PublisherConfig(endpoint="tcp://127.0.0.1:*", heartbeat_period_s=0.5)).start()


def archiver(endpoint: str, out: Path) -> Proc:
    return Proc("consumers.archiver", "--endpoint", endpoint, "--out", str(out))


def _wait_exists(path: Path, proc: Proc, timeout: float) -> None:
    """Poll as fast as possible: the point is to catch the file the moment it is there."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.proc.poll() is None, proc.describe()
        assert time.monotonic() < deadline, f"{path} never appeared\n{proc.describe()}"
        time.sleep(0.0005)


def test_a_csv_made_just_before_a_sigkill_reads_with_pandas(tmp_path: Path) -> None:
    pub = publisher("kill-run")
    proc = archiver(pub.bound_endpoint, tmp_path)
    run_dir = tmp_path / "kill-run"
    try:
        assert pub.wait_for_subscriber(SUBSCRIBE_TIMEOUT_S)
        pub.publish(started())
        pub.publish(ppo(0))
        _wait_exists(run_dir / "ppo_update.csv", proc, ROWS_TIMEOUT_S)
        proc.proc.send_signal(signal.SIGKILL)  # well within the one second rows wait in memory
        proc.kill()
    finally:
        pub.close()
        proc.kill()
    files = sorted(run_dir.glob("*.csv"))
    assert files
    for path in files:
        frame = pd.read_csv(path)  # an empty file raised EmptyDataError
        assert frame.columns[:2].tolist() == ["seq", "ts"], path


@pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full, Linux's always-full device")
def test_a_full_disk_is_in_the_summary_and_the_exit_code(tmp_path: Path) -> None:
    # ppo_update.csv points at /dev/full: every write to it fails with ENOSPC, as on a full disk.
    run_dir = tmp_path / "full-run"
    run_dir.mkdir()
    (run_dir / "ppo_update.csv").symlink_to(DEV_FULL)
    pub = publisher("full-run")
    proc = archiver(pub.bound_endpoint, tmp_path)
    try:
        assert pub.wait_for_subscriber(SUBSCRIBE_TIMEOUT_S)
        pub.publish(started())
        for u in range(12):
            pub.publish(ppo(u))
        pub.publish(batch(11))  # sent last: once it is on disk, every ppo_update was received
        wait_rows(run_dir / "batch_completed.csv", 1, ROWS_TIMEOUT_S, proc)
        rc = proc.stop()
    finally:
        pub.close()
        proc.kill()
    assert rc == EXIT_ROWS_LOST, proc.describe()
    summary = next(line for line in proc.stdout if line.startswith("archiver: run full-run:"))
    assert "rows written (batch_completed 1, " in summary and " ppo_update 0, " in summary, summary
    assert summary.endswith("; LOST 12 rows the disk refused (ppo_update 12)"), summary
    assert "Traceback" not in "\n".join(proc.stderr)
    assert os.path.islink(run_dir / "ppo_update.csv")
