"""Endpoint defaults and the rule that the bus binds only to loopback unless told otherwise."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
ENDPOINT_ENV = "TAMIYO_ENDPOINT"


class EndpointError(ValueError):
    """An endpoint the bus refuses to use, with the reason and what to do instead."""


def default_endpoint() -> str:
    """``$TAMIYO_ENDPOINT`` when set, else ``tcp://127.0.0.1:5555``."""
    return os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT


def add_endpoint_argument(parser: argparse.ArgumentParser) -> None:
    """A consumer's ``--endpoint``: where the trainer (or a forwarder) publishes."""
    parser.add_argument(
        "--endpoint",
        default=default_endpoint(),
        help=f"where the trainer publishes (default: ${ENDPOINT_ENV} or {DEFAULT_ENDPOINT})",
    )


def host_of(endpoint: str) -> str:
    """The host part of a ``tcp://host:port`` endpoint ('' for ipc/inproc)."""
    if not endpoint.startswith("tcp://"):
        return ""
    host, sep, port = endpoint[len("tcp://") :].rpartition(":")
    if not sep or not host or not (port.isdigit() or port == "*"):
        raise EndpointError(f"{endpoint!r} is not tcp://HOST:PORT")
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


EXAMPLE = "e.g. tcp://127.0.0.1:5555"


def check_endpoint(endpoint: str, *, bind: bool = False) -> str:
    """The one check of a command's ``--endpoint``: ``endpoint`` itself, or EndpointError saying why not.

    Every command (producer, dashboard, archiver, alert daemon) calls this before opening a
    socket, so each refuses the same endpoints with the same message: only tcp://HOST:PORT
    with a port 1-65535 (``*`` too when binding: any free port) and a host that resolves,
    or ipc://PATH. ZeroMQ itself would wrap port 99999 round to 34463 and connect to an
    unknown host for ever.
    """
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return endpoint
    if not endpoint.startswith("tcp://"):
        raise EndpointError(f"{endpoint!r} is not an endpoint: use tcp://HOST:PORT ({EXAMPLE}) or ipc://PATH")
    host, sep, port = endpoint[len("tcp://") :].rpartition(":")
    if not sep or not host:
        raise EndpointError(f"{endpoint!r} is not tcp://HOST:PORT ({EXAMPLE})")
    if not (bind and port == "*") and not (port.isdigit() and 0 < int(port) < 65536):
        raise EndpointError(f"{endpoint!r}: the port must be 1-65535, not {port!r}")
    name = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not (bind and name == "*"):
        try:
            socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise EndpointError(f"{endpoint!r}: cannot resolve host {name!r} ({exc})") from None
    return endpoint


def validate_endpoint(endpoint: str) -> str:
    """``endpoint`` itself when it is tcp://HOST:PORT, ipc://PATH or inproc://NAME; else EndpointError."""
    is_loopback(endpoint)
    return endpoint


def is_loopback(endpoint: str) -> bool:
    """True for tcp endpoints on 127.0.0.0/8, ::1 or localhost, and for ipc/inproc."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        raise EndpointError(f"{endpoint!r}: only tcp://, ipc:// and inproc:// endpoints are supported")
    host = host_of(endpoint)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # an interface name or a hostname: not provably loopback


def check_bind(endpoint: str, *, allow_remote: bool, curve: bool) -> None:
    """Refuse to bind a non-loopback interface unless remote access was asked for and encrypted."""
    if is_loopback(endpoint):
        return
    if not allow_remote:
        raise EndpointError(
            f"refusing to bind {endpoint}: it is not loopback. Watch a remote run through "
            "an SSH tunnel (see README), or pass --allow-remote with CURVE keys."
        )
    if not curve:
        raise EndpointError(f"binding {endpoint} needs CURVE keys (--curve-keys DIR); see README")
