"""Key generation for remote access: ``python -m bus.keys generate DIR`` and ``add-client DIR NAME``."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import zmq.auth

from bus.security import (
    AUTHORIZED_DIR,
    CLIENT_PUBLIC,
    CLIENT_SECRET,
    CLIENTS_DIR,
    SERVER_PUBLIC,
    SERVER_SECRET,
)

DEFAULT_CLIENT = "client"


class KeysError(RuntimeError):
    """A key operation that would overwrite keys or cannot proceed."""


def _keypair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write ``name.key`` (public) and ``name.key_secret`` (mode 0600) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def generate(root: Path, clients: list[str]) -> list[Path]:
    """Create the publisher's keypair, the authorized-clients directory and one bundle per client."""
    if (root / SERVER_SECRET).exists():
        raise KeysError(f"{root / SERVER_SECRET} exists; use `add-client {root} NAME` or a new directory")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    _keypair(root, "server")
    (root / AUTHORIZED_DIR).mkdir(exist_ok=True)
    return [add_client(root, name) for name in clients]


def add_client(root: Path, name: str) -> Path:
    """Create consumer ``name``'s bundle under ``root/clients/`` and authorize its public key."""
    if not name or name.startswith(".") or "/" in name or os.sep in name:
        raise KeysError(f"client name {name!r}: use letters, digits, '-' or '_'")
    if not (root / SERVER_PUBLIC).is_file():
        raise KeysError(f"{root / SERVER_PUBLIC} not found: run `python -m bus.keys generate {root}` first")
    bundle = root / CLIENTS_DIR / name
    authorized = root / AUTHORIZED_DIR / f"{name}.key"
    if bundle.exists() or authorized.exists():
        raise KeysError(f"client {name!r} already exists under {root}")
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        public, secret = _keypair(Path(tmp), "client")
        bundle.parent.mkdir(exist_ok=True)
        bundle.mkdir()
        shutil.copy2(public, bundle / CLIENT_PUBLIC)
        shutil.copy2(secret, bundle / CLIENT_SECRET)
        os.chmod(bundle / CLIENT_SECRET, 0o600)
        shutil.copy2(root / SERVER_PUBLIC, bundle / SERVER_PUBLIC)
        (root / AUTHORIZED_DIR).mkdir(exist_ok=True)
        shutil.copy2(public, authorized)
    return bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bus.keys",
        description="CURVE keys for a bus bound beyond loopback (publisher --allow-remote --curve-keys DIR).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="publisher keypair, authorized_clients/ and consumer bundles")
    gen.add_argument("dir", type=Path)
    gen.add_argument(
        "--client",
        action="append",
        metavar="NAME",
        help=f"a consumer to create and authorize (repeatable; default: {DEFAULT_CLIENT})",
    )
    add = sub.add_parser("add-client", help="create and authorize one more consumer (restart the publisher)")
    add.add_argument("dir", type=Path)
    add.add_argument("name")
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            bundles = generate(args.dir, args.client or [DEFAULT_CLIENT])
            print(f"publisher: --curve-keys {args.dir}  (keep {args.dir / SERVER_SECRET} private)")
        else:
            bundles = [add_client(args.dir, args.name)]
        for bundle in bundles:
            print(f"consumer:  copy {bundle}/ to the watching machine and pass --curve-keys <that copy>")
    except (KeysError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
