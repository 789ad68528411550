"""--fault KIND[:ARG]@UPDATE: parsing, bad specs, when a fault acts, what each kind does to a trainer."""

from __future__ import annotations

import argparse
import math
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
    EXPLODE_FACTOR,
    KINDS,
    LR_SPIKE_FACTOR,
    NOISY_KEEP,
    POINTS,
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
        ("lr_spike@5", Fault("lr_spike", 5)),
        ("nan_loss:1@7", Fault("nan_loss", 7, 1)),
        ("fragment@3", Fault("fragment", 3)),
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
        ("explode@", "UPDATE must be a whole number >= 1"),
        ("lr_spike:x@2", "R must be a rank"),
        ("entropy_collapse", "is not KIND[:ARG]@UPDATE"),
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
        (["--fault", "dead_layers@-1"], "UPDATE must be a whole number >= 1"),
        (
            ["--device", "cpu", "--no-telemetry", "--fault", "fragment@2"],
            "fragment needs CUDA (this run is on cpu)",
        ),
    ],
)
def test_the_command_line_exits_2_on_a_bad_fault(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "producer", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_help_lists_every_kind() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "producer", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    text = " ".join(result.stdout.split())  # argparse wraps the help
    assert result.returncode == 0, result.stderr
    for name in KINDS:
        assert f"{name}@UPDATE" in text or f"{name}:R@UPDATE" in text, name
    assert "25% of the GPU" in text


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


def _run(faults: tuple[str, ...], updates: int = 3, **overrides: Any) -> tuple[Trainer, list[dict[str, Any]]]:
    cfg = TrainConfig(updates=10, faults=faults, **(SMALL | overrides))
    trainer = Trainer(cfg, torch.device("cpu"))
    metrics = []
    for _ in range(updates):
        trainer.rollout()
        metrics.append(trainer.update())
    return trainer, metrics


def test_a_hook_point_must_be_known() -> None:
    with pytest.raises(ValueError, match="unknown hook point 'nowhere'"):
        register("probe", "nowhere", "never registered")
    assert "probe" not in KINDS


def test_the_trainer_fires_every_hook_point_in_every_update_with_what_it_carries() -> None:
    carried = {
        "advantages": ("advantages",),
        "update_start": ("model", "optimizer", "device"),
        "minibatch_compute": (),
        "loss": ("loss",),
        "gradients": ("params",),
    }
    assert set(carried) == set(POINTS)
    seen: dict[str, set[int]] = {point: set() for point in POINTS}
    try:
        for point in POINTS:

            @register(f"probe_{point}", point, "records that it fired")
            def _probe(fault: Fault, ctx: FaultContext, point: str = point) -> None:
                assert all(getattr(ctx, name) is not None for name in carried[point]), point
                seen[point].add(ctx.update)

        _run(tuple(f"probe_{point}@2" for point in POINTS))
    finally:
        for point in POINTS:
            KINDS.pop(f"probe_{point}", None)
    assert seen == {point: {2, 3} for point in POINTS}


def test_lr_spike_multiplies_the_scheduled_lr_from_its_update_on() -> None:
    _, metrics = _run(("lr_spike@2",), updates=4)
    scheduled = [1e-3 * (1.0 - u / 10) for u in range(4)]  # TrainConfig's lr, annealed over 10 updates
    assert [m["lr"] for m in metrics] == pytest.approx(
        [scheduled[0], *(LR_SPIKE_FACTOR * lr for lr in scheduled[1:])]
    )


def test_lr_spike_does_not_compound_without_annealing() -> None:
    cfg = TrainConfig(updates=10, faults=("lr_spike@2",), anneal_lr=False, **SMALL)
    trainer = Trainer(cfg, torch.device("cpu"))
    lrs = []
    for _ in range(3):
        trainer.rollout()
        lrs.append(trainer.update()["lr"])
    assert lrs == pytest.approx([1e-3, 0.1, 0.1])


def test_nan_loss_makes_the_losses_and_gradients_non_finite() -> None:
    _, (healthy, faulty, after) = _run(("nan_loss@2",))
    assert math.isfinite(healthy["policy_loss"]) and healthy["nan_grad_count"] == 0
    assert math.isnan(faulty["policy_loss"]) and math.isnan(faulty["grad_norm"])
    assert faulty["nan_grad_count"] > 0
    assert math.isnan(after["value_loss"])  # the NaN step reached the weights


def test_explode_scales_the_gradient_before_clipping() -> None:
    _, healthy = _run((), updates=2)
    _, faulty = _run(("explode@2",), updates=2)
    assert faulty[0]["grad_norm"] == healthy[0]["grad_norm"] and faulty[0]["exploding_layers"] == 0
    # Same weights at update 2's start; its first minibatch is exactly x1e4, the later ones nearly.
    assert faulty[1]["grad_norm"] > 0.5 * EXPLODE_FACTOR * healthy[1]["grad_norm"]
    assert faulty[1]["exploding_layers"] > 0 and healthy[1]["exploding_layers"] == 0


def test_dead_layers_leaves_the_lstm_and_everything_it_feeds_without_gradient() -> None:
    trainer, (healthy, faulty, after) = _run(("dead_layers@2",))
    assert healthy["dead_layers"] <= 1
    # encoder (2) + LSTM (4) + every head's weight (8) + the critic's weight: only the biases after it live.
    assert faulty["dead_layers"] == after["dead_layers"] == 15 and faulty["total_layers"] == 24
    policy = trainer.policy
    for module in (policy.encoder, policy.lstm, policy.critic):
        for p in module.parameters():
            if p is not policy.critic.bias:
                assert p.grad is not None and p.grad.abs().max() < 1e-6
    assert policy.critic.bias.grad is not None and policy.critic.bias.grad.abs().max() > 1e-6


def test_entropy_collapse_drives_every_head_towards_deterministic() -> None:
    _, healthy = _run((), updates=4, lr=0.01)
    _, faulty = _run(("entropy_collapse@2",), updates=4, lr=0.01)
    assert faulty[0]["head_entropy"] == healthy[0]["head_entropy"]
    for head, entropy in faulty[-1]["head_entropy"].items():
        assert entropy < healthy[-1]["head_entropy"][head], head
    assert faulty[-1]["entropy"] < 0.5 * healthy[-1]["entropy"]


def test_noisy_gradients_keeps_a_few_transitions_weighted_up() -> None:
    size = {"n_envs": 8, "rollout_steps": 16}
    healthy_trainer, _ = _run((), updates=1, **size)
    healthy_trainer.rollout()
    faulty_trainer, _ = _run(("noisy_gradients@2",), updates=1, **size)
    faulty_trainer.rollout()  # update 2's rollout: the same data as the healthy twin's
    healthy, faulty = healthy_trainer.advantages, faulty_trainer.advantages
    kept = faulty != 0
    assert 0 < int(kept.sum()) < healthy.numel() // 4  # about 1 in NOISY_KEEP of 128
    assert torch.equal(faulty[kept], NOISY_KEEP * healthy[kept])
    # The value targets are subsampled alike: returns - values is the kept, weighted advantage.
    assert torch.equal(faulty_trainer.returns, faulty + faulty_trainer.values)
    assert torch.equal(faulty_trainer.values, healthy_trainer.values)


def test_fragment_is_refused_without_cuda() -> None:
    with pytest.raises(ValueError, match=r"--fault fragment@2: fragment needs CUDA \(this run is on cpu\)"):
        Trainer(TrainConfig(updates=4, faults=("fragment@2",), **SMALL), torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fragment needs CUDA")
def test_fragment_leaves_reserved_memory_far_above_allocated() -> None:
    cfg = TrainConfig(updates=4, faults=("fragment@2",), diagnostics_every=1, **SMALL)
    trainer = Trainer(cfg, torch.device("cuda"))
    metrics = []
    for _ in range(3):
        trainer.rollout()
        metrics.append(trainer.update())
    assert metrics[0]["cuda_memory_fragmentation"] < 0.3
    assert metrics[1]["cuda_memory_fragmentation"] > 0.5 and metrics[2]["cuda_memory_fragmentation"] > 0.5
    trainer.faults.held.clear()
