"""TamiyoEnv: shapes, determinism, the seed lifecycle, episode bookkeeping and learnability."""

from __future__ import annotations

import pytest
import torch
from testkit.events import trainer_heads

from producer.config import TrainConfig
from producer.env import (
    ADVANCE,
    BLENDING,
    BLUEPRINTS,
    EMPTY,
    FOSSILIZE,
    GERMINATE,
    PRUNE,
    REWARD_SCALE,
    TRAINING,
    WAIT,
    TamiyoEnv,
    action_heads,
    random_actions,
    random_policy_return,
)
from producer.trainer import Trainer

torch.set_num_threads(1)

ATTENTION = next(i for i, b in enumerate(BLUEPRINTS) if b.name == "attention")


def act(n: int, op: int, slot: int = 0, bp: int = 0, style: int = 0, tempo: int = 1, target: int = 2,
        speed: int = 3, curve: int = 0) -> torch.Tensor:  # fmt: skip
    return torch.tensor([[op, slot, bp, style, tempo, target, speed, curve]] * n)


def test_heads_and_shapes() -> None:
    heads = action_heads(3)
    assert heads == trainer_heads(slots=3)
    env = TamiyoEnv(5, n_slots=3, max_epochs=4)
    obs = env.reset()
    assert obs.shape == (5, env.obs_dim)
    result = env.step(random_actions(heads, 5, torch.Generator().manual_seed(0), env.device))
    assert result.obs.shape == (5, env.obs_dim)
    assert result.reward.shape == result.done.shape == result.episode_return.shape == (5,)
    assert result.done.dtype == torch.bool
    assert torch.isfinite(result.obs).all() and torch.isfinite(result.reward).all()


def _trajectory(seed: int) -> list[torch.Tensor]:
    env = TamiyoEnv(4, max_epochs=6, seed=seed)
    gen = torch.Generator().manual_seed(99)
    out = [env.reset()]
    for _ in range(15):
        r = env.step(random_actions(env.heads, 4, gen, env.device))
        out += [r.obs, r.reward]
    return out


def test_deterministic_for_a_seed() -> None:
    a, b, c = _trajectory(1), _trajectory(1), _trajectory(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_seed_lifecycle_germinate_blend_fossilize_prune() -> None:
    env = TamiyoEnv(2, max_epochs=50, seed=0)
    env.reset()
    base = env.acc.clone()
    env.step(act(2, GERMINATE, slot=0, bp=ATTENTION, style=BLUEPRINTS[ATTENTION].style))
    assert env.stage[:, 0].tolist() == [TRAINING, TRAINING]
    assert env.params[:, 0].tolist() == [float(BLUEPRINTS[ATTENTION].params)] * 2
    assert (env.alpha == 0).all() and torch.equal(env.acc, base)  # alpha 0: no effect on accuracy yet
    for _ in range(6):
        env.step(act(2, WAIT))
    assert (env.maturity[:, 0] > 0.5).all()
    env.step(act(2, ADVANCE, slot=0, target=2, speed=3))  # to alpha 1.0 in one step
    assert env.stage[:, 0].tolist() == [BLENDING, BLENDING]
    assert torch.allclose(env.alpha[:, 0], torch.ones(2))
    blended_acc = env.acc.clone()
    expected = base + (0.95 - base) * torch.tanh(env.quality[:, 0] * env.maturity[:, 0])
    assert torch.allclose(blended_acc, expected)
    env.step(act(2, FOSSILIZE, slot=0))
    assert env.stage[:, 0].tolist() == [EMPTY, EMPTY]  # the slot is free again
    assert torch.allclose(env.acc, blended_acc)  # the contribution stays in the host
    assert env.fossil_params.tolist() == [float(BLUEPRINTS[ATTENTION].params)] * 2
    env.step(act(2, GERMINATE, slot=1, bp=0))
    env.step(act(2, PRUNE, slot=1))
    assert env.stage[:, 1].tolist() == [EMPTY, EMPTY] and (env.params[:, 1] == 0).all()


def test_actions_that_do_not_apply_change_nothing() -> None:
    env = TamiyoEnv(3, seed=4)
    env.reset()
    before = (env.slot_long.clone(), env.slot_float.clone(), env.acc.clone())
    for op in (ADVANCE, FOSSILIZE, PRUNE, WAIT):
        r = env.step(act(3, op, slot=1))
        assert torch.equal(r.reward, torch.zeros(3))
    assert torch.equal(env.slot_long, before[0]) and torch.equal(env.slot_float, before[1])
    assert torch.equal(env.acc, before[2])


def test_episodes_end_at_max_epochs_and_return_sums_rewards() -> None:
    env = TamiyoEnv(3, max_epochs=5, seed=2)
    env.reset()
    gen = torch.Generator().manual_seed(1)
    total = torch.zeros(3)
    for step in range(1, 11):
        r = env.step(random_actions(env.heads, 3, gen, env.device))
        total += r.reward
        assert bool(r.done.all()) == (step % 5 == 0)
        if step % 5 == 0:
            assert torch.allclose(r.episode_return, total, atol=1e-5)
            total.zero_()
            assert (env.stage == EMPTY).all() and (env.epoch == 0).all()


def test_good_plan_beats_random_policy() -> None:
    # Germinate the three best-matching blueprints, let them mature, blend, fossilize.
    env = TamiyoEnv(32, seed=3)
    env.reset()
    best = sorted(range(len(BLUEPRINTS)), key=lambda i: -BLUEPRINTS[i].quality)
    picks = [i for i in best if BLUEPRINTS[i].params <= 60_000][:3]
    plan = [act(32, GERMINATE, s, bp, BLUEPRINTS[bp].style) for s, bp in enumerate(picks)]
    plan += [act(32, WAIT)] * 4 + [act(32, ADVANCE, s, speed=1, curve=2) for s in range(3)]
    plan += [act(32, WAIT)] * 5 + [act(32, FOSSILIZE, s) for s in range(3)]
    plan += [act(32, WAIT)] * (env.max_epochs - len(plan))
    for a in plan:
        r = env.step(a)
    assert r.done.all()
    planned = float(r.episode_return.mean())
    random = random_policy_return(n_envs=32, episodes=64, seed=3)
    assert random < 0.0 < 1.0 < planned
    assert planned / REWARD_SCALE < 0.4  # a return is accuracy gain x REWARD_SCALE: bounded by the headroom


def test_random_policy_return_is_deterministic() -> None:
    a = random_policy_return(n_envs=8, episodes=16, seed=5)
    assert a == random_policy_return(n_envs=8, episodes=16, seed=5)
    assert a != random_policy_return(n_envs=8, episodes=16, seed=6)


def test_short_seeded_run_beats_random_policy() -> None:
    # The cheap learnability check (about 10 s on one core); `make bench` runs the long one.
    cfg = TrainConfig(updates=50, n_envs=16, num_minibatches=2, update_epochs=2, anneal_lr=False, seed=1)
    trainer = Trainer(cfg, torch.device("cpu"))
    late: list[float] = []
    for update in range(cfg.updates):
        returns = trainer.rollout().returns
        trainer.update()
        if update >= 38:
            late += returns
    random = random_policy_return(n_envs=16, episodes=64, seed=1)
    # Measured: late mean about 0.67 against -0.17 for the random policy.
    assert sum(late) / len(late) > random + 0.4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_env_runs_on_cuda() -> None:
    env = TamiyoEnv(4, device="cuda", seed=0)
    env.reset()
    gen = torch.Generator(device="cuda").manual_seed(0)
    r = env.step(random_actions(env.heads, 4, gen, env.device))
    assert r.obs.device.type == "cuda"
