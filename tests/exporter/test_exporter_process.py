"""``python -m consumers.exporter`` as a process: refused arguments, /metrics over HTTP, clean stops."""

from __future__ import annotations

import signal
import socket
import urllib.request
from collections.abc import Iterator

import pytest

pytest.importorskip("prometheus_client", reason="pip install -e '.[prometheus]'")

from prometheus_client.parser import text_string_to_metric_families
from testkit.events import heartbeat, ppo_update, training_started
from testkit.net import free_port
from testkit.proc import Proc
from testkit.wait import wait_until

from bus.publish import BusPublisher, PublisherConfig
from consumers.exporter import __main__ as exporter_main

DEADLINE_S = 60.0
SERVING = r"tamiyo-export: serving http://.*/metrics for .* \(Ctrl-C to stop\)"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--endpoint", "udp://127.0.0.1:5555"], "is not an endpoint: use tcp://HOST:PORT"),
        (["--endpoint", "tcp://127.0.0.1:0"], "the port must be 1-65535, not '0'"),
        (["--endpoint", "tcp://no-such-host.invalid:5555"], "cannot resolve host 'no-such-host.invalid'"),
        (["--address", "9464"], "'9464' is not HOST:PORT with a port 1-65535, e.g. 127.0.0.1:9464"),
        (["--address", "no-such-host.invalid:9464"], "cannot resolve host 'no-such-host.invalid'"),
        (["--address", "0.0.0.0:9464"], "refusing to serve on http://0.0.0.0:9464: it is not loopback"),
        (["--expire-after", "0"], "--expire-after must be > 0"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(args: list[str], says: str, capsys) -> None:  # type: ignore[no-untyped-def]
    assert exporter_main.main(args) == exporter_main.EXIT_BAD_ARGS
    err = capsys.readouterr().err
    assert err.startswith("tamiyo-export: ") and says in err


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def publisher() -> Iterator[BusPublisher]:
    pub = BusPublisher(
        "proc-run", PublisherConfig(endpoint="tcp://127.0.0.1:*", heartbeat_period_s=0.5)
    ).start()
    try:
        yield pub
    finally:
        pub.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serves_metrics_of_a_live_publisher_and_stops_cleanly(publisher: BusPublisher, sig: int) -> None:
    for event in (training_started(), heartbeat(), ppo_update(1, gradient_cv=0.7, kl_divergence=0.02)):
        publisher.publish(event)
    port = free_port()
    exporter = Proc(
        "consumers.exporter", "--endpoint", publisher.bound_endpoint, "--address", f"127.0.0.1:{port}"
    )
    try:
        exporter.wait_for_line(SERVING, DEADLINE_S)
        key = "tamiyo_gradient_cv[('rank', '0'), ('run_id', 'proc-run')]"
        assert wait_until(lambda: key in scrape(port), DEADLINE_S), exporter.describe()
        values = scrape(port)
        assert values[key] == pytest.approx(0.7)
        assert values["tamiyo_kl_divergence[('rank', '0'), ('run_id', 'proc-run')]"] == pytest.approx(0.02)
        assert values["tamiyo_liveness[('rank', '0'), ('run_id', 'proc-run'), ('state', 'LIVE')]"] == 1.0
    finally:
        rc = exporter.stop(sig)
    assert rc == 0, exporter.describe()
    assert "Traceback" not in exporter.stderr_text()


def test_beyond_loopback_needs_the_flag_and_warns() -> None:
    port = free_port()
    exporter = Proc("consumers.exporter", "--address", f"0.0.0.0:{port}", "--allow-remote")
    try:
        exporter.wait_for_line(SERVING, DEADLINE_S)
        assert "WARNING: serving http://0.0.0.0:" in exporter.stderr_text()
        assert "no authentication" in exporter.stderr_text()
    finally:
        assert exporter.stop() == 0, exporter.describe()


def test_a_port_in_use_exits_2_saying_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        exporter = Proc("consumers.exporter", "--address", f"127.0.0.1:{port}")
        assert exporter.wait(DEADLINE_S) == 2
    assert f"tamiyo-export: cannot serve on http://127.0.0.1:{port}:" in exporter.stderr_text()
