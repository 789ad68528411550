"""Trainer figures: telemetry overhead (also with a SIGSTOPped consumer), gradient noise cost, learning."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.ports import free_endpoint
from bench.report import Figure, at_least, at_most

CLEAR_MARGIN = 0.5
"""Return units above the random policy that count as clearly learned (a scripted good plan scores ~1)."""

CONSUMER = """
import sys
from bus.subscribe import Subscriber, SubscriberConfig
sub = Subscriber(SubscriberConfig(endpoint=sys.argv[1]))
while not sub.receive(0.5):
    pass
print("got", flush=True)
while True:
    sub.receive(1.0)
"""


def _train(args: list[str], *, stopped_consumer: bool = False) -> dict:
    """Run ``python -m producer`` with ``args``; return its --summary-json."""
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "summary.json"
        endpoint = free_endpoint()
        cmd = [
            sys.executable,
            "-m",
            "producer",
            "--endpoint",
            endpoint,
            "--summary-json",
            str(summary),
            *args,
        ]
        consumer = None
        if stopped_consumer:
            cmd += ["--wait-for-subscriber", "30"]
            consumer = subprocess.Popen(
                [sys.executable, "-c", CONSUMER, endpoint], stdout=subprocess.PIPE, text=True
            )
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if consumer is not None:
                assert consumer.stdout is not None
                consumer.stdout.readline()  # it has folded its first message: connected and subscribed
                os.kill(consumer.pid, signal.SIGSTOP)
            if proc.wait(timeout=600) != 0:
                raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}")
        finally:
            if consumer is not None:
                os.kill(consumer.pid, signal.SIGKILL)
                consumer.wait()
        return json.loads(summary.read_text())


def overhead(updates: int, repeats: int) -> list[Figure]:
    common = ["--updates", str(updates), "--seed", "1"]
    runs: dict[str, list[dict]] = {"off": [], "on": [], "stopped": []}
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits every variant alike
        runs["off"].append(_train([*common, "--no-telemetry"]))
        runs["on"].append(_train(common))
        runs["stopped"].append(_train(common, stopped_consumer=True))
    rate = {k: statistics.median(r["env_steps_per_s"] for r in v) for k, v in runs.items()}
    how = f"median of {repeats} interleaved runs of {updates} updates, env steps/s from --summary-json"
    return [
        at_least(
            "training_overhead",
            "training speed, telemetry on (no consumer) vs --no-telemetry",
            rate["on"],
            rate["off"],
            "steps/s",
            0.99,
            how,
        ),
        at_least(
            "training_overhead_stopped_consumer",
            "training speed with a SIGSTOPped consumer vs --no-telemetry",
            rate["stopped"],
            rate["off"],
            "steps/s",
            0.99,
            how,
        ),
    ]


def gradient_noise_cost(updates: int, seeds: int) -> Figure:
    """The throttled diagnostics' share of update time at the defaults: the gradient noise passes
    (num_minibatches - 1 minibatch forward/backward passes at the update's starting weights) plus the
    CUDA memory collection (nothing on CPU), every ``diagnostics_every`` updates."""
    runs = [
        _train(["--updates", str(updates), "--seed", str(s), "--no-telemetry"]) for s in range(1, seeds + 1)
    ]
    share = sum(r["diagnostics_ms"] for r in runs) / sum(r["update_time_ms_total"] for r in runs)
    measured = sum(len(r["gradient_cv"]) for r in runs)
    return at_most(
        "gradient_noise_cost",
        "gradient noise measurement + memory collection, share of update time (defaults)",
        share,
        0.02,
        "",
        1.0,
        f"diagnostics_ms / update_time_ms_total over {seeds} default runs of {updates} updates "
        f"({measured} measurements); reference is the 2% limit",
    )


def learning(updates: int, seed: int) -> Figure:
    from producer.env import random_policy_return

    summary = _train(["--updates", str(updates), "--seed", str(seed), "--no-telemetry"])
    cfg = summary["config"]
    baseline = random_policy_return(
        n_slots=cfg["n_slots"], max_epochs=cfg["max_epochs"], param_budget=cfg["param_budget"], seed=seed
    )
    trained = summary["return_mean_last"]
    first = summary["return_mean_first"]
    # Returns can be negative, so the figure is the margin over random, against a margin that counts as clear.
    return at_least(
        "learning",
        f"mean episode return after {updates} updates (seed {seed}), margin over random policy",
        trained - baseline,
        CLEAR_MARGIN,
        "return",
        1.0,
        f"last {summary['return_window']} rollouts' mean return {trained:.3f} (first {first:.3f}); "
        f"uniformly random policy {baseline:.3f} on the same env; a margin of {CLEAR_MARGIN} counts as clear",
    )
