"""``python -m consumers.tui``: parse the command line, check the endpoint, run the dashboard."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bus.endpoint import EndpointError, add_endpoint_argument, check_endpoint
from bus.security import SecurityError, add_security_arguments, subscriber_security
from bus.subscribe import SubscriberConfig
from consumers.archiver.reader import ArchiveError
from consumers.tui.app import DEFAULT_REFRESH_HZ, EXIT_BAD_ENDPOINT, TamiyoApp
from consumers.tui.browse import BrowseApp

MAX_REFRESH_HZ = 30.0


def refresh_hz_problem(hz: float) -> str | None:
    """Why ``--refresh-hz`` ``hz`` is refused (outside (0, MAX_REFRESH_HZ]), or None."""
    if 0 < hz <= MAX_REFRESH_HZ:
        return None
    return f"--refresh-hz must be in (0, {MAX_REFRESH_HZ:g}], got {hz:g}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m consumers.tui",
        description="Live dashboard for a Tamiyo run. Keys: q quit, p pause, r reset, t theme, ? help.",
    )
    add_endpoint_argument(parser)
    parser.add_argument(
        "--refresh-hz",
        type=float,
        default=DEFAULT_REFRESH_HZ,
        help=f"redraws per second, independent of the event rate (default {DEFAULT_REFRESH_HZ:g})",
    )
    parser.add_argument("--light", action="store_true", help="start with the light colour theme")
    parser.add_argument(
        "--run",
        type=Path,
        metavar="RUN_DIR",
        help="browse a recorded run (runs/<run_id>) instead of watching the bus: Home/End, ←/→, PgUp/PgDn",
    )
    add_security_arguments(parser, "subscriber")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        endpoint = check_endpoint(args.endpoint)
        config = SubscriberConfig(endpoint=endpoint, **subscriber_security(args.curve_keys))
    except (EndpointError, SecurityError) as exc:
        print(f"tamiyo-tui: {exc}", file=sys.stderr)
        return EXIT_BAD_ENDPOINT
    problem = refresh_hz_problem(args.refresh_hz)
    if problem:
        print(f"tamiyo-tui: {problem}", file=sys.stderr)
        return EXIT_BAD_ENDPOINT
    if args.run is not None:
        try:
            app: TamiyoApp = BrowseApp(
                args.run, refresh_hz=args.refresh_hz, light=args.light, handle_signals=True
            )
        except ArchiveError as exc:
            print(f"tamiyo-tui: {exc}", file=sys.stderr)
            return EXIT_BAD_ENDPOINT
    else:
        app = TamiyoApp(
            endpoint, subscriber=config, refresh_hz=args.refresh_hz, handle_signals=True, light=args.light
        )
    try:
        app.run()
    except KeyboardInterrupt:  # SIGINT before the app's own handler was installed
        return 130
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
