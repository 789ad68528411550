"""TamiyoEnv: a batched-torch, partially observable simulation of growing seeds inside a host network.

Each of ``n_envs`` environments is a host network with ``n_slots`` slots. The agent
germinates a seed in an empty slot from one of 13 blueprints (each with a hidden
quality and a known parameter cost), trains it, blends it in (alpha ramps to a
target at a speed along a curve), and either fossilizes it (its contribution is frozen
into the host and the slot is free again) or prunes it (contribution and parameters gone).
An action that does not apply to the chosen slot's stage does nothing.

Reward per step = REWARD_SCALE x (host accuracy gain - parameter rent - blending shock):
- accuracy = base + headroom * tanh(fossilized strength + sum over slots of alpha * quality * maturity);
- rent is charged on seed parameters (live and fossilized) against ``param_budget``, steeply above it;
- blending an immature seed quickly costs a transient "shock" proportional to the alpha change.
The accuracy gains telescope: an episode's return is (final accuracy - base accuracy - all
rent and shock) x REWARD_SCALE.

Partial observability: a seed's true quality (blueprint quality + per-seed noise, scaled by
the style match and tempo) is never shown; each step gives a noisy signal of it and a noisy
host accuracy, so the recurrent policy has to integrate evidence over time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

OPS = ("WAIT", "GERMINATE", "ADVANCE", "FOSSILIZE", "PRUNE", "SET_ALPHA")
WAIT, GERMINATE, ADVANCE, FOSSILIZE, PRUNE, SET_ALPHA = range(len(OPS))

STAGES = ("EMPTY", "TRAINING", "BLENDING")
EMPTY, TRAINING, BLENDING = range(len(STAGES))

STYLES = ("linear", "sigmoid", "gated", "residual")
TEMPOS = ("fast", "standard", "slow")
ALPHA_TARGETS = (0.5, 0.8, 1.0)
ALPHA_SPEEDS = (0.1, 0.2, 0.34, 1.0)
"""Blend progress added per step; 1.0 blends in a single step. Fossilizing freezes alpha where it is."""
ALPHA_CURVES = ("linear", "smoothstep", "ease_in", "ease_out", "late")


@dataclass(frozen=True)
class Blueprint:
    """A kind of seed: its hidden quality, its parameter cost and the blending style it wants."""

    name: str
    quality: float
    params: int
    style: int


BLUEPRINTS: tuple[Blueprint, ...] = (
    Blueprint("norm", 0.10, 1_000, 1),
    Blueprint("attention", 0.45, 120_000, 2),
    Blueprint("depthwise", 0.20, 15_000, 0),
    Blueprint("bottleneck", 0.30, 40_000, 3),
    Blueprint("conv_small", 0.05, 10_000, 0),
    Blueprint("conv_light", 0.25, 25_000, 1),
    Blueprint("conv_heavy", 0.35, 90_000, 0),
    Blueprint("lora", 0.15, 8_000, 2),
    Blueprint("lora_large", -0.20, 60_000, 2),
    Blueprint("mlp_small", 0.08, 12_000, 3),
    Blueprint("mlp", -0.25, 80_000, 1),
    Blueprint("flex_attention", 0.12, 150_000, 2),
    Blueprint("channel_shuffle", -0.35, 5_000, 3),
)

TEMPO_RATE = (0.25, 0.12, 0.07)
"""Maturity gained per step while a seed trains or blends, per tempo."""
TEMPO_QUALITY = (0.75, 0.9, 1.0)
"""Share of its quality a seed reaches, per tempo: slower tempos train better seeds."""
STYLE_MISMATCH = 0.6
"""Quality multiplier when the blending style is not the one the blueprint wants."""
SEED_NOISE = 0.15
"""Std of a seed's own quality around its blueprint's quality."""
SIGNAL_NOISE = 0.25
"""Std of the per-step observed signal of a seed's quality."""
ACC_NOISE = 0.01
"""Std of the observed host accuracy."""
BASE_ACC = (0.55, 0.65)
MAX_ACC = 0.95
RENT_RATE = 0.001
"""Accuracy-equivalent rent per step for a full param_budget of live seed parameters."""
OVER_BUDGET_RATE = 0.02
"""Extra rent per step per param_budget's worth of parameters above the budget."""
SHOCK = 0.03
"""Accuracy-equivalent cost of a full alpha swing of an entirely immature seed."""
REWARD_SCALE = 10.0
"""A return of 1.0 means ten points of host accuracy gained, net of rent and shock."""

