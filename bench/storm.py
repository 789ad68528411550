"""Replay-storm figures: training speed and a consumer's heartbeat gaps under hostile replay requests.

The storm and the consumer speak only raw pyzmq, so the same harness measures any
producer checkout: ``python -m bench.storm --root DIR --python PY`` (e.g. main's).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from bench.ports import free_endpoint
from bench.report import Figure, at_least, at_most

ROOT = Path(__file__).resolve().parents[1]
STORM_RATE = 2000.0
"""Distinct ``~replay/<token>`` subscriptions a second, as in the issue's report."""


def _storm(endpoint: str, rate: float, stop) -> None:  # type: ignore[no-untyped-def]
    """A hostile peer: a fresh replay subscription every 1/rate s, paced in 10 ms steps."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XSUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 1000)
    sock.connect(endpoint)
    start = time.perf_counter()
    sent = 0
    while not stop.is_set():
        due = int((time.perf_counter() - start) * rate)
        while sent < due:
            sock.send(b"\x01~replay/storm-%09d" % sent)
            sent += 1
        while sock.poll(0):  # whatever replays it was granted; a real attacker need not read them
            sock.recv_multipart()
        time.sleep(0.01)
    sock.close(0)
    ctx.term()


def _watch_heartbeats(endpoint: str, conn, stop) -> None:  # type: ignore[no-untyped-def]
    """An ordinary consumer: the arrival times of every heartbeat."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.subscribe(b"heartbeat")
    sock.connect(endpoint)
    arrivals: list[float] = []
    while not stop.is_set():
        if sock.poll(100):
            sock.recv_multipart()
            arrivals.append(time.monotonic())
    conn.send(arrivals)
    sock.close(0)
    ctx.term()


def train_under_storm(
    updates: int, rate: float, *, root: Path = ROOT, python: str = sys.executable
) -> dict[str, float]:
    """One training run of ``updates`` with a heartbeat watcher and (rate > 0) a replay storm."""
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    parent, child = ctx.Pipe()
    endpoint = free_endpoint()
    watcher = ctx.Process(target=_watch_heartbeats, args=(endpoint, child, stop), daemon=True)
    watcher.start()
    storm = None
    if rate > 0:
        storm = ctx.Process(target=_storm, args=(endpoint, rate, stop), daemon=True)
        storm.start()
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "summary.json"
        cmd = [python, "-m", "producer", "--endpoint", endpoint, "--updates", str(updates), "--seed", "1"]
        cmd += ["--summary-json", str(summary)]
        started = time.monotonic()
        proc = subprocess.run(
            cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=900,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        ended = time.monotonic()
        stop.set()
        arrivals = parent.recv()
        watcher.join(10)
        if storm is not None:
            storm.join(10)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-500:]}")
        result = json.loads(summary.read_text())
    # From the first heartbeat (the producer has bound) to the last (it is closing).
    gap = max((b - a for a, b in itertools.pairwise(arrivals)), default=float("nan"))
    return {"steps_per_s": result["env_steps_per_s"], "elapsed_s": ended - started, "longest_gap_s": gap}


def replay_storm(updates: int, rate: float = STORM_RATE) -> list[Figure]:
    calm = train_under_storm(updates, 0.0)
    stormy = train_under_storm(updates, rate)
    how = (
        f"{updates} updates with a heartbeat-watching consumer, without and with a peer sending "
        f"{rate:,.0f} distinct ~replay/<token> subscriptions/s; wall {calm['elapsed_s']:.1f} s vs "
        f"{stormy['elapsed_s']:.1f} s"
    )
    return [
        at_least(
            "replay_storm_training",
            f"training speed under a {rate:,.0f}/s replay storm vs none",
            stormy["steps_per_s"],
            calm["steps_per_s"],
            "steps/s",
            0.9,
            how,
        ),
        at_most(
            "replay_storm_heartbeat_gap",
            "longest heartbeat gap at an ordinary consumer during the storm (limit 2 s)",
            stormy["longest_gap_s"],
            2.0,
            "s",
            1.0,
            how + f"; without the storm: {calm['longest_gap_s']:.2f} s",
        ),
    ]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__)
    p.add_argument("--updates", type=int, default=20)
    p.add_argument("--rate", type=float, default=STORM_RATE)
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout whose producer is measured")
    p.add_argument("--python", default=sys.executable)
    args = p.parse_args()
    for rate in (0.0, args.rate):
        print(rate, train_under_storm(args.updates, rate, root=args.root, python=args.python), flush=True)


if __name__ == "__main__":
    main()
