"""The PPO trainer: what an update returns, the throttling rule, sequence minibatches, one sync per phase."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import producer
import producer.trainer
from bus.contract import PPOUpdate
from producer.config import TrainConfig
from producer.diagnostics import CUDA_MEMORY_KEYS
from producer.model import Policy, segments
from producer.publisher import ppo_update
from producer.trainer import Trainer

torch.set_num_threads(1)

SMALL = {
    "n_envs": 4,
    "rollout_steps": 12,
    "max_epochs": 5,
    "num_minibatches": 2,
    "update_epochs": 2,
    "noise_warmup": 1,  # publish gradient_cv from the first measurement (its warm-up has its own test)
}


def small_trainer(**over: Any) -> Trainer:
    return Trainer(TrainConfig(**{"updates": 10, **SMALL, **over}), torch.device("cpu"))


def test_update_returns_every_ppo_update_field_in_range() -> None:
    trainer = small_trainer()
    stats = trainer.rollout()
    assert stats is not None and stats.env_steps == 4 * 12
    metrics = trainer.update()
    event = ppo_update(metrics)  # reads every PPOUpdate field directly: a missing one raises KeyError
    assert set(PPOUpdate.__struct_fields__) <= set(metrics)
    assert event.update == event.train_steps == 1 and event.env_steps == 48
    for name in ("clip_fraction", "clip_fraction_positive", "clip_fraction_negative"):
        assert 0.0 <= getattr(event, name) <= 1.0
    assert event.clip_fraction_positive + event.clip_fraction_negative == pytest.approx(event.clip_fraction)
    assert event.grad_norm > 0 and event.entropy > 0 and event.update_time_ms > 0
    assert event.kl_divergence >= -1e-6
    assert event.gradient_cv > 0 and event.gradient_cv_step == 1 and event.gradient_noise_batch == 4 * 12
    assert event.gradient_cv == pytest.approx(math.sqrt(event.gradient_noise_scale / 48))
    assert event.total_layers == sum(1 for p in trainer.policy.parameters() if p.grad is not None)
    assert event.dead_layers == event.exploding_layers == event.nan_grad_count == 0
    assert list(event.head_entropy) == list(event.head_grad_norm) == list(trainer.heads)
    for name, size in trainer.heads.items():
        assert 0.0 < event.head_entropy[name] <= math.log(size) + 1e-5
        assert event.head_grad_norm[name] > 0.0
    assert event.entropy == pytest.approx(sum(event.head_entropy.values()), rel=1e-5)
    assert event.lr == trainer.cfg.lr
    assert set(CUDA_MEMORY_KEYS) <= set(metrics) and event.cuda_memory_step == 1


def test_throttled_diagnostics_are_carried_between_measurements() -> None:
    trainer = small_trainer(diagnostics_every=2)
    seen = []
    for _ in range(4):
        trainer.rollout()
        m = trainer.update()
        seen.append((m["train_steps"], m["gradient_cv"], m["gradient_cv_step"], m["cuda_memory_step"]))
    (s1, cv1, at1, mem1), (s2, cv2, at2, mem2), (s3, cv3, at3, _), (s4, cv4, at4, _) = seen
    assert (s1, at1, mem1) == (1, 1, 1)  # train_steps 0 % 2 == 0: measured by the first update
    assert (s2, cv2, at2, mem2) == (2, cv1, 1, 1)  # carried, not zeroed
    assert (s3, at3) == (3, 3) and cv3 != cv1
    assert (s4, cv4, at4) == (4, cv3, 3)
    assert all(cv > 0 for _, cv, _, _ in seen)


def _group_gradients(trainer: Trainer) -> np.ndarray:
    """The flat gradients (float64) of the next update's first-epoch minibatches at the current weights.

    The minibatches come from a copy of the trainer's shuffle generator, so the update draws the same.
    """
    spans = segments(trainer.episode_starts, trainer.cfg.rollout_steps)
    peek = torch.Generator()
    peek.set_state(trainer.shuffle_gen.get_state())
    order = torch.randperm(trainer.cfg.n_envs, generator=peek)
    rows = []
    for group in order.split(trainer.cfg.envs_per_minibatch):
        trainer.policy.zero_grad(set_to_none=True)
        trainer._losses(group, spans, trainer.local_evaluate, trainer._fault_context())[0].backward()
        rows.append(np.concatenate([p.grad.double().numpy().ravel() for p in trainer.params]))
    trainer.policy.zero_grad(set_to_none=False)
    return np.stack(rows)


@pytest.mark.parametrize("minibatches", [2, 4])
def test_gradient_cv_is_the_pooled_noise_scale_at_each_updates_starting_weights(minibatches: int) -> None:
    # McCandlish's estimators written out for the first epoch's G minibatches of b transitions each,
    # against the trainer's readings after one and two measuring updates (EMA weight 0.1 of numerator
    # and denominator).
    trainer = small_trainer(diagnostics_every=1, num_minibatches=minibatches)
    batch = 4 * 12
    b = batch // minibatches
    traces, signals = [], []
    for _ in range(2):
        trainer.rollout()
        g = _group_gradients(trainer)  # the weights the update starts from
        trace = b * float(np.sum((g - g.mean(0)) ** 2)) / (minibatches - 1)
        traces.append(trace)
        signals.append(float(np.sum(g.mean(0) ** 2)) - trace / batch)
        metrics = trainer.update()
        weights = [0.9, 1.0][-len(traces) :]
        num = sum(w * t for w, t in zip(weights, traces, strict=True))
        den = sum(w * s for w, s in zip(weights, signals, strict=True))
        pooler = trainer.noise_pooler
        assert pooler.trace_sigma == pytest.approx(num / sum(weights), rel=1e-4)
        assert pooler.signal_sq == pytest.approx(den / sum(weights), rel=1e-4, abs=1e-9)
        assert metrics["gradient_noise_batch"] == batch
        if den <= 0:  # no detectable signal
            assert metrics["gradient_noise_scale"] == metrics["gradient_cv"] == math.inf
            continue
        assert metrics["gradient_noise_scale"] == pytest.approx(num / den, rel=1e-4)
        assert metrics["gradient_cv"] == pytest.approx(math.sqrt(num / den / batch), rel=1e-4)


class _Forward(torch.nn.Module):
    """Another module around the same evaluation: the trainer then takes the DDP path (no reuse)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any) -> Any:
        return self.inner(*args)


