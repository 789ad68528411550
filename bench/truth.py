"""The alert truth table: each default rule against healthy seeds and injected faults (real producer runs).

Each scenario runs ``python -m producer --seed S [--fault KIND@U]`` at the defaults as a child
process, records what a subscriber receives (with its receive time), then replays that recording
through the aggregator fold and the alert engine with the default rules, as the alert daemon
would, evaluating on every item and on a tick every ``TICK_S`` between them. A healthy seed runs
the whole default run (``make train``: 600 updates, the learning rate annealed over them); a fault
is injected into a default run at ``FAULT_AT`` and watched until ``WATCH_UNTIL``, when the run is
stopped with SIGTERM as a user would stop it. A cell says ``quiet`` or ``fired at update N`` (the
ppo_update the consumer had folded when the rule first fired).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.ports import free_endpoint
from bench.report import Figure, at_least, at_most
from bus.aggregator import fold
from bus.contract import Envelope, PPOUpdate, TrainingFinished
from bus.feed import Item
from bus.state import Snapshot
from consumers.alerts.backtest import replay
from consumers.alerts.engine import FIRING, Notification
from consumers.alerts.rules import Rule, default_rules
from consumers.tui.health import assess
from consumers.tui.thresholds import Level, gradient_cv_verdict

ROOT = Path(__file__).resolve().parents[1]
TICK_S = 0.5
"""Between two received items the engine is also evaluated every this many seconds (the daemon ticks)."""
HEALTHY_SEEDS = (1, 2, 3)
FAULT_AT = 25
"""After the TUI's warm-up and the first few throttled measurements (diagnostics_every = 10), while
the return still climbs."""
WATCH_UNTIL = 90
"""A fault run is stopped (SIGTERM) once the subscriber has this update: 65 updates to be seen (the
pooled gradient_cv lags a sudden loss of signal by several measurements: docs/faults.md)."""
DEFAULT_UPDATES = 600
"""``make train``'s run length (``TrainConfig.updates``; a test keeps the two equal)."""
QUICK_UPDATES = 40
"""``--quick``: every run this short (``--updates``), faults at update 15: checks the harness only."""
FAULT_SEED = 1
RUN_TIMEOUT_S = 900.0
HANG_HOLD_S = 50.0
"""A run that stops making updates (the ``hang`` fault holds until interrupted) is sent SIGTERM after
this long without a ppo_update: past the STUCK bound's 30 s floor, so ``trainer_stuck`` can fire, and
the run still ends with its ``training_finished`` (interrupted)."""

EXPECTED: dict[str, str] = {
    "lr_spike": "kl_divergence_high",
    "nan_loss": "nonfinite_losses",
    "explode": "exploding_layers",
    "entropy_collapse": "entropy_collapse",
    "dead_layers": "dead_layers",
    "noisy_gradients": "gradient_cv",
    "hang": "trainer_stuck",
    "fragment": "cuda_memory_fragmentation",
}
"""Each fault and the default rule that must fire on it."""
CUDA_ONLY = frozenset({"fragment"})
TINY_BATCH = "tiny batch"
TINY_BATCH_FLAGS = ("--n-envs", "2", "--rollout-steps", "8", "--num-minibatches", "2")
"""The issue's too-small batch: 2 envs x 8 steps (B = 16), a whole default-length run."""


@dataclass(frozen=True)
class Scenario:
    """One producer run: a seed and the faults injected into it (none: a healthy run)."""

    name: str
    seed: int
    faults: tuple[str, ...] = ()
    """``KIND@UPDATE`` arguments of ``--fault``."""
    expect: str = ""
    """The default rule this scenario must fire; "" for a healthy run (nothing may fire)."""
    stop_at: int | None = None
    """Stop the run (SIGTERM) once the subscriber has this update; None: let it finish."""
    updates: int | None = None
    """``--updates``; None: the default run's length."""
    flags: tuple[str, ...] = ()
    """More producer flags (a non-default configuration)."""

    def argv(self, endpoint: str) -> list[str]:
        args = [sys.executable, "-m", "producer", "--endpoint", endpoint, "--wait-for-subscriber", "60"]
        if self.updates is not None:
            args += ["--updates", str(self.updates)]
        args += ["--seed", str(self.seed), *self.flags]
        for fault in self.faults:
            args += ["--fault", fault]
        return args


