"""Run every benchmark, print the markdown table and write bench/results.json."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.report import Figure, machine, markdown, write_json

RESULTS = Path(__file__).with_name("results.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes: checks the harness only")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated groups (bus,forwarder,training,consumers: the default) or group/name rows; "
        "truth (the alert truth table, real producer runs with injected faults) runs only when named",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = p.parse_args(argv)
    q = args.quick
    groups = set(args.only.split(",")) if args.only else {"bus", "forwarder", "training", "consumers"}

    from bench import (
        bus_figures,
        consumer_figures,
        forwarder_figures,
        replay_figures,
        storm,
        training_figures,
        truth,
    )

    steps: list[tuple[str, str, Callable[[], Figure | list[Figure]]]] = [
        ("bus", "throughput", lambda: bus_figures.throughput(20_000 if q else 200_000)),
        ("bus", "latency", lambda: bus_figures.latency(1000, 1 if q else 5)),
        ("bus", "fold", lambda: bus_figures.fold_rate(50_000 if q else 500_000)),
        ("bus", "memory", lambda: bus_figures.consumer_memory(100_000 if q else 1_000_000)),
        ("bus", "replay storm", lambda: storm.replay_storm(10 if q else 20)),
        ("forwarder", "throughput", lambda: forwarder_figures.throughput(20_000 if q else 200_000)),
        ("forwarder", "latency", lambda: forwarder_figures.latency(1000, 1 if q else 5)),
        ("forwarder", "64 ranks", lambda: forwarder_figures.many_ranks(64, 10 if q else 50)),
        (
            "forwarder",
            "dashboard 64 ranks",
            lambda: forwarder_figures.dashboard_64_ranks(64, 12 if q else 40),
        ),
        ("training", "overhead", lambda: training_figures.overhead(10 if q else 30, 1 if q else 2)),
        (
            "training",
            "noise_cost",
            lambda: training_figures.gradient_noise_cost(20 if q else 60, 1 if q else 3),
        ),
        ("training", "learning", lambda: training_figures.learning(20 if q else 120, seed=1)),
        ("consumers", "tui", lambda: consumer_figures.tui(quick=q)),
        ("consumers", "archiver", lambda: consumer_figures.archiver(20_000 if q else 300_000)),
        ("consumers", "replay", lambda: replay_figures.replay(20_000 if q else 200_000)),
        ("consumers", "backtest", lambda: replay_figures.backtest(1000 if q else 10_000)),
        ("truth", "table", lambda: truth.truth_table(quick=q)),
    ]
    figures: list[Figure] = []
    t0 = time.monotonic()
    print(f"# make bench on {machine()}", file=sys.stderr)
    try:
        for group, name, run in steps:
            if group not in groups and f"{group}/{name}" not in groups:
                continue
            t = time.monotonic()
            print(f"  {group}/{name} ...", end="", flush=True, file=sys.stderr)
            result = run()
            figures.extend(result if isinstance(result, list) else [result])
            print(f" {time.monotonic() - t:.0f}s", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted; reporting what was measured", file=sys.stderr)
    elapsed = time.monotonic() - t0
    write_json(figures, args.out, elapsed)
    print(markdown(figures))
    print(f"\n{machine()}, {time.strftime('%Y-%m-%d')}, {elapsed:.0f} s; written to {args.out}")
    missed = [f.name for f in figures if not f.met]
    if missed:
        print("goals missed: " + "; ".join(missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
