"""``python -m consumers.web``: check the addresses, then serve the dashboard until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from bus.endpoint import EndpointError, add_endpoint_argument, check_endpoint
from bus.security import SecurityError, add_security_arguments, subscriber_security
from consumers.address import AddressError, add_serving_arguments, parse_address, remote_refusal
from consumers.tui.__main__ import refresh_hz_problem
from consumers.tui.app import DEFAULT_REFRESH_HZ

DEFAULT_ADDRESS = "127.0.0.1:8000"
EXIT_BAD_ARGS = 2
NO_AUTH_WARNING = (
    "tamiyo-web: WARNING: serving on {url}, beyond loopback. The page has no authentication: anyone "
    "who can reach this address can watch the run. Prefer the default 127.0.0.1 with "
    "`ssh -L 8000:127.0.0.1:8000 HOST` (see README, 'In a browser')."
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m consumers.web",
        description="The live dashboard in a browser: each tab runs its own `python -m consumers.tui`.",
    )
    add_endpoint_argument(parser)
    add_serving_arguments(parser, DEFAULT_ADDRESS, "the page")
    parser.add_argument(
        "--public-url",
        metavar="URL",
        help="the URL browsers use, when a reverse proxy changes it (default: the address each request "
        "came to, so a forwarded port works as it is)",
    )
    parser.add_argument(
        "--refresh-hz",
        type=float,
        default=DEFAULT_REFRESH_HZ,
        help=f"dashboard redraws per second (default {DEFAULT_REFRESH_HZ:g})",
    )
    parser.add_argument("--light", action="store_true", help="start with the light colour theme")
    add_security_arguments(parser, "subscriber")
    return parser.parse_args(argv)


def dashboard_command(args: argparse.Namespace) -> str:
    """The shell command textual-serve runs for each tab: this interpreter's ``consumers.tui``.

    ``exec`` makes the dashboard the server's own child (no shell between), so that it can end
    with the server (``consumers.web.tab``).
    """
    argv = [sys.executable, "-m", "consumers.web.tab", str(os.getpid()), "--endpoint", args.endpoint]
    argv += ["--refresh-hz", f"{args.refresh_hz:g}"]
    if args.light:
        argv.append("--light")
    if args.curve_keys:
        argv += ["--curve-keys", args.curve_keys]
    return "exec " + shlex.join(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_endpoint(args.endpoint)
        subscriber_security(args.curve_keys)
        address = parse_address(args.address, DEFAULT_ADDRESS)
    except (EndpointError, SecurityError, AddressError) as exc:
        print(f"tamiyo-web: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    problem = refresh_hz_problem(args.refresh_hz) or remote_refusal(
        address, args.allow_remote, "the page", "Use an SSH tunnel (`ssh -L 8000:127.0.0.1:8000 HOST`)"
    )
    if problem:
        print(f"tamiyo-web: {problem}", file=sys.stderr)
        return EXIT_BAD_ARGS
    try:
        from consumers.web.server import DashboardServer
    except ImportError as exc:
        print(f"tamiyo-web: {exc.name} is missing: pip install 'tamiyo-telemetry[web]'", file=sys.stderr)
        return EXIT_BAD_ARGS
    if not address.loopback:
        print(NO_AUTH_WARNING.format(url=address.url), file=sys.stderr)
    server = DashboardServer(
        dashboard_command(args),
        address.host,
        address.port,
        title=f"Tamiyo dashboard ({args.endpoint})",
        url=address.url,
        public_url=args.public_url,
        loopback_only=address.loopback,
    )
    try:
        server.serve()
    except OSError as exc:
        print(f"tamiyo-web: cannot serve on {address.url}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    return 0


if __name__ == "__main__":
    sys.exit(main())
