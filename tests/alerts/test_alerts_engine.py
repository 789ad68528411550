"""Every default rule fires and resolves on a synthetic stream folded by the real aggregator."""

from __future__ import annotations

import math
from typing import Any

import pytest
from alerts_stream import Stream
from testkit.events import HEADS

from bus.feed import Gap
from consumers.alerts.daemon import AlertDaemon
from consumers.alerts.engine import FIRING, RESOLVED, Notification
from consumers.alerts.rules import default_rules, parse_rules


class Harness:
    """The daemon's loop body fed one item at a time; the consumer's clock is the envelope's ts."""

    def __init__(self, rules_text: str | None = None) -> None:
        self.notes: list[Notification] = []
        rules = default_rules() if rules_text is None else parse_rules(rules_text)
        self.daemon = AlertDaemon(rules, [self.notes.append])
        self.now = 0.0

    def feed(self, *items: Any) -> None:
        for item in items:
            if not isinstance(item, Gap):
                self.now = item.ts
            self.daemon.handle([item], self.now)

    def tick(self, now: float) -> None:
        self.now = now
        self.daemon.tick(now)

    def events(self, rule: str | None = None) -> list[tuple[str, str, int]]:
        return [(n.status, n.rule, n.update) for n in self.notes if rule is None or n.rule == rule]


def updates(h: Harness, s: Stream, n: int, **overrides: Any) -> None:
    """``n`` updates of a steady trainer: a ppo_update and a batch each, a heartbeat every 5."""
    for _ in range(n):
        h.feed(s.ppo(**overrides), s.batch())
        if s.update % 5 == 0:
            h.feed(s.heartbeat())


def started(h: Harness, s: Stream, warmup: int = 20) -> None:
    """training_started and a healthy warm-up: updates 0..warmup-1."""
    h.feed(s.started(), s.heartbeat())
    updates(h, s, warmup)


def ratio(value: float) -> dict[str, float]:
    return {h: value * math.log(n) for h, n in HEADS.items()}


# rule, overrides that breach, overrides between clear and fire, overrides that clear,
# the update it must fire at after breaching from update 20, and the update it may not fire before.
PER_UPDATE_CASES = [
    ("nonfinite_losses", {"policy_loss": math.nan}, None, {}, 20),
    ("nonfinite_losses", {"value_loss": math.inf}, None, {}, 20),
    ("nonfinite_gradients", {"nan_grad_count": 7}, None, {}, 20),
    ("kl_divergence_high", {"kl_divergence": 0.08}, {"kl_divergence": 0.04}, {"kl_divergence": 0.01}, 22),
    ("entropy_collapse", {"head_entropy": ratio(0.01)}, {"head_entropy": ratio(0.07)}, {}, 29),
    ("dead_layers", {"dead_layers": 18}, {"dead_layers": 10}, {"dead_layers": 1}, 29),
    ("exploding_layers", {"exploding_layers": 2}, None, {"exploding_layers": 0}, 22),
]


@pytest.mark.parametrize(("rule", "bad", "between", "good", "fires_at"), PER_UPDATE_CASES)
def test_per_update_rule_fires_after_its_for_holds_and_resolves(
    rule: str, bad: dict, between: dict | None, good: dict, fires_at: int
) -> None:
    h, s = Harness(), Stream()
    started(h, s)
    updates(h, s, fires_at - 20, **bad)  # updates 20 .. fires_at-1: breaching, still pending
    assert h.events() == [], f"{rule} fired before its 'for' held"
    updates(h, s, 1, **bad)
    assert h.events() == [(FIRING, rule, fires_at)]
    updates(h, s, 5, **bad)
    assert len(h.events()) == 1, "a firing alert was announced twice"
    if between is not None:
        updates(h, s, 5, **between)  # between the clear and the fire threshold: hysteresis keeps it firing
        assert h.events() == [(FIRING, rule, fires_at)]
    updates(h, s, 1, **good)
    assert h.events()[1:] == [(RESOLVED, rule, s.update - 1)]
    updates(h, s, 10)
    assert len(h.events()) == 2


@pytest.mark.parametrize(
    ("rule", "field", "bad", "between", "good"),
    [
        ("gradient_cv", "gradient_cv", 3.0, 1.8, 0.6),
        ("cuda_memory_fragmentation", "cuda_memory_fragmentation", 0.5, 0.28, 0.1),
    ],
)
def test_measured_rule_counts_measurements_not_carried_copies(
    rule: str, field: str, bad: float, between: float, good: float
) -> None:
    h, s = Harness(), Stream()
    started(h, s)
    # One breaching measurement at update 20, carried through 29: stands for 10 updates, short of the 20.
    updates(h, s, 10, **{field: bad})
    updates(h, s, 10, **{field: good})
    assert h.events() == []
    # Two in a row (updates 40 and 50): fires on the second measurement.
    updates(h, s, 10, **{field: bad})
    assert h.events() == []
    updates(h, s, 1, **{field: bad})
    assert h.events() == [(FIRING, rule, 50)]
    updates(h, s, 19, **{field: bad})
    updates(h, s, 20, **{field: between})  # measurements at 70 and 80 sit between clear and fire
    assert h.events() == [(FIRING, rule, 50)]
    updates(h, s, 1, **{field: good})
    assert h.events() == [(FIRING, rule, 50), (RESOLVED, rule, 90)]


