"""TrainConfig: every knob of a training run, one documented field each, and the flags built from it."""

from __future__ import annotations

import argparse
import ast
import inspect
import math
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any, get_type_hints

from bus.endpoint import default_endpoint
from producer.faults import check_faults


def knob(
    default: Any = None,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    flag: bool = True,
    default_factory: Any = None,
) -> Any:
    """A TrainConfig field with its bounds (checked on the command line and by ``validate``).

    ``flag=False`` keeps the field off the command line (set in code, or by a flag built elsewhere).
    """
    meta = {"ge": ge, "gt": gt, "le": le, "choices": choices, "metavar": metavar, "flag": flag}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """A training run's settings; ``producer.__main__`` builds one from the command line."""

    # -- run -------------------------------------------------------------------
    updates: int = knob(600, ge=1)
    """Number of PPO updates (rollout + optimisation) to run."""
    seed: int = knob(1, ge=0, le=2**32 - 1)
    """Seeds torch, the environment's randomness and the policy's sampling."""
    device: str = knob("auto", choices=("cpu", "cuda", "auto"))
    """Where the policy and the environment live ("auto": cuda when available)."""
    threads: int = knob(1, ge=1)
    """torch CPU threads; the tensors are small, so one thread is fastest on CPU."""

    # -- environment -----------------------------------------------------------
    n_envs: int = knob(128, ge=1)
    """Parallel environments, stepped as one batch (128 x 32: gradient_cv below 2.0 while learning)."""
    n_slots: int = knob(3, ge=1)
    """Seed slots in the host network; the size of the slot head."""
    max_epochs: int = knob(25, ge=1)
    """Steps (host training epochs) per episode."""
    param_budget: int = knob(200_000, ge=1)
    """Seed parameters the host can afford; rent is charged against it, steeply above it."""
    host_params: int = knob(1_000_000, ge=0, flag=False)
    """Parameters of the host network (reported; rent is relative to param_budget)."""

    # -- PPO -------------------------------------------------------------------
    rollout_steps: int = knob(32, ge=1)
    """Env steps per environment per rollout; the LSTM's training sequence length."""
    lr: float = knob(1e-3, gt=0.0)
    """Adam learning rate at the start of the run."""
    anneal_lr: bool = knob(True, flag=False)
    """Linearly anneal the learning rate to zero over the run."""
    gamma: float = knob(0.99, gt=0.0, le=1.0, flag=False)
    """Discount factor."""
    gae_lambda: float = knob(0.95, ge=0.0, le=1.0, flag=False)
    """GAE lambda."""
    num_minibatches: int = knob(4, ge=2)
    """Minibatches per epoch, each of n_envs / num_minibatches whole env sequences (gradient_cv needs 2)."""
    update_epochs: int = knob(4, ge=1)
    """Passes over the rollout per update."""
    clip_ratio: float = knob(0.2, gt=0.0, flag=False)
    """PPO ratio clipping epsilon (also the value-clipping range)."""
    clip_vloss: bool = knob(True, flag=False)
    """Use the clipped value loss."""
    entropy_coef: float = knob(0.01, ge=0.0, flag=False)
    """Weight of the entropy bonus (summed over all action heads)."""
    vf_coef: float = knob(0.5, ge=0.0, flag=False)
    """Weight of the value loss."""
    max_grad_norm: float = knob(0.5, gt=0.0, flag=False)
    """Global gradient-norm clipping threshold."""
    hidden_size: int = knob(128, ge=1, flag=False)
    """Width of the observation encoder and of the LSTM."""

    # -- diagnostics and telemetry --------------------------------------------
    diagnostics_every: int = knob(10, ge=1)
    """Measure gradient_cv and CUDA memory when train_steps % diagnostics_every == 0."""
    noise_warmup: int = knob(3, ge=1)
    """Gradient-noise measurements pooled before gradient_cv is published (fewer are too noisy to judge)."""
    endpoint: str = knob(default_factory=default_endpoint)
    """Bind the telemetry XPUB socket here ($TAMIYO_ENDPOINT, else tcp://127.0.0.1:5555)."""
    connect: str = knob("", metavar="ENDPOINT")
    """Connect to a forwarder's frontend at ENDPOINT (any host) instead of binding --endpoint; under
    torchrun with several ranks every rank connects, to tcp://127.0.0.1:5556 (make bus) unless given."""
    allow_remote: bool = knob(False, flag=False)  # --allow-remote: bus.security.add_security_arguments
    """Allow binding a non-loopback address; needs ``curve_keys`` (prefer an SSH tunnel)."""
    curve_keys: str = knob("", flag=False)  # --curve-keys: bus.security.add_security_arguments
    """Key directory from ``python -m bus.keys generate DIR``: encrypt, admit only its clients."""
    telemetry: bool = knob(True)
    """Publish telemetry (--no-telemetry opens no socket at all, for overhead benchmarks)."""
    wait_for_subscriber: float = knob(0.0, ge=0.0, metavar="SECONDS")
    """Before training, wait up to SECONDS for a consumer to subscribe."""
    summary_json: str = knob("", metavar="PATH")
    """Write a JSON summary of the run to PATH at the end ("" = none; under torchrun, rank 0's)."""
    return_window: int = knob(20, ge=1, flag=False)
    """Rollouts (with finished episodes) averaged for the summary's first/last mean return."""
    faults: tuple[str, ...] = knob((), flag=False)  # --fault: producer.faults.add_fault_arguments
    """Injected faults, as ``KIND[:ARG]@UPDATE`` texts (see producer.faults)."""

    # -- torch.compile ---------------------------------------------------------
    compile: bool = knob(False)
    """Wrap the policy's step and sequence-evaluation functions with torch.compile."""
    compile_backend: str = knob("inductor")
    """torch.compile backend ("inductor", "eager", "aot_eager", ...)."""
    compile_mode: str = knob("default")
    """torch.compile mode ("default", "reduce-overhead", "max-autotune")."""

    def validate(self) -> list[str]:
        """Every problem with these settings, as messages for the user; empty when fine."""
        problems = [p for f in fields(self) if (p := check_value(f.name, getattr(self, f.name)))]
        problems += check_faults(self.faults)
        if self.num_minibatches >= 1 and self.n_envs % self.num_minibatches:
            problems.append(
                f"n_envs ({self.n_envs}) must be a multiple of num_minibatches ({self.num_minibatches}): "
                "minibatches split whole env sequences"
            )
        return problems

    @property
    def envs_per_minibatch(self) -> int:
        return self.n_envs // self.num_minibatches


