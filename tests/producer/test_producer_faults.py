"""--fault KIND[:ARG]@UPDATE: parsing, bad specs, when a fault acts, slow_rank and hang in a real trainer."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
import zmq
from testkit.proc import ROOT, Proc

from bus.contract import LIVE_TOPIC_PREFIXES, Heartbeat, PPOUpdate, TrainingFinished
from bus.wire import decode
from producer.config import TrainConfig
from producer.faults import (
    KINDS,
    SLOW_RANK_DELAY_S,
    Fault,
    FaultContext,
    Faults,
    check_fault_ranks,
    parse_fault,
    register,
)
from producer.trainer import Trainer

TINY = ["--n-envs", "4", "--rollout-steps", "16", "--num-minibatches", "2", "--update-epochs", "2"]
SMALL = {"n_envs": 4, "rollout_steps": 8, "max_epochs": 5, "num_minibatches": 2, "update_epochs": 2}


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("slow_rank:1@3", Fault("slow_rank", 3, 1)),
        ("hang@2", Fault("hang", 2)),
        ("hang:0@10", Fault("hang", 10, 0)),
    ],
)
def test_specs_parse_and_print_back(text: str, fault: Fault) -> None:
    assert parse_fault(text) == fault and str(fault) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope@1", "unknown fault 'nope' (kinds: slow_rank, hang"),
        ("slow_rank:1", "is not KIND[:ARG]@UPDATE"),
        ("slow_rank@2", "slow_rank needs R: slow_rank:R@UPDATE"),
        ("slow_rank:x@2", "R must be a rank"),
        ("hang@0", "UPDATE must be a whole number >= 1"),
        ("hang@soon", "UPDATE must be a whole number >= 1"),
    ],
)
def test_bad_specs_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_fault(text)


def test_a_rank_outside_the_world_is_refused() -> None:
    assert check_fault_ranks(["slow_rank:1@2", "hang@2"], world_size=2) == []
    assert check_fault_ranks(["slow_rank:2@2"], world_size=2) == [
        "--fault slow_rank:2@2: there is no rank 2 in a world of 2"
    ]
    assert TrainConfig(faults=("hang@0",)).validate() == [
        "--fault: 'hang@0': UPDATE must be a whole number >= 1 (got '0')"
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fault", "teleport@3"], "argument --fault: unknown fault 'teleport'"),
        (["--fault", "slow_rank@3"], "slow_rank needs R"),
        (["--fault", "slow_rank:1@3"], "there is no rank 1 in a world of 1"),
    ],
)
def test_the_command_line_exits_2_on_a_bad_fault(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "producer", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_a_fault_acts_from_its_update_on_and_only_on_its_rank() -> None:
    seen: list[tuple[str, int, int]] = []
    try:

        @register("probe", "minibatch_compute", "records where it fired", arg="R")
        def _probe(fault: Fault, ctx: FaultContext) -> None:
            seen.append((str(fault), ctx.update, ctx.rank))

        faults = Faults(["probe@3", "probe:1@2"])
        for update in (1, 2, 3, 4):
            for rank in (0, 1):
                faults.fire("minibatch_compute", FaultContext(update, rank, lambda: False))
                faults.fire("elsewhere", FaultContext(update, rank, lambda: False))
    finally:
        del KINDS["probe"]
    assert seen == [
        ("probe:1@2", 2, 1),
        ("probe@3", 3, 0),
        ("probe@3", 3, 1),
        ("probe:1@2", 3, 1),
        ("probe@3", 4, 0),
        ("probe@3", 4, 1),
        ("probe:1@2", 4, 1),
    ]


def test_slow_rank_adds_its_delay_to_compute_only() -> None:
    trainer = Trainer(TrainConfig(updates=4, faults=("slow_rank:0@2",), **SMALL), torch.device("cpu"))
    metrics = []
    for _ in range(2):
        trainer.rollout()
        metrics.append(trainer.update())
    minibatches = SMALL["update_epochs"] * SMALL["num_minibatches"]
    slept_ms = minibatches * SLOW_RANK_DELAY_S * 1000.0
    first, second = metrics
    assert first["compute_time_ms"] > 0 and first["collective_wait_ms"] == second["collective_wait_ms"] == 0.0
    assert second["compute_time_ms"] >= slept_ms  # the sleeps fall inside the measured compute
    assert second["update_time_ms"] >= second["compute_time_ms"]


def test_hang_holds_the_update_until_interrupted_and_the_update_then_stops() -> None:
    polls = 0

    def interrupted() -> bool:
        nonlocal polls
        polls += 1
        return polls > 3

    cfg = TrainConfig(updates=4, faults=("hang@2",), **SMALL)
    trainer = Trainer(cfg, torch.device("cpu"), interrupted=interrupted)
    trainer.rollout()
    assert trainer.update() is not None and polls == 0  # update 1: no hang
    trainer.rollout()
    assert trainer.update(interrupted) is None  # held in its first minibatch, then stopped at the next check
    assert polls >= 4 and trainer.train_steps == 1


def test_a_hung_trainer_heartbeats_a_growing_progress_age_until_sigterm() -> None:
    proc = Proc(
        "producer",
        "--endpoint",
        "tcp://127.0.0.1:*",
        "--updates",
        "100",
        "--fault",
        "hang@2",
        "--wait-for-subscriber",
        "30",
        *TINY,
    )
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        endpoint, _ = proc.banner(60)
        for prefix in LIVE_TOPIC_PREFIXES:
            sock.subscribe(prefix.encode())
        sock.connect(endpoint)
        events: list[Any] = []

        def stuck() -> list[float]:
            return [
                e.progress_age_s
                for e in events
                if isinstance(e, Heartbeat) and e.phase == "update" and e.update == 2 and e.progress_age_s
            ]

        def receive_until(done: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + 120
            while not done():
                assert time.monotonic() < deadline, f"no {what}\n{proc.describe()}"
                if sock.poll(200):
                    events.append(decode(sock.recv_multipart()[1]).event)

        receive_until(lambda: len(stuck()) >= 3, "3 heartbeats inside the hung update")
        ages = stuck()
        assert ages == sorted(ages) and ages[-1] - ages[0] >= 1.0, ages  # 1 s apart, no progress between
        assert [e.update for e in events if isinstance(e, PPOUpdate)] == [1]
        proc.proc.send_signal(signal.SIGTERM)
        receive_until(lambda: isinstance(events[-1], TrainingFinished), "training_finished")
        assert proc.wait(30) == 143
        assert events[-1].reason == "interrupted" and events[-1].updates == 1
    finally:
        sock.close(0)
        proc.kill()
