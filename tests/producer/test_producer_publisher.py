"""The telemetry adapter and the training run loop in-process (events, phases, crash and stop paths)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from bus.contract import (
    BatchCompleted,
    Event,
    Heartbeat,
    PPOUpdate,
    TrainingFinished,
    TrainingStarted,
)
from bus.publish import BusPublisher, PublisherConfig
from bus.subscribe import Subscriber, SubscriberConfig
from bus.wire import decode
from producer import publisher as events
from producer.__main__ import StopFlag, run
from producer.config import TrainConfig
from producer.trainer import Trainer

SMALL = {
    "n_envs": 4,
    "rollout_steps": 8,
    "max_epochs": 5,
    "num_minibatches": 2,
    "update_epochs": 1,
    "threads": 1,
}


class RecordingTelemetry:
    """A Telemetry that keeps what it is given."""

    def __init__(self) -> None:
        self.run_id = "test-run"
        self.endpoint = ""
        self.events: list[Event] = []
        self.phases: list[str] = []
        self.updates: list[int] = []
        self.progress_marks = 0

    def mark_progress(self) -> None:
        self.progress_marks += 1

    def set_phase(self, phase: str) -> None:
        if not self.phases or self.phases[-1] != phase:
            self.phases.append(phase)

    def set_update(self, update: int) -> None:
        self.updates.append(update)

    def publish(self, event: Event) -> None:
        self.events.append(event)

    def wait_for_subscriber(self, timeout: float, should_stop: Callable[[], bool]) -> bool:
        return True

    def close(self) -> None:
        pass


def test_training_started_carries_every_field() -> None:
    cfg = TrainConfig(updates=7, compile=True, compile_backend="eager", compile_mode="default")
    heads = {"op": 6, "slot": 3}
    ev = events.training_started(
        cfg, heads=heads, slot_ids=["slot_0", "slot_1", "slot_2"], policy_device="cpu", torch_version="x"
    )
    assert ev.action_heads == heads and ev.world_size == 1 and ev.rank == 0
    assert ev.total_updates == 7 and ev.rollout_steps == cfg.rollout_steps
    assert ev.env_devices == ["cpu"] * cfg.n_envs and ev.compile_enabled and ev.compile_backend == "eager"
    assert ev.n_episodes == 7 * cfg.rollout_steps * cfg.n_envs // cfg.max_epochs
    off = events.training_started(
        TrainConfig(), heads=heads, slot_ids=[], policy_device="cpu", torch_version="x"
    )
    assert (off.compile_enabled, off.compile_backend, off.compile_mode) == (False, "", "")


def test_batch_completed_return_statistics() -> None:
    ev = events.batch_completed(
        update=3, env_steps=96, fps=10.0, step_time_ms=2.0, episodes_completed=9, returns=[1.0, -2.0, 4.0]
    )
    assert (ev.episodes, ev.return_mean, ev.return_min, ev.return_max) == (3, 1.0, -2.0, 4.0)
    none = events.batch_completed(
        update=1, env_steps=8, fps=1.0, step_time_ms=1.0, episodes_completed=0, returns=[]
    )
    assert (none.episodes, none.return_mean, none.return_min, none.return_max) == (0, None, None, None)


def test_ppo_update_refuses_missing_metrics() -> None:
    with pytest.raises(KeyError, match="policy_loss"):
        events.ppo_update({"update": 1, "train_steps": 1, "env_steps": 8})


def test_null_telemetry_opens_no_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(zmq.Context, "socket", refuse)
    tm = events.NullTelemetry("r")
    tm.set_phase("rollout")
    tm.publish(events.training_finished("done", updates=0, env_steps=0))
    assert tm.endpoint == "" and tm.events == 1
    assert tm.wait_for_subscriber(0.01, lambda: False) is False
    tm.close()


def test_bus_telemetry_publishes_decodable_events() -> None:
    tm = events.BusTelemetry("run-pub", "tcp://127.0.0.1:*")
    try:
        assert tm.endpoint.startswith("tcp://127.0.0.1:")
        with Subscriber(SubscriberConfig(endpoint=tm.endpoint)) as sub:
            assert tm.wait_for_subscriber(10.0, lambda: False)
            tm.set_phase("rollout")
            tm.set_update(4)
            assert tm.publisher.phase == "rollout" and tm.publisher.update == 4
            tm.publish(events.training_finished("done", updates=4, env_steps=32))
            got: list[Any] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                isinstance(getattr(i, "event", None), TrainingFinished) for i in got
            ):
                got += sub.receive(0.1)
        finished = [i.event for i in got if isinstance(getattr(i, "event", None), TrainingFinished)]
        assert finished == [TrainingFinished(reason="done", updates=4, env_steps=32)]
    finally:
        tm.close()


def test_wait_for_subscriber_gives_up_when_stopped() -> None:
    tm = events.BusTelemetry("run-wait", "tcp://127.0.0.1:*")
    try:
        assert tm.wait_for_subscriber(30.0, lambda: True) is False
    finally:
        tm.close()


def test_run_publishes_started_batches_updates_and_finished(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    cfg = TrainConfig(updates=3, diagnostics_every=2, noise_warmup=1, summary_json=str(summary), **SMALL)
    tm = RecordingTelemetry()
    err = io.StringIO()
    assert run(cfg, tm, StopFlag(), err) == 0
    kinds = [type(e).__name__ for e in tm.events]
    assert kinds == ["TrainingStarted"] + ["BatchCompleted", "PPOUpdate"] * 3 + ["TrainingFinished"]
    started = tm.events[0]
    assert (
        isinstance(started, TrainingStarted) and started.total_updates == 3 and started.policy_device == "cpu"
    )
    updates = [e for e in tm.events if isinstance(e, PPOUpdate)]
    assert [u.train_steps for u in updates] == [1, 2, 3]
    assert [u.gradient_cv_step for u in updates] == [1, 1, 3]
    batches = [e for e in tm.events if isinstance(e, BatchCompleted)]
    assert [b.env_steps for b in batches] == [32, 64, 96] and [b.update for b in batches] == [1, 2, 3]
    assert sum(b.episodes for b in batches) == batches[-1].episodes_completed == (24 // 5) * 4
    assert tm.events[-1] == TrainingFinished(reason="done", updates=3, env_steps=96)
    assert tm.phases == ["rollout", "update", "rollout", "update", "rollout", "update", "finished"]
    assert tm.updates == [1, 2, 3]
    # The loop's start, then every env step (8 per rollout) and every minibatch (2 per update).
    assert tm.progress_marks == 1 + 3 * (8 + 2)
    assert all(u.compute_time_ms > 0 and u.collective_wait_ms == 0.0 for u in updates)
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("update 1/3") and lines[-1].startswith("update 3/3")
    data = json.loads(summary.read_text())
    assert data["reason"] == "done" and data["updates"] == 3 and data["env_steps"] == 96
    assert data["env_steps_per_s"] > 0 and data["update_time_ms_total"] > 0 and data["diagnostics_ms"] >= 0
    assert len(data["gradient_cv"]) == 2 and data["return_mean_last"] is not None


def test_run_reports_a_crash_then_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: Trainer, *args: object) -> dict[str, object]:
        raise RuntimeError("boom in update")

    monkeypatch.setattr(Trainer, "update", explode)
    tm = RecordingTelemetry()
    err = io.StringIO()
    assert run(TrainConfig(updates=3, **SMALL), tm, StopFlag(), err) == 1
    last = tm.events[-1]
    assert isinstance(last, TrainingFinished) and last.reason == "crashed"
    assert last.error == "RuntimeError: boom in update" and last.updates == 0 and last.env_steps == 32
    assert "Traceback" in err.getvalue() and "boom in update" in err.getvalue()


def test_run_stops_on_the_flag_and_reports_interrupted() -> None:
    stop = StopFlag()
    tm = RecordingTelemetry()

    original = tm.publish

    def publish_then_stop(event: Event) -> None:
        original(event)
        if isinstance(event, PPOUpdate):
            stop.signum = 15  # as the SIGTERM handler would

    tm.publish = publish_then_stop  # type: ignore[method-assign]
    assert run(TrainConfig(updates=50, **SMALL), tm, stop, io.StringIO()) == 143
    last = tm.events[-1]
    assert isinstance(last, TrainingFinished) and last.reason == "interrupted" and last.updates == 1


def test_events_round_trip_through_msgpack_maps() -> None:
    ev = events.batch_completed(
        update=1, env_steps=8, fps=1.0, step_time_ms=1.0, episodes_completed=0, returns=[]
    )
    raw = msgspec.msgpack.decode(msgspec.msgpack.encode(ev))
    assert isinstance(raw, dict) and raw["type"] == "batch_completed" and raw["return_mean"] is None


def test_bus_telemetry_connects_to_a_forwarder_and_stamps_its_rank(forwarder: tuple[str, str]) -> None:
    frontend, backend = forwarder
    tm = events.BusTelemetry("run-ranked", frontend, connect=True, rank=3)
    try:
        assert tm.endpoint == frontend
        with Subscriber(SubscriberConfig(endpoint=backend)) as sub:
            assert tm.wait_for_subscriber(10.0, lambda: False)  # the subscription came through the forwarder
            tm.publish(events.training_finished("done", updates=0, env_steps=0))
            got: list[Any] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                isinstance(getattr(i, "event", None), TrainingFinished) for i in got
            ):
                got += sub.receive(0.1)
        envelopes = [i for i in got if hasattr(i, "rank")]
        assert (
            envelopes
            and {e.rank for e in envelopes} == {3}
            and {e.run_id for e in envelopes} == {"run-ranked"}
        )
    finally:
        tm.close()


def test_heartbeats_carry_the_age_of_the_last_progress(forwarder: tuple[str, str]) -> None:
    frontend, backend = forwarder
    config = PublisherConfig(endpoint=frontend, connect=True, heartbeat_period_s=0.05)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.subscribe(b"heartbeat")
    sub.connect(backend)
    ages: list[float | None] = []

    def beats(n: int) -> list[float | None]:
        got: list[float | None] = []
        deadline = time.monotonic() + 10
        while len(got) < n and time.monotonic() < deadline:
            if sub.poll(100):
                event = decode(sub.recv_multipart()[1]).event
                assert isinstance(event, Heartbeat)
                got.append(event.progress_age_s)
        assert len(got) == n, got
        return got

    with BusPublisher("run-beat", config) as pub:
        try:
            assert pub.wait_for_subscriber(10.0)
            ages = beats(2)
            assert ages == [None, None]  # no progress reported yet
            pub.mark_progress()
            marked = time.monotonic()
            ages = beats(5)
            waited = time.monotonic() - marked
        finally:
            sub.close(0)
    if ages[0] is None:  # a beat sent just before the mark
        ages = ages[1:]
    assert None not in ages and ages == sorted(ages), ages  # no new progress: the age only grows
    assert ages[-1] > ages[0] and ages[-1] <= waited
