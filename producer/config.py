"""TrainConfig: every knob of a training run, one documented field each (CleanRL style)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bus.endpoint import default_endpoint


@dataclass
class TrainConfig:
    """A training run's settings; ``producer.__main__`` builds one from the command line."""

    # -- run -------------------------------------------------------------------
    updates: int = 600
    """Number of PPO updates (rollout + optimisation) to run."""
    seed: int = 1
    """Seeds torch, the environment's randomness and the policy's sampling."""
    device: str = "auto"
    """Where the policy and the environment live: "cpu", "cuda" or "auto" (cuda when available)."""
    threads: int = 1
    """torch CPU threads; the tensors are small, so one thread is fastest on CPU."""

    # -- environment -----------------------------------------------------------
    n_envs: int = 16
    """Parallel environments, stepped as one batch."""
    n_slots: int = 3
    """Seed slots in the host network; the size of the slot head."""
    max_epochs: int = 25
    """Steps (host training epochs) per episode."""
    param_budget: int = 200_000
    """Seed parameters the host can afford; rent is charged against it, steeply above it."""
    host_params: int = 1_000_000
    """Parameters of the host network (reported; rent is relative to param_budget)."""

    # -- PPO -------------------------------------------------------------------
    rollout_steps: int = 32
    """Env steps per environment per rollout; the LSTM's training sequence length."""
    lr: float = 1e-3
    """Adam learning rate at the start of the run."""
    anneal_lr: bool = True
    """Linearly anneal the learning rate to zero over the run."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    num_minibatches: int = 4
    """Minibatches per epoch; each holds n_envs / num_minibatches whole env sequences."""
    update_epochs: int = 4
    """Passes over the rollout per update."""
    clip_ratio: float = 0.2
    """PPO ratio clipping epsilon (also the value-clipping range)."""
    clip_vloss: bool = True
    """Use the clipped value loss."""
    entropy_coef: float = 0.01
    """Weight of the entropy bonus (summed over all action heads)."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clipping threshold."""
    hidden_size: int = 128
    """Width of the observation encoder and of the LSTM."""

    # -- diagnostics and telemetry --------------------------------------------
    diagnostics_every: int = 10
    """Measure gradient_cv and CUDA memory when train_steps % diagnostics_every == 0."""
    endpoint: str = field(default_factory=default_endpoint)
    """Where the telemetry XPUB socket binds ($TAMIYO_ENDPOINT or tcp://127.0.0.1:5555)."""
    allow_remote: bool = False
    """Allow binding a non-loopback address; needs ``curve_keys`` (prefer an SSH tunnel)."""
    curve_keys: str = ""
    """Key directory from ``python -m bus.keys generate DIR``: encrypt, admit only its clients."""
    telemetry: bool = True
    """Publish telemetry; False opens no socket at all (for overhead benchmarks)."""
    wait_for_subscriber: float = 0.0
    """Before training, wait up to this many seconds for a consumer to subscribe."""
    summary_json: str = ""
    """Write a JSON summary of the run to this path at the end ("" = none)."""
    return_window: int = 20
    """Rollouts (with finished episodes) averaged for the summary's first/last mean return."""

    # -- torch.compile ---------------------------------------------------------
    compile: bool = False
    """Wrap the policy's step and sequence-evaluation functions with torch.compile."""
    compile_backend: str = "inductor"
    """torch.compile backend ("inductor", "eager", "aot_eager", ...)."""
    compile_mode: str = "default"
    """torch.compile mode ("default", "reduce-overhead", "max-autotune")."""

    def validate(self) -> list[str]:
        """Every problem with these settings, as messages for the user; empty when fine."""
        problems = []
        positive = ("updates", "n_envs", "n_slots", "max_epochs", "param_budget", "rollout_steps")
        positive += ("num_minibatches", "update_epochs", "hidden_size", "diagnostics_every", "threads")
        for name in positive:
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.num_minibatches < 2:
            problems.append("num_minibatches must be at least 2: gradient_cv needs two minibatch gradients")
        elif self.n_envs % self.num_minibatches:
            problems.append(
                f"n_envs ({self.n_envs}) must be a multiple of num_minibatches ({self.num_minibatches}): "
                "minibatches split whole env sequences"
            )
        if self.device not in ("cpu", "cuda", "auto"):
            problems.append(f"device must be cpu, cuda or auto (got {self.device!r})")
        if not 0.0 < self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            problems.append("gamma must be in (0, 1] and gae_lambda in [0, 1]")
        if self.lr <= 0 or self.clip_ratio <= 0 or self.max_grad_norm <= 0:
            problems.append("lr, clip_ratio and max_grad_norm must be positive")
        if self.wait_for_subscriber < 0:
            problems.append("wait_for_subscriber must be >= 0")
        return problems

    @property
    def batch_size(self) -> int:
        """Transitions per rollout."""
        return self.n_envs * self.rollout_steps

    @property
    def envs_per_minibatch(self) -> int:
        return self.n_envs // self.num_minibatches
