"""Recurrent PPO on TamiyoEnv, in the shape of CleanRL's ppo_atari_lstm.py: rollout, GAE, update.

Minibatches split whole env sequences (each replays its stored initial LSTM state), so
the LSTM sees contiguous time. All diagnostics stay tensors during an update and are
brought to the host with a single ``tolist()`` at its end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from producer.config import TrainConfig
from producer.diagnostics import (
    LayerHealth,
    ThrottledValues,
    collect_cuda_memory_metrics,
    compute_directional_clip_fraction,
    compute_head_grad_norms,
    compute_layer_health,
    explained_variance,
    to_host,
)
from producer.distributed import ProcessGroup
from producer.env import TamiyoEnv
from producer.faults import FaultContext, Faults, LossTerms
from producer.gradient_noise import GradientNoise, NoiseScalePooler, measure_gradient_noise
from producer.model import Policy, SequenceEval, segments
from producer.timing import RankTimer

PhaseHook = Callable[[str], None]
ProgressHook = Callable[[], None]
StopCheck = Callable[[], bool]


def resolve_device(name: str) -> torch.device:
    """ "auto" picks cuda when available; asking for cuda without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available")
    return torch.device(name)


@dataclass
class RolloutStats:
    """One rollout's progress numbers (the batch_completed event)."""

    env_steps: int
    fps: float
    step_time_ms: float
    episodes_completed: int
    returns: list[float] = field(default_factory=list)