def scenarios(
    seeds: Sequence[int] = HEALTHY_SEEDS, cuda: bool = False, quick: bool = False
) -> list[Scenario]:
    """The healthy seeds, then one run per fault (``fragment`` only where ``cuda``)."""
    updates = QUICK_UPDATES if quick else None
    fault_at, stop_at = (15, None) if quick else (FAULT_AT, WATCH_UNTIL)
    out = [Scenario(f"healthy seed {s}", s, updates=updates) for s in seeds]
    for kind, rule in EXPECTED.items():
        if kind in CUDA_ONLY and not cuda:
            continue
        out.append(Scenario(kind, FAULT_SEED, (f"{kind}@{fault_at}",), rule, stop_at, updates))
    # Not a fault: a batch far too small for this task (B = 16 against a noise scale in the hundreds),
    # healthy otherwise; its gradient is mostly noise from the start, and gradient_cv must say so.
    out.append(Scenario(TINY_BATCH, FAULT_SEED, (), "gradient_cv", updates=updates, flags=TINY_BATCH_FLAGS))
    return out


Timeline = list[tuple[float, Item]]
"""What a subscriber received, each item with its receive time (``time.monotonic()``)."""


@dataclass
class Outcome:
    """One scenario's result: the update at which each rule first fired (None: quiet)."""

    scenario: Scenario
    fired: dict[str, int | None]
    error: str = ""
    """Why the run produced no usable recording (the producer failed); the row is then not judged."""
    dashboard: list[tuple[int, str]] = field(default_factory=list)
    """``dashboard_warnings`` of the recording: what the dashboard would have warned about."""


def dashboard_warnings(timeline: Iterable[tuple[float, Item]]) -> list[tuple[int, str]]:
    """(update, what) for each ppo_update after which the dashboard warned: its banner status
    (``consumers.tui.health.assess``, warm-up included) at WARN, FAIL or REGRESSING, or its
    gradient CV footer word (``gradient_cv_verdict``) at noisy or BAD."""
    state = Snapshot()
    out: list[tuple[int, str]] = []
    for received_at, item in timeline:
        state = fold(state, item, received_at)
        if not (isinstance(item, Envelope) and isinstance(item.event, PPOUpdate)):
            continue
        status = assess(state)
        if status.level >= Level.WARN:
            out.append((item.event.update, status.label))
        gq = state.tamiyo.gradient_quality
        if gq.gradient_cv_step >= 0:
            word, level = gradient_cv_verdict(gq.gradient_cv, state.rollout.return_windows)
            if level >= Level.WARN:
                out.append((item.event.update, f"CV {word}"))
    return out


def spans(warnings: Sequence[tuple[int, str]]) -> str:
    """``WARN:KL at 31-33, CV noisy at 41`` (consecutive updates of one label joined), or ``none``."""
    by_label: dict[str, list[int]] = {}
    for update, label in warnings:
        by_label.setdefault(label, []).append(update)
    parts = []
    for label, updates in by_label.items():
        runs: list[list[int]] = []
        for u in updates:
            if runs and u - runs[-1][-1] <= 1:
                runs[-1].append(u)
            else:
                runs.append([u])
        where = ", ".join(f"{r[0]}" if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)
        parts.append(f"{label} at {where}")
    return "; ".join(parts) or "none"


def first_firings(
    timeline: Iterable[tuple[float, Item]], rules: list[Rule], tick_s: float = TICK_S
) -> dict[str, int | None]:
    """Replay ``timeline`` into the alert daemon's own fold and engine (``consumers.alerts.backtest``):
    each rule's first firing update, or None."""
    fired: dict[str, int | None] = {rule.name: None for rule in rules}

    def note(n: Notification) -> None:
        if n.status == FIRING and fired[n.rule] is None:
            fired[n.rule] = n.update

    replay(timeline, rules, [note], tick_s=tick_s)
    return fired


def record(scenario: Scenario, timeout_s: float = RUN_TIMEOUT_S) -> tuple[Timeline, str]:
    """Run the producer for ``scenario`` and record what a subscriber receives; (timeline, error or "")."""
    import zmq

    from bus.subscribe import Subscriber, SubscriberConfig

    endpoint = free_endpoint()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        scenario.argv(endpoint),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    timeline: Timeline = []
    ctx = zmq.Context()
    deadline = time.monotonic() + timeout_s
    finished_at: float | None = None
    last_update_at = time.monotonic()
    try:
        with Subscriber(SubscriberConfig(endpoint=endpoint), ctx=ctx) as sub:
            while time.monotonic() < deadline:
                items = sub.receive(timeout=0.2)
                now = time.monotonic()
                for item in items:
                    timeline.append((now, item))
                    if isinstance(item, Envelope) and isinstance(item.event, PPOUpdate):
                        last_update_at = now
                        if scenario.stop_at is not None and item.event.update >= scenario.stop_at:
                            proc.terminate()  # watched long enough: stopped as a user would (interrupted)
                    if isinstance(item, Envelope) and isinstance(item.event, TrainingFinished):
                        finished_at = now
                exited = proc.poll() is not None
                if not exited and now - last_update_at > HANG_HOLD_S:
                    proc.terminate()  # stuck for good: end it the way a user would
                    last_update_at = float("inf")
                # Once the producer has exited, what it sent last is already here or lost.
                if finished_at is not None or (exited and not items):
                    break
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        ctx.term()
    if finished_at is None:
        last = (stderr.strip().splitlines() or [""])[-1]
        return timeline, f"exit {proc.returncode}, no training_finished: {last}"
    return timeline, ""