def test_measured_rule_uses_the_runs_diagnostics_every() -> None:
    h, s = Harness(), Stream()
    s.diagnostics_every = 5
    started(h, s)
    updates(h, s, 5, gradient_cv=3.0)  # measured at 20 (then carried) ...
    updates(h, s, 6, gradient_cv=3.0)  # ... and at 25, 30: 20 updates covered at 35
    assert h.events() == []
    updates(h, s, 10, gradient_cv=3.0)
    assert h.events() == [(FIRING, "gradient_cv", 35)]


def test_pending_resets_when_the_condition_fails_before_its_for() -> None:
    h, s = Harness(), Stream()
    started(h, s)
    updates(h, s, 2, kl_divergence=0.08)  # 20, 21 pending
    updates(h, s, 1, kl_divergence=0.04)  # 22: between the thresholds, but not firing: pending drops
    updates(h, s, 2, kl_divergence=0.08)  # 23, 24: pending again from 23
    assert h.events() == []
    updates(h, s, 1, kl_divergence=0.08)  # 25: three in a row
    assert h.events() == [(FIRING, "kl_divergence_high", 25)]


def test_producer_silent_fires_after_the_silence_and_resolves_on_the_next_message() -> None:
    h, s = Harness(), Stream()
    started(h, s)
    last = h.now
    h.tick(last + 9.9)
    assert h.events() == []
    h.tick(last + 10.1)
    assert h.events() == [(FIRING, "producer_silent", 19)]
    h.tick(last + 30.0)
    assert len(h.events()) == 1
    s.ts = last + 30.0
    h.feed(s.heartbeat())
    assert h.events()[-1][:2] == (RESOLVED, "producer_silent")


def test_producer_silent_stays_quiet_once_training_finished() -> None:
    h, s = Harness(), Stream()
    started(h, s)
    h.feed(s.finished())
    h.tick(h.now + 3600.0)
    assert h.events() == []


def test_events_missed_fires_on_a_gap_and_resolves_a_minute_after_the_last() -> None:
    h, s = Harness(), Stream()
    started(h, s)
    gap_first = s.seq
    s.seq += 3  # three messages lost on the way
    h.feed(Gap(s.run_id, gap_first, gap_first + 2, h.now))
    assert h.events() == [(FIRING, "events_missed", 19)]
    assert h.notes[0].value == 3
    t = h.now
    for k in range(1, 60):  # a minute of healthy traffic: still within the window
        s.ts = t + k - s.dt
        h.feed(s.heartbeat())
    assert len(h.events()) == 1
    s.ts = t + 60.5
    h.feed(s.heartbeat())
    assert h.events()[-1][:2] == (RESOLVED, "events_missed")


def test_producer_dropped_fires_on_an_increase_and_resolves_when_it_stops() -> None:
    h, s = Harness(), Stream()
    started(h, s)
    h.feed(s.heartbeat(dropped=5))
    assert h.events() == [(FIRING, "producer_dropped", 19)]
    t = h.now
    s.ts = t + 30.0
    h.feed(s.heartbeat(dropped=5))
    assert len(h.events()) == 1
    s.ts = t + 61.0
    h.feed(s.heartbeat(dropped=5))
    assert h.events()[-1][:2] == (RESOLVED, "producer_dropped")
    s.ts = t + 62.0
    h.feed(s.heartbeat(dropped=9))
    assert h.events()[-1][:2] == (FIRING, "producer_dropped")


def test_fragmentation_stays_quiet_while_reserved_is_a_small_share_of_the_device() -> None:
    h, s = Harness(), Stream()
    started(h, s)
    # 0.5 of 2.2 GB reserved on a 141 GB device: at most 0.8% of the device wasted, no OOM risk.
    updates(h, s, 40, cuda_memory_fragmentation=0.5, cuda_memory_total_gb=141.0, cuda_memory_free_gb=138.0)
    assert h.events() == []
    updates(h, s, 30, cuda_memory_fragmentation=0.5)  # the stream's 16 GB device: 2.2 GB is 14%
    assert h.events() == [(FIRING, "cuda_memory_fragmentation", 70)]  # measured at 60 and 70


