"""Endpoints: the default and $TAMIYO_ENDPOINT, and clear errors for malformed ones."""

from __future__ import annotations

import pytest

from bus.endpoint import DEFAULT_ENDPOINT, ENDPOINT_ENV, EndpointError, default_endpoint, validate_endpoint
from bus.publish import PublisherConfig
from bus.subscribe import Subscriber, SubscriberConfig


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
