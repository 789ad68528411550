"""CURVE encryption and client authentication for a bus reached from another machine.

A key directory made by ``python -m bus.keys generate DIR`` holds::

    DIR/server.key              the publisher's public key (every consumer needs a copy)
    DIR/server.key_secret       the publisher's secret key (stays on the training machine)
    DIR/authorized_clients/     public keys of the consumers let in, one NAME.key each
    DIR/clients/NAME/           one consumer's bundle: client.key, client.key_secret, server.key

The publisher takes ``--curve-keys DIR``; a consumer takes ``--curve-keys BUNDLE`` (a copy
of ``DIR/clients/NAME``). The publisher runs pyzmq's ``ThreadAuthenticator`` over
``authorized_clients``: a consumer whose public key is not there fails the handshake and
receives nothing.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Protocol

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

KEYS_ENV = "TAMIYO_CURVE_KEYS"
"""Default for ``--curve-keys`` when the flag is not given."""

SERVER_PUBLIC = "server.key"
SERVER_SECRET = "server.key_secret"
CLIENT_PUBLIC = "client.key"
CLIENT_SECRET = "client.key_secret"
AUTHORIZED_DIR = "authorized_clients"
CLIENTS_DIR = "clients"
ZAP_DOMAIN = "tamiyo"


class SecurityError(ValueError):
    """Key material that is missing or unusable, with what to run to fix it."""


class _ServerKeys(Protocol):
    curve_secret_key: bytes | None
    curve_public_key: bytes | None
    curve_authorized_dir: str | None


class _ClientKeys(Protocol):
    curve_secret_key: bytes | None
    curve_public_key: bytes | None
    curve_server_public_key: bytes | None
    curve_keys_dir: str | None


def _load(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise SecurityError(
            f"{path} not found: create keys with `python -m bus.keys generate DIR` "
            "(see docs/wire.md, 'Remote access')"
        )
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise SecurityError(f"{path} is not a ZeroMQ certificate: {exc}") from None
    if secret and secret_key is None:
        raise SecurityError(f"{path} holds no secret key")
    return public, secret_key


def server_keys(keys_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """PublisherConfig settings from a key directory made by ``bus.keys generate``."""
    root = Path(keys_dir)
    public, secret = _load(root / SERVER_SECRET, secret=True)
    authorized = root / AUTHORIZED_DIR
    if not authorized.is_dir():
        raise SecurityError(f"{authorized} not found: `python -m bus.keys generate {root}` creates it")
    return {
        "curve_secret_key": secret,
        "curve_public_key": public,
        "curve_authorized_dir": str(authorized),
    }


def client_keys(bundle_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """SubscriberConfig settings from a consumer bundle (``DIR/clients/NAME`` or a copy of it)."""
    root = Path(bundle_dir)
    public, secret = _load(root / CLIENT_SECRET, secret=True)
    server_public, _ = _load(root / SERVER_PUBLIC, secret=False)
    return {
        "curve_secret_key": secret,
        "curve_public_key": public,
        "curve_server_public_key": server_public,
    }


def apply_curve_server(sock: zmq.Socket, ctx: zmq.Context, config: _ServerKeys) -> ThreadAuthenticator:
    """Make ``sock`` a CURVE server that admits only the authorized clients; call before bind.

    Returns the running authenticator: stop it after closing the socket.
    """
    if config.curve_secret_key is None or config.curve_public_key is None:
        raise SecurityError("CURVE needs the publisher's public and secret keys")
    if not config.curve_authorized_dir or not Path(config.curve_authorized_dir).is_dir():
        raise SecurityError(f"authorized clients directory {config.curve_authorized_dir!r} not found")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    # Keys are read now: adding or removing a client takes a publisher restart.
    auth.configure_curve(domain=ZAP_DOMAIN, location=config.curve_authorized_dir)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    sock.curve_secretkey = config.curve_secret_key
    sock.curve_publickey = config.curve_public_key
    sock.curve_server = True
    return auth


def apply_curve_client(sock: zmq.Socket, config: _ClientKeys) -> None:
    """Make ``sock`` a CURVE client of the publisher whose public key the config names."""
    secret, public, server = config.curve_secret_key, config.curve_public_key, config.curve_server_public_key
    if secret is None and config.curve_keys_dir is not None:
        keys = client_keys(config.curve_keys_dir)
        secret, public = keys["curve_secret_key"], keys["curve_public_key"]
        server = keys["curve_server_public_key"]
    if secret is None or public is None or server is None:
        raise SecurityError("CURVE needs this consumer's keypair and the publisher's public key")
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server


def add_security_arguments(parser: argparse.ArgumentParser, role: str) -> None:
    """Add --curve-keys (and, for the publisher, --allow-remote) to a CLI."""
    if role not in ("publisher", "subscriber"):
        raise ValueError(f"role must be 'publisher' or 'subscriber', not {role!r}")
    group = parser.add_argument_group("remote access")
    if role == "publisher":
        group.add_argument(
            "--allow-remote",
            action="store_true",
            help="allow binding a non-loopback address (needs --curve-keys); "
            "prefer an SSH tunnel, see README",
        )
        keys_help = "key directory from `python -m bus.keys generate DIR`: encrypt and admit only its clients"
    else:
        keys_help = "consumer key bundle (a copy of DIR/clients/NAME) for a publisher that uses CURVE"
    group.add_argument(
        "--curve-keys",
        metavar="DIR",
        default=os.environ.get(KEYS_ENV) or None,
        help=f"{keys_help} (default: ${KEYS_ENV})",
    )


def publisher_security(*, allow_remote: bool, curve_keys: str | os.PathLike[str] | None) -> dict[str, Any]:
    """PublisherConfig keyword arguments for ``--allow-remote`` and ``--curve-keys`` (None or '' for none)."""
    settings: dict[str, Any] = {"allow_remote": allow_remote}
    if curve_keys:
        settings.update(server_keys(curve_keys))
    return settings


def subscriber_security(curve_keys: str | os.PathLike[str] | None) -> dict[str, Any]:
    """SubscriberConfig keyword arguments for ``--curve-keys`` (None or '' for none)."""
    return client_keys(curve_keys) if curve_keys else {}