@pytest.mark.parametrize(("rule", "severity"), [("cuda_alloc_retries", "warning"), ("cuda_ooms", "critical")])
def test_an_increase_of_a_cumulative_cuda_count_fires_and_resolves_five_minutes_later(
    rule: str, severity: str
) -> None:
    h, s = Harness(), Stream(dt=1.0)
    started(h, s)  # the count is 0 through the warm-up
    updates(h, s, 1, **{rule: 3})
    assert h.events() == [(FIRING, rule, 20)]
    assert h.notes[-1].severity == severity and h.notes[-1].value == 3
    updates(h, s, 10, **{rule: 3})  # no new retries, but within five minutes of the last: still firing
    assert len(h.events()) == 1
    h.tick(h.now + 301.0)  # (the producer is silent by then too: producer_silent fires beside it)
    assert h.events(rule)[-1] == (RESOLVED, rule, 30)
    s.ts = h.now
    updates(h, s, 1, **{rule: 5})
    assert h.events(rule)[-1] == (FIRING, rule, 31)
    assert [n.value for n in h.notes if n.rule == rule][-1] == 2


def test_trainer_stuck_fires_when_heartbeats_come_but_the_loop_does_not_move() -> None:
    h, s = Harness(), Stream(dt=0.1)
    started(h, s)
    updates(h, s, 5)  # update_time_ms ≈ 100: the bound is the 30 s floor
    t = h.now
    for k in range(1, 31):  # the loop hangs inside an update; the publisher's thread keeps beating
        s.ts = t + k
        h.feed(s.heartbeat(progress_age_s=float(k)))
    assert h.events() == []  # 30 s: at the bound, not past it
    s.ts = t + 31
    h.feed(s.heartbeat(progress_age_s=31.0))
    assert h.events() == [(FIRING, "trainer_stuck", s.update - 1)]
    assert h.notes[-1].severity == "critical" and h.notes[-1].value == pytest.approx(31.0)
    s.ts = t + 32
    h.feed(s.heartbeat(progress_age_s=0.05))  # it moved again
    assert h.events()[-1][:2] == (RESOLVED, "trainer_stuck")
    assert all(n.rule == "trainer_stuck" for n in h.notes)  # not producer_silent: heartbeats kept coming


def test_every_default_rule_is_covered_by_a_test_here() -> None:
    covered = {case[0] for case in PER_UPDATE_CASES} | {
        "gradient_cv",
        "cuda_memory_fragmentation",
        "cuda_alloc_retries",
        "cuda_ooms",
        "trainer_stuck",
        "producer_silent",
        "events_missed",
        "producer_dropped",
    }
    covered |= {"straggler", "rank_stuck"}  # per rank: in test_alerts_ranks.py
    assert {rule.name for rule in default_rules()} == covered


def test_a_healthy_run_raises_nothing() -> None:
    h, s = Harness(), Stream(seed=7)
    started(h, s)
    updates(h, s, 300)
    h.feed(s.finished())
    h.tick(h.now + 120.0)
    assert h.notes == []


def test_a_new_run_resolves_what_the_old_one_had_firing_and_starts_afresh() -> None:
    h, s = Harness(), Stream("run-old")
    started(h, s)
    updates(h, s, 1, exploding_layers=3)
    updates(h, s, 2, exploding_layers=3)
    assert h.events() == [(FIRING, "exploding_layers", 22)]
    s2 = Stream("run-new", t0=h.now + 5)
    started(h, s2)
    assert [(n.status, n.rule, n.run_id, n.reason) for n in h.notes[1:]] == [
        (RESOLVED, "exploding_layers", "run-old", "new run")
    ]
    updates(h, s2, 3, exploding_layers=3)
    assert h.notes[-1].status == FIRING and h.notes[-1].run_id == "run-new"


def test_nan_never_resolves_a_threshold_alert() -> None:
    h, s = Harness(), Stream()
    started(h, s)
    updates(h, s, 3, kl_divergence=0.08)
    updates(h, s, 1, kl_divergence=math.nan)
    assert h.events("kl_divergence_high") == [(FIRING, "kl_divergence_high", 22)]


def test_replayed_history_is_evaluated_without_announcing_what_ended_inside_it() -> None:
    """A daemon (re)started mid-run gets ~25 s of history in one batch: no paging for the past."""
    notes: list[Notification] = []
    daemon = AlertDaemon(default_rules(), [notes.append])
    s = Stream(dt=0.5)
    history = [s.started(), s.heartbeat()]
    for u in range(60):
        history.append(s.ppo(exploding_layers=2 if 10 <= u < 15 else 0))  # fired and resolved long ago
        history.append(s.batch())
    for _ in range(5):  # still breaching now
        history.append(s.ppo(kl_divergence=0.09))
    daemon.handle(history, now=100.0)
    assert [(n.status, n.rule) for n in notes] == [(FIRING, "kl_divergence_high")]


def test_rule_with_for_seconds_fires_on_time_even_without_new_measurements() -> None:
    h = Harness(
        """
[[rule]]
name = "slow_updates"
metric = "update_time_ms"
op = ">"
fire = 500
for_seconds = 5
"""
    )
    s = Stream()
    h.feed(s.started())
    h.feed(s.ppo(update_time_ms=900.0))
    t = h.now
    h.tick(t + 4.0)
    assert h.events() == []
    h.tick(t + 5.5)
    assert h.events() == [(FIRING, "slow_updates", 0)]
