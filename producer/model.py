"""The recurrent actor-critic: observation encoder, LSTM core, factored categorical heads, value head."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from producer.env import ADVANCE, GERMINATE, OPS, SET_ALPHA, WAIT

LSTMState = tuple[torch.Tensor, torch.Tensor]


def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights, constant bias (as in CleanRL)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def relevance_mask(heads: dict[str, int]) -> torch.Tensor:
    """(n_ops, n_heads) 0/1: which heads an op actually uses.

    The log-probability of a factored action sums only the heads its op uses, so a
    head that did not influence the outcome gets no policy gradient (and no ratio).
    """
    names = list(heads)
    mask = torch.zeros(len(OPS), len(names))
    mask[:, names.index("op")] = 1.0
    for op in range(len(OPS)):
        if op != WAIT:
            mask[op, names.index("slot")] = 1.0
    for name in ("blueprint", "style", "tempo"):
        mask[GERMINATE, names.index(name)] = 1.0
    for name in ("alpha_target", "alpha_speed", "alpha_curve"):
        mask[ADVANCE, names.index(name)] = 1.0
        mask[SET_ALPHA, names.index(name)] = 1.0
    return mask


def segments(episode_starts: list[int], length: int) -> list[tuple[int, int]]:
    """Split [0, length) at the steps where some episode starts: the LSTM state resets only at a cut."""
    cuts = sorted({t for t in episode_starts if 0 < t < length})
    bounds = [0, *cuts, length]
    return list(itertools.pairwise(bounds))


class Policy(nn.Module):
    """LSTM actor-critic over ``heads`` (an ordered name -> size map; ``heads`` is the action layout)."""

    def __init__(self, obs_dim: int, heads: dict[str, int], hidden: int = 128) -> None:
        super().__init__()
        self.heads = dict(heads)
        self.hidden = hidden
        self.max_choices = max(heads.values())
        self.encoder = nn.Sequential(layer_init(nn.Linear(obs_dim, hidden)), nn.Tanh())
        self.lstm = nn.LSTM(hidden, hidden)
        for name, param in self.lstm.named_parameters():
            if "bias" in name:
                nn.init.constant_(param, 0.0)
            else:
                nn.init.orthogonal_(param, 1.0)
        self.actor = nn.ModuleDict(
            {name: layer_init(nn.Linear(hidden, n), std=0.01) for name, n in heads.items()}
        )
        self.critic = layer_init(nn.Linear(hidden, 1), std=1.0)
        sizes = torch.tensor(list(heads.values()))
        self.register_buffer(
            "choice_mask", torch.arange(self.max_choices) < sizes.unsqueeze(-1), persistent=False
        )
        self.register_buffer("relevance", relevance_mask(heads), persistent=False)

    def initial_state(self, batch: int, device: torch.device | str) -> LSTMState:
        zeros = torch.zeros(batch, self.hidden, device=device)
        return zeros, zeros.clone()

    def _log_probs(self, core: torch.Tensor) -> torch.Tensor:
        """(..., n_heads, max_choices) log-probabilities, -inf where a head has fewer choices."""
        padded = [
            nn.functional.pad(head(core), (0, self.max_choices - head.out_features), value=float("-inf"))
            for head in self.actor.values()
        ]
        return torch.log_softmax(torch.stack(padded, dim=-2), dim=-1)

    def _action_logprob(self, logp: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        chosen = logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return (chosen * self.relevance[actions[..., 0]]).sum(-1)

    def step(
        self, obs: torch.Tensor, state: LSTMState, done: torch.Tensor, gumbel: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, LSTMState]:
        """One rollout step for (B, obs_dim): sampled actions (B, n_heads), their log-prob, value, new state.

        ``done`` (B,) marks envs whose episode starts at ``obs`` (their state is zeroed first);
        ``gumbel`` is (B, n_heads, max_choices) Gumbel noise: argmax(logp + gumbel) samples each head.
        """
        keep = (1.0 - done).view(1, -1, 1)
        h, c = state
        core, (h, c) = self.lstm(
            self.encoder(obs).unsqueeze(0), (h.unsqueeze(0) * keep, c.unsqueeze(0) * keep)
        )
        core = core.squeeze(0)
        logp = self._log_probs(core)
        actions = (logp + gumbel).argmax(-1)
        return actions, self._action_logprob(logp, actions), self.critic(core).squeeze(-1), (h[0], c[0])

    def value(self, obs: torch.Tensor, state: LSTMState, done: torch.Tensor) -> torch.Tensor:
        keep = (1.0 - done).view(1, -1, 1)
        h, c = state
        core, _ = self.lstm(self.encoder(obs).unsqueeze(0), (h.unsqueeze(0) * keep, c.unsqueeze(0) * keep))
        return self.critic(core.squeeze(0)).squeeze(-1)

    def unroll(
        self, obs: torch.Tensor, state: LSTMState, done: torch.Tensor, spans: list[tuple[int, int]]
    ) -> torch.Tensor:
        """LSTM outputs (T, B, hidden) for whole sequences, one fused LSTM call per span.

        ``spans`` (from ``segments``) must start a new span at every step where ``done`` is set
        for some env; the state of those envs is zeroed there, as in a step-by-step unroll.
        """
        x = self.encoder(obs)
        h, c = state[0].unsqueeze(0), state[1].unsqueeze(0)
        outputs = []
        for start, end in spans:
            keep = (1.0 - done[start]).view(1, -1, 1)
            out, (h, c) = self.lstm(x[start:end], (h * keep, c * keep))
            outputs.append(out)
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def heads_out(
        self, core: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """From LSTM outputs: log-prob of ``actions``, per-head entropy (..., n_heads), value."""
        logp = self._log_probs(core)
        probs = logp.exp()
        # Zero the padding's -inf before multiplying: 0 * -inf would make NaN gradients.
        head_entropy = -(probs * torch.where(self.choice_mask, logp, 0.0)).sum(-1)
        return self._action_logprob(logp, actions), head_entropy, self.critic(core).squeeze(-1)


class SequenceEval(nn.Module):
    """The update's forward pass over whole sequences (unroll, then the heads): the module DDP wraps.

    ``heads_fn`` is ``policy.heads_out`` or its compiled version.
    """

    def __init__(self, policy: Policy, heads_fn: Callable[..., Any] | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.heads_fn = heads_fn or policy.heads_out

    def forward(
        self,
        obs: torch.Tensor,
        state: LSTMState,
        done: torch.Tensor,
        spans: list[tuple[int, int]],
        actions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.heads_fn(self.policy.unroll(obs, state, done, spans), actions)
