"""Endpoints: the default and $TAMIYO_ENDPOINT, clear errors for malformed ones, the same in every command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bus.endpoint import (
    DEFAULT_ENDPOINT,
    ENDPOINT_ENV,
    EndpointError,
    check_endpoint,
    default_endpoint,
    validate_endpoint,
)
from bus.publish import PublisherConfig
from bus.subscribe import Subscriber, SubscriberConfig

ROOT = Path(__file__).resolve().parents[2]


def test_default_endpoint_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    assert default_endpoint() == DEFAULT_ENDPOINT == "tcp://127.0.0.1:5555"
    monkeypatch.setenv(ENDPOINT_ENV, "tcp://127.0.0.1:6000")
    assert default_endpoint() == "tcp://127.0.0.1:6000"
    assert SubscriberConfig().endpoint == PublisherConfig().endpoint == "tcp://127.0.0.1:6000"


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5555", "tcp://[::1]:7", "ipc:///tmp/x", "inproc://y"])
def test_valid_endpoints_pass(endpoint: str) -> None:
    assert validate_endpoint(endpoint) == endpoint


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("bogus://x", "only tcp://"),
        ("127.0.0.1:5555", "only tcp://"),
        ("tcp://127.0.0.1", "is not tcp://HOST:PORT"),
        ("tcp://:5555", "is not tcp://HOST:PORT"),
        ("tcp://host:port", "is not tcp://HOST:PORT"),
    ],
)
def test_malformed_endpoints_get_a_clear_error(endpoint: str, message: str) -> None:
    with pytest.raises(EndpointError, match=message):
        validate_endpoint(endpoint)
    with pytest.raises(EndpointError, match=message):
        Subscriber(SubscriberConfig(endpoint=endpoint))


BAD_ENDPOINTS = [
    ("tcp://127.0.0.1:99999", "'tcp://127.0.0.1:99999': the port must be 1-65535, not '99999'"),
    ("tcp://127.0.0.1:0", "'tcp://127.0.0.1:0': the port must be 1-65535, not '0'"),
    ("tcp://no-such-host.invalid:5555", "'tcp://no-such-host.invalid:5555': cannot resolve host"),
    ("127.0.0.1:5555", "'127.0.0.1:5555' is not an endpoint: use tcp://HOST:PORT"),
]


@pytest.mark.parametrize(("endpoint", "message"), BAD_ENDPOINTS)
def test_check_endpoint_refuses_what_zeromq_would_wrap_or_never_reach(endpoint: str, message: str) -> None:
    for bind in (False, True):
        with pytest.raises(EndpointError) as err:
            check_endpoint(endpoint, bind=bind)
        assert str(err.value).startswith(message)


@pytest.mark.parametrize(
    "endpoint", ["tcp://127.0.0.1:1", "tcp://localhost:65535", "tcp://[::1]:5555", "ipc:///x"]
)
def test_check_endpoint_accepts(endpoint: str) -> None:
    assert check_endpoint(endpoint) == check_endpoint(endpoint, bind=True) == endpoint


def test_any_port_and_any_interface_only_when_binding() -> None:
    assert check_endpoint("tcp://127.0.0.1:*", bind=True) == "tcp://127.0.0.1:*"
    assert check_endpoint("tcp://*:5555", bind=True) == "tcp://*:5555"
    with pytest.raises(EndpointError, match="the port must be 1-65535"):
        check_endpoint("tcp://127.0.0.1:*")


COMMANDS = {
    "producer": ("tamiyo: ", ["producer", "--updates", "1"]),
    "tui": ("tamiyo-tui: ", ["consumers.tui"]),
    "archiver": ("archiver: ", ["consumers.archiver", "--out", "{tmp}"]),
    "alerts": ("alerts: ", ["consumers.alerts"]),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(("endpoint", "message"), BAD_ENDPOINTS[:3])
def test_every_command_refuses_a_bad_endpoint_with_exit_2_and_the_same_message(
    command: str, endpoint: str, message: str, tmp_path: Path
) -> None:
    prefix, args = COMMANDS[command]
    argv = [a.format(tmp=tmp_path / "runs") for a in args]
    result = subprocess.run(
        [sys.executable, "-m", *argv, "--endpoint", endpoint],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2, result.stderr
    assert prefix + message in result.stderr
    assert "Traceback" not in result.stderr
