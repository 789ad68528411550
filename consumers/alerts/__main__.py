"""``python -m consumers.alerts``: print (or pass to a command) each alert that fires or resolves."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bus.endpoint import EndpointError, add_endpoint_argument, check_endpoint
from bus.security import SecurityError, add_security_arguments, subscriber_security
from bus.subscribe import Subscriber, SubscriberConfig
from consumers.alerts.backtest import EXIT_BAD_INPUT as EXIT_BAD_BACKTEST
from consumers.alerts.backtest import run_backtests
from consumers.alerts.daemon import AlertDaemon
from consumers.alerts.metrics import METRICS
from consumers.alerts.notify import EXEC_TIMEOUT_S, ExecHook, Printer
from consumers.alerts.rules import SEVERITIES, ConfigError, Rule, default_rules, load_rules
from consumers.runtime import StopSignal, run_loop, setup_logging

log = logging.getLogger("consumers.alerts")

EXIT_INVALID = 1
EXIT_UNREADABLE = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m consumers.alerts",
        description="Alert on a Tamiyo training run: rules over the aggregated telemetry, "
        "firing and resolved notifications.",
    )
    add_endpoint_argument(p)
    p.add_argument("--rules", type=Path, metavar="FILE", help="rule file (TOML); default: the built-in rules")
    p.add_argument(
        "--check-config",
        type=Path,
        metavar="FILE",
        help="validate a rule file and exit: 0 valid, 1 invalid, 2 unreadable",
    )
    p.add_argument("--json", action="store_true", help="print notifications as JSON lines")
    p.add_argument(
        "--exec",
        dest="exec_cmd",
        metavar="CMD",
        help="run `sh -c CMD` per notification, the alert as JSON on its stdin",
    )
    p.add_argument(
        "--exec-timeout",
        type=float,
        default=EXEC_TIMEOUT_S,
        metavar="S",
        help="kill a hook that runs longer (default: %(default)s)",
    )
    p.add_argument(
        "--backtest",
        type=Path,
        nargs="+",
        metavar="RUN_DIR",
        help="evaluate the rules offline over archived runs (runs/<run_id> ...) by their recorded clock; "
        "exit 0, 1 when a rule of --fail-on severity fired, 2 when an archive is unreadable",
    )
    p.add_argument(
        "--fail-on",
        choices=SEVERITIES,
        metavar="SEVERITY",
        help=f"with --backtest: exit 1 when a rule of this severity or above fired ({', '.join(SEVERITIES)})",
    )
    p.add_argument(
        "--tail",
        type=float,
        default=0.0,
        metavar="S",
        help="with --backtest: evaluate this many seconds of silence after each run's last event",
    )
    p.add_argument("--list-metrics", action="store_true", help="list the metrics rules can use and exit")
    p.add_argument("--print-default-rules", action="store_true", help="print the built-in rule file and exit")
    add_security_arguments(p, "subscriber")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    if args.backtest and args.exec_cmd:
        p.error("--exec runs for live alerts only; a backtest prints")
    if (args.fail_on or args.tail) and not args.backtest:
        p.error("--fail-on and --tail go with --backtest")
    if args.tail < 0:
        p.error("--tail must be >= 0")
    return args


def _load(path: Path | None) -> tuple[list[Rule] | None, int]:
    """The rules, or None and the exit code after printing why."""
    try:
        return (default_rules() if path is None else load_rules(path)), 0
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return None, EXIT_INVALID
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return None, EXIT_UNREADABLE


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_metrics:
        width = max(len(name) for name in METRICS)
        for m in METRICS.values():
            print(f"{m.name:{width}}  {m.kind:8}  {m.doc}")
        return 0
    if args.print_default_rules:
        from consumers.alerts.rules import default_rules_text

        sys.stdout.write(default_rules_text())
        return 0
    if args.check_config is not None:
        rules, code = _load(args.check_config)
        if rules is not None:
            print(f"{args.check_config}: ok, {len(rules)} rules: {', '.join(r.name for r in rules)}")
        return code
    rules, code = _load(args.rules)
    if rules is None:
        return EXIT_BAD_BACKTEST if args.backtest else code
    if args.backtest:
        setup_logging("alerts", args.verbose)
        return run_backtests(
            args.backtest,
            rules,
            as_json=args.json,
            fail_on=args.fail_on,
            tail_s=args.tail,
            out=sys.stdout,
            err=sys.stderr,
        )

    setup_logging("alerts", args.verbose)
    stop = StopSignal().install()
    sinks = [Printer(sys.stdout, args.json)]
    hook = ExecHook(args.exec_cmd, timeout=args.exec_timeout) if args.exec_cmd else None
    if hook is not None:
        sinks.append(hook)
    daemon = AlertDaemon(rules, sinks)
    try:
        endpoint = check_endpoint(args.endpoint)
        subscriber = Subscriber(SubscriberConfig(endpoint=endpoint, **subscriber_security(args.curve_keys)))
    except (EndpointError, SecurityError) as exc:
        print(f"alerts: {exc}", file=sys.stderr)
        return 2
    log.info("watching %s with %d rules: %s", args.endpoint, len(rules), ", ".join(r.name for r in rules))
    try:
        run_loop(subscriber, daemon.handle, stop, tick=daemon.tick, tick_interval=0.25)
    finally:
        subscriber.close()
        if hook is not None:
            hook.close()
        firing = daemon.engine.firing()
        log.info(
            "stopped: %d notifications sent; firing now: %s",
            daemon.sent,
            ", ".join(firing) if firing else "none",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