def test_reusing_the_first_minibatchs_backward_reads_what_measuring_every_group_reads() -> None:
    readings = []
    for reuse in (True, False):
        trainer = small_trainer(diagnostics_every=1)
        if not reuse:
            trainer.evaluate = _Forward(trainer.local_evaluate)
        for _ in range(2):
            trainer.rollout()
            m = trainer.update()
        weight_sum = float(trainer.params[0].detach().sum())
        readings.append((m["gradient_noise_scale"], m["policy_loss"], weight_sum))
    assert readings[0] == pytest.approx(readings[1], rel=1e-5)


def test_gradient_cv_does_not_depend_on_the_number_of_epochs() -> None:
    # The noise is measured before the first optimizer step, so later epochs cannot enter it. (Its
    # independence from the minibatch split holds in expectation: tests/producer/test_gradient_noise.py.)
    readings = []
    for epochs in (1, 3):
        trainer = small_trainer(update_epochs=epochs)
        trainer.rollout()
        m = trainer.update()
        readings.append((m["gradient_cv"], m["gradient_noise_scale"]))
    assert readings[0] == pytest.approx(readings[1], rel=1e-6)


def test_learning_rate_anneals_linearly() -> None:
    trainer = small_trainer(updates=4, lr=1e-3)
    lrs = []
    for _ in range(3):
        trainer.rollout()
        lrs.append(trainer.update()["lr"])
    assert lrs == pytest.approx([1e-3, 0.75e-3, 0.5e-3])


def test_segments_cut_where_episodes_start() -> None:
    assert segments([], 6) == [(0, 6)]
    assert segments([0, 3, 3, 5], 6) == [(0, 3), (3, 5), (5, 6)]
    assert segments([6, 9], 6) == [(0, 6)]


def test_span_unroll_equals_a_step_by_step_unroll() -> None:
    # Whole-sequence minibatches must see exactly what the rollout saw, resets included.
    torch.manual_seed(0)
    heads = {"op": 6, "slot": 3, "blueprint": 13, "style": 4, "tempo": 3, "alpha_target": 3,
             "alpha_speed": 4, "alpha_curve": 5}  # fmt: skip
    policy = Policy(7, heads, hidden=8)
    T, B = 9, 3
    obs = torch.randn(T, B, 7)
    done = torch.zeros(T, B)
    done[3, 1] = done[6, 0] = done[6, 2] = 1.0
    h0, c0 = torch.randn(B, 8), torch.randn(B, 8)
    starts = [t for t in range(T) if done[t].any()]
    with torch.no_grad():
        fused = policy.unroll(obs, (h0, c0), done, segments(starts, T))
        h, c = h0, c0
        for t in range(T):
            keep = (1 - done[t]).unsqueeze(-1)
            h, c = policy.lstm(
                policy.encoder(obs[t]).unsqueeze(0), ((h * keep).unsqueeze(0), (c * keep).unsqueeze(0))
            )[1]
            h, c = h[0], c[0]
            assert torch.allclose(fused[t], h, atol=1e-6)


