"""Events and a paced publishing thread for the archiver tests, plus a wait-for-rows helper."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd
from testkit.events import batch_completed, ppo_update, training_started
from testkit.proc import Proc

from bus.contract import BatchCompleted, PPOUpdate, TrainingStarted
from bus.publish import BusPublisher

HEADS = {"op": 6, "slot": 4, "blueprint": 13, "style": 4}


def started(heads: dict[str, int] | None = None) -> TrainingStarted:
    return training_started(slot_ids=["r0c0", "r0c1"], action_heads=dict(heads or HEADS))


def ppo(update: int, heads: dict[str, int] | None = None) -> PPOUpdate:
    heads = heads or HEADS
    measured_at = update - update % 10
    return ppo_update(
        update,
        heads,
        train_steps=update,
        policy_loss=0.01 * update,
        value_loss=0.5,
        entropy=8.0,
        clip_fraction=0.1,
        clip_fraction_positive=0.05,
        gradient_cv=0.5,
        gradient_cv_step=measured_at,
        cuda_memory_allocated_gb=0.0,
        cuda_memory_reserved_gb=0.0,
        cuda_memory_peak_gb=0.0,
        cuda_memory_fragmentation=0.0,
        cuda_memory_step=measured_at,
        dead_layers=0,
        total_layers=24,
        head_entropy={h: 1.0 + i for i, h in enumerate(heads)},
        head_grad_norm={h: 0.1 * (i + 1) for i, h in enumerate(heads)},
        update_time_ms=100.0,
    )


def batch(update: int) -> BatchCompleted:
    return batch_completed(
        update,
        env_steps=update * 512,
        fps=5000.0,
        step_time_ms=0.2,
        episodes_completed=update,
        episodes=1 if update % 3 else 0,
        return_mean=float(update) if update % 3 else None,
        return_min=float(update) if update % 3 else None,
        return_max=float(update) if update % 3 else None,
    )


class Streamer:
    """Publishes a ppo_update and a batch_completed ``rate`` times a second on its own thread,
    remembering when each update was handed to the publisher."""

    def __init__(self, pub: BusPublisher, rate: float = 20.0) -> None:
        self.pub = pub
        self.period = 1.0 / rate
        self.published_at: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Streamer:
        self._thread.start()
        return self

    @property
    def count(self) -> int:
        return len(self.published_at)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            update = len(self.published_at)
            self.pub.publish(ppo(update))
            self.pub.publish(batch(update))
            self.published_at.append(time.time())
            next_at += self.period
            self._stop.wait(max(0.0, next_at - time.monotonic()))  # pacing, not synchronisation

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def csv_rows(path: Path) -> int:
    """Complete rows in a CSV file so far (0 when it does not exist yet)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    return max(0, data.count(b"\n") - 1)


def wait_rows(path: Path, n: int, timeout: float, proc: Proc | None = None) -> None:
    """Poll ``path`` until it holds ``n`` complete rows; fail after ``timeout`` s or when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while csv_rows(path) < n:
        exited = proc is not None and proc.proc.poll() is not None
        if exited or time.monotonic() > deadline:
            why = "the archiver exited" if exited else f"not within {timeout}s"
            detail = proc.describe() if proc is not None else ""
            raise AssertionError(f"{path} has {csv_rows(path)} rows, expected {n}: {why}\n{detail}")
        time.sleep(0.05)


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)
