"""``python -m consumers.replay RUN_DIR [--speed 10|max]``: republish an archived run on the bus."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from bus.endpoint import EndpointError, check_endpoint, default_endpoint
from bus.publish import BusPublisher, PublisherConfig
from bus.security import SecurityError, add_security_arguments, publisher_security
from consumers.archiver.reader import ArchiveError, open_archive
from consumers.replay.replayer import replay, wait_for_consumers
from consumers.runtime import StopSignal, setup_logging

log = logging.getLogger("consumers.replay")

EXIT_BAD_ARCHIVE = 2
EXIT_NO_CONSUMER = 3


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number > 0 or 'max'") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: a number > 0 or 'max'")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m consumers.replay",
        description="Republish a run the archiver recorded: same run_id, seqs and timestamps, paced as "
        "recorded, through the trainer's own publisher. Exit: 0 replayed, 2 unreadable archive or "
        "endpoint, 3 no consumer joined in time.",
    )
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="the run's directory, e.g. runs/<run_id>")
    p.add_argument(
        "--speed",
        type=_speed,
        default=1.0,
        metavar="X|max",
        help="times the recorded pace; 'max': as fast as the slowest consumer takes it (default: 1)",
    )
    p.add_argument("--endpoint", default=default_endpoint(), help="where to publish (default: %(default)s)")
    p.add_argument(
        "--wait-for",
        type=int,
        metavar="N",
        help="wait for N consumers to join before sending (default: 1 with --speed max, else 0)",
    )
    p.add_argument(
        "--wait-timeout", type=float, default=60.0, metavar="S", help="for --wait-for (default: %(default)s)"
    )
    p.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="S",
        help="keep the bus up this long after the end, for late joiners' replay (default: %(default)s)",
    )
    add_security_arguments(p, "publisher")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("replay", args.verbose)
    stop = StopSignal().install()
    try:
        archive = open_archive(args.run)
        envelopes = archive.read_all()  # all of it first: a bad file is reported before anything is sent
    except ArchiveError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return EXIT_BAD_ARCHIVE
    try:
        security = publisher_security(allow_remote=args.allow_remote, curve_keys=args.curve_keys)
        config = PublisherConfig(
            endpoint=check_endpoint(args.endpoint, bind=True),
            heartbeat_period_s=0.0,
            lossless=True,
            **security,
        )
        publisher = BusPublisher(archive.run_id, config).start()
    except (EndpointError, SecurityError, OSError) as exc:
        print(f"replay: cannot publish on {args.endpoint}: {exc}", file=sys.stderr)
        return EXIT_BAD_ARCHIVE
    began = time.monotonic()
    wait_for = args.wait_for if args.wait_for is not None else (1 if args.speed is None else 0)
    try:
        if wait_for and not wait_for_consumers(publisher, wait_for, args.wait_timeout, stop):
            if not stop.is_set():
                print(
                    f"replay: no consumer joined {publisher.bound_endpoint} in {args.wait_timeout:g} s",
                    file=sys.stderr,
                )
            return EXIT_NO_CONSUMER
        pace = "max" if args.speed is None else f"{args.speed:g}x"
        log.info("replaying %s on %s at %s", archive.directory, publisher.bound_endpoint, pace)
        began = time.monotonic()
        result = replay(envelopes, publisher, speed=args.speed, stop=stop)
        if args.linger > 0 and not stop.is_set():
            stop.wait(args.linger)
    finally:
        publisher.close(flush_timeout=10.0)  # sends what is still queued
    seconds = time.monotonic() - began
    rate = result.sent / seconds if seconds > 0 else 0.0
    parts = ", ".join(f"{k} {n}" for k, n in sorted(result.counts.items()))
    ending = (
        "recorded" if result.finish_recorded else "added: none recorded" if not result.stopped else "stopped"
    )
    reason = result.finish.reason if result.finish is not None else "none"
    print(
        f"replay: run {archive.run_id}: {result.sent} events "
        f"({parts}; seq {result.first_seq}..{result.last_seq}) "
        f"in {seconds:.2f} s ({rate:,.0f}/s); {len(archive.gaps)} recorded gaps kept as gaps; "
        f"ended with training_finished {reason} ({ending})",
        flush=True,
    )
    if publisher.stats.dropped:
        print(f"replay: {publisher.stats.dropped} events not sent", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