def test_update_replays_the_rollout_exactly_before_the_first_step() -> None:
    trainer = small_trainer(max_epochs=5)
    trainer.rollout()
    assert trainer.episode_starts == [5, 10]  # lockstep episodes of 5 steps in a 12-step rollout
    h0, c0 = trainer.initial_lstm_state
    with torch.no_grad():
        core = trainer.policy.unroll(
            trainer.obs, (h0, c0), trainer.dones, segments(trainer.episode_starts, trainer.cfg.rollout_steps)
        )
        logprob, _, value = trainer.policy.heads_out(core, trainer.actions)
    assert torch.allclose(logprob, trainer.logprobs, atol=1e-5)
    assert torch.allclose(value, trainer.values, atol=1e-5)


SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


def _spy_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every host conversion of a tensor made from producer/ code."""
    package = str(Path(producer.__file__).parent)
    calls: list[str] = []

    def spy(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            frame = sys._getframe(1)
            if frame.f_code.co_filename.startswith(package):
                calls.append(f"{name} at {Path(frame.f_code.co_filename).name}:{frame.f_lineno}")
            return original(self, *args, **kwargs)

        return wrapper

    for name in SYNC_METHODS:
        monkeypatch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
    return calls


@pytest.mark.parametrize("diagnostics_every", [1, 2])
def test_one_host_sync_per_rollout_and_per_update(
    monkeypatch: pytest.MonkeyPatch, diagnostics_every: int
) -> None:
    trainer = small_trainer(diagnostics_every=diagnostics_every)
    calls = _spy_syncs(monkeypatch)
    for measuring in (True, False):  # train_steps 0 measures; with every=2 train_steps 1 does not
        trainer.rollout()
        assert len(calls) == 1, calls
        calls.clear()
        metrics = trainer.update()
        assert len(calls) == 1 and calls[0].startswith("tolist"), calls
        calls.clear()
        assert (metrics["gradient_cv_step"] == metrics["train_steps"]) == (
            measuring or diagnostics_every == 1
        )


def test_the_sync_spy_sees_a_scalar_read_from_producer_code(monkeypatch: pytest.MonkeyPatch) -> None:
    # The guard above is only as good as the spy: a stray .item() or float() in producer/ must show.
    calls = _spy_syncs(monkeypatch)
    producer_code = compile(
        "float(torch.ones(()).sum()); torch.ones(()).item()", producer.trainer.__file__, "exec"
    )
    exec(producer_code, {"torch": torch})
    assert [c.split(" at ")[0] for c in calls] == ["__float__", "item"], calls


def test_compiled_policy_runs_and_reports_the_compiling_phase() -> None:
    phases: list[str] = []
    cfg = TrainConfig(updates=2, compile=True, compile_backend="eager", **SMALL)
    trainer = Trainer(cfg, torch.device("cpu"), phase=phases.append)
    for _ in range(2):
        trainer.rollout()
        metrics = trainer.update()
    assert metrics["train_steps"] == 2 and math.isfinite(metrics["policy_loss"])
    assert phases[:3] == ["rollout", "compiling", "rollout"]
    assert phases.count("compiling") == 2  # the step function and the heads, once each
    assert phases[-2:] == ["rollout", "update"]


def test_rollout_and_update_stop_within_their_loops_when_asked() -> None:
    trainer = small_trainer()
    checks = iter([False, False, True])
    assert trainer.rollout(lambda: next(checks)) is None
    assert trainer.env_steps == 0
    assert trainer.rollout() is not None
    checks = iter([False, True])
    assert trainer.update(lambda: next(checks)) is None
    assert trainer.train_steps == 0


def test_gradient_cv_is_published_only_once_noise_warmup_measurements_are_pooled() -> None:
    trainer = small_trainer(diagnostics_every=1, noise_warmup=3)
    steps = []
    for _ in range(4):
        trainer.rollout()
        m = trainer.update()
        steps.append(m["gradient_cv_step"])
    assert steps == [-1, -1, 3, 4]  # "not measured yet" until the third measurement
