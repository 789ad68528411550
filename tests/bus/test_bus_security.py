"""Remote access: loopback by default, and beyond it only with --allow-remote and CURVE client keys."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import zmq
import zmq.auth
from bus_factories import heartbeat, ppo_update
from testkit.wait import wait_until

from bus import keys
from bus.endpoint import EndpointError, check_bind, is_loopback
from bus.publish import BusPublisher, PublisherConfig
from bus.security import (
    SecurityError,
    add_security_arguments,
    client_keys,
    publisher_security,
    server_keys,
    subscriber_security,
)

DEADLINE_S = 20.0


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("curve") / "keys"
    assert keys.main(["generate", str(root), "--client", "laptop"]) == 0
    return root


def test_key_generation_layout(key_dir: Path) -> None:
    assert (key_dir / "server.key").is_file() and (key_dir / "server.key_secret").is_file()
    assert (key_dir / "server.key_secret").stat().st_mode & 0o077 == 0
    bundle = key_dir / "clients" / "laptop"
    assert {p.name for p in bundle.iterdir()} == {"client.key", "client.key_secret", "server.key"}
    authorized = key_dir / "authorized_clients" / "laptop.key"
    assert authorized.read_bytes() == (bundle / "client.key").read_bytes()
    assert keys.main(["generate", str(key_dir)]) == 2, "never overwrites a publisher's keys"
    assert keys.main(["add-client", str(key_dir), "tablet"]) == 0
    assert (key_dir / "authorized_clients" / "tablet.key").is_file()
    assert keys.main(["add-client", str(key_dir), "tablet"]) == 2


@pytest.mark.parametrize(
    "endpoint", ["tcp://0.0.0.0:*", "tcp://*:5555", "tcp://192.168.1.10:5555", "tcp://eth0:5555"]
)
def test_binding_beyond_loopback_without_the_flag_is_refused_with_a_clear_error(endpoint: str) -> None:
    with pytest.raises(EndpointError, match=r"not loopback.*SSH tunnel.*--allow-remote"):
        BusPublisher("r", PublisherConfig(endpoint=endpoint))


def test_allow_remote_without_keys_is_refused() -> None:
    with pytest.raises(EndpointError, match="needs CURVE keys"):
        check_bind("tcp://0.0.0.0:5555", allow_remote=True, curve=False)


@pytest.mark.parametrize(
    "endpoint", ["tcp://127.0.0.1:5555", "tcp://127.0.0.2:*", "tcp://localhost:5555", "tcp://[::1]:5555"]
)
def test_loopback_needs_no_flag(endpoint: str) -> None:
    assert is_loopback(endpoint)
    check_bind(endpoint, allow_remote=False, curve=False)


def test_cli_helpers_turn_flags_into_config_settings(key_dir: Path) -> None:
    pub_parser = argparse.ArgumentParser()
    add_security_arguments(pub_parser, "publisher")
    args = pub_parser.parse_args(["--allow-remote", "--curve-keys", str(key_dir)])
    settings = publisher_security(allow_remote=args.allow_remote, curve_keys=args.curve_keys)
    assert settings["allow_remote"] is True
    assert settings == {"allow_remote": True, **server_keys(key_dir)}
    default = pub_parser.parse_args([])
    assert publisher_security(allow_remote=default.allow_remote, curve_keys=default.curve_keys) == {
        "allow_remote": False
    }

    sub_parser = argparse.ArgumentParser()
    add_security_arguments(sub_parser, "subscriber")
    bundle = key_dir / "clients" / "laptop"
    assert subscriber_security(
        sub_parser.parse_args(["--curve-keys", str(bundle)]).curve_keys
    ) == client_keys(bundle)
    assert subscriber_security(sub_parser.parse_args([]).curve_keys) == {}
    with pytest.raises(SystemExit):
        sub_parser.parse_args(["--allow-remote"])
    with pytest.raises(SecurityError, match=r"bus\.keys generate"):
        client_keys(key_dir / "nowhere")


def test_authorized_consumer_receives_and_one_without_an_allowed_key_receives_nothing(
    key_dir: Path, tmp_path: Path, make_publisher, make_subscriber
) -> None:
    # Bound on every interface (with the flag and keys); the test's traffic stays on 127.0.0.1.
    security = publisher_security(allow_remote=True, curve_keys=key_dir)
    pub = make_publisher("run-remote", endpoint="tcp://0.0.0.0:*", **security)
    port = pub.bound_endpoint.rsplit(":", 1)[1]
    endpoint = f"tcp://127.0.0.1:{port}"

    # A stranger: a valid keypair the publisher has never authorized, and the right server key.
    zmq.auth.create_certificates(tmp_path, "stranger")
    public, secret = zmq.auth.load_certificate(tmp_path / "stranger.key_secret")
    stranger = make_subscriber(
        endpoint,
        curve_public_key=public,
        curve_secret_key=secret,
        curve_server_public_key=client_keys(key_dir / "clients" / "laptop")["curve_server_public_key"],
    )
    # A plain consumer without CURVE at all.
    plain = make_subscriber(endpoint)
    friend = make_subscriber(endpoint, **client_keys(key_dir / "clients" / "laptop"))

    got: dict[str, list] = {"stranger": [], "plain": [], "friend": []}

    def step() -> None:
        pub.publish(ppo_update(update=1))
        for name, sub in (("stranger", stranger), ("plain", plain), ("friend", friend)):
            got[name] += sub.receive(0.01)

    assert wait_until(
        lambda: len(got["friend"]) >= 5 and stranger.stats.auth_failures >= 1, DEADLINE_S, step
    ), "the authorized consumer should receive and the stranger should be refused"
    assert wait_until(lambda: plain.stats.handshake_failures >= 1, DEADLINE_S, step)
    pub.publish(heartbeat())
    for _ in range(20):
        step()
    assert got["stranger"] == [] and stranger.stats.received == 0 and stranger.stats.connects == 0
    assert got["plain"] == [] and plain.stats.received == 0
    assert friend.stats.auth_failures == 0 and friend.feed.run_id == "run-remote"
    assert friend.stats.connected and not stranger.stats.connected and not plain.stats.connected
