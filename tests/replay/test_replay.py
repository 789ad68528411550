"""Replaying an archive: the same files come out of a second archiver, pacing, the ending, late joiners."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from testkit.archive import envelopes, event_files, eventful_run, gap_ranges, write_archive
from testkit.net import free_endpoint
from testkit.proc import AFTER_EXIT_S, RUN_TIMEOUT_S, Proc, real_producer
from testkit.wait import wait_until

from bus.contract import Envelope, TrainingFinished
from bus.publish import BusPublisher, PublisherConfig
from bus.subscribe import Subscriber, SubscriberConfig
from consumers.archiver.reader import open_archive
from consumers.replay.replayer import replay


def _replay_into_archiver(run_dir: Path, out: Path) -> Path:
    """``python -m consumers.replay RUN --speed max`` into a fresh archiver process; the new run directory."""
    endpoint = free_endpoint()
    archiver = Proc("consumers.archiver", "--endpoint", endpoint, "--out", str(out), "--no-fsync")
    player = Proc("consumers.replay", str(run_dir), "--speed", "max", "--endpoint", endpoint)
    try:
        assert player.wait(RUN_TIMEOUT_S) == 0, player.describe()
        archiver.wait_for(
            lambda: (
                any("training finished" in line for line in archiver.stdout)
                or (
                    (out / run_dir.name / "training_finished.csv").exists()
                    and (out / run_dir.name / "training_finished.csv").read_text().count("\n") >= 2
                )
            ),
            AFTER_EXIT_S,
            "the replayed training_finished row",
        )
        assert archiver.stop() == 0, archiver.describe()
    finally:
        player.kill()
        archiver.kill()
    assert any(line.startswith("replay: run ") for line in player.stdout), player.describe()
    return out / run_dir.name


def test_a_synthetic_archive_replays_into_identical_files(tmp_path: Path) -> None:
    original = write_archive(tmp_path / "a", envelopes(eventful_run(), hole=(30, 34)))
    assert (original / "ppo_update.2.csv").exists()  # the head added half way rolled the file
    assert (
        "nan" in (original / "ppo_update.csv").read_text()
        and "-inf" in (original / "ppo_update.csv").read_text()
    )
    copy = _replay_into_archiver(original, tmp_path / "b")
    assert event_files(copy) == event_files(original)
    assert gap_ranges(copy) == gap_ranges(original) == [(30, 34)]  # the recorded hole is a hole again


def test_a_real_run_archived_then_replayed_gives_the_same_csv_files(tmp_path: Path) -> None:
    endpoint = free_endpoint()
    producer = real_producer(endpoint, 6)
    archiver = Proc("consumers.archiver", "--endpoint", endpoint, "--out", str(tmp_path / "a"), "--no-fsync")
    try:
        _, run_id = producer.banner(RUN_TIMEOUT_S)
        assert producer.wait(RUN_TIMEOUT_S) == 0, producer.describe()
        archiver.wait_for(
            lambda: (
                (tmp_path / "a" / run_id / "training_finished.csv").exists()
                and (tmp_path / "a" / run_id / "training_finished.csv").read_text().count("\n") >= 2
            ),
            AFTER_EXIT_S,
            "the live training_finished row",
        )
        assert archiver.stop() == 0, archiver.describe()
    finally:
        producer.kill()
        archiver.kill()
    original = tmp_path / "a" / run_id
    copy = _replay_into_archiver(original, tmp_path / "b")
    assert event_files(copy) == event_files(original)
    assert gap_ranges(copy) == gap_ranges(original)


class _Recorder:
    """A publisher stand-in that keeps what it is given."""

    def __init__(self) -> None:
        self.sent: list[Envelope] = []

    def publish_envelope(self, env: Envelope, timeout: float | None = None) -> bool:
        self.sent.append(env)
        return True


class _Clock:
    """A fake clock with a stop whose ``wait`` moves the clock on, recording every pause."""

    def __init__(self) -> None:
        self.now = 100.0
        self.pauses: list[float] = []
        self.stop_after: int | None = None

    def __call__(self) -> float:
        return self.now

    def is_set(self) -> bool:
        return self.stop_after is not None and len(self.pauses) >= self.stop_after

    def wait(self, timeout: float) -> bool:
        self.pauses.append(timeout)
        self.now += timeout
        return self.is_set()


def test_pacing_follows_the_recorded_spacing_scaled_by_speed() -> None:
    items = envelopes(eventful_run(updates=4))
    clock, out = _Clock(), _Recorder()
    result = replay(items, out, speed=10.0, stop=clock, clock=clock)  # type: ignore[arg-type]
    assert out.sent == items and result.finish_recorded and result.sent == len(items)
    assert clock.pauses == pytest.approx([0.005] * (len(items) - 1), abs=1e-6)  # 0.05 s recorded, 10x faster


def test_as_fast_as_taken_never_waits() -> None:
    items = envelopes(eventful_run(updates=4))
    clock, out = _Clock(), _Recorder()
    replay(items, out, speed=None, stop=clock, clock=clock)  # type: ignore[arg-type]
    assert clock.pauses == [] and out.sent == items


def test_a_run_without_training_finished_ends_interrupted_one_seq_later() -> None:
    items = envelopes(eventful_run(updates=4, finished=False))
    clock, out = _Clock(), _Recorder()
    result = replay(items, out, speed=None, stop=clock, clock=clock)  # type: ignore[arg-type]
    assert out.sent[:-1] == items
    last = out.sent[-1]
    assert isinstance(last.event, TrainingFinished) and last.event.reason == "interrupted"
    assert last.seq == items[-1].seq + 1 and last.event.updates == 4 and not result.finish_recorded


def test_a_stopped_replay_ends_interrupted() -> None:
    items = envelopes(eventful_run(updates=10))
    clock, out = _Clock(), _Recorder()
    clock.stop_after = 3
    result = replay(items, out, speed=1.0, stop=clock, clock=clock)  # type: ignore[arg-type]
    assert result.stopped and len(out.sent) == 4  # three sent, then the interrupted ending
    assert out.sent[-1].event.reason == "interrupted"  # type: ignore[union-attr]


def test_a_late_joiner_gets_the_recorded_seqs_from_the_publishers_replay_cache(tmp_path: Path) -> None:
    run_dir = write_archive(tmp_path, envelopes(eventful_run(updates=6), hole=(3, 4)))
    items = open_archive(run_dir).read_all()
    config = PublisherConfig(endpoint="tcp://127.0.0.1:0", heartbeat_period_s=0.0, lossless=True)
    with BusPublisher(items[0].run_id, config) as pub:
        for env in items:
            assert pub.publish_envelope(env)
        sub = Subscriber(SubscriberConfig(endpoint=pub.bound_endpoint))
        try:
            got: list[Envelope] = []
            wait_until(
                lambda: len(got) >= len(items),
                20.0,
                lambda: got.extend(i for i in sub.receive(0.05) if isinstance(i, Envelope)),
            )
        finally:
            sub.close()
    assert [(e.seq, e.ts) for e in got] == [(e.seq, e.ts) for e in items]
    assert pub.last_seq == items[-1].seq


def test_a_lossless_publisher_waits_for_a_slow_consumer_instead_of_dropping(tmp_path: Path) -> None:
    """Queue, send buffer and receive buffer far smaller than the run: every envelope still arrives."""
    items = open_archive(write_archive(tmp_path, envelopes(eventful_run(updates=1500)))).read_all()
    config = PublisherConfig(
        endpoint="tcp://127.0.0.1:0", heartbeat_period_s=0.0, lossless=True, queue_limit=64, sndhwm=16
    )
    pub = BusPublisher(items[0].run_id, config).start()
    sub = Subscriber(SubscriberConfig(endpoint=pub.bound_endpoint, rcvhwm=16))
    got: list[Envelope] = []
    try:
        assert wait_until(lambda: pub.stats.replays >= 1, 20.0, lambda: sub.receive(0.01))
        sender = threading.Thread(target=lambda: [pub.publish_envelope(e) for e in items])
        sender.start()
        assert wait_until(
            lambda: len(got) >= len(items),
            60.0,
            lambda: got.extend(i for i in sub.receive(0.05) if isinstance(i, Envelope)),
        )
        sender.join(10)
    finally:
        sub.close()
        pub.close()
    assert [e.seq for e in got] == [e.seq for e in items]
    assert pub.stats.dropped == 0 and pub.stats.sent == len(items)


def test_publish_envelope_keeps_its_run_and_publish_continues_after_it() -> None:
    config = PublisherConfig(endpoint="tcp://127.0.0.1:0", heartbeat_period_s=0.0)
    items = envelopes(eventful_run(updates=2), run_id="run-x", hole=(2, 40))
    with BusPublisher("run-x", config) as pub:
        with pytest.raises(ValueError, match="run-y"):
            pub.publish_envelope(envelopes(eventful_run(updates=1), run_id="run-y")[0])
        for env in items:
            pub.publish_envelope(env)
        pub.publish(items[1].event)
        assert wait_until(lambda: pub.last_seq == items[-1].seq + 1, 10.0)
