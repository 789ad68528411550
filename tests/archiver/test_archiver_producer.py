"""End to end: a real ``python -m producer`` run recorded by the archiver process, read back with pandas."""

from __future__ import annotations

import json
import math
from pathlib import Path

from archiver_stream import read, wait_rows
from testkit.net import free_endpoint
from testkit.proc import AFTER_EXIT_S, RUN_TIMEOUT_S, Proc, real_producer

UPDATES = 8


def test_a_real_training_run_lands_in_csv_files_pandas_reads(tmp_path: Path) -> None:
    endpoint = free_endpoint()
    producer = real_producer(endpoint, UPDATES)
    archiver = Proc("consumers.archiver", "--endpoint", endpoint, "--out", str(tmp_path))
    try:
        bound, run_id = producer.banner(RUN_TIMEOUT_S)
        assert bound == endpoint
        run_dir = tmp_path / run_id
        assert producer.wait(RUN_TIMEOUT_S) == 0, producer.describe()
        wait_rows(run_dir / "training_finished.csv", 1, AFTER_EXIT_S, archiver)
        assert archiver.stop() == 0, archiver.describe()
    finally:
        producer.kill()
        archiver.kill()

    started = json.loads((run_dir / "run.json").read_text())
    assert started["run_id"] == run_id and started["training_started"]["n_envs"] == 4
    heads = started["training_started"]["action_heads"]
    assert heads["op"] == 6 and heads["blueprint"] == 13

    ppo = read(run_dir / "ppo_update.csv")
    assert len(ppo) == UPDATES and ppo["update"].diff().dropna().eq(1).all()
    assert ppo["seq"].is_monotonic_increasing
    for head in heads:
        assert ppo[f"head_{head}_entropy"].notna().all() and ppo[f"head_{head}_grad_norm"].notna().all()
    for column in ("policy_loss", "value_loss", "entropy", "grad_norm", "kl_divergence", "gradient_cv"):
        assert ppo[column].map(math.isfinite).all(), column
    assert ppo["clip_fraction"].between(0, 1).all() and (ppo["total_layers"] > 0).all()

    batches = read(run_dir / "batch_completed.csv")
    assert len(batches) >= UPDATES and (batches["fps"] > 0).all()
    assert len(read(run_dir / "heartbeat.csv")) >= 1
    finished = read(run_dir / "training_finished.csv")
    assert finished["reason"].tolist() == ["done"]
    assert not (run_dir / "gaps.csv").exists(), (run_dir / "gaps.csv").read_text()
    summary = [line for line in archiver.stdout if line.startswith(f"archiver: run {run_id}: ")]
    assert (
        summary and "missed 0 messages in 0 gaps" in summary[0] and "training finished (done)" in summary[0]
    )