HEAD_SIZES_FIXED = {
    "op": len(OPS),
    "blueprint": len(BLUEPRINTS),
    "style": len(STYLES),
    "tempo": len(TEMPOS),
    "alpha_target": len(ALPHA_TARGETS),
    "alpha_speed": len(ALPHA_SPEEDS),
    "alpha_curve": len(ALPHA_CURVES),
}


def action_heads(n_slots: int) -> dict[str, int]:
    """The factored action space, head name -> number of choices, in action-column order."""
    sizes = dict(HEAD_SIZES_FIXED)
    return {"op": sizes.pop("op"), "slot": n_slots, **sizes}


def slot_ids(n_slots: int) -> list[str]:
    return [f"slot_{i}" for i in range(n_slots)]


def _curve(kind: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Blend weight in [0, 1] at progress p in [0, 1] for each curve kind."""
    shapes = torch.stack(
        (p, p * p * (3.0 - 2.0 * p), p * p, 1.0 - (1.0 - p) ** 2, p**4),
        dim=-1,
    )
    return shapes.gather(-1, kind.unsqueeze(-1)).squeeze(-1)


@dataclass
class StepResult:
    """What one batched step returns; ``episode_return`` is meaningful where ``done``."""

    obs: torch.Tensor
    reward: torch.Tensor
    done: torch.Tensor
    episode_return: torch.Tensor


# Columns of the packed per-slot state (one long and one float tensor, so a masked
# update of a whole slot is one torch.where instead of one per attribute).
STAGE, BLUEPRINT, STYLE, TEMPO, CURVE = range(5)
QUALITY, PARAMS, MATURITY, ALPHA, ALPHA_START, ALPHA_TARGET, SPEED, PROGRESS = range(8)


class TamiyoEnv:
    """``n_envs`` independent hosts stepped together; every tensor lives on ``device``."""

    def __init__(
        self,
        n_envs: int,
        *,
        n_slots: int = 3,
        max_epochs: int = 25,
        param_budget: int = 200_000,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        self.n_envs = n_envs
        self.n_slots = n_slots
        self.max_epochs = max_epochs
        self.param_budget = param_budget
        self.device = dev = torch.device(device)
        self.heads = action_heads(n_slots)
        self.gen = torch.Generator(device=dev)
        self.gen.manual_seed(seed)
        self._bp_quality = torch.tensor([b.quality for b in BLUEPRINTS], device=dev)
        self._bp_params = torch.tensor([float(b.params) for b in BLUEPRINTS], device=dev)
        self._bp_style = torch.tensor([b.style for b in BLUEPRINTS], device=dev)
        self._tempo_rate = torch.tensor(TEMPO_RATE, device=dev)
        self._tempo_quality = torch.tensor(TEMPO_QUALITY, device=dev)
        self._alpha_targets = torch.tensor(ALPHA_TARGETS, device=dev)
        self._alpha_speeds = torch.tensor(ALPHA_SPEEDS, device=dev)
        self.slot_long = torch.zeros(n_envs, n_slots, 5, dtype=torch.long, device=dev)
        self.slot_float = torch.zeros(n_envs, n_slots, 8, device=dev)
        self.base_acc = torch.zeros(n_envs, device=dev)
        self.acc = torch.zeros(n_envs, device=dev)
        self.epoch = torch.zeros(n_envs, dtype=torch.long, device=dev)
        self.episode_return = torch.zeros(n_envs, device=dev)
        self.fossil_strength = torch.zeros(n_envs, device=dev)
        self.fossil_params = torch.zeros(n_envs, device=dev)
        sizes = (len(STAGES), len(BLUEPRINTS), len(STYLES), len(TEMPOS))
        self._onehot_offsets = torch.tensor([sum(sizes[:i]) for i in range(4)], device=dev)
        self._onehot_width = sum(sizes)
        self._stage_columns = (torch.arange(self._onehot_width, device=dev) < len(STAGES)).float()
        self.obs_dim = 4 + n_slots * (self._onehot_width + 4)

    # Named views of the packed slot state, for readers and tests.
    @property
    def stage(self) -> torch.Tensor:
        return self.slot_long[..., STAGE]

    @property
    def blueprint(self) -> torch.Tensor:
        return self.slot_long[..., BLUEPRINT]

    @property
    def quality(self) -> torch.Tensor:
        return self.slot_float[..., QUALITY]

    @property
    def params(self) -> torch.Tensor:
        return self.slot_float[..., PARAMS]

    @property
    def maturity(self) -> torch.Tensor:
        return self.slot_float[..., MATURITY]

    @property
    def alpha(self) -> torch.Tensor:
        return self.slot_float[..., ALPHA]

    @property
    def progress(self) -> torch.Tensor:
        return self.slot_float[..., PROGRESS]

    # -- public ------------------------------------------------------------------

    def reset(self) -> torch.Tensor:
        """Start a fresh episode in every environment; returns the first observation."""
        self._reset_where(torch.ones(self.n_envs, dtype=torch.bool, device=self.device))
        return self._observe(torch.zeros(self.n_envs, self.n_slots, device=self.device))

    def step(self, actions: torch.Tensor) -> StepResult:
        """Apply one action per env (a (n_envs, n_heads) long tensor, columns in ``heads`` order)."""
        n, s = self.n_envs, self.n_slots
        op, slot, bp, style, tempo, a_target, a_speed, a_curve = actions.unbind(-1)
        sel = torch.nn.functional.one_hot(slot, s).bool() & (op != WAIT).unsqueeze(-1)
        op = op.unsqueeze(-1)
        stage = self.slot_long[..., STAGE]
        growing = (stage == TRAINING) | (stage == BLENDING)
        germ = sel & (op == GERMINATE) & (stage == EMPTY)
        advance = sel & (op == ADVANCE) & (stage == TRAINING)
        blend = advance | (sel & (op == SET_ALPHA) & (stage == BLENDING))
        fossilize = sel & (op == FOSSILIZE) & (stage == BLENDING)
        prune = sel & (op == PRUNE) & growing

        L, F = self.slot_long, self.slot_float
        # Germinate: a fresh seed whose hidden quality depends on blueprint, style match and tempo.
        bp_s, style_s, tempo_s = (t.unsqueeze(-1).expand(n, s) for t in (bp, style, tempo))
        match = torch.where(style_s == self._bp_style[bp_s], 1.0, STYLE_MISMATCH)
        own = self._bp_quality[bp_s] + SEED_NOISE * self._randn(n, s)
        zeros = torch.zeros(n, s, device=self.device)
        germ_f = torch.stack((own * match * self._tempo_quality[tempo_s], self._bp_params[bp_s]), -1)
        germ_f = torch.cat((germ_f, zeros.unsqueeze(-1).expand(n, s, 6)), -1)
        germ_l = torch.stack(
            (torch.full_like(bp_s, TRAINING), bp_s, style_s, tempo_s, torch.zeros_like(bp_s)), -1
        )
        # Advance / retarget: blend from the current alpha towards a target at a speed along a curve.
        blend_f = torch.stack(
            (
                F[..., QUALITY],
                F[..., PARAMS],
                F[..., MATURITY],
                F[..., ALPHA],
                F[..., ALPHA],
                self._alpha_targets[a_target].unsqueeze(-1).expand(n, s),
                self._alpha_speeds[a_speed].unsqueeze(-1).expand(n, s),
                zeros,
            ),
            -1,
        )
        blend_l = L.clone()
        blend_l[..., STAGE] = BLENDING
        blend_l[..., CURVE] = a_curve.unsqueeze(-1)
        # Fossilize: the seed's current contribution and parameters move into the host for good.
        contribution = F[..., ALPHA] * F[..., QUALITY] * F[..., MATURITY]
        self.fossil_strength = self.fossil_strength + torch.where(fossilize, contribution, 0.0).sum(-1)
        self.fossil_params = self.fossil_params + torch.where(fossilize, F[..., PARAMS], 0.0).sum(-1)
        L = torch.where(germ.unsqueeze(-1), germ_l, L)
        L = torch.where(blend.unsqueeze(-1), blend_l, L)
        F = torch.where(germ.unsqueeze(-1), germ_f, F)
        F = torch.where(blend.unsqueeze(-1), blend_f, F)
        freed = (prune | fossilize).unsqueeze(-1)
        L = torch.where(freed, 0, L)
        F = torch.where(freed, 0.0, F)

        # Dynamics: seeds mature while training or blending; blending moves alpha along its curve.
        stage = L[..., STAGE]
        growing = (stage == TRAINING) | (stage == BLENDING)
        blending = stage == BLENDING
        F[..., MATURITY] += torch.where(growing, self._tempo_rate[L[..., TEMPO]], 0.0)
        F[..., MATURITY].clamp_(max=1.0)
        F[..., PROGRESS] = torch.where(
            blending, (F[..., PROGRESS] + F[..., SPEED]).clamp(max=1.0), F[..., PROGRESS]
        )
        start = F[..., ALPHA_START]
        new_alpha = start + (F[..., ALPHA_TARGET] - start) * _curve(L[..., CURVE], F[..., PROGRESS])
        new_alpha = torch.where(blending, new_alpha, F[..., ALPHA])
        shock = (SHOCK * (new_alpha - F[..., ALPHA]).abs() * (1.0 - F[..., MATURITY])).sum(-1)
        F[..., ALPHA] = new_alpha

        self.slot_long, self.slot_float = L, F
        self.epoch += 1
        done = self.epoch >= self.max_epochs
        acc = self._accuracy()
        used = self._used_budget()
        rent = RENT_RATE * used + OVER_BUDGET_RATE * (used - 1.0).clamp(min=0.0)
        reward = REWARD_SCALE * (acc - self.acc - rent - shock)
        self.acc = acc
        self.episode_return += reward
        episode_return = self.episode_return.clone()
        signal = F[..., QUALITY] + SIGNAL_NOISE * self._randn(n, s)
        signal = torch.where(self.slot_long[..., STAGE] == EMPTY, 0.0, signal)
        self._reset_where(done)
        return StepResult(self._observe(signal), reward, done, episode_return)

    # -- internals ---------------------------------------------------------------

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.gen, device=self.device)

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen, device=self.device)

    def _accuracy(self) -> torch.Tensor:
        F = self.slot_float
        strength = self.fossil_strength + (F[..., ALPHA] * F[..., QUALITY] * F[..., MATURITY]).sum(-1)
        return self.base_acc + (MAX_ACC - self.base_acc) * torch.tanh(strength)

    def _used_budget(self) -> torch.Tensor:
        """Seed parameters (live and fossilized) as a share of param_budget."""
        return (self.fossil_params + self.slot_float[..., PARAMS].sum(-1)) / self.param_budget

    def _reset_where(self, done: torch.Tensor) -> None:
        """Fresh episodes where ``done``: empty slots, a new base accuracy, epoch 0."""
        wipe = done.view(-1, 1, 1)
        self.slot_long = torch.where(wipe, 0, self.slot_long)
        self.slot_float = torch.where(wipe, 0.0, self.slot_float)
        self.fossil_strength = torch.where(done, 0.0, self.fossil_strength)
        self.fossil_params = torch.where(done, 0.0, self.fossil_params)
        low, high = BASE_ACC
        self.base_acc = torch.where(done, low + (high - low) * self._rand(self.n_envs), self.base_acc)
        self.acc = torch.where(done, self.base_acc, self.acc)
        self.epoch = torch.where(done, 0, self.epoch)
        self.episode_return = torch.where(done, 0.0, self.episode_return)

    def _observe(self, signal: torch.Tensor) -> torch.Tensor:
        n = self.n_envs
        L, F = self.slot_long, self.slot_float
        acc_seen = self.acc + ACC_NOISE * self._randn(n)
        fossil = self.fossil_params / self.param_budget
        glob = torch.stack(
            (acc_seen - 0.75, self.epoch / self.max_epochs, self._used_budget(), fossil), dim=-1
        )
        # One multi-hot per slot: stage, and (for occupied slots) blueprint, style and tempo.
        multi_hot = torch.nn.functional.one_hot(L[..., :4] + self._onehot_offsets, self._onehot_width).sum(-2)
        occupied = (L[..., STAGE] != EMPTY).unsqueeze(-1)
        multi_hot = multi_hot * torch.where(occupied, 1.0, self._stage_columns)
        dynamic = torch.stack((F[..., ALPHA], F[..., PROGRESS], F[..., MATURITY], signal), dim=-1)
        per_slot = torch.cat((multi_hot, dynamic), dim=-1)
        return torch.cat((glob, per_slot.reshape(n, -1)), dim=-1)


def random_actions(
    heads: dict[str, int], n_envs: int, gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Uniformly random choices for every head: the baseline policy."""
    cols = [torch.randint(size, (n_envs,), generator=gen, device=device) for size in heads.values()]
    return torch.stack(cols, dim=-1)


def random_policy_return(
    *,
    n_envs: int = 64,
    episodes: int = 256,
    n_slots: int = 3,
    max_epochs: int = 25,
    param_budget: int = 200_000,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> float:
    """Mean episode return of the uniformly random policy on the same environment."""
    env = TamiyoEnv(
        n_envs, n_slots=n_slots, max_epochs=max_epochs, param_budget=param_budget, device=device, seed=seed
    )
    env.reset()
    gen = torch.Generator(device=env.device)
    gen.manual_seed(seed + 1)
    total = torch.zeros((), device=env.device)
    finished = torch.zeros((), device=env.device)
    for _ in range(math.ceil(episodes / n_envs) * max_epochs):
        result = env.step(random_actions(env.heads, n_envs, gen, env.device))
        total += torch.where(result.done, result.episode_return, 0.0).sum()
        finished += result.done.sum()
    return float(total / finished)