class Trainer:
    """Owns the env, the policy and the optimiser; ``rollout()`` then ``update()`` is one PPO iteration.

    ``progress`` is called after every env step and every minibatch; ``interrupted`` says this
    process was asked to stop (a ``hang`` fault waits on it). With a ``group`` (torchrun), the
    policy is trained under DDP and this rank's env batch is seeded ``seed + rank``.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        device: torch.device,
        phase: PhaseHook | None = None,
        *,
        progress: ProgressHook | None = None,
        interrupted: StopCheck | None = None,
        group: ProcessGroup | None = None,
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.set_phase: PhaseHook = phase or (lambda _phase: None)
        self.progress: ProgressHook = progress or (lambda: None)
        self.interrupted: StopCheck = interrupted or (lambda: False)
        self.rank = group.world.rank if group else 0
        seed = cfg.seed + self.rank
        torch.manual_seed(seed)  # DDP then gives every rank rank 0's initial weights
        self.env = TamiyoEnv(
            cfg.n_envs,
            n_slots=cfg.n_slots,
            max_epochs=cfg.max_epochs,
            param_budget=cfg.param_budget,
            device=device,
            seed=seed,
        )
        self.heads = self.env.heads
        self.policy = Policy(self.env.obs_dim, self.heads, cfg.hidden_size).to(device)
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr, eps=1e-5, foreach=True)
        # The fused LSTM stays eager (one ATen call per span); the dense parts are compiled.
        self.step_fn = self.policy.step
        self.heads_fn = self.policy.heads_out
        self._compiling = {"step": cfg.compile, "heads": cfg.compile}
        if cfg.compile:
            options = {"backend": cfg.compile_backend, "mode": cfg.compile_mode}
            self.step_fn = torch.compile(self.policy.step, **options)
            self.heads_fn = torch.compile(self.policy.heads_out, **options)
        self.timer = RankTimer(device)
        evaluate = SequenceEval(self.policy, self.heads_fn)
        self.local_evaluate = evaluate
        self.evaluate: nn.Module = group.wrap(evaluate, self.timer) if group else evaluate
        self.faults = Faults(cfg.faults, device.type)
        self.sample_gen = torch.Generator(device=device)
        self.sample_gen.manual_seed(seed + 1)
        self.shuffle_gen = torch.Generator()
        self.shuffle_gen.manual_seed(seed + 2)

        T, B = cfg.rollout_steps, cfg.n_envs
        n_heads = len(self.heads)
        self.obs = torch.zeros(T, B, self.env.obs_dim, device=device)
        self.actions = torch.zeros(T, B, n_heads, dtype=torch.long, device=device)
        self.logprobs = torch.zeros(T, B, device=device)
        self.rewards = torch.zeros(T, B, device=device)
        self.dones = torch.zeros(T, B, device=device)
        self.values = torch.zeros(T, B, device=device)
        self.ended = torch.zeros(T, B, dtype=torch.bool, device=device)
        self.ended_returns = torch.zeros(T, B, device=device)
        self.advantages = torch.zeros(T, B, device=device)
        self.returns = torch.zeros(T, B, device=device)

        self.next_obs = self.env.reset()
        self.next_done = torch.zeros(B, device=device)
        self.lstm_state = self.policy.initial_state(B, device)
        self.initial_lstm_state = self.policy.initial_state(B, device)

        self.episode_starts: list[int] = []
        """Rollout steps at which some env began an episode (where the LSTM state resets)."""
        self.train_steps = 0
        """Completed PPO updates."""
        self.env_steps = 0
        self.episodes_completed = 0
        self.throttled = ThrottledValues(every=cfg.diagnostics_every)
        self.diagnostics_ms = 0.0
        """Wall time spent in the throttled diagnostics (the gradient noise passes, CUDA memory)."""
        self.update_ms = 0.0
        """Wall time spent in update() in total."""
        self.noise_pooler = NoiseScalePooler(min_count=cfg.noise_warmup)

    # -- rollout -----------------------------------------------------------------

    def _first_call(self, name: str, fn: Callable[..., object], phase: str, *args: object) -> object:
        """Call a compiled function, reporting the "compiling" phase while its first call runs."""
        if not self._compiling[name]:
            return fn(*args)
        self.set_phase("compiling")
        try:
            return fn(*args)
        finally:
            self._compiling[name] = False
            self.set_phase(phase)

    def rollout(self, should_stop: StopCheck = lambda: False) -> RolloutStats | None:
        """Collect ``rollout_steps`` steps from every env and compute GAE; None when stopped midway."""
        cfg = self.cfg
        self.set_phase("rollout")
        started = time.perf_counter()
        self.initial_lstm_state = (self.lstm_state[0].clone(), self.lstm_state[1].clone())
        noise_shape = (cfg.n_envs, len(self.heads), self.policy.max_choices)
        for t in range(cfg.rollout_steps):
            if should_stop():
                return None
            self.obs[t] = self.next_obs
            self.dones[t] = self.next_done
            with torch.no_grad():
                gumbel = (
                    -torch.empty(noise_shape, device=self.device)
                    .exponential_(generator=self.sample_gen)
                    .log()
                )
                action, logprob, value, self.lstm_state = self._first_call(
                    "step", self.step_fn, "rollout", self.next_obs, self.lstm_state, self.next_done, gumbel
                )  # type: ignore[misc]
            self.actions[t] = action
            self.logprobs[t] = logprob
            self.values[t] = value
            result = self.env.step(action)
            self.rewards[t] = result.reward
            self.ended[t] = result.done
            self.ended_returns[t] = result.episode_return
            self.next_obs = result.obs
            self.next_done = result.done.float()
            self.progress()
        self._compute_gae()
        T = cfg.rollout_steps
        n = T * cfg.n_envs
        host = torch.cat(  # the rollout's one host sync
            (self.dones.any(1).float(), self.ended.flatten().float(), self.ended_returns.flatten())
        ).tolist()
        self.episode_starts = [t for t in range(T) if host[t]]
        returns = [r for ended, r in zip(host[T : T + n], host[T + n :], strict=True) if ended]
        elapsed = time.perf_counter() - started
        steps = cfg.rollout_steps * cfg.n_envs
        self.env_steps += steps
        self.episodes_completed += len(returns)
        return RolloutStats(
            env_steps=self.env_steps,
            fps=steps / elapsed,
            step_time_ms=elapsed * 1000.0 / cfg.rollout_steps,
            episodes_completed=self.episodes_completed,
            returns=returns,
        )

    @torch.no_grad()
    def _compute_gae(self) -> None:
        cfg = self.cfg
        next_value = self.policy.value(self.next_obs, self.lstm_state, self.next_done)
        last = torch.zeros(cfg.n_envs, device=self.device)
        for t in reversed(range(cfg.rollout_steps)):
            if t == cfg.rollout_steps - 1:
                not_done, next_values = 1.0 - self.next_done, next_value
            else:
                not_done, next_values = 1.0 - self.dones[t + 1], self.values[t + 1]
            delta = self.rewards[t] + cfg.gamma * next_values * not_done - self.values[t]
            last = delta + cfg.gamma * cfg.gae_lambda * not_done * last
            self.advantages[t] = last
        self.faults.fire("advantages", self._fault_context(), advantages=self.advantages)
        self.returns = self.advantages + self.values

    # -- update ------------------------------------------------------------------

    def update(self, should_stop: StopCheck = lambda: False) -> dict[str, Any] | None:
        """One PPO update on the last rollout; every PPOUpdate field, or None when stopped midway."""
        cfg = self.cfg
        self.set_phase("update")
        started = time.perf_counter()
        # Set at every update (annealed or not), so a fault may scale it for this update only.
        anneal = 1.0 - self.train_steps / cfg.updates if cfg.anneal_lr else 1.0
        self.optimizer.param_groups[0]["lr"] = cfg.lr * anneal
        measure = self.throttled.due(self.train_steps)
        self.timer.reset()
        fault_ctx = self._fault_context()
        self.faults.fire(
            "update_start", fault_ctx, model=self.policy, optimizer=self.optimizer, device=self.device
        )
        spans = segments(self.episode_starts, cfg.rollout_steps)
        orders = [
            torch.randperm(cfg.n_envs, generator=self.shuffle_gen).to(self.device)
            for _ in range(cfg.update_epochs)
        ]
        # The gradient noise is measured on the first epoch's minibatches at the starting weights. Without
        # DDP the first one's gradient is the trainer's own first backward: the other groups are measured
        # just before its optimizer step (one pass saved). Under DDP that .grad is all-reduced over ranks,
        # so every group is measured here, on the rank's own data.
        groups = list(orders[0].split(cfg.envs_per_minibatch))
        reuse = measure and self.evaluate is self.local_evaluate
        noise = self._measure_noise(groups, spans, fault_ctx) if measure and not reuse else None
        n_minibatches = cfg.update_epochs * cfg.num_minibatches

        def measure_before_first_step() -> None:
            nonlocal noise
            noise = self._measure_noise(groups, spans, fault_ctx, first_grads=[p.grad for p in self.params])

        totals: dict[str, Any] = {}
        health = None
        k = 0
        for order in orders:
            for mb in order.split(cfg.envs_per_minibatch):
                if should_stop():
                    return None
                before_step = measure_before_first_step if reuse and k == 0 else None
                stats, health = self._minibatch_step(
                    mb, spans, fault_ctx, last=k == n_minibatches - 1, before_step=before_step
                )
                totals = {name: totals.get(name, 0) + value for name, value in stats.items()}
                k += 1
        assert health is not None
        return self._summary(totals, n_minibatches, health, noise, started)

    def _losses(
        self, mb: torch.Tensor, spans: list[tuple[int, int]], evaluate: nn.Module, fault_ctx: FaultContext
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The PPO loss on the whole env sequences ``mb`` at the current weights, and its parts.

        ``evaluate`` is ``self.evaluate`` (under DDP: wrapped, its backward all-reduces) for a gradient
        step, and the rank's own ``self.local_evaluate`` for measurements that must not all-reduce.
        """
        cfg = self.cfg
        h0, c0 = self.initial_lstm_state
        newlogprob, head_entropy, newvalue = self._first_call(
            "heads",
            evaluate,
            "update",
            self.obs[:, mb],
            (h0[mb], c0[mb]),
            self.dones[:, mb],
            spans,
            self.actions[:, mb],
        )  # type: ignore[misc]
        logratio = newlogprob - self.logprobs[:, mb]
        ratio = logratio.exp()
        adv = self.advantages[:, mb]
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_ratio, 1 + cfg.clip_ratio)).mean()
        terms = LossTerms(
            pg_loss,
            self._value_loss(newvalue, mb),
            head_entropy.sum(-1).mean(),
            cfg.entropy_coef,
            cfg.vf_coef,
        )
        self.faults.fire("loss", fault_ctx, loss=terms)
        parts = {"terms": terms, "head_entropy": head_entropy, "ratio": ratio, "logratio": logratio}
        return terms.total(), parts

    def _measure_noise(
        self,
        groups: list[torch.Tensor],
        spans: list[tuple[int, int]],
        fault_ctx: FaultContext,
        first_grads: list[torch.Tensor | None] | None = None,
    ) -> tuple[GradientNoise, Callable[[], float]]:
        """The gradient noise at the current weights from ``groups`` (``first_grads``: the first's gradient).

        Returns the tensors (synced with the update's other values) and how to read its seconds after
        the sync: CUDA events time it without a sync of their own; on CPU the work is synchronous.
        """
        size = len(groups[0]) * self.cfg.rollout_steps

        def measure() -> GradientNoise:
            loss_of = lambda mb: self._losses(mb, spans, self.local_evaluate, fault_ctx)[0]  # noqa: E731
            return measure_gradient_noise(loss_of, self.params, groups, size, first_grads=first_grads)

        if self.device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            noise = measure()
            end.record()
            return noise, lambda: begin.elapsed_time(end) / 1000.0
        t0 = time.perf_counter()
        noise = measure()
        seconds = time.perf_counter() - t0
        return noise, lambda: seconds

    def _minibatch_step(
        self,
        mb: torch.Tensor,
        spans: list[tuple[int, int]],
        fault_ctx: FaultContext,
        *,
        last: bool,
        before_step: Callable[[], None] | None = None,
    ) -> tuple[dict[str, torch.Tensor], LayerHealth | None]:
        """One gradient step on the whole env sequences ``mb``; its diagnostics as detached tensors.

        ``last`` classifies the layers too, on the raw gradient (under DDP: all-reduced) before clipping.
        ``before_step`` runs once the backward has left the raw gradient in ``.grad``, before any fault,
        clipping or optimizer step touches it or the weights. The timer marks the forward's start and
        backward's return (see producer.timing).
        """
        cfg = self.cfg
        self.timer.start()
        loss, parts = self._losses(mb, spans, self.evaluate, fault_ctx)
        self.faults.fire("minibatch_compute", fault_ctx)
        ratio = parts["ratio"]
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        self.timer.done()
        if before_step is not None:
            before_step()
        self.faults.fire("gradients", fault_ctx, params=self.params)
        with torch.no_grad():
            stats = {
                "nan_grad_count": sum((~torch.isfinite(p.grad)).sum() for p in self.params),
                "head_grad_norm": compute_head_grad_norms(self.policy.actor),
            }
            health = compute_layer_health(self.params) if last else None
        grad_norm = nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        with torch.no_grad():
            positive, negative = compute_directional_clip_fraction(ratio, cfg.clip_ratio)
            stats |= {
                "policy_loss": parts["terms"].policy_loss.detach(),
                "value_loss": parts["terms"].value_loss.detach(),
                "entropy": parts["terms"].entropy.detach(),
                "kl_divergence": ((ratio - 1) - parts["logratio"]).mean(),
                "clip_fraction": ((ratio - 1.0).abs() > cfg.clip_ratio).float().mean(),
                "clip_fraction_positive": positive,
                "clip_fraction_negative": negative,
                "grad_norm": grad_norm,
                "head_entropy": parts["head_entropy"].mean((0, 1)).detach(),
            }
        self.progress()
        return stats, health

    def _summary(
        self,
        totals: dict[str, Any],
        n_minibatches: int,
        health: LayerHealth,
        noise: tuple[GradientNoise, Callable[[], float]] | None,
        started: float,
    ) -> dict[str, Any]:
        """The update's PPOUpdate fields: minibatch means (counts summed) and end-of-update diagnostics."""
        with torch.no_grad():
            values = {name: t / n_minibatches for name, t in totals.items() if name != "nan_grad_count"}
            values |= {
                "nan_grad_count": totals["nan_grad_count"],
                "explained_variance": explained_variance(self.values.flatten(), self.returns.flatten()),
                "dead_layers": health.dead,
                "exploding_layers": health.exploding,
            }
            if noise is not None:
                values |= {"noise_trace_sigma": noise[0].trace_sigma, "noise_signal_sq": noise[0].signal_sq}
        host = to_host(values)  # the update's one host sync
        compute_ms, wait_ms = self.timer.totals_ms()
        self.train_steps += 1
        diag_s = 0.0
        if noise is not None:
            t0 = time.perf_counter()
            self.noise_pooler.add(host.pop("noise_trace_sigma"), host.pop("noise_signal_sq"))
            reading = self.noise_pooler.reading(self.cfg.n_envs * self.cfg.rollout_steps)
            if reading is not None:  # None while every measurement so far was non-finite
                self.throttled.record_gradient_noise(reading, self.train_steps)
            self.throttled.record_cuda_memory(collect_cuda_memory_metrics(self.device), self.train_steps)
            diag_s = time.perf_counter() - t0 + noise[1]()
        self.diagnostics_ms += diag_s * 1000.0
        update_ms = (time.perf_counter() - started) * 1000.0
        self.update_ms += update_ms
        return {
            **host,
            **self.throttled.fields(),
            "update": self.train_steps,
            "train_steps": self.train_steps,
            "env_steps": self.env_steps,
            "dead_layers": int(host["dead_layers"]),
            "exploding_layers": int(host["exploding_layers"]),
            "total_layers": health.total,
            "nan_grad_count": int(host["nan_grad_count"]),
            "head_entropy": dict(zip(self.heads, host["head_entropy"], strict=True)),
            "head_grad_norm": dict(zip(self.heads, host["head_grad_norm"], strict=True)),
            "lr": self.optimizer.param_groups[0]["lr"],
            "update_time_ms": update_ms,
            "compute_time_ms": compute_ms,
            "collective_wait_ms": wait_ms,
        }

    def _fault_context(self) -> FaultContext:
        """The faults' view of the update in progress (a rollout counts to the update it feeds)."""
        return FaultContext(update=self.train_steps + 1, rank=self.rank, interrupted=self.interrupted)

    def _value_loss(self, newvalue: torch.Tensor, mb: torch.Tensor) -> torch.Tensor:
        returns = self.returns[:, mb]
        unclipped = (newvalue - returns) ** 2
        if not self.cfg.clip_vloss:
            return 0.5 * unclipped.mean()
        old = self.values[:, mb]
        clipped = old + (newvalue - old).clamp(-self.cfg.clip_ratio, self.cfg.clip_ratio)
        return 0.5 * torch.max(unclipped, (clipped - returns) ** 2).mean()
