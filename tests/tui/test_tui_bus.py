"""The dashboard on a real socket: an in-process BusPublisher on a free port, the reader thread."""

from __future__ import annotations

from testkit.wait import pilot_wait_until
from tui_helpers import async_test, settle
from tui_synth import batch, heartbeat, ppo, started

from bus.publish import BusPublisher, PublisherConfig
from bus.subscribe import SubscriberConfig
from consumers.tui.app import TamiyoApp

DEADLINE_S = 20.0


async def wait_for(pilot, condition, what: str) -> None:
    await pilot_wait_until(pilot, condition, what, DEADLINE_S)


def publisher(run_id: str, endpoint: str = "tcp://127.0.0.1:*") -> BusPublisher:
    return BusPublisher(run_id, PublisherConfig(endpoint=endpoint, heartbeat_period_s=0.2)).start()


@async_test
async def test_live_numbers_arrive_over_the_socket_and_reset_refills_from_replay():
    pub = publisher("run-socket-1")
    try:
        pub.publish(started(compile_enabled=True))  # before anyone listens: reaches the app by replay
        app = TamiyoApp(pub.bound_endpoint)
        async with app.run_test(size=(120, 40)) as pilot:
            state = lambda: app.aggregator.state  # noqa: E731
            await wait_for(pilot, lambda: state().run.started is not None, "training_started (replayed)")
            for u in range(5):
                pub.publish(batch(u))
                pub.publish(ppo(u, kl_divergence=0.011 + u / 1000))
            await wait_for(pilot, lambda: state().tamiyo.update == 4, "update 4")
            text = await settle(app, pilot)
            assert "run-socket-1" in text and "TAMIYO [compiled]" in text
            assert "update 4/500" in text and "KL 0.015" in text and "● LIVE" in text
            assert app.link.connected

            before = state()
            await pilot.press("r")
            # training_started was published once, before the app connected: only a replay brings it back.
            await wait_for(pilot, lambda: state() is not before and state().run.started is not None, "replay")
            await wait_for(pilot, lambda: state().tamiyo.update == 4, "history replayed after reset")
            text = await settle(app, pilot)
            assert "update 4/500" in text and "0 dropped" in text
    finally:
        pub.close()


@async_test
async def test_follows_a_restarted_producer_on_the_same_port():
    first = publisher("run-first-01")
    endpoint = first.bound_endpoint
    second = None
    try:
        first.publish(started())
        app = TamiyoApp(endpoint)
        async with app.run_test(size=(120, 40)) as pilot:
            first.publish(ppo(0))
            await wait_for(pilot, lambda: app.aggregator.state.tamiyo.ppo_data_received, "first run's update")
            first.close()
            second = publisher("run-second-2", endpoint)
            second.publish(started())
            second.publish(ppo(7))
            second.publish(heartbeat("update", 7))
            await wait_for(pilot, lambda: app.aggregator.state.run.run_id == "run-second-2", "the new run")
            await wait_for(pilot, lambda: app.aggregator.state.tamiyo.update == 7, "the new run's update")
            text = await settle(app, pilot)
        assert "run-second-2" in text and "run-first-01" not in text
        assert "update 7/500" in text
    finally:
        first.close()
        if second is not None:
            second.close()


@async_test
async def test_curve_keys_admit_one_consumer_and_the_refused_one_is_told(tmp_path):
    from bus.keys import generate
    from bus.security import AUTHORIZED_DIR, client_keys, server_keys

    generate(tmp_path, ["tui", "evicted"])
    (tmp_path / AUTHORIZED_DIR / "evicted.key").unlink()  # keys are read when the publisher starts
    pub = BusPublisher(
        "run-curve-01",
        PublisherConfig(endpoint="tcp://127.0.0.1:*", heartbeat_period_s=0.2, **server_keys(tmp_path)),
    ).start()
    try:
        pub.publish(started())
        pub.publish(ppo(3))
        admitted = TamiyoApp(
            pub.bound_endpoint,
            subscriber=SubscriberConfig(
                endpoint=pub.bound_endpoint, **client_keys(tmp_path / "clients" / "tui")
            ),
        )
        async with admitted.run_test(size=(100, 30)) as pilot:
            await wait_for(
                pilot, lambda: admitted.aggregator.state.tamiyo.update == 3, "an admitted consumer's data"
            )
        refused = TamiyoApp(
            pub.bound_endpoint,
            subscriber=SubscriberConfig(
                endpoint=pub.bound_endpoint, **client_keys(tmp_path / "clients" / "evicted")
            ),
        )
        async with refused.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: refused.link.auth_failures > 0, "the refused handshake")
            text = await settle(refused, pilot)
        assert "refused this consumer's CURVE key" in text
        assert refused.aggregator.state.delivery.events == 0
    finally:
        pub.close()
