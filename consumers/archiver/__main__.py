"""``python -m consumers.archiver``: subscribe to the bus and record every run as CSV files."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bus.endpoint import EndpointError, add_endpoint_argument, check_endpoint
from bus.security import SecurityError, add_security_arguments, subscriber_security
from bus.subscribe import Subscriber, SubscriberConfig
from consumers.archiver.archiver import FLUSH_INTERVAL_S, Archiver
from consumers.runtime import StopSignal, run_loop, setup_logging

log = logging.getLogger("consumers.archiver")

EXIT_ROWS_LOST = 3
"""Exit status when the disk refused rows (ENOSPC, EIO): the summary lines say how many and of what.
0: every row received reached disk; 1: stopped by an I/O error it could not work around; 2: bad arguments."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m consumers.archiver",
        description="Record Tamiyo telemetry to CSV: one directory per run, one file per event type.",
    )
    add_endpoint_argument(p)
    p.add_argument("--out", type=Path, default=Path("runs"), help="output directory (default: %(default)s)")
    p.add_argument(
        "--flush-interval",
        type=float,
        default=FLUSH_INTERVAL_S,
        metavar="S",
        help="write buffered rows at least this often, in seconds (default: %(default)s)",
    )
    p.add_argument(
        "--no-fsync",
        action="store_true",
        help="hand rows to the OS without fsync: safe when the archiver is killed, not on power loss",
    )
    add_security_arguments(p, "subscriber")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if not 0 < args.flush_interval <= 1.0:
        p.error(
            "--flush-interval must be in (0, 1] seconds: the archiver promises at most one second of loss"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("archiver", args.verbose)
    stop = StopSignal().install()
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"archiver: cannot create {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    tick = min(0.25, args.flush_interval / 4)
    archiver = Archiver(
        args.out, flush_interval=args.flush_interval, tick_interval=tick, fsync=not args.no_fsync
    )
    try:
        endpoint = check_endpoint(args.endpoint)
        subscriber = Subscriber(SubscriberConfig(endpoint=endpoint, **subscriber_security(args.curve_keys)))
    except (EndpointError, SecurityError) as exc:
        print(f"archiver: {exc}", file=sys.stderr)
        return 2
    log.info("recording %s into %s/", args.endpoint, args.out)
    failed = False
    try:
        run_loop(subscriber, archiver.handle, stop, tick=archiver.tick, tick_interval=tick)
    except OSError as exc:  # e.g. a run directory that cannot be created
        log.error("stopping: %s", exc)
        failed = True
    finally:
        subscriber.close()
        ok = archiver.close()
        rejected = subscriber.stats.rejected_total
        if rejected:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(subscriber.stats.rejected.items()))
            print(f"archiver: refused {rejected} bad messages ({kinds})", flush=True)
        if not archiver.runs_seen:
            print("archiver: no run seen", flush=True)
    if archiver.rows_lost:
        return EXIT_ROWS_LOST
    return 0 if ok and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
