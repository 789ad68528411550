"""Per-rank rules (``by_rank``), the straggler and rank_stuck defaults, on synthetic two-rank streams."""

from __future__ import annotations

import pytest
from alerts_stream import Stream
from test_alerts_engine import Harness

from bus.straggler import STRAGGLER_FLAG
from consumers.alerts.engine import FIRING, RESOLVED
from consumers.alerts.notify import format_line
from consumers.alerts.rules import ConfigError, default_rules, parse_rules


def ranks(n: int = 2) -> list[Stream]:
    """One run, ``n`` ranks, each numbering its own seqs; their clocks disagree by hours."""
    return [Stream(rank=r, t0=1.7e9 + 3600.0 * r, dt=0.1, seed=r) for r in range(n)]


def step(h: Harness, streams: list[Stream], compute: dict[int, float], n: int = 1) -> None:
    """``n`` updates of every rank; rank r's compute time is ``compute.get(r, 100)`` ms."""
    for _ in range(n):
        for s in streams:
            h.feed(s.ppo(compute_time_ms=compute.get(s.rank, 100.0)), s.batch())


def start(h: Harness, streams: list[Stream], warmup: int = 10) -> None:
    for s in streams:
        h.feed(s.started(), s.heartbeat())
    step(h, streams, {}, warmup)


def straggler_notes(h: Harness) -> list[tuple[str, int | None]]:
    return [(n.status, n.rank) for n in h.notes if n.rule == "straggler"]


def test_default_rules_share_the_dashboard_s_thresholds() -> None:
    rules = {r.name: r for r in default_rules()}
    assert rules["straggler"].fire == STRAGGLER_FLAG and rules["straggler"].by_rank
    assert rules["rank_stuck"].metric == rules["trainer_stuck"].metric == "stuck_s"
    assert rules["rank_stuck"].fire == rules["trainer_stuck"].fire and rules["rank_stuck"].by_rank


def test_a_rank_twice_as_slow_is_named_at_its_second_slow_update_and_resolves_when_it_recovers() -> None:
    h, streams = Harness(), ranks()
    start(h, streams)
    step(h, streams, {1: 200.0})
    assert straggler_notes(h) == []  # score 1.25: a single slow update is never enough
    step(h, streams, {1: 200.0})
    assert straggler_notes(h) == [(FIRING, 1)]
    note = h.notes[-1]
    assert "rank 1 is a straggler" in note.summary and " rank 1 " in format_line(note)
    step(h, streams, {}, 3)  # 1.4375 → 1.328, 1.246, 1.184: above clear (1.15) still
    assert straggler_notes(h) == [(FIRING, 1)]
    step(h, streams, {})  # 1.138
    assert straggler_notes(h) == [(FIRING, 1), (RESOLVED, 1)]


def test_a_one_off_stall_raises_nothing() -> None:
    h, streams = Harness(), ranks(4)
    start(h, streams)
    step(h, streams, {2: 50_000.0})
    step(h, streams, {}, 10)
    assert straggler_notes(h) == []


def test_a_rule_on_the_combined_view_reads_the_worst_rank() -> None:
    rules = """
[[rule]]
name = "any_straggler"
metric = "straggler_score"
op = ">="
fire = 1.3
summary = "worst rank at {value:.2f}"
"""
    h, streams = Harness(rules), ranks(3)
    start(h, streams)
    step(h, streams, {2: 300.0}, 2)
    assert [(n.status, n.rank) for n in h.notes] == [(FIRING, None)]


def test_a_rank_whose_heartbeats_arrive_without_progress_is_stuck() -> None:
    h, streams = Harness(), ranks()
    start(h, streams)
    stuck = streams[1]
    t = h.now
    for age in (0.0, 10.0, 20.0, 29.0):
        stuck.ts = streams[0].ts = t + age  # heartbeats keep coming from both ranks
        h.feed(stuck.heartbeat(progress_age_s=age), streams[0].heartbeat(progress_age_s=0.5))
    assert [n for n in h.notes if "stuck" in n.rule] == []
    h.tick(t + 29.0 + 1.5)  # 29 s at the last heartbeat, 30.5 s now: past the 30 s bound
    # The run is STUCK (trainer_stuck, on the combined view) and rank_stuck names the rank.
    assert sorted((n.status, n.rule, n.rank) for n in h.notes) == [
        (FIRING, "rank_stuck", 1),
        (FIRING, "trainer_stuck", None),
    ]
    stuck.ts = t + 31.0
    h.feed(stuck.heartbeat(progress_age_s=0.2))  # the collective came back
    assert [(n.status, n.rank) for n in h.notes if n.rule == "rank_stuck"] == [(FIRING, 1), (RESOLVED, 1)]
    assert h.notes[-1].status == RESOLVED


def test_a_new_run_resolves_per_rank_alerts() -> None:
    h, streams = Harness(), ranks()
    start(h, streams)
    step(h, streams, {1: 200.0}, 2)
    h.feed(Stream("run-2").started())
    assert straggler_notes(h) == [(FIRING, 1), (RESOLVED, 1)]
    assert h.notes[-1].reason == "new run" and h.daemon.engine.firing() == []


RANK_TEMPLATE = """
[[rule]]
name = "r"
metric = "grad_norm"
op = ">"
fire = 1
{by_rank}
summary = "rank {{rank:d}}"
"""


def test_by_rank_is_a_rule_field_and_a_rank_template_needs_it() -> None:
    (rule,) = parse_rules(RANK_TEMPLATE.format(by_rank="by_rank = true"))
    assert rule.by_rank
    with pytest.raises(ConfigError, match=r"<rules>:8: .*a rule without by_rank has no rank"):
        parse_rules(RANK_TEMPLATE.format(by_rank=""))
    with pytest.raises(ConfigError, match="'by_rank' must be"):
        parse_rules(RANK_TEMPLATE.format(by_rank='by_rank = "yes"'))


def test_per_rank_rules_stay_quiet_in_a_single_process_run() -> None:
    h, (s,) = Harness(), ranks(1)
    start(h, [s])
    t = h.now
    for age in (10.0, 20.0, 40.0):
        s.ts = t + age
        h.feed(s.heartbeat(progress_age_s=age))
    assert [(n.rule, n.rank) for n in h.notes] == [("trainer_stuck", None)]
