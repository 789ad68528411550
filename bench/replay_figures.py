"""Recorded-run figures: replay at max speed into one consumer, and a backtest of a 10,000-update archive."""

from __future__ import annotations

import io
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from bench.consumer_figures import STARTED
from bench.events import mixed_envelopes
from bench.ports import free_endpoint
from bench.report import Figure, at_least, at_most
from bus.contract import SCHEMA_VERSION, Envelope, TrainingFinished
from consumers.archiver.archiver import Archiver

RUN_ID = "bench-replay"


def _write_archive(out: Path, n: int) -> tuple[Path, int]:
    """An archive of training_started, ``n`` training-like events and training_finished; its event count."""
    first = Envelope(schema=SCHEMA_VERSION, run_id=RUN_ID, seq=0, ts=1.7e9, event=STARTED)
    body = [msgspec.structs.replace(e, seq=e.seq + 1) for e in mixed_envelopes(n, run_id=RUN_ID)]
    end = TrainingFinished(reason="done", updates=n // 2, env_steps=n)
    last = Envelope(schema=SCHEMA_VERSION, run_id=RUN_ID, seq=n + 1, ts=body[-1].ts + 1e-3, event=end)
    archiver = Archiver(out, fsync=False, report=lambda line: None)
    archiver.handle([first, *body, last], 0.0)
    archiver.close()
    return out / RUN_ID, n + 2


def _count(endpoint: str, conn) -> None:  # type: ignore[no-untyped-def]
    """A consumer process: envelopes through ``Subscriber`` up to training_finished; count, span, gaps."""
    from bus.subscribe import Subscriber, SubscriberConfig

    sub = Subscriber(SubscriberConfig(endpoint=endpoint))
    conn.send("ready")
    received = gaps = 0
    first = last = 0.0
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            for item in sub.receive(0.1):
                if not isinstance(item, Envelope):
                    gaps += 1
                    continue
                received += 1
                last = time.perf_counter()
                if received == 1:
                    first = last
                if type(item.event) is TrainingFinished:
                    conn.send((received, last - first, gaps))
                    return
        conn.send((received, last - first, gaps))
    finally:
        sub.close()


def replay(n: int) -> Figure:
    """Events/s that ``python -m consumers.replay --speed max`` gets into one consumer, none lost."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, total = _write_archive(Path(tmp), n)
        endpoint = free_endpoint()
        parent, child = mp.get_context("spawn").Pipe()
        consumer = mp.get_context("spawn").Process(target=_count, args=(endpoint, child), daemon=True)
        consumer.start()
        parent.recv()
        player = subprocess.run(
            [
                sys.executable,
                "-m",
                "consumers.replay",
                str(run_dir),
                "--speed",
                "max",
                "--endpoint",
                endpoint,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        received, span, gaps = parent.recv() if parent.poll(300) else (0, 0.0, 0)
        consumer.join(10)
    rate = received / span if span > 0 else 0.0
    complete = received == total and gaps == 0 and player.returncode == 0
    figure = at_least(
        "replay_max",
        "replay at max speed into one consumer (events/s, none lost)",
        rate,
        50_000,
        "events/s",
        1.0,
        f"an archive of {total:,} training-like events (half ppo_update) read back and republished by "
        f"`python -m consumers.replay --speed max`; a Subscriber in another process counts from its first "
        f"envelope to training_finished: {received:,} received, {gaps} gaps"
        f"{'' if complete else f' — INCOMPLETE (replay exit {player.returncode}): ' + player.stderr[-200:]}",
    )
    figure.met = figure.met and complete
    return figure


def backtest(updates: int) -> Figure:
    """Seconds to backtest the built-in rules over an archive of ``updates`` updates (read + evaluate)."""
    from consumers.alerts.backtest import run_backtests
    from consumers.alerts.rules import default_rules

    with tempfile.TemporaryDirectory() as tmp:
        run_dir, total = _write_archive(Path(tmp), updates * 2)
        rules = default_rules()
        out, err = io.StringIO(), io.StringIO()
        start = time.perf_counter()
        code = run_backtests([run_dir], rules, as_json=False, fail_on=None, tail_s=0.0, out=out, err=err)
        seconds = time.perf_counter() - start
    return at_most(
        "backtest_10k",
        f"backtest of a {updates:,}-update archive (s)",
        seconds,
        2.0,
        "s",
        1.0,
        f"`python -m consumers.alerts --backtest` on {total:,} archived events ({updates:,} ppo_update, "
        f"{updates:,} batch_completed, heartbeats), the {len(rules)} built-in rules; reading the CSV files "
        f"and evaluating, in one process; exit {code}, {err.getvalue().strip()}",
    )
