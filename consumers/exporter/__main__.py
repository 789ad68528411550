"""``python -m consumers.exporter``: check the addresses, then serve /metrics until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bus.endpoint import EndpointError, add_endpoint_argument, check_endpoint
from bus.security import SecurityError, add_security_arguments, subscriber_security
from consumers.address import AddressError, add_serving_arguments, parse_address, remote_refusal
from consumers.runtime import StopSignal, run_loop, setup_logging

log = logging.getLogger("consumers.exporter")

DEFAULT_ADDRESS = "127.0.0.1:9464"
EXIT_BAD_ARGS = 2
TICK_S = 1.0
"""How often finished and stale ranks are checked for expiry when nobody scrapes."""
NO_AUTH_WARNING = (
    "tamiyo-export: WARNING: serving {url}/metrics beyond loopback. It has no authentication: anyone "
    "who can reach this address can read the run's metrics. Prefer the default 127.0.0.1 with a "
    "Prometheus on the same host, or an SSH tunnel (see docs/exporter.md)."
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from consumers.exporter.promql import DEFAULT_UPDATE_SECONDS
    from consumers.exporter.table import EXPIRE_AFTER_S

    p = argparse.ArgumentParser(
        prog="python -m consumers.exporter",
        description="Prometheus exporter: every catalogue metric per run and rank on http://ADDRESS/metrics.",
    )
    add_endpoint_argument(p)
    add_serving_arguments(p, DEFAULT_ADDRESS, "/metrics")
    p.add_argument(
        "--expire-after",
        type=float,
        default=EXPIRE_AFTER_S,
        metavar="S",
        help="drop a finished or stale rank's series after S seconds of silence (default: %(default)g)",
    )
    p.add_argument(
        "--markdown",
        nargs="?",
        const="derived",
        choices=("derived", "all"),
        help="print the table of the metrics that are not one contract field's gauge (all: every one); exit",
    )
    p.add_argument(
        "--alert-rules",
        nargs="?",
        const="",
        metavar="FILE",
        help="print the alert daemon's rules (default: the built-in ones) as Prometheus rules and exit",
    )
    p.add_argument(
        "--update-seconds",
        type=float,
        default=DEFAULT_UPDATE_SECONDS,
        metavar="S",
        help="with --alert-rules: seconds per update, for `for_updates` (default: %(default)g)",
    )
    add_security_arguments(p, "subscriber")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def _print_rules(path: str, update_seconds: float) -> int:
    from consumers.alerts.rules import ConfigError, default_rules, load_rules
    from consumers.exporter.promql import rules_yaml

    try:
        rules = load_rules(Path(path)) if path else default_rules()
        sys.stdout.write(rules_yaml(rules, update_seconds, path))
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"tamiyo-export: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        from consumers.exporter.families import markdown

        sys.stdout.write(markdown(every=args.markdown == "all"))
        return 0
    if args.alert_rules is not None:
        if not args.update_seconds > 0:
            print("tamiyo-export: --update-seconds must be > 0", file=sys.stderr)
            return EXIT_BAD_ARGS
        return _print_rules(args.alert_rules, args.update_seconds)
    try:
        endpoint = check_endpoint(args.endpoint)
        security = subscriber_security(args.curve_keys)
        address = parse_address(args.address, DEFAULT_ADDRESS)
    except (EndpointError, SecurityError, AddressError) as exc:
        print(f"tamiyo-export: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    if not args.expire_after > 0:
        print(f"tamiyo-export: --expire-after must be > 0, got {args.expire_after:g}", file=sys.stderr)
        return EXIT_BAD_ARGS
    refusal = remote_refusal(
        address, args.allow_remote, "/metrics", "Run Prometheus on this host or scrape through an SSH tunnel"
    )
    if refusal:
        print(f"tamiyo-export: {refusal}", file=sys.stderr)
        return EXIT_BAD_ARGS
    try:
        from prometheus_client import CollectorRegistry, start_http_server

        from consumers.exporter.collector import TamiyoCollector
    except ImportError as exc:
        print(
            f"tamiyo-export: {exc.name} is missing: pip install 'tamiyo-telemetry[prometheus]'",
            file=sys.stderr,
        )
        return EXIT_BAD_ARGS
    if not address.loopback:
        print(NO_AUTH_WARNING.format(url=address.url), file=sys.stderr)

    from bus.subscribe import Subscriber, SubscriberConfig

    setup_logging("tamiyo-export", args.verbose)
    stop = StopSignal().install()
    collector = TamiyoCollector(args.expire_after)
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        server, _ = start_http_server(address.port, address.host, registry)
    except OSError as exc:
        print(f"tamiyo-export: cannot serve on {address.url}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    try:
        subscriber = Subscriber(SubscriberConfig(endpoint=endpoint, **security))
    except (EndpointError, SecurityError) as exc:
        server.shutdown()
        server.server_close()
        print(f"tamiyo-export: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    print(
        f"tamiyo-export: serving {address.url}/metrics for {args.endpoint} (Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )

    def tick(now: float) -> None:
        for run_id, rank in collector.tick(now):
            log.info(
                "run %s rank %d: finished or stale for %gs, its series removed",
                run_id,
                rank,
                args.expire_after,
            )

    try:
        run_loop(subscriber, collector.handle, stop, tick=tick, tick_interval=TICK_S)
    finally:
        subscriber.close()
        server.shutdown()
        server.server_close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
