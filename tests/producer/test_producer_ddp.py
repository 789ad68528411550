"""Two ranks under torchrun (gloo) through a stand-in forwarder: per-rank events, timings, faults, SIGTERM."""

from __future__ import annotations

import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
import zmq
from testkit.proc import Proc

from bus.contract import (
    LIVE_TOPIC_PREFIXES,
    Envelope,
    Heartbeat,
    PPOUpdate,
    TrainingFinished,
    TrainingStarted,
)
from bus.wire import decode

TINY = ["--n-envs", "4", "--rollout-steps", "16", "--num-minibatches", "2", "--update-epochs", "2"]
TIMEOUT_S = 180.0


class Feed:
    """Everything the forwarder's backend delivers, decoded."""

    def __init__(self, backend: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        for prefix in LIVE_TOPIC_PREFIXES:
            self.sock.subscribe(prefix.encode())
        self.sock.connect(backend)
        self.envelopes: list[Envelope] = []

    def until(self, done: Callable[[list[Envelope]], bool], proc: Proc, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not done(self.envelopes):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{proc.describe()}")
            if self.sock.poll(200):
                self.envelopes.append(decode(self.sock.recv_multipart()[1]))

    def of(self, rank: int, kind: type) -> list:  # type: ignore[type-arg]
        return [e.event for e in self.envelopes if e.rank == rank and isinstance(e.event, kind)]

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def ranks(forwarder: tuple[str, str]) -> Iterator[Callable[..., tuple[Proc, Feed]]]:
    """Start ``torchrun --standalone --nproc-per-node 2 -m producer --connect FRONTEND ARGS``."""
    started: list[tuple[Proc, Feed]] = []

    def start(*args: str) -> tuple[Proc, Feed]:
        frontend, backend = forwarder
        feed = Feed(backend)
        proc = Proc(
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "producer",
            "--connect",
            frontend,
            "--wait-for-subscriber",
            "30",
            *TINY,
            *args,
        )
        started.append((proc, feed))
        return proc, feed

    yield start
    for proc, feed in started:
        try:
            proc.stop(signal.SIGTERM, 60)  # torchrun passes it on; SIGKILL would orphan the ranks
        except subprocess.TimeoutExpired:
            proc.kill()
        feed.close()


def finished_both(envelopes: list[Envelope]) -> bool:
    return {e.rank for e in envelopes if isinstance(e.event, TrainingFinished)} == {0, 1}


def test_two_ranks_publish_their_own_events_and_a_slow_rank_shows(
    ranks: Callable[..., tuple[Proc, Feed]],
) -> None:
    proc, feed = ranks("--updates", "8", "--fault", "slow_rank:1@5")
    feed.until(finished_both, proc, "training_finished from both ranks")
    assert proc.wait(60) == 0, proc.describe()
    assert {e.run_id for e in feed.envelopes} == {feed.envelopes[0].run_id}  # one run
    for rank in (0, 1):
        seqs = [e.seq for e in feed.envelopes if e.rank == rank]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (rank, seqs)  # contiguous per rank
        (started,) = feed.of(rank, TrainingStarted)
        assert (started.rank, started.world_size) == (rank, 2)
        updates = feed.of(rank, PPOUpdate)
        assert [u.update for u in updates] == list(range(1, 9))
        assert all(u.compute_time_ms > 0 and u.collective_wait_ms > 0 for u in updates)
        assert feed.of(rank, TrainingFinished)[0].reason == "done"
    assert feed.of(0, TrainingStarted)[0].seed == feed.of(1, TrainingStarted)[0].seed

    def median(rank: int, name: str, first: int, last: int) -> float:
        return statistics.median(
            getattr(u, name) for u in feed.of(rank, PPOUpdate) if first <= u.update <= last
        )

    # From update 5 rank 1 sleeps in each minibatch's compute: its compute grows and rank 0 waits for it.
    slow, fast = median(1, "compute_time_ms", 5, 8), median(0, "compute_time_ms", 5, 8)
    waiting, before, other = (
        median(0, "collective_wait_ms", 5, 8),
        median(0, "collective_wait_ms", 2, 4),
        median(1, "collective_wait_ms", 5, 8),
    )
    ratios = f"compute {slow:.1f} vs {fast:.1f}, wait {waiting:.1f} (before {before:.1f}, rank 1 {other:.1f})"
    assert slow > 2 * fast, ratios
    assert waiting > 2 * before and waiting > 2 * other, ratios


def test_sigterm_to_torchrun_ends_both_ranks_interrupted(ranks: Callable[..., tuple[Proc, Feed]]) -> None:
    proc, feed = ranks("--updates", "100000")
    feed.until(
        lambda envs: {e.rank for e in envs if isinstance(e.event, PPOUpdate)} == {0, 1}, proc, "updates"
    )
    proc.proc.send_signal(signal.SIGTERM)
    feed.until(finished_both, proc, "training_finished from both ranks")
    proc.wait(60)
    for rank in (0, 1):
        (finished,) = feed.of(rank, TrainingFinished)
        assert finished.reason == "interrupted" and finished.updates >= 1
    # The ranks stopped together: at the same update, so neither was left waiting in an all-reduce.
    assert feed.of(0, TrainingFinished)[0].updates == feed.of(1, TrainingFinished)[0].updates
    assert "tamiyo: interrupted after" in proc.stderr_text()  # rank 0's last line


def test_a_hung_rank_stalls_progress_while_heartbeats_go_on(ranks: Callable[..., tuple[Proc, Feed]]) -> None:
    proc, feed = ranks("--updates", "100000", "--fault", "hang:1@2")

    def stuck_beats(rank: int) -> list[float]:
        return [
            h.progress_age_s
            for h in feed.of(rank, Heartbeat)
            if h.update == 2 and h.phase == "update" and h.progress_age_s is not None
        ]

    # Rank 1 sleeps in update 2; rank 0 waits for it in the all-reduce: neither makes progress.
    feed.until(lambda _: len(stuck_beats(0)) >= 3 and len(stuck_beats(1)) >= 3, proc, "3 stuck heartbeats")
    for rank in (0, 1):
        ages = stuck_beats(rank)
        assert ages == sorted(ages) and ages[-1] - ages[0] >= 1.0, (rank, ages)  # 1 s heartbeat period
    assert not feed.of(0, PPOUpdate)[1:]  # nothing after update 1
    proc.proc.send_signal(signal.SIGTERM)
    feed.until(finished_both, proc, "training_finished from both ranks")
    proc.wait(60)
    assert [feed.of(r, TrainingFinished)[0].reason for r in (0, 1)] == ["interrupted", "interrupted"]
