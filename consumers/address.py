"""A server's listen address (`make web`, `make export`): HOST:PORT parsed, checked, loopback or not."""

from __future__ import annotations

import argparse
import socket
from typing import NamedTuple

from bus.endpoint import is_loopback


class AddressError(ValueError):
    """A listen address that cannot be used, with the reason and an example of one that can."""


class Address(NamedTuple):
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        """True for 127.0.0.0/8, ::1 and localhost: the same rule as the bus's own endpoints."""
        return is_loopback(f"tcp://{self.host}:{self.port}")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_address(text: str, example: str) -> Address:
    """``HOST:PORT`` (``[::1]:8000`` for IPv6, port 1-65535, a host that resolves) or AddressError.

    ``example`` is the address the error message offers instead (the server's default).
    """
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(f"{text!r} is not HOST:PORT with a port 1-65535, e.g. {example}")
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise AddressError(f"{text!r}: cannot resolve host {host!r} ({exc})") from None
    return Address(host, int(port))


def add_serving_arguments(parser: argparse.ArgumentParser, default: str, unauthenticated: str) -> None:
    """``--address`` (default ``default``) and ``--allow-remote``, whose help names what has no
    authentication (``unauthenticated``, e.g. "the page")."""
    parser.add_argument("--address", default=default, help=f"HOST:PORT to serve on (default {default})")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help=f"allow an address beyond loopback; {unauthenticated} has no authentication "
        "(prefer an SSH tunnel)",
    )


def remote_refusal(address: Address, allow_remote: bool, unauthenticated: str, remedy: str) -> str | None:
    """Why a server must not start on ``address``: beyond loopback without ``--allow-remote``; else None.

    ``unauthenticated`` names what has no authentication (as in ``add_serving_arguments``), ``remedy``
    what to do instead.
    """
    if address.loopback or allow_remote:
        return None
    return (
        f"refusing to serve on {address.url}: it is not loopback and {unauthenticated} has no "
        f"authentication. {remedy}, or pass --allow-remote."
    )