@cache
def field_docs() -> dict[str, str]:
    """Each TrainConfig field's docstring (the string literal right under it), read from the source."""
    body = ast.parse(inspect.getsource(TrainConfig)).body[0]
    assert isinstance(body, ast.ClassDef)
    docs = {}
    for node, after in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def check_value(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` for the field ``name`` against its bounds, or None."""
    meta = _fields()[name].metadata
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number (got {value})"
    if meta["choices"] is not None and value not in meta["choices"]:
        return f"{name} must be one of {', '.join(meta['choices'])} (got {value!r})"
    if meta["ge"] is not None and value < meta["ge"]:
        return f"{name} must be at least {meta['ge']} (got {value})"
    if meta["gt"] is not None and value <= meta["gt"]:
        return f"{name} must be greater than {meta['gt']} (got {value})"
    if meta["le"] is not None and value > meta["le"]:
        return f"{name} must be at most {meta['le']} (got {value})"
    return None


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field marked ``flag``: --field-name, its type, bounds and docstring."""
    defaults = TrainConfig()
    docs = field_docs()
    types = get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        meta = f.metadata
        if not meta["flag"]:
            continue
        default = getattr(defaults, f.name)
        text = docs[f.name].replace("%", "%%")  # argparse %-formats help text
        name = "--" + f.name.replace("_", "-")
        if types[f.name] is bool:
            # SUPPRESS: absent unless given (the dataclass default applies), and no "(default: ...)".
            action = "store_false" if default else "store_true"
            name = f"--no-{name[2:]}" if default else name
            parser.add_argument(name, dest=f.name, action=action, default=argparse.SUPPRESS, help=text)
            continue
        bounds = _bounds_text(meta)
        parser.add_argument(
            name,
            dest=f.name,
            type=_parser(f.name, types[f.name]),
            default=default,
            choices=meta["choices"],
            metavar=meta["metavar"],
            help=f"{text} ({bounds})" if bounds else text,
        )


def _parser(name: str, kind: type) -> Any:
    """An argparse ``type``: converts the text and range-checks it, so a bad value exits 2 with a message."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if kind is not str and (problem := check_value(name, value)):
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


def _bounds_text(meta: Any) -> str:
    ops = (("ge", ">="), ("gt", ">"), ("le", "<="))
    return ", ".join(f"{op} {meta[key]}" for key, op in ops if meta[key] is not None)


@cache
def _fields() -> dict[str, Any]:
    return {f.name: f for f in fields(TrainConfig)}
