"""Fault injection (``--fault KIND[:ARG]@UPDATE``): a registry of kinds, each acting at a trainer hook point.

A kind is registered with ``@register(name, point, ...)``; the trainer calls ``Faults.fire(point, ctx, ...)``
at each hook point (``POINTS``), and every fault of that point whose first update has come acts on ``ctx``.
Adding a kind is a registered function, plus a ``fire`` call where its hook point is new.
docs/faults.md says which alert rule each kind trips and how soon.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads after the flags are parsed (fast --help, prompt Ctrl-C)
    import torch
    from torch import nn

SLOW_RANK_DELAY_S = 0.05
"""What ``slow_rank`` adds to each of its minibatches' compute, in seconds."""
HANG_POLL_S = 0.05
"""How often a ``hang`` looks whether the process was asked to stop."""
LR_SPIKE_FACTOR = 100.0
"""What ``lr_spike`` multiplies the scheduled learning rate by."""
EXPLODE_FACTOR = 1e4
"""What ``explode`` multiplies every gradient by, before clipping."""
COLLAPSE_ENTROPY_COEF = -1.0
"""The entropy coefficient under ``entropy_collapse``: the loss rewards low entropy (a sign error)."""
DEAD_GATE_BIAS = -50.0
"""``dead_layers`` sets both LSTM biases of the output gate to this: sigmoid(-100) ~ 4e-44 closes it."""
NOISY_KEEP = 32
"""``noisy_gradients`` keeps one transition in this many: the update learns from a batch this much smaller."""
FRAGMENT_SHARE = 0.25
"""The share of the device's memory that ``fragment`` leaves reserved (at most 90% of what is free)."""
FRAGMENT_SMALL_BYTES = 2 << 20
FRAGMENT_LARGE_BYTES = 8 << 20
"""``fragment`` allocates small, large, small, large ... and frees the large: both sizes lie between
1 MiB and 10 MiB, so PyTorch's caching allocator carves them from shared 20 MiB segments, and a
segment holding a live small block can never be released: 4 MiB used of every 20 MiB reserved."""

POINTS = {
    "advantages": "after GAE, before the value targets (returns = advantages + values) are set from them "
    "(``advantages``: the (T, B) tensor, in place)",
    "update_start": "an update begins, its learning rate scheduled (``model``, ``optimizer``, ``device``)",
    "loss": "a minibatch's loss terms, before they are summed (``loss``, LossTerms)",
    "minibatch_compute": "inside a minibatch, between forward and backward",
    "gradients": "after a minibatch's backward (and DDP's all-reduce), before diagnostics and clipping "
    "(``params``: their ``.grad``)",
}
"""The trainer's hook points, in the order an update meets them, and what the context carries there."""


@dataclass
class LossTerms:
    """A minibatch's PPO loss, term by term; faults at the "loss" point may replace any of them."""

    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor
    entropy_coef: float
    vf_coef: float

    def total(self) -> torch.Tensor:
        return self.policy_loss - self.entropy_coef * self.entropy + self.vf_coef * self.value_loss


@dataclass(frozen=True)
class FaultContext:
    """What a fault sees at a hook point: the update, the rank, and what that point carries (``POINTS``)."""

    update: int
    """The update in progress (1-based; the one ``@UPDATE`` counts). A rollout counts to its update."""
    rank: int
    interrupted: Callable[[], bool]
    """This process was asked to stop (local: never a collective)."""
    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    device: torch.device | None = None
    advantages: torch.Tensor | None = None
    loss: LossTerms | None = None
    params: list[torch.Tensor] | None = None
    held: list[Any] = field(default_factory=list)
    """What a fault keeps alive for the rest of the run (``fragment``'s blocks); one list per run."""


@dataclass(frozen=True)
class Kind:
    """A fault kind: where it acts, what it does, and its argument."""

    point: str
    """The hook point, one of ``POINTS``."""
    action: Callable[[Fault, FaultContext], None]
    arg: str
    """The argument's name ("" = takes none), e.g. "R" in slow_rank:R."""
    arg_required: bool
    help: str
    device: str = ""
    """The device type the kind needs ("" = any), e.g. "cuda"."""


KINDS: dict[str, Kind] = {}


def register(
    name: str, point: str, help: str, *, arg: str = "", arg_required: bool = False, device: str = ""
) -> Callable[[Callable[[Fault, FaultContext], None]], Callable[[Fault, FaultContext], None]]:
    if point not in POINTS:
        raise ValueError(f"fault {name!r}: unknown hook point {point!r} (points: {', '.join(POINTS)})")

    def add(action: Callable[[Fault, FaultContext], None]) -> Callable[[Fault, FaultContext], None]:
        KINDS[name] = Kind(point, action, arg, arg_required, help, device)
        return action

    return add


