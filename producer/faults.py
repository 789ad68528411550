"""Fault injection (``--fault KIND[:ARG]@UPDATE``): a registry of kinds, each acting at a trainer hook point.

A kind is registered with ``@register(name, point, ...)``; the trainer calls ``Faults.fire(point, ctx)``
at each hook point, and every fault of that point whose first update has come acts on ``ctx``.
Adding a kind is a registered function, plus a ``fire`` call where its hook point is new.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

SLOW_RANK_DELAY_S = 0.05
"""What ``slow_rank`` adds to each of its minibatches' compute, in seconds."""
HANG_POLL_S = 0.05
"""How often a ``hang`` looks whether the process was asked to stop."""


@dataclass(frozen=True)
class FaultContext:
    """What a fault sees at a hook point."""

    update: int
    """The update in progress (1-based; the one ``@UPDATE`` counts)."""
    rank: int
    interrupted: Callable[[], bool]
    """This process was asked to stop (local: never a collective)."""


@dataclass(frozen=True)
class Kind:
    """A fault kind: where it acts, what it does, and its argument."""

    point: str
    """The hook point: "minibatch_compute" (inside a minibatch, between forward and backward)."""
    action: Callable[[Fault, FaultContext], None]
    arg: str
    """The argument's name ("" = takes none), e.g. "R" in slow_rank:R."""
    arg_required: bool
    help: str


KINDS: dict[str, Kind] = {}


def register(
    name: str, point: str, help: str, *, arg: str = "", arg_required: bool = False
) -> Callable[[Callable[[Fault, FaultContext], None]], Callable[[Fault, FaultContext], None]]:
    def add(action: Callable[[Fault, FaultContext], None]) -> Callable[[Fault, FaultContext], None]:
        KINDS[name] = Kind(point, action, arg, arg_required, help)
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


class Faults:
    """The faults of a run, grouped by hook point."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.by_point: dict[str, list[Fault]] = {}
        for fault in map(parse_fault, texts):
            self.by_point.setdefault(KINDS[fault.kind].point, []).append(fault)

    def fire(self, point: str, ctx: FaultContext) -> None:
        for fault in self.by_point.get(point, ()):
            if ctx.update >= fault.at and fault.rank in (None, ctx.rank):
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
        help=f"Inject a fault from update UPDATE on (repeatable). {kinds}",
    )