def run_scenario(scenario: Scenario, rules: list[Rule]) -> Outcome:
    timeline, error = record(scenario)
    if error:
        return Outcome(scenario, {rule.name: None for rule in rules}, error)
    return Outcome(scenario, first_firings(timeline, rules), dashboard=dashboard_warnings(timeline))


def cell(outcome: Outcome, rule: str) -> str:
    """``quiet`` or ``fired at update N``, bold where it is the scenario's expected rule."""
    if outcome.error:
        return "error"
    at = outcome.fired.get(rule)
    text = "quiet" if at is None else f"fired at update {at}"
    return f"**{text}**" if rule == outcome.scenario.expect else text


def table(outcomes: Sequence[Outcome], rules: Sequence[str]) -> str:
    """Markdown: one row per default rule, one column per scenario; the expected cell in bold."""
    head = "| rule | " + " | ".join(o.scenario.name for o in outcomes) + " |"
    lines = [head, "|---|" + "---|" * len(outcomes)]
    for rule in rules:
        lines.append(f"| `{rule}` | " + " | ".join(cell(o, rule) for o in outcomes) + " |")
    for o in outcomes:
        if o.error:
            lines.append(f"\n{o.scenario.name}: {o.error}")
    return "\n".join(lines)


@dataclass
class Verdict:
    """What the table says: false alarms on healthy runs, faults caught by their rule."""

    false_alarms: list[str] = field(default_factory=list)
    """``scenario: rule`` for each rule that fired on a healthy run."""
    caught: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def judge(outcomes: Sequence[Outcome]) -> Verdict:
    v = Verdict()
    for o in outcomes:
        s = o.scenario
        if o.error:
            v.errors.append(s.name)
        elif not s.expect:
            v.false_alarms += [f"{s.name}: {rule}" for rule, at in o.fired.items() if at is not None]
        elif o.fired.get(s.expect) is not None:
            v.caught.append(s.name)
        else:
            v.missed.append(s.name)
    return v


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def truth_table(quick: bool = False, workers: int = 2) -> list[Figure]:
    """Run every scenario (``workers`` at a time), print the table to stdout, return two figures."""
    rules = default_rules()
    chosen = scenarios(HEALTHY_SEEDS, cuda=_cuda_available(), quick=quick)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(lambda s: run_scenario(s, rules), chosen))
    if quick:
        shape = f"{QUICK_UPDATES} updates per run, faults at update 15 (--quick: the harness only)"
    else:
        shape = f"healthy seeds: whole default runs; faults at update {FAULT_AT}, stopped at {WATCH_UNTIL}"
    print(f"\nAlert truth table: {shape}; the rule each fault must fire is in bold.\n")
    print(table(outcomes, [rule.name for rule in rules]))
    v = judge(outcomes)
    healthy = [o for o in outcomes if not o.scenario.expect and not o.error]
    faulty = [o for o in outcomes if o.scenario.expect]  # a run that failed counts as not caught
    print("\nThe dashboard on the healthy seeds (banner WARN/FAIL/REGRESSING, CV footer noisy/BAD):")
    for o in healthy:
        print(f"- {o.scenario.name}: {spans(o.dashboard)}")
    if v.false_alarms:
        print("\nfalse alarms: " + "; ".join(v.false_alarms))
    if v.missed:
        print("faults no rule of theirs caught: " + ", ".join(v.missed))
    how = f"default rules x {len(healthy)} healthy seeds ({shape})"
    return [
        at_most(
            "truth_false_alarms",
            "alerts fired on healthy seeds (rule x seed)",
            float(len(v.false_alarms)),
            float(len(rules) * max(1, len(healthy))),
            "alerts",
            0.0,
            how,
        ),
        at_most(
            "truth_dashboard_warnings",
            "dashboard warnings on healthy seeds (updates with a WARN, FAIL, REGRESSING or noisy CV)",
            float(sum(len(o.dashboard) for o in healthy)),
            float(sum(o.scenario.updates or DEFAULT_UPDATES for o in healthy) or 1),
            "updates",
            0.0,
            how,
        ),
        at_least(
            "truth_faults_caught",
            "injected faults caught by their rule",
            float(len(v.caught)),
            float(max(1, len(faulty))),
            "faults",
            1.0,
            f"one run per fault; errors: {', '.join(v.errors) or 'none'}",
        ),
    ]