@dataclass(frozen=True)
class Fault:
    """One ``--fault``: ``kind`` acts from update ``at`` on; ``rank`` narrows it to one rank (None: all)."""

    kind: str
    at: int
    rank: int | None = None

    def __str__(self) -> str:
        arg = "" if self.rank is None else f":{self.rank}"
        return f"{self.kind}{arg}@{self.at}"


_SPEC = re.compile(r"^(?P<kind>[a-z_]+)(?::(?P<arg>[^@]*))?@(?P<at>.*)$")


def parse_fault(text: str) -> Fault:
    """``KIND[:ARG]@UPDATE`` as a Fault; argparse.ArgumentTypeError saying what is wrong."""
    m = _SPEC.match(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not KIND[:ARG]@UPDATE (kinds: {', '.join(KINDS)})")
    name, arg, at = m["kind"], m["arg"], m["at"]
    kind = KINDS.get(name)
    if kind is None:
        raise argparse.ArgumentTypeError(f"unknown fault {name!r} (kinds: {', '.join(KINDS)})")
    if not at.isdigit() or int(at) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: UPDATE must be a whole number >= 1 (got {at!r})")
    if arg is None:
        if kind.arg_required:
            raise argparse.ArgumentTypeError(f"{text!r}: {name} needs {kind.arg}: {name}:{kind.arg}@UPDATE")
        return Fault(name, int(at))
    if not kind.arg:
        raise argparse.ArgumentTypeError(f"{text!r}: {name} takes no argument ({name}@UPDATE)")
    if not arg.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: {kind.arg} must be a rank, a number >= 0 (got {arg!r})")
    return Fault(name, int(at), int(arg))


def check_faults(texts: Iterable[str]) -> list[str]:
    """What is wrong with these ``--fault`` specs; empty when they all parse."""
    problems = []
    for text in texts:
        try:
            parse_fault(text)
        except argparse.ArgumentTypeError as exc:
            problems.append(f"--fault: {exc}")
    return problems


def check_fault_ranks(texts: Iterable[str], world_size: int) -> list[str]:
    """The (parsed) ``--fault`` specs that name a rank outside a world of ``world_size`` ranks."""
    faults = [parse_fault(text) for text in texts]
    return [
        f"--fault {fault}: there is no rank {fault.rank} in a world of {world_size}"
        for fault in faults
        if fault.rank is not None and fault.rank >= world_size
    ]


def check_fault_device(texts: Iterable[str], device_type: str) -> list[str]:
    """The (parsed) ``--fault`` specs whose kind cannot act on a ``device_type`` device."""
    faults = [parse_fault(text) for text in texts]
    return [
        f"--fault {fault}: {fault.kind} needs {need.upper()} (this run is on {device_type})"
        for fault in faults
        if (need := KINDS[fault.kind].device) and need != device_type
    ]


class Faults:
    """The faults of a run, grouped by hook point; ValueError for a kind the device cannot host."""

    def __init__(self, texts: Iterable[str], device_type: str = "cpu") -> None:
        texts = list(texts)
        if problems := check_fault_device(texts, device_type):
            raise ValueError("; ".join(problems))
        self.by_point: dict[str, list[Fault]] = {}
        self.held: list[Any] = []
        for fault in map(parse_fault, texts):
            self.by_point.setdefault(KINDS[fault.kind].point, []).append(fault)

    def fire(self, point: str, ctx: FaultContext, **carried: Any) -> None:
        """Act with every fault of ``point`` that is due; ``carried`` fills ctx's fields for that point."""
        due = [f for f in self.by_point.get(point, ()) if ctx.update >= f.at and f.rank in (None, ctx.rank)]
        if not due:
            return
        ctx = replace(ctx, held=self.held, **carried)
        for fault in due:
            KINDS[fault.kind].action(fault, ctx)


@register(
    "slow_rank",
    "minibatch_compute",
    f"rank R sleeps {SLOW_RANK_DELAY_S * 1000:g} ms in each minibatch's compute, before the all-reduce",
    arg="R",
    arg_required=True,
)
def _slow_rank(fault: Fault, ctx: FaultContext) -> None:
    time.sleep(SLOW_RANK_DELAY_S)


@register(
    "hang",
    "minibatch_compute",
    "the training loop stops inside the update (its first minibatch) until the process is asked to stop, "
    "while heartbeats go on; hang:R@UPDATE stops rank R only",
    arg="R",
)
def _hang(fault: Fault, ctx: FaultContext) -> None:
    if ctx.update != fault.at:
        return
    while not ctx.interrupted():
        time.sleep(HANG_POLL_S)


@register(
    "lr_spike",
    "update_start",
    f"the learning rate is {LR_SPIKE_FACTOR:g} times its schedule from UPDATE on",
    arg="R",
)
def _lr_spike(fault: Fault, ctx: FaultContext) -> None:
    assert ctx.optimizer is not None
    for group in ctx.optimizer.param_groups:  # the trainer sets the scheduled lr at every update's start
        group["lr"] *= LR_SPIKE_FACTOR


@register(
    "nan_loss",
    "loss",
    "the policy loss is NaN in every minibatch from UPDATE on (so are the gradients, then the weights)",
    arg="R",
)
def _nan_loss(fault: Fault, ctx: FaultContext) -> None:
    assert ctx.loss is not None
    ctx.loss.policy_loss = ctx.loss.policy_loss * float("nan")  # NaN gradients too


@register(
    "explode",
    "gradients",
    f"every gradient is multiplied by {EXPLODE_FACTOR:g} after backward, before clipping",
    arg="R",
)
def _explode(fault: Fault, ctx: FaultContext) -> None:
    assert ctx.params is not None
    for p in ctx.params:
        if p.grad is not None:
            p.grad.mul_(EXPLODE_FACTOR)


@register(
    "entropy_collapse",
    "loss",
    f"the entropy coefficient is {COLLAPSE_ENTROPY_COEF:g} from UPDATE on (a sign error): the loss rewards "
    "low entropy and the policy turns deterministic",
    arg="R",
)
def _entropy_collapse(fault: Fault, ctx: FaultContext) -> None:
    assert ctx.loss is not None
    ctx.loss.entropy_coef = COLLAPSE_ENTROPY_COEF


@register(
    "dead_layers",
    "update_start",
    "the LSTM's output gate is shut (its biases at -100) from UPDATE on: the LSTM outputs ~0, so the "
    "encoder, the LSTM and every head's and the critic's weights get no gradient (15 of 24 tensors)",
    arg="R",
)
def _dead_layers(fault: Fault, ctx: FaultContext) -> None:
    import torch

    assert ctx.model is not None
    lstm = ctx.model.get_submodule("lstm")
    hidden = lstm.hidden_size
    with torch.no_grad():  # gates are stacked i, f, g, o: the output gate is the last quarter
        for bias in (lstm.bias_ih_l0, lstm.bias_hh_l0):
            bias[3 * hidden :] = DEAD_GATE_BIAS


@register(
    "noisy_gradients",
    "advantages",
    f"from UPDATE's rollout on, each transition's advantage is kept with probability 1/{NOISY_KEEP} "
    f"(weighted x{NOISY_KEEP}) and zeroed otherwise, and the value targets follow (returns = values + "
    f"advantages): the update learns from a batch {NOISY_KEEP} times smaller, unbiased but noisy",
    arg="R",
)
def _noisy_gradients(fault: Fault, ctx: FaultContext) -> None:
    import torch

    assert ctx.advantages is not None
    kept = torch.rand_like(ctx.advantages) < 1.0 / NOISY_KEEP
    ctx.advantages.mul_(kept * float(NOISY_KEEP))


@register(
    "fragment",
    "update_start",
    f"at UPDATE, {FRAGMENT_SHARE:.0%} of the GPU is reserved in segments the run's live blocks pin "
    "(small and large allocations interleaved, every large one freed) and held to the end: "
    "reserved >> allocated; CUDA only",
    arg="R",
    device="cuda",
)
def _fragment(fault: Fault, ctx: FaultContext) -> None:
    import torch

    assert ctx.device is not None and ctx.device.type == "cuda"
    if ctx.update != fault.at:
        return
    free, total = torch.cuda.mem_get_info(ctx.device)
    budget = min(FRAGMENT_SHARE * total, 0.9 * free)
    pair = FRAGMENT_SMALL_BYTES + FRAGMENT_LARGE_BYTES
    large = []
    for _ in range(int(budget // pair)):
        ctx.held.append(torch.empty(FRAGMENT_SMALL_BYTES, dtype=torch.uint8, device=ctx.device))
        large.append(torch.empty(FRAGMENT_LARGE_BYTES, dtype=torch.uint8, device=ctx.device))
    del large  # the holes stay reserved: each segment also holds a live small block


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """``--fault KIND[:ARG]@UPDATE``, repeatable, into ``faults`` (a list of spec texts)."""
    kinds = "; ".join(f"{name}{':' + k.arg if k.arg else ''}@UPDATE: {k.help}" for name, k in KINDS.items())
    parser.add_argument(
        "--fault",
        dest="faults",
        action="append",
        type=lambda text: str(parse_fault(text)),
        default=[],
        metavar="KIND[:ARG]@UPDATE",
        help=f"Inject a fault from update UPDATE on (repeatable). {kinds}".replace("%", "%%"),
    )
